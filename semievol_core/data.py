"""The Parquet data layer: a dataset directory of validated tables, and importers that fill it.

    summary = import_csv_dir("/work/shared/datasets/semievol/arc", "data/arc")  # paper's CSVs
    print(summary)                                   # counts, duplicates, quarantined, notes
    ds = load_dataset("data/arc")                    # ds.labeled, ds.unlabeled, ds.test, ds.oracle
    logs = read_records("logs.jsonl", {"question": "prompt", "options": "choices"}, "unlabeled")
    append_part(logs, "data/arc/unlabeled", "unlabeled")   # -> .../unlabeled/part-00001.parquet
    table_fingerprint("data/arc/unlabeled")          # sha256 hex; changes iff the bytes change
    ingest_file("inbox/logs.jsonl", "data/arc")      # one inbox file -> next unlabeled part

Layout of a dataset directory:
    labeled.parquet, test.parquet       id, question, options, answer, metadata
    unlabeled/part-00000.parquet ...    id, question, options, metadata (never an answer)
    oracle.parquet      (optional)      id, answer of unlabeled rows; only to score pseudo-labels
    quarantine.parquet  (optional)      rows an import skipped (skip_bad_rows=True), with reasons

Every write is atomic (temp file in the same directory, then rename), so a crash never leaves a
half-written table. Schemas, ids, row-number conventions and the rules every import shares (which
columns give an answer away, multiple choice vs free-form): see semievol_core/schema.py.
ingest_file() is the plain-Python body of the `ingest` Prefect task (tasks/ingest.py).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from semievol_core.schema import (
    QUESTION_KINDS,
    SCHEMAS,
    DataError,
    FieldError,
    Record,
    RowCollector,
    answer_columns,
    answer_note,
    check_answer,
    check_form,
    check_id,
    check_metadata,
    content_id,
    is_multiple_choice,
    jsonable,
    normalize_record,
    parse_options,
    show,
)

_PART = re.compile(r"^part-(\d+)\.parquet$")
_FIELDS = ("id", "question", "options", "answer")
_ID_COLUMNS = ("id", "question_id")  # id columns of the paper's CSVs (arc, mmlu_pro)
# The csv module refuses fields over 128 KiB by default, a limit real questions (a pasted document)
# can pass; 2**31 - 1 fits a C long on every platform (sys.maxsize does not on Windows).
csv.field_size_limit(2**31 - 1)

# ----------------------------------------------------------------------------- tables on disk


def _check_kind(kind: str) -> None:
    if kind not in SCHEMAS:
        raise ValueError(f"unknown table kind {kind!r}; expected one of {sorted(SCHEMAS)}")


def _to_arrow(df: pd.DataFrame, kind: str, path: str | Path) -> pa.Table:
    """Validate a DataFrame against the kind's schema (columns, values, unique ids)."""
    _check_kind(kind)
    schema = SCHEMAS[kind]
    df = df.reset_index(drop=True)
    if "metadata" in schema.names and "metadata" not in df.columns:
        df = df.assign(metadata="{}")  # convenience: callers building tables by hand
    for name in df.columns:
        if name not in schema.names:
            hint = "; answers of unlabeled rows belong in the oracle table" if (
                kind == "unlabeled" and name == "answer") else ""
            raise DataError(path, None, str(name), f"unexpected column for a {kind} table{hint}")
    for name in schema.names:
        if name not in df.columns:
            raise DataError(path, None, name, f"missing required column for a {kind} table")
    records = df.to_dict("records")
    out: dict[str, list[Any]] = {name: [] for name in schema.names}
    seen: dict[str, int] = {}
    for i, rec in enumerate(records, start=1):
        try:
            row = _check_row(rec, kind)
        except FieldError as err:
            raise DataError(path, i, err.column, err.message) from None
        if "id" in row:
            if row["id"] in seen:
                first = seen[row["id"]]
                raise DataError(path, i, "id", f"duplicate id {row['id']!r} (also row {first})")
            seen[row["id"]] = i
        for name in schema.names:
            out[name].append(row[name])
    return pa.Table.from_pydict(out, schema=schema)


