"""Adaptive selection: which pseudo-labels the final fine-tune trains on (paper §3.5, Eq. 7).

    pseudo = select_pseudo_labels(votes, justified, responses, theta=0.5)
    # unlabeled_id, answer, source (consensus|justified), H, threshold, selected
    pseudo = select_pseudo_labels(votes, justified, responses, theta=0.5, agreement="knn",
                                  class_quota="prior", labeled_answers=labeled["answer"])
    removal_counts(pseudo, responses, agreement="knn")  # how many labels each rule removed
    # the same, streamed: rules 1-2 chunk by chunk (each with all its questions' rows), then the cut
    pseudo = cut(pd.concat([candidates(v, j, r, agreement="knn") for v, j, r in chunks]), theta=0.5)
    class_mix(pseudo[pseudo["selected"]]["answer"], labeled["answer"])  # shares next to the prior

H is a pseudo-response's mean token NLL (nats/token). Consensus questions take the agreed answer
and the mean H of the agreeing LLM replies; disputed ones take the justifier's answer and H.

The rules, in order (each one only sees what the previous ones left):
1. An unparsable answer is never selected (`removed_unparsed`).
2. `agreement="knn"`: a label is kept only if it equals the kNN label vote for its question (the
   responses row with model == "knn", present when the config has knn_collaborator on); a
   question without a kNN vote is not kept (`removed_by_agreement`). Why: the lowest-H labels are
   the warm model's own most confident answers, i.e. what it already knows, right or wrong
   (confirmation bias: on FPB with 64 labels they were 50% accurate and all one class); the
   sentence embedder's neighbour vote is an independent view, so agreement of the two is evidence.
3. The cut (`removed_by_threshold`), one of:
   - the θ-quantile of H (default). With scope "all" (the paper) one threshold over every
     remaining label; with scope "justified" (the released code) every consensus label is kept
     and the quantile is taken over the justified ones only. `class_balance` takes the quantile
     within each answer class, so a class the model is less sure of is not wiped out (entropy
     alone tends to keep the majority class only). `source_balance` takes it within each source
     (consensus, justified): their H can sit on different scales (the mean over sampled
     collaborator replies vs the justifier's one greedy reply), and one global cut then drops a
     whole source. Both combine (one quantile per source x class cell).
   - `class_quota="prior"` (FlexMatch-style) instead: at most floor(θ x the labels left) are kept,
     split across the classes in proportion to the labeled set's class frequencies (largest
     remainder rounding); each class keeps its lowest-H members up to its quota. A class with
     fewer members keeps them all and its shortfall is NOT given to the others: the point is that
     one class cannot fill the set. An answer that no labeled example has gets no quota.
     `threshold` is then the class's highest kept H. It replaces the quantile, so it refuses
     class_balance, source_balance and scope "justified" (they would be silently ignored).
A label without an H has no score to rank and is not kept.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd

PSEUDO_COLUMNS = ["unlabeled_id", "answer", "source", "H", "threshold", "selected"]
# A class whose share among the selected labels is this far (absolute) from its share of the
# labeled set makes selection_stats warn: a one-class or lopsided set is a bad training signal.
CLASS_MIX_TOLERANCE = 0.15


def pseudo_labels(votes: pd.DataFrame, justified: pd.DataFrame, responses: pd.DataFrame) -> pd.DataFrame:
    """One pseudo-label per unlabeled question, before selection (threshold/selected unset)."""
    llm = responses[responses["model"] != "knn"]
    rows = []
    cons = votes[votes["consensus"].astype(bool)]
    agreeing = llm.merge(cons[["unlabeled_id", "majority"]], on="unlabeled_id")
    agreeing = agreeing[agreeing["answer"] == agreeing["majority"]]
    mean_h = agreeing.groupby("unlabeled_id")["H"].mean()
    for uid, answer in zip(cons["unlabeled_id"], cons["majority"]):
        rows.append((uid, answer, "consensus", float(mean_h.get(uid, math.nan))))
    for uid, answer, h in zip(justified["unlabeled_id"], justified["answer"], justified["H"]):
        rows.append((uid, answer if isinstance(answer, str) else None, "justified", float(h)))
    df = pd.DataFrame(rows, columns=["unlabeled_id", "answer", "source", "H"])
    df["threshold"] = math.nan
    df["selected"] = False
    return df.sort_values("unlabeled_id", kind="stable").reset_index(drop=True)


def knn_agreement(pseudo: pd.DataFrame, responses: pd.DataFrame) -> pd.Series:
    """Per pseudo-label (same index): its answer equals its question's kNN label vote. No vote, or
    no answer, is False."""
    knn = responses[responses["model"] == "knn"].drop_duplicates("unlabeled_id").set_index("unlabeled_id")
    vote = pseudo["unlabeled_id"].map(knn["answer"])
    return (pseudo["answer"].notna() & (vote == pseudo["answer"])).astype(bool)


def _eligible(pseudo: pd.DataFrame, responses: pd.DataFrame, agreement: str) -> tuple[pd.Series, pd.Series]:
    """(parsed, eligible): rule 1's survivors, and rules 1-2's survivors."""
    parsed = pseudo["answer"].notna()
    if agreement == "none" or pseudo.empty:  # no rows: nothing to compare with the kNN vote
        return parsed, parsed
    if not (responses["model"] == "knn").any():
        raise ValueError("agreement 'knn' needs the kNN label vote in the responses (knn_collaborator: true)")
    return parsed, parsed & knn_agreement(pseudo, responses)


def removal_counts(pseudo: pd.DataFrame, responses: pd.DataFrame, agreement: str = "none") -> dict[str, int]:
    """How many pseudo-labels each rule removed, from a selected table (they add up, with the
    number selected, to the table's length)."""
    parsed, eligible = _eligible(pseudo, responses, agreement)
    selected = pseudo["selected"].astype(bool)
    return {"removed_unparsed": int((~parsed).sum()),
            "removed_by_agreement": int((parsed & ~eligible).sum()),
            "removed_by_threshold": int((eligible & ~selected).sum())}


def class_quotas(labeled_answers: Iterable[str], total: int) -> dict[str, int]:
    """`total` split across the labeled set's classes in proportion to their counts, by largest
    remainder (exact integer arithmetic; equal remainders go to the class first in sort order)."""
    counts = pd.Series(list(labeled_answers), dtype=object).value_counts().sort_index()
    n = int(counts.sum())
    if n == 0:
        return {}
    quotas = {c: int(k) * total // n for c, k in counts.items()}
    remainders = {c: int(k) * total % n for c, k in counts.items()}
    short = total - sum(quotas.values())
    for c in sorted(counts.index, key=lambda c: (-remainders[c], c))[:short]:
        quotas[c] += 1
    return quotas


def _quantile(values: pd.Series, theta: float) -> float:
    values = values.dropna()
    return float(np.quantile(values, theta)) if len(values) else math.nan


def check_selection(theta: float, scope: str, class_balance: bool, source_balance: bool, agreement: str,
                    class_quota: str, labeled_answers: Iterable[str] | None) -> None:
    """Refuse a combination of selection settings that cannot mean what it says, in one line."""
    if not 0 < theta <= 1:
        raise ValueError(f"theta must be in (0, 1], got {theta}")
    if scope not in ("all", "justified"):
        raise ValueError(f"scope must be 'all' or 'justified', got {scope!r}")
    if agreement not in ("none", "knn"):
        raise ValueError(f"agreement must be 'none' or 'knn', got {agreement!r}")
    if class_quota not in ("none", "prior"):
        raise ValueError(f"class_quota must be 'none' or 'prior', got {class_quota!r}")
    if class_quota == "prior" and (class_balance or source_balance or scope != "all"):
        raise ValueError("class_quota 'prior' replaces the H quantile: it does not combine with "
                         "class_balance, source_balance or scope 'justified'")
    if class_quota == "prior" and labeled_answers is None:
        raise ValueError("class_quota 'prior' needs the labeled answers (the class prior)")


def candidates(votes: pd.DataFrame, justified: pd.DataFrame, responses: pd.DataFrame,
               agreement: str = "none") -> pd.DataFrame:
    """Rules 1-2 on some questions: their pseudo-labels (pseudo_labels) with an `eligible` column.
    They read a question's own rows only, so the questions can come in any number of chunks,
    each with all its responses, and be concatenated before the cut."""
    df = pseudo_labels(votes, justified, responses)
    df["eligible"] = _eligible(df, responses, agreement)[1].astype(bool)
    return df


def cut(df: pd.DataFrame, theta: float = 0.5, scope: str = "all", class_balance: bool = False,
        source_balance: bool = False, class_quota: str = "none",
        labeled_answers: Iterable[str] | None = None) -> pd.DataFrame:
    """Rule 3 over all the candidates at once (one quantile, or one set of quotas, for the whole
    pool): `selected` and `threshold` set, the `eligible` column dropped, rows by unlabeled_id.
    It works on numpy columns and integer class codes: at a million questions a per-class frame
    copy was the step's peak (bench/results/scale.md)."""
    df = df.sort_values("unlabeled_id", kind="stable", ignore_index=True)  # lazy copy when sorted
    eligible = df.pop("eligible").to_numpy(dtype=bool)
    h = df["H"].to_numpy(dtype=float)
    ranked = eligible & ~np.isnan(h)
    selected = df["selected"].to_numpy(dtype=bool, copy=True)
    threshold = df["threshold"].to_numpy(dtype=float, copy=True)
    answer, classes = pd.factorize(df["answer"], sort=True)  # code -1: no answer
    if class_quota == "prior":
        quotas = class_quotas(labeled_answers, math.floor(theta * int(ranked.sum()) + 1e-9))
        for code, cls in enumerate(classes):
            members = np.flatnonzero(ranked & (answer == code))  # in unlabeled_id order
            if not len(members):
                continue
            keep = members[np.argsort(h[members], kind="stable")[: quotas.get(cls, 0)]]  # by (H, id)
            selected[keep] = True
            threshold[members] = float(h[keep].max()) if len(keep) else math.nan
    else:
        source, _ = pd.factorize(df["source"])
        justified = (df["source"] == "justified").to_numpy(dtype=bool)
        pool = ranked if scope == "all" else ranked & justified
        if class_balance:  # a row without an answer (or source) is in no cell, as in a groupby
            pool = pool & (answer >= 0)
        if source_balance:
            pool = pool & (source >= 0)
        # The cells a quantile is taken in: the whole pool, or one per class and/or per source.
        cell = (answer if class_balance else 0) * (int(source.max(initial=0)) + 1) + (source if source_balance else 0)
        cell = np.broadcast_to(cell, len(df))
        for key in np.unique(cell[pool]):
            members = np.flatnonzero(pool & (cell == key))
            thr = _quantile(pd.Series(h[members]), theta)
            threshold[members] = thr
            selected[members] = h[members] <= thr + 1e-12
        if scope == "justified":
            selected[ranked & ~justified & (df["source"] == "consensus").to_numpy(dtype=bool)] = True
    selected[~eligible] = False
    return df.assign(threshold=threshold, selected=selected)


def select_pseudo_labels(votes: pd.DataFrame, justified: pd.DataFrame, responses: pd.DataFrame,
                         theta: float = 0.5, scope: str = "all", class_balance: bool = False,
                         source_balance: bool = False, agreement: str = "none", class_quota: str = "none",
                         labeled_answers: Iterable[str] | None = None) -> pd.DataFrame:
    """The pseudo-labels with `selected` set by the rules of the module docstring.
    `labeled_answers` (the labeled set's answers) is the prior class_quota "prior" splits by."""
    check_selection(theta, scope, class_balance, source_balance, agreement, class_quota, labeled_answers)
    return cut(candidates(votes, justified, responses, agreement), theta, scope, class_balance,
               source_balance, class_quota, labeled_answers)


def class_mix(selected_answers: Iterable[str], labeled_answers: Iterable[str]) -> dict[str, dict]:
    """class -> {"labeled": share of the labeled set, "selected": share of the selected labels
    (None when nothing was selected)}, for every class either side has, sorted."""
    prior = pd.Series(list(labeled_answers), dtype=object).value_counts(normalize=True)
    got = pd.Series(list(selected_answers), dtype=object).value_counts(normalize=True)
    return {c: {"labeled": float(prior.get(c, 0.0)), "selected": float(got.get(c, 0.0)) if len(got) else None}
            for c in sorted(set(prior.index) | set(got.index))}


def class_mix_warning(mix: dict[str, dict], tolerance: float = CLASS_MIX_TOLERANCE) -> str | None:
    """A sentence naming the classes whose selected share is more than `tolerance` from their
    labeled share (and both shares), or saying nothing was selected; None when the mix is close."""
    if mix and all(v["selected"] is None for v in mix.values()):
        return "no pseudo-label was selected: the final fine-tune sees the labeled examples only"
    far = [(c, v) for c, v in mix.items() if abs(v["selected"] - v["labeled"]) > tolerance + 1e-9]
    if not far:
        return None
    shown = "; ".join(f"{c}: {100 * v['selected']:.1f}% selected vs {100 * v['labeled']:.1f}% labeled"
                      for c, v in far)
    return (f"the selected pseudo-labels' class mix is more than {100 * tolerance:.0f} points off the "
            f"labeled prior: {shown}")
