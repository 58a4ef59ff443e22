"""Is there an embedding view that is right where the converged model is wrong? (issue 9, no LLM)

    .venv/bin/python bench/independent_view.py            # reads the 64-label seed-0 `w192` run
    # (runs from before the embedding shards: they hold embeddings/unlabeled.npy)
    .venv/bin/python bench/independent_view.py --selection  # the probe as selection's view, 4 runs

Session 5 found the kNN label vote (3 labeled neighbours) no better than chance on the rows the
converged 64-label SFT gets wrong. Two stronger views from the same sentence embeddings, both
cheap and both backed by the semi-supervised literature, are measured here the same way:
- label spreading (Zhou et al., 2004): labels diffuse over a 10-nearest-neighbour graph of the
  labeled, unlabeled and test rows together, F = (1 - a) (I - a S)^-1 Y with S the symmetrically
  normalised graph and a = 0.99; it uses the unlabeled rows' structure, which the kNN vote ignores;
- a linear probe: multinomial logistic regression on the 64 labeled embeddings (L2, 500 steps).
The model's answer on a row is the top letter of the warm model's letter log-probs, which every
response's raw text keeps. For each view: accuracy on the unlabeled pool and on the test rows,
accuracy on the rows the model gets wrong, and how many labels a "trust the view over the model"
rule would change for the better and for the worse. Writes bench/results/independent_view.json.

`--selection` asks what the probe would do as selection's independent view instead of the kNN vote,
on the four 64-label runs (seeds 0-2 with the 96-update warm model, seed 0's `w192` with the converged
one): the recipe's selection (agreement with the kNN vote, class quotas from the prior, θ 0.5) next
to agreement with the probe, with both, and with the probe and no H cut; selected count, accuracy
from the oracle, class mix. Adds `selection` to the JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
RUN = HERE / "runs" / "le" / "b64-s0-recommended-w192"
OUT = HERE / "results" / "independent_view.json"
LETTERS = "ABC"


def _column(path: Path, *names: str) -> list[list]:
    table = pq.read_table(path, columns=list(names))
    return [table.column(n).to_pylist() for n in names]


def knn_vote(sim: np.ndarray, y: np.ndarray, k: int = 3) -> np.ndarray:
    """Per row, the majority label of its k most similar labeled rows (ties: the nearest)."""
    top = np.argsort(-sim, axis=1)[:, :k]
    out = np.empty(len(sim), dtype=int)
    for i, nb in enumerate(top):
        counts = np.bincount(y[nb], minlength=len(LETTERS))
        best = counts.max()
        out[i] = next(y[j] for j in nb if counts[y[j]] == best)
    return out


def label_spreading(x: np.ndarray, y: np.ndarray, n_labeled: int, k: int = 10, alpha: float = 0.99) -> np.ndarray:
    """Class scores (rows x classes) by label spreading over the k-NN cosine graph of all rows;
    the first n_labeled rows carry the labels y."""
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    w = np.zeros_like(sim)
    nb = np.argsort(-sim, axis=1)[:, :k]
    rows = np.repeat(np.arange(len(x)), k)
    w[rows, nb.ravel()] = np.maximum(sim[rows, nb.ravel()], 0.0)
    w = np.maximum(w, w.T)  # symmetric graph
    d = w.sum(1)
    d[d == 0] = 1.0
    s = w / np.sqrt(np.outer(d, d))
    seed = np.zeros((len(x), len(LETTERS)))
    seed[np.arange(n_labeled), y] = 1.0
    f = np.linalg.solve(np.eye(len(x)) - alpha * s, (1 - alpha) * seed)
    return f / np.maximum(f.sum(1, keepdims=True), 1e-12)


def linear_probe(x: np.ndarray, y: np.ndarray, steps: int = 500, lr: float = 0.5, l2: float = 1e-3) -> np.ndarray:
    """Weights of multinomial logistic regression on (x, y), full-batch gradient descent."""
    w = np.zeros((x.shape[1] + 1, len(LETTERS)))
    xb = np.hstack([x, np.ones((len(x), 1))])
    onehot = np.eye(len(LETTERS))[y]
    for _ in range(steps):
        z = xb @ w
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        w -= lr * (xb.T @ (p - onehot) / len(x) + l2 * w)
    return w


def probe_scores(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    z = np.hstack([x, np.ones((len(x), 1))]) @ w
    p = np.exp(z - z.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


RUNS = [HERE / "runs" / "le" / n for n in ("b64-s0-recommended", "b64-s1-recommended", "b64-s2-recommended",
                                           "b64-s0-recommended-w192")]


def selection_views() -> list[dict]:
    import pandas as pd

    from semievol_core.selection import candidates, cut, select_pseudo_labels
    from semievol_core.steps import load_frame

    out = []
    for run in RUNS:
        lab_ids, lab_ans = _column(run / "data" / "labeled.parquet", "id", "answer")
        unl_ids, = _column(run / "data" / "unlabeled.parquet", "id")
        gold = dict(zip(*_column(run / "data" / "oracle.parquet", "id", "answer")))
        y = np.array([LETTERS.index(a) for a in lab_ans])
        scores = probe_scores(linear_probe(np.load(run / "embeddings" / "labeled.npy"), y),
                              np.load(run / "embeddings" / "unlabeled.npy"))
        probe = dict(zip(unl_ids, (LETTERS[i] for i in scores.argmax(1))))
        votes, just, resp = (load_frame(run / f"{t}.parquet") for t in ("votes", "justified", "responses"))

        def with_probe(agreement: str) -> pd.DataFrame:
            c = candidates(votes, just, resp, agreement)
            c["eligible"] = c["eligible"] & (c["unlabeled_id"].map(probe) == c["answer"])
            return c

        variants = {
            "knn agreement (the recipe)": select_pseudo_labels(votes, just, resp, 0.5, agreement="knn",
                                                               class_quota="prior", labeled_answers=lab_ans),
            "probe agreement": cut(with_probe("none"), 0.5, class_quota="prior", labeled_answers=lab_ans),
            "knn and probe agreement": cut(with_probe("knn"), 0.5, class_quota="prior", labeled_answers=lab_ans),
            "probe agreement, no H cut": cut(with_probe("none"), 1.0),
        }
        for name, df in variants.items():
            sel = df[df["selected"]]
            mix = sel["answer"].value_counts(normalize=True)
            out.append({"run": run.name, "view": name, "selected": len(sel),
                        "accuracy": round(float(np.mean([gold[u] == a for u, a in zip(sel["unlabeled_id"], sel["answer"])])), 4),
                        "class_mix": {c: round(float(mix.get(c, 0.0)), 3) for c in LETTERS},
                        "probe_accuracy_unlabeled": round(float(np.mean([probe[u] == gold[u] for u in unl_ids])), 4)})
    return out


def main() -> None:
    from semievol_core.letter_scores import read_letter_reply

    if "--selection" in sys.argv:
        result = json.loads(OUT.read_text())
        result["selection"] = selection_views()
        OUT.write_text(json.dumps(result, indent=2) + "\n")
        print("| run | view | selected | accuracy % | class mix A / B / C |")
        print("|---|---|---:|---:|---|")
        for r in result["selection"]:
            print(f"| {r['run']} | {r['view']} | {r['selected']} | {100 * r['accuracy']:.1f} | "
                  f"{' / '.join(str(v) for v in r['class_mix'].values())} |")
        return

    emb = {k: np.load(RUN / "embeddings" / f"{k}.npy") for k in ("labeled", "unlabeled", "test")}
    lab_ids, lab_ans = _column(RUN / "data" / "labeled.parquet", "id", "answer")
    unl_ids, = _column(RUN / "data" / "unlabeled.parquet", "id")
    test_ans, = _column(RUN / "data" / "test.parquet", "answer")
    gold = dict(zip(*_column(RUN / "data" / "oracle.parquet", "id", "answer")))
    ids, model, texts = _column(RUN / "responses.parquet", "unlabeled_id", "model", "text")
    scores = {}
    for uid, m, text in zip(ids, model, texts):  # the warm model's letter log-probs, once per row
        if m == "warm" and uid not in scores:
            lp = read_letter_reply(text)
            scores[uid] = np.array([lp[c] for c in LETTERS])
    y_lab = np.array([LETTERS.index(a) for a in lab_ans])
    y_unl = np.array([LETTERS.index(gold[u]) for u in unl_ids])
    y_test = np.array([LETTERS.index(a) for a in test_ans])
    lp = np.stack([scores[u] for u in unl_ids])
    p_model = np.exp(lp - lp.max(1, keepdims=True))
    p_model /= p_model.sum(1, keepdims=True)
    model_pred = p_model.argmax(1)
    wrong = model_pred != y_unl

    every = np.vstack([emb["labeled"], emb["unlabeled"], emb["test"]])
    n_l, n_u = len(y_lab), len(y_unl)
    spread = label_spreading(every, y_lab, n_l)
    probe = linear_probe(emb["labeled"], y_lab)
    views = {
        "knn_vote_k3": (np.eye(3)[knn_vote(emb["unlabeled"] @ emb["labeled"].T, y_lab)],
                        np.eye(3)[knn_vote(emb["test"] @ emb["labeled"].T, y_lab)]),
        "label_spreading_k10": (spread[n_l:n_l + n_u], spread[n_l + n_u:]),
        "linear_probe": (probe_scores(probe, emb["unlabeled"]), probe_scores(probe, emb["test"])),
    }
    result = {"run": str(RUN.relative_to(HERE)), "n_unlabeled": n_u, "n_test": len(y_test),
              "model_accuracy_unlabeled": round(float((model_pred == y_unl).mean()), 4),
              "model_wrong_rows": int(wrong.sum()), "views": {}}
    for name, (s_unl, s_test) in views.items():
        pred, conf = s_unl.argmax(1), s_unl.max(1)
        disagree = pred != model_pred
        rec = {"accuracy_unlabeled": round(float((pred == y_unl).mean()), 4),
               "accuracy_test": round(float((s_test.argmax(1) == y_test).mean()), 4),
               "accuracy_where_model_wrong": round(float((pred[wrong] == y_unl[wrong]).mean()), 4),
               "disagreements": int(disagree.sum()),
               "view_right_on_disagreements": int((disagree & (pred == y_unl)).sum()),
               "model_right_on_disagreements": int((disagree & (model_pred == y_unl)).sum()),
               "trust_rules": []}
        # Take the view's label over the model's where the view is at least this sure and the
        # model's top letter below 0.9: labels fixed vs labels broken.
        for c in (0.5, 0.7, 0.9):
            take = disagree & (conf >= c) & (p_model.max(1) < 0.9)
            rec["trust_rules"].append({"view_confidence_at_least": c, "rows": int(take.sum()),
                                       "fixed": int((take & (pred == y_unl)).sum()),
                                       "broken": int((take & (model_pred == y_unl)).sum())})
        result["views"][name] = rec
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"model (converged 64-label SFT): {100 * result['model_accuracy_unlabeled']:.1f}% on the pool, "
          f"wrong on {result['model_wrong_rows']} rows")
    print("| view | pool % | test % | right where the model is wrong % | disagreements: view right / model right |"
          " trust (conf >= 0.5 / 0.7 / 0.9): fixed-broken |")
    print("|---|---:|---:|---:|---|---|")
    for name, r in result["views"].items():
        rules = " / ".join(f"{t['fixed']}-{t['broken']}" for t in r["trust_rules"])
        print(f"| {name} | {100 * r['accuracy_unlabeled']:.1f} | {100 * r['accuracy_test']:.1f} | "
              f"{100 * r['accuracy_where_model_wrong']:.1f} | {r['view_right_on_disagreements']} / "
              f"{r['model_right_on_disagreements']} | {rules} |")


if __name__ == "__main__":
    main()
