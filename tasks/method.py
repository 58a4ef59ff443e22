"""Prefect tasks for the SemiEvol steps: thin wrappers over `semievol_core.steps`.

    from tasks.method import prepare, train, embed, retrieve, generate, collect, vote, justify, \
        filter_labels, evaluate
    res = prepare(cfg, "data/fpb", "runs/1/data", limits={"labeled": 64})
    res["path"], res["digest"], res["answer_type"]

Tasks take and return small values only: paths (str), the config, ids, answer types; each
returns `{"path", "digest", ...extras}` (tasks.common.output). Models and DataFrames never cross a
task boundary; the process's backend (steps.get_backend) is shared by all tasks of a flow run.

Each task is cached with `StepCache(...) + TASK_SOURCE` (see tasks.common): inputs by content,
the config by the fields the step reads, so changing θ invalidates `filter` and what depends on
its output, and nothing upstream. Results are JSON (small and human-readable); the flows point
`result_storage` at the run directory so cache entries live, and die, with the outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import TASK_SOURCE

from semievol_core import steps
from semievol_core.data import read_table, table_fingerprint

from .common import RETRY, StepCache, gpu_slot, output, record_execution, timed

# Config fields each step reads (checked against the core: collaboration.py, justification.py,
# evaluation.py, training.py). Generation's fields are inside steps.generation_key.
TRAIN_FIELDS = ("model", "train", "pseudo_weight")
EMBED_FIELDS = ("embedder",)
RETRIEVE_FIELDS = ("k_demos",)
COLLECT_FIELDS = ("knn_collaborator",)
JUSTIFY_FIELDS = ("model", "system_prompt", "collaboration_mode", "justify_max_new_tokens", "seed")
FILTER_FIELDS = ("theta", "selection_scope", "class_balance", "source_balance", "agreement", "class_quota")
EVAL_FIELDS = ("model", "eval_mode", "eval_max_new_tokens", "system_prompt", "k_demos",
               "bootstrap_samples", "seed")

COMMON = dict(result_serializer="json", **RETRY)


def _cached(**policy: Any):
    return StepCache(**policy) + TASK_SOURCE


# ------------------------------------------------------------------------------ data
def _dataset_key(inputs: dict) -> str:
    """The dataset's tables by content (not the directory: quarantine parts, locks and the like
    do not change what a run reads)."""
    d = Path(inputs["data_dir"])
    parts = []
    for name in ("labeled.parquet", "unlabeled", "test.parquet", "oracle.parquet"):
        p = d / name
        parts.append(f"{name}={table_fingerprint(p) if p.exists() else '-'}")
    return ";".join(parts)


@task(name="prepare", cache_policy=_cached(config_fields=("seed", "answer_type"), outputs=("out",),
                                           derived=_dataset_key, skip=("data_dir",)), **COMMON)
@timed
def prepare(cfg, data_dir: str, out: str, limits: dict | None = None) -> dict:
    """Copy (a seeded sample of) the dataset into the run; work out the answer type."""
    record_execution("prepare")
    d = steps.prepare_data(data_dir, out, steps.Limits(**(limits or {})), cfg.seed)
    labeled = read_table(d / "labeled.parquet", "labeled")
    counts = {name: len(read_table(d / f"{name}.parquet", name)) for name in ("unlabeled", "test")}
    counts["labeled"] = len(labeled)
    return output(d, answer_type=steps.answer_type_of(labeled, cfg), counts=counts)


@task(name="prepare-test", cache_policy=_cached(config_fields=("seed",), files=("test",),
                                                outputs=("out",)), **COMMON)
@timed
def prepare_test(cfg, test: str, out: str, limit: int | None = None) -> dict:
    """A (sampled) copy of one test table, for the evaluate flow."""
    from semievol_core.data import write_table

    record_execution("prepare-test")
    df = read_table(test, "test")
    if limit is not None and limit < len(df):
        df = df.sample(n=limit, random_state=cfg.seed).sort_index()
    if df.empty:
        raise ValueError(f"{test}: the test table is empty")
    write_table(df.reset_index(drop=True), out, "test")
    return output(out, answer_type=steps.answer_type_of(df, cfg), n=len(df))


# ------------------------------------------------------------------------------ 1 / 6. training
@task(name="train", cache_policy=_cached(config_fields=TRAIN_FIELDS, outputs=("out",),
                                         files=("labeled", "init_adapter", "pseudo_labels", "unlabeled")),
      **COMMON)
@timed
def train(cfg, out: str, labeled: str | None = None, init_adapter: str | None = None,
          pseudo_labels: str | None = None, unlabeled: str | None = None) -> dict:
    """LoRA SFT on the labeled table (+ selected pseudo-labels), optionally from an adapter."""
    record_execution(f"train:{Path(out).name}")
    tables = [(labeled, "labeled")] if labeled else []
    with gpu_slot():
        path = steps.train_adapter(cfg, tables, out, init_adapter=init_adapter,
                                   pseudo_labels=pseudo_labels, unlabeled=unlabeled)
    return output(path)


# ------------------------------------------------------------------------------ 2. in-context propagation
@task(name="embed", cache_policy=_cached(config_fields=EMBED_FIELDS, files=("table",), outputs=("out",)),
      **COMMON)
@timed
def embed(cfg, table: str, kind: str, out: str) -> dict:
    record_execution(f"embed:{kind}")
    # The embedder sits on the accelerator as well: hold the slot like the other model steps.
    with gpu_slot():
        return output(steps.embed_table(cfg, table, kind, out))


@task(name="retrieve", cache_policy=_cached(config_fields=RETRIEVE_FIELDS, outputs=("out",),
                                            files=("queries", "query_vecs", "labeled", "labeled_vecs")),
      **COMMON)
@timed
def retrieve(cfg, queries: str, query_kind: str, query_vecs: str, labeled: str, labeled_vecs: str,
             out: str) -> dict:
    record_execution(f"retrieve:{query_kind}")
    return output(steps.find_neighbors(cfg, queries, query_kind, query_vecs, labeled, labeled_vecs, out))


# ------------------------------------------------------------------------------ 3. collaboration
def shard_key(inputs: dict) -> str:
    """A shard's own generation key: its questions, their demos, the warm adapter's bytes, the
    generation settings (steps.generation_key). Rows appended to the table later do not change
    it, so earlier shards stay cached when the dataset grows."""
    from semievol_core.steps import demos_by_id, generation_key, load_frame

    ids = list(inputs["ids"])
    qs = read_table(inputs["unlabeled"], "unlabeled").set_index("id").loc[ids].reset_index()
    nb = load_frame(inputs["neighbors"])
    demos = demos_by_id(nb[nb["unlabeled_id"].isin(ids)], read_table(inputs["labeled"], "labeled"))
    return generation_key(inputs["cfg"], inputs["warm_adapter"], qs, demos)


@task(name="generate", cache_policy=_cached(derived=shard_key, outputs=("shard_dir",),
                                            skip=("cfg", "ids", "unlabeled", "labeled", "neighbors",
                                                  "warm_adapter", "progress")),
      **COMMON)
@timed
def generate(cfg, ids: list[str], unlabeled: str, labeled: str, neighbors: str, warm_adapter: str,
             shard_dir: str, answer_type: str, progress: dict | None = None) -> dict:
    """Every collaborator's responses for one shard of questions (one Parquet file per shard).

    progress: {"artifact": id, "shard": i, "shards": n, "label": text} moves that progress
    artifact after each collaborator group, not only once per shard (execution-only: not keyed)."""
    record_execution("generate")
    with gpu_slot():
        path = steps.generate_shard(cfg, ids, unlabeled, labeled, neighbors, warm_adapter, shard_dir,
                                    answer_type, on_progress=_progress_mover(progress))
    return output(path, n=len(ids))


def _progress_mover(progress: dict | None):
    """fraction of this shard done -> the flow's progress artifact, in percent of all shards."""
    if not progress:
        return None
    from prefect.artifacts import update_progress_artifact

    def move(fraction: float) -> None:
        done = progress["shard"] - 1 + fraction
        update_progress_artifact(progress["artifact"], progress=100.0 * done / progress["shards"],
                                 description=f"{progress['label']}: {done:.2f}/{progress['shards']} shards")

    return move


