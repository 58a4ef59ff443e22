"""Any step of the method graph as a Prefect task: one factory, one cache policy.

    from tasks.step import step_task
    task = step_task(graph.BY_NAME["vote"], run_dir, run_name="vote")
    res = task(step="vote", cfg=cfg, run_dir=str(run_dir), inputs={"responses": ...}, key=key)
    res["outputs"]["votes"], res["seconds"]

The task is named after the step's task ("embed", "generate", "evaluate"; the UI's task-run names
say which: "embed-test", "generate-3/11", "evaluate-sft-2/4", "score-sft"). Its cache key is the step's own key
(`semievol_core.graph.step_key`, computed once by `graph.execute` and passed in): the cache entry
is a file inside the step's key directory, `<run>/<step>/<key>/.prefect-<wrapper>`, so it lives and
dies with the outputs it names (semievol_core/store.py); `<wrapper>` is this module's task source,
so editing the wrapper invalidates its entries and not the outputs. It holds the `gpu` slot when
the step needs the accelerator. It is not retried: the OpenAI backend retries each request within
its deadline, and other failures would fail again (tasks/common.py). Results are JSON: the step's
outputs (paths relative to the run directory), the seconds the step took when it ran, and whether
it ran in this call (False: its key directory was complete already, e.g. from the plain runner),
and the process that answered (host, pid, backends it has built so far: a Dask worker that
answers many shards builds its model once).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import socket
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from prefect import Task, task
from prefect.cache_policies import CachePolicy

from semievol_core import graph, steps, store
from semievol_core.config import SemiEvolConfig

from .common import gpu_slot, record_execution


@dataclass
class StepKey(CachePolicy):
    """The cache key of a graph step's task run: a path inside its key directory (see above)."""

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> Optional[str]:
        return f"{inputs['step']}/{inputs['key'][:store.KEY_CHARS]}/.prefect-{WRAPPER}"


@task(result_serializer="json")
def run_step(step: str, cfg: SemiEvolConfig, run_dir: str, inputs: dict[str, Any], key: str,
             progress: dict | None = None) -> dict:
    """Run one graph step in its key directory (or take its outputs there if it finished before).
    progress (execution-only, not keyed): {"artifact": id, "index": i, "count": n, "label": text}:
    a fan-out step moves that progress artifact as it goes."""
    s = graph.BY_NAME[step]
    d = store.key_dir(run_dir, s.name, key)
    done = store.load_done(d, run_dir)
    ran = done is None
    if ran:  # not finished before: run it, holding the device if it needs one
        record_execution(s.name)
        # only a step that reports its own progress takes a mover: a fan-out element (generate,
        # justify) moves the flow's progress artifact, the runner moving the others' a shard at a
        # time; a single long step (the training steps) logs each quarter of its work
        takes = "on_progress" in inspect.signature(s.run).parameters
        mover = _progress_mover(progress) if progress else None if s.each else _progress_log(s.task_name)
        execution = {"on_progress": mover} if takes and mover else {}
        with gpu_slot() if s.accelerator else nullcontext():
            graph.run_keyed(s, cfg, run_dir, inputs, key, **execution)
        done = store.load_done(d, run_dir)
    outputs, seconds = done
    return {"outputs": store.portable(outputs, run_dir), "seconds": seconds, "ran": ran,
            "process": {"host": socket.gethostname(), "pid": os.getpid(), "backends_built": steps.BACKENDS_BUILT[0]}}


WRAPPER = hashlib.sha256(inspect.getsource(run_step.fn).encode()).hexdigest()[:12]


def _progress_mover(progress: dict):
    """fraction of this element done -> the flow's progress artifact, in percent of all elements."""
    from prefect.artifacts import update_progress_artifact

    def move(fraction: float) -> None:
        done = progress["index"] + fraction
        update_progress_artifact(progress["artifact"], progress=100.0 * done / progress["count"],
                                 description=f"{progress['label']}: {done:.2f}/{progress['count']}")

    return move


def _progress_log(name: str, every: float = 0.25):
    """fraction of a single step done -> one log line at each `every` of it, with the time left
    (a training step runs for minutes: the console and the UI's task log say how far it is)."""
    from .common import _logger

    t0, shown = time.monotonic(), [0]

    def log(fraction: float) -> None:
        mark = int(fraction / every + 1e-9)
        if mark <= shown[0] or fraction >= 1.0:
            return
        shown[0] = mark
        elapsed = time.monotonic() - t0
        left = elapsed * (1 - fraction) / fraction
        _logger().info(f"{name}: {fraction:.0%} done, {elapsed / 60:.1f} min so far, ~{left / 60:.1f} min left")

    return log


def step_task(step: graph.Step, run_dir: Path, run_name: str) -> Task:
    """The task for `step`, its cache entries in its key directories under `run_dir`, its task run
    called `run_name`."""
    # A Path, not a str: Prefect reads a str as the name of a storage block.
    return run_step.with_options(name=step.task_name, task_run_name=run_name, result_storage=Path(run_dir),
                                 cache_policy=StepKey())
