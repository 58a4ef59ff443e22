"""The Parquet tables of a dataset directory: validated writes, reads, appends, fingerprints.

    ds = load_dataset("data/arc")                    # ds.labeled, ds.unlabeled, ds.test, ds.oracle
    write_table(df, "data/arc/test.parquet", "test") # validated, atomic
    append_part(logs, "data/arc/unlabeled", "unlabeled")   # -> .../unlabeled/part-00001.parquet
    table_fingerprint("data/arc/unlabeled")          # sha256 hex; changes iff the bytes change
    unlabeled, oracle = split_oracle(labeled_shaped) # answers kept apart from the questions

Layout of a dataset directory:
    labeled.parquet, test.parquet       id, question, options, answer, metadata
    unlabeled/part-00000.parquet ...    id, question, options, metadata (never an answer)
    oracle.parquet      (optional)      id, answer of unlabeled rows; only to score pseudo-labels
    quarantine.parquet  (optional)      rows an import skipped (skip_bad_rows=True), with reasons

Every write is atomic (semievol_core/atomic.py), so a crash never leaves a half-written table.
Schemas, ids, row-number conventions and the rules every import shares (which columns give an
answer away, multiple choice vs free-form): see semievol_core/schema.py. What fills a dataset:
semievol_core/paper_csv.py (the SemiEvol paper's CSVs, `semievol import-csv`) and
semievol_core/sources.py (a user's JSONL/CSV/Parquet logs, read by semievol_core/ingest.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from semievol_core.atomic import atomic_path, fsync_file, temp_file
from semievol_core.schema import (
    SCHEMAS,
    DataError,
    FieldError,
    answer_columns,
    answer_note,
    check_answer,
    check_form,
    check_id,
    check_metadata,
    is_multiple_choice,
    jsonable,
    normalize_record,
    short_path,
)

_PART = re.compile(r"^part-(\d+)\.parquet$")


def _check_kind(kind: str) -> None:
    if kind not in SCHEMAS:
        raise ValueError(f"unknown table kind {kind!r}; expected one of {sorted(SCHEMAS)}")


def _to_arrow(df: pd.DataFrame, kind: str, path: str | Path, first_row: int = 1) -> pa.Table:
    """Validate a DataFrame against the kind's schema (columns, values, unique ids); its rows are
    numbered from `first_row` in errors (a chunk of a longer file)."""
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
    for i, rec in enumerate(records, start=first_row):
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
    """Write `table` to the Parquet file `path` atomically (atomic.atomic_path)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def validate_table(df: pd.DataFrame, kind: str, path: str | Path) -> None:
    """Check every row of `df` as a `kind` table; DataError naming `path`, row and column."""
    _to_arrow(df, kind, path)


def write_table(df: pd.DataFrame, path: str | Path, kind: str) -> Path:
    """Validate `df` as a `kind` table and write it atomically to the Parquet file `path`.

    A missing `metadata` column is filled with "{}". Raises DataError (nothing is written).
    Written as one part (write_table_parts), so a shard of it is read alone (read_rows).
    """
    return write_table_parts([df], path, kind)


# Rows per Parquet row group of the tables a step reads a shard at a time (the run's unlabeled
# copy, the neighbours): read_rows then decodes ~this many rows around a shard, not the table.
ROW_GROUP_ROWS = 8192
PARTS_KEY = b"semievol.parts"  # schema metadata of write_table_parts: rows per part, JSON


def write_table_parts(frames: list[pd.DataFrame], path: str | Path, kind: str) -> Path:
    """Like write_table, for a table made of parts: row groups of at most ROW_GROUP_ROWS that never
    straddle two parts, and the parts' sizes in the file's metadata (part_sizes), so generation
    shards never straddle two parts and a shard is read without the rest (read_rows)."""
    path = Path(path)
    tables = [_to_arrow(df, kind, path) for df in frames if len(df)] or [_to_arrow(empty_frame(kind), kind, path)]
    schema = tables[0].schema.with_metadata({**(tables[0].schema.metadata or {}),
                                             PARTS_KEY: json.dumps([len(t) for t in tables]).encode()})
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for table in tables:
            writer.write_table(table.replace_schema_metadata(schema.metadata), row_group_size=ROW_GROUP_ROWS)
    return path


