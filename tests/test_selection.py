"""Pseudo-label selection beyond the H quantile (issue 9): kNN agreement, class quotas from the
labeled prior, statistics a user can trust (removals per rule, class mix vs the prior, the warning),
and the final fine-tune's gold-only validation and pseudo-label loss weight. Small hand-made
tables with known picks; no model."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pandas as pd
import pytest
from pydantic import ValidationError

from semievol_core import steps
from semievol_core.collaboration import RESPONSE_COLUMNS, knn_responses
from semievol_core.config import SemiEvolConfig
from semievol_core.data import write_table
from semievol_core.report import selection_table
from semievol_core.selection import (
    class_mix,
    class_mix_warning,
    class_quotas,
    removal_counts,
    select_pseudo_labels,
)
from semievol_core.training import IGNORE_INDEX, PadCollator, split_indices, target_loss
from semievol_core.voting import vote

OPTS = ["negative", "neutral", "positive", "mixed"]


def tables(spec):
    """(votes, justified, responses) from rows (uid, source, answer, H, knn vote or None).

    consensus: two LLM replies with `answer` at H (and the kNN vote, which must agree, else there
    is no consensus); justified: LLM replies `answer` and "Z" (disputed), the justifier's `answer`
    (None: unparsable) at H."""
    rows, knn, just = [], [], []
    for uid, source, answer, h, knn_answer in spec:
        replies = [answer, answer] if source == "consensus" else [answer or "A", "Z"]
        for i, a in enumerate(replies):
            rows.append((uid, f"c{i}", "warm", 0, 0, f"Answer: {a}", a, True, "marker", 3, h, "stop"))
        if knn_answer is not None:
            knn.append((uid, knn_answer, 1.0))
        if source == "justified":
            just.append((uid, "", answer, answer is not None, 3, h))
    responses = pd.DataFrame(rows, columns=RESPONSE_COLUMNS)
    if knn:
        knn_rows = knn_responses(pd.DataFrame(knn, columns=["unlabeled_id", "answer", "agreement"]))
        responses = pd.concat([responses, knn_rows], ignore_index=True)
    justified = pd.DataFrame(just, columns=["unlabeled_id", "text", "answer", "parse_ok", "num_tokens", "H"])
    votes = vote(responses)
    assert votes.set_index("unlabeled_id")["consensus"].to_dict() == {r[0]: r[1] == "consensus" for r in spec}
    return votes, justified, responses


def picked(df):
    return set(df.loc[df["selected"], "unlabeled_id"])


# The warm model's most confident labels (u2, u3) are the ones the kNN vote contradicts or lacks.
AGREEMENT_SPEC = [
    ("u1", "consensus", "A", 0.15, "A"),
    ("u2", "consensus", "B", 0.10, None),  # no kNN vote for this question
    ("u3", "justified", "A", 0.05, "B"),  # the kNN vote disagrees
    ("u4", "justified", "C", 0.60, "C"),
    ("u5", "justified", None, 0.01, "B"),  # unparsable
    ("u6", "justified", "B", 0.30, "B"),
]


# ---------------------------------------------------------------- 1. cross-view agreement
def test_agreement_keeps_only_labels_the_knn_vote_shares_then_cuts_by_H():
    votes, justified, resp = tables(AGREEMENT_SPEC)
    plain = select_pseudo_labels(votes, justified, resp, theta=0.5)
    assert picked(plain) == {"u1", "u2", "u3"}  # today: the lowest H, agreed or not
    agreed = select_pseudo_labels(votes, justified, resp, theta=0.5, agreement="knn")
    # Quantile over the agreeing labels only (u1 0.15, u6 0.30, u4 0.60): median 0.30.
    assert picked(agreed) == {"u1", "u6"}
    assert agreed.set_index("unlabeled_id").loc["u1", "threshold"] == pytest.approx(0.30)
    assert picked(select_pseudo_labels(votes, justified, resp, theta=1.0, agreement="knn")) == {"u1", "u4", "u6"}
    counts = removal_counts(agreed, resp, "knn")
    assert counts == {"removed_unparsed": 1, "removed_by_agreement": 2, "removed_by_threshold": 1}
    assert sum(counts.values()) + len(picked(agreed)) == len(agreed)
    assert removal_counts(plain, resp) == {"removed_unparsed": 1, "removed_by_agreement": 0,
                                           "removed_by_threshold": 2}
    # The released code's scope keeps every agreeing consensus label, quantile over the justified.
    rel = select_pseudo_labels(votes, justified, resp, theta=0.5, scope="justified", agreement="knn")
    assert picked(rel) == {"u1", "u6"}  # u2 (consensus, no kNN vote) is out


def test_agreement_without_a_knn_vote_fails_loudly():
    votes, justified, resp = tables(AGREEMENT_SPEC)
    llm_only = resp[resp["model"] != "knn"]
    with pytest.raises(ValueError, match="knn_collaborator"):
        select_pseudo_labels(votes, justified, llm_only, agreement="knn")
    with pytest.raises(ValidationError, match="knn_collaborator"):
        SemiEvolConfig(selection={"agreement": "knn"})
    with pytest.raises(ValidationError, match="k_demos"):
        SemiEvolConfig(selection={"agreement": "knn"}, collaboration={"knn_collaborator": True},
                       propagation={"k_demos": 0})
    cfg = SemiEvolConfig(selection={"agreement": "knn"}, collaboration={"knn_collaborator": True})
    assert cfg.result_key("selection") != SemiEvolConfig().result_key("selection")


# ---------------------------------------------------------------- 2. class quotas from the prior
LABELED = ["A"] * 2 + ["B"] * 6 + ["C"] * 2  # prior 20% / 60% / 20%


def quota_spec(knn_b12="B", knn_d="D"):
    """Six confident B labels, three less sure A, none of class C, and a D no labeled row has."""
    spec = [(f"b{i}", "consensus", "B", 0.01 * i, "B") for i in range(3, 7)]
    spec += [(f"b{i}", "justified" if knn_b12 != "B" else "consensus", "B", 0.01 * i, knn_b12) for i in (1, 2)]
    spec += [(f"a{i}", "consensus", "A", h, "A") for i, h in ((1, 0.5), (2, 0.7), (3, 0.9))]
    spec += [("d1", "justified" if knn_d != "D" else "consensus", "D", 0.0, knn_d)]
    return spec


def test_class_quotas_are_largest_remainder_shares_of_the_prior():
    assert class_quotas(["A"] * 5 + ["B"] * 3 + ["C"] * 2, 4) == {"A": 2, "B": 1, "C": 1}  # 2.0 1.2 0.8
    assert class_quotas(["A", "B", "C"], 2) == {"A": 1, "B": 1, "C": 0}  # equal remainders: first class
    assert class_quotas(LABELED, 5) == {"A": 1, "B": 3, "C": 1}
    assert class_quotas(LABELED, 0) == {"A": 0, "B": 0, "C": 0}
    assert sum(class_quotas(["A"] * 7 + ["B"] * 11 + ["C"] * 13, 17).values()) == 17


def test_class_quota_keeps_each_class_lowest_H_up_to_its_share_without_redistributing():
    votes, justified, resp = tables(quota_spec())
    plain = select_pseudo_labels(votes, justified, resp, theta=0.5)
    assert picked(plain) == {"d1", "b1", "b2", "b3", "b4"}  # the H quantile: no A at all
    sel = select_pseudo_labels(votes, justified, resp, theta=0.5, class_quota="prior", labeled_answers=LABELED)
    # 10 eligible x 0.5 = 5 -> A 1, B 3, C 1; C has no candidate and its slot stays empty; D gets none.
    assert picked(sel) == {"b1", "b2", "b3", "a1"}
    thr = sel.set_index("unlabeled_id")["threshold"]
    assert thr["b6"] == pytest.approx(0.03) and thr["a3"] == pytest.approx(0.5) and math.isnan(thr["d1"])
    assert removal_counts(sel, resp) == {"removed_unparsed": 0, "removed_by_agreement": 0,
                                         "removed_by_threshold": 6}
    everything = select_pseudo_labels(votes, justified, resp, theta=1.0, class_quota="prior",
                                      labeled_answers=LABELED)
    assert picked(everything) == {"b1", "b2", "b3", "b4", "b5", "b6", "a1", "a2"}  # 10 -> A 2, B 6, C 2


def test_class_quota_counts_what_agreement_left():
    votes, justified, resp = tables(quota_spec(knn_b12="A", knn_d="A"))
    sel = select_pseudo_labels(votes, justified, resp, theta=0.5, agreement="knn", class_quota="prior",
                               labeled_answers=LABELED)
    # b1, b2, d1 disagree with the kNN vote; 7 left x 0.5 -> 3: B 1.8, A 0.6, C 0.6 -> B 2, A 1, C 0.
    assert picked(sel) == {"b3", "b4", "a1"}
    assert removal_counts(sel, resp, "knn") == {"removed_unparsed": 0, "removed_by_agreement": 3,
                                                "removed_by_threshold": 4}


def test_class_quota_refuses_the_quantile_options_it_replaces():
    for clash in ({"class_balance": True}, {"source_balance": True}, {"scope": "justified"}):
        with pytest.raises(ValidationError, match="class_quota 'prior' replaces"):
            SemiEvolConfig(selection={"class_quota": "prior", **clash})
    votes, justified, resp = tables(quota_spec())
    with pytest.raises(ValueError, match="does not combine"):
        select_pseudo_labels(votes, justified, resp, class_quota="prior", labeled_answers=LABELED,
                             class_balance=True)
    with pytest.raises(ValueError, match="labeled answers"):
        select_pseudo_labels(votes, justified, resp, class_quota="prior")


# ---------------------------------------------------------------- 3. statistics
def test_class_mix_and_its_warning():
    mix = class_mix(["B", "B", "B", "A"], LABELED)
    assert mix == {"A": {"labeled": 0.2, "selected": 0.25}, "B": {"labeled": 0.6, "selected": 0.75},
                   "C": {"labeled": 0.2, "selected": 0.0}}
    warning = class_mix_warning(mix)  # A 5 points off, B 15 (not more than 15), C 20
    assert "C: 0.0% selected vs 20.0% labeled" in warning and "A:" not in warning and "B:" not in warning
    mix["C"]["labeled"] = 0.1  # now every class is within 15 points
    assert class_mix_warning(mix) is None
    lopsided = class_mix(["B"] * 4, LABELED)
    warning = class_mix_warning(lopsided)
    assert "A: 0.0% selected vs 20.0% labeled" in warning and "B: 100.0% selected vs 60.0% labeled" in warning
    assert "C: 0.0% selected vs 20.0% labeled" in warning and "15 points" in warning
    assert "no pseudo-label was selected" in class_mix_warning(class_mix([], LABELED))


def test_class_mix_warning_boundary():
    exactly = {"A": {"labeled": 0.5, "selected": 0.65}, "B": {"labeled": 0.5, "selected": 0.35}}
    assert class_mix_warning(exactly) is None  # 15 points is not more than 15
    over = {"A": {"labeled": 0.5, "selected": 0.66}, "B": {"labeled": 0.5, "selected": 0.34}}
    assert class_mix_warning(over).count("% selected vs") == 2


def _write_run(tmp_path, spec, labeled=LABELED, oracle=None):
    votes, justified, resp = tables(spec)
    paths = {name: steps.save_frame(df, tmp_path / f"{name}.parquet")
             for name, df in (("votes", votes), ("justified", justified), ("responses", resp))}
    uids = [r[0] for r in spec]
    write_table(pd.DataFrame({"id": uids, "question": [f"q {u}" for u in uids], "options": [OPTS] * len(uids)}),
                tmp_path / "unlabeled.parquet", "unlabeled")
    write_table(pd.DataFrame({"id": [f"l{i}" for i in range(len(labeled))],
                              "question": [f"lab {i}" for i in range(len(labeled))],
                              "options": [OPTS] * len(labeled), "answer": labeled}),
                tmp_path / "labeled.parquet", "labeled")
    paths["unlabeled"], paths["labeled"] = tmp_path / "unlabeled.parquet", tmp_path / "labeled.parquet"
    if oracle is not None:
        write_table(pd.DataFrame({"id": list(oracle), "answer": list(oracle.values())}),
                    tmp_path / "oracle.parquet", "oracle")
        paths["oracle"] = tmp_path / "oracle.parquet"
    return paths


def test_selection_stats_report_removals_class_mix_and_warn(tmp_path, caplog):
    oracle = {u: "B" for u in ("b1", "b2", "b3", "b4", "b5", "b6")} | {"a1": "A", "a2": "B", "a3": "A", "d1": "C"}
    p = _write_run(tmp_path, quota_spec(), oracle=oracle)
    cfg = SemiEvolConfig(selection={"theta": 0.5})  # today's rule: the lowest H, all B and D
    pseudo = steps.select_step(cfg, p["votes"], p["justified"], p["responses"], p["labeled"],
                               tmp_path / "pseudo_labels.parquet")
    with caplog.at_level(logging.WARNING, logger="semievol_core.steps"):
        stats = steps.selection_stats(pseudo, p["votes"], p["oracle"], "choice", p["unlabeled"],
                                      labeled=p["labeled"], responses=p["responses"], agreement=cfg.selection.agreement)
    assert stats["n_selected"] == 5 and stats["pseudo_label_accuracy"] == pytest.approx(0.8)
    assert (stats["removed_unparsed"], stats["removed_by_agreement"], stats["removed_by_threshold"]) == (0, 0, 5)
    assert stats["selected_class_counts"] == {"B (neutral)": 4, "D (mixed)": 1}
    assert stats["class_mix"]["A (negative)"] == {"labeled": 0.2, "selected": 0.0}
    assert stats["class_mix"]["D (mixed)"] == {"labeled": 0.0, "selected": 0.2}
    assert "B (neutral): 80.0% selected vs 60.0% labeled" in stats["class_mix_warning"]
    assert "A (negative): 0.0% selected vs 20.0% labeled" in stats["class_mix_warning"]
    assert any("80.0% selected" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    md = selection_table(stats)
    assert md.startswith("**Warning: the selected pseudo-labels' class mix")
    assert "| class | labeled prior % | selected % | selected n |" in md
    assert "| A (negative) | 20.0 | 0.0 | 0 |" in md and "| B (neutral) | 60.0 | 80.0 | 4 |" in md
    assert "{" not in md  # no dict dumped as a string
    assert "| removed_by_threshold | 5 |" in md

    # Quotas from the prior: A (negative) is back, B within 15 points; C (positive) had no
    # candidate, so its empty slot is still reported.
    cfg = SemiEvolConfig(selection={"theta": 0.5, "class_quota": "prior"})
    pseudo = steps.select_step(cfg, p["votes"], p["justified"], p["responses"], p["labeled"],
                               tmp_path / "pseudo_labels.parquet")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="semievol_core.steps"):
        stats = steps.selection_stats(pseudo, p["votes"], p["oracle"], "choice", p["unlabeled"],
                                      labeled=p["labeled"], responses=p["responses"], agreement=cfg.selection.agreement)
    assert stats["selected_class_counts"] == {"A (negative)": 1, "B (neutral)": 3}
    assert stats["pseudo_label_accuracy"] == 1.0
    assert stats["class_mix_warning"].endswith("C (positive): 0.0% selected vs 20.0% labeled")
    assert len(caplog.records) == 1
    # Within 15 points everywhere: no warning, nothing logged.
    p = _write_run(tmp_path, quota_spec(), labeled=["A"] * 3 + ["B"] * 7)
    pseudo = steps.select_step(cfg, p["votes"], p["justified"], p["responses"], p["labeled"],
                               tmp_path / "pseudo_labels.parquet")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="semievol_core.steps"):
        stats = steps.selection_stats(pseudo, p["votes"], None, "choice", p["unlabeled"],
                                      labeled=p["labeled"], responses=p["responses"], agreement=cfg.selection.agreement)
    # 5 -> A 1.5, B 3.5: equal remainders, the first class gets the slot; 40% vs 30%, 60% vs 70%.
    assert stats["selected_class_counts"] == {"A (negative)": 2, "B (neutral)": 3}
    assert "class_mix_warning" not in stats and not caplog.records
    assert "**Warning" not in selection_table(stats)


def test_class_quota_needs_a_choice_task(tmp_path):
    p = _write_run(tmp_path, quota_spec())
    write_table(pd.DataFrame({"id": ["l0"], "question": ["2+2?"], "options": [None], "answer": ["4"]}),
                p["labeled"], "labeled")
    with pytest.raises(ValueError, match="multiple-choice"):
        steps.select_step(SemiEvolConfig(selection={"class_quota": "prior"}), p["votes"], p["justified"],
                          p["responses"], p["labeled"], tmp_path / "pl.parquet")


def test_publish_selection_rows(monkeypatch):
    import flows.common as common

    seen = {}
    monkeypatch.setattr(common, "create_table_artifact", lambda table, key, description: seen.update(rows=table))
    common.publish_selection({"n_selected": 4, "threshold": 0.123456, "selected_class_counts": {"B (neutral)": 4},
                              "class_mix": {"B (neutral)": {"labeled": 0.6, "selected": 1.0}},
                              "class_mix_warning": "far off"}, key="k", description="d")
    rows = {r["statistic"]: r["value"] for r in seen["rows"]}
    assert seen["rows"][0] == {"statistic": "class_mix_warning", "value": "far off"}
    assert rows["threshold"] == 0.1235 and rows["class B (neutral)"] == "labeled prior 60.0% | selected 100.0%"


def test_new_fields_enter_the_right_cache_keys(tmp_path):
    from semievol_core import graph

    def key(step, cfg):
        inputs = {name: "x" for name in graph.BY_NAME[step].inputs}
        return graph.step_key(graph.BY_NAME[step], cfg, inputs, digest=lambda p: "d")

    base = {"collaboration": {"knn_collaborator": True}}
    for step, change in (("select", {"selection": {"agreement": "knn"}}),
                         ("select", {"selection": {"class_quota": "prior"}}),
                         ("train-final", {"final": {"pseudo_weight": 0.5}})):
        assert key(step, SemiEvolConfig(**base)) != key(step, SemiEvolConfig(**base, **change)), (step, change)
    assert key("train-warm", SemiEvolConfig(**base)) == key("train-warm",
                                                             SemiEvolConfig(**base, selection={"theta": 0.1}))
    assert key("train-warm", SemiEvolConfig(**base)) == key("train-warm",
                                                             SemiEvolConfig(**base, final={"pseudo_weight": 0.5}))
    assert "labeled" in graph.BY_NAME["select"].inputs  # class_quota reads the labeled prior
    defaults = SemiEvolConfig()
    assert (defaults.selection.agreement, defaults.selection.class_quota, defaults.final.pseudo_weight) == (
        "none", "none", 1.0)
    with pytest.raises(ValidationError, match=r"final\.pseudo_weight"):
        SemiEvolConfig(final={"pseudo_weight": 0})


# ---------------------------------------------------------------- 4-5. the final fine-tune
def test_validation_rows_come_from_the_gold_examples_only():
    train, val = split_indices(100, 0.1, seed=3, n_gold=30)
    assert len(val) == 3 and all(i < 30 for i in val)  # 10% of the 30 gold rows
    assert sorted(train + val) == list(range(100)) and not set(train) & set(val)
    assert split_indices(40, 0.2, 0, n_gold=40) == split_indices(40, 0.2, 0)  # all gold: the plain split
    assert split_indices(40, 0.2, 0, n_gold=None) == split_indices(40, 0.2, 0)
    assert split_indices(10, 0.1, 0, n_gold=0) == (list(range(10)), [])  # pseudo-labels only: none
    assert split_indices(10, 0.1, 0, n_gold=1)[1] == [0]


def test_training_examples_mark_gold_rows_first(tmp_path):
    p = _write_run(tmp_path, AGREEMENT_SPEC, labeled=["A", "B", "C"])
    cfg = SemiEvolConfig(selection={"agreement": "knn"}, collaboration={"knn_collaborator": True})
    pseudo = steps.select_step(cfg, p["votes"], p["justified"], p["responses"], p["labeled"],
                               tmp_path / "pl.parquet")
    ex = steps.training_examples([(p["labeled"], "labeled")], pseudo, p["unlabeled"])
    assert ex["gold"].tolist() == [True] * 3 + [False] * 2
    assert ex["question"].tolist()[3:] == ["q u1", "q u6"] and ex["answer"].tolist()[3:] == ["A", "B"]


def test_pseudo_weight_scales_those_rows_loss():
    import torch

    torch.manual_seed(0)
    batch = PadCollator(0)([{"input_ids": [5, 6, 7, 8], "labels": [IGNORE_INDEX, IGNORE_INDEX, 7, 8]},
                            {"input_ids": [5, 9, 8], "labels": [IGNORE_INDEX, 9, 8], "weight": 0.5}])
    assert batch["loss_weights"].tolist() == [1.0, 0.5]
    assert "loss_weights" not in PadCollator(0)([{"input_ids": [5, 6], "labels": [IGNORE_INDEX, 6]}])
    labels = batch["labels"]
    out = SimpleNamespace(logits=torch.randn(2, batch["logits_to_keep"], 12))
    plain = target_loss(out, labels)
    assert target_loss(out, labels, row_weights=torch.ones(2)).item() == pytest.approx(plain.item(), rel=1e-6)
    # Row by row: each row's token-loss sum, the second halved, over all 4 target tokens.
    row = [target_loss(out, labels.clone().index_fill_(0, torch.tensor([1 - i]), IGNORE_INDEX)) for i in (0, 1)]
    sums = [row[0].item() * 2, row[1].item() * 2]  # each row has 2 target tokens
    weighted = target_loss(out, labels, num_items_in_batch=4, row_weights=batch["loss_weights"])
    assert weighted.item() == pytest.approx((sums[0] + 0.5 * sums[1]) / 4, rel=1e-5)


def test_final_fine_tune_validates_on_gold_and_weights_pseudo_labels(tiny_model_dir, tmp_path):
    """The real Trainer path: loss weights reach target_loss (not the model), validation is gold."""
    import json

    from semievol_core.training import TrainConfig, train_lora

    n = 16
    df = pd.DataFrame({"question": [f"Headline {i}: profits moved." for i in range(n)], "options": [OPTS[:3]] * n,
                       "answer": ["ABC"[i % 3] for i in range(n)]})
    cfg = TrainConfig(epochs=1, batch_size=4, val_fraction=0.25, max_length=256, early_stopping_patience=None)
    curves = {}
    for w in (1.0, 0.5):
        train_lora(str(tiny_model_dir), df, tmp_path / str(w), cfg, progress=False, n_gold=8, pseudo_weight=w)
        run = json.loads((tmp_path / str(w) / "train_config.json").read_text())
        assert (run["n_train"], run["n_val"]) == (14, 2)  # 25% of the 8 gold rows
        curves[w] = json.loads((tmp_path / str(w) / "loss_curve.json").read_text())
    steps_w = [s["loss"] for s in curves[0.5]["train"]]
    steps_1 = [s["loss"] for s in curves[1.0]["train"]]
    assert all(math.isfinite(x) for x in steps_w) and sum(steps_w) < sum(steps_1)
    assert curves[0.5]["val"][0]["val_loss"] == pytest.approx(curves[1.0]["val"][0]["val_loss"], rel=0.05)
