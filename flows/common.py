"""Helpers the flows share: running a task as a timed, cache-checked step; artifacts; parameters.

    runner = StepRunner(out_dir, logger)
    res = runner.run("vote", vote, responses=..., out=...)   # {"path", "digest", "seconds", ...}
    runner.run("generate", generate, name="generate-3/11", ...)  # task run named for the UI
    runner.timings        # {"vote": 0.01}  wall time in this run (a cache hit costs ~0)
    runner.cached         # steps answered from the cache
    runner.cached_seconds # {"vote": 4.2}  what the cached steps took when they were computed

    publish_accuracy(systems, key="semievol-accuracy")  # table artifact, one row per system

    @flow(flow_run_name=run_name("evolve", "data_dir"))  # runs called evolve-2026-11-25-fpb
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from prefect import Task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, ConfigDict, Field

from tasks.common import output_intact

CACHE_DIR = ".prefect-cache"  # under the run directory: cache entries live and die with outputs


def run_name(flow: str, parameter: str) -> Callable[[], str]:
    """A flow_run_name callable: `<flow>-<UTC date>-<last part of the path in `parameter`>`, so
    the UI's run list reads "evolve-2026-11-25-fpb" rather than Prefect's random adjective-animal."""

    def name() -> str:
        from prefect.runtime import flow_run

        value = str(flow_run.parameters.get(parameter) or "")
        path = Path(value)
        label = (path.parent.name if path.suffix else path.name) or "run"  # data/fpb/test.parquet -> fpb
        return f"{flow}-{datetime.now(timezone.utc):%Y-%m-%d}-{label}"

    return name


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
        self._cached_seconds: dict[str, float] = {}
        self.executed: list[str] = []
        self._bound: dict[tuple[str, str], Task] = {}

    def _bind(self, task: Task, name: str) -> Task:
        if (task.name, name) not in self._bound:
            self._bound[task.name, name] = task.with_options(result_storage=self.storage,
                                                             task_run_name=name)
        return self._bound[task.name, name]

    @property
    def cached_seconds(self) -> dict[str, float]:
        """Steps answered wholly from the cache -> what they took when computed (a step that ran
        in part, e.g. new generation shards, shows this run's time instead)."""
        return {k: v for k, v in self._cached_seconds.items() if k not in self.executed}

    def run(self, step: str, task: Task, name: str | None = None, **kwargs: Any) -> Any:
        """Run `task` as `step` (the timing key); its task run is called `name` (default: step)."""
        bound = self._bind(task, name or step)
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
        if hit and isinstance(result, dict) and result.get("seconds") is not None:
            self._cached_seconds[step] = round(self._cached_seconds.get(step, 0.0) + result["seconds"], 3)
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
    """One row per statistic; the class mix as one row per class ("class A (negative)": "labeled
    prior 33.3% | selected 50.0%"), the class-mix warning (if any) first."""
    def pct(x):
        return "—" if x is None else f"{100 * x:.1f}%"

    rows = [{"statistic": "class_mix_warning", "value": stats["class_mix_warning"]}] \
        if stats.get("class_mix_warning") else []
    rows += [{"statistic": k, "value": _num(v) if not isinstance(v, dict) else str(v)}
             for k, v in stats.items() if k not in ("class_mix", "class_mix_warning")]
    rows += [{"statistic": f"class {c}", "value": f"labeled prior {pct(m['labeled'])} | selected {pct(m['selected'])}"}
             for c, m in (stats.get("class_mix") or {}).items()]
    create_table_artifact(table=rows, key=key, description=description)


def publish_markdown(markdown: str, key: str, description: str) -> None:
    create_markdown_artifact(markdown=markdown, key=key, description=description)
