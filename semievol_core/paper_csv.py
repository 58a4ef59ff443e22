"""Import the SemiEvol paper's CSVs (labeled.csv, unlabeled.csv, test.csv) as a dataset directory.

    summary = import_csv_dir("/work/shared/datasets/semievol/arc", "data/arc")
    print(summary)              # rows per table, duplicates, quarantined, notes (ImportSummary)

What the paper's files need and get: the id column (`id`, or mmlu_pro's `question_id`), answers
given as 1-based option numbers (arc) turned into letters, unlabeled answers moved to the oracle
table, questions shared between splits noted, duplicate rows (same question, options and answer:
mmlu_pro repeats some under other question_ids) dropped with a count. The dataset layout and the table writes are
semievol_core/data.py's; the file reading semievol_core/sources.py's. `semievol import-csv` is
the command-line entry (flows/cli.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from semievol_core.atomic import atomic_dir
from semievol_core.data import empty_frame, rows_frame, split_oracle, write_table
from semievol_core.schema import DataError, RowCollector, answer_note, content_id
from semievol_core.sources import FIELDS, record_answer_columns, source_records

_ID_COLUMNS = ("id", "question_id")  # id columns of the paper's CSVs (arc, mmlu_pro)


@dataclass
class ImportSummary:
    src_dir: str
    out_dir: str
    counts: dict[str, int] = field(default_factory=dict)     # rows written per table
    rows_read: dict[str, int] = field(default_factory=dict)  # data rows in each source file
    duplicates: int = 0   # rows dropped as repeats of one with the same question, options, answer
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


def _refuse_nonempty(out: Path, overwrite: bool) -> None:
    if not overwrite and out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; replace it with --overwrite "
                              "(overwrite=True in Python)")


def _import_split(path: Path, split: str, skip_bad_rows: bool,
                  summary: ImportSummary) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """One paper CSV -> (labeled-shaped frame, quarantined rows); notes go into `summary`."""
    header, records = source_records(path)
    unl = split == "unlabeled"
    for name in ("question", "options") + (() if unl else ("answer",)):
        if name not in header:
            raise DataError(path, None, name, "missing required column")
    columns = {f: (f if f in header else None) for f in FIELDS}
    # the file's own ids when it has them (stable across versions of the file), else content hashes
    columns["id"] = next((c for c in _ID_COLUMNS if c in header), None)
    hidden = record_answer_columns(records, columns) if unl else {}
    collector = RowCollector(path, columns, skip_bad_rows)
    collector.add(records, answer="optional" if unl else "required", numbered=True,
                  multiple_choice=True, withhold=frozenset(hidden))
    summary.rows_read[split] = len(records)
    summary.duplicates += collector.duplicates
    where = f"{path.parent.name}/{path.name}"
    notes = []
    if collector.duplicates:
        other = f"; {collector.variants} with another id or metadata" if collector.variants else ""
        notes.append(f"{collector.duplicates} duplicate row(s) (same question, options and answer "
                     f"as an earlier row{other}) dropped, first kept")
    if collector.converted:
        notes.append(f"{collector.converted} answer(s) given as 1-based option numbers "
                     "converted to letters")
    if columns["id"] not in (None, "id"):
        notes.append(f"ids taken from column {columns['id']}")
    if hidden:
        notes.append(answer_note(hidden))
    summary.notes += [f"{where}: {note}" for note in notes]
    return rows_frame(collector.rows, "labeled"), collector.quarantine


def import_csv_dir(src_dir: str | Path, out_dir: str | Path, *, skip_bad_rows: bool = False,
                   overwrite: bool = False) -> ImportSummary:
    """Import the SemiEvol paper's labeled.csv / unlabeled.csv / test.csv into a dataset directory.

    A missing unlabeled.csv gives an empty unlabeled table. Answers in unlabeled.csv go to
    oracle.parquet, never into the unlabeled table. 1-based option numbers given as answers (arc)
    become letters. Duplicates (same question, options and answer) are dropped, counted; the same
    question and options with different answers is a bad row. Raises DataError on an unusable
    file, BadRowError on the first bad row unless skip_bad_rows, which moves bad rows to
    quarantine.parquet. A non-empty out_dir is only replaced (whole) with overwrite=True.
    """
    src, out = Path(src_dir), Path(out_dir)
    _refuse_nonempty(out, overwrite)
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

    # every table is written to a staging directory swapped in whole: all appear at once
    with atomic_dir(out) as staging:
        write_table(frames["labeled"], staging / "labeled.parquet", "labeled")
        write_table(unlabeled, staging / "unlabeled" / "part-00000.parquet", "unlabeled")
        write_table(frames["test"], staging / "test.parquet", "test")
        if len(oracle):
            write_table(oracle, staging / "oracle.parquet", "oracle")
        if quarantine:
            write_table(pd.DataFrame(quarantine), staging / "quarantine.parquet", "quarantine")
        _refuse_nonempty(out, overwrite)  # again: something may have been written there meanwhile
    summary.counts = {"labeled": len(frames["labeled"]), "unlabeled": len(unlabeled),
                      "test": len(frames["test"]), "oracle": len(oracle)}
    return summary
