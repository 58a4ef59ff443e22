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


def _sizes_file(path, sizes: list[int]):
    """A file whose metadata says it holds parts of these sizes (the plan reads nothing else)."""
    import json

    import pyarrow as pa

    schema = pa.schema([("id", pa.string())]).with_metadata({data.PARTS_KEY: json.dumps(sizes).encode()})
    pq.write_table(pa.table({"id": ["x"]}, schema=schema), path)
    return path


def test_shards_never_straddle_parts_and_grow_past_max_shards(tmp_path):
    path = data.write_table_parts([_unlabeled(10), _unlabeled(25, 100)], tmp_path / "u.parquet", "unlabeled")
    assert data.part_sizes(path) == [10, 25]
    # 4 rows a shard: 3 shards in the first part (4+4+2), 7 in the second (6x4+1)
    plan = steps.shard_plan(path, shard_size=4, max_shards=100)
    assert plan[:3] == [[0, 4], [4, 8], [8, 10]] and plan[3] == [10, 14] and plan[-1] == [34, 35]
    assert len(plan) == 10
    # at most 3 shards a part (ceil(10/3) = 4 rows), and at least the rows before it (max_shards
    # 3 // GROWTH 4 -> 1: a shard starting at row 10 holds 10 or more)
    assert steps.shard_plan(path, shard_size=2, max_shards=3) == [[0, 4], [4, 8], [8, 10], [10, 20], [20, 30],
                                                                  [30, 35]]


def test_a_million_row_part_makes_max_shards_shards(tmp_path):
    """The plan reads the parts' sizes from the metadata alone: a file that says it holds a part of
    a million rows and one of 300 gets 200 shards of 5,000 and 1 of 300 (200 is the default; a
    shard after a million rows holds at least 1,000,000 / (200/4) = 20,000, or the whole part)."""
    cfg = SemiEvolConfig().execution
    plan = steps.shard_plan(_sizes_file(tmp_path / "u.parquet", [1_000_000, 300]), cfg.shard_size, cfg.max_shards)
    assert len(plan) == 201 and plan[0] == [0, 5000] and plan[199] == [995000, 1000000]
    assert plan[200:] == [[1000000, 1000300]]
    # embedding's shards: at least EMBED_CHUNK rows, at most max_shards / 4 a part: 50 of 20,000
    from semievol_core.graph import BY_NAME

    plans = BY_NAME["plan-shards"].run(SemiEvolConfig(), tmp_path, unlabeled=str(tmp_path / "u.parquet"))
    assert plans["shard_rows"] == plan
    assert len(plans["embed_rows"]) == 51 and plans["embed_rows"][0] == [0, 20_000]
    assert plans["embed_rows"][-1] == [1_000_000, 1_000_300]


def test_a_year_of_nightly_parts_makes_hundreds_of_shards(tmp_path):
    """100 nightly parts of 10,000 rows: shards grow with the rows before them, so the later
    nights make one shard each, and every part keeps its own shards."""
    cfg = SemiEvolConfig().execution
    plan = steps.shard_plan(_sizes_file(tmp_path / "u.parquet", [10_000] * 100), cfg.shard_size, cfg.max_shards)
    assert 150 <= len(plan) <= 400
    assert plan[:79] == [[i, min(i + 128, 10_000)] for i in range(0, 10_000, 128)]  # night 0: shards of 128
    assert plan[-1] == [990_000, 1_000_000]
    bounds = {b for shard in plan for b in shard}
    assert all(10_000 * k in bounds for k in range(101))  # no shard straddles two nights


def test_small_parts_are_packed_and_appending_parts_keeps_every_closed_group(tmp_path):
    # parts of 3 rows, shard_size 8: groups of three parts (9 rows) from the start
    plan = steps.shard_plan(_sizes_file(tmp_path / "a.parquet", [3] * 7), shard_size=8, max_shards=100)
    assert plan == [[0, 9], [9, 18], [18, 21]]  # the last group is open: the table ended
    # a big part closes the open group and keeps its own shards; small parts after it pack again
    mixed = steps.shard_plan(_sizes_file(tmp_path / "b.parquet", [3, 3, 20, 3, 3, 3]), shard_size=8, max_shards=100)
    assert mixed == [[0, 6], [6, 14], [14, 22], [22, 26], [26, 35]]
    # appended parts: every group that had closed is unchanged, only the open one grows
    before = steps.shard_plan(_sizes_file(tmp_path / "c.parquet", [5] * 40), shard_size=8, max_shards=8)
    after = steps.shard_plan(_sizes_file(tmp_path / "d.parquet", [5] * 40 + [7] * 30), shard_size=8, max_shards=8)
    assert after[: len(before) - 1] == before[:-1] and after[len(before) - 1][0] == before[-1][0]
    for p in (before, after):  # every row in exactly one shard, in order
        assert p[0][0] == 0 and all(a[1] == b[0] for a, b in zip(p, p[1:]))
    assert after[-1][1] == 40 * 5 + 30 * 7


