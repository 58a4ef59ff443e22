"""The whole SemiEvol method in plain Python, in process (no Prefect).

    report = run_semievol("data/fpb", "runs/fpb", SemiEvolConfig(), Limits(labeled=64, unlabeled=64))
    report = run_semievol("data/fpb", "runs/fpb", cfg, systems=["sft"])   # only what SFT needs

Walks the method graph declared in `semievol_core.graph`, calling each step directly; the Prefect
flow `flows/evolve.py` walks the same graph with every step a cached, retried task. This runner is
for tests, benchmarks and notebooks. Adapters and generation shards already on disk for the same
inputs are re-used, so a re-run after a crash resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from . import graph
from .config import SemiEvolConfig
from .steps import Limits

DEFAULT_SYSTEMS = graph.SYSTEMS


def run_semievol(data_dir: str | Path, out_dir: str | Path, cfg: SemiEvolConfig, limits: Limits = Limits(),
                 systems: Sequence[str] = DEFAULT_SYSTEMS, pseudo_labels: bool = False) -> dict:
    """Run the steps the requested `systems` need (e.g. only "sft": just the warm training and its
    evaluation); `pseudo_labels=True` also runs selection when no system needs it."""
    out = Path(out_dir)
    todo = graph.plan(systems, pseudo_labels=pseudo_labels)
    timings: dict[str, float] = {}
    sources = {"data_dir": str(data_dir), "limits": limits.model_dump()}
    values = graph.execute(todo, sources, graph.call_in_process(cfg, out), timings)
    return graph.finish(out, cfg, values, systems, timings)[0]
