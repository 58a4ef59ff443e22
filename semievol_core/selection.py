"""Adaptive selection: keep the pseudo-labels the model is most certain of (paper §3.5, Eq. 7).

    pseudo = select_pseudo_labels(votes, justified, responses, theta=0.5)
    # unlabeled_id, answer, source (consensus|justified), H, threshold, selected

H is a pseudo-response's mean token NLL (nats/token). Consensus questions take the agreed answer
and the mean H of the agreeing LLM replies; disputed ones take the justifier's answer and H.
With scope "all" (the paper) one threshold, the theta-quantile of H over every pseudo-label, applies
to all; with scope "justified" (the released code) every consensus label is kept and the quantile
is taken over the justified ones only. `class_balance` takes the quantile within each answer class,
so a class the model is less sure of is not wiped out (entropy alone tends to keep the majority
class only). `source_balance` takes it within each source (consensus, justified) instead: their H
can sit on different scales (the mean over sampled collaborator replies vs the justifier's one
greedy reply), and one global cut then drops a whole source. Both combine (one quantile per
source x class cell). An unparsable answer is never selected.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

PSEUDO_COLUMNS = ["unlabeled_id", "answer", "source", "H", "threshold", "selected"]


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


def _quantile(values: pd.Series, theta: float) -> float:
    values = values.dropna()
    return float(np.quantile(values, theta)) if len(values) else math.nan


def select_pseudo_labels(votes: pd.DataFrame, justified: pd.DataFrame, responses: pd.DataFrame,
                         theta: float = 0.5, scope: str = "all", class_balance: bool = False,
                         source_balance: bool = False) -> pd.DataFrame:
    if not 0 < theta <= 1:
        raise ValueError(f"theta must be in (0, 1], got {theta}")
    if scope not in ("all", "justified"):
        raise ValueError(f"scope must be 'all' or 'justified', got {scope!r}")
    df = pseudo_labels(votes, justified, responses)
    valid = df["answer"].notna() & df["H"].notna()
    pool = valid if scope == "all" else valid & (df["source"] == "justified")
    # The cells a quantile is taken in: the whole pool, or one per class and/or per source.
    keys = (["answer"] if class_balance else []) + (["source"] if source_balance else [])
    cells = df[pool].groupby(keys, sort=False).groups.values() if keys else [df.index[pool]]
    for members in cells:
        thr = _quantile(df.loc[members, "H"], theta)
        df.loc[members, "threshold"] = thr
        df.loc[members, "selected"] = df.loc[members, "H"] <= thr + 1e-12
    if scope == "justified":
        keep = valid & (df["source"] == "consensus")
        df.loc[keep, "selected"] = True
    # A consensus label without an H (only kNN agreed, say) can still be kept under scope
    # "justified"; under "all" it has no score to rank and stays out.
    df.loc[df["answer"].isna(), "selected"] = False
    df["selected"] = df["selected"].astype(bool)
    return df