def test_small_parts_are_packed_to_shard_size_and_never_more(tmp_path):
    """Packing stops at shard_size rows whatever the table's size, so a night of a few small
    parts answers again at most one open group of fewer than shard_size old rows: 10,000 parts
    of 100 rows make 5,000 shards of 200, and 3 more parts of 100 change only the last group."""
    cfg = SemiEvolConfig().execution
    plan = steps.shard_plan(_sizes_file(tmp_path / "u.parquet", [100] * 10_001), cfg.shard_size, cfg.max_shards)
    assert len(plan) == 5_001 and plan[-1] == [1_000_000, 1_000_100]  # the open group: one part
    assert all(stop - start == 200 for start, stop in plan[:-1])
    more = steps.shard_plan(_sizes_file(tmp_path / "v.parquet", [100] * 10_004), cfg.shard_size, cfg.max_shards)
    assert more[:5_000] == plan[:5_000] and more[5_000:] == [[1_000_000, 1_000_200], [1_000_200, 1_000_400]]


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


def _tables_and_vectors(tmp_path, n_unlabeled: int, seed: int):
    """6 labeled and n_unlabeled unlabeled rows written as tables, and random unit 8-d vectors
    for both saved as labeled.npy / unlabeled.npy: (labeled, unlabeled, their paths, the vectors)."""
    rng = np.random.default_rng(seed)
    lab, unl = pd.DataFrame(sentiment_rows(6)), _unlabeled(n_unlabeled, 100)
    lab_path = data.write_table(lab, tmp_path / "labeled.parquet", "labeled")
    unl_path = data.write_table(unl, tmp_path / "unlabeled.parquet", "unlabeled")
    vecs = {}
    for name, n in (("labeled", 6), ("unlabeled", n_unlabeled)):
        v = rng.normal(size=(n, 8)).astype(np.float32)
        vecs[name] = v / np.linalg.norm(v, axis=1, keepdims=True)
        np.save(tmp_path / f"{name}.npy", vecs[name])
    return lab, unl, lab_path, unl_path, vecs


def test_neighbors_written_by_chunk_are_read_back_per_shard(tmp_path, monkeypatch):
    """find_neighbors searches EMBED_CHUNK queries at a time, one row group each; read_neighbors
    of any row range gives exactly the rows the whole-table search gives for those queries."""
    monkeypatch.setattr(steps, "EMBED_CHUNK", 4)
    lab, unl, lab_path, unl_path, vecs = _tables_and_vectors(tmp_path, 11, seed=0)
    cfg = SemiEvolConfig(propagation={"k_demos": 2})
    out = steps.find_neighbors(cfg, unl_path, "unlabeled", tmp_path / "unlabeled.npy", lab_path,
                               tmp_path / "labeled.npy", tmp_path / "nb.parquet")
    assert pq.ParquetFile(out).metadata.num_row_groups == 3  # 4 + 4 + 3 queries
    whole = retrieve_neighbors(unl["id"].tolist(), vecs["unlabeled"], lab["id"].tolist(), vecs["labeled"], k=2,
                               unlabeled_texts=unl["question"].tolist(), labeled_texts=lab["question"].tolist())
    pd.testing.assert_frame_equal(steps.load_frame(out), steps.load_frame(steps.save_frame(whole, tmp_path / "w.parquet")))
    for chunk in (4, 1000):  # the file says its own chunk size: a later EMBED_CHUNK does not matter
        monkeypatch.setattr(steps, "EMBED_CHUNK", chunk)
        for start, stop in [(0, 2), (3, 6), (7, 11), (0, 11)]:
            ids = unl["id"].iloc[start:stop].tolist()
            got = steps.read_neighbors(out, start, stop, ids)
            want = whole[whole["unlabeled_id"].isin(ids)].reset_index(drop=True)
            assert got.to_dict("list") == want.to_dict("list")


