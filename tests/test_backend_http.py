"""Tests of OpenAIBackend: retry/backoff against a scripted local HTTP server, then against a real
vLLM OpenAI server (from .venv-vllm) serving SmolLM2-135M and a random LoRA adapter.

    pytest tests/test_backend_http.py                 # all (vLLM part skips without .venv-vllm)
    pytest tests/test_backend_http.py -m "not vllm"   # the fast scripted-server part only
"""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from semievol_core.backends.base import ANSWER_PREFIX, Sampling, letter_token_ids
from semievol_core.backends.openai_http import (
    BackendRequestError,
    OpenAIBackend,
    TransientBackendError,
)

try:  # `tests` is a package only when the repo root is on sys.path (python -m pytest)
    from tests.vllm_server import vllm_available
except ImportError:  # plain `pytest` puts tests/ itself on sys.path
    from vllm_server import vllm_available

CHAT = [{"role": "user", "content": "Say hi."}]
MCQ = [
    {
        "role": "user",
        "content": "Question: What is 2 + 2?\nA) 3\nB) 4\nC) 5\nReply with the letter of the answer.",
    }
]


# ---- a scripted OpenAI-ish server ----------------------------------------------------------


def chat_body(n: int = 1, text: str = "hi", logprobs=(-0.5, -0.25), finish: str = "stop") -> dict:
    content = [{"token": f"t{i}", "logprob": lp, "top_logprobs": []} for i, lp in enumerate(logprobs)]
    return {
        "object": "chat.completion",
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": f"{text}{i}"},
                "logprobs": {"content": content},
                "finish_reason": finish,
            }
            for i in range(n)
        ],
    }


class Step:
    """One scripted reply: status, JSON body (or a function of the request payload), delay."""

    def __init__(self, status: int = 200, body: Any = None, delay: float = 0.0, headers: dict | None = None):
        self.status, self.body, self.delay, self.headers = status, body, delay, headers or {}


