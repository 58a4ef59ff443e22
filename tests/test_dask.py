"""The evolve flow's fan-out on a real Dask LocalCluster (prefect-dask), tiny model on CPU.

Generation and justification shards go to 2 worker processes; the outputs must be the bytes the
in-process runner writes, each worker must load the model once for all its shards, and a worker
killed (SIGKILL) while it holds the `gpu` slot mid-shard must cost only a re-run of its shard.

    pytest tests/test_dask.py      # ~2 min
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

# test_flows sets the session's PREFECT_HOME before Prefect loads, and stops its temporary server
from test_flows import _cfg, _stop_temporary_server  # noqa: F401

pytest.importorskip("prefect_dask")

TABLES = ["responses.parquet", "votes.parquet", "justified.parquet", "pseudo_labels.parquet",
          "predictions/semievol.parquet"]


def _dask_cfg(model: Path):
    # 10 unlabeled questions in shards of 2: 5 generation and 5 justification task runs. One torch
    # thread everywhere: another thread count sums floats in another order (last-bit differences).
    return _cfg(model, execution={"progress": False, "shard_size": 2, "workers": 2, "threads": 1})


@pytest.fixture(scope="module")
def plain_run(tiny_model_dir, tmp_path_factory):
    """The same method in one process (semievol_core.pipeline), the reference bytes."""
    from conftest import write_sentiment_dataset
    from semievol_core.pipeline import run_semievol

    root = tmp_path_factory.mktemp("dask")
    data = write_sentiment_dataset(root / "data")
    run_semievol(data, root / "plain", _dask_cfg(tiny_model_dir).model_copy(
        update={"execution": _dask_cfg(tiny_model_dir).execution.model_copy(update={"workers": 0})}),
        systems=("semievol",))
    return {"data": data, "plain": root / "plain", "root": root}


def _holders() -> list[dict]:
    from tasks.common import _holders_dir

    out = []
    for f in _holders_dir().glob("*.json"):
        try:
            out.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            pass
    return out


@pytest.mark.slow
def test_two_dask_workers_write_the_in_process_bytes_and_load_the_model_once_each(plain_run, tiny_model_dir):
    from flows.evolve import evolve

    out = plain_run["root"] / "dask"
    report = evolve(str(plain_run["data"]), str(out), _dask_cfg(tiny_model_dir), systems=["semievol"], gate=False)
    for table in TABLES:
        assert (out / table).read_bytes() == (plain_run["plain"] / table).read_bytes(), table
    generated = report["processes"]["generate"]
    assert len(generated) == 2, generated  # 5 shards spread over both workers
    assert os.getpid() not in {p["pid"] for p in generated}  # not in the flow's process
    # each worker built one backend (the tiny model) for all its generation and justification shards
    workers = {p["pid"]: p["backends_built"] for step in ("generate", "justify") for p in report["processes"][step]}
    assert set(workers.values()) == {1}, report["processes"]


@pytest.mark.slow
def test_a_worker_killed_mid_shard_costs_only_that_shard(plain_run, tiny_model_dir):
    """SIGKILL the first worker seen holding the `gpu` slot (it is inside a generation or
    justification shard): Dask re-runs that shard on a live worker, the run completes with the
    same bytes, and the dead worker's slot is given back."""
    from flows.evolve import evolve

    me, killed, stop = os.getpid(), [], threading.Event()

    def kill_first_worker_holding_the_slot():
        while not stop.is_set() and not killed:
            for rec in _holders():
                if rec.get("state") == "holding" and int(rec["pid"]) != me:
                    os.kill(int(rec["pid"]), signal.SIGKILL)
                    killed.append(int(rec["pid"]))
                    break
            time.sleep(0.02)

    killer = threading.Thread(target=kill_first_worker_holding_the_slot, daemon=True)
    killer.start()
    out = plain_run["root"] / "killed"
    try:
        report = evolve(str(plain_run["data"]), str(out), _dask_cfg(tiny_model_dir), systems=["semievol"],
                        gate=False)
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker was seen holding the gpu slot"
    for table in TABLES:
        assert (out / table).read_bytes() == (plain_run["plain"] / table).read_bytes(), table
    answered = {p["pid"] for step in ("generate", "justify") for p in report["processes"][step]}
    assert killed[0] not in answered  # its shard was answered by another process
    # The dead worker's slot: freed by whoever waited for one meanwhile, else by the next run's
    # first step (ensure_gpu_limit). After that no slot is taken and its registration is gone.
    import logging

    from prefect.client.orchestration import get_client

    from tasks.common import GPU_LIMIT, ensure_gpu_limit

    ensure_gpu_limit(logging.getLogger("test"), devices=2)
    assert not any(int(r["pid"]) == killed[0] for r in _holders())
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(GPU_LIMIT).active_slots == 0