@task(name="collect", cache_policy=_cached(config_fields=COLLECT_FIELDS, outputs=("out",),
                                           files=("shards", "labeled", "neighbors")), **COMMON)
@timed
def collect(cfg, shards: list[str], labeled: str, neighbors: str, out: str) -> dict:
    record_execution("collect")
    return output(steps.collect_responses(cfg, shards, labeled, neighbors, out))


# ------------------------------------------------------------------------------ 4-5. vote, justify, filter
@task(name="vote", cache_policy=_cached(files=("responses",), outputs=("out",)), **COMMON)
@timed
def vote(responses: str, out: str) -> dict:
    record_execution("vote")
    return output(steps.vote_step(responses, out))


@task(name="justify", cache_policy=_cached(config_fields=JUSTIFY_FIELDS, outputs=("out",),
                                           files=("votes", "responses", "unlabeled", "warm_adapter")),
      **COMMON)
@timed
def justify(cfg, votes: str, responses: str, unlabeled: str, warm_adapter: str, answer_type: str,
            out: str) -> dict:
    record_execution("justify")
    with gpu_slot():
        return output(steps.justify_step(cfg, votes, responses, unlabeled, warm_adapter, answer_type, out))


@task(name="filter", cache_policy=_cached(config_fields=FILTER_FIELDS, outputs=("out",),
                                          files=("votes", "justified", "responses", "unlabeled", "labeled",
                                                 "oracle")),
      **COMMON)
@timed
def filter_labels(cfg, votes: str, justified: str, responses: str, unlabeled: str, labeled: str,
                  oracle: str | None, answer_type: str, out: str) -> dict:
    """Adaptive selection (θ; kNN agreement, class quotas from the labeled prior) and its
    statistics (removed per rule, class mix vs the labeled prior, accuracy when an oracle exists)."""
    record_execution("filter")
    path = steps.select_step(cfg, votes, justified, responses, labeled, out)
    return output(path, stats=steps.selection_stats(path, votes, oracle, answer_type, unlabeled, labeled=labeled,
                                                    responses=responses, agreement=cfg.agreement))


# ------------------------------------------------------------------------------ 7. evaluation
@task(name="evaluate", cache_policy=_cached(config_fields=EVAL_FIELDS, outputs=("out",),
                                            files=("test", "adapter", "labeled", "test_neighbors")),
      **COMMON)
@timed
def evaluate(cfg, system: str, test: str, answer_type: str, out: str, adapter: str | None = None,
             labeled: str | None = None, test_neighbors: str | None = None) -> dict:
    """Predictions of one system on the test table, and its metrics (accuracy with a CI...)."""
    record_execution(f"evaluate:{system}")
    if system == "knn_vote":  # a label vote over neighbours: no model involved
        m = steps.evaluate_system(cfg, system, test, answer_type, out, adapter, labeled, test_neighbors)
    else:
        with gpu_slot():
            m = steps.evaluate_system(cfg, system, test, answer_type, out, adapter, labeled, test_neighbors)
    return output(out, metrics=m)
