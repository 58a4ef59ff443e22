"""The whole SemiEvol method in plain Python, in process (no Prefect).

    report = run_semievol("data/fpb", "runs/fpb", SemiEvolConfig(), Limits(labeled=64, unlabeled=64))
    report = run_semievol("data/fpb", "runs/fpb", cfg, systems=["sft"])   # only what SFT needs

Walks the method graph declared in `semievol_core.graph`, calling each step directly; the Prefect
flow `flows/evolve.py` walks the same graph with every step a cached task. This runner is
for tests, benchmarks and notebooks. A step whose key directory is complete (semievol_core/store.py)
is not run again, so a re-run after a crash resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from . import graph
from .config import SemiEvolConfig
from .registry import Registry
from .steps import Limits, run_dir_lock

DEFAULT_SYSTEMS = graph.SYSTEMS


def run_semievol(data_dir: str | Path, out_dir: str | Path, cfg: SemiEvolConfig, limits: Limits = Limits(),
                 systems: Sequence[str] = DEFAULT_SYSTEMS, pseudo_labels: bool = False,
                 registry: str | Path | None = None) -> dict:
    """Run the steps the requested `systems` need (e.g. only "sft": just the warm training and its
    evaluation); `pseudo_labels=True` also runs selection when no system needs it. With a
    `registry` directory, the promotion gate runs and the SemiEvol adapter is registered there and
    promoted or not (semievol_core/registry.py, gate.py)."""
    out = Path(out_dir)
    reg = Registry(registry) if registry is not None else None
    todo = graph.plan(systems, pseudo_labels=pseudo_labels, gate=reg is not None and "semievol" in systems)
    timings: dict[str, float] = {}
    with run_dir_lock(out):  # one run per directory: a second one fails at once (atomic.LockHeld)
        call = graph.InProcess(cfg, out)
        values = graph.execute(todo, graph.sources(data_dir, limits, reg), call, cfg, out, timings)
        return graph.finish(out, cfg, values, systems, timings, call.cached_seconds,
                            registry=reg if "semievol" in systems else None)[0]
