"""An `ingest` appending a part to a dataset's unlabeled/ while an evolve run's prepare step reads
the dataset (issue 12): the reader gets whole parts, or none of a part, never half a Parquet file
or some of a part's rows.

    pytest -q tests/reliability/test_ingest_during_evolve.py     # seconds; no model, no Prefect

The writer is the real ingest (semievol_core.ingest.ingest_file) in a second process; the reader
is the evolve graph's own prepare step (semievol_core.graph, steps.prepare_data) in this one. They
interleave at fixed points, never by timing: the writer stops with its part's temp file
half-written (pyarrow's write wrapped in the writer process) until told to go on over a pipe, and
the reader stops between listing the parts and reading them until the writer has published its
part (data.append_part: the temp is fsynced, then linked under the part's name in one step).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from runner import ROOT
from semievol_core import graph, steps
from semievol_core.atomic import leftover_temps
from semievol_core.config import SemiEvolConfig
from semievol_core.data import part_sizes, table_parts

from conftest import sentiment_rows

# The real ingest of argv[1] into the dataset argv[2], its part's temp held half-written: prints
# "half-written", waits for a line on stdin, writes the rest, and prints the ingest's summary.
PAUSED_INGEST = """
import json
import sys

import pyarrow.parquet as pq

from semievol_core.ingest import ingest_file

whole_write = pq.write_table


def half_then_whole(table, where, *args, **kwargs):
    whole_write(table, where, *args, **kwargs)
    whole = open(where, "rb").read()
    open(where, "wb").write(whole[: len(whole) // 2])
    print("half-written", flush=True)
    sys.stdin.readline()
    open(where, "wb").write(whole)


pq.write_table = half_then_whole  # data.append_part calls pq.write_table(table, <its temp>)
print(json.dumps(ingest_file(sys.argv[1], sys.argv[2])), flush=True)
"""
NEW = 5  # rows the ingest appends


def _ids(table: Path) -> set[str]:
    return set(pq.read_table(table, columns=["id"]).column("id").to_pylist())


def _prepare(data: Path, out: Path) -> Path:
    """The evolve graph's prepare step, as the flow runs it; returns the run's unlabeled table."""
    outputs = graph.BY_NAME["prepare"].run(SemiEvolConfig(), out, data_dir=str(data), limits={})
    return Path(outputs["unlabeled"])


@pytest.fixture
def paused_ingest(sentiment_dataset, tmp_path):
    """An ingest of NEW rows into sentiment_dataset, stopped with its part half-written."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rows = [{"question": r["question"], "options": r["options"], "src": "app"}
            for r in sentiment_rows(NEW, offset=3000)]
    (inbox / "logs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    writer = subprocess.Popen([sys.executable, "-c", PAUSED_INGEST, str(inbox / "logs.jsonl"), str(sentiment_dataset)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert writer.stdout.readline().strip() == "half-written"
        yield writer
    finally:
        writer.kill()
        writer.wait()


def test_a_reader_gets_each_part_whole_or_not_at_all_while_ingest_appends_one(sentiment_dataset, tmp_path,
                                                                           paused_ingest, monkeypatch):
    data, unlabeled = sentiment_dataset, sentiment_dataset / "unlabeled"
    (old_part,) = table_parts(unlabeled)
    old = _ids(old_part)
    fingerprint = steps.dataset_fingerprint(data)

    # 1. The part is half-written: its hidden temp is there, and the run copies the old part alone.
    (temp,) = leftover_temps(unlabeled)
    assert 0 < temp.stat().st_size and table_parts(unlabeled) == [old_part]
    assert _ids(_prepare(data, tmp_path / "run1")) == old
    assert steps.dataset_fingerprint(data) == fingerprint  # the run's cache key sees no change either

    # 2. The run lists the parts; the ingest then finishes and publishes its part; the run reads
    #    what it listed: the old part, whole, and nothing of the new one.
    real_parts, published = steps.table_parts, {}

    def list_then_let_the_ingest_finish(directory):
        listed = real_parts(directory)
        paused_ingest.stdin.write("go\n")
        paused_ingest.stdin.flush()
        published.update(json.loads(paused_ingest.stdout.readline()))
        assert paused_ingest.wait() == 0
        return listed

    monkeypatch.setattr(steps, "table_parts", list_then_let_the_ingest_finish)
    second = _prepare(data, tmp_path / "run2")
    monkeypatch.undo()
    assert published["status"] == "ingested" and published["added"] == NEW
    new_part = Path(published["part"])
    assert table_parts(unlabeled) == [old_part, new_part] and leftover_temps(unlabeled) == []
    assert _ids(second) == old and part_sizes(second) == [len(old)]

    # 3. The next run reads both parts, each whole: one row group per part, every new row in it.
    third = _prepare(data, tmp_path / "run3")
    new = _ids(new_part)
    assert len(new) == NEW and not new & old
    assert _ids(third) == old | new and part_sizes(third) == [len(old), NEW]
    assert steps.dataset_fingerprint(data) != fingerprint