class ScriptedServer:
    """ThreadingHTTPServer on 127.0.0.1 replying with `steps` in order (the last one repeats)."""

    def __init__(self, steps: list[Step]):
        self.steps = list(steps)
        self.requests: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self.inflight = 0
        self.max_inflight = 0
        script = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def _reply(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                payload = json.loads(self.rfile.read(length) or b"{}")
                with script.lock:
                    script.requests.append((self.path, payload))
                    step = script.steps.pop(0) if len(script.steps) > 1 else script.steps[0]
                    script.inflight += 1
                    script.max_inflight = max(script.max_inflight, script.inflight)
                try:
                    time.sleep(step.delay)
                finally:  # in flight = being worked on: counted down before the reply goes out, so
                    with script.lock:  # a client that read it and sent its next one is not counted twice
                        script.inflight -= 1
                try:
                    body = step.body(payload) if callable(step.body) else step.body
                    data = json.dumps(body if body is not None else {}).encode()
                    self.send_response(step.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for key, value in step.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            do_GET = _reply
            do_POST = _reply

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True  # handlers still sleeping on a timed-out request don't block close
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "ScriptedServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def fast_backend(url: str, **kwargs: Any) -> OpenAIBackend:
    kwargs.setdefault("backoff_base", 0.01)
    kwargs.setdefault("backoff_max", 0.05)
    return OpenAIBackend(url, "m", **kwargs)


def test_retries_429_and_5xx_then_succeeds():
    steps = [Step(429, {"error": {"message": "slow down"}}), Step(503), Step(500), Step(200, chat_body(n=2))]
    with ScriptedServer(steps) as srv, fast_backend(srv.url, max_retries=5) as backend:
        gens = backend.generate([CHAT], Sampling(n=2, max_tokens=8, seed=3))
    assert len(srv.requests) == 4
    assert [g.text for g in gens[0]] == ["hi0", "hi1"]
    assert gens[0][0].token_logprobs == [-0.5, -0.25]
    assert gens[0][0].mean_nll == pytest.approx(0.375)


def test_request_payload_and_adapter_mapping():
    with ScriptedServer([Step(200, chat_body(n=3, finish="length"))]) as srv:
        backend = fast_backend(srv.url, adapters={"/runs/r1/adapter": "r1"})
        sampling = Sampling(n=3, temperature=0.7, top_p=0.9, max_tokens=5, seed=11, stop=("\n",))
        gens = backend.generate([CHAT], sampling, adapter="/runs/r1/adapter")
        backend.generate([CHAT], sampling, adapter="served-name")
        backend.generate([CHAT], sampling)
        backend.unload()
    path, payload = srv.requests[0]
    assert path == "/v1/chat/completions"
    assert payload == {
        "model": "r1", "messages": CHAT, "n": 3, "temperature": 0.7, "top_p": 0.9,
        "max_tokens": 5, "seed": 11, "logprobs": True, "stop": ["\n"],
    }
    assert [p["model"] for _, p in srv.requests] == ["r1", "served-name", "m"]
    assert all(g.finish_reason == "length" for g in gens[0])


def test_tops_up_when_server_ignores_n():
    with ScriptedServer([Step(200, chat_body(n=1))]) as srv:
        gens = fast_backend(srv.url).generate([CHAT], Sampling(n=3, seed=5))
    assert len(gens[0]) == 3
    assert [p["seed"] for _, p in srv.requests] == [5, 6, 7]
    assert [p["n"] for _, p in srv.requests] == [3, 1, 1]


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_errors_fail_fast_with_server_message(status):
    body = {"error": {"message": f"bad request number {status}", "type": "BadRequestError", "code": status}}
    with ScriptedServer([Step(status, body)]) as srv:
        with pytest.raises(BackendRequestError, match=f"bad request number {status}") as info:
            fast_backend(srv.url, max_retries=5).generate([CHAT], Sampling())
    assert info.value.status == status
    assert len(srv.requests) == 1


def test_5xx_exhausts_retries_into_transient_error():
    with ScriptedServer([Step(503, {"message": "overloaded"})]) as srv:
        with pytest.raises(TransientBackendError, match="overloaded") as info:
            fast_backend(srv.url, max_retries=3).generate([CHAT], Sampling())
    assert len(srv.requests) == 4
    assert info.value.status == 503 and info.value.attempts == 4


def test_timeouts_are_retried_then_raised_as_transient():
    with ScriptedServer([Step(200, chat_body(), delay=1.0)]) as srv:
        backend = fast_backend(srv.url, timeout=0.2, max_retries=2)
        t0 = time.monotonic()
        with pytest.raises(TransientBackendError, match="timed out") as info:
            backend.generate([CHAT], Sampling())
        elapsed = time.monotonic() - t0
        # Wait for the handlers to have logged all three attempts.
        deadline = time.monotonic() + 5
        while len(srv.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(srv.requests) == 3
    assert info.value.status is None
    assert elapsed < 2.5  # 3 x 0.2 s timeouts + short backoffs, not 3 x 1 s


def test_timeout_then_success():
    steps = [Step(200, chat_body(), delay=1.0), Step(200, chat_body(text="ok"))]
    with ScriptedServer(steps) as srv:
        gens = fast_backend(srv.url, timeout=0.3, max_retries=2).generate([CHAT], Sampling())
    assert gens[0][0].text == "ok0"


def test_connection_refused_is_transient():
    with ScriptedServer([Step()]) as srv:
        url = srv.url
    # The server is closed now: nothing listens on that port.
    with pytest.raises(TransientBackendError, match="connection failed"):
        fast_backend(url, max_retries=1).generate([CHAT], Sampling())


def test_retry_after_header_is_honoured():
    steps = [Step(429, {}, headers={"Retry-After": "0.3"}), Step(200, chat_body())]
    with ScriptedServer(steps) as srv:
        t0 = time.monotonic()
        fast_backend(srv.url, backoff_max=1.0).generate([CHAT], Sampling())
    assert time.monotonic() - t0 >= 0.3


# ---- one deadline per request: a dead, silent or trickling server fails the call in time ------

SLACK = 0.4  # seconds past the deadline a loaded 2-core test machine may add


def _call(backend: OpenAIBackend) -> tuple[TransientBackendError, float]:
    t0 = time.monotonic()
    with pytest.raises(TransientBackendError) as info:
        backend.generate([CHAT], Sampling())
    return info.value, time.monotonic() - t0


def test_an_always_503_server_fails_by_the_deadline_in_one_line_naming_the_url():
    with ScriptedServer([Step(503, {"error": {"message": "overloaded\n(injected)"}})]) as srv:
        err, elapsed = _call(OpenAIBackend(srv.url, "m", deadline=1.0, backoff_base=0.05, backoff_max=0.2))
    assert elapsed < 1.0 + SLACK
    assert str(err) == (f"POST {srv.url}/v1/chat/completions failed within its 1 s deadline "
                        f"({len(srv.requests)} attempts): HTTP 503: overloaded (injected)")
    assert err.attempts == len(srv.requests) >= 4 and err.status == 503


def test_a_server_that_never_answers_fails_by_the_deadline():
    import socket

    with socket.socket() as silent:  # the kernel accepts connections (backlog), nobody answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        err, elapsed = _call(OpenAIBackend(url, "m", deadline=1.0, timeout=120))
    assert elapsed < 1.0 + SLACK
    assert str(err) == f"POST {url}/v1/chat/completions failed within its 1 s deadline (1 attempt): timed out (ReadTimeout)"


def test_a_server_trickling_its_reply_is_cut_off_by_the_deadline():
    # httpx's read timeout restarts at every byte: only the deadline stops this one.
    import socket

    def trickle(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n")
            try:
                for _ in range(100):
                    time.sleep(0.2)
                    conn.sendall(b" ")
            except OSError:  # the client gave up
                pass

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        threading.Thread(target=lambda: trickle(srv.accept()[0]), daemon=True).start()
        url = f"http://127.0.0.1:{srv.getsockname()[1]}"
        err, elapsed = _call(OpenAIBackend(url, "m", deadline=1.0, timeout=5))
    assert elapsed < 1.0 + 0.2 + SLACK  # at most one byte's wait past the deadline
    assert "within its 1 s deadline (1 attempt): timed out" in str(err)


def test_a_retry_after_beyond_the_deadline_gives_up_at_once():
    with ScriptedServer([Step(503, {}, headers={"Retry-After": "60"})]) as srv:
        err, elapsed = _call(OpenAIBackend(srv.url, "m", deadline=5.0))
    assert elapsed < 1.0 and err.attempts == 1 == len(srv.requests)


def test_concurrency_is_bounded_and_order_kept():
    def body(payload: dict) -> dict:
        return chat_body(text=payload["messages"][0]["content"])

    chats = [[{"role": "user", "content": f"q{i}"}] for i in range(6)]
    with ScriptedServer([Step(200, body, delay=0.15)]) as srv:
        gens = fast_backend(srv.url, concurrency=2).generate(chats, Sampling())
    assert [g[0].text for g in gens] == [f"q{i}0" for i in range(6)]
    assert srv.max_inflight == 2


def test_a_failure_stops_the_requests_not_yet_sent():
    # 40 chats, 2 at a time; the 3rd request gets a 400: the rest of the batch must not be sent.
    steps = [Step(200, chat_body(), delay=0.05)] * 2 + [Step(400, {"error": {"message": "no such adapter"}})] + \
            [Step(200, chat_body(), delay=0.05)]
    chats = [[{"role": "user", "content": f"q{i}"}] for i in range(40)]
    with ScriptedServer(steps) as srv:
        with pytest.raises(BackendRequestError, match="no such adapter"):
            fast_backend(srv.url, concurrency=2).generate(chats, Sampling())
        sent = len(srv.requests)
        time.sleep(0.3)  # nothing keeps trickling in after the call returned
        assert len(srv.requests) == sent
    assert sent <= 5


def test_missing_logprobs_is_an_error():
    body = chat_body()
    body["choices"][0]["logprobs"] = None
    with ScriptedServer([Step(200, body)]) as srv:
        with pytest.raises(BackendRequestError, match="no logprobs"):
            fast_backend(srv.url).generate([CHAT], Sampling())


# ---- choice_logprobs parsing (needs the SmolLM2 tokenizer, no model run) ----------------------


@pytest.fixture(scope="module")
def model_dir() -> Path:
    from semievol_core.models import resolve_model

    try:
        return Path(resolve_model("smollm2-135m-instruct"))
    except FileNotFoundError as exc:
        pytest.skip(f"SmolLM2 not available: {exc}")


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def _floor(returned: list[float]) -> float:
    return min(min(returned), math.log(1 - sum(math.exp(v) for v in returned)))


def test_choice_logprobs_vllm_format_with_floor(model_dir, tokenizer):
    # vLLM's legacy completions format: top_logprobs = [{token_text: logprob}]; " C" is missing.
    top = {" A": -0.5, " B": -1.5, "_": -3.0}
    logprobs = {"tokens": [" A"], "token_logprobs": [-0.5], "top_logprobs": [top]}
    body = {"choices": [{"text": " A", "logprobs": logprobs}]}
    with ScriptedServer([Step(200, body)]) as srv:
        backend = fast_backend(srv.url, tokenizer=str(model_dir))
        lp = backend.choice_logprobs([MCQ, CHAT], ["A", "B", "C"])
    assert lp.shape == (2, 3) and lp.dtype == np.float32
    expected = [-0.5, -1.5, _floor(list(top.values()))]
    np.testing.assert_allclose(lp, [expected, expected], rtol=1e-6)
    assert {path for path, _ in srv.requests} == {"/v1/completions"}
    for _, payload in srv.requests:
        assert payload["max_tokens"] == 1 and payload["logprobs"] == 20 and payload["temperature"] == 0.0
    # The two chats go out concurrently, so compare prompts as a set.
    want = []
    for chat in (MCQ, CHAT):
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) + ANSWER_PREFIX
        want.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert sorted(p["prompt"] for _, p in srv.requests) == sorted(want)


def test_choice_logprobs_llama_cpp_format(model_dir, tokenizer):
    # llama.cpp: logprobs.content[0].top_logprobs = [{id, token, logprob}]; matched by token id.
    a, b, c = letter_token_ids(tokenizer, ["A", "B", "C"])
    tops = [{"id": a, "token": " A", "logprob": -2.0}, {"id": c, "token": " C", "logprob": -0.2},
            {"id": 7, "token": "x", "logprob": -4.0}]
    first = {"id": c, "token": " C", "logprob": -0.2, "top_logprobs": tops}
    body = {"choices": [{"text": " C", "logprobs": {"content": [first]}}]}
    with ScriptedServer([Step(200, body)]) as srv:
        lp = fast_backend(srv.url, tokenizer=str(model_dir)).choice_logprobs([MCQ], ["A", "B", "C"])
    np.testing.assert_allclose(lp[0], [-2.0, _floor([-2.0, -0.2, -4.0]), -0.2], rtol=1e-6)


# ---- a real vLLM server ---------------------------------------------------------------------

_VLLM_OK, _VLLM_WHY = vllm_available()
needs_vllm = pytest.mark.skipif(not _VLLM_OK, reason=_VLLM_WHY or "vllm unavailable")


@pytest.fixture
def backend(vllm_server, model_dir):
    b = OpenAIBackend(
        vllm_server.base_url, "smollm2", tokenizer=str(model_dir), concurrency=4, timeout=60,
        adapters={str(vllm_server.lora_dir): "rand"},
    )
    yield b
    b.unload()


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_vllm_generate_n2_with_token_logprobs(backend):
    sampling = Sampling(n=2, temperature=1.0, max_tokens=12, seed=7)
    gens = backend.generate([CHAT, MCQ], sampling)
    assert [len(g) for g in gens] == [2, 2]
    for gen in (g for row in gens for g in row):
        assert gen.num_tokens >= 1 and all(lp <= 0.0 for lp in gen.token_logprobs)
        assert all(math.isfinite(lp) for lp in gen.token_logprobs)
        if gen.finish_reason == "length":
            assert gen.num_tokens == sampling.max_tokens  # one logprob per emitted token
        else:
            assert gen.num_tokens <= sampling.max_tokens
    # The two samples of one prompt are different draws (vLLM seeds them seed+0, seed+1).
    assert gens[0][0].token_logprobs != gens[0][1].token_logprobs


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_vllm_seeded_calls_reproduce(backend):
    sampling = Sampling(n=2, temperature=1.0, max_tokens=12, seed=123)
    first = backend.generate([CHAT], sampling)
    second = backend.generate([CHAT], sampling)
    other = backend.generate([CHAT], Sampling(n=2, temperature=1.0, max_tokens=12, seed=124))
    assert [g.text for g in first[0]] == [g.text for g in second[0]]
    for a, b in zip(first[0], second[0]):
        np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, atol=1e-4)
    assert [g.text for g in first[0]] != [g.text for g in other[0]]


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_vllm_choice_logprobs_match_transformers(backend, model_dir, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    lp = backend.choice_logprobs([MCQ, CHAT], ["A", "B", "C"])
    assert lp.shape == (2, 3) and lp.dtype == np.float32
    assert np.isfinite(lp).all() and (lp <= 0).all()

    # The same numbers from transformers: raw log-softmax of the next-token logits.
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    ids = letter_token_ids(tokenizer, ["A", "B", "C"])
    for row, chat in zip(lp, [MCQ, CHAT]):
        prompt = torch.tensor([backend.prompt_ids(chat)])
        with torch.no_grad():
            ref = torch.log_softmax(model(prompt).logits[0, -1].float(), -1)
        top20 = ref.topk(20).values[-1].item()
        for got, tid in zip(row, ids):
            want = ref[tid].item()
            assert want <= got + 1e-3  # in the top-20 exact, else the floor (an upper bound)
            if want >= top20 + 1e-3:
                assert got == pytest.approx(want, abs=2e-3)


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_vllm_lora_adapter_changes_distribution(backend, vllm_server):
    assert "rand" in backend.served_models()
    base = backend.choice_logprobs([MCQ, CHAT], ["A", "B", "C"])
    by_name = backend.choice_logprobs([MCQ, CHAT], ["A", "B", "C"], adapter="rand")
    by_path = backend.choice_logprobs([MCQ, CHAT], ["A", "B", "C"], adapter=str(vllm_server.lora_dir))
    np.testing.assert_allclose(by_name, by_path, atol=1e-4)
    assert np.abs(by_name - base).max() > 0.05
    greedy = Sampling(n=1, temperature=0.0, max_tokens=8, seed=0)
    with_lora = backend.generate([MCQ], greedy, adapter="rand")[0][0]
    without = backend.generate([MCQ], greedy)[0][0]
    assert with_lora.token_logprobs != without.token_logprobs


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_vllm_unknown_adapter_fails_fast(backend):
    with pytest.raises(BackendRequestError, match="no-such-adapter") as info:
        backend.generate([CHAT], Sampling(max_tokens=2), adapter="no-such-adapter")
    assert info.value.status == 404


# ---- several servers (replicas) ------------------------------------------------------------


def _echo(payload: dict) -> dict:
    return chat_body(text=payload["messages"][0]["content"])


def test_requests_spread_over_replicas_each_bounded_by_concurrency():
    chats = [[{"role": "user", "content": f"q{i}"}] for i in range(12)]
    with ScriptedServer([Step(200, _echo, delay=0.1)]) as a, ScriptedServer([Step(200, _echo, delay=0.1)]) as b:
        gens = fast_backend([a.url, b.url], concurrency=2).generate(chats, Sampling())
    assert [g[0].text for g in gens] == [f"q{i}0" for i in range(12)]  # order kept across servers
    assert len(a.requests) + len(b.requests) == 12 and a.requests and b.requests
    assert a.max_inflight == 2 and b.max_inflight == 2  # 4 in flight in all, never 3 on one server


def test_a_dead_replica_costs_one_attempt_per_request_not_the_call():
    import socket

    with socket.socket() as closed:  # a port nobody listens on: connection refused
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
    chats = [[{"role": "user", "content": f"q{i}"}] for i in range(8)]
    with ScriptedServer([Step(200, _echo)]) as alive:
        # max_retries=1: a request whose retry went back to the dead replica would fail the call
        gens = fast_backend([dead, alive.url], concurrency=2, max_retries=1, deadline=60).generate(chats, Sampling())
    assert [g[0].text for g in gens] == [f"q{i}0" for i in range(8)]
    assert len(alive.requests) == 8


def test_every_replica_failing_names_the_last_url_and_the_attempts():
    with ScriptedServer([Step(503, {"error": {"message": "down"}})]) as a, \
            ScriptedServer([Step(503, {"error": {"message": "down"}})]) as b:
        with pytest.raises(TransientBackendError) as info:
            fast_backend([a.url, b.url], max_retries=3).generate([CHAT], Sampling())
    err = info.value
    assert err.attempts == 4 and len(a.requests) == 2 and len(b.requests) == 2  # alternating
    assert str(err) == f"POST {b.url}/v1/chat/completions failed after 4 attempts: HTTP 503: down"  # a, b, a, b


def test_a_call_deadline_bounds_the_whole_batch_in_one_line():
    """Each request alone is fast enough for its own deadline, but a batch of 6 at 1 in flight
    cannot finish inside the call's: the call fails naming that deadline, and the requests not
    yet sent are never sent."""
    chats = [[{"role": "user", "content": f"q{i}"}] for i in range(6)]
    with ScriptedServer([Step(200, _echo, delay=0.4)]) as srv:
        backend = fast_backend(srv.url, concurrency=1, deadline=60, call_deadline=1.0)
        with pytest.raises(TransientBackendError) as info:
            backend.generate(chats, Sampling())
        sent = len(srv.requests)
    assert "failed within the call's 1 s deadline" in str(info.value) and "\n" not in str(info.value)
    assert sent < 6
    with ScriptedServer([Step(200, _echo, delay=0.05)]) as srv:  # a batch that fits passes
        assert len(fast_backend(srv.url, concurrency=1, call_deadline=30).generate(chats, Sampling())) == 6


def test_the_config_takes_a_list_of_replicas_and_a_call_deadline():
    from pydantic import ValidationError

    from semievol_core.config import SemiEvolConfig
    from semievol_core.steps import backend_options

    cfg = SemiEvolConfig(execution={"backend": {"name": "openai", "base_url": ["http://a:8000/v1", "http://b:8000"],
                                                "call_deadline_seconds": 900}})
    _, opts = backend_options(cfg)
    assert opts["base_url"] == ["http://a:8000/v1", "http://b:8000"] and opts["call_deadline"] == 900
    backend = OpenAIBackend(opts["base_url"], "m", call_deadline=opts["call_deadline"])
    assert backend.base_urls == ["http://a:8000/v1", "http://b:8000/v1"]
    for empty in ([], [""], ["http://a:8000", " "]):
        with pytest.raises(ValidationError, match="at least one server URL, none of them empty"):
            SemiEvolConfig(execution={"backend": {"name": "openai", "base_url": empty}})


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_a_run_asks_a_teacher_served_by_vllm(vllm_server, backend, model_dir, tiny_model_dir, sentiment_dataset,
                                              tmp_path):
    """The run's own model is the tiny Llama, in process; the teacher is SmolLM2 on the vLLM server.
    The teacher rows of the run's responses carry the server's letter scores, not the run model's."""
    from semievol_core.config import SemiEvolConfig
    from semievol_core.data import read_table
    from semievol_core.letter_scores import read_letter_reply
    from semievol_core.pipeline import run_semievol
    from semievol_core.prompts import question_chat
    from semievol_core.steps import load_frame, unload_backends

    cfg = SemiEvolConfig(
        model=str(tiny_model_dir),
        collaboration={"mode": "choice_logprobs", "teacher": str(model_dir),
                       "collaborators": [{"model": "warm", "n_demos": 0}, {"model": "teacher", "n_demos": 0}]},
        justification={"max_new_tokens": 4}, train={"epochs": 1, "val_fraction": 0, "early_stopping_patience": None},
        execution={"teacher_backend": {"name": "openai", "base_url": vllm_server.base_url, "served_model": "smollm2"},
                   "progress": False, "shard_size": 4})
    try:
        report = run_semievol(sentiment_dataset, tmp_path / "run", cfg, systems=["knn_vote"], pseudo_labels=True)
    finally:
        unload_backends()
    assert report["selection"]["n_unlabeled"] == 10
    resp = load_frame(tmp_path / "run" / "responses.parquet")
    teacher = resp[resp["model"] == "teacher"].set_index("unlabeled_id")
    assert sorted(resp["model"].unique()) == ["teacher", "warm"] and len(teacher) == 10
    unl = read_table(sentiment_dataset / "unlabeled", "unlabeled").set_index("id").loc[teacher.index]
    served = backend.choice_logprobs([question_chat(q, o, []) for q, o in zip(unl["question"], unl["options"])],
                                     ["A", "B", "C"])
    got = np.array([list(read_letter_reply(t).values()) for t in teacher["text"]])
    np.testing.assert_allclose(got, served, atol=2e-3)
    warm = resp[resp["model"] == "warm"].set_index("unlabeled_id").loc[teacher.index]
    warm_lp = np.array([list(read_letter_reply(t).values()) for t in warm["text"]])
    assert np.abs(warm_lp - served).max() > 0.1  # the tiny model's scores are another model's
