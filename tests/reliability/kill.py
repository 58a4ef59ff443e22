"""kill -9 trials (issue 12): `semievol evolve` killed at a seeded point of one of its phases, then
run again to completion and checked against a clean run.

    from kill import PHASES, Setup, clean_run, kill_trial
    setup = Setup.make(work, model_dir)          # a small dataset and the run config for the model
    clean = clean_run(setup)                     # in process, uninterrupted: the reference
    trial = kill_trial(setup, clean, work / "t0", "generation", seed=0)
    trial.problems                               # [] when the run survived the kill
    trial.record()                               # what bench/reliability.py stores per trial

A trial runs the command a user runs (`semievol evolve --data D --out O --config run.yaml
--registry R`, through Prefect's temporary server, runner.cli_command) in its own process group.
It watches the run directory until the phase has begun (its `start` file appeared), then waits a
seeded fraction of the phase's duration in the clean run (its steps' wall time, report.json
`timings`), or until the phase's `end` file appears, whichever comes first; sends SIGKILL to the
whole group (the CLI, Prefect's server, every child); and runs the same command again. Checks
(TrialResult.problems, one line each):
  - the re-run exits 0, and nothing of the killed group is left running;
  - responses.parquet holds one row per (unlabeled question, collaborator, sample) of the clean
    run: none lost, none duplicated; responses, pseudo-labels and every predictions table have the
    clean run's content (floats to 1e-6: see same_content);
  - no task run that was complete before the kill runs again: per step, the re-run executes
    (SEMIEVOL_TASK_LOG, tasks/common.record_execution) exactly the plan's task runs that had no
    complete key directory at the kill (`<out>/<step>/<key>/values.json`, semievol_core/store.py),
    and report.json's `cached_steps` are the steps all of whose runs had one;
  - no temp file of an atomic write (atomic.TEMP_NAME) under the run, dataset or registry directory;
  - <out>/.run.lock is free.
The clean run is the in-process executor (pipeline.run_semievol): tests/test_flows.py checks that
it writes the same tables, byte for byte, as the Prefect flow the CLI runs, and it skips a Prefect
server start. The "adapter write" phase (killed as the warm adapter's temp directory appears) found
that a killed write's temp stayed for good; the run lock's holder now removes such temps
(steps.run_dir_lock, and the registry's lock likewise).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from runner import ROOT, cli_command, cli_env

POLL_SECONDS = 0.02       # how often the run directory is looked at while waiting for the kill point
RUN_TIMEOUT = 900         # seconds a killed run may take to reach its point, or a re-run to finish
GONE_TIMEOUT = 30         # seconds the killed group's processes may take to be reaped
RESPONSE_KEY = ["unlabeled_id", "collaborator", "sample"]


@dataclass(frozen=True)
class Phase:
    """A stretch of an evolve run: from the moment `start` (a path or glob under the run directory)
    appears until `end` does; `steps` are the graph steps it runs (its duration: their summed wall
    time)."""

    name: str
    start: str
    end: str
    steps: tuple[str, ...]


PHASES = (
    Phase("warm training", "data/test.parquet", "warm_adapter", ("train-warm",)),
    # No steps, so no wait: killed the moment the warm adapter's temp directory appears, mid-write.
    Phase("adapter write", "train-warm/*/.warm_adapter.*.tmp", "warm_adapter", ()),
    Phase("generation", "test_neighbors.parquet", "responses.parquet", ("plan-shards", "generate", "collect")),
    Phase("justification", "responses.parquet", "justified.parquet", ("vote", "justify", "collect-justified")),
    Phase("final training", "justified.parquet", "semievol_adapter", ("select", "train-final")),
    Phase("evaluation", "semievol_adapter", "report.json",
          ("plan-test", *(f"{step}-{system}" for system in ("vanilla", "rag_knn", "knn_vote", "sft", "semievol")
                          for step in ("evaluate", "score")), "evaluate-champion", "gate")),
)
PHASE = {p.name: p for p in PHASES}  # in run order

# The tiny model's run: choice_logprobs (one forward pass per question, always a letter), one
# epoch, 4 questions per generation shard (10 unlabeled questions: 3 shards); gate_min_gain 100:
# never promoted, so every trial starts from an empty registry and plans the same steps.
CONFIG = """\
model: {model}
train: {{epochs: 1, val_fraction: 0, early_stopping_patience: null}}
collaboration: {{mode: choice_logprobs}}
evaluation: {{mode: choice_logprobs, bootstrap_samples: 200}}
gate: {{min_gain: 100}}
execution: {{progress: false, shard_size: 4}}
"""


@dataclass(frozen=True)
class Setup:
    data: Path     # the dataset every run reads (never written)
    config: Path   # run.yaml

    @classmethod
    def make(cls, work: Path, model: Path) -> "Setup":
        from conftest import write_sentiment_dataset

        work.mkdir(parents=True, exist_ok=True)
        config = work / "run.yaml"
        config.write_text(CONFIG.format(model=model))
        return cls(write_sentiment_dataset(work / "data"), config)

    def cfg(self):
        from semievol_core.config import SemiEvolConfig, load_yaml_mapping

        return SemiEvolConfig.model_validate(load_yaml_mapping(self.config))

    def command(self, out: Path, registry: Path) -> list[str]:
        return [*cli_command(), "evolve", "--data", str(self.data), "--out", str(out), "--config",
                str(self.config), "--registry", str(registry)]


@dataclass(frozen=True)
class Clean:
    out: Path
    report: dict
    task_runs: Counter  # step -> task runs the plan has (fan-out steps: one per shard)

    def seconds(self, phase: Phase) -> float:
        return sum(self.report["timings"].get(step, 0.0) for step in phase.steps)


def clean_run(setup: Setup) -> Clean:
    """The uninterrupted reference run, in process (see the module docstring)."""
    from semievol_core import graph, steps
    from semievol_core.pipeline import run_semievol

    out = setup.data.parent / "clean"
    cfg = setup.cfg()
    report = run_semievol(setup.data, out / "run", cfg, registry=out / "registry")
    steps.unload_backends()
    # task runs per step: one, or one per element of a fan-out (its key directories in the clean run)
    done = completed_tasks(out / "run")
    runs = Counter({s.name: done[s.name] if s.each else 1 for s in graph.plan(graph.SYSTEMS, gate=True)})
    return Clean(out / "run", report, runs)


@dataclass
class TrialResult:
    phase: str                      # the phase aimed at
    seed: int
    delay: float                    # seconds waited after the phase's start file appeared
    observed: str = ""              # the phase the run was in at the kill, by its files
    killed_after: float = 0.0       # seconds from the start of the command to the kill
    completed_at_kill: int = 0      # task runs with a complete key directory at the kill
    executed_on_rerun: int = 0      # task runs the re-run executed
    rerun_steps: list[str] = field(default_factory=list)  # the steps they belong to
    recomputed: list[str] = field(default_factory=list)  # steps run again though complete
    lost_rows: int = 0
    duplicated_rows: int = 0
    tables_equal: bool = False
    temps_left: list[str] = field(default_factory=list)
    lock_free: bool = False
    rerun_exit: int | None = None
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def survived(self) -> bool:
        return not self.problems

    def record(self) -> dict:
        return {**asdict(self), "delay": round(self.delay, 3), "killed_after": round(self.killed_after, 3),
                "seconds": round(self.seconds, 3), "survived": self.survived}


# ------------------------------------------------------------------------------ running and killing
def _start(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as fh:  # the child keeps its own descriptor
        return subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                start_new_session=True)  # its own process group: killpg ends it all


def _kill_group(proc: subprocess.Popen) -> bool:
    """SIGKILL to the process group; True once none of its processes is left (reaped)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    deadline = time.monotonic() + GONE_TIMEOUT
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _wait_for_point(proc: subprocess.Popen, out: Path, phase: Phase, delay: float) -> bool:
    """Wait until `delay` seconds after `phase.start` appeared, or `phase.end` appeared; False if
    the command ended (or RUN_TIMEOUT passed) first."""
    t0, started = time.monotonic(), None
    while proc.poll() is None:
        now = time.monotonic()
        if _exists(out, phase.end) or now - t0 > RUN_TIMEOUT:
            return now - t0 <= RUN_TIMEOUT
        if started is None and _exists(out, phase.start):
            started = now
        if started is not None and now - started >= delay:
            return True
        time.sleep(POLL_SECONDS)
    return False