def _parquet_file(path: Path) -> pq.ParquetFile:
    """One Parquet file opened for reading by parts; DataError naming it when it is not Parquet."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(path, None, None, f"not a readable Parquet file: {err}") from None


def _required_columns(names: Sequence[str], path: Path, kind: str) -> list[str]:
    """The kind's columns; DataError naming the file and the first one its `names` lack."""
    for name in SCHEMAS[kind].names:
        if name not in names:
            raise DataError(path, None, name, f"missing required column for a {kind} table")
    return SCHEMAS[kind].names


def _chunks(f: pq.ParquetFile, path: Path, kind: str, rows: int) -> Iterator[tuple[int, pa.Table]]:
    """(first row number, table) of `rows` rows at a time (the last one shorter) from one file,
    with the kind's columns: memory stays a chunk."""
    names = _required_columns(f.schema_arrow.names, path, kind)
    held, n_held, first = [], 0, 1
    for batch in f.iter_batches(batch_size=rows, columns=names):
        held.append(pa.Table.from_batches([batch]))
        n_held += batch.num_rows
        while n_held >= rows:
            table = pa.concat_tables(held)
            yield first, table.slice(0, rows)
            first += rows
            held, n_held = [table.slice(rows)], n_held - rows
    if n_held:
        yield first, pa.concat_tables(held)


def check_unique_ids(parts: Sequence[Path]) -> None:
    """DataError naming the part and row of the first id that another row of the table repeats
    (its first occurrence in the message); reads the id column alone."""
    import pyarrow.compute as pc

    id_type = SCHEMAS["unlabeled"].field("id").type
    ids = []
    for part in parts:  # each part's ids as the schema's type (parts from other writers differ)
        try:
            ids.append(_parquet_file(part).read(columns=["id"]).column("id").cast(id_type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise DataError(part, None, "id", f"ids must be strings: {err}") from None
    if not ids:
        return
    every = pa.chunked_array([c for col in ids for c in col.chunks], type=id_type)
    counts = pc.value_counts(every.drop_null())  # a missing id is the row check's error, not a duplicate
    repeated = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
    if not len(repeated):
        return
    seen: dict = {}
    for part, col in zip(parts, ids):
        for i, is_dup in enumerate(pc.is_in(col, value_set=repeated).to_pylist(), start=1):
            if is_dup:
                value = col[i - 1].as_py()
                if value in seen:
                    raise DataError(part, i, "id", f"duplicate id {value!r} (also {short_path(seen[value][0])} "
                                                   f"row {seen[value][1]})")
                seen[value] = (part, i)


def copy_parts(parts: Sequence[Path], path: str | Path, kind: str) -> Path:
    """A table's parts validated and copied into one file exactly as write_table_parts writes them
    read whole (each part's rows in row groups of ROW_GROUP_ROWS, the parts' sizes in the
    metadata), but a row group at a time: memory stays a row group whatever the table's size.
    DataError (nothing written) names the part, row and column of the first bad row."""
    _check_kind(kind)
    path, schema = Path(path), SCHEMAS[kind]
    files = [_parquet_file(p) for p in parts]
    for part, f in zip(parts, files):
        _required_columns(f.schema_arrow.names, part, kind)
    check_unique_ids(parts)
    sizes = [n for n in (f.metadata.num_rows for f in files) if n] or [0]
    metadata = {**(schema.metadata or {}), PARTS_KEY: json.dumps(sizes).encode()}
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema.with_metadata(metadata)) as writer:
        for part, f in zip(parts, files):
            for first, table in _chunks(f, part, kind, ROW_GROUP_ROWS):
                checked = _to_arrow(_frame(table, kind, part, check_ids=False), kind, part, first_row=first)
                writer.write_table(checked.replace_schema_metadata(metadata), row_group_size=ROW_GROUP_ROWS)
        if sizes == [0]:
            writer.write_table(_to_arrow(empty_frame(kind), kind, path).replace_schema_metadata(metadata))
    return path


def option_cells(path: str | Path) -> Iterator[list | None]:
    """A question table's `options` cells in row order, a record batch at a time (file or
    directory of parts; no other column is read)."""
    for part in table_parts(Path(path)):
        f = _parquet_file(part)
        if "options" not in f.schema_arrow.names:
            raise DataError(part, None, "options", "missing required column for a question table")
        for batch in f.iter_batches(columns=["options"]):
            yield from batch.column(0).to_pylist()


def part_sizes(path: str | Path) -> list[int]:
    """Rows per part of a table written by write_table_parts (an older file, or any other: one
    part per row group)."""
    f = pq.ParquetFile(path)
    parts = (f.schema_arrow.metadata or {}).get(PARTS_KEY)
    if parts is not None:
        return json.loads(parts)
    return [f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)]