def _check_row(rec: Mapping[str, Any], kind: str) -> dict[str, Any]:
    if kind == "quarantine":
        return {k: jsonable(v) for k, v in rec.items()}
    if kind == "oracle":
        return {"id": check_id(rec["id"]), "answer": check_answer(rec["answer"], None)[0]}
    columns = {"id": "id", "question": "question", "options": "options",
               "answer": "answer" if kind != "unlabeled" else None}
    raw = {k: v for k, v in rec.items() if k != "metadata"}
    row, _ = normalize_record(raw, columns, answer="none" if kind == "unlabeled" else "required")
    row["metadata"] = check_metadata(rec["metadata"])
    return row


def atomic_write_parquet(table: pa.Table, path: Path) -> None:
    """Write to a hidden temp file next to `path`, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def validate_table(df: pd.DataFrame, kind: str, path: str | Path) -> None:
    """Check every row of `df` as a `kind` table; DataError naming `path`, row and column."""
    _to_arrow(df, kind, path)


def write_table(df: pd.DataFrame, path: str | Path, kind: str) -> Path:
    """Validate `df` as a `kind` table and write it atomically to the Parquet file `path`.

    A missing `metadata` column is filled with "{}". Raises DataError (nothing is written).
    """
    path = Path(path)
    atomic_write_parquet(_to_arrow(df, kind, path), path)
    return path


def _parts(path: Path) -> list[Path]:
    """The Parquet files making up a table: the file itself, or a directory's parts by name."""
    if path.is_dir():
        # hidden names are temp files of writes in progress, not parts
        parts = (p for p in path.iterdir() if p.suffix == ".parquet" and not p.name.startswith("."))
        return sorted(parts)
    if not path.exists():
        raise FileNotFoundError(f"no table at {path}")
    return [path]


def empty_frame(kind: str) -> pd.DataFrame:
    _check_kind(kind)
    return pd.DataFrame({name: pd.Series([], dtype=object) for name in SCHEMAS[kind].names})


def _frame(rows: list[dict[str, Any]], names: Iterable[str]) -> pd.DataFrame:
    names = list(names)
    return pd.DataFrame(rows, columns=names) if rows else empty_frame("labeled")[names]


def read_table(path: str | Path, kind: str) -> pd.DataFrame:
    """Read a table from a Parquet file or a directory of parts (read in sorted name order).

    `options` cells come back as Python lists (or None for free-form questions).
    """
    _check_kind(kind)
    schema = SCHEMAS[kind]
    tables = []
    for part in _parts(Path(path)):
        try:
            table = pq.read_table(part)
        except (pa.ArrowException, OSError) as err:
            raise DataError(part, None, None, f"not a readable Parquet file: {err}") from None
        for name in schema.names:
            if name not in table.column_names:
                raise DataError(part, None, name, f"missing required column for a {kind} table")
        tables.append(table.select(schema.names).cast(schema))
    if not tables:
        return empty_frame(kind)
    table = pa.concat_tables(tables)
    # to_pylist, not to_pandas: list cells must be plain lists, not numpy arrays
    df = pd.DataFrame({name: table.column(name).to_pylist() for name in schema.names})
    if "id" in df.columns and df["id"].duplicated().any():
        dup = df["id"][df["id"].duplicated()].iloc[0]
        raise DataError(path, None, "id", f"id {dup!r} occurs in more than one row")
    return df