def test_embed_table_writes_chunk_by_chunk_the_npy_of_embedding_at_once(tmp_path, monkeypatch):
    """Chunked embedding appended to one .npy gives the bytes np.save writes for the whole table's
    vectors, and read_vectors gives back any row range of it (an empty table: a (0, 0) array)."""
    class Letters:  # a deterministic stand-in embedder: vector = letter counts of the question
        def embed(self, texts):
            return np.array([[t.count(c) for c in "aeiou"] for t in texts], dtype=np.float32)

    monkeypatch.setattr(steps, "EMBED_CHUNK", 3)
    monkeypatch.setattr(steps, "get_embedder", lambda cfg: Letters())
    unl = _unlabeled(8)
    path = data.write_table(unl, tmp_path / "u.parquet", "unlabeled")
    out = steps.embed_table(SemiEvolConfig(), path, "unlabeled", tmp_path / "u.npy")
    whole = Letters().embed(unl["question"].tolist())
    np.save(tmp_path / "whole.npy", whole)
    assert out.read_bytes() == (tmp_path / "whole.npy").read_bytes()
    for start, stop in [(0, 8), (2, 5), (7, 8), (5, 5), (6, 20)]:
        assert np.array_equal(steps.read_vectors(out, start, stop), whole[start:stop])
    empty = steps.embed_table(SemiEvolConfig(), data.write_table(data.empty_frame("unlabeled"), tmp_path / "e.parquet",
                                                                 "unlabeled"),
                              "unlabeled", tmp_path / "e.npy")
    assert np.load(empty).shape == (0, 0) and steps.read_vectors(empty, 0, 3).shape == (0, 0)


def test_unlabeled_rows_embedded_by_shard_read_back_as_one_table(tmp_path, monkeypatch):
    """embed_shard writes a shard's vectors; read_vectors over the shards' files in row order
    gives any row range of the whole table's vectors, across shard boundaries, and
    find_neighbors from the shard files equals find_neighbors from one file. A shard's key is
    its questions' text: the same rows elsewhere in the table keep it, other text changes it."""
    class Letters:
        def embed(self, texts):
            return np.array([[t.count(c) + 0.5 for c in "aeiou"] for t in texts], dtype=np.float32)

    monkeypatch.setattr(steps, "get_embedder", lambda cfg: Letters())
    monkeypatch.setattr(steps, "EMBED_CHUNK", 4)
    lab, unl, lab_path, unl_path, _ = _tables_and_vectors(tmp_path, 11, seed=2)
    plan = [[0, 3], [3, 7], [7, 11]]
    files = [steps.embed_shard(SemiEvolConfig(), unl_path, "unlabeled", rows, tmp_path / f"e{i}.npy")
             for i, rows in enumerate(plan)]
    whole = Letters().embed(unl["question"].tolist())
    for start, stop in [(0, 11), (2, 5), (3, 7), (6, 8), (10, 11), (9, 20)]:
        assert np.array_equal(steps.read_vectors(files, start, stop), whole[start:stop])
    np.save(tmp_path / "whole.npy", whole)
    np.save(tmp_path / "labeled.npy", Letters().embed(lab["question"].tolist()))
    cfg = SemiEvolConfig(propagation={"k_demos": 2})
    by_shard = steps.find_neighbors(cfg, unl_path, "unlabeled", files, lab_path, tmp_path / "labeled.npy",
                                    tmp_path / "nb1.parquet")
    at_once = steps.find_neighbors(cfg, unl_path, "unlabeled", tmp_path / "whole.npy", lab_path,
                                   tmp_path / "labeled.npy", tmp_path / "nb2.parquet")
    assert steps.load_frame(by_shard).equals(steps.load_frame(at_once))
    key = steps.embedding_key(unl_path, "unlabeled", [3, 7])
    moved = data.write_table(pd.concat([_unlabeled(2, 500), unl]), tmp_path / "moved.parquet", "unlabeled")
    assert steps.embedding_key(moved, "unlabeled", [5, 9]) == key  # the same questions two rows later
    assert steps.embedding_key(unl_path, "unlabeled", [3, 8]) != key


