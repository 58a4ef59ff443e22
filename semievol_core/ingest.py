"""Inbox ingest: new unlabeled log files into a dataset's `unlabeled/` table (plain Python; the
Prefect task tasks/ingest.py wraps it).

    from semievol_core.ingest import inbox_files, ingest_file
    for f in inbox_files("inbox/"):
        summary = ingest_file(f, "data/fpb", mapping={"question": "prompt"})
        summary["status"], summary["added"], summary["notes"]   # "ingested" | "rejected", ...

ingest_file's docstring has the steps. A file ingest cannot use goes to `inbox/rejected/` with a
`<name>.reason.txt`; a directory that is not a dataset is refused before anything is touched.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Mapping

import pandas as pd

from semievol_core.atomic import exclusive_lock
from semievol_core.data import append_part, read_table
from semievol_core.schema import DataError, content_id, is_multiple_choice
from semievol_core.sources import read_records

PROCESSED, REJECTED = "processed", "rejected"  # inbox sub-directories files are moved to


def require_dataset(data_dir: str | Path) -> Path:
    """`data_dir` as a Path if it is a dataset (has labeled.parquet); else FileNotFoundError, so
    an ingest pointed at the wrong directory refuses before creating anything there."""
    d = Path(data_dir)
    if not (d / "labeled.parquet").is_file():
        raise FileNotFoundError(f"{d}: not a dataset directory (no labeled.parquet); "
                                "create one with `semievol import-csv`")
    return d


def inbox_files(inbox: str | Path) -> list[Path]:
    """Files waiting in the inbox, oldest name first (hidden = still being written). Every file
    counts, whatever its suffix: one ingest cannot read is rejected with a reason, not left."""
    inbox = Path(inbox)
    if not inbox.is_dir():
        raise FileNotFoundError(f"{inbox}: inbox directory not found")
    return sorted(p for p in inbox.iterdir() if p.is_file() and not p.name.startswith("."))


def dataset_lock(data_dir: Path):
    """Ingests into one dataset, one at a time."""
    return exclusive_lock(data_dir / ".ingest.lock")


def _move(path: Path, folder: str) -> Path:
    dest_dir = path.parent / folder
    dest_dir.mkdir(exist_ok=True)
    dest = dest_dir / path.name
    if dest.exists():  # the same name ingested before: keep both
        dest = dest_dir / f"{path.stem}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}{path.suffix}"
    os.replace(path, dest)
    return dest


def _reject(src: Path, error: str, summary: dict, details: list[str] = ()) -> dict:
    """Set a file ingest cannot use aside with the reason (and `details`, a line each) next to it,
    so the inbox does not retry it forever and the user sees why."""
    dest = _move(src, REJECTED)
    text = "".join(line + "\n" for line in [error, *details])
    dest.with_name(dest.name + ".reason.txt").write_text(text, encoding="utf-8")
    summary.update(status="rejected", error=error, moved_to=str(dest))
    return summary


def _content_ids(df: pd.DataFrame) -> set[str]:
    return {content_id(q, o) for q, o in zip(df["question"], df["options"])}


def _drop_known(df: pd.DataFrame, data: Path, summary: dict) -> pd.DataFrame:
    """Steps 2 and 3 of ingest_file: the rows of `df` neither in the test set nor already in
    `unlabeled/`, counting the others in `summary`."""
    test = data / "test.parquet"
    test_ids = _content_ids(read_table(test, "test")) if test.exists() else set()
    in_test = pd.Series([content_id(q, o) in test_ids
                         for q, o in zip(df["question"], df["options"])], index=df.index)
    if in_test.any():
        summary["overlaps_test"] = n = int(in_test.sum())
        summary["notes"].append(f"{n} row(s) with the same question and options as a test row "
                                "dropped: training on test questions would inflate the evaluation")
        df = df[~in_test]
    unlabeled = data / "unlabeled"
    existing = read_table(unlabeled, "unlabeled") if unlabeled.exists() else None
    if existing is not None and len(existing) and len(df):
        known_ids, known_content = set(existing["id"]), _content_ids(existing)
        fresh = [i not in known_ids and content_id(q, o) not in known_content
                 for i, q, o in zip(df["id"], df["question"], df["options"])]
        summary["already_present"] = int(len(df) - sum(fresh))
        df = df[pd.Series(fresh, index=df.index)]
    return df


def ingest_file(path: str | Path, data_dir: str | Path,
                mapping: Mapping[str, str] | None = None) -> dict:
    """Ingest one inbox file of unlabeled logs into the dataset's `unlabeled/` table; returns a
    summary (status "ingested" or "rejected", counts, notes).

    For one file (JSONL, CSV or Parquet; `mapping` = our field -> the file's column, as in
    read_records):
      1. read and validate it as unlabeled records of the dataset's form (multiple choice when
         every labeled row has options, free-form when none has); bad rows are set aside with
         their reasons; answer-revealing columns are kept out of metadata (a note says which);
      2. drop rows whose question and options are a test row's (counted in `overlaps_test`, a
         note): training on test questions would inflate the evaluation;
      3. drop rows already in the dataset: same id, or same content id (question + options) as an
         existing row, whatever its id; repeats inside the file (same question and options) are
         dropped by the reader;
      4. append the rest as the next part `unlabeled/part-NNNNN.parquet` (atomic: an evolve run
         reading the table at that moment sees the part completely or not at all);
      5. append the bad rows to `quarantine/part-NNNNN.parquet` (source, row, column, reason, raw);
      6. move the file to `inbox/processed/`. A file ingest cannot use at all (unsupported type,
         unreadable, a column missing, or every row bad) goes to `inbox/rejected/` with a
         `<name>.reason.txt` (every bad row's reason) instead, status "rejected", and the dataset
         is left untouched.
    Raises FileNotFoundError, touching nothing, if data_dir is not a dataset. Ingests into one
    dataset are serialized by an exclusive lock on `<dataset>/.ingest.lock`. If a crash hits
    between 4 and 6, the next run finds every row already present and only moves the file.
    """
    src, data = Path(path), require_dataset(data_dir)
    summary = {"file": src.name, "status": "ingested", "rows_read": 0, "added": 0,
               "already_present": 0, "overlaps_test": 0, "duplicates_in_file": 0,
               "quarantined": 0, "part": None, "moved_to": None, "error": None, "notes": []}
    with dataset_lock(data):
        labeled = read_table(data / "labeled.parquet", "labeled")
        multiple_choice = is_multiple_choice(labeled["options"])
        try:
            df = read_records(src, mapping, "unlabeled", skip_bad_rows=True,
                              multiple_choice=multiple_choice)
        except DataError as err:  # the whole file is unusable
            return _reject(src, str(err), summary)
        bad = df.attrs["quarantine"]
        summary.update(rows_read=len(df) + len(bad) + df.attrs["duplicates"],
                       duplicates_in_file=df.attrs["duplicates"], quarantined=len(bad),
                       notes=list(df.attrs["notes"]))
        if not len(df):  # nothing usable: the file is rejected, the dataset left untouched
            reasons = [str(DataError(src, b["row"], b["column"], b["reason"])) for b in bad]
            summary["quarantined"] = 0  # the rows stay in the rejected file, a reason each
            error = (f"{reasons[0]} (every row is bad: {len(bad)} row(s), each one's reason in "
                     "the rejected file's .reason.txt)")
            return _reject(src, error, summary, reasons)
        df = _drop_known(df, data, summary)
        if len(df):
            part = append_part(df.reset_index(drop=True), data / "unlabeled", "unlabeled")
            summary.update(added=int(len(df)), part=str(part))
        if bad:
            append_part(pd.DataFrame(bad), data / "quarantine", "quarantine")
        summary["moved_to"] = str(_move(src, PROCESSED))
    return summary