def _exists(out: Path, pattern: str) -> bool:
    return next(out.glob(pattern), None) is not None


def phase_at(out: Path) -> str:
    """The phase a run directory shows: the last one whose start file exists, or what is around it."""
    for phase in reversed(PHASES):
        if _exists(out, phase.start):
            return phase.name if not _exists(out, phase.end) else f"after {phase.name}"
    return f"before {PHASES[0].name}"


def completed_tasks(out: Path) -> Counter:
    """Task runs that were complete, by step: key directories holding their values.json
    (semievol_core/store.py), written last and atomically, so a kill leaves none half-written."""
    from semievol_core import graph, store

    return Counter({s.name: len(list((out / s.name).glob(f"*/{store.VALUES}"))) for s in graph.STEPS
                    if (out / s.name).is_dir()})


def _executed(log: Path) -> Counter:
    return Counter(log.read_text().split()) if log.exists() else Counter()


# ------------------------------------------------------------------------------ the checks
def _check_steps(res: TrialResult, clean: Clean, completed: Counter, executed: Counter, report: dict) -> None:
    for step in sorted(set(clean.task_runs) | set(executed)):
        due = clean.task_runs[step] - completed[step]
        if executed[step] > due:
            res.recomputed.append(step)
            res.problems.append(f"{step}: {executed[step]} task run(s) on the re-run, {due} were not complete "
                                "at the kill: a complete one ran again")
        elif executed[step] < due:
            res.problems.append(f"{step}: {executed[step]} task run(s) on the re-run, {due} were not complete")
    whole = {s for s, n in clean.task_runs.items() if completed[s] >= n}
    if set(report.get("cached_steps") or {}) != whole:
        res.problems.append(f"report.json cached_steps {sorted(report.get('cached_steps') or {})}, the steps "
                            f"complete at the kill {sorted(whole)}")


