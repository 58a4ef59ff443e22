"""Run a corpus case (corpus.py) through the `semievol` command line and check what a user sees.

    from runner import run_case
    outcome = run_case(case, work)     # work: an empty directory
    outcome.problems                   # [] when the case behaved as expected, else a line each
    subprocess.run(cli_command() + ["evolve", ...], env=cli_env())   # the command as a user runs it

In process (flows.cli.main, its stdout and stderr captured), except the cases marked cli=True, which
run the console script in a subprocess, Prefect's temporary server and all. In process, `ingest`
runs the flow's loop without Prefect (plain_ingest): the command's checks, printing and exit code
are the real ones. The checks, shared by test_bad_inputs.py and bench/reliability.py:
  - the exit code; on an error exactly one `semievol: error: ...` line on stderr, matching the
    case's regex (in a subprocess Prefect's log lines may surround it), and never a traceback;
  - a failed import-csv or ingest leaves the output / dataset directory as it was (file names and
    bytes), and no command that failed leaves a run directory;
  - nothing silently dropped: each data row of an accepted file is in a table, quarantined with a
    reason, or counted (duplicate, already present, in the test set); no answer column in the
    metadata of unlabeled rows;
  - an import-csv error about a row names --skip-bad-rows.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from corpus import ACCEPTED_CONFIG, ANSWER_KEYS, SKIP_HINT, Case, paper

ROOT = Path(__file__).resolve().parents[2]
# One Prefect home for the subprocesses (never the user's ~/.prefect), removed at exit.
_PREFECT_HOME = Path(tempfile.gettempdir()) / f"semievol-reliability-prefect-{os.getpid()}"
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
# ingest's summary line for one file (flows/cli.py)
_INGEST_LINE = re.compile(r"(\d+) added, (\d+) already present, (\d+) in the test set, "
                          r"(\d+) duplicate\(s\) in the file, (\d+) quarantined")


@dataclass
class Outcome:
    name: str
    kind: str
    accepted: bool                 # the case expects the input to be accepted
    exit_code: int | None = None   # None: the command raised out of main()
    error_line: str | None = None  # the `semievol: error:` line, when there was exactly one
    clear_error: bool = False      # exit 2 and that one line matched the case's regex
    traceback: bool = False
    silent_drop: bool = False      # rows of an accepted file not accounted for
    changed_on_failure: bool = False  # a failed command changed the output / dataset directory
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ running the command

def plain_ingest(inbox: str, data_dir: str, mapping: dict | None = None) -> dict:
    """flows.ingest.ingest's loop without Prefect: the summary keys the CLI reads."""
    from semievol_core.ingest import inbox_files, ingest_file

    files = [ingest_file(f, data_dir, mapping) for f in inbox_files(inbox)]
    return {"files": files, "added": sum(r["added"] for r in files)}


@contextlib.contextmanager
def _without_prefect():
    import flows.ingest

    real = flows.ingest.ingest
    flows.ingest.ingest = plain_ingest
    try:
        yield
    finally:
        flows.ingest.ingest = real


def _in_process(args: list[str], kind: str) -> tuple[int | None, str, str, bool]:
    from flows import cli

    out, err = io.StringIO(), io.StringIO()
    flow = _without_prefect() if kind == "ingest" else contextlib.nullcontext()
    code, raised = None, False
    with flow, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(args)
        except BaseException:  # noqa: BLE001 - an escape is exactly what is being looked for
            raised = True
            err.write(traceback.format_exc())
    return code, out.getvalue(), err.getvalue(), raised


def cli_command() -> list[str]:
    """The `semievol` console script a user runs (python -m flows.cli where it is not installed)."""
    script = Path(sys.executable).with_name("semievol")
    return [str(script)] if script.exists() else [sys.executable, "-m", "flows.cli"]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment the command runs in: offline, Prefect's temporary server (never the
    user's) with its home in _PREFECT_HOME, plus `extra`."""
    env = {**os.environ, "PREFECT_HOME": str(_PREFECT_HOME), "HF_HUB_OFFLINE": "1", **extra}
    env.pop("PREFECT_API_URL", None)
    return env