def test_collect_vote_and_select_stream_by_shard_and_equal_the_whole_table_computation(tmp_path, monkeypatch):
    """13 questions in 3 generation shards, 4 collaborators + the kNN vote: responses.parquet
    holds one row group per shard with every response to its questions; votes come back a row
    group per shard; select reads a shard at a time and its pseudo-labels equal the whole-table
    select_pseudo_labels (quotas over the whole pool); selection_stats counts the same."""
    from semievol_core.collaboration import RESPONSE_COLUMNS, knn_responses
    from semievol_core.propagation import knn_label_vote
    from semievol_core.selection import select_pseudo_labels
    from semievol_core.voting import vote

    monkeypatch.setattr(steps, "EMBED_CHUNK", 4)
    lab, unl, lab_path, unl_path, _ = _tables_and_vectors(tmp_path, 13, seed=1)
    rng = np.random.default_rng(1)
    cfg = SemiEvolConfig(collaboration={"knn_collaborator": True},
                         selection={"agreement": "knn", "class_quota": "prior", "theta": 0.6})
    nb = steps.find_neighbors(cfg, unl_path, "unlabeled", tmp_path / "unlabeled.npy", lab_path,
                              tmp_path / "labeled.npy", tmp_path / "nb.parquet")
    plan = [[0, 5], [5, 10], [10, 13]]
    shard_files = []
    for i, (start, stop) in enumerate(plan):  # 4 collaborators; answers A/B/C at random, one unparsed
        rows = [(u, f"c{c}", "warm", 0, 0, "text", str(rng.choice(["A", "B", "C"])) if (u, c) != ("u-101", 0) else None,
                 True, "letter", 3, float(rng.uniform(0.1, 2.0)), "stop")
                for u in unl["id"].iloc[start:stop] for c in range(4)]
        shard_files.append(steps.save_frame(pd.DataFrame(rows, columns=RESPONSE_COLUMNS), tmp_path / f"s{i}.parquet"))
    responses = steps.collect_responses(cfg, plan, shard_files, lab_path, nb, tmp_path / "responses.parquet")
    groups = [g["unlabeled_id"] for g in steps.iter_groups(responses)]
    assert [sorted(set(g)) for g in groups] == [sorted(unl["id"].iloc[a:b]) for a, b in plan]
    assert [len(g) for g in groups] == [25, 25, 15]  # 4 replies + the kNN vote per question

    whole = steps.load_frame(responses)
    knn = knn_label_vote(steps.load_frame(nb), dict(zip(lab["id"], lab["answer"])))
    assert (whole[whole["model"] == "knn"].set_index("unlabeled_id")["answer"].sort_index()
            == knn_responses(knn).set_index("unlabeled_id")["answer"].sort_index()).all()

    votes = steps.vote_step(responses, tmp_path / "votes.parquet")
    assert pq.ParquetFile(votes).metadata.num_row_groups == 3
    vt = steps.load_frame(votes)
    pd.testing.assert_frame_equal(vt.sort_values("unlabeled_id").reset_index(drop=True), vote(whole))
    disputed = vt[~vt["consensus"]]
    justified = pd.DataFrame({"unlabeled_id": disputed["unlabeled_id"], "text": "Answer: B", "answer": "B",
                              "parse_ok": True, "num_tokens": 2, "H": rng.uniform(0.1, 2.0, len(disputed))})
    just_path = steps.save_frame(justified, tmp_path / "justified.parquet")

    got = steps.load_frame(steps.select_step(cfg, votes, just_path, responses, lab_path, tmp_path / "pl.parquet"))
    want = select_pseudo_labels(vote(whole), justified, whole, theta=0.6, agreement="knn", class_quota="prior",
                                labeled_answers=lab["answer"].tolist())
    pd.testing.assert_frame_equal(got, want.reset_index(drop=True), check_dtype=False)
    assert 0 < got["selected"].sum() < len(got)
    one_group = steps.save_frame(vote(whole), tmp_path / "votes-whole.parquet")  # not from vote_step
    with pytest.raises(ValueError, match=r"votes-whole.parquet has 1 row groups and .*responses.parquet 3"):
        steps.select_step(cfg, one_group, just_path, responses, lab_path, tmp_path / "pl2.parquet")
    stats = steps.selection_stats(tmp_path / "pl.parquet", votes, None, "choice", unl_path, labeled=lab_path,
                                  responses=responses, agreement="knn")
    assert stats["n_unlabeled"] == 13 and stats["n_consensus"] == int(vt["consensus"].sum())
    assert (stats["removed_unparsed"] + stats["removed_by_agreement"] + stats["removed_by_threshold"]
            + stats["n_selected"]) == len(got)