def read_rows(path: str | Path, kind: str, start: int, stop: int) -> pd.DataFrame:
    """Rows start..stop-1 of a one-file `kind` table, decoding only the row groups they sit in."""
    f = pq.ParquetFile(path)
    groups, offset, first = [], 0, None
    for g in range(f.metadata.num_row_groups):
        n = f.metadata.row_group(g).num_rows
        if offset < stop and offset + n > start:
            groups.append(g)
            first = offset if first is None else first
        offset += n
    if not groups or stop <= start:
        return empty_frame(kind)
    table = f.read_row_groups(groups).slice(start - first, stop - start)
    return _frame(table, kind, path)


def table_parts(path: Path) -> list[Path]:
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


def rows_frame(rows: list[dict[str, Any]], kind: str) -> pd.DataFrame:
    """Checked rows (dicts with the kind's columns) as a DataFrame with the kind's columns, in
    schema order; no rows give the kind's empty frame (object columns, as read_table's)."""
    return pd.DataFrame(rows, columns=SCHEMAS[kind].names) if rows else empty_frame(kind)


def read_parquet(path: Path) -> pa.Table:
    """One Parquet file as it is (no schema check); DataError naming it when it is not Parquet."""
    f = _parquet_file(path)
    try:
        return f.read()
    except (pa.ArrowException, OSError) as err:
        raise DataError(path, None, None, f"not a readable Parquet file: {err}") from None


def read_table(path: str | Path, kind: str) -> pd.DataFrame:
    """Read a table from a Parquet file or a directory of parts (read in sorted name order).

    `options` cells come back as Python lists (or None for free-form questions).
    """
    _check_kind(kind)
    schema = SCHEMAS[kind]
    tables = []
    for part in table_parts(Path(path)):
        table = read_parquet(part)
        _required_columns(table.column_names, part, kind)
        tables.append(table.select(schema.names).cast(schema))
    if not tables:
        return empty_frame(kind)
    return _frame(pa.concat_tables(tables), kind, path)


def _frame(table: pa.Table, kind: str, path: str | Path, check_ids: bool = True) -> pd.DataFrame:
    """A `kind` table read from `path` as a DataFrame (ids checked unique unless `check_ids` is
    off: a chunk of a table whose ids check_unique_ids checked)."""
    schema = SCHEMAS[kind]
    table = table.select(schema.names).cast(schema)
    # to_pylist, not to_pandas: list cells must be plain lists, not numpy arrays
    df = pd.DataFrame({name: table.column(name).to_pylist() for name in schema.names})
    if check_ids and "id" in df.columns and df["id"].duplicated().any():
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
    existing = table_parts(directory)
    if "id" in table.column_names and existing:
        new_ids = {v: i for i, v in enumerate(table.column("id").to_pylist(), start=1)}
        for part in existing:
            for old in pq.read_table(part, columns=["id"]).column("id").to_pylist():
                if old in new_ids:
                    raise DataError(directory, new_ids[old], "id",
                                    f"id {old!r} is already in {part.name}")
    numbers = [int(m.group(1)) for p in existing if (m := _PART.match(p.name))]
    number = max(numbers, default=-1) + 1
    with temp_file(directory / "part") as tmp:
        pq.write_table(table, tmp)
        fsync_file(tmp)
        # link() never overwrites: if a concurrent appender took the name, take the next one
        while True:
            final = directory / f"part-{number:05d}.parquet"
            try:
                os.link(tmp, final)
                return final
            except FileExistsError:
                number += 1


def table_fingerprint(path: str | Path) -> str:
    """sha256 over the parts' names and bytes, in sorted order. Parquet writes are deterministic,
    so re-writing the same content keeps the fingerprint; any change of content changes it."""
    digest = hashlib.sha256()
    for part in table_parts(Path(path)):
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
    tables = [(part, "unlabeled") for part in table_parts(d / "unlabeled")] if (
        d / "unlabeled").is_dir() else []
    for path, kind in tables + [(d / "test.parquet", "test")]:
        for i, options in enumerate(option_cells(path), start=1):
            try:
                check_form(options, multiple_choice)
            except FieldError as err:
                raise DataError(path, i, err.column, err.message) from None