def append_part(df: pd.DataFrame, directory: str | Path, kind: str) -> Path:
    """Add `df` as the next part (`part-NNNNN.parquet`) of a table directory; returns its path.

    Ids already in the directory are refused (DataError), so re-appending the same logs fails
    loudly instead of duplicating rows; filter on read_table(directory, kind)["id"] first.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    table = _to_arrow(df, kind, directory / "part-?????.parquet")
    existing = _parts(directory)
    if "id" in table.column_names and existing:
        new_ids = {v: i for i, v in enumerate(table.column("id").to_pylist(), start=1)}
        for part in existing:
            for old in pq.read_table(part, columns=["id"]).column("id").to_pylist():
                if old in new_ids:
                    raise DataError(directory, new_ids[old], "id",
                                    f"id {old!r} is already in {part.name}")
    numbers = [int(m.group(1)) for p in existing if (m := _PART.match(p.name))]
    number = max(numbers, default=-1) + 1
    tmp = directory / f".part.{uuid.uuid4().hex}.tmp"
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        # link() never overwrites: if a concurrent appender took the name, take the next one
        while True:
            final = directory / f"part-{number:05d}.parquet"
            try:
                os.link(tmp, final)
                return final
            except FileExistsError:
                number += 1
    finally:
        tmp.unlink(missing_ok=True)


def table_fingerprint(path: str | Path) -> str:
    """sha256 over the parts' names and bytes, in sorted order. Parquet writes are deterministic,
    so re-writing the same content keeps the fingerprint; any change of content changes it."""
    digest = hashlib.sha256()
    for part in _parts(Path(path)):
        digest.update(f"{part.name}\0{part.stat().st_size}\0".encode())
        with open(part, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Dataset:
    labeled: pd.DataFrame
    unlabeled: pd.DataFrame
    test: pd.DataFrame
    oracle: pd.DataFrame | None = None
    data_dir: str = ""


def load_dataset(data_dir: str | Path) -> Dataset:
    """Read a dataset directory (layout above). A missing unlabeled/ gives an empty table."""
    d = Path(data_dir)
    unlabeled = d / "unlabeled"
    oracle = d / "oracle.parquet"
    return Dataset(
        labeled=read_table(d / "labeled.parquet", "labeled"),
        unlabeled=(read_table(unlabeled, "unlabeled") if unlabeled.exists()
                   else empty_frame("unlabeled")),
        test=read_table(d / "test.parquet", "test"),
        oracle=read_table(oracle, "oracle") if oracle.exists() else None,
        data_dir=str(d),
    )


def split_oracle(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Labeled-shaped rows -> (unlabeled table, oracle table of the rows that had an answer).

    Answer-revealing metadata keys (schema.answer_columns: fpb `gt`, `label`, a key equal to the
    right option...) are removed from the unlabeled side too: the pipeline must not be able to
    peek. The note saying which is in unlabeled.attrs["notes"].
    """
    metas = [json.loads(m) for m in df["metadata"]]
    hidden = answer_columns(zip(df["options"], metas))
    unlabeled = df[["id", "question", "options", "metadata"]].copy()
    unlabeled["metadata"] = [json.dumps({k: v for k, v in m.items() if k not in hidden},
                                        ensure_ascii=False) for m in metas]
    has = df["answer"].notna() if "answer" in df.columns else pd.Series(False, index=df.index)
    oracle = df.loc[has, ["id", "answer"]].reset_index(drop=True)
    unlabeled = unlabeled.reset_index(drop=True)
    unlabeled.attrs["notes"] = [answer_note(hidden)] if hidden else []
    return unlabeled, oracle


def check_forms(data_dir: str | Path) -> None:
    """Every unlabeled and test row has the labeled rows' form (schema.check_form): DataError
    naming the part file, row and column 'options' on the first that does not. evolve runs this
    before any training, which would otherwise be spent before the odd row fails the run."""
    d = Path(data_dir)
    multiple_choice = is_multiple_choice(read_table(d / "labeled.parquet", "labeled")["options"])
    if multiple_choice is None:
        return
    tables = [(part, "unlabeled") for part in _parts(d / "unlabeled")] if (
        d / "unlabeled").is_dir() else []
    for path, kind in tables + [(d / "test.parquet", "test")]:
        for i, options in enumerate(read_table(path, kind)["options"], start=1):
            try:
                check_form(options, multiple_choice)
            except FieldError as err:
                raise DataError(path, i, err.column, err.message) from None

# ----------------------------------------------------------------------------- source files


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, None, None, "file not found") from None
    except OSError as err:
        raise DataError(path, None, None, f"cannot read file: {err.strerror or err}") from None
    try:
        return data.decode("utf-8-sig")  # -sig: tolerate the BOM spreadsheet programs add
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        message = f"not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); re-save as UTF-8"
        raise DataError(path, None, None, message) from None




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
        hint = " (a quoted field opened on this row is never closed)" if (
            "unexpected end of data" in str(err)) else ""
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
    return list(columns), records


