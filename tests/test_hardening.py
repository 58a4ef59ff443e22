"""Hard to break (issue 12), without models or Prefect: API keys stay out of configs and error
lines, one run per run directory, a full disk leaves tables intact, no unsafe code paths, no
user-given name writes outside its directory.

    pytest tests/test_hardening.py

The flow-level checks (the key reaches the server and no stored output holds it; a dead server
fails by its deadline) are in tests/test_flows.py, the backend's deadline in test_backend_http.py.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from semievol_core import steps
from semievol_core.atomic import LockHeld
from semievol_core.config import OpenAIConfig, SemiEvolConfig, resolve_api_key
from semievol_core.data import read_table, write_table

from conftest import sentiment_rows

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-live-0123456789abcdef"


# ------------------------------------------------------------------------------ secrets
def test_a_key_in_the_config_is_refused_without_echoing_it(tmp_path, sentiment_dataset, capsys):
    from pydantic import ValidationError

    url = "http://127.0.0.1:9/v1"
    for make in (lambda: SemiEvolConfig(execution={"backend": {"name": "openai", "base_url": url, "api_key": KEY}}),
                 lambda: SemiEvolConfig(execution={"backend": "openai", "base_url": url, "api_key": KEY}),  # flat
                 lambda: OpenAIConfig(base_url=url, api_key=KEY)):
        with pytest.raises(ValidationError, match="env:VARIABLE or secret:PREFECT_BLOCK") as info:
            make()
        assert KEY not in str(info.value)  # tracebacks and logs print this text
    from flows.cli import main

    for sets in ([f"execution.backend={{name: openai, base_url: '{url}', api_key: {KEY}}}"],
                 ["execution.backend=openai", f"execution.base_url={url}", f"execution.api_key={KEY}"],
                 [f"execution.api_key={KEY}"]):  # no backend named: the key is not echoed either
        args = [a for s in sets for a in ("--set", s)]
        assert main(["evaluate", "--test", str(sentiment_dataset), "--out", str(tmp_path / "eval"), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("semievol: error: ") and err.count("\n") == 1 and "execution.backend" in err
        assert KEY not in err, err


def test_the_config_carries_the_reference_and_the_backend_gets_the_key(monkeypatch):
    monkeypatch.setenv("SEMIEVOL_TEST_API_KEY", KEY)
    cfg = SemiEvolConfig(execution={"backend": {"name": "openai", "base_url": "http://127.0.0.1:9/v1",
                                                "api_key": "env:SEMIEVOL_TEST_API_KEY", "request_deadline_seconds": 7,
                                                "request_timeout_seconds": 5}})
    for text in (cfg.to_yaml(), str(cfg.model_dump(mode="json")), repr(cfg)):
        assert "env:SEMIEVOL_TEST_API_KEY" in text and KEY not in text
    backend = steps.get_backend(cfg)  # builds the client lazily: nothing is sent here
    assert backend.api_key.get_secret_value() == KEY and KEY not in repr(backend.api_key)
    assert (backend.deadline, backend.timeout) == (7, 5)  # a request's budget, one attempt's wait
    monkeypatch.setenv("SEMIEVOL_TEST_API_KEY", KEY + "-rotated")
    assert steps.get_backend(cfg).api_key.get_secret_value() == KEY + "-rotated"  # a new client
    steps.unload_backends()


def test_unreadable_key_references_are_one_line_errors(monkeypatch):
    monkeypatch.delenv("SEMIEVOL_TEST_API_KEY", raising=False)
    with pytest.raises(ValueError, match="'env:SEMIEVOL_TEST_API_KEY': environment variable not set"):
        resolve_api_key("env:SEMIEVOL_TEST_API_KEY")
    # In process (no Prefect imported), a Secret block cannot be read: say how instead.
    code = ("from semievol_core.config import resolve_api_key\n"
            "try:\n    resolve_api_key('secret:openai-key')\nexcept ValueError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "Prefect Secret blocks are read by the Prefect flows" in out
    assert resolve_api_key(None) is None


# ------------------------------------------------------------------------------ one run per directory
HOLDER = """
import sys, time
from pathlib import Path
from semievol_core.steps import run_dir_lock
with run_dir_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def held_by_another_process(tmp_path):
    """<tmp>/run locked by a subprocess (killed afterwards): (run dir, its pid)."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield out, proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_second_run_on_the_same_directory_fails_at_once_naming_the_first(held_by_another_process,
                                                                           sentiment_dataset):
    from semievol_core.pipeline import run_semievol

    out, pid = held_by_another_process
    with pytest.raises(LockHeld) as info:
        run_semievol(sentiment_dataset, out, SemiEvolConfig())
    assert str(info.value) == (f"{out}: in use by another run (pid {pid}, lock .run.lock); "
                               "wait for it to finish or use another directory")
    assert sorted(p.name for p in out.iterdir()) == [".run.lock"]  # the second run wrote nothing


def test_the_cli_says_so_in_one_line_with_exit_2_before_starting_prefect(held_by_another_process,
                                                                          sentiment_dataset, capsys, monkeypatch):
    import flows.evolve
    from flows.cli import main

    def flow(**kwargs):
        raise AssertionError("the flow (and Prefect's server) must not start")

    monkeypatch.setattr(flows.evolve, "evolve", flow)
    out, pid = held_by_another_process
    assert main(["evolve", "--data", str(sentiment_dataset), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"semievol: error: {out}: in use by another run (pid {pid}, lock .run.lock); " \
                  "wait for it to finish or use another directory\n"


def test_the_lock_is_free_again_once_its_holder_is_gone(tmp_path):
    out = tmp_path / "run"
    taken, release = threading.Event(), threading.Event()

    def hold():  # another open file description: flock conflicts within one process too
        with steps.run_dir_lock(out):
            taken.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    taken.wait(10)
    with pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
        with steps.run_dir_lock(out):
            pass
    release.set()
    holder.join()
    with steps.run_dir_lock(out):  # released: the next run goes ahead
        pass


# A writer killed in the middle of an atomic directory write (argv[1]: the target directory).
KILLED_MID_WRITE = """
import sys
from pathlib import Path
from semievol_core.atomic import atomic_dir
with atomic_dir(Path(sys.argv[1])) as tmp:
    (tmp / "adapter_model.safetensors").write_bytes(b"half an adapter")
    print("writing", flush=True)
    sys.stdin.read()  # until killed
