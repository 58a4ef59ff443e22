"""Rounds on accumulating rows (issue 11): the champion labels the pool, and a night generates and
justifies only the shards whose rows are new; `rounds.reuse_pseudo_labels: false` (the refresh) answers
every row again with the new warm model. Tiny random Llama, the in-process executor."""

from __future__ import annotations

import numpy as np
import pandas as pd

from conftest import sentiment_rows
from semievol_core.config import SemiEvolConfig
from semievol_core.data import append_part, split_oracle
from semievol_core.pipeline import run_semievol
from semievol_core.registry import Registry


def _cfg(model, **over) -> SemiEvolConfig:
    return SemiEvolConfig(model=str(model), train={"epochs": 1, "val_fraction": 0, "early_stopping_patience": None},
                          collaboration={"mode": "choice_logprobs", "knn_collaborator": True},
                          evaluation={"mode": "choice_logprobs", "bootstrap_samples": 200},
                          rounds={"warm_from": "champion", "reuse_pseudo_labels": True},
                          final={"training": "continue_union"}, execution={"progress": False, "shard_size": 4}, **over)


def _shards(run, kind) -> dict[str, int]:
    return {f.name: f.stat().st_mtime_ns for f in (run / kind).glob("shard-*.*")}


KINDS = ("embeddings/unlabeled", "responses", "justified")  # the per-shard outputs


def test_a_night_answers_only_new_rows_and_the_refresh_answers_all(tiny_model_dir, sentiment_dataset, tmp_path):
    run, reg = tmp_path / "nightly", Registry(tmp_path / "registry")
    cfg = _cfg(tiny_model_dir)
    run_semievol(sentiment_dataset, run, cfg, systems=["sft", "semievol"], registry=reg.root)
    # night 0 had no champion: the SFT labelled the pool; make its SemiEvol adapter the champion
    first = reg.records()[0]["id"]
    reg.promote(first)
    night0 = {kind: _shards(run, kind) for kind in KINDS}
    # 10 rows in generation shards of 4; embedding shards hold 4 x 4 = 16 rows, so the 10 rows,
    # a part under 16, are one open embedding group
    assert [len(night0[kind]) for kind in KINDS] == [1, 3, 3]

    # 3 new rows arrive as a new part: they get a shard of their own, the old shards stay
    unl, _ = split_oracle(pd.DataFrame(sentiment_rows(3, offset=5000)))
    append_part(unl, sentiment_dataset / "unlabeled", "unlabeled")
    report = run_semievol(sentiment_dataset, run, cfg, systems=["sft", "semievol"], registry=reg.root)
    for kind in KINDS:
        now = _shards(run, kind)
        assert all(now.get(k) == v for k, v in night0[kind].items()), kind  # nothing rewritten
        assert len(now) == len(night0[kind]) + 1, kind  # one new shard each
    # the open embedding group grew to 13 rows and was embedded again: the bounded re-work
    assert [np.load(run / "embeddings/unlabeled" / f).shape[0] for f in sorted(
        set(_shards(run, KINDS[0])) - set(night0[KINDS[0]]))] == [13]
    assert report["selection"]["n_unlabeled"] == 13
    assert report["gate"]["against"] == "champion"  # the challenger met the champion

    # the weekly refresh: every row answered again by the champion
    refresh = cfg.model_copy(update={"rounds": cfg.rounds.model_copy(update={"reuse_pseudo_labels": False})})
    run_semievol(sentiment_dataset, run, refresh, systems=["sft", "semievol"], registry=reg.root)
    assert len(_shards(run, "responses")) == 4 + 4  # every shard again: 4 + 4 + 2 and 3 rows