def _parquet_records(path: Path) -> tuple[list[str], list[Record]]:
    if not path.exists():
        raise DataError(path, None, None, "file not found")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(path, None, None, f"not a readable Parquet file: {err}") from None
    return table.column_names, [(i, rec, None) for i, rec in enumerate(table.to_pylist(), start=1)]


_READERS: dict[str, Callable[[Path], tuple[list[str], list[Record]]]] = {
    ".csv": _csv_records, ".jsonl": _jsonl_records, ".ndjson": _jsonl_records,
    ".parquet": _parquet_records, ".pq": _parquet_records,
}


def _source_records(path: Path) -> tuple[list[str], list[Record]]:
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
    (schema.answer_columns) are kept out of their metadata, said in df.attrs["notes"]. Identical
    duplicates are dropped and counted in df.attrs["duplicates"]; with skip_bad_rows, bad rows
    are listed in df.attrs["quarantine"].
    """
    if kind not in QUESTION_KINDS:
        raise ValueError(f"kind must be one of {QUESTION_KINDS}, not {kind!r}")
    mapping = dict(mapping or {})
    unknown = set(mapping) - set(_FIELDS)
    if unknown:
        raise ValueError(f"mapping keys must be among {_FIELDS}, got {sorted(unknown)}")
    path = Path(path)
    header, records = _source_records(path)
    columns: dict[str, str | None] = {}
    for name in _FIELDS:
        src = mapping.get(name, name)
        present = src in header
        if name == "answer" and kind == "unlabeled" and present:
            raise DataError(path, None, src, "unlabeled records must not carry answers; read "
                            "the file as 'labeled' and split the answers off with split_oracle()")
        required = name == "question" or (name == "answer" and kind != "unlabeled")
        if not present and name == "options" and multiple_choice:
            raise DataError(path, None, src, "missing required column (the dataset is "
                            "multiple choice)")
        if not present and (required or name in mapping):
            raise DataError(path, None, src, "missing required column")
        columns[name] = src if present else None
    hidden = _answer_columns(records, columns) if kind == "unlabeled" else {}
    collector = RowCollector(path, columns, skip_bad_rows)
    collector.add(records, answer="none" if kind == "unlabeled" else "required",
                  multiple_choice=multiple_choice, withhold=frozenset(hidden))
    df = _frame(collector.rows, SCHEMAS[kind].names)
    df.attrs["duplicates"] = collector.duplicates
    df.attrs["quarantine"] = collector.quarantine
    df.attrs["notes"] = [answer_note(hidden)] if hidden else []
    return df


def _answer_columns(records: list[Record], columns: Mapping[str, str | None]) -> dict[str, str]:
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

# ----------------------------------------------------------------------------- paper CSV import


@dataclass
class ImportSummary:
    src_dir: str
    out_dir: str
    counts: dict[str, int] = field(default_factory=dict)     # rows written per table
    rows_read: dict[str, int] = field(default_factory=dict)  # data rows in each source file
    duplicates: int = 0   # identical duplicate rows dropped (one kept)
    quarantined: int = 0  # bad rows moved to quarantine.parquet
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"imported {self.src_dir} -> {self.out_dir}"]
        for name, n in self.counts.items():
            read = self.rows_read.get(name)
            extra = f" (of {read} read)" if read is not None and read != n else ""
            lines.append(f"  {name:<10} {n:>6} rows{extra}")
        lines.append(f"  duplicates dropped: {self.duplicates}, quarantined: {self.quarantined}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _publish(staging: Path, out: Path, overwrite: bool) -> None:
    """Swap the fully written staging directory into place: all tables appear at once."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass overwrite=True to replace it")
        trash = out.with_name(f".{out.name}.old-{uuid.uuid4().hex}")
        os.replace(out, trash)
        os.replace(staging, out)
        shutil.rmtree(trash)
    else:
        os.replace(staging, out)  # rename(2) onto a missing or empty directory


