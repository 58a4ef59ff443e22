"""Tests of the Parquet data layer (semievol_core/data.py, sources.py, paper_csv.py, schema.py).
Fast: tiny fixtures only, plus one import per real task directory (skipped when the shared data is
absent)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pandas as pd
import pytest

from semievol_core.data import (
    append_part,
    load_dataset,
    read_table,
    split_oracle,
    table_fingerprint,
    write_table,
)
from semievol_core.paper_csv import import_csv_dir
from semievol_core.schema import DataError, content_id
from semievol_core.sources import read_records

FIX = Path(__file__).parent / "fixtures" / "data"


def labeled_df(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame({
        "id": [f"q{i}" for i in range(n)],
        "question": [f"Question {i}, with \"quotes\"\nand a newline?" for i in range(n)],
        "options": [["yes", "no"] if i % 2 == 0 else None for i in range(n)],  # odd rows free-form
        "answer": ["A" if i % 2 == 0 else f"free answer {i}" for i in range(n)],
        "metadata": [json.dumps({"n": i}) for i in range(n)],
    })


def task_dir(tmp_path: Path, **replace: str) -> Path:
    """A copy of fixtures/data/tiny with some split files replaced by bad fixtures."""
    src = tmp_path / "src" / "tiny"
    shutil.copytree(FIX / "tiny", src)
    for split, bad in replace.items():
        shutil.copyfile(FIX / "bad" / bad, src / f"{split}.csv")
    return src


# ------------------------------------------------------------------ importing the paper's CSVs


def test_import_tiny_task(tmp_path):
    summary = import_csv_dir(task_dir(tmp_path), tmp_path / "out")
    assert summary.counts == {"labeled": 4, "unlabeled": 3, "test": 2, "oracle": 2}
    ds = load_dataset(tmp_path / "out")
    assert list(ds.unlabeled.columns) == ["id", "question", "options", "metadata"]
    assert "gt" not in "".join(ds.unlabeled["metadata"])  # fpb-style answer text withheld
    # "2" (1-based) became "B"; the row without an answer has no oracle entry
    assert ds.oracle["answer"].tolist() == ["B", "B"]
    assert set(ds.oracle["id"]) < set(ds.unlabeled["id"])
    q = ds.labeled.iloc[1]
    assert q["question"] == (
        'Read this:\n"Sales rose 5%, beating forecasts."\nWhat is the sentiment?')
    assert q["options"] == ["negative", "neutral", "positive"]
    assert json.loads(q["metadata"]) == {"gt": "positive"}
    assert ds.labeled["answer"].tolist() == ["B", "C", "E", "J"]
    assert q["id"] == content_id(q["question"], q["options"])
    text = str(summary)
    assert "1-based option numbers" in text and "oracle.parquet" in text and "gt" in text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "labeled.parquet", "oracle.parquet", "test.parquet", "unlabeled"]


def test_import_without_unlabeled_is_fine_and_said(tmp_path):
    src = task_dir(tmp_path)
    (src / "unlabeled.csv").unlink()
    summary = import_csv_dir(src, tmp_path / "out")
    assert summary.counts["unlabeled"] == 0 and summary.counts["oracle"] == 0
    assert any("no unlabeled.csv" in n for n in summary.notes)
    ds = load_dataset(tmp_path / "out")
    assert len(ds.unlabeled) == 0 and ds.oracle is None
    assert (tmp_path / "out" / "unlabeled" / "part-00000.parquet").exists()


def test_import_refuses_nonempty_out_dir_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        import_csv_dir(task_dir(tmp_path), out)
    assert (out / "keep.txt").exists()
    import_csv_dir(task_dir(tmp_path / "again"), out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "labeled.parquet").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


BAD_CASES = [
    # fixture, row, column, words in the message
    ("answer_not_letter.csv", 3, "answer", "'F' is not an option letter (4 options: A-D)"),
    ("options_not_json.csv", 2, "options", "not a JSON list of strings"),
    ("options_not_strings.csv", 2, "options", "option 1 is not a string"),
    ("missing_column.csv", None, "answer", "missing required column"),
    ("blank_question.csv", 2, "question", "question is empty"),
    ("dup_conflict.csv", 3, "answer", "same id 'q1' as row 1 but different answer"),
    ("ragged.csv", 2, None, "has 4 fields, the header has 3"),
    ("not_utf8.csv", None, None, "not UTF-8 text (byte 0xe9 on line 3)"),
    ("empty.csv", None, None, "empty"),
    ("header_only.csv", None, None, "no data rows"),
]


@pytest.mark.parametrize("fixture,row,column,words", BAD_CASES)
def test_import_errors_name_file_row_and_column(tmp_path, fixture, row, column, words):
    with pytest.raises(DataError) as info:
        import_csv_dir(task_dir(tmp_path, labeled=fixture), tmp_path / "out")
    err = info.value
    assert (err.row, err.column) == (row, column)
    where = "tiny/labeled.csv" + (f" row {row}" if row else "")
    where += f", column '{column}'" if column else ""
    assert str(err) == f"{where}: {err.message}" and words in err.message
    assert "\n" not in str(err)
    assert not (tmp_path / "out").exists()  # nothing half-imported


@pytest.mark.parametrize("fixture,row,column,words", BAD_CASES)
def test_read_records_errors_name_the_file(fixture, row, column, words):
    with pytest.raises(DataError) as info:
        read_records(FIX / "bad" / fixture, {}, "labeled")
    assert str(info.value).startswith(f"bad/{fixture}") and words in str(info.value)
    assert (info.value.row, info.value.column) == (row, column)


def test_unreadable_file(tmp_path):
    (tmp_path / "dir.csv").mkdir()  # a directory where a file should be: unreadable as any user
    with pytest.raises(DataError, match="cannot read file"):
        read_records(tmp_path / "dir.csv", {}, "labeled")
    with pytest.raises(DataError, match="file not found"):
        read_records(tmp_path / "missing.jsonl", {}, "labeled")


def test_skip_bad_rows_quarantines_with_reason(tmp_path):
    src = task_dir(tmp_path, labeled="answer_not_letter.csv", test="options_not_json.csv")
    summary = import_csv_dir(src, tmp_path / "out", skip_bad_rows=True)
    assert summary.quarantined == 2
    assert summary.counts["labeled"] == 2 and summary.counts["test"] == 1
    q = read_table(tmp_path / "out" / "quarantine.parquet", "quarantine")
    assert q["row"].tolist() == [3, 2] and q["column"].tolist() == ["answer", "options"]
    assert q["source"].iloc[0].endswith("labeled.csv") and "option letter" in q["reason"].iloc[0]
    assert json.loads(q["raw"].iloc[0])["question"] == "Third?"
    assert "quarantine" in str(summary)


def test_identical_duplicates_kept_once_and_counted(tmp_path):
    summary = import_csv_dir(task_dir(tmp_path, labeled="dup_identical.csv"), tmp_path / "out")
    assert summary.counts["labeled"] == 2 and summary.duplicates == 1
    assert summary.rows_read["labeled"] == 3 and "duplicate" in str(summary)


# ------------------------------------------------------------------ tables on disk


def test_round_trip(tmp_path):
    df = labeled_df(4)
    write_table(df, tmp_path / "l.parquet", "labeled")
    back = read_table(tmp_path / "l.parquet", "labeled")
    assert back.to_dict("records") == df.to_dict("records")
    assert back["options"].iloc[0] == ["yes", "no"] and type(back["options"].iloc[0]) is list
    assert back["options"].iloc[1] is None
    # a DataFrame that came from read_table writes back unchanged, to the same bytes
    fp = table_fingerprint(tmp_path / "l.parquet")
    write_table(back, tmp_path / "l.parquet", "labeled")
    assert table_fingerprint(tmp_path / "l.parquet") == fp


def test_write_validates(tmp_path):
    path = tmp_path / "t.parquet"
    bad = labeled_df(3)
    bad.loc[2, "answer"] = "C"  # 2 options
    msg = r"t.parquet row 3, column 'answer': 'C' is not an option letter \(2 options: A-B\)"
    with pytest.raises(DataError, match=msg):
        write_table(bad, path, "labeled")
    with pytest.raises(DataError, match="answers of unlabeled rows belong in the oracle"):
        write_table(labeled_df(2), path, "unlabeled")
    dup = pd.concat([labeled_df(2), labeled_df(1)])
    with pytest.raises(DataError, match="row 3, column 'id': duplicate id 'q0'"):
        write_table(dup, path, "labeled")
    with pytest.raises(DataError, match="metadata is not a JSON object"):
        write_table(labeled_df(1).assign(metadata="[1]"), path, "labeled")
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "l.parquet"
    write_table(labeled_df(2), path, "labeled")
    before = path.read_bytes()

    def crash(table, where, *a, **k):
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    from conftest import failing_parquet_writes

    failing_parquet_writes(monkeypatch, crash)
    with pytest.raises(OSError, match="disk full"):
        write_table(labeled_df(3), path, "labeled")
    with pytest.raises(OSError, match="disk full"):
        append_part(labeled_df(1).drop(columns="answer"), tmp_path / "parts", "unlabeled")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["l.parquet"]


def test_append_part_numbers_and_refuses_known_ids(tmp_path):
    d = tmp_path / "unlabeled"
    unl = labeled_df(4).drop(columns="answer")
    assert append_part(unl.iloc[:2], d, "unlabeled").name == "part-00000.parquet"
    assert append_part(unl.iloc[2:3], d, "unlabeled").name == "part-00001.parquet"
    # a gap: numbering continues after the highest number
    (d / "part-00001.parquet").rename(d / "part-00007.parquet")
    assert append_part(unl.iloc[3:], d, "unlabeled").name == "part-00008.parquet"
    assert read_table(d, "unlabeled")["id"].tolist() == ["q0", "q1", "q2", "q3"]  # part order
    msg = "row 2, column 'id': id 'q1' is already in part-00000.parquet"
    with pytest.raises(DataError, match=msg):
        append_part(unl.iloc[:2].assign(id=["new", "q1"]), d, "unlabeled")
    assert len(list(d.iterdir())) == 3


def test_fingerprint(tmp_path):
    d = tmp_path / "unlabeled"
    unl = labeled_df(3).drop(columns="answer")
    write_table(unl, d / "part-00000.parquet", "unlabeled")
    fp = table_fingerprint(d)
    (d / ".part.leftover.tmp").write_bytes(b"junk")  # hidden temp files are not parts
    write_table(unl, d / "part-00000.parquet", "unlabeled")
    assert table_fingerprint(d) == fp
    write_table(unl.assign(question=unl["question"] + "!"), d / "part-00000.parquet", "unlabeled")
    changed = table_fingerprint(d)
    assert changed != fp
    append_part(labeled_df(5).drop(columns="answer").iloc[3:], d, "unlabeled")
    assert table_fingerprint(d) not in (fp, changed)
    assert len(fp) == 64


def test_read_table_checks_columns(tmp_path):
    write_table(labeled_df(1).drop(columns="answer"), tmp_path / "u.parquet", "unlabeled")
    with pytest.raises(DataError, match="u.parquet, column 'answer': missing required column"):
        read_table(tmp_path / "u.parquet", "labeled")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_table(tmp_path / "junk.parquet", "labeled")


def test_split_oracle_hides_answers():
    df = labeled_df(3).assign(metadata=[json.dumps({"gt": "yes", "src": "x"})] * 3)
    df.loc[1, "answer"] = None
    unl, oracle = split_oracle(df)
    assert "answer" not in unl.columns and json.loads(unl["metadata"][0]) == {"src": "x"}
    assert oracle["id"].tolist() == ["q0", "q2"]


# ------------------------------------------------------------------ users' files


MAPPING = {"question": "prompt", "options": "choices", "answer": "label", "id": "uid"}


@pytest.mark.parametrize("name", ["logs.jsonl", "logs.csv", "logs.parquet"])
def test_read_records_formats_agree(name):
    df = read_records(FIX / "records" / name, MAPPING, "labeled")
    assert df["id"].tolist() == ["u1", "u2", "u3"]
    assert df["options"].tolist() == [["yes", "no"], ["yes", "no"], None]  # list, JSON string, none
    assert df["answer"].tolist() == ["A", "B", "7"]  # u3 is free-form
    assert json.loads(df["metadata"][0]) == {"user": "alice"}
    assert df.attrs["duplicates"] == 0


def test_read_records_unlabeled_and_mapping_errors(tmp_path):
    path = FIX / "records" / "logs.jsonl"
    with pytest.raises(DataError, match="column 'label': unlabeled records must not carry answers"):
        read_records(path, MAPPING, "unlabeled")
    unl = read_records(path, {"question": "prompt", "options": "choices"}, "unlabeled")
    assert list(unl.columns) == ["id", "question", "options", "metadata"]
    assert unl["id"][0] == content_id("Is the sky blue?", ["yes", "no"])
    # other columns go into metadata, except one named like an answer: kept out, with a note
    assert json.loads(unl["metadata"][0]) == {"uid": "u1", "user": "alice"}
    assert unl.attrs["notes"] == [
        "answer-revealing column(s) kept out of unlabeled metadata: label (named like an answer)"]
    with pytest.raises(DataError, match="logs.jsonl, column 'text': missing required column"):
        read_records(path, {"question": "text"}, "unlabeled")
    with pytest.raises(ValueError, match="mapping keys"):
        read_records(path, {"prompt": "question"}, "unlabeled")
    append_part(unl, tmp_path / "u", "unlabeled")
    assert read_table(tmp_path / "u", "unlabeled").to_dict("records") == unl.to_dict("records")


def test_read_records_jsonl_rows_are_lines():
    path = FIX / "records" / "bad_line.jsonl"
    with pytest.raises(DataError, match="bad_line.jsonl row 2: not valid JSON"):
        read_records(path, {"question": "prompt", "options": "choices"}, "unlabeled")
    df = read_records(path, {"question": "prompt", "options": "choices"}, "unlabeled",
                      skip_bad_rows=True)
    assert len(df) == 2 and [q["row"] for q in df.attrs["quarantine"]] == [2]


def test_data_error_is_one_line_and_pickles():
    err = DataError("/a/b/fpb/labeled.csv", 17, "answer", "bad\nvalue")
    assert str(err) == "fpb/labeled.csv row 17, column 'answer': bad value"
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.row, again.column, str(again)) == (err.path, 17, "answer", str(err))


# ------------------------------------------------------------------ the real task directories

REAL = {  # task: (labeled, unlabeled, test, oracle) rows after import
    "arc": (518, 1553, 518, 1553),  # unlabeled.csv has 1554 rows, 1 repeating another under its id
    "fpb": (452, 1357, 453, 1357),  # unlabeled.csv has 1359 rows, 2 of them identical repeats
    # 6 labeled and 8 test rows repeat another row's question, options and answer under another
    # question_id: dropped, counted
    "mmlu_pro": (2400, 0, 2399, 0),
    "usmle": (2290, 0, 2291, 0),
}


@pytest.mark.parametrize("task", sorted(REAL))
def test_real_task_imports(task, shared_data, tmp_path):
    src = shared_data / task
    if not src.is_dir():
        pytest.skip(f"{src} not present")
    summary = import_csv_dir(src, tmp_path / task)
    ds = load_dataset(tmp_path / task)
    oracle = 0 if ds.oracle is None else len(ds.oracle)
    assert (len(ds.labeled), len(ds.unlabeled), len(ds.test), oracle) == REAL[task]
    assert "answer" not in ds.unlabeled.columns
    assert summary.quarantined == 0
    assert all(a in "ABCDEFGHIJ" for a in ds.test["answer"])
    if task == "mmlu_pro":
        assert summary.rows_read == {"labeled": 2406, "test": 2407}
        assert summary.duplicates == 14 and "another id or metadata" in str(summary)
    if task == "fpb":
        assert summary.rows_read["unlabeled"] == 1359 and summary.duplicates == 2
        assert not any("gt" in m for m in ds.unlabeled["metadata"])
    if task == "arc":
        assert set(ds.oracle["answer"]) <= set("ABCDE")
