"""Helpers the flows share: running a task as a timed, cache-checked step; artifacts; parameters.

    runner = StepRunner(out_dir, logger)
    res = runner.run("vote", vote, responses=..., out=...)   # {"path", "digest", ...}
    runner.timings        # {"vote": 0.01}  (a cache hit costs ~0)
    runner.cached         # steps answered from the cache

    publish_accuracy(systems, key="semievol-accuracy")  # table artifact, one row per system
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from prefect import Task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, ConfigDict, Field

from tasks.common import output_intact

CACHE_DIR = ".prefect-cache"  # under the run directory: cache entries live and die with outputs


class RunLimits(BaseModel):
    """Seeded samples for quick runs (None = every row). A pydantic model so the UI builds a form
    for it and validates the values."""

    model_config = ConfigDict(extra="forbid")
    labeled: int | None = Field(default=None, ge=1)
    unlabeled: int | None = Field(default=None, ge=1)
    test: int | None = Field(default=None, ge=1)


class StepRunner:
    """Runs tasks with run-local result storage, re-runs a cache hit whose output was changed or
    deleted on disk since, and records per-step wall time and cache hits."""

    def __init__(self, out_dir: str | Path, logger):
        self.storage = Path(out_dir).resolve() / CACHE_DIR
        self.logger = logger
        self.timings: dict[str, float] = {}
        self.cached: list[str] = []
        self.executed: list[str] = []
        self._bound: dict[str, Task] = {}

    def _bind(self, task: Task) -> Task:
        if task.name not in self._bound:
            self._bound[task.name] = task.with_options(result_storage=self.storage)
        return self._bound[task.name]

    def run(self, step: str, task: Task, **kwargs: Any) -> Any:
        bound = self._bind(task)
        t0 = time.perf_counter()
        state = bound(return_state=True, **kwargs)
        result = state.result()  # raises the task's exception if it failed
        hit = state.name == "Cached"
        if hit and not output_intact(result):
            # Outputs sit at fixed paths, so a later run (another θ, say) may have rewritten this
            # one; the cache entry is then stale and the step must run again.
            self.logger.warning("%s: cached output %s changed on disk; recomputing", step,
                                result.get("path"))
            result = bound.with_options(refresh_cache=True)(**kwargs)
            hit = False
        (self.cached if hit else self.executed).append(step)
        self.timings[step] = round(self.timings.get(step, 0.0) + time.perf_counter() - t0, 3)
        return result


def _num(x: Any, digits: int = 4) -> Any:
    """Artifact cells: floats rounded, NaN as None (the API stores strict JSON)."""
    if isinstance(x, float):
        return None if math.isnan(x) else round(x, digits)
    return x


def publish_accuracy(systems: dict[str, dict], key: str, description: str) -> None:
    rows = [{"system": name, "accuracy": _num(m.get("accuracy")), "ci_low": _num(m.get("ci_low")),
             "ci_high": _num(m.get("ci_high")), "parse_failure_rate": _num(m.get("parse_failure_rate")),
             "n": m.get("n")} for name, m in systems.items()]
    create_table_artifact(table=rows, key=key, description=description)


def publish_selection(stats: dict, key: str, description: str) -> None:
    rows = [{"statistic": k, "value": _num(v) if not isinstance(v, dict) else str(v)}
            for k, v in stats.items()]
    create_table_artifact(table=rows, key=key, description=description)


def publish_markdown(markdown: str, key: str, description: str) -> None:
    create_markdown_artifact(markdown=markdown, key=key, description=description)