"""


def test_temps_a_killed_writer_left_are_removed_by_the_next_holder_of_the_lock(tmp_path):
    """kill -9 mid-write leaves the hidden temp (atomic.TEMP_NAME) nobody else would remove: the
    next run on the directory (the run lock), the next change to the registry (its lock) do."""
    from semievol_core.atomic import leftover_temps
    from semievol_core.registry import Registry

    run, reg = tmp_path / "run", tmp_path / "registry"
    for target in (run / "warm_adapter", reg / "adapters" / "20260101T000000Z-0123456789"):
        writer = subprocess.Popen([sys.executable, "-c", KILLED_MID_WRITE, str(target)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert writer.stdout.readline().strip() == "writing"
        writer.kill()
        writer.wait()
    assert [len(leftover_temps(d)) for d in (run, reg)] == [1, 1]
    with steps.run_dir_lock(run):
        assert leftover_temps(run) == [] and not (run / "warm_adapter").exists()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    Registry(reg).register(adapter)
    assert leftover_temps(reg) == []


# ------------------------------------------------------------------------------ disk full
def _disk_full(*args) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _half_written_then_full(table, where, *args, **kwargs) -> None:
    Path(where).write_bytes(b"PAR1 half a table")  # some bytes reached the temp, then the disk filled
    _disk_full()


@pytest.mark.parametrize("where", ["while writing", "at fsync"])
def test_a_full_disk_leaves_the_old_table_and_no_temp_then_the_next_write_works(tmp_path, monkeypatch, where):
    import semievol_core.atomic as atomic

    path = tmp_path / "data" / "test.parquet"
    old, new = pd.DataFrame(sentiment_rows(3)), pd.DataFrame(sentiment_rows(5, offset=10))
    write_table(old, path, "test")
    with monkeypatch.context() as mp:
        if where == "while writing":
            from conftest import failing_parquet_writes

            failing_parquet_writes(mp, _half_written_then_full)
        else:  # delayed allocation: the bytes are accepted, the space runs out at fsync
            mp.setattr(atomic, "fsync_file", _disk_full)
        with pytest.raises(OSError) as info:
            write_table(new, path, "test")
    assert info.value.errno == errno.ENOSPC
    assert str(info.value).startswith(f"[Errno {errno.ENOSPC}] {path}: not written (No space left")
    assert "\n" not in str(info.value) and ".tmp" not in str(info.value)
    assert sorted(p.name for p in path.parent.iterdir()) == ["test.parquet"]  # no temp left behind
    assert read_table(path, "test")["id"].tolist() == old["id"].tolist()  # the old table, intact
    write_table(new, path, "test")  # space again: the next write goes through
    assert read_table(path, "test")["id"].tolist() == new["id"].tolist()


# ------------------------------------------------------------------------------ unsafe code
SOURCE_DIRS = ("semievol_core", "tasks", "flows", "deployments", "bench", "scripts")
SOURCE_FILES = [p for d in SOURCE_DIRS for p in sorted((ROOT / d).rglob("*"))
                if p.suffix in (".py", ".sh", ".yaml", ".yml", ".toml") and "__pycache__" not in p.parts]
SOURCE_FILES += [ROOT / "prefect.yaml", ROOT / "pyproject.toml", ROOT / "Makefile"]
# Deserialising data or model files with pickle runs code from them; eval/exec would run model
# output or data as code; shell=True lets a path become a command.
UNSAFE = re.compile(r"\bc?pickle\b|\bdill\b|\bjoblib\b|\bmarshal\.loads?\b|read_pickle|(?<![\w.])eval\s*\(|"
                    r"(?<![\w.])exec\s*\(|torch\.load\s*\(|allow_pickle\s*=\s*True|yaml\.(unsafe_)?load\s*\(|"
                    r"yaml\.(Unsafe|Full)?Loader\b|shell\s*=\s*True")
ALLOWED: set[tuple[str, str]] = set()  # (file, matched text): none needed so far


def test_the_sources_are_where_the_greps_look():
    names = {p.relative_to(ROOT).as_posix() for p in SOURCE_FILES}
    assert {"semievol_core/backends/openai_http.py", "flows/cli.py", "deployments/serve.py",
            "prefect.yaml"} <= names


def test_trust_remote_code_appears_nowhere():
    # Not even `=False`: nothing here needs it, and a variable passed through could turn it on.
    hits = [str(p.relative_to(ROOT)) for p in SOURCE_FILES if "trust_remote_code" in p.read_text(errors="replace")]
    assert hits == []


def test_no_pickle_eval_or_exec_on_data_or_model_output():
    hits = [(str(p.relative_to(ROOT)), m.group()) for p in SOURCE_FILES
            for m in UNSAFE.finditer(p.read_text(errors="replace"))]
    assert [h for h in hits if h not in ALLOWED] == []
    assert UNSAFE.search("model.eval()") is None and UNSAFE.search("eval(text)")  # the pattern itself


# ------------------------------------------------------------------------------ names that are not paths
@pytest.mark.parametrize("name", ["../escape", "../../etc/x", "/tmp/x", "a/b", ".hidden", "", "rag_knn"])
def test_an_evaluation_name_cannot_leave_predictions(name, tmp_path):
    from semievol_core import graph

    with pytest.raises(ValueError, match="name"):
        steps.check_model_name(name)
    with pytest.raises(ValueError):  # at the write site too, before any model is loaded
        graph.BY_NAME["evaluate-model"].run(SemiEvolConfig(), tmp_path, test="t", answer_type="choice",
                                            adapter=None, name=name)
    assert list(tmp_path.iterdir()) == []


def test_the_cli_refuses_a_path_as_name(tmp_path, sentiment_dataset, capsys):
    from flows.cli import main

    assert main(["evaluate", "--test", str(sentiment_dataset), "--out", str(tmp_path / "eval"),
                 "--name", "../../escape"]) == 2
    assert "'../../escape'" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists() and not (tmp_path / "escape.parquet").exists()
    assert steps.check_model_name("sft-v2.1") == "sft-v2.1"


def test_a_registry_id_cannot_reach_outside_the_registry(tmp_path):
    from semievol_core.registry import Registry, RegistryError

    (tmp_path / "reg" / "adapters").mkdir(parents=True)
    (tmp_path / "reg" / "outside").mkdir()
    (tmp_path / "reg" / "outside" / "record.json").write_text('{"id": "outside"}')
    reg = Registry(tmp_path / "reg")
    for bad in ("../outside", str(tmp_path / "reg" / "outside"), "..", ""):
        with pytest.raises(RegistryError, match="no adapter"):
            reg.record(bad)
        with pytest.raises(RegistryError):
            reg.promote(bad)
    assert not (tmp_path / "reg" / "champion").exists()


def test_serve_keeps_each_run_directory_under_runs():
    from deployments.serve import parameters

    assert parameters({"out_dir": "runs/nightly"}, runs="/srv/runs")["out_dir"] == "/srv/runs/nightly"
    for bad in ("runs/..", "..", "/"):
        with pytest.raises(ValueError, match="give the run directory a name"):
            parameters({"out_dir": bad}, runs="/srv/runs")


def test_serve_config_replaces_the_recipe_and_keeps_each_deployments_rounds():
    from deployments.serve import parameters

    mine = {"model": "mine", "selection": {"theta": 0.3}, "rounds": {"reuse_pseudo_labels": True}}
    refresh = parameters({"config": {"model": "x", "rounds": {"warm_from": "champion", "reuse_pseudo_labels": False}}},
                         config=mine)["config"]
    assert refresh == {"model": "mine", "selection": {"theta": 0.3},
                       "rounds": {"warm_from": "champion", "reuse_pseudo_labels": False}}
    assert parameters({"config": {"model": "x"}}, config=mine)["config"] == mine  # no rounds of its own
    assert parameters({"test": "t.parquet"}, config=mine) == {"test": "t.parquet"}  # no config parameter
