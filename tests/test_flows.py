"""The Prefect flows on real Prefect (temporary server in a per-session PREFECT_HOME), tiny model.

Re-executions are counted with the SEMIEVOL_TASK_LOG hook: every task body appends its label when
it really runs, never on a cache hit (tasks/common.py: record_execution).

    pytest tests/test_flows.py            # ~2 min; -m "not slow" skips the evolve runs
"""

from __future__ import annotations

import atexit
import json
import re
import os
import shutil
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# One Prefect home per test session, set before Prefect is imported (it reads its settings then):
# the first flow run in a fresh home spends ~15 s starting the temporary server.
_HOME = Path(tempfile.gettempdir()) / f"semievol-pytest-prefect-{os.getpid()}"
os.environ["PREFECT_HOME"] = str(_HOME)
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from semievol_core import steps  # noqa: E402
from semievol_core.config import SemiEvolConfig  # noqa: E402
from semievol_core.data import read_table  # noqa: E402
from semievol_core.registry import Registry  # noqa: E402

from conftest import sentiment_rows  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _stop_temporary_server():
    """Stop Prefect's temporary server while pytest still captures output (at interpreter exit
    its goodbye line would hit a closed stream)."""
    yield
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogHandler
    from prefect.server.api.server import SubprocessASGIServer

    APILogHandler().flush()  # send buffered run logs and events while the server still listens
    EventsWorker.drain_all(timeout=5)
    for server in list(SubprocessASGIServer._instances.values()):
        server.stop()


def _cfg(model: Path, **over) -> SemiEvolConfig:
    # choice_logprobs: one forward pass per question (fast) and always a parsable letter, so the
    # random tiny model still yields pseudo-labels with entropies for θ to select from.
    # gate.min_gain 100: the gate never promotes on its own here (a random model's gains are
    # noise), so the champion changes only where a test promotes by hand. A section in `over`
    # replaces the one here.
    fields = {"model": str(model), "train": {"epochs": 1, "val_fraction": 0, "early_stopping_patience": None},
              "collaboration": {"mode": "choice_logprobs"},
              "evaluation": {"mode": "choice_logprobs", "bootstrap_samples": 200},
              "execution": {"progress": False, "shard_size": 4}, "gate": {"min_gain": 100.0}}
    return SemiEvolConfig(**{**fields, **over})


def _executed(log: Path) -> list[str]:
    lines = log.read_text().split() if log.exists() else []
    log.write_text("")
    return lines


@pytest.fixture
def task_log(tmp_path, monkeypatch) -> Path:
    log = tmp_path / "executed.txt"
    monkeypatch.setenv("SEMIEVOL_TASK_LOG", str(log))
    return log


# ------------------------------------------------------------------------------ evolve
@pytest.fixture(scope="module")
def base_run(tiny_model_dir, tmp_path_factory):
    """One full evolve run (10 unlabeled questions = 3 shards of 4); the tests below re-run it."""
    from conftest import write_sentiment_dataset
    from flows.evolve import evolve

    root = tmp_path_factory.mktemp("evolve")
    data, out = write_sentiment_dataset(root / "data"), root / "run"
    log = root / "executed.txt"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEMIEVOL_TASK_LOG", str(log))
        report = evolve(str(data), str(out), _cfg(tiny_model_dir))
    first = _executed(log)
    return {"data": data, "out": out, "report": report, "first": first}


def test_a_single_long_step_logs_each_quarter_with_the_time_left(caplog, monkeypatch):
    """A training step runs for minutes with no bar in a quiet run: its task logs 3 lines."""
    import logging

    from tasks.step import _progress_log  # a first import of prefect replaces the root's handlers

    logger = logging.getLogger("tasks.common")  # the task's logger outside a run (tasks.common._logger)
    caplog.set_level("INFO", logger=logger.name)
    logger.addHandler(caplog.handler)
    monkeypatch.setattr(logger, "propagate", False)  # captured once, whether or not root holds caplog
    log = _progress_log("train-warm")
    for k in range(1, 97):  # 96 optimizer updates
        log(k / 96)
    logger.removeHandler(caplog.handler)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(",")[0] for line in lines] == ["train-warm: 25% done", "train-warm: 50% done",
                                                      "train-warm: 75% done"]
    assert all(re.search(r"min so far, ~[0-9.]+ min left$", line) for line in lines)


