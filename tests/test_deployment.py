"""prefect.yaml end to end: a real `prefect server start`, `prefect deploy`, a process worker, a run.

Starts a server on a free loopback port with a temporary PREFECT_HOME, creates the `semievol`
process work pool, deploys `evaluate-adhoc` from prefect.yaml, triggers it with
`prefect deployment run` (tiny model, 3 questions), runs `prefect worker start --pool semievol`
until the flow run is COMPLETED and reads its artifacts through the REST API. ~40-60 s.
A second test deploys the ingest flow on a 10-second interval schedule and waits, with no manual
trigger, until the server's scheduler has created a run and the worker has completed it.

    pytest tests/test_deployment.py
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, sig: int) -> None:
    """Stop a process group we started: `sig` first, SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture
def prefect_server(tmp_path):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "2",
           # the scheduler's loop (default 60 s) and the worker's prefetch, short so a schedule
           # test sees its runs within seconds
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5", "PREFECT_WORKER_PREFETCH_SECONDS": "5",
           "HF_HUB_OFFLINE": "1"}
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            _stop(server, signal.SIGTERM)
            pytest.fail(f"prefect server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield api, env
    _stop(server, signal.SIGTERM)
    log.close()


def _prefect(env: dict, *args: str, timeout: float = 120) -> str:
    res = subprocess.run([PREFECT, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"prefect {' '.join(args)}:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    return res.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_evaluate_deployment_runs_on_a_process_worker(prefect_server, tmp_path, sentiment_dataset, tiny_model_dir):
    api, env = prefect_server
    _prefect(env, "work-pool", "create", "semievol", "--type", "process")
    out = _prefect(env, "--no-prompt", "deploy", "--name", "evaluate-adhoc")
    assert "evaluate/evaluate-adhoc" in out

    params = {"test": str(sentiment_dataset), "out_dir": str(tmp_path / "eval"), "limit": 3,
              "config": {"model": str(tiny_model_dir),
                         "evaluation": {"mode": "choice_logprobs", "bootstrap_samples": 100},
                         "execution": {"progress": False}}}
    out = _prefect(env, "deployment", "run", "evaluate/evaluate-adhoc", "--params", json.dumps(params))
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)

    worker_log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "semievol"], env=env, cwd=ROOT,
                              stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, state = time.monotonic() + 240, None
        while time.monotonic() < deadline:
            state = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state"]["type"]
            if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(1)
    finally:
        _stop(worker, signal.SIGINT)  # the worker shuts down on SIGINT (it ignores SIGTERM for a while)
        worker_log.close()
    assert state == "COMPLETED", (tmp_path / "worker.log").read_text()[-4000:]

    arts = httpx.post(f"{api}/artifacts/filter", timeout=10,
                      json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}).json()
    by_key = {a["key"]: a for a in arts}
    assert set(by_key) >= {"semievol-eval-accuracy", "semievol-eval-report"}
    table = by_key["semievol-eval-accuracy"]["data"]
    rows = json.loads(table) if isinstance(table, str) else table
    assert rows[0]["system"] == "model" and rows[0]["n"] == 3 and 0 <= rows[0]["accuracy"] <= 1
    assert "Evaluation" in by_key["semievol-eval-report"]["data"]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n"] == 3
    gpu = httpx.get(f"{api}/v2/concurrency_limits/gpu", timeout=10).json()
    assert gpu["limit"] == 1  # created by the flow on the server


def _worker(env: dict, log_path: Path) -> tuple[subprocess.Popen, object]:
    log = open(log_path, "w")
    proc = subprocess.Popen([PREFECT, "worker", "start", "--pool", "semievol"], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_an_interval_schedule_creates_runs_by_itself_and_they_complete(prefect_server, tmp_path,
                                                                      sentiment_dataset):
    """The scheduler service must create runs with nobody triggering them (it failed every loop
    under SQLAlchemy 2.1, while hand-triggered runs still worked)."""
    api, env = prefect_server
    _prefect(env, "work-pool", "create", "semievol", "--type", "process")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    params = {"inbox": str(inbox), "data_dir": str(sentiment_dataset)}
    _prefect(env, "--no-prompt", "deploy", "flows/ingest.py:ingest", "--name", "ingest-every-10s",
             "--pool", "semievol", "--interval", "10", "--params", json.dumps(params))
    dep_id = httpx.get(f"{api}/deployments/name/ingest/ingest-every-10s", timeout=10).json()["id"]

    worker, worker_log = _worker(env, tmp_path / "worker.log")
    try:
        deadline, done = time.monotonic() + 150, []
        while time.monotonic() < deadline and not done:
            runs = httpx.post(f"{api}/flow_runs/filter", timeout=10, json={
                "flow_runs": {"deployment_id": {"any_": [dep_id]}}}).json()
            assert all(r["auto_scheduled"] for r in runs), "nobody triggered a run by hand here"
            done = [r for r in runs if r["state"]["type"] == "COMPLETED"]
            failed = [r for r in runs if r["state"]["type"] in ("FAILED", "CRASHED")]
            assert not failed, (tmp_path / "worker.log").read_text()[-4000:]
            time.sleep(2)
    finally:
        _stop(worker, signal.SIGINT)
        worker_log.close()
    server_log = (tmp_path / "server.log").read_text()
    assert done, f"no scheduled run completed in 150 s; server log:\n{server_log[-4000:]}"
    assert re.fullmatch(r"ingest-\d{4}-\d{2}-\d{2}-data", done[0]["name"]), done[0]["name"]
    errors = [line for line in server_log.splitlines() if "ERROR" in line]
    assert not errors, "\n".join(errors[:20])
