"""In-context propagation: each unlabeled question's k nearest labeled examples (paper §3.2).

    neighbors = retrieve_neighbors(unlabeled_ids, unlabeled_vecs, labeled_ids, labeled_vecs, k=3)
    # DataFrame: unlabeled_id, rank (0 = nearest), labeled_id, score (cosine similarity)

Vectors must be L2-normalised float32 (Embedder.embed gives that), so faiss's exact inner-product
index (IndexFlatIP) returns cosine similarity. Exact search is right here: labeled sets are small
(hundreds to tens of thousands), and exact results keep runs reproducible.

A labeled example whose question text is identical to the unlabeled one is excluded: showing the
model the answer to the very question it is asked would make its pseudo-label a copy, not a
prediction (and unlabeled logs do repeat labeled prompts).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

# The neighbours table: one row per (query, rank); steps.find_neighbors writes it with this schema.
NEIGHBOR_SCHEMA = pa.schema([("unlabeled_id", pa.string()), ("rank", pa.int64()), ("labeled_id", pa.string()),
                             ("score", pa.float32())])
NEIGHBOR_COLUMNS = NEIGHBOR_SCHEMA.names


def retrieve_neighbors(
    unlabeled_ids: Sequence[str],
    unlabeled_vecs: np.ndarray,
    labeled_ids: Sequence[str],
    labeled_vecs: np.ndarray,
    k: int = 3,
    unlabeled_texts: Sequence[str] | None = None,
    labeled_texts: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Top-k labeled neighbours by cosine similarity, excluding exact-duplicate question texts."""
    import faiss

    if len(unlabeled_ids) != len(unlabeled_vecs) or len(labeled_ids) != len(labeled_vecs):
        raise ValueError("ids and vectors differ in length")
    if k == 0 or len(unlabeled_ids) == 0 or len(labeled_ids) == 0:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                             zip(NEIGHBOR_COLUMNS, ["object", "int64", "object", "float32"])})
    index = faiss.IndexFlatIP(labeled_vecs.shape[1])
    index.add(np.ascontiguousarray(labeled_vecs, dtype=np.float32))
    # Ask for a few extra so that excluded duplicates can be replaced.
    extra = 0
    if unlabeled_texts is not None and labeled_texts is not None:
        text_to_labeled: dict[str, int] = {}
        for j, t in enumerate(labeled_texts):
            key = t.strip()
            text_to_labeled[key] = text_to_labeled.get(key, 0) + 1
        extra = max(text_to_labeled.values(), default=0)
    search_k = min(k + extra, len(labeled_ids))
    scores, idx = index.search(np.ascontiguousarray(unlabeled_vecs, dtype=np.float32), search_k)
    rows = []
    for i, uid in enumerate(unlabeled_ids):
        utext = unlabeled_texts[i].strip() if unlabeled_texts is not None else None
        rank = 0
        for score, j in zip(scores[i], idx[i]):
            if j < 0 or rank >= k:
                break
            if utext is not None and labeled_texts is not None and labeled_texts[j].strip() == utext:
                continue
            rows.append((uid, rank, labeled_ids[j], float(score)))
            rank += 1
    df = pd.DataFrame(rows, columns=NEIGHBOR_COLUMNS)
    df["rank"] = df["rank"].astype("int64")
    df["score"] = df["score"].astype("float32")
    return df


def knn_label_vote(neighbors: pd.DataFrame, labeled_answers: dict[str, str], k: int | None = None) -> pd.DataFrame:
    """The majority label of each question's k nearest labeled examples (no LLM).

    Ties go to the label of the nearest neighbour among the tied ones. Returns unlabeled_id,
    answer, agreement (share of the k neighbours with that label).
    """
    rows = []
    for uid, group in neighbors.sort_values(["unlabeled_id", "rank"]).groupby("unlabeled_id", sort=False):
        if k is not None:
            group = group[group["rank"] < k]
        labels = [labeled_answers[l] for l in group["labeled_id"]]
        if not labels:
            continue
        counts: dict[str, int] = {}
        for lab in labels:
            counts[lab] = counts.get(lab, 0) + 1
        best = max(counts.values())
        answer = next(lab for lab in labels if counts[lab] == best)  # nearest among the tied
        rows.append((uid, answer, best / len(labels)))
    return pd.DataFrame(rows, columns=["unlabeled_id", "answer", "agreement"])