@pytest.mark.slow
def test_first_run_executes_every_step_once(base_run):
    first = base_run["first"]
    assert first.count("generate") == 3 and first.count("justify") == 3  # one task run per shard
    assert first.count("evaluate-semievol") == first.count("evaluate-vanilla") == 3  # 9 test rows in shards of 4
    for label in ("prepare", "train-warm", "collect", "vote", "collect-justified", "select",
                  "train-final", "plan-test", "score-semievol", "score-vanilla"):
        assert first.count(label) == 1, label
    report = json.loads((base_run["out"] / "report.json").read_text())
    assert set(report["systems"]) == set(steps.SYSTEMS)
    # the promotion gate: no champion yet, so SemiEvol against SFT; min_gain 100 rejects it
    assert report["gate"]["against"] == "sft" and report["gate"]["promote"] is False
    assert report["gate"]["difference"] == report["semievol_vs_sft"]["difference"]
    reg = Registry(base_run["data"] / "registry")
    assert reg.champion() is None and [e["event"] for e in reg.history()] == ["registered", "rejected"]
    assert reg.records()[0]["metrics"] == report["systems"]["semievol"]
    assert report["registry"] == {"id": reg.records()[0]["id"], "champion": None, "promoted": False,
                                  "path": str(reg.root.resolve())}
    assert "**Promotion gate: kept the sft:" in (base_run["out"] / "report.md").read_text()
    assert (base_run["out"] / "report.md").exists() and (base_run["out"] / "semievol_adapter").is_dir()


@pytest.mark.slow
def test_plain_runner_and_flow_give_byte_identical_tables(base_run, tiny_model_dir, tmp_path):
    """The two executors of semievol_core.graph (in process, and every step a Prefect task) write
    the same pseudo-labels and predictions, byte for byte. Runs before the θ test rewrites them."""
    from semievol_core.pipeline import run_semievol

    plain = tmp_path / "plain"
    report = run_semievol(base_run["data"], plain, _cfg(tiny_model_dir))
    tables = ["responses.parquet", "votes.parquet", "justified.parquet", "pseudo_labels.parquet",
              *(f"predictions/{s}.parquet" for s in steps.SYSTEMS)]
    for table in tables:
        assert (plain / table).read_bytes() == (base_run["out"] / table).read_bytes(), table
    assert report["systems"] == base_run["report"]["systems"]
    assert report["selection"] == base_run["report"]["selection"]


@pytest.mark.slow
def test_identical_rerun_executes_no_step_and_gives_the_same_report(base_run, task_log, tiny_model_dir):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.evolve import evolve

    report = evolve(str(base_run["data"]), str(base_run["out"]), _cfg(tiny_model_dir))
    assert _executed(task_log) == []
    for part in ("systems", "selection", "config", "mcnemar_p_semievol_vs_sft"):
        assert json.dumps(report[part], sort_keys=True) == json.dumps(base_run["report"][part], sort_keys=True)
    assert sorted(report["cached_steps"]) == sorted(report["timings"])  # every step of the run a cache hit
    # ...but the report shows what the cached steps took when they were computed
    cached = report["cached_steps"]
    assert set(cached) >= {"train-warm", "generate", "justify", "train-final", "evaluate-semievol"}
    assert "| train-warm |" in (base_run["out"] / "report.md").read_text()
    assert "cached (took" in (base_run["out"] / "report.md").read_text()
    with get_client(sync_client=True) as client:
        # the flow created the `gpu` limit in the temporary server
        assert client.read_global_concurrency_limit_by_name("gpu").limit >= 1
        keys = ["semievol-accuracy", "semievol-selection", "semievol-report", "semievol-generate",
                "semievol-verdict"]
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
        flow_runs = client.read_flow_runs()
        task_names = {t.name for t in client.read_task_runs(limit=200)}
    assert {a.key for a in arts} == set(keys)
    verdict = next(a for a in arts if a.key == "semievol-verdict")
    assert re.search(r"SemiEvol is (not )?better than SFT: [+-]\d+\.\d points \(95% CI", verdict.data)
    # names a person can read in the UI: the flow run by date and dataset, task runs by what they do
    assert any(re.fullmatch(r"evolve-\d{4}-\d{2}-\d{2}-data", r.name) for r in flow_runs)
    assert task_names >= {"prepare", "train-warm", "embed-unlabeled-1/1", "retrieve-test", "generate-1/3",
                          "generate-3/3", "justify-2/3", "select", "train-final", "evaluate-sft-1/3",
                          "evaluate-semievol-3/3", "evaluate-knn_vote-2/3", "score-semievol"}
    # the selected classes by name (the questions all offer negative/neutral/positive)
    assert all(k[0] in "ABC" and k[1:3] == " (" for k in report["selection"]["selected_class_counts"])
    assert all(a.data == 100 for a in arts if a.key == "semievol-generate")  # every shard reported
    table = next(a for a in arts if a.key == "semievol-accuracy")
    assert "ci_low" in str(table.data) and "semievol" in str(table.data)


