"""The whole SemiEvol method in plain Python, step after step (no Prefect).

    report = run_semievol("data/fpb", "runs/fpb", SemiEvolConfig(), Limits(labeled=64, unlabeled=64))

The Prefect flow `flows/evolve.py` runs the same steps (semievol_core.steps) as cached, retried
tasks; this runner exists for tests, benchmarks and notebooks. Generation shards on disk are
re-used, so a re-run after a crash resumes where it stopped.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

from . import steps
from .config import SemiEvolConfig
from .data import read_table
from .report import write_report
from .steps import Limits

DEFAULT_SYSTEMS = ("vanilla", "rag_knn", "knn_vote", "sft", "semievol")


def run_semievol(data_dir: str | Path, out_dir: str | Path, cfg: SemiEvolConfig, limits: Limits = Limits(),
                 systems: Sequence[str] = DEFAULT_SYSTEMS, pseudo_labels: bool | None = None) -> dict:
    """Run the steps the requested `systems` need (e.g. only "sft": just the warm training and its
    evaluation). `pseudo_labels` forces (True) or skips (False) steps 2-5 regardless; by default
    they run when "semievol" is asked for. Adapters and generation shards already on disk for the
    same inputs are re-used."""
    out = Path(out_dir)
    timings: dict[str, float] = {}
    unknown = [s for s in systems if s not in steps.SYSTEMS]
    if unknown:
        raise ValueError(f"unknown systems {unknown}; choose from {list(steps.SYSTEMS)}")
    want_pseudo = "semievol" in systems if pseudo_labels is None else pseudo_labels
    if "semievol" in systems and not want_pseudo:
        raise ValueError("system 'semievol' needs the pseudo-labels: do not pass pseudo_labels=False with it")
    want_neighbors = want_pseudo or any(s in systems for s in ("rag_knn", "knn_vote"))
    warm = selection = test_nb = None

    @contextmanager
    def timed(name: str):
        t0 = time.perf_counter()
        yield
        timings[name] = round(time.perf_counter() - t0, 3)

    with timed("prepare"):
        d = steps.prepare_data(data_dir, out / "data", limits, cfg.seed)
        labeled, unlabeled, test = d / "labeled.parquet", d / "unlabeled.parquet", d / "test.parquet"
        answer_type = steps.answer_type_of(read_table(labeled, "labeled"), cfg)
    if want_pseudo or "sft" in systems:
        with timed("train-warm"):
            warm = steps.train_adapter(cfg, [(labeled, "labeled")], out / "warm_adapter")
    if want_neighbors:
        with timed("embed"):
            for name, path, kind in (("labeled", labeled, "labeled"), ("unlabeled", unlabeled, "unlabeled"),
                                     ("test", test, "test")):
                steps.embed_table(cfg, path, kind, out / "embeddings" / f"{name}.npy")
        with timed("retrieve"):
            emb = out / "embeddings"
            neighbors = steps.find_neighbors(cfg, unlabeled, "unlabeled", emb / "unlabeled.npy", labeled,
                                             emb / "labeled.npy", out / "neighbors.parquet")
            test_nb = steps.find_neighbors(cfg, test, "test", emb / "test.npy", labeled, emb / "labeled.npy",
                                           out / "test_neighbors.parquet")
    if want_pseudo:
        with timed("generate"):
            shards = [steps.generate_shard(cfg, ids, unlabeled, labeled, neighbors, warm, out / "responses",
                                           answer_type)
                      for ids in steps.shard_plan(unlabeled, cfg.execution.shard_size)]
            responses = steps.collect_responses(cfg, shards, labeled, neighbors, out / "responses.parquet")
        with timed("vote"):
            votes = steps.vote_step(responses, out / "votes.parquet")
        with timed("justify"):
            justified = steps.justify_step(cfg, votes, responses, unlabeled, warm, answer_type,
                                           out / "justified.parquet")
        with timed("select"):
            pseudo = steps.select_step(cfg, votes, justified, responses, labeled, out / "pseudo_labels.parquet")
            oracle = d / "oracle.parquet"
            selection = steps.selection_stats(pseudo, votes, oracle if oracle.exists() else None, answer_type,
                                              unlabeled, labeled=labeled, responses=responses,
                                              agreement=cfg.agreement)
    final = None
    if "semievol" in systems:
        with timed("train-final"):
            if cfg.final_training == "union":
                final = steps.train_adapter(cfg, [(labeled, "labeled")], out / "semievol_adapter",
                                            pseudo_labels=pseudo, unlabeled=unlabeled)
            else:
                final = steps.train_adapter(cfg, [], out / "semievol_adapter", init_adapter=warm,
                                            pseudo_labels=pseudo, unlabeled=unlabeled)
    results = {}
    adapters = {"sft": warm, "semievol": final}
    for system in systems:
        with timed(f"evaluate-{system}"):
            results[system] = steps.evaluate_system(
                cfg, system, test, answer_type, out / "predictions" / f"{system}.parquet",
                adapter=adapters.get(system), labeled=labeled, test_neighbors=test_nb)
    extra = {"answer_type": answer_type}
    if "sft" in results and "semievol" in results:
        extra.update(steps.verdict(out / "predictions", cfg))
    return write_report(out, cfg, results, selection or {}, timings, extra)