def test_copy_parts_streams_the_bytes_write_table_parts_writes_and_names_bad_rows(tmp_path, monkeypatch):
    """prepare copies the unlabeled parts a row group at a time: the file equals write_table_parts
    over the parts read whole (same bytes, so a run's cache keys do not move), source files of
    other row-group sizes included; a bad row, a repeated id across parts, or a missing column is
    one DataError naming the part, the row and the column, and nothing is written."""
    import pyarrow as pa

    from semievol_core.schema import DataError

    monkeypatch.setattr(data, "ROW_GROUP_ROWS", 4)
    d = tmp_path / "unlabeled"
    d.mkdir()
    a, b = _unlabeled(10), _unlabeled(7, 100)
    source = pq.read_table(data.write_table(a, tmp_path / "a.parquet", "unlabeled"))
    pq.write_table(source, d / "part-00000.parquet", row_group_size=3)  # groups of 3, copied as groups of 4
    data.write_table(b, d / "part-00001.parquet", "unlabeled")
    parts = data.table_parts(d)
    streamed = data.copy_parts(parts, tmp_path / "streamed.parquet", "unlabeled")
    whole = data.write_table_parts([data.read_table(p, "unlabeled") for p in parts], tmp_path / "whole.parquet",
                                   "unlabeled")
    assert streamed.read_bytes() == whole.read_bytes()
    assert data.part_sizes(streamed) == [10, 7]
    f = pq.ParquetFile(streamed)
    assert [f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)] == [4, 4, 2, 4, 3]
    wide = source.set_column(0, pa.field("id", pa.large_string()), source.column("id").cast(pa.large_string()))
    pq.write_table(wide, d / "part-00000.parquet", row_group_size=3)  # large_string ids (polars, pandas)
    assert data.copy_parts(data.table_parts(d), tmp_path / "wide.parquet", "unlabeled").read_bytes() == whole.read_bytes()
    pq.write_table(source, d / "part-00000.parquet", row_group_size=3)
    empty = data.copy_parts([], tmp_path / "empty.parquet", "unlabeled")
    assert empty.read_bytes() == data.write_table_parts([], tmp_path / "empty2.parquet", "unlabeled").read_bytes()

    good = pq.read_table(data.write_table(b.iloc[:4], tmp_path / "b.parquet", "unlabeled"))
    column = good.schema.get_field_index("question")
    blank = good.set_column(column, good.schema.field(column), pa.array(["q1", "q2", " ", "q4"], good.schema.field(column).type))
    pq.write_table(blank, d / "part-00001.parquet")  # row 3's question is blank
    with pytest.raises(DataError, match=r"part-00001.parquet row 3, column 'question'"):
        data.copy_parts(data.table_parts(d), tmp_path / "bad.parquet", "unlabeled")
    dup = pd.concat([b.iloc[:2], a.iloc[[7]]], ignore_index=True)
    data.write_table(dup, d / "part-00001.parquet", "unlabeled")
    with pytest.raises(DataError, match=r"part-00001.parquet row 3, column 'id': duplicate id .* \(also .*part-00000.parquet row 8\)"):
        data.copy_parts(data.table_parts(d), tmp_path / "dup.parquet", "unlabeled")
    pq.write_table(pq.read_table(d / "part-00000.parquet").drop(["options"]), d / "part-00000.parquet")
    with pytest.raises(DataError, match=r"part-00000.parquet, column 'options': missing required column"):
        data.copy_parts(data.table_parts(d), tmp_path / "missing.parquet", "unlabeled")
    assert not any((tmp_path / f"{name}.parquet").exists() for name in ("bad", "dup", "missing"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left behind


def test_file_digest_hashes_by_blocks_to_the_same_key(tmp_path, monkeypatch):
    """A file is hashed a block at a time (a million rows' vectors are 1.5 GB): the digest is the
    sha256 of its bytes whatever the block size, so no cache key moves."""
    import hashlib

    blob = tmp_path / "vecs.npy"
    blob.write_bytes(bytes(range(256)) * 41)
    monkeypatch.setattr(steps, "DIGEST_BLOCK", 1000)  # 10,496 bytes in 11 blocks
    assert steps.file_digest(blob) == hashlib.sha256(blob.read_bytes()).hexdigest()
    monkeypatch.setattr(steps, "DIGEST_BLOCK", 1 << 23)
    assert steps.file_digest(blob) == hashlib.sha256(blob.read_bytes()).hexdigest()