@pytest.mark.slow
def test_changing_theta_reruns_only_filter_final_train_and_semievol_eval(base_run, task_log, tiny_model_dir):
    from flows.evolve import evolve

    report = evolve(str(base_run["data"]), str(base_run["out"]), _cfg(tiny_model_dir, selection={"theta": 0.8}))
    executed = _executed(task_log)
    # the score and the gate re-run only if the new predictions differ in bytes (a random tiny model
    # may give the same)
    assert sorted(e for e in executed if e not in ("score-semievol", "gate")) == [
        "evaluate-semievol"] * 3 + ["select", "train-final"]
    assert report["selection"]["n_selected"] > base_run["report"]["selection"]["n_selected"]
    assert report["systems"]["sft"] == base_run["report"]["systems"]["sft"]


@pytest.mark.slow
def test_run_killed_in_shard_2_resumes_without_missing_or_duplicated_responses(
        base_run, task_log, tiny_model_dir, monkeypatch):
    """A new temperature invalidates generation (not training); the run dies in shard 2."""
    from flows.evolve import evolve

    cfg = _cfg(tiny_model_dir, collaboration={"mode": "choice_logprobs", "temperature": 0.7})
    real, calls = steps.generate_shard, []

    def crash_in_shard_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected crash in shard 2")
        return real(*args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(steps, "generate_shard", crash_in_shard_2)
        with pytest.raises(RuntimeError, match="injected crash"):
            evolve(str(base_run["data"]), str(base_run["out"]), cfg)
    # shard 1 done, shard 2 failed once: a code error is not retried
    assert _executed(task_log) == ["generate", "generate"]

    report = evolve(str(base_run["data"]), str(base_run["out"]), cfg)
    executed = _executed(task_log)
    assert executed.count("generate") == 2  # shards 2 and 3; shard 1 came from the cache
    assert "train-warm" not in executed and "prepare" not in executed
    responses = steps.load_frame(base_run["out"] / "responses.parquet")
    ids = read_table(base_run["out"] / "data" / "unlabeled.parquet", "unlabeled")["id"]
    assert set(responses["unlabeled_id"]) == set(ids)
    assert not responses.duplicated(["unlabeled_id", "collaborator", "sample"]).any()
    per_question = responses.groupby("unlabeled_id").size()
    assert per_question.nunique() == 1  # every question has every collaborator's responses
    assert report["selection"]["n_unlabeled"] == len(ids)


@pytest.mark.slow
def test_a_challenger_is_gated_against_the_champion_and_a_loser_leaves_it_in_place(base_run, task_log,
                                                                                    tiny_model_dir, capsys):
    """Promote the first run's adapter by hand (the CLI), then a run with another θ: its adapter
    is compared with the champion on the same questions and, losing, leaves the champion as it was."""
    from flows import cli
    from flows.evolve import evolve

    root = base_run["data"] / "registry"
    first = Registry(root).records()[0]["id"]
    assert cli.main(["registry", "promote", "--registry", str(root), first]) == 0
    assert Registry(root).champion_id() == first and capsys.readouterr().out == f"champion: {first}\n"
    report = evolve(str(base_run["data"]), str(base_run["out"]), _cfg(tiny_model_dir, selection={"theta": 0.3}))
    executed = _executed(task_log)
    assert {"evaluate-champion", "gate", "train-final"} <= set(executed) and "train-warm" not in executed
    assert report["gate"]["against"] == "champion" and report["gate"]["promote"] is False
    reg = Registry(root)
    assert reg.champion_id() == first and report["registry"]["champion"] == first
    assert [e["event"] for e in reg.history()][-2:] == ["registered", "rejected"]
    champion_preds = steps.load_frame(base_run["out"] / "predictions" / "champion.parquet")
    assert len(champion_preds) == report["gate"]["n"] == report["systems"]["semievol"]["n"]
    assert cli.main(["registry", "list", "--registry", str(root)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == len(reg.records()) and listed[0].startswith(f"* {first}")
    assert cli.main(["registry", "rollback", "--registry", str(root)]) == 2  # one champion only: nothing before it


def test_cache_key_ignores_execution_settings_and_follows_result_fields(tmp_path):
    from semievol_core import graph
    from tasks.common import content_digest

    table = tmp_path / "t.parquet"
    pd.DataFrame({"x": [1, 2]}).to_parquet(table)
    step = graph.BY_NAME["vote"]  # reads no config; select reads the selection section

    def key(cfg, step=graph.BY_NAME["select"], **extra):
        inputs = {name: str(table) for name in step.inputs} | extra
        return graph.step_key(step, cfg, inputs, digest=content_digest)

    base = SemiEvolConfig()
    assert key(base) == key(SemiEvolConfig(execution={"batch_size": 1, "shard_size": 7, "threads": 2}))
    assert key(base) == key(SemiEvolConfig(model="other"))  # not a field select reads
    assert key(base) != key(SemiEvolConfig(selection={"theta": 0.3}))
    assert key(base, step=step) == key(SemiEvolConfig(selection={"theta": 0.3}), step=step)
    assert key(base) != key(base, answer_type="text")
    before = key(base)
    pd.DataFrame({"x": [1, 3]}).to_parquet(table)  # same path, new content
    assert key(base) != before


# ------------------------------------------------------------------------------ retries
class _FakeOpenAI(BaseHTTPRequestHandler):
    """/v1/chat/completions that fails `fail` times with `status`, then answers "Answer: A". With a
    `key`, a request without `Authorization: Bearer <key>` gets a 401 (counted in `unauthorized`)."""

    state: dict = {}

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.state["lock"]:
            self.state["requests"] += 1
            refused = self.state["key"] is not None and \
                self.headers.get("Authorization") != f"Bearer {self.state['key']}"
            self.state["unauthorized"] += refused
            failing = not refused and self.state["fail"] > 0
            if failing:
                self.state["fail"] -= 1
        if refused:
            body, code = {"error": {"message": "invalid API key"}}, 401
        elif failing:
            body, code = {"error": {"message": "server overloaded (injected)"}}, self.state["status"]
        else:
            body, code = {"choices": [{"index": 0, "message": {"content": "Answer: A"}, "finish_reason": "stop",
                                       "logprobs": {"content": [{"logprob": -0.1}, {"logprob": -0.2}]}}]}, 200
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def fake_server():
    def start(fail: int, status: int = 503, key: str | None = None):
        handler = type("Handler", (_FakeOpenAI,), {"state": {"lock": threading.Lock(), "requests": 0,
                                                             "fail": fail, "status": status, "key": key,
                                                             "unauthorized": 0}})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1", handler.state

    servers: list = []
    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def _openai_cfg(url: str, **backend) -> SemiEvolConfig:
    # concurrency 1: requests go one by one, so exactly the first `fail` requests fail
    return SemiEvolConfig(model="fake-model", evaluation={"mode": "generate", "bootstrap_samples": 100},
                          execution={"backend": {"name": "openai", "base_url": url, **backend}, "concurrency": 1,
                                     "progress": False})


@pytest.fixture
def fast_backoff(monkeypatch):
    from semievol_core.backends.openai_http import OpenAIBackend

    monkeypatch.setattr(OpenAIBackend, "_backoff", lambda self, attempt: 0.0)


def test_transient_http_failures_are_retried_and_the_run_completes(
        sentiment_dataset, tmp_path, task_log, fake_server, fast_backoff):
    from flows.evaluate import evaluate

    # One retry layer: the backend retries the request through all 12 failures within its
    # deadline, and the task runs once (Prefect does not retry it on top). One question
    # (limit=1), so no other request eats failures.
    url, state = fake_server(fail=12)
    res = evaluate(str(sentiment_dataset), str(tmp_path / "eval"), config=_openai_cfg(url), limit=1)
    assert _executed(task_log) == ["prepare-test", "evaluate-model"]
    assert state["fail"] == 0 and state["requests"] == 12 + 1
    assert res["metrics"]["n"] == 1 and res["metrics"]["parse_failure_rate"] == 0
    assert (tmp_path / "eval" / "predictions" / "model.parquet").exists()


def test_non_transient_backend_error_fails_fast(sentiment_dataset, tmp_path, task_log, fake_server, fast_backoff):
    from semievol_core.backends.openai_http import BackendRequestError

    from flows.evaluate import evaluate

    url, state = fake_server(fail=1000, status=400)
    with pytest.raises(BackendRequestError, match="injected"):
        evaluate(str(sentiment_dataset), str(tmp_path / "eval"), config=_openai_cfg(url), limit=1)
    assert _executed(task_log) == ["prepare-test", "evaluate-model"]
    assert state["requests"] == 1


def test_a_dead_server_fails_the_run_by_the_request_deadline_without_task_retries(
        sentiment_dataset, tmp_path, task_log, fake_server):
    from semievol_core.backends.openai_http import TransientBackendError

    from flows.evaluate import evaluate

    url, state = fake_server(fail=10**9)  # always 503, with the backend's real backoff
    with pytest.raises(TransientBackendError, match=r"/v1/chat/completions failed within its 2 s deadline") as info:
        evaluate(str(sentiment_dataset), str(tmp_path / "eval"),
                 config=_openai_cfg(url, request_deadline_seconds=2), limit=1)
    assert _executed(task_log) == ["prepare-test", "evaluate-model"]  # the task ran once
    assert info.value.attempts == state["requests"] >= 2
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------ secrets
@pytest.mark.parametrize("source", ["env", "secret"])
def test_the_api_key_reaches_the_server_and_is_stored_nowhere(source, sentiment_dataset, tmp_path, fake_server,
                                                              monkeypatch, capfd, caplog):
    """The config names where the key is; the backend sends the key; no file of the run, nothing
    Prefect stored (parameters, logs, artifacts, task runs: its whole database) and no log line
    holds it."""
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter,
                                                FlowRunFilterId, LogFilter, LogFilterFlowRunId)
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogHandler

    from flows.evaluate import evaluate

    caplog.set_level("DEBUG")
    key = f"sk-semievol-{uuid.uuid4().hex}"
    if source == "env":
        monkeypatch.setenv("SEMIEVOL_TEST_API_KEY", key)
        reference = "env:SEMIEVOL_TEST_API_KEY"
    else:
        from prefect.blocks.system import Secret

        Secret(value=key).save("semievol-test-api-key", overwrite=True)
        reference = "secret:semievol-test-api-key"
    url, state = fake_server(fail=0, key=key)
    out = tmp_path / "eval"
    flow_state = evaluate(str(sentiment_dataset), str(out), config=_openai_cfg(url, api_key=reference), limit=1,
                          return_state=True)
    assert flow_state.result()["metrics"]["n"] == 1
    assert state["requests"] >= 1 and state["unauthorized"] == 0  # every request carried the key

    APILogHandler().flush()
    EventsWorker.drain_all(timeout=5)
    run_id = flow_state.state_details.flow_run_id
    runs = FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
    with get_client(sync_client=True) as client:
        stored = [client.read_flow_run(run_id), *client.read_task_runs(flow_run_filter=runs),
                  *client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))),
                  *client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
                      any_=[run_id])))]
    api_text = json.dumps([obj.model_dump(mode="json") for obj in stored])
    assert reference in api_text and key not in api_text  # the parameters hold the reference only

    for root in (out, _HOME):  # the run's files (cache entries included); Prefect's database and files
        files = [f for f in root.rglob("*") if f.is_file()]
        assert any(reference.encode() in f.read_bytes() for f in files), root  # the grep sees stored text
        assert [str(f) for f in files if key.encode() in f.read_bytes()] == []
    assert reference in (out / "report.md").read_text()
    captured = capfd.readouterr()
    assert key not in captured.out + captured.err + caplog.text


