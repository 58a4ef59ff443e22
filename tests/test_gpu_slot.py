"""A run killed while it holds the `gpu` slot must not block the next one (issue 15, item 1).

Two real processes on one PREFECT_HOME, each with Prefect's temporary (ephemeral) server, as
`semievol evolve` runs without PREFECT_API_URL: the first takes the slot inside a task and is
killed with SIGKILL; the second, started after the kill or already waiting for the slot when the
kill comes, must get the slot and finish, saying that it freed it. Before the fix the second
waited forever at 0% CPU. ~30 s per case (two ephemeral server start-ups).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RUN = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    from prefect import flow, task
    from tasks.common import ensure_gpu_limit, gpu_slot

    @task
    def hold(marker: str, seconds: float) -> str:
        with gpu_slot():
            Path(marker).write_text("holding")
            time.sleep(seconds)
        return "released"

    @flow
    def run(marker: str, seconds: float) -> str:
        from prefect import get_run_logger
        ensure_gpu_limit(get_run_logger())
        return hold(marker, seconds)

    print(run(sys.argv[1], float(sys.argv[2])), flush=True)
''')


def _start(script: Path, env: dict, marker: Path, seconds: float, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), str(marker), str(seconds)], cwd=ROOT, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("second_starts", ["after the kill", "before the kill"])
def test_a_run_killed_holding_the_gpu_slot_does_not_block_the_next_run(tmp_path, second_starts):
    script = tmp_path / "run.py"
    script.write_text(RUN)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PYTHONPATH=str(ROOT),
               PREFECT_SERVER_ANALYTICS_ENABLED="false")

    first = _start(script, env, tmp_path / "first.holding", 600, tmp_path / "first.log")
    deadline = time.monotonic() + 150
    while not (tmp_path / "first.holding").exists():
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the first run never took the slot"
        time.sleep(0.5)
    if second_starts == "before the kill":  # it registers and waits, polling for the slot
        second = _start(script, env, tmp_path / "second.holding", 0, tmp_path / "second.log")
        holders = tmp_path / "prefect-home" / "semievol-gpu-holders"
        while not any('"waiting"' in f.read_text() for f in holders.glob("*.json")):
            assert second.poll() is None, (tmp_path / "second.log").read_text()[-3000:]
            assert time.monotonic() < deadline + 60, "the second run never started waiting"
            time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)  # the whole group: the run and its temporary server
    first.wait(timeout=30)

    if second_starts == "after the kill":
        second = _start(script, env, tmp_path / "second.holding", 0, tmp_path / "second.log")
    try:
        rc = second.wait(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(second.pid, signal.SIGKILL)
        pytest.fail("the next run still waits for the slot the killed run held:\n"
                    + (tmp_path / "second.log").read_text()[-3000:])
    out = (tmp_path / "second.log").read_text()
    assert rc == 0 and "released" in out, out[-3000:]
    assert "freed 1 `gpu` slot(s) left taken by a run that died" in out
    assert "| ERROR" not in out  # waiting is not an error (Prefect's timed acquisition logs one)
    assert (tmp_path / "second.holding").exists()
