"""Prefect task that ingests one inbox file of unlabeled logs into a dataset's `unlabeled/` table.

    from tasks.ingest import ingest_file, inbox_files
    for f in inbox_files("inbox/"):
        summary = ingest_file(str(f), "data/fpb", mapping={"question": "prompt"})

For one file (JSONL, CSV or Parquet; `mapping` = our field -> the file's column, as in
semievol_core.data.read_records):
  1. read and validate it as unlabeled records; bad rows are set aside with their reasons;
  2. drop rows already in the dataset: same id, or same content id (question + options) as an
     existing row, whatever its id; identical repeats inside the file are dropped by the reader;
  3. append the rest as the next part `unlabeled/part-NNNNN.parquet` (atomic: an evolve run reading
     the table at that moment sees the part completely or not at all);
  4. append the bad rows to `quarantine/part-NNNNN.parquet` (source, row, column, reason, raw);
  5. move the file to `inbox/processed/` (a whole unreadable file goes to `inbox/rejected/` with a
     `<name>.reason.txt`).
Ingests into one dataset are serialized by an exclusive lock on `<dataset>/.ingest.lock`. If a
crash hits between 3 and 5, the next run finds every row already present and only moves the file.
Writers should drop files into the inbox under a hidden name (`.name.tmp`) and rename them when
complete; hidden files are never picked up.

No caching (it has side effects and is idempotent by itself) and no retries (failures here are bad
data or a full disk, which waiting does not fix).
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from semievol_core.data import append_part, read_records, read_table
from semievol_core.schema import DataError, content_id

from .common import record_execution

SUPPORTED = (".jsonl", ".ndjson", ".csv", ".parquet", ".pq")
PROCESSED, REJECTED = "processed", "rejected"


def inbox_files(inbox: str | Path) -> list[Path]:
    """Files waiting in the inbox, oldest name first (hidden = still being written)."""
    inbox = Path(inbox)
    if not inbox.is_dir():
        raise FileNotFoundError(f"{inbox}: inbox directory not found")
    return sorted(p for p in inbox.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SUPPORTED)


@contextmanager
def dataset_lock(data_dir: Path) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / ".ingest.lock", "a+") as fh:
        # flock, not a Prefect limit: it also serializes ingests started outside Prefect, and the
        # kernel releases it when a killed process dies.
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _move(path: Path, folder: str) -> Path:
    dest_dir = path.parent / folder
    dest_dir.mkdir(exist_ok=True)
    dest = dest_dir / path.name
    if dest.exists():  # the same name ingested before: keep both
        dest = dest_dir / f"{path.stem}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}{path.suffix}"
    os.replace(path, dest)
    return dest


@task(name="ingest-file", cache_policy=NO_CACHE, retries=0)
def ingest_file(path: str, data_dir: str, mapping: dict[str, str] | None = None) -> dict:
    """Ingest one inbox file (see the module docstring); returns a summary of what happened."""
    record_execution("ingest-file")
    src, data = Path(path), Path(data_dir)
    summary = {"file": src.name, "status": "ingested", "rows_read": 0, "added": 0,
               "already_present": 0, "duplicates_in_file": 0, "quarantined": 0,
               "part": None, "moved_to": None, "error": None}
    with dataset_lock(data):
        try:
            df = read_records(src, mapping, "unlabeled", skip_bad_rows=True)
        except DataError as err:
            # The whole file is unusable (unreadable, a required column missing...): set it aside
            # with the reason, so the inbox does not retry it forever.
            dest = _move(src, REJECTED)
            dest.with_name(dest.name + ".reason.txt").write_text(str(err) + "\n", encoding="utf-8")
            summary.update(status="rejected", error=str(err), moved_to=str(dest))
            return summary
        bad = df.attrs.get("quarantine", [])
        summary.update(rows_read=len(df) + len(bad) + df.attrs.get("duplicates", 0),
                       duplicates_in_file=df.attrs.get("duplicates", 0), quarantined=len(bad))

        unlabeled = data / "unlabeled"
        existing = read_table(unlabeled, "unlabeled") if unlabeled.exists() else None
        if existing is not None and len(existing) and len(df):
            known_ids = set(existing["id"])
            known_content = {content_id(q, o) for q, o in zip(existing["question"], existing["options"])}
            fresh = [i not in known_ids and content_id(q, o) not in known_content
                     for i, q, o in zip(df["id"], df["question"], df["options"])]
            summary["already_present"] = int(len(df) - sum(fresh))
            df = df[pd.Series(fresh, index=df.index)]
        if len(df):
            part = append_part(df.reset_index(drop=True), unlabeled, "unlabeled")
            summary.update(added=int(len(df)), part=str(part))
        if bad:
            append_part(pd.DataFrame(bad), data / "quarantine", "quarantine")
        summary["moved_to"] = str(_move(src, PROCESSED))
    return summary
