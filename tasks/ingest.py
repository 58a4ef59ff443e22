"""Prefect task that ingests one inbox file of unlabeled logs into a dataset's `unlabeled/` table.

    from tasks.ingest import ingest_file, inbox_files
    for f in inbox_files("inbox/"):
        summary = ingest_file(str(f), "data/fpb", mapping={"question": "prompt"})

The work is semievol_core.ingest.ingest_file (plain Python, so tests and scripts need no Prefect; its
docstring has the steps): validate the file against the dataset's form, keep answer-revealing
columns and test questions out, append the new rows as the next part of `unlabeled/`, quarantine
bad rows, and move the file to `inbox/processed/` — or to `inbox/rejected/` with a
`<name>.reason.txt` when nothing in it is usable (unsupported type, unreadable, every row bad).
Writers should drop files into the inbox under a hidden name (`.name.tmp`) and rename them when
complete; hidden files are never picked up.

No caching (it has side effects and is idempotent by itself) and no retries (failures here are bad
data or a full disk, which waiting does not fix).
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from semievol_core import ingest
from semievol_core.ingest import inbox_files  # noqa: F401  (re-exported: the flow lists the inbox)

from .common import record_execution


@task(name="ingest-file", cache_policy=NO_CACHE, retries=0)
def ingest_file(path: str, data_dir: str, mapping: dict[str, str] | None = None) -> dict:
    """Ingest one inbox file (semievol_core.ingest.ingest_file); returns its summary."""
    record_execution("ingest-file")
    return ingest.ingest_file(path, data_dir, mapping)