def same_content(a: Path, b: Path) -> bool:
    """Equal tables, floats to 1e-6 relative: the shard in flight at the kill is generated again in
    a new process, where a forward pass may round its last bit differently (H 11.133485 vs
    11.133486 was seen); ids, answers and texts must match exactly."""
    import pandas as pd

    try:
        pd.testing.assert_frame_equal(pq.read_table(a).to_pandas(), pq.read_table(b).to_pandas(),
                                      check_exact=False, rtol=1e-6, atol=1e-9)
    except AssertionError:
        return False
    return True


def _check_tables(res: TrialResult, clean: Clean, out: Path) -> None:
    ref = pq.read_table(clean.out / "responses.parquet", columns=RESPONSE_KEY).to_pylist()
    got = pq.read_table(out / "responses.parquet", columns=RESPONSE_KEY).to_pylist()
    keys = Counter(tuple(r.values()) for r in got)
    res.lost_rows = len({tuple(r.values()) for r in ref} - set(keys))
    res.duplicated_rows = sum(n - 1 for n in keys.values())
    if res.lost_rows or res.duplicated_rows or len(keys) != len(ref):
        res.problems.append(f"responses: {res.lost_rows} row(s) lost, {res.duplicated_rows} duplicated, "
                            f"{len(keys)} distinct of {len(ref)}")
    tables = ["responses.parquet", "pseudo_labels.parquet",
              *sorted(str(p.relative_to(clean.out)) for p in (clean.out / "predictions").glob("*.parquet"))]
    differ = [t for t in tables if not (out / t).exists() or not same_content(out / t, clean.out / t)]
    res.tables_equal = not differ
    if differ:
        res.problems.append(f"not the clean run's content: {differ}")


def _check_leftovers(res: TrialResult, setup: Setup, out: Path, registry: Path) -> None:
    from semievol_core.atomic import LockHeld, exclusive_lock, leftover_temps
    from semievol_core.steps import RUN_LOCK

    res.temps_left = [str(p) for root in (out, setup.data, registry) for p in leftover_temps(root)]
    if res.temps_left:
        res.problems.append(f"temp files left: {res.temps_left}")
    try:
        with exclusive_lock(out / RUN_LOCK, wait=False):
            res.lock_free = True
    except LockHeld as exc:
        res.problems.append(f"the run lock is held: {exc}")


# ------------------------------------------------------------------------------ one trial
def kill_trial(setup: Setup, clean: Clean, work: Path, phase: str, seed: int) -> TrialResult:
    """Run, kill -9 at a seeded point of `phase`, run again, check (see the module docstring)."""
    aim = PHASE[phase]
    res = TrialResult(phase, seed, random.Random(seed).random() * clean.seconds(aim))
    work.mkdir(parents=True, exist_ok=True)
    out, registry = work / "run", work / "registry"
    command = setup.command(out, registry)
    t0 = time.monotonic()

    killed = _start(command, cli_env(SEMIEVOL_TASK_LOG=str(work / "killed.tasks")), work / "killed.log")
    reached = _wait_for_point(killed, out, aim, res.delay)
    res.killed_after = time.monotonic() - t0
    if not _kill_group(killed):
        res.problems.append("a process of the killed run is still running")
    if not reached:
        res.problems.append(f"the run ended (exit {killed.returncode}) before the kill point; see {work}/killed.log")
        return res
    res.observed = phase_at(out)
    completed = completed_tasks(out)
    res.completed_at_kill = sum(completed.values())

    rerun = _start(command, cli_env(SEMIEVOL_TASK_LOG=str(work / "rerun.tasks")), work / "rerun.log")
    try:
        res.rerun_exit = rerun.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill_group(rerun)
        res.problems.append(f"the re-run did not finish in {RUN_TIMEOUT} s (stuck?); see {work}/rerun.log")
        return res
    res.seconds = time.monotonic() - t0
    if res.rerun_exit != 0:
        tail = (work / "rerun.log").read_text(errors="replace").strip().splitlines()[-1:]
        res.problems.append(f"the re-run exited {res.rerun_exit}: {tail}")
        return res
    executed = _executed(work / "rerun.tasks")
    res.executed_on_rerun, res.rerun_steps = sum(executed.values()), sorted(executed)
    _check_steps(res, clean, completed, executed, json.loads((out / "report.json").read_text()))
    _check_tables(res, clean, out)
    _check_leftovers(res, setup, out, registry)
    return res


def trial_plan(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """n (phase, seed) pairs: the timed phases in run order, then the mid-write one, in turn; each
    trial its own seed for its point in the phase."""
    turn = sorted(PHASES, key=lambda p: not p.steps)
    return [(turn[i % len(turn)].name, seed * 1000 + i) for i in range(n)]
