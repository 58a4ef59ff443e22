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
                 systems: Sequence[str] = DEFAULT_SYSTEMS) -> dict:
    out = Path(out_dir)
    timings: dict[str, float] = {}

    @contextmanager
    def timed(name: str):
        t0 = time.perf_counter()
        yield
        timings[name] = round(time.perf_counter() - t0, 3)

    with timed("prepare"):
        d = steps.prepare_data(data_dir, out / "data", limits, cfg.seed)
        labeled, unlabeled, test = d / "labeled.parquet", d / "unlabeled.parquet", d / "test.parquet"
        answer_type = steps.answer_type_of(read_table(labeled, "labeled"), cfg)
    with timed("train_warm"):
        warm = steps.train_adapter(cfg, [(labeled, "labeled")], out / "warm_adapter")
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
        pseudo = steps.select_step(cfg, votes, justified, responses, out / "pseudo_labels.parquet")
        oracle = d / "oracle.parquet"
        selection = steps.selection_stats(pseudo, votes, oracle if oracle.exists() else None, answer_type)
    with timed("train_final"):
        if cfg.final_training == "union":
            final = steps.train_adapter(cfg, [(labeled, "labeled")], out / "semievol_adapter",
                                        pseudo_labels=pseudo, unlabeled=unlabeled)
        else:
            final = steps.train_adapter(cfg, [], out / "semievol_adapter", init_adapter=warm,
                                        pseudo_labels=pseudo, unlabeled=unlabeled)
    results = {}
    adapters = {"sft": warm, "semievol": final}
    for system in systems:
        with timed(f"evaluate_{system}"):
            results[system] = steps.evaluate_system(
                cfg, system, test, answer_type, out / "predictions" / f"{system}.parquet",
                adapter=adapters.get(system), labeled=labeled, test_neighbors=test_nb)
    extra = {"answer_type": answer_type}
    if "sft" in results and "semievol" in results:
        extra["mcnemar_p_semievol_vs_sft"] = steps.compare(out / "predictions" / "semievol.parquet",
                                                           out / "predictions" / "sft.parquet")
    return write_report(out, cfg, results, selection, timings, extra)
