"""Helpers the flows share: running a task as a timed, cache-checked step; artifacts; parameters.

    with task_pool(cfg.execution, logger) as (pool, workers):   # pool: None, or a Dask or Ray task runner
        runner = StepRunner(cfg, out_dir, logger, pool)          # a semievol_core.graph.Call
        graph.execute(graph.plan(systems), values, runner, timings)  # every step a cached task
    runner.cached         # steps answered from the cache
    runner.cached_seconds # {"vote": 4.2}  what the cached steps took when they were computed

    publish_accuracy(systems, key="semievol-accuracy")  # table artifact, one row per system

    @flow(flow_run_name=run_name("evolve", "data_dir"))  # runs called evolve-2026-11-25-fpb
"""

from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)

from semievol_core import store
from tasks.step import step_task


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


@contextmanager
def task_pool(execution, logger) -> Iterator[tuple[Any, int]]:
    """(pool, workers): where fan-out steps run (config `execution.workers` / `execution.cluster`,
    `execution.engine`). (None, 1): in the flow's own process; else a started Prefect task runner
    and the number of shards it runs at once: prefect-dask's `DaskTaskRunner` on a LocalCluster of
    `workers` processes or on the Dask cluster at `cluster`, or prefect-ray's `RayTaskRunner` on a
    local Ray instance of `workers` CPUs or on the Ray cluster at `cluster`. On this machine torch's
    threads are split between the workers (OMP_NUM_THREADS). Closed (a local cluster stopped) when
    the block ends."""
    if not execution.workers and not execution.cluster:
        yield None, 1
        return
    threads = str(max(1, (os.cpu_count() or 1) // max(execution.workers, 1)))
    if execution.engine == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError:
            raise RuntimeError("execution.engine ray needs prefect-ray: pip install 'semievol[ray]'") from None
        # One CPU a task (Ray's default), so a local instance of `workers` CPUs runs `workers`
        # shards at once, each in a worker process Ray keeps for the next task.
        runner = RayTaskRunner(address=execution.cluster) if execution.cluster else RayTaskRunner(init_kwargs={
            "num_cpus": execution.workers, "include_dashboard": False, "log_to_driver": False,
            "runtime_env": {"env_vars": {"OMP_NUM_THREADS": threads}}})
        with runner:
            import ray

            resources = ray.cluster_resources()
            # The `gpu` slots: one per GPU on a cluster that has them, else one per CPU. The tasks
            # themselves ask Ray for one CPU, not a GPU: on a GPU cluster run one Ray worker per GPU
            # (e.g. `ray start --num-cpus 1 --num-gpus 1` per device) so shards do not share one.
            workers = int(resources.get("GPU") or resources.get("CPU", 1))
            logger.info("fan-out steps run on Ray: %s, %d slot(s)", execution.cluster or "a local instance", workers)
            yield runner, workers
        return
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise RuntimeError("execution.workers / execution.cluster need prefect-dask: "
                           "pip install 'semievol[dask]'") from None
    logging.getLogger("distributed").setLevel(logging.WARNING)  # a line per worker event otherwise
    if execution.cluster:
        runner = DaskTaskRunner(address=execution.cluster)
    else:
        runner = DaskTaskRunner(cluster_kwargs={
            "n_workers": execution.workers, "threads_per_worker": 1, "processes": True,
            "silence_logs": logging.WARNING, "env": {"OMP_NUM_THREADS": threads}})
    with runner:
        workers = len(runner.client.scheduler_info(n_workers=-1)["workers"])
        logger.info("fan-out steps run on Dask: %s, %d worker(s)",
                    execution.cluster or "a LocalCluster on this machine", workers)
        yield runner, workers


class StepRunner:
    """The Prefect executor's way to run a graph step (a `semievol_core.graph.Call`): as a task
    cached under the step's key, its cache entry inside the step's key directory (tasks/step.py).
    Records which steps came from the cache and what they took when they were computed; a fan-out
    step (embedding, generation, justification or evaluation shards) moves a progress artifact
    `semievol-<task>` after each element.
    With a `pool` (task_pool), a fan-out's elements are submitted to it all at once (`many`).
    `processes`: step -> {(host, pid): backends that process had built}, who answered."""

    def __init__(self, cfg, out_dir: str | Path, logger, pool: Any = None):
        self.cfg = cfg
        self.run_dir = Path(out_dir).resolve()
        self.logger = logger
        self.pool = pool
        self.cached: list[str] = []
        self._cached_seconds: dict[str, float] = {}
        self.executed: list[str] = []
        self._progress: dict[str, Any] = {}
        self.processes: dict[str, dict[tuple, int]] = {}

    @property
    def cached_seconds(self) -> dict[str, float]:
        """Steps answered wholly from the cache -> what they took when computed (a step that ran
        in part, e.g. new generation shards, shows this run's time instead)."""
        return {k: v for k, v in self._cached_seconds.items() if k not in self.executed}

    def __call__(self, step, inputs: dict, key: str, index: int | None, count: int) -> dict:
        name = step.name if index is None else f"{step.name}-{index + 1}/{count}"
        task = step_task(step, self.run_dir, name)
        kwargs: dict[str, Any] = dict(step=step.name, cfg=self.cfg, run_dir=str(self.run_dir), inputs=inputs,
                                      key=key)
        if index is not None:
            kwargs["progress"] = self._moving(step, index, count)
        state = task(return_state=True, **kwargs)
        result = state.result()  # raises the task's exception if it failed
        self._record(step, state.name == "Cached", result)
        if index is not None:
            update_progress_artifact(kwargs["progress"]["artifact"], progress=100.0 * (index + 1) / count,
                                     description=f"{kwargs['progress']['label']}: {index + 1}/{count}")
            self.logger.info("%s %d/%d done", step.name, index + 1, count)
        return store.restore(result["outputs"], self.run_dir)

    def many(self, step, elements: list[tuple[dict, str]]) -> list[dict]:
        """Every element of a fan-out step: one after another in this process without a pool,
        else all submitted to the pool and collected in order (progress moves per element)."""
        count = len(elements)
        if self.pool is None or not count:
            return [self(step, inputs, key, i, count) for i, (inputs, key) in enumerate(elements)]
        futures = [self.pool.submit(step_task(step, self.run_dir, f"{step.name}-{i + 1}/{count}"),
                                    parameters=dict(step=step.name, cfg=self.cfg, run_dir=str(self.run_dir),
                                                    inputs=inputs, key=key))
                   for i, (inputs, key) in enumerate(elements)]
        artifact = self._moving(step, 0, count)["artifact"]
        outputs = []
        for i, future in enumerate(futures):
            result = future.result()  # raises the task's exception if it failed
            self._record(step, future.state.name == "Cached", result)
            update_progress_artifact(artifact, progress=100.0 * (i + 1) / count,
                                     description=f"{step.name} in {self.run_dir}: {i + 1}/{count}")
            self.logger.info("%s %d/%d done", step.name, i + 1, count)
            outputs.append(store.restore(result["outputs"], self.run_dir))
        return outputs

    def _record(self, step, cached: bool, result: dict) -> None:
        hit = cached or not result["ran"]
        (self.cached if hit else self.executed).append(step.name)
        if hit:
            self._cached_seconds[step.name] = round(self._cached_seconds.get(step.name, 0.0) + result["seconds"], 3)
        elif "process" in result:
            p = result["process"]
            seen = self.processes.setdefault(step.name, {})
            seen[(p["host"], p["pid"])] = max(seen.get((p["host"], p["pid"]), 0), p["backends_built"])

    def _moving(self, step, index: int, count: int) -> dict:
        """The progress artifact of a fan-out step (created at its first element)."""
        label = f"{step.name} in {self.run_dir}"
        if index == 0 or step.name not in self._progress:
            self._progress[step.name] = create_progress_artifact(
                progress=0.0, key=f"semievol-{step.task_name}", description=f"{label}: 0/{count}")
        return {"artifact": str(self._progress[step.name]), "index": index, "count": count, "label": label}


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


def publish_history(registry, key: str, description: str) -> None:
    """One row per challenger the registry has seen, oldest first: its accuracy with CI, the
    gate's decision and p, and whether it is the champion now. Written whole each run under one
    key, so the artifact's latest version is the whole history."""
    rows = []
    for rec in registry.records():
        m, d = rec.get("metrics") or {}, rec.get("decision") or {}
        rows.append({"adapter": rec["id"], "round": rec.get("round"), "created": rec.get("created"),
                     "accuracy": _num(m.get("accuracy")), "ci_low": _num(m.get("ci_low")),
                     "ci_high": _num(m.get("ci_high")), "against": d.get("against"),
                     "difference": _num(d.get("difference")), "mcnemar_p": _num(d.get("mcnemar_p")),
                     "promoted": d.get("promote"), "champion": rec["champion"]})
    create_table_artifact(table=rows, key=key, description=description)
