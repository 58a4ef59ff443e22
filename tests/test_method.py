"""The method's steps as pure functions: prompts, propagation, collaboration, vote, justify,
selection, evaluation statistics, and the whole pipeline on the tiny model."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from semievol_core import steps
from semievol_core.backends.transformers_backend import TransformersBackend
from semievol_core.collaboration import RESPONSE_COLUMNS, generate_responses, plan_collaborators
from semievol_core.config import Collaborator, JustificationConfig, SemiEvolConfig
from semievol_core.justification import justify
from semievol_core.letter_scores import letter_reply, read_letter_reply
from semievol_core.propagation import knn_label_vote, retrieve_neighbors
from semievol_core.prompts import Candidate, Demo, format_question, justification_chat, question_chat, training_chat
from semievol_core.selection import select_pseudo_labels
from semievol_core.report import verdict_line
from semievol_core.stats import bootstrap_ci, mcnemar_exact, paired_difference
from semievol_core.voting import vote

OPTS = ["negative", "neutral", "positive"]


# ---------------------------------------------------------------- prompts
def test_prompts_are_pure_and_carry_everything():
    assert format_question(" Q? ", OPTS) == "Q?\nA. negative\nB. neutral\nC. positive"
    demos = [Demo("Sales fell.", OPTS, "A"), Demo("Sales rose.", OPTS, "C")]
    chat = question_chat("Profit flat.", OPTS, demos, system="sys")
    assert chat[0] == {"role": "system", "content": "sys"}
    body = chat[1]["content"]
    assert body.index("Sales fell.") < body.index("Answer: A") < body.index("Sales rose.") < body.index("Profit flat.")
    assert "(A-C)" in body
    # A fresh call without the system prompt: exactly the same user message, nothing else.
    assert question_chat("Profit flat.", OPTS, demos) == [chat[1]]
    assert training_chat("Q", OPTS, "B")[-1] == {"role": "assistant", "content": "Answer: B"}
    j = justification_chat("Q", OPTS, [Candidate("A", "x" * 1000 + " so Answer: A"), Candidate(None, "hmm")],
                           max_chars=50)[0]["content"]
    assert "Response 1 (answer A)" in j and "Response 2 (answer unclear)" in j and "so Answer: A" in j
    assert "x" * 60 not in j  # long candidate text cut from the front
    with pytest.raises(ValueError):
        format_question("Q", [str(i) for i in range(11)])


# ---------------------------------------------------------------- in-context propagation
def test_retrieve_neighbors_is_exact_cosine_and_skips_duplicate_questions():
    rng = np.random.default_rng(0)
    lab = rng.normal(size=(20, 8)).astype(np.float32)
    lab /= np.linalg.norm(lab, axis=1, keepdims=True)
    unl = lab[[3, 7]] + 0.01 * rng.normal(size=(2, 8)).astype(np.float32)
    unl /= np.linalg.norm(unl, axis=1, keepdims=True)
    lab_ids = [f"l{i}" for i in range(20)]
    nb = retrieve_neighbors(["u0", "u1"], unl, lab_ids, lab, k=3)
    assert list(nb.columns) == ["unlabeled_id", "rank", "labeled_id", "score"]
    assert nb.groupby("unlabeled_id").size().tolist() == [3, 3]
    assert nb[nb["rank"] == 0]["labeled_id"].tolist() == ["l3", "l7"]
    for uid, u in zip(["u0", "u1"], unl):  # the same order a brute-force cosine gives
        brute = [lab_ids[i] for i in np.argsort(-(lab @ u))[:3]]
        assert nb[nb["unlabeled_id"] == uid].sort_values("rank")["labeled_id"].tolist() == brute
    texts = [f"q{i}" for i in range(20)]
    nb2 = retrieve_neighbors(["u0"], unl[:1], lab_ids, lab, k=3, unlabeled_texts=["q3"], labeled_texts=texts)
    assert "l3" not in nb2["labeled_id"].tolist() and len(nb2) == 3


def test_knn_label_vote_majority_with_nearest_breaking_ties():
    nb = pd.DataFrame({"unlabeled_id": ["u"] * 3 + ["v"] * 2, "rank": [0, 1, 2, 0, 1],
                       "labeled_id": ["a", "b", "c", "a", "c"], "score": [0.9, 0.8, 0.7, 0.9, 0.8]})
    votes = knn_label_vote(nb, {"a": "A", "b": "B", "c": "B"})
    assert votes.set_index("unlabeled_id")["answer"].to_dict() == {"u": "B", "v": "A"}


# ---------------------------------------------------------------- collaboration / vote / selection
def test_plan_collaborators_is_seeded_and_distinct():
    a = plan_collaborators(4, 3, seed=0)
    assert a == plan_collaborators(4, 3, seed=0) and len(set(a)) == 4
    assert all(c.n_demos <= 3 for c in a)
    assert len(plan_collaborators(10, 3, seed=1)) == 10  # repeats once the 8 configurations run out
    with pytest.raises(ValueError, match="more demonstrations"):
        SemiEvolConfig(propagation={"k_demos": 1},
                       collaboration={"collaborators": [Collaborator(model="warm", n_demos=2)]})


def _responses(table):
    rows = []
    for uid, answers_hs in table.items():
        for i, (a, h) in enumerate(answers_hs):
            rows.append((uid, f"c{i}", "warm", 0, 0, f"Answer: {a}", a, a is not None, "marker", 3, h, "stop"))
    return pd.DataFrame(rows, columns=RESPONSE_COLUMNS)


def test_vote_consensus_requires_every_reply_parsed_and_equal():
    resp = _responses({"u1": [("A", 0.1), ("A", 0.3)], "u2": [("A", 0.1), ("B", 0.2)],
                       "u3": [("C", 0.1), (None, 0.9)], "u4": [(None, 1.0), (None, 1.0)]})
    v = vote(resp).set_index("unlabeled_id")
    assert v["consensus"].to_dict() == {"u1": True, "u2": False, "u3": False, "u4": False}
    assert v.loc["u1", "agreement"] == 1.0 and v.loc["u3", "majority"] == "C" and v.loc["u3", "agreement"] == 0.5
    assert pd.isna(v.loc["u4", "majority"]) and v.loc["u2", "majority"] == "A"  # first in order wins a tie


def test_selection_keeps_the_theta_quantile_of_H_and_never_unparsed():
    resp = _responses({f"c{i}": [("A" if i % 2 else "B", 0.1 * i)] * 2 for i in range(6)})
    votes = vote(resp)
    justified = pd.DataFrame({"unlabeled_id": ["j1", "j2", "j3"], "text": ["", "", ""],
                              "answer": ["A", None, "B"], "parse_ok": [True, False, True],
                              "num_tokens": [3, 3, 3], "H": [0.05, 0.01, 2.0]})
    sel = select_pseudo_labels(votes, justified, resp, theta=0.5).set_index("unlabeled_id")
    valid_h = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.05, 2.0]
    thr = np.quantile(valid_h, 0.5)
    assert sel.loc["c0", "H"] == pytest.approx(0.0) and sel.loc["c3", "source"] == "consensus"
    assert sel["threshold"].dropna().unique().tolist() == [pytest.approx(thr)]
    assert set(sel.index[sel["selected"]]) == {"c0", "c1", "c2", "j1"}
    assert not sel.loc["j2", "selected"]  # unparsable, even with the lowest H
    everything = select_pseudo_labels(votes, justified, resp, theta=1.0)
    assert everything["selected"].sum() == 8
    # Released code's variant: all consensus kept, percentile over the justified only.
    rel = select_pseudo_labels(votes, justified, resp, theta=0.5, scope="justified").set_index("unlabeled_id")
    assert rel.loc[[f"c{i}" for i in range(6)], "selected"].all()
    assert rel.loc["j1", "selected"] and not rel.loc["j3", "selected"]
    # Class balance: each class keeps its own lower half.
    bal = select_pseudo_labels(votes, justified.iloc[:0], resp, theta=0.5, class_balance=True)
    kept = bal[bal["selected"]]["answer"].value_counts().to_dict()
    assert kept == {"A": 2, "B": 2}
    # Source balance: consensus and justified each keep their own lower half, whatever the scales.
    far = justified.assign(H=[5.0, 1.0, 6.0])  # justified H all above every consensus H
    glob = select_pseudo_labels(votes, far, resp, theta=0.5).set_index("unlabeled_id")
    assert not glob.loc[["j1", "j3"], "selected"].any()  # one global cut drops the whole source
    src = select_pseudo_labels(votes, far, resp, theta=0.5, source_balance=True).set_index("unlabeled_id")
    assert set(src.index[src["selected"]]) == {"c0", "c1", "c2", "j1"}
    assert src.loc["j1", "threshold"] == pytest.approx(5.5) and src.loc["c0", "threshold"] == pytest.approx(0.25)
    both = select_pseudo_labels(votes, far, resp, theta=0.5, source_balance=True, class_balance=True)
    assert both.groupby(["source", "answer"])["threshold"].nunique().eq(1).all()
    assert set(both[both["selected"]]["unlabeled_id"]) == {"c1", "c3", "c0", "c2", "j1", "j3"}
    with pytest.raises(ValueError):
        select_pseudo_labels(votes, justified, resp, theta=0)


# ---------------------------------------------------------------- statistics
def test_bootstrap_ci_and_mcnemar():
    lo, hi = bootstrap_ci([True] * 70 + [False] * 30, samples=2000, seed=0)
    assert lo < 0.7 < hi and 0.05 < hi - lo < 0.25
    assert bootstrap_ci([True] * 10) == (1.0, 1.0)
    # 10 discordant pairs all one way: p = 2 * 0.5^10
    a = [True] * 10 + [True] * 5
    b = [False] * 10 + [True] * 5
    assert mcnemar_exact(a, b) == pytest.approx(2 * 0.5**10)
    assert mcnemar_exact(a, a) == 1.0
    assert mcnemar_exact([True, False], [False, True]) == 1.0
    d, lo, hi = paired_difference(a, b, samples=2000)
    assert d == pytest.approx(10 / 15) and lo <= d <= hi and lo > 0.3
    assert paired_difference(a, a) == (0.0, 0.0, 0.0)


def test_compare_gives_the_verdict_only_for_a_significant_gain(tmp_path):
    def preds(name, correct):
        path = tmp_path / f"{name}.parquet"
        pd.DataFrame({"id": [f"t{i}" for i in range(len(correct))], "correct": correct}).to_parquet(path)
        return path

    better = [True] * 30 + [False] * 10 + [True] * 60
    base = [False] * 30 + [False] * 10 + [True] * 60
    cmp = steps.compare(preds("semievol", better), preds("sft", base))
    assert cmp["better"] and cmp["difference"] == pytest.approx(0.30) and cmp["mcnemar_p"] < 1e-6
    assert cmp["ci_low"] > 0 and cmp["n"] == 100
    line = verdict_line(cmp)
    assert line.startswith("SemiEvol is better than SFT: +30.0 points (95% CI +")
    worse = steps.compare(preds("semievol", [True] * 3 + base[3:]), preds("sft", base))
    assert not worse["better"] and worse["mcnemar_p"] > 0.05  # +3 of 100 is not a result
    assert verdict_line(worse).startswith("SemiEvol is not better than SFT: +3.0 points")
    assert steps.class_names([["negative", "neutral"]] * 3) == {"A": "A (negative)", "B": "B (neutral)"}
    assert steps.class_names([["x", "y"], ["p", "q", "r"]]) == {}


# ---------------------------------------------------------------- with a real (tiny) model
def _questions(n):
    return pd.DataFrame({"id": [f"u{i}" for i in range(n)],
                         "question": [f"Sales changed by {i}%. Sentiment?" for i in range(n)],
                         "options": [OPTS] * n})


@pytest.fixture(scope="module")
def tiny_backend(tiny_model_dir):
    be = TransformersBackend(str(tiny_model_dir), progress=False)
    yield be
    be.unload()


def _letter_scores(rows: pd.DataFrame) -> np.ndarray:
    """The letter log-probs each reply keeps (3 decimals), a row per reply."""
    return np.array([list(read_letter_reply(t).values()) for t in rows["text"]])


def test_a_letter_reply_reads_back_its_scores():
    text = letter_reply("ABC", [-2.1034, -0.4121, -1.8709], 1)
    assert text == "Answer: B  [letter log-probs: A=-2.103, B=-0.412, C=-1.871]"
    assert read_letter_reply(text) == {"A": -2.103, "B": -0.412, "C": -1.871}
    assert read_letter_reply("Answer: B because A=1 is wrong") == {}  # free text: no scores


@pytest.mark.parametrize("mode", ["generate", "choice_logprobs"])
def test_generate_responses_one_row_per_question_and_collaborator(tiny_backend, mode):
    cfg = SemiEvolConfig(collaboration={"max_new_tokens": 6, "mode": mode}, seed=3)
    collabs = [Collaborator(model="base", n_demos=0), Collaborator(model="base", n_demos=2),
               Collaborator(model="base", n_demos=2)]
    demos = {f"u{i}": [Demo("Sales fell.", OPTS, "A"), Demo("Sales rose.", OPTS, "C")] for i in range(4)}
    resp = generate_responses(tiny_backend, _questions(4), demos, collabs, None, cfg, "choice")
    assert list(resp.columns) == RESPONSE_COLUMNS and len(resp) == 12
    assert resp.groupby("unlabeled_id").size().eq(3).all()
    assert sorted(resp["collaborator"].unique()) == ["base-0shot", "base-2shot"]
    assert (resp[resp["collaborator"] == "base-2shot"]["sample"].sort_values().tolist() == [0] * 4 + [1] * 4)
    assert (resp["H"] > 0).all() and resp["H"].notna().all()
    if mode == "choice_logprobs":
        assert resp["answer"].isin(["A", "B", "C"]).all()
    moved: list[float] = []
    again = generate_responses(tiny_backend, _questions(4), demos, collabs, None, cfg, "choice",
                               on_progress=moved.append)
    pd.testing.assert_frame_equal(resp, again)  # seeded
    assert moved == [0.5]  # two collaborator groups: reported halfway; the caller marks the end
    with pytest.raises(ValueError, match="warm adapter"):
        generate_responses(tiny_backend, _questions(1), {}, [Collaborator(model="warm", n_demos=0)], None, cfg, "choice")


def test_a_teacher_collaborator_answers_on_the_teacher_backend(tiny_backend, tmp_path):
    from conftest import build_tiny_llama

    teacher_dir = build_tiny_llama(tmp_path / "teacher", seed=1)  # other weights than the run's model
    collabs = [{"model": "base", "n_demos": 0}, {"model": "teacher", "n_demos": 0}, {"model": "teacher", "n_demos": 0}]
    cfg = SemiEvolConfig(collaboration={"mode": "choice_logprobs", "teacher": str(teacher_dir),
                                        "collaborators": collabs}, seed=3)
    qs = _questions(4)
    chats = [question_chat(q, o, []) for q, o in zip(qs["question"], qs["options"])]
    with TransformersBackend(str(teacher_dir), progress=False) as teacher:
        resp = generate_responses(tiny_backend, qs, {}, cfg.collaboration.collaborators, None, cfg, "choice",
                                  teacher_backend=teacher)
        want = teacher.choice_logprobs(chats, ["A", "B", "C"])
    base_lp = tiny_backend.choice_logprobs(chats, ["A", "B", "C"])

    t = resp[resp["model"] == "teacher"].sort_values(["unlabeled_id", "sample"])
    assert t["collaborator"].unique().tolist() == ["teacher-0shot"] and len(t) == 2 * 4
    np.testing.assert_allclose(_letter_scores(t[t["sample"] == 0]), want, atol=1e-3)
    np.testing.assert_allclose(_letter_scores(resp[resp["model"] == "base"].sort_values("unlabeled_id")), base_lp,
                               atol=1e-3)
    assert np.abs(want - base_lp).max() > 0.01  # so the teacher's rows are not the run model's
    with pytest.raises(ValueError, match="teacher's backend"):
        generate_responses(tiny_backend, qs, {}, cfg.collaboration.collaborators, None, cfg, "choice")


def test_a_run_with_a_teacher_lets_it_answer_and_judge(tiny_model_dir, sentiment_dataset, tmp_path):
    """The run's model is one tiny Llama, the teacher another (in process: execution.teacher_backend's
    default). The teacher's rows in responses, and every disputed question's decision, are the
    teacher's own, with no adapter."""
    from conftest import build_tiny_llama
    from semievol_core.data import read_table
    from semievol_core.pipeline import run_semievol
    from semievol_core.steps import load_frame, unload_backends

    qs = read_table(sentiment_dataset / "unlabeled", "unlabeled")
    chats = [question_chat(q, o, []) for q, o in zip(qs["question"], qs["options"])]
    out, seen = tmp_path / "run", []
    # The second teacher runs in the same run directory: its answers and judgements, none cached.
    for seed in (1, 2):
        teacher_dir = build_tiny_llama(tmp_path / f"teacher-{seed}", seed=seed)
        cfg = SemiEvolConfig(model=str(tiny_model_dir),
                             collaboration={"mode": "choice_logprobs", "teacher": str(teacher_dir),
                                            "collaborators": [{"model": "warm", "n_demos": 0},
                                                              {"model": "teacher", "n_demos": 0}]},
                             justification={"model": "teacher"},
                             train={"epochs": 1, "val_fraction": 0, "early_stopping_patience": None})
        cfg.execution.progress = False
        try:
            run_semievol(sentiment_dataset, out, cfg, systems=["knn_vote"], pseudo_labels=True)
        finally:
            unload_backends()
        resp, votes, justified = (load_frame(out / f"{t}.parquet") for t in ("responses", "votes", "justified"))
        rows = resp[resp["model"] == "teacher"].set_index("unlabeled_id").loc[qs["id"]]
        with TransformersBackend(str(teacher_dir), progress=False) as teacher:
            want = teacher.choice_logprobs(chats, ["A", "B", "C"])
            judged = justify(teacher, votes, resp, qs, None, cfg, "choice")
        np.testing.assert_allclose(_letter_scores(rows), want, atol=1e-3)
        assert len(justified) > 0  # warm and teacher disagree somewhere
        pd.testing.assert_frame_equal(justified.reset_index(drop=True), judged.reset_index(drop=True), atol=1e-4)
        seen.append(want)
    assert np.abs(seen[1] - seen[0]).max() > 0.01  # the two teachers are different models


