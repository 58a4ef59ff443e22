"""Any step of the method graph as a Prefect task: one factory, one cache policy.

    from tasks.step import step_task
    task = step_task(graph.BY_NAME["vote"], storage=run_dir / ".prefect-cache", run_name="vote")
    res = task(step="vote", cfg=cfg, run_dir=str(run_dir), inputs={"responses": ...})
    res["outputs"]["votes"], res["digests"], res["seconds"]

The task is named after the step's task ("embed", "generate", "evaluate"; the UI's task-run names
say which: "embed-test", "generate-3/11", "evaluate-sft"). It is cached under
`semievol_core.graph.step_key` (the step's code, the config sections it reads, its inputs by
content) plus the source of this wrapper (TASK_SOURCE), and holds the `gpu` slot when the step
needs the accelerator. It is not retried: the OpenAI backend retries each request within its
deadline, and other failures would fail again (tasks/common.py). Results are
JSON: the step's outputs, the digests of the files among them (so the flow notices a cached output
rewritten on disk since), and the body's wall time.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from prefect import Task, task
from prefect.cache_policies import TASK_SOURCE, CachePolicy

from semievol_core import graph
from semievol_core.config import SemiEvolConfig

from .common import content_digest, gpu_slot, record_execution


@dataclass
class StepKey(CachePolicy):
    """The cache key of a graph step's task run: graph.step_key, with memoised content digests."""

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> Optional[str]:
        step = graph.BY_NAME[inputs["step"]]
        return graph.step_key(step, inputs["cfg"], inputs["inputs"], inputs["run_dir"], digest=content_digest)


def _file_outputs(outputs: dict, run_dir: Path) -> dict[str, str]:
    """Digests of the outputs that are files this step wrote under the run directory."""
    out = {}
    for name, value in outputs.items():
        if isinstance(value, str) and Path(value).is_absolute() and run_dir in Path(value).parents \
                and Path(value).exists():
            out[name] = content_digest(value)
    return out


@task(result_serializer="json")
def run_step(step: str, cfg: SemiEvolConfig, run_dir: str, inputs: dict[str, Any],
             progress: dict | None = None) -> dict:
    """Run one graph step. progress (execution-only, not keyed): {"artifact": id, "index": i,
    "count": n, "label": text}: a fan-out step moves that progress artifact as it goes."""
    s = graph.BY_NAME[step]
    record_execution(s.name)
    t0 = time.perf_counter()
    kwargs = dict(inputs)
    if progress:
        kwargs["on_progress"] = _progress_mover(progress)
    with gpu_slot() if s.accelerator else nullcontext():
        outputs = s.run(cfg, Path(run_dir), **kwargs)
    return {"outputs": outputs, "digests": _file_outputs(outputs, Path(run_dir)),
            "seconds": round(time.perf_counter() - t0, 3)}


def outputs_intact(result: dict) -> bool:
    """True when the files a cached result names still hold the bytes the step wrote (outputs sit
    at fixed paths, so a later run with another θ may have rewritten pseudo_labels.parquet)."""
    outputs = result.get("outputs", {})
    return all(Path(outputs[name]).exists() and content_digest(outputs[name]) == digest
               for name, digest in result.get("digests", {}).items())


def _progress_mover(progress: dict):
    """fraction of this element done -> the flow's progress artifact, in percent of all elements."""
    from prefect.artifacts import update_progress_artifact

    def move(fraction: float) -> None:
        done = progress["index"] + fraction
        update_progress_artifact(progress["artifact"], progress=100.0 * done / progress["count"],
                                 description=f"{progress['label']}: {done:.2f}/{progress['count']}")

    return move


def step_task(step: graph.Step, storage: Path, run_name: str) -> Task:
    """The task for `step`, its cache entries under `storage`, its task run called `run_name`."""
    return run_step.with_options(name=step.task_name, task_run_name=run_name, result_storage=storage,
                                 cache_policy=StepKey() + TASK_SOURCE)