# ------------------------------------------------------------------------------ ingest
def test_ingest_adds_new_rows_skips_duplicates_quarantines_bad_rows_and_moves_the_file(
        sentiment_dataset, tmp_path, task_log):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.ingest import ingest

    existing = read_table(sentiment_dataset / "unlabeled", "unlabeled")
    dup = existing.iloc[0]  # same question and options as a stored row, under another id
    new = sentiment_rows(2, offset=5000)
    lines = [{"prompt": r["question"], "options": r["options"], "src": "app"} for r in new]
    lines.append({"prompt": dup["question"], "options": list(dup["options"]), "src": "app"})
    lines.append({"prompt": "", "options": ["x", "y"], "src": "app"})  # bad: empty question
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "logs-1.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (inbox / ".partial.jsonl").write_text("{}")  # hidden: still being written, must be left alone

    summary = ingest(str(inbox), str(sentiment_dataset), mapping={"question": "prompt"})
    (res,) = summary["files"]
    assert (res["status"], res["added"], res["already_present"], res["quarantined"]) == ("ingested", 2, 1, 1)
    assert _executed(task_log) == ["ingest-file"]
    part = sentiment_dataset / "unlabeled" / "part-00001.parquet"
    assert res["part"] == str(part)
    added = read_table(part, "unlabeled")
    assert sorted(added["question"]) == sorted(r["question"] for r in new)
    assert json.loads(added["metadata"][0]) == {"src": "app"}
    quarantine = read_table(sentiment_dataset / "quarantine", "quarantine")
    assert len(quarantine) == 1 and quarantine["row"][0] == 4 and "question is empty" in quarantine["reason"][0]
    assert (inbox / "processed" / "logs-1.jsonl").exists() and not (inbox / "logs-1.jsonl").exists()
    assert (inbox / ".partial.jsonl").exists()
    assert len(read_table(sentiment_dataset / "unlabeled", "unlabeled")) == len(existing) + 2

    # The same rows again (a re-sent file): nothing new, nothing duplicated.
    shutil.copy(inbox / "processed" / "logs-1.jsonl", inbox / "logs-2.jsonl")
    again = ingest(str(inbox), str(sentiment_dataset), mapping={"question": "prompt"})
    assert again["added"] == 0 and again["files"][0]["already_present"] == 3
    assert len(read_table(sentiment_dataset / "unlabeled", "unlabeled")) == len(existing) + 2

    # A file missing its mapped column is rejected whole, with the reason next to it.
    (inbox / "broken.csv").write_text("text\nhello\n")
    bad = ingest(str(inbox), str(sentiment_dataset), mapping={"question": "prompt"})
    assert bad["rejected"] == ["broken.csv"]
    assert "prompt" in (inbox / "rejected" / "broken.csv.reason.txt").read_text()
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["semievol-ingest", "semievol-ingest-report"])))
    assert {a.key for a in arts} == {"semievol-ingest", "semievol-ingest-report"}