def test_justify_asks_only_disputed_questions(tiny_backend):
    qs = _questions(3)
    resp = _responses({"u0": [("A", 0.1), ("A", 0.2)], "u1": [("A", 0.1), ("B", 0.2)], "u2": [("C", 0.3), (None, 0.2)]})
    cfg = SemiEvolConfig(justification={"max_new_tokens": 5})
    out = justify(tiny_backend, vote(resp), resp, qs, None, cfg, "choice")
    assert out["unlabeled_id"].tolist() == ["u1", "u2"]
    # Greedy decoding of the random tiny model emits no EOS within the limit: every justification is
    # cut at justification.max_new_tokens, and num_tokens counts exactly the tokens emitted.
    assert out["num_tokens"].tolist() == [5, 5] and out["text"].map(len).gt(0).all()
    shorter = cfg.model_copy(update={"justification": JustificationConfig(max_new_tokens=2)})
    short = justify(tiny_backend, vote(resp), resp, qs, None, shorter, "choice")
    assert short["num_tokens"].tolist() == [2, 2]


def test_whole_method_on_the_tiny_model(tiny_model_dir, sentiment_dataset, tmp_path):
    from semievol_core.pipeline import run_semievol
    from semievol_core.steps import load_frame

    cfg = SemiEvolConfig(model=str(tiny_model_dir), collaboration={"mode": "choice_logprobs", "knn_collaborator": True},
                         evaluation={"mode": "choice_logprobs"}, justification={"max_new_tokens": 6},
                         train={"epochs": 1, "val_fraction": 0, "early_stopping_patience": None})
    cfg.execution.progress = False
    cfg.execution.shard_size = 4
    out = tmp_path / "run"
    report = run_semievol(sentiment_dataset, out, cfg)
    assert set(report["systems"]) == {"vanilla", "rag_knn", "knn_vote", "sft", "semievol"}
    for m in report["systems"].values():
        assert 0 <= m["ci_low"] <= m["accuracy"] <= m["ci_high"] <= 1 and m["n"] == 9
    sel = report["selection"]
    assert sel["n_unlabeled"] == 10 and sel["n_consensus"] + sel["n_justified"] == 10
    assert 0 < sel["n_selected"] <= 10 and sel["pseudo_label_accuracy"] is not None
    pl = load_frame(out / "pseudo_labels.parquet")
    assert list(pl.columns) == ["unlabeled_id", "answer", "source", "H", "threshold", "selected"]
    resp = load_frame(out / "responses.parquet")
    assert len(resp) == 10 * (4 + 1)  # 4 collaborators + the kNN vote
    assert len(list((out / "responses").glob("shard-*.parquet"))) == 3  # ceil(10 / 4)
    for name in ("neighbors", "votes", "justified"):
        assert (out / f"{name}.parquet").exists()
    for adapter in ("warm_adapter", "semievol_adapter"):
        assert (out / adapter / "adapter_model.safetensors").exists()
    # report.md's accuracy table: header, separator, then one row per system in the report's order
    table = (out / "report.md").read_text().split("## Test accuracy\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert table[0] == "| system | accuracy % | 95% CI | parse failures % | n |" and len(table) == 2 + 5
    assert [row.split(" | ")[0].removeprefix("| ") for row in table[2:]] == list(report["systems"])
    accuracy = [f"{100 * m['accuracy']:.1f}" for m in report["systems"].values()]
    assert [row.split(" | ")[1] for row in table[2:]] == accuracy
    # knn_vote on this synthetic data is strong: neighbours share the verb that sets the label.
    assert report["systems"]["knn_vote"]["accuracy"] >= 0.5
    assert not math.isnan(report["mcnemar_p_semievol_vs_sft"])
    # Re-run: every step directory is complete (values.json), so nothing runs and nothing retrains.
    def stamps():
        return {a: (out / a / "adapter_model.safetensors").stat().st_mtime_ns
                for a in ("warm_adapter", "semievol_adapter")}
    before = stamps()
    again = run_semievol(sentiment_dataset, out, cfg)
    assert stamps() == before and again["systems"] == report["systems"]
    # Another learning rate: a different adapter, so the warm one is trained again.
    cfg_lr = cfg.model_copy(update={"train": cfg.train.model_copy(update={"learning_rate": 5e-4})})
    run_semievol(sentiment_dataset, out, cfg_lr, systems=["sft"])
    assert stamps()["warm_adapter"] != before["warm_adapter"]
    # Only the systems asked for run: SFT alone trains the warm adapter and nothing else.
    solo = run_semievol(sentiment_dataset, tmp_path / "solo", cfg, systems=["sft"])
    assert set(solo["systems"]) == {"sft"} and solo["selection"] == {}
    assert not (tmp_path / "solo" / "responses").exists() and not (tmp_path / "solo" / "semievol_adapter").exists()
    with pytest.raises(ValueError, match="unknown systems"):
        run_semievol(sentiment_dataset, tmp_path / "x", cfg, systems=["sft", "gpt5"])
