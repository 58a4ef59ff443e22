"""The `ingest` flow: new unlabeled log files from an inbox directory into a dataset's `unlabeled/`.

    from flows.ingest import ingest
    summary = ingest("inbox/", "data/fpb", mapping={"question": "prompt", "options": "choices"})
    summary["added"], summary["files"]       # rows added; one entry per file

Each JSONL / CSV / Parquet file in the inbox (not in sub-directories, not hidden) becomes one new
part of `<data_dir>/unlabeled/`: validated against the dataset's form, de-duplicated by content id
against the rows already there, test questions and answer-revealing columns kept out (logged as
warnings), bad rows quarantined in `<data_dir>/quarantine/` with their reasons, the file moved to
`<inbox>/processed/` (see semievol_core.ingest.ingest_file). Any other file, or one with no usable
row, goes to `<inbox>/rejected/` with a reason file and is listed in summary["rejected"]. A
data_dir that is not a dataset (no labeled.parquet) is refused before anything is touched.
Safe while an evolve run reads the dataset: parts appear atomically and evolve copies the table
into its run directory at its start.
Artifacts: `semievol-ingest` (a row per file), `semievol-ingest-report`, `semievol-ingest-progress`.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from semievol_core.ingest import require_dataset
from tasks.ingest import ingest_file, inbox_files

from flows.common import publish_markdown, run_name


@flow(name="ingest", description="Add new unlabeled log files from an inbox to a dataset.",
      flow_run_name=run_name("ingest", "data_dir"))
def ingest(inbox: str, data_dir: str, mapping: dict[str, str] | None = None) -> dict:
    log = get_run_logger()
    require_dataset(data_dir)
    if not Path(inbox).exists():  # a first scheduled run before anyone dropped a file
        Path(inbox).mkdir(parents=True)
        log.info("created the inbox %s: drop JSONL, CSV or Parquet files there", inbox)
    files = inbox_files(inbox)
    log.info("%d file(s) waiting in %s", len(files), inbox)
    progress = create_progress_artifact(progress=0.0 if files else 100.0, key="semievol-ingest-progress",
                                        description=f"files ingested from {inbox}")
    results = []
    for i, f in enumerate(files, start=1):
        res = ingest_file(str(f), str(data_dir), mapping)
        results.append(res)
        if res["status"] == "rejected":
            log.warning("%s rejected: %s", f.name, res["error"])
        else:
            log.info("%s: %d added, %d already present, %d quarantined", f.name, res["added"],
                     res["already_present"], res["quarantined"])
        for note in res["notes"]:  # something was kept out of the dataset: never silently
            log.warning("%s: %s", f.name, note)
        update_progress_artifact(progress, progress=100.0 * i / len(files))
    summary = {"inbox": str(inbox), "data_dir": str(data_dir), "files": results,
               "added": sum(r["added"] for r in results),
               "quarantined": sum(r["quarantined"] for r in results),
               "overlaps_test": sum(r["overlaps_test"] for r in results),
               "rejected": [r["file"] for r in results if r["status"] == "rejected"]}
    if results:
        create_table_artifact(table=[{k: r[k] for k in ("file", "status", "rows_read", "added", "already_present",
                                                         "overlaps_test", "duplicates_in_file", "quarantined",
                                                         "error")}
                                     for r in results],
                              key="semievol-ingest", description=f"Ingest of {inbox} into {data_dir}")
    lines = [f"# Ingest `{inbox}` → `{data_dir}`", "",
             f"{len(results)} file(s), {summary['added']} row(s) added, {summary['quarantined']} quarantined "
             f"(see `{Path(data_dir) / 'quarantine'}`), {len(summary['rejected'])} file(s) rejected.", ""]
    lines += [f"- `{r['file']}`: {r['status']}, {r['added']} added → `{r['part'] or '-'}`; moved to "
              f"`{r['moved_to']}`" + (f"; {r['error']}" if r["error"] else "")
              + "".join(f"; {note}" for note in r["notes"]) for r in results]
    publish_markdown("\n".join(lines) + "\n", key="semievol-ingest-report",
                     description=f"Ingest of {inbox} into {data_dir}")
    return summary