def _import_split(path: Path, split: str, skip_bad_rows: bool,
                  summary: ImportSummary) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """One paper CSV -> (labeled-shaped frame, quarantined rows); notes go into `summary`."""
    header, records = _source_records(path)
    unl = split == "unlabeled"
    for name in ("question", "options") + (() if unl else ("answer",)):
        if name not in header:
            raise DataError(path, None, name, "missing required column")
    columns = {f: (f if f in header else None) for f in _FIELDS}
    # mmlu_pro repeats some questions verbatim under different question_ids: its own id keeps
    # them apart (a content hash would call them conflicting duplicates)
    columns["id"] = next((c for c in _ID_COLUMNS if c in header), None)
    hidden = _answer_columns(records, columns) if unl else {}
    collector = RowCollector(path, columns, skip_bad_rows)
    collector.add(records, answer="optional" if unl else "required", numbered=True,
                  multiple_choice=True, withhold=frozenset(hidden))
    summary.rows_read[split] = len(records)
    summary.duplicates += collector.duplicates
    where = f"{path.parent.name}/{path.name}"
    notes = []
    if collector.duplicates:
        notes.append(f"{collector.duplicates} identical duplicate row(s) dropped, first kept")
    if collector.converted:
        notes.append(f"{collector.converted} answer(s) given as 1-based option numbers "
                     "converted to letters")
    if columns["id"] not in (None, "id"):
        notes.append(f"ids taken from column {columns['id']}")
    if hidden:
        notes.append(answer_note(hidden))
    summary.notes += [f"{where}: {note}" for note in notes]
    return _frame(collector.rows, SCHEMAS["labeled"].names), collector.quarantine


def import_csv_dir(src_dir: str | Path, out_dir: str | Path, *, skip_bad_rows: bool = False,
                   overwrite: bool = False) -> ImportSummary:
    """Import the SemiEvol paper's labeled.csv / unlabeled.csv / test.csv into a dataset directory.

    A missing unlabeled.csv gives an empty unlabeled table. Answers in unlabeled.csv go to
    oracle.parquet, never into the unlabeled table. 1-based option numbers given as answers (arc)
    become letters. Raises DataError on the first bad row unless skip_bad_rows, which moves bad
    rows to quarantine.parquet. A non-empty out_dir is only replaced (whole) with overwrite=True.
    """
    src, out = Path(src_dir), Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; pass overwrite=True to replace it")
    summary = ImportSummary(src_dir=str(src), out_dir=str(out))
    frames: dict[str, pd.DataFrame] = {}
    quarantine: list[dict[str, Any]] = []
    for split in ("labeled", "unlabeled", "test"):
        path = src / f"{split}.csv"
        if split == "unlabeled" and not path.exists():
            summary.notes.append("no unlabeled.csv in the source: the unlabeled table is empty")
            frames[split] = empty_frame("labeled")
            continue
        frames[split], bad = _import_split(path, split, skip_bad_rows, summary)
        quarantine += bad
    unlabeled, oracle = split_oracle(frames["unlabeled"])
    if len(oracle):
        summary.notes.append(f"unlabeled answers ({len(oracle)}) are in oracle.parquet: "
                             "use them only to score pseudo-labels")
    # same question in two splits (by content, whatever the ids): worth knowing, not an error
    seen = {name: {content_id(q, o) for q, o in zip(f["question"], f["options"])}
            for name, f in frames.items()}
    for a, b in (("labeled", "test"), ("unlabeled", "test"), ("labeled", "unlabeled")):
        if both := len(seen[a] & seen[b]):
            summary.notes.append(f"{both} question(s) with the same text and options "
                                 f"in both {a} and {b}")
    summary.quarantined = len(quarantine)
    if quarantine:
        summary.notes.append(f"{len(quarantine)} bad row(s) moved to quarantine.parquet")

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.importing-{uuid.uuid4().hex}")
    try:
        write_table(frames["labeled"], staging / "labeled.parquet", "labeled")
        write_table(unlabeled, staging / "unlabeled" / "part-00000.parquet", "unlabeled")
        write_table(frames["test"], staging / "test.parquet", "test")
        if len(oracle):
            write_table(oracle, staging / "oracle.parquet", "oracle")
        if quarantine:
            write_table(pd.DataFrame(quarantine), staging / "quarantine.parquet", "quarantine")
        _publish(staging, out, overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    summary.counts = {"labeled": len(frames["labeled"]), "unlabeled": len(unlabeled),
                      "test": len(frames["test"]), "oracle": len(oracle)}
    return summary
