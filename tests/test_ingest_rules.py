"""Tests of the rules ingest and import-csv share (issue 15, items 2-6), on real files in tmp_path.

The ingest tests call semievol_core.ingest.ingest_file, the plain body of the `ingest` Prefect task,
so they need no Prefect server. Fast: no model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import SENTIMENT_OPTIONS, sentiment_rows
from flows import cli
from semievol_core.config import ExecutionConfig
from semievol_core.data import append_part, read_table, split_oracle, write_table
from semievol_core.ingest import inbox_files, ingest_file
from semievol_core.paper_csv import import_csv_dir
from semievol_core.schema import DataError, answer_columns, content_id
from semievol_core.sources import read_records
from semievol_core.steps import prepare_data


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def new_rows(n: int, offset: int = 5000) -> list[dict]:
    """Unlabeled log records for the sentiment dataset: questions not in it yet."""
    return [{"question": r["question"], "options": r["options"], "src": "app"}
            for r in sentiment_rows(n, offset=offset)]


# ------------------------------------------------------------------ 2. answer-bearing columns


def test_answer_columns_by_name_or_by_matching_an_option():
    opts = ["negative", "neutral", "positive"]
    rows = [(opts, {"Ground Truth": "x", "hint": "C", "mood": "positive", "src": "app"})] * 4
    rows.append((opts, {"Ground Truth": "x", "hint": "c", "mood": "glad", "src": "app"}))
    reasons = answer_columns(rows)
    assert reasons == {"Ground Truth": "named like an answer",  # any case, any separator
                       "hint": "equals an option's text or letter on 5 of 5 rows",
                       "mood": "equals an option's text or letter on 4 of 5 rows"}  # 80%
    # a few coincidences, or under 80% of the rows, are not an answer
    assert answer_columns(rows[:4]) == {"Ground Truth": "named like an answer"}
    assert "mood" not in answer_columns(rows + [(opts, {"mood": "sad"})])


def test_read_records_keeps_answer_columns_out_of_unlabeled_metadata(tmp_path):
    opts = SENTIMENT_OPTIONS
    rows = [{"prompt": f"Sentence {i}?", "options": opts, "gt": opts[i % 3], "label": "ABC"[i % 3],
             "pick": "ABC"[i % 3], "src": "app"} for i in range(6)]
    path = write_jsonl(tmp_path / "logs.jsonl", rows)
    df = read_records(path, {"question": "prompt"}, "unlabeled")
    assert {m for m in df["metadata"]} == {'{"src": "app"}'}
    (note,) = df.attrs["notes"]
    assert note.startswith("answer-revealing column(s) kept out of unlabeled metadata: ")
    assert "gt (named like an answer)" in note and "label (named like an answer)" in note
    assert "pick (equals an option's text or letter on 6 of 6 rows)" in note
    # labeled rows keep their extra columns: only unlabeled metadata could leak an answer
    assert "gt" in read_records(path, {"question": "prompt", "answer": "label"}, "labeled")["metadata"][0]


def test_import_csv_and_split_oracle_use_the_same_rule(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    header = "question,options,answer,label,pick\n"
    line = '"Q{i}?","[""yes"", ""no""]",{a},{a},{t}\n'
    body = "".join(line.format(i=i, a="AB"[i % 2], t=["yes", "no"][i % 2]) for i in range(6))
    for split in ("labeled", "unlabeled", "test"):
        (src / f"{split}.csv").write_text(header + body.replace("Q", split[0]), encoding="utf-8")
    summary = import_csv_dir(src, tmp_path / "out")
    unl = read_table(tmp_path / "out" / "unlabeled", "unlabeled")
    assert set(unl["metadata"]) == {"{}"}
    assert ("src/unlabeled.csv: answer-revealing column(s) kept out of unlabeled metadata: "
            "label (named like an answer), pick (equals an option's text or letter on 6 of 6 rows)"
            ) in summary.notes
    assert json.loads(read_table(tmp_path / "out" / "labeled.parquet", "labeled")["metadata"][0]) == {
        "label": "A", "pick": "yes"}

    labeled = pd.DataFrame(sentiment_rows(6)).assign(metadata=json.dumps({"target": "x", "ok": 1}))
    unl, _ = split_oracle(labeled)
    assert set(unl["metadata"]) == {'{"ok": 1}'} and "target" in unl.attrs["notes"][0]


def test_ingest_reports_kept_out_columns(sentiment_dataset, tmp_path):
    rows = [dict(r, gt=r["options"][0]) for r in new_rows(3)]
    res = ingest_file(write_jsonl(tmp_path / "inbox" / "a.jsonl", rows), sentiment_dataset)
    assert res["status"] == "ingested" and res["added"] == 3
    assert any("gt (named like an answer)" in n for n in res["notes"])
    assert set(read_table(res["part"], "unlabeled")["metadata"]) == {'{"src": "app"}'}


# ------------------------------------------------------------------ 3. rows of the wrong form


def test_ingest_quarantines_rows_without_options_in_a_multiple_choice_dataset(sentiment_dataset, tmp_path):
    rows = new_rows(3)
    rows[1]["options"] = None
    res = ingest_file(write_jsonl(tmp_path / "inbox" / "a.jsonl", rows), sentiment_dataset)
    assert (res["status"], res["added"], res["quarantined"]) == ("ingested", 2, 1)
    q = read_table(sentiment_dataset / "quarantine", "quarantine")
    assert (q["row"][0], q["column"][0]) == (2, "options") and "multiple choice" in q["reason"][0]
    assert q["source"][0].endswith("a.jsonl")
    # no options column at all: the whole file is refused, naming the column
    res = ingest_file(write_jsonl(tmp_path / "inbox" / "b.jsonl", [{"question": "Q?"}]), sentiment_dataset)
    assert res["status"] == "rejected" and "column 'options': missing required column" in res["error"]


def test_ingest_quarantines_option_rows_in_a_free_form_dataset(tmp_path):
    data = tmp_path / "data"
    write_table(pd.DataFrame({"id": ["a"], "question": ["2+2?"], "options": [None], "answer": ["4"]}),
                data / "labeled.parquet", "labeled")
    write_table(pd.DataFrame({"id": ["t"], "question": ["3+3?"], "options": [None], "answer": ["6"]}),
                data / "test.parquet", "test")
    rows = [{"question": "1+1?", "options": None}, {"question": "Pick", "options": ["x", "y"]}]
    res = ingest_file(write_jsonl(tmp_path / "inbox" / "a.jsonl", rows), data)
    assert (res["added"], res["quarantined"]) == (1, 1)
    q = read_table(data / "quarantine", "quarantine")
    assert (q["row"][0], q["column"][0]) == (2, "options") and "free-form" in q["reason"][0]


@pytest.mark.parametrize("table", ["unlabeled", "test"])
def test_evolve_refuses_rows_without_options_before_training(sentiment_dataset, tmp_path, table):
    row = {"id": "odd", "question": "A question without options?", "options": None}
    if table == "unlabeled":
        where = append_part(pd.DataFrame([row]), sentiment_dataset / "unlabeled", "unlabeled")
        rowno = 1
    else:
        test = read_table(sentiment_dataset / "test.parquet", "test")
        test = pd.concat([test, pd.DataFrame([dict(row, answer="A", metadata="{}")])], ignore_index=True)
        where = write_table(test, sentiment_dataset / "test.parquet", "test")
        rowno = len(test)
    with pytest.raises(DataError) as info:
        prepare_data(sentiment_dataset, tmp_path / "run")
    assert (Path(info.value.path), info.value.row, info.value.column) == (where, rowno, "options")
    assert "multiple choice" in str(info.value)
    assert not (tmp_path / "run").exists()  # refused before anything was written
    with pytest.raises(DataError, match=rf"{where.name} row {rowno}, column 'options'"):
        cli._validate_dataset(sentiment_dataset)


# ------------------------------------------------------------------ 4. files ingest cannot use


def test_unsupported_files_are_rejected_with_a_reason(sentiment_dataset, tmp_path):
    inbox = tmp_path / "inbox"
    write_jsonl(inbox / "logs.json", new_rows(1))
    (inbox / "notes.txt").write_text("hello\n")
    files = inbox_files(inbox)
    assert [f.name for f in files] == ["logs.json", "notes.txt"]
    for f in files:
        res = ingest_file(f, sentiment_dataset)
        assert res["status"] == "rejected" and "unsupported file type" in res["error"]
        assert Path(res["moved_to"]) == inbox / "rejected" / f.name
        assert "unsupported file type" in (inbox / "rejected" / f"{f.name}.reason.txt").read_text()
    assert inbox_files(inbox) == []


def test_a_file_with_every_row_bad_is_rejected_with_every_reason_and_the_dataset_untouched(
        sentiment_dataset, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    path = inbox / "bad.parquet"
    pd.DataFrame({"question": ["", "  "], "options": [["a", "b"]] * 2}).to_parquet(path)
    before = sorted(p.relative_to(sentiment_dataset) for p in sentiment_dataset.rglob("*"))
    res = ingest_file(path, sentiment_dataset)
    assert (res["status"], res["added"], res["quarantined"]) == ("rejected", 0, 0)
    assert res["error"].startswith("inbox/bad.parquet row 1, column 'question': question is empty "
                                   "(every row is bad: 2 row(s)")
    assert (inbox / "rejected" / "bad.parquet").exists() and not (inbox / "processed").exists()
    reasons = (inbox / "rejected" / "bad.parquet.reason.txt").read_text().splitlines()
    assert reasons[0] == res["error"] and reasons[2].startswith("inbox/bad.parquet row 2, column 'question'")
    after = sorted(p.relative_to(sentiment_dataset) for p in sentiment_dataset.rglob("*"))
    assert after == sorted(before + [Path(".ingest.lock")])  # the lock file every ingest leaves


def test_ingest_refuses_a_directory_that_is_not_a_dataset(tmp_path, capsys):
    not_dataset = tmp_path / "somewhere"
    not_dataset.mkdir()
    path = write_jsonl(tmp_path / "inbox" / "a.jsonl", new_rows(1))
    with pytest.raises(FileNotFoundError, match="not a dataset directory"):
        ingest_file(path, not_dataset)
    assert cli.main(["ingest", str(tmp_path / "inbox"), "--into", str(not_dataset)]) == 2
    assert "not a dataset directory (no labeled.parquet)" in capsys.readouterr().err
    assert list(not_dataset.iterdir()) == [] and path.exists()  # nothing touched


def test_cli_ingest_exits_2_with_a_line_per_rejected_file(sentiment_dataset, tmp_path, monkeypatch, capsys):
    import flows.ingest

    inbox = tmp_path / "inbox"
    write_jsonl(inbox / "good.jsonl", new_rows(2))
    (inbox / "a.txt").write_text("x")
    (inbox / "b.csv").write_text("question,options\n,\"[\"\"x\"\"]\"\n")  # its only row is bad

    def flow_without_server(inbox, data_dir, mapping):  # the flow's loop, minus Prefect
        files = [ingest_file(f, data_dir, mapping) for f in inbox_files(inbox)]
        return {"files": files, "added": sum(r["added"] for r in files),
                "rejected": [r["file"] for r in files if r["status"] == "rejected"]}

    monkeypatch.setattr(flows.ingest, "ingest", flow_without_server)
    assert cli.main(["ingest", str(inbox), "--into", str(sentiment_dataset)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("semievol: error: a.txt rejected")
    assert err[1].startswith("semievol: error: b.csv rejected") and "every row is bad" in err[1]
    assert (inbox / "processed" / "good.jsonl").exists()


def test_ingest_drops_test_questions_and_says_so(sentiment_dataset, tmp_path):
    test = read_table(sentiment_dataset / "test.parquet", "test")
    rows = new_rows(2) + [{"question": test["question"][0], "options": test["options"][0], "src": "app"}]
    res = ingest_file(write_jsonl(tmp_path / "inbox" / "a.jsonl", rows), sentiment_dataset)
    assert (res["added"], res["overlaps_test"]) == (2, 1)
    assert any("1 row(s) with the same question and options as a test row dropped" in n
               for n in res["notes"])
    unl = read_table(sentiment_dataset / "unlabeled", "unlabeled")
    assert content_id(test["question"][0], test["options"][0]) not in {
        content_id(q, o) for q, o in zip(unl["question"], unl["options"])}


# ------------------------------------------------------------------ 5. text that breaks ids


def test_line_endings_do_not_change_content_ids(tmp_path):
    lf = 'question,options\n"Line one\nline two?","[""a"", ""c""]"\nPlain?,"[""x"", ""y""]"\n'
    (tmp_path / "lf.csv").write_bytes(lf.encode())
    (tmp_path / "crlf.csv").write_bytes(lf.replace("\n", "\r\n").encode())
    write_jsonl(tmp_path / "cr.jsonl", [{"question": "Line one\rline two?", "options": ["a", "c"]}])
    pd.DataFrame({"question": ["Line one\r\nline two?"], "options": [["a", "c"]]}).to_parquet(
        tmp_path / "crlf.parquet")
    want = read_records(tmp_path / "lf.csv", {}, "unlabeled")
    assert want["question"][0] == "Line one\nline two?"
    assert read_records(tmp_path / "crlf.csv", {}, "unlabeled")["id"].tolist() == want["id"].tolist()
    for name in ("cr.jsonl", "crlf.parquet"):
        got = read_records(tmp_path / name, {}, "unlabeled")
        assert got.loc[0, "id"] == want.loc[0, "id"] and got.loc[0, "question"] == want.loc[0, "question"]
    # option texts too
    write_jsonl(tmp_path / "opts.jsonl", [{"question": "Q?", "options": ["a\r\nb", "c\rd"]}])
    got = read_records(tmp_path / "opts.jsonl", {}, "unlabeled")
    assert got["options"][0] == ["a\nb", "c\nd"] and got["id"][0] == content_id("Q?", ["a\nb", "c\nd"])


def test_an_unclosed_quote_is_an_error_naming_its_row_even_with_skip_bad_rows(tmp_path):
    path = tmp_path / "logs.csv"
    # row 2's last field opens a quote that never closes: the csv module alone would read rows
    # 3 and 4 into that field and call the result a good row
    path.write_text('question,src\nFirst?,app\nSecond?,"app\nThird?,app\nFourth?,app\n')
    with pytest.raises(DataError) as info:
        read_records(path, {}, "unlabeled", skip_bad_rows=True)
    assert info.value.row == 2 and "never closed" in str(info.value)


def test_a_very_long_field_reads(tmp_path):
    question = "Why " + "x" * 200_000 + "?"
    path = tmp_path / "long.csv"
    path.write_text(f'question,src\n"{question}",app\n')
    df = read_records(path, {}, "unlabeled")
    assert df["question"].tolist() == [question]


# ------------------------------------------------------------------ 6. execution settings


@pytest.mark.parametrize("field,value", [("shard_size", 0), ("batch_size", -1), ("threads", -3),
                                         ("token_budget", 0), ("concurrency", 0)])
def test_execution_settings_must_be_positive(field, value):
    with pytest.raises(ValueError, match=field):
        ExecutionConfig(**{field: value})
    assert ExecutionConfig(threads=None).threads is None and ExecutionConfig(threads=2).threads == 2


def test_cli_reports_bad_execution_settings_in_one_line(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("execution:\n  shard_size: 0\n  batch_size: -1\n  threads: -3\n")
    with pytest.raises(cli.UserError) as info:
        cli._load_config(str(cfg), None, {})
    line = str(info.value)
    assert "\n" not in line
    for name in ("execution.shard_size", "execution.batch_size", "execution.threads"):
        assert name in line