def _subprocess(args: list[str]) -> tuple[int | None, str, str, bool]:
    res = subprocess.run(cli_command() + args, capture_output=True, text=True, timeout=180, cwd=ROOT,
                         env=cli_env())
    return res.returncode, res.stdout, res.stderr, False


def _command(case: Case, work: Path, extra: list[str]) -> list[str]:
    if case.kind == "import-csv":
        return ["import-csv", str(work / "src"), "--out", str(work / "out"), *extra]
    if case.kind == "ingest":
        return ["ingest", str(work / "inbox"), "--into", str(work / "data"), *extra]
    return ["evolve", "--data", str(work / "no-data"), "--out", str(work / "run"), *extra]


def make_dataset(data: Path) -> None:
    """The dataset ingest cases go into: the corpus' good files imported."""
    from semievol_core.paper_csv import import_csv_dir

    src = data.with_name(data.name + "-src")
    paper()(src)
    import_csv_dir(src / "src", data)
    shutil.rmtree(src)


# ------------------------------------------------------------------ what to compare

def snapshot(path: Path) -> dict[str, bytes] | None:
    """Every file under `path` by relative name -> bytes (directories as name/ -> b""); None if
    `path` does not exist. Lock files are left out: every ingest takes the dataset's lock and
    writes its pid there, which is not data."""
    if not path.exists():
        return None
    return {str(p.relative_to(path)) + ("/" if p.is_dir() else ""): (b"" if p.is_dir() else p.read_bytes())
            for p in sorted(path.rglob("*")) if p.suffix != ".lock"}


def count_rows(path: Path) -> int:
    """Data rows of a source file, counted independently of semievol's readers."""
    if path.suffix == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    text = path.read_bytes().decode("utf-8-sig")
    if path.suffix == ".jsonl":
        return sum(1 for line in text.splitlines() if line.strip())
    records = [r for r in csv.reader(io.StringIO(text, newline="")) if r]
    return len(records) - 1  # the header


def table_rows(path: Path) -> int:
    """Rows of a Parquet table: one file, or every part in a directory; 0 if absent."""
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path] if path.exists() else []
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def _column(path: Path, name: str) -> list:
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path] if path.exists() else []
    return [v for f in files for v in pq.read_table(f, columns=[name]).column(name).to_pylist()]


# ------------------------------------------------------------------ the checks

def _check_stderr(case: Case, outcome: Outcome, stderr: str, subprocess_run: bool) -> None:
    problems = outcome.problems
    if "Traceback (most recent call last)" in stderr:
        outcome.traceback = True
        problems.append("a traceback on stderr")
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("semievol: error:")]
    others = [ln for ln in lines if not ln.startswith("semievol: error:")]
    if others and not subprocess_run:
        problems.append(f"stderr has other lines too: {others[:2]!r}")
    if case.stderr is None:
        if errors:
            problems.append(f"unexpected error line: {errors[0]!r}")
        return
    if len(errors) != 1:
        problems.append(f"expected one `semievol: error:` line, got {len(errors)}: {stderr[-500:]!r}")
        return
    outcome.error_line = line = errors[0]
    if not re.search(case.stderr, line):
        problems.append(f"error line {line!r} does not match {case.stderr!r}")
    elif outcome.exit_code == 2:
        outcome.clear_error = True
    if case.kind == "import-csv" and re.search(r"\.csv row \d+", line) and SKIP_HINT not in line:
        problems.append(f"an error about a row without {SKIP_HINT}: {line!r}")


