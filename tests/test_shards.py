"""Shards that scale: the plan from metadata, a shard's rows read without the rest of the table.

    pytest tests/test_shards.py      # seconds, no model
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from semievol_core import data, steps
from semievol_core.config import SemiEvolConfig
from semievol_core.propagation import retrieve_neighbors

from conftest import sentiment_rows


def _unlabeled(n: int, offset: int = 0) -> pd.DataFrame:
    return pd.DataFrame(sentiment_rows(n, offset))[["id", "question", "options", "metadata"]]


def test_shards_never_straddle_parts_and_grow_past_max_shards(tmp_path):
    path = data.write_table_parts([_unlabeled(10), _unlabeled(25, 100)], tmp_path / "u.parquet", "unlabeled")
    assert data.part_sizes(path) == [10, 25]
    # 4 rows a shard: 3 shards in the first part (4+4+2), 7 in the second (6x4+1)
    plan = steps.shard_plan(path, shard_size=4, max_shards=100)
    assert plan[:3] == [[0, 4], [4, 8], [8, 10]] and plan[3] == [10, 14] and plan[-1] == [34, 35]
    assert len(plan) == 10
    # at most 3 shards a part: ceil(10/3) = 4 rows, ceil(25/3) = 9 rows
    assert steps.shard_plan(path, shard_size=2, max_shards=3) == [[0, 4], [4, 8], [8, 10], [10, 19], [19, 28],
                                                                  [28, 35]]


def test_a_million_row_part_makes_max_shards_shards(tmp_path):
    """The plan reads the parts' sizes from the metadata alone: a file that says it holds a part of
    a million rows and one of 300 gets 200 shards of 5,000 and 3 of 128 (200 is the default)."""
    import pyarrow as pa

    schema = pa.schema([("id", pa.string())]).with_metadata({data.PARTS_KEY: b"[1000000, 300]"})
    pq.write_table(pa.table({"id": ["x"]}, schema=schema), tmp_path / "u.parquet")
    cfg = SemiEvolConfig().execution
    plan = steps.shard_plan(tmp_path / "u.parquet", cfg.shard_size, cfg.max_shards)
    assert len(plan) == 203 and plan[0] == [0, 5000] and plan[199] == [995000, 1000000]
    assert plan[200:] == [[1000000, 1000128], [1000128, 1000256], [1000256, 1000300]]


def test_read_rows_decodes_only_the_row_groups_of_the_range(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "ROW_GROUP_ROWS", 4)
    df = pd.concat([_unlabeled(10), _unlabeled(7, 100)], ignore_index=True)
    path = data.write_table_parts([df.iloc[:10], df.iloc[10:]], tmp_path / "u.parquet", "unlabeled")
    f = pq.ParquetFile(path)
    assert [f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)] == [4, 4, 2, 4, 3]
    whole = data.read_table(path, "unlabeled")
    for start, stop in [(0, 3), (3, 9), (9, 12), (12, 17), (0, 17), (16, 17)]:
        part = data.read_rows(path, "unlabeled", start, stop)
        pd.testing.assert_frame_equal(part, whole.iloc[start:stop].reset_index(drop=True))


def test_neighbors_written_by_chunk_are_read_back_per_shard(tmp_path, monkeypatch):
    """find_neighbors searches EMBED_CHUNK queries at a time, one row group each; read_neighbors
    of any row range gives exactly the rows the whole-table search gives for those queries."""
    monkeypatch.setattr(steps, "EMBED_CHUNK", 4)
    rng = np.random.default_rng(0)
    lab = pd.DataFrame(sentiment_rows(6))
    unl = _unlabeled(11, 100)
    lab_path = data.write_table(lab, tmp_path / "labeled.parquet", "labeled")
    unl_path = data.write_table(unl, tmp_path / "unlabeled.parquet", "unlabeled")
    vecs = {}
    for name, n in (("labeled", 6), ("unlabeled", 11)):
        v = rng.normal(size=(n, 8)).astype(np.float32)
        vecs[name] = v / np.linalg.norm(v, axis=1, keepdims=True)
        np.save(tmp_path / f"{name}.npy", vecs[name])
    cfg = SemiEvolConfig(propagation={"k_demos": 2})
    out = steps.find_neighbors(cfg, unl_path, "unlabeled", tmp_path / "unlabeled.npy", lab_path,
                               tmp_path / "labeled.npy", tmp_path / "nb.parquet")
    assert pq.ParquetFile(out).metadata.num_row_groups == 3  # 4 + 4 + 3 queries
    whole = retrieve_neighbors(unl["id"].tolist(), vecs["unlabeled"], lab["id"].tolist(), vecs["labeled"], k=2,
                               unlabeled_texts=unl["question"].tolist(), labeled_texts=lab["question"].tolist())
    pd.testing.assert_frame_equal(steps.load_frame(out), steps.load_frame(steps.save_frame(whole, tmp_path / "w.parquet")))
    for start, stop in [(0, 2), (3, 6), (7, 11), (0, 11)]:
        ids = unl["id"].iloc[start:stop].tolist()
        got = steps.read_neighbors(out, start, stop, ids)
        want = whole[whole["unlabeled_id"].isin(ids)].reset_index(drop=True)
        assert got.to_dict("list") == want.to_dict("list")


def test_embed_table_writes_a_chunked_memmap_equal_to_embedding_at_once(tmp_path, monkeypatch):
    """Chunked embedding into a memory-mapped .npy gives the vectors of embedding the whole table."""
    class Letters:  # a deterministic stand-in embedder: vector = letter counts of the question
        def embed(self, texts):
            return np.array([[t.count(c) for c in "aeiou"] for t in texts], dtype=np.float32)

    monkeypatch.setattr(steps, "EMBED_CHUNK", 3)
    monkeypatch.setattr(steps, "get_embedder", lambda cfg: Letters())
    unl = _unlabeled(8)
    path = data.write_table(unl, tmp_path / "u.parquet", "unlabeled")
    out = steps.embed_table(SemiEvolConfig(), path, "unlabeled", tmp_path / "u.npy")
    assert np.array_equal(np.load(out), Letters().embed(unl["question"].tolist()))
