"""The `semievol` command line, run as a subprocess like a user would (help, one-line errors, a real
run), and in-process for what reaches the flows (`--set`, presets, shortcuts) without running them.

    pytest tests/test_cli.py
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from flows import cli

ROOT = Path(__file__).resolve().parents[1]
# A Prefect home for the subprocesses (never the user's ~/.prefect). Not test_flows.py's: a
# subprocess starts its own temporary server, and two servers on one SQLite file step on each other.
_HOME = Path(tempfile.gettempdir()) / f"semievol-pytest-prefect-cli-{os.getpid()}"
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)


def semievol(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("semievol")  # the console script pyproject.toml installs
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "flows.cli"]
    env = {**os.environ, "PREFECT_HOME": str(_HOME)}
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_SERVER_ANALYTICS_ENABLED", None)  # the CLI's own default must keep runs quiet
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert lines[0].startswith("semievol: error: ")
    return lines[0]


def test_help_lists_commands_and_examples():
    res = semievol("--help")
    assert res.returncode == 0
    for word in ("evolve", "evaluate", "ingest", "import-csv", "examples:", "--preset fpb-small"):
        assert word in res.stdout
    for cmd in ("evolve", "evaluate", "ingest", "import-csv"):
        sub = semievol(cmd, "--help")
        assert sub.returncode == 0 and "example" in sub.stdout, cmd


def test_bad_csv_gives_one_line_naming_file_row_and_column(tmp_path):
    src = tmp_path / "paper"
    src.mkdir()
    good = 'question,options,answer\nQ1,"[""up"", ""down""]",A\n'
    (src / "labeled.csv").write_text(good + 'Q2,"[""up"", ""down""]",F\n')
    (src / "test.csv").write_text(good)
    line = one_line_error(semievol("import-csv", str(src), "--out", str(tmp_path / "ds")))
    assert "paper/labeled.csv row 2, column 'answer'" in line and "'F'" in line
    assert not (tmp_path / "ds").exists()

    ok = semievol("import-csv", str(src), "--out", str(tmp_path / "ds"), "--skip-bad-rows")
    assert ok.returncode == 0, ok.stderr
    assert "quarantined: 1" in ok.stdout


def test_user_errors_are_one_line_without_starting_prefect(tmp_path, sentiment_dataset):
    assert "dataset directory not found" in one_line_error(
        semievol("evolve", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")))
    assert "theta" in one_line_error(
        semievol("evolve", "--data", str(sentiment_dataset), "--out", str(tmp_path / "run"), "--theta", "3"))
    cfg = tmp_path / "run.yaml"
    cfg.write_text("selection: {theta: 0.5}\ncollaboration: {n_collaborators: 0}\nwhat: 1\n")
    line = one_line_error(semievol("evolve", "--data", str(sentiment_dataset), "--out", str(tmp_path / "r"),
                                   "--config", str(cfg)))
    assert "collaboration.n_collaborators" in line and "what" in line
    cfg.write_text("theta: 0.5\nselection: {theta: 0.4}\n")  # one field, flat and nested
    assert one_line_error(semievol("evolve", "--data", str(sentiment_dataset), "--out", str(tmp_path / "r"),
                                   "--config", str(cfg))) == (
        f"semievol: error: {cfg}: theta and selection.theta both given (one field, flat and nested): keep "
        "selection.theta")
    cfg.write_text("theta: 0.5\neval_mode: generate\n")  # a flat config of old: one note, then the run
    res = semievol("evolve", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"), "--config", str(cfg))
    assert res.stderr.strip().splitlines() == [
        "config: flat keys moved: theta -> selection.theta, eval_mode -> evaluation.mode (rewrite with the nested "
        "names)", f"semievol: error: {tmp_path / 'missing'}: dataset directory not found"]
    line = one_line_error(semievol("evolve", "--data", str(sentiment_dataset), "--out", str(tmp_path / "r"),
                                   "--set", "train.epoch=3"))
    assert "train.epoch: Extra inputs are not permitted" in line
    # a usage error (typer's parsing) is one line too, pointing at the command's help
    line = one_line_error(semievol("evolve", "--data", str(sentiment_dataset), "--out", str(tmp_path / "r"),
                                   "--limit-labeled", "0"))
    assert "'--limit-labeled'" in line and "semievol evolve --help" in line
    # a broken table in the dataset: caught before any flow run
    pd.DataFrame({"id": ["a"], "question": ["q"], "options": [["x", "y"]], "answer": ["Z"],
                  "metadata": ["{}"]}).to_parquet(sentiment_dataset / "labeled.parquet")
    line = one_line_error(semievol("evolve", "--data", str(sentiment_dataset), "--out", str(tmp_path / "r")))
    assert "labeled.parquet" in line and "'answer'" in line
    assert "inbox directory not found" in one_line_error(
        semievol("ingest", str(tmp_path / "nope"), "--into", str(sentiment_dataset)))
    assert not (tmp_path / "run").exists() and not (tmp_path / "r").exists()


def test_set_overrides_nested_fields_on_top_of_the_preset():
    cfg = cli._load_config(None, cli.PRESETS["fpb-small"], {"selection.theta": 0.3, "model": None},
                           ["train.epochs=2", "execution.batch_size=8", "train.early_stopping_patience=3",
                            "collaboration.collaborators=[{model: base, n_demos: 0}]"])
    assert (cfg.train.epochs, cfg.execution.batch_size, cfg.train.early_stopping_patience) == (2, 8, 3)
    assert [c.name for c in cfg.collaboration.collaborators] == ["base-0shot"]
    assert cfg.selection.theta == 0.3 and cfg.model == "smollm2-135m-instruct"  # shortcut given / not given
    # the preset's file still applies where nothing overrides it
    assert (cfg.train.max_steps, cfg.selection.agreement, cfg.execution.shard_size) == (96, "knn", 128)
    assert cfg.collaboration.knn_collaborator and cfg.selection.class_quota == "prior"
    # --set comes after the shortcuts; an empty value is null; a flat name of old still works
    cfg = cli._load_config(None, None, {"selection.theta": 0.3}, ["theta=0.4", "system_prompt=", "train.max_steps="])
    assert (cfg.selection.theta, cfg.system_prompt, cfg.train.max_steps) == (0.4, None, None)


def test_evolve_command_hands_the_flow_the_overridden_config(tmp_path, sentiment_dataset, monkeypatch):
    import flows.evolve
    from semievol_core.steps import Limits

    received = {}

    def flow_without_server(**kwargs):  # what the flow would receive, without Prefect or a model
        received.update(kwargs)
        return {"systems": {}, "selection": {"n_selected": 0, "n_unlabeled": 0}}

    monkeypatch.setattr(flows.evolve, "evolve", flow_without_server)
    assert cli.main(["evolve", "--data", str(sentiment_dataset), "--out", str(tmp_path / "run"),
                     "--preset", "fpb-tiny", "--theta", "0.3", "--set", "train.epochs=2",
                     "--set", "execution.batch_size=8", "--limit-test", "7", "--systems", "sft",
                     "--no-progress"]) == 0
    cfg = received["config"]
    assert (cfg.selection.theta, cfg.train.epochs, cfg.execution.batch_size, cfg.execution.progress) == (
        0.3, 2, 8, False)
    assert received["limits"] == Limits(labeled=32, unlabeled=32, test=7)  # the preset's, then --limit-test
    assert received["systems"] == ["sft"]
    # --workers / --cluster are execution.workers / execution.cluster; both at once is one line
    assert cli.main(["evolve", "--data", str(sentiment_dataset), "--out", str(tmp_path / "run"), "--workers", "2",
                     "--no-progress"]) == 0
    assert (received["config"].execution.workers, received["config"].execution.cluster) == (2, None)
    assert cli.main(["evolve", "--data", str(sentiment_dataset), "--out", str(tmp_path / "run"),
                     "--cluster", "tcp://dask:8786"]) == 0
    assert received["config"].execution.cluster == "tcp://dask:8786"
    assert received["config"].execution.engine == "dask"  # the default engine
    assert cli.main(["evolve", "--data", str(sentiment_dataset), "--out", str(tmp_path / "run"),
                     "--cluster", "ray://head:10001", "--engine", "ray"]) == 0
    assert (received["config"].execution.cluster, received["config"].execution.engine) == ("ray://head:10001", "ray")
    line = one_line_error(semievol("evolve", "--data", str(sentiment_dataset), "--out", str(tmp_path / "r"),
                                   "--cluster", "ray://head:10001"))
    assert "cluster='ray://head:10001' is a Ray address but engine='dask'; set engine to ray" in line
    line = one_line_error(semievol("evolve", "--data", str(sentiment_dataset), "--out", str(tmp_path / "r"),
                                   "--workers", "2", "--cluster", "tcp://dask:8786"))
    assert "workers=2 starts a cluster on this machine and cluster='tcp://dask:8786' names a running one" in line


@pytest.mark.parametrize("pair,expected", [
    ("train.epoch=3", "train.epoch: Extra inputs are not permitted (got 3)"),
    ("thta=0.3", "thta: Extra inputs are not permitted"),
    ("selection.theta=2", "selection.theta: Input should be less than or equal to 1 (got 2)"),
    ("theta=2", "selection.theta: Input should be less than or equal to 1 (got 2)"),  # the flat name of old
    ("selection=2", "selection: Input should be a valid dictionary or instance of SelectionConfig (got 2)"),
    ("execution.batch_size=big", "execution.batch_size: Input should be a valid integer"),
    ("theta", "--set 'theta': expected KEY=VALUE"),
])
def test_bad_set_is_one_line_naming_the_key(tmp_path, pair, expected):
    res = CliRunner().invoke(cli.app, ["evolve", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                                       "--set", "execution.threads=1", "--set", pair])
    assert res.exit_code == 2, (res.output, res.exception)
    assert res.stderr.splitlines() == [res.stderr.strip()] and res.stderr.startswith("semievol: error: ")
    assert expected in res.stderr and not res.stdout
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_evaluate_command_runs_a_flow_through_prefect(tmp_path, sentiment_dataset, tiny_model_dir):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"model: {tiny_model_dir}\nevaluation: {{mode: choice_logprobs, bootstrap_samples: 100}}\n")
    res = semievol("evaluate", "--test", str(sentiment_dataset), "--out", str(tmp_path / "eval"),
                   "--config", str(cfg), "--limit", "3", "--no-progress", timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| model |" in res.stdout
    assert "Flow run" in res.stderr  # Prefect's run logger
    # a quiet run: no ERROR line (the temporary server's telemetry cannot reach the internet)
    assert not [line for line in res.stderr.splitlines() if "| ERROR" in line], res.stderr[-3000:]
    assert "Loading weights" not in res.stderr  # no bar per model load (models.quiet_loading)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 3 and (tmp_path / "eval" / "report.md").exists()
    shutil.rmtree(tmp_path / "eval")