def _accounted_import(work: Path, stdout: str) -> list[str]:
    read = sum(count_rows(f) for f in (work / "src").glob("*.csv"))
    out = work / "out"
    written = sum(table_rows(out / t) for t in ("labeled.parquet", "unlabeled", "test.parquet"))
    quarantined = table_rows(out / "quarantine.parquet")
    dup = re.search(r"duplicates dropped: (\d+)", stdout)
    if dup is None:
        return ["no 'duplicates dropped' count in the summary"]
    problems = []
    if written + quarantined + int(dup.group(1)) != read:
        problems.append(f"{read} rows read, but {written} written + {quarantined} quarantined + "
                        f"{dup.group(1)} duplicates")
    if any(not r for r in _column(out / "quarantine.parquet", "reason")):
        problems.append("a quarantined row without a reason")
    return problems


def _accounted_ingest(data: Path, read: int, before: dict[str, int], stdout: str) -> list[str]:
    m = _INGEST_LINE.search(stdout)
    if m is None:
        return [f"no ingest summary line in {stdout!r}"]
    added, present, in_test, dups, quarantined = map(int, m.groups())
    problems = []
    if added + present + in_test + dups + quarantined != read:
        problems.append(f"{read} rows read, but {added} added + {present} already present + "
                        f"{in_test} in the test set + {dups} duplicates + {quarantined} quarantined")
    for table, said in (("unlabeled", added), ("quarantine", quarantined)):
        if table_rows(data / table) - before[table] != said:
            problems.append(f"{table}: {table_rows(data / table) - before[table]} rows more, "
                            f"the summary says {said}")
    if any(not r for r in _column(data / "quarantine", "reason")):
        problems.append("a quarantined row without a reason")
    keys = {k for meta in _column(data / "unlabeled", "metadata") for k in json.loads(meta)}
    leaked = keys & set(ANSWER_KEYS)
    if leaked:
        problems.append(f"answer column(s) {sorted(leaked)} in unlabeled metadata")
    return problems


def run_case(case: Case, work: Path) -> Outcome:
    """Build the case's input under `work` (an empty directory), run its command, check it."""
    accepted = case.exit_code == 0 or case.stderr == ACCEPTED_CONFIG
    outcome = Outcome(case.name, case.kind, accepted)
    if case.kind == "ingest":
        make_dataset(work / "data")
    extra = case.build(work)
    watched = {"import-csv": ("src", "out"), "ingest": ("data",), "config": ("run",)}[case.kind]
    before = {name: snapshot(work / name) for name in watched}
    inbox_files = sorted((work / "inbox").glob("*")) if case.kind == "ingest" else []
    read = count_rows(inbox_files[0]) if case.exit_code == 0 and inbox_files else 0
    tables = {t: table_rows(work / "data" / t) for t in ("unlabeled", "quarantine")}

    start = time.perf_counter()
    args = _command(case, work, extra)
    if case.cli:
        code, stdout, stderr, raised = _subprocess(args)
    else:
        code, stdout, stderr, raised = _in_process(args, case.kind)
    outcome.seconds = time.perf_counter() - start
    outcome.exit_code = None if raised else code

    if raised:
        outcome.traceback = True
    if outcome.exit_code != case.exit_code:
        outcome.problems.append(f"exit code {outcome.exit_code}, expected {case.exit_code}: "
                                f"{(stderr.strip().splitlines() or [''])[-1]!r}")
    _check_stderr(case, outcome, stderr, case.cli)
    if case.stdout and not re.search(case.stdout, stdout):
        outcome.problems.append(f"stdout does not match {case.stdout!r}: {stdout[-400:]!r}")

    if outcome.exit_code != 0:  # a failed command: nothing it was pointed at may have changed
        for name in watched:
            if snapshot(work / name) != before[name]:
                outcome.changed_on_failure = True
                outcome.problems.append(f"the command failed but changed {name}/")
    elif case.kind == "import-csv":
        drops = _accounted_import(work, stdout)
        outcome.silent_drop = bool(drops)
        outcome.problems += drops
    elif case.kind == "ingest":
        drops = _accounted_ingest(work / "data", read, tables, stdout)
        outcome.silent_drop = bool(drops)
        outcome.problems += drops
    return outcome
