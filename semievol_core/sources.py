"""Read a user's source files (JSONL, CSV or Parquet logs) as validated question tables.

    df = read_records("logs.jsonl", {"question": "prompt", "options": "choices"}, "unlabeled")
    df.attrs["duplicates"], df.attrs["quarantine"], df.attrs["notes"]   # what the reader set aside
    header, records = source_records(Path("labeled.csv"))               # raw rows, for importers

read_records is what semievol_core/ingest.py reads inbox files with; source_records and
record_answer_columns are shared with the paper's CSV importer (semievol_core/paper_csv.py). The
row rules (ids, options, answers, multiple choice vs free-form, answer-revealing columns) are
semievol_core/schema.py's; the tables written from the result are semievol_core/data.py's.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from semievol_core.data import read_parquet, rows_frame
from semievol_core.schema import (
    QUESTION_KINDS,
    DataError,
    FieldError,
    Record,
    RowCollector,
    answer_columns,
    answer_note,
    parse_options,
    show,
)

FIELDS = ("id", "question", "options", "answer")  # our fields, the keys of a column mapping
# The csv module refuses fields over 128 KiB by default, a limit real questions (a pasted document)
# can pass; 2**31 - 1 fits a C long on every platform (sys.maxsize does not on Windows).
csv.field_size_limit(2**31 - 1)


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, None, None, "file not found") from None
    except OSError as err:
        raise DataError(path, None, None, f"cannot read file: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8-sig")  # -sig: tolerate the BOM spreadsheet programs add
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        message = f"not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); re-save as UTF-8"
        raise DataError(path, None, None, message) from None
    if "\0" in text:  # valid UTF-8 still, but no text file has NULs: binary, or UTF-16 without BOM
        line = text[: text.index("\0")].count("\n") + 1
        raise DataError(path, None, None, f"not a text file (a NUL byte on line {line}: binary "
                                          "data, or UTF-16 text?); re-save as UTF-8")
    return text


def _csv_records(path: Path) -> tuple[list[str], list[Record]]:
    text = _read_text(path)
    if not text.strip():
        raise DataError(path, None, None, "file is empty (no header)")
    # strict: a quote left open must be an error, not a field that swallows the rest of the file
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records: list[Record] = []
    try:
        header = next(reader)
        if len(set(header)) != len(header):
            raise DataError(path, None, None, f"duplicate column names in header: {show(header)}")
        for fields in reader:
            if not fields:  # blank line: skipped, not counted as a row
                continue
            raw = dict(zip(header, fields))
            problem = None
            if len(fields) != len(header):
                problem = FieldError(None, f"has {len(fields)} fields, "
                                           f"the header has {len(header)}")
                raw = {"fields": fields}
            records.append((len(records) + 1, raw, problem))
    except csv.Error as err:
        # the reader stops inside the record where the quote opened: that is the row to name
        if "unexpected end of data" in str(err):
            hint = " (a quoted field opened on this row is never closed)"
        elif "expected after" in str(err):  # a quote left open ends at the next row's quote
            hint = (" (a quoted field opened on this row ends where no field ends: a quote left "
                    "open, or a quote inside a field not doubled)")
        else:
            hint = ""
        raise DataError(path, len(records) + 1, None, f"malformed CSV: {err}{hint}") from None
    return header, records


def _jsonl_records(path: Path) -> tuple[list[str], list[Record]]:
    text = _read_text(path)
    if not text.strip():
        raise DataError(path, None, None, "file is empty (no records)")
    columns: dict[str, None] = {}  # insertion-ordered set
    records: list[Record] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            records.append((lineno, {"line": line}, FieldError(None, f"not valid JSON: {err.msg}")))
            continue
        if not isinstance(obj, dict):
            records.append((lineno, {"line": line}, FieldError(None, "line is not a JSON object")))
            continue
        columns.update(dict.fromkeys(obj))
        records.append((lineno, obj, None))
    if records and not columns:  # not one object: name the first line, not a missing column
        lineno, _, problem = records[0]
        raise DataError(path, lineno, None, f"{problem.message} (no line is a JSON object)")
    return list(columns), records


def _parquet_records(path: Path) -> tuple[list[str], list[Record]]:
    if not path.exists():
        raise DataError(path, None, None, "file not found")
    table = read_parquet(path)
    return table.column_names, [(i, rec, None) for i, rec in enumerate(table.to_pylist(), start=1)]


_READERS: dict[str, Callable[[Path], tuple[list[str], list[Record]]]] = {
    ".csv": _csv_records, ".jsonl": _jsonl_records, ".ndjson": _jsonl_records,
    ".parquet": _parquet_records, ".pq": _parquet_records,
}


def source_records(path: Path) -> tuple[list[str], list[Record]]:
    """A source file's column names (in file order) and its records, one per data row, each
    (row number, raw fields, FieldError or None); DataError when the file as a whole is unusable."""
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(path, None, None, f"unsupported file type {path.suffix!r} "
                        "(expected .csv, .jsonl or .parquet)")
    columns, records = reader(path)
    if not records:
        raise DataError(path, None, None, "no data rows")
    return columns, records


def read_records(path: str | Path, mapping: Mapping[str, str] | None = None, kind: str = "labeled",
                 *, skip_bad_rows: bool = False,
                 multiple_choice: bool | None = None) -> pd.DataFrame:
    """Read a user's JSONL, CSV or Parquet file as a validated labeled/unlabeled/test table.

    mapping: our field -> the file's column, e.g. {"question": "prompt", "options": "choices",
    "answer": "label", "id": "uid"}; unmapped fields default to the same name. No id column ->
    content hash; no options column -> free-form. Other columns go into `metadata`. Options may be
    a JSON-string list or a real list. multiple_choice: the form every row must have (the target
    dataset's, schema.check_form); None accepts both. Unlabeled records must not carry an answer
    (read them as labeled and use split_oracle), and columns that give it away under another name
    (schema.answer_columns) are kept out of their metadata, said in df.attrs["notes"]. Duplicates
    (same question, options and answer) are dropped and counted in df.attrs["duplicates"]; with
    skip_bad_rows, bad rows are listed in df.attrs["quarantine"].
    """
    if kind not in QUESTION_KINDS:
        raise ValueError(f"kind must be one of {QUESTION_KINDS}, not {kind!r}")
    mapping = dict(mapping or {})
    unknown = set(mapping) - set(FIELDS)
    if unknown:
        raise ValueError(f"mapping keys must be among {FIELDS}, got {sorted(unknown)}")
    path = Path(path)
    header, records = source_records(path)
    columns: dict[str, str | None] = {}
    for name in FIELDS:
        src = mapping.get(name, name)
        present = src in header
        if name == "answer" and kind == "unlabeled" and present:
            raise DataError(path, None, src, "unlabeled records must not carry answers; remove "
                            "the column (rows with answers belong in the labeled or test table)")
        required = name == "question" or (name == "answer" and kind != "unlabeled")
        if not present and name == "options" and multiple_choice:
            raise DataError(path, None, src, "missing required column (the dataset is "
                            "multiple choice)")
        if not present and (required or name in mapping):
            raise DataError(path, None, src, "missing required column")
        columns[name] = src if present else None
    hidden = record_answer_columns(records, columns) if kind == "unlabeled" else {}
    collector = RowCollector(path, columns, skip_bad_rows)
    collector.add(records, answer="none" if kind == "unlabeled" else "required",
                  multiple_choice=multiple_choice, withhold=frozenset(hidden))
    df = rows_frame(collector.rows, kind)
    df.attrs["duplicates"] = collector.duplicates
    df.attrs["quarantine"] = collector.quarantine
    df.attrs["notes"] = [answer_note(hidden)] if hidden else []
    if collector.variants:  # their other ids or metadata are gone: say so
        df.attrs["notes"].append(f"{collector.variants} duplicate row(s) with another id or "
                                 "metadata dropped, first kept")
    return df


def record_answer_columns(records: list[Record],
                          columns: Mapping[str, str | None]) -> dict[str, str]:
    """schema.answer_columns over a file's records: the columns not mapped to one of our fields,
    next to each readable row's options (unreadable options count as none)."""
    used = {c for c in columns.values() if c}
    ocol = columns.get("options")

    def options(raw: Mapping[str, Any]) -> list[str] | None:
        try:
            return parse_options(raw.get(ocol), ocol) if ocol else None
        except FieldError:
            return None

    return answer_columns((options(raw), {k: v for k, v in raw.items() if k not in used})
                          for _, raw, problem in records if problem is None)
