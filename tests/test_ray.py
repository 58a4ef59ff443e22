"""The evolve flow's fan-out on a real local Ray instance (prefect-ray), tiny model on CPU.

The second engine behind `execution.workers` (`execution.engine: ray`): generation and
justification shards go to Ray worker processes, and the outputs must be the bytes the in-process
runner writes, with each worker loading the model once for all its shards.

    pytest tests/test_ray.py      # ~2 min (Ray's start included)
"""

from __future__ import annotations

import os

import pytest

# test_flows sets the session's PREFECT_HOME before Prefect loads, and stops its temporary server
from test_flows import _stop_temporary_server  # noqa: F401
from test_dask import TABLES, _dask_cfg, plain_run  # noqa: F401  (the in-process reference run)

pytest.importorskip("prefect_ray")


@pytest.mark.slow
def test_two_ray_workers_write_the_in_process_bytes_and_load_the_model_once_each(plain_run, tiny_model_dir):
    from flows.evolve import evolve

    cfg = _dask_cfg(tiny_model_dir)
    cfg = cfg.model_copy(update={"execution": cfg.execution.model_copy(update={"engine": "ray"})})
    out = plain_run["root"] / "ray"
    report = evolve(str(plain_run["data"]), str(out), cfg, systems=["semievol"], gate=False)
    for table in TABLES:
        assert (out / table).read_bytes() == (plain_run["plain"] / table).read_bytes(), table
    answered = {p["pid"]: p["backends_built"] for step in ("generate", "justify") for p in report["processes"][step]}
    assert os.getpid() not in answered  # not in the flow's process
    assert 1 <= len(answered) <= 2, report["processes"]  # Ray's workers, at most the 2 CPUs it was given
    assert set(answered.values()) == {1}, report["processes"]  # one model each, kept for all its shards
    import ray

    assert not ray.is_initialized()  # the local instance stopped with the flow's task runner
