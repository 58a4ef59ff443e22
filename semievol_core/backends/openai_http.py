"""Backend over an OpenAI-compatible HTTP server (vLLM's `api_server`, llama.cpp's `llama-server`).

    backend = OpenAIBackend("http://127.0.0.1:8000", model="smollm2", api_key=SecretStr("sk-..."),
                            adapters={"/runs/r1/adapter": "r1"},   # served LoRA name per adapter
                            deadline=300)                        # seconds per request, retries included
    backend.wait_until_ready(timeout=300)
    gens = backend.generate(chats, Sampling(n=4, temperature=1.0, max_tokens=48, seed=0))
    lp = backend.choice_logprobs(chats, ["A", "B", "C"])        # (len(chats), 3) float32
    backend.unload()                                            # closes connections only

Several servers serving the same model (vLLM replicas behind no balancer, or each pod of a
Service by its own address) are one backend: `OpenAIBackend(["http://a:8000", "http://b:8000"],
...)`. Each gets at most `concurrency` requests in flight; a request goes to the least busy
server, and its retry to another one, never the one that just failed it: at once, except that
every n-th attempt (n servers) backs off first and a server's Retry-After is honoured. So a replica
that dies mid-run costs each request one attempt. A call
(one shard's batch) can also have one overall deadline, `call_deadline` seconds for all its
requests and their retries (`execution.backend.call_deadline_seconds`).

Requests go out over a shared httpx client from a thread pool of `concurrency` workers per server. This
backend is the one retry layer: 429, 5xx, connection errors and timeouts are retried with
exponential backoff and jitter (honouring a Retry-After header) until the request succeeds or its
`deadline` would pass (seconds, every attempt and backoff included;
`execution.request_deadline_seconds`); then `TransientBackendError` names the URL, the attempts
and the last error in one line. No backoff sleeps past the deadline, and each attempt's connect,
read, write and pool timeouts are cut to the time left, so a dead, silent or always-503 server
fails the call by its deadline. The body is read chunk by chunk and dropped once the deadline has
passed (httpx's read timeout restarts at every chunk), so a server trickling its reply overruns by
one read wait at most. `max_retries` optionally caps the attempts too. Any other 4xx raises
`BackendRequestError` at once, carrying the server's own message.

Prefect does not retry the task on top (tasks/step.py): that would multiply the budget by its
attempts, re-send every request of a shard for the one that failed, and make the Prefect flow
behave unlike the in-process runner. A server down for longer than the deadline fails the run; a
re-run resumes from the shards already cached.

The API key is a SecretStr (masked in repr, str and dumps), sent only in the Authorization header.

`generate` uses /v1/chat/completions with `logprobs: true`: the returned logprob of each emitted
token. vLLM's default `--logprobs-mode raw_logprobs` computes them from the raw logits, before
temperature, top-p or penalties, which is what base.py asks for; a server started with a
`processed_*` mode, or llama.cpp with `post_sampling_probs`, would break that. If the server
returns fewer than `n` choices (a server that ignores `n`), the rest are asked for one by one with
seeds seed+1, seed+2, ... (vLLM itself gives the i-th of n samples the seed seed+i).

`choice_logprobs` uses /v1/completions, because no chat endpoint lets us append ANSWER_PREFIX after
the generation prompt: the chat is rendered client-side with the model's chat template (local
tokenizer: `tokenizer=`, else `model`; a directory or a name `resolve_model` knows: the config's
`model`, when the server calls it `served_model`), ANSWER_PREFIX appended, and the token
ids are sent as the prompt (no BOS doubling, same ids as the transformers backend), with
`max_tokens=1, temperature=0, logprobs=choice_top_k` (20 = vLLM's default `--max-logprobs`).
The score of a letter is the logprob of its token after ANSWER_PREFIX (`letter_token_ids`: " A"
for SmolLM2); a bare "A" is a different token and is not added in, so scores match the other
backends. A letter missing from the top-k gets a floor: min(smallest returned logprob,
log(1 - returned probability mass)). Both are upper bounds on its true logprob, so a missing
letter never outranks a returned one, and it stays finite. Both vLLM's legacy completions format
(`top_logprobs: [{token: logprob}]`) and llama.cpp's (`content: [{top_logprobs: [{id, ...}]}]`)
are read.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Mapping, Sequence

import httpx
import numpy as np
from pydantic import SecretStr

from semievol_core.backends.base import (
    ANSWER_PREFIX,
    Backend,
    Chat,
    Generation,
    Sampling,
    letter_token_ids,
)

# Statuses worth retrying: the server is overloaded or broken for a moment. Every other 4xx means
# the request itself is wrong, and sending it again cannot help.
_RETRY_STATUSES = frozenset({429}) | frozenset(range(500, 600))


class TransientBackendError(RuntimeError):
    """The server could not be reached or kept failing with 429/5xx/timeouts until the request's
    deadline (or `max_retries`). Worth trying later, once the server is back; `status` is the last
    HTTP status, or None for a connection error or timeout; `attempts` how many were made.
    """

    def __init__(self, message: str, status: int | None = None, attempts: int = 0):
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class BackendRequestError(RuntimeError):
    """The server rejected the request (4xx other than 429) or answered in an unusable form."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _server_message(body: bytes) -> str:
    """The error text a server put in its body, on one line: OpenAI/vLLM/llama.cpp
    `{"error": {"message"}}`, older vLLM `{"message"}`, else the raw body (truncated)."""
    text = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    message = text[:500]
    if isinstance(parsed, dict):
        err = parsed.get("error")
        if isinstance(err, dict) and err.get("message"):
            message = str(err["message"])
        elif isinstance(err, str):
            message = err
        elif parsed.get("message"):
            message = str(parsed["message"])
    return " ".join(message.split())


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:  # an HTTP date: rare from inference servers, fall back to our backoff
        return None


class OpenAIBackend(Backend):
    """generate / choice_logprobs against an OpenAI-compatible server. See the module docstring."""

    name = "openai"

    def __init__(
        self,
        base_url: str | Sequence[str],
        model: str,
        api_key: SecretStr | str | None = None,
        concurrency: int = 8,
        timeout: float = 120,
        max_retries: int | None = None,
        adapters: Mapping[str, str] | None = None,
        tokenizer: str | Path | None = None,
        *,
        deadline: float = 300.0,
        call_deadline: float | None = None,
        connect_timeout: float = 10.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        choice_top_k: int = 20,
    ):
        """base_url: one server, or several serving the same model (replicas); concurrency: requests
        in flight per server; timeout: seconds an attempt may wait for the server between bytes
        (connect: for the connection); deadline: seconds a request may take, every attempt and
        backoff included; call_deadline: seconds one generate/choice_logprobs call (a shard's
        batch) may take, all its requests included (None: no bound beyond each request's);
        max_retries: None retries until the deadline."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if max_retries is not None and max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if deadline <= 0:
            raise ValueError(f"deadline must be > 0 seconds, got {deadline}")
        if call_deadline is not None and call_deadline <= 0:
            raise ValueError(f"call_deadline must be > 0 seconds, got {call_deadline}")
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ValueError("base_url: give at least one server")
        # Accept both "http://host:port" and "http://host:port/v1" (what OpenAI clients take).
        self.base_urls = [u if u.endswith("/v1") else u + "/v1" for u in (u.rstrip("/") for u in urls)]
        self.base_url = self.base_urls[0]
        self.call_deadline = call_deadline
        self.model = model
        self.api_key = SecretStr(api_key) if isinstance(api_key, str) else api_key
        self.concurrency = concurrency
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.deadline = deadline
        self.max_retries = max_retries
        self.adapters = dict(adapters or {})
        self.tokenizer_path = tokenizer
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.choice_top_k = choice_top_k
        self._client: httpx.Client | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._tokenizer = None
        self._lock = threading.Lock()
        self._rng = random.Random()
        # Requests in flight per server, at most `concurrency` each; a request waits for a slot.
        self._inflight = [0] * len(self.base_urls)
        self._slots = threading.Condition()

    # ---- plumbing -------------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                headers = {"Authorization": f"Bearer {self.api_key.get_secret_value()}"} if self.api_key else {}
                total = self.concurrency * len(self.base_urls)
                limits = httpx.Limits(max_connections=total, max_keepalive_connections=total)
                self._client = httpx.Client(
                    headers=headers, timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout),
                    limits=limits,
                )
            return self._client

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency * len(self.base_urls),
                                                thread_name_prefix="openai-backend")
            return self._pool

    def _backoff(self, attempt: int) -> float:
        # "Equal jitter": half the exponential step is fixed, half random, so clients that failed
        # together spread out but none retries at once.
        step = min(self.backoff_max, self.backoff_base * (2**attempt))
        return step / 2 + self._rng.uniform(0, step / 2)

    def _send(self, method: str, url: str, payload: dict[str, Any] | None, deadline: float
              ) -> tuple[int, httpx.Headers, bytes]:
        """One attempt: (status, headers, body), every timeout cut to the time left before `deadline`
        (time.monotonic), the body given up once the deadline passes between two chunks."""
        left = max(deadline - time.monotonic(), 0.001)
        timeout = httpx.Timeout(min(self.timeout, left), connect=min(self.connect_timeout, left))
        with self._http().stream(method, url, json=payload, timeout=timeout) as response:
            chunks = []
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("deadline passed while reading the body", request=response.request)
            return response.status_code, response.headers, b"".join(chunks)

    def _take_server(self, avoid: int | None, deadline: float) -> int | None:
        """The least busy server with a free slot, never `avoid` (where this request's last attempt
        failed) when there are others: a retry waits for another server rather than go back to
        the one that just failed it. Waits for a slot until `deadline`, then None."""
        order = [i for i in range(len(self.base_urls)) if i != avoid or len(self.base_urls) == 1]
        with self._slots:
            while True:
                free = [i for i in order if self._inflight[i] < self.concurrency]
                if free:
                    best = min(free, key=lambda i: self._inflight[i])  # ties: the first
                    self._inflight[best] += 1
                    return best
                left = deadline - time.monotonic()
                if left <= 0 or not self._slots.wait(left):
                    return None

    def _give_back(self, server: int) -> None:
        with self._slots:
            self._inflight[server] -= 1
            self._slots.notify_all()  # waiters avoid different servers: wake them all to look

    def _request(self, method: str, path: str, payload: dict[str, Any] | None = None,
                 until: float | None = None) -> Any:
        """One API call, retried until it succeeds, fails for good or reaches its deadline (see the
        module docstring): the request's own, or `until` (time.monotonic) when that comes first,
        the deadline of the call it belongs to. With several servers, an attempt goes to the least
        busy one, and a retry to another than the one that just failed. Returns the decoded JSON."""
        own = time.monotonic() + self.deadline
        deadline, budget = (own, f"its {self.deadline:g} s deadline") if until is None or own <= until else (
            until, f"the call's {self.call_deadline:g} s deadline")
        last_error, last_status, attempts, server, out_of_retries = "", None, 0, None, False
        url = f"{self.base_url}{path}"
        n = len(self.base_urls)
        while True:
            delay: float | None = None
            if time.monotonic() >= deadline:  # picked up after its call's deadline: not sent
                last_error = last_error or "not sent: the deadline passed while it waited its turn"
                break
            taken = self._take_server(server, deadline)
            if taken is None:  # every server busy until the deadline
                last_error = last_error or "no server had a free slot"
                break
            server, attempts = taken, attempts + 1
            url = f"{self.base_urls[server]}{path}"
            try:
                status, headers, body = self._send(method, url, payload, deadline)
            except httpx.TimeoutException as exc:  # before TransportError: it is a subclass
                last_error, last_status = f"timed out ({type(exc).__name__})", None
            except httpx.TransportError as exc:
                last_error, last_status = f"connection failed: {type(exc).__name__}: {exc}", None
            else:
                if status < 400:
                    try:
                        return json.loads(body)
                    except ValueError:
                        # A 2xx with a cut-off body: a proxy or server dying mid-reply, transient.
                        last_error, last_status = "invalid JSON in response", status
                elif status in _RETRY_STATUSES:
                    last_error, last_status = _server_message(body), status
                    delay = _retry_after(headers)
                else:
                    raise BackendRequestError(f"{method} {url} -> HTTP {status}: {_server_message(body)}",
                                              status=status)
            finally:
                self._give_back(server)
            # Backoff once per n attempts (n servers): a retry goes to another server at once,
            # and every n-th one waits first, so a request all servers refuse still backs off.
            wait = 0.0 if attempts % n else self._backoff(attempts // n - 1)
            if delay is not None:  # the server said how long; still capped by backoff_max
                wait = min(max(wait, delay), max(self.backoff_max, wait))
            out_of_retries = self.max_retries is not None and attempts > self.max_retries
            if out_of_retries or time.monotonic() + wait >= deadline:
                break  # waiting would end past the deadline: give up now, not after it
            time.sleep(wait)
        tries = f"{attempts} attempt{'s' * (attempts != 1)}"
        why = f"after {tries}" if out_of_retries else f"within {budget} ({tries})"
        status_text = f"HTTP {last_status}: " if last_status else ""
        raise TransientBackendError(f"{method} {url} failed {why}: {status_text}{' '.join(last_error.split())}",
                                    status=last_status, attempts=attempts)

    def _served_name(self, adapter: str | None) -> str:
        """The `model` field for a request: the base model, or the LoRA adapter's served name."""
        if adapter is None:
            return self.model
        if adapter in self.adapters:
            return self.adapters[adapter]
        # Adapter maps are usually keyed by paths: match however the path was spelled.
        resolved = str(Path(adapter).expanduser().resolve())
        for key, served in self.adapters.items():
            if str(Path(key).expanduser().resolve()) == resolved:
                return served
        return adapter  # already a served name (e.g. `--lora-modules r1=...` and adapter="r1")

    def _map(self, fn, items: Sequence[Any]) -> list[Any]:
        """fn over items, at most `concurrency` at a time, results in item order. The first failure
        cancels every request not yet sent (a batch of thousands does not keep hitting a server
        that already said no) and is raised once the requests in flight have returned."""
        if len(items) <= 1:  # no thread hop for the common single-chat call
            return [fn(item) for item in items]
        futures = [self._executor().submit(fn, item) for item in items]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f in done and f.exception() is not None]
        if failed:
            for f in futures:
                f.cancel()
            wait([f for f in futures if not f.cancelled()])
            raise failed[0].exception()
        return [f.result() for f in futures]

    # ---- public ---------------------------------------------------------------------------

    def served_models(self) -> list[str]:
        """Model names the server offers (base model and any LoRA modules)."""
        body = self._request("GET", "/models")
        return [entry["id"] for entry in body.get("data", [])]

    def wait_until_ready(self, timeout: float = 300.0, poll: float = 1.0) -> None:
        """Block until GET /v1/models answers on every server (a server still starting refuses
        connections)."""
        deadline = time.monotonic() + timeout
        for base_url in self.base_urls:
            while True:
                try:
                    self._http().get(f"{base_url}/models", timeout=min(5.0, self.timeout)).raise_for_status()
                    break
                except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                    if time.monotonic() > deadline:
                        raise TransientBackendError(f"{base_url} not ready after {timeout}s: {exc}") from exc
                    time.sleep(poll)

    def generate(
        self, chats: Sequence[Chat], sampling: Sampling, adapter: str | None = None
    ) -> list[list[Generation]]:
        model, until = self._served_name(adapter), self._call_until()
        return self._map(lambda chat: self._generate_one(chat, sampling, model, until), list(chats))

    def _call_until(self) -> float | None:
        """When the call starting now must be done (time.monotonic), or None without call_deadline."""
        return None if self.call_deadline is None else time.monotonic() + self.call_deadline

    def _generate_one(self, chat: Chat, sampling: Sampling, model: str, until: float | None) -> list[Generation]:
        gens = self._chat_request(chat, sampling, model, sampling.n, sampling.seed, until)
        # Top-up for servers that ignore `n`; vLLM and recent llama.cpp return all n at once.
        while len(gens) < sampling.n:
            gens += self._chat_request(chat, sampling, model, 1, sampling.seed + len(gens), until)
        return gens[: sampling.n]

    def _chat_request(self, chat: Chat, sampling: Sampling, model: str, n: int, seed: int,
                      until: float | None = None) -> list[Generation]:
        payload: dict[str, Any] = {
            "model": model,
            "messages": list(chat),
            "n": n,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "seed": seed,
            "logprobs": True,
        }
        if sampling.stop:
            payload["stop"] = list(sampling.stop)
        body = self._request("POST", "/chat/completions", payload, until)
        choices = sorted(body.get("choices") or [], key=lambda c: c.get("index", 0))
        gens = []
        for choice in choices:
            content = (choice.get("logprobs") or {}).get("content")
            if content is None:
                raise BackendRequestError(
                    f"server returned no logprobs for model {model!r}: it does not support `logprobs`"
                )
            text = (choice.get("message") or {}).get("content") or ""
            finish = "length" if choice.get("finish_reason") == "length" else "stop"
            gens.append(Generation(text, [float(t["logprob"]) for t in content], finish))
        return gens

    def _get_tokenizer(self):
        with self._lock:
            if self._tokenizer is None:
                from transformers import AutoTokenizer  # lazy: heavy, and only scoring needs it

                from semievol_core.models import resolve_model

                name = self.tokenizer_path if self.tokenizer_path is not None else self.model
                source = name if Path(name).is_dir() else resolve_model(str(name))  # an alias: its directory
                try:
                    self._tokenizer = AutoTokenizer.from_pretrained(str(source))
                except (OSError, ValueError) as exc:
                    raise BackendRequestError(
                        f"choice_logprobs renders prompts client-side and needs the model's tokenizer; "
                        f"could not load it from {str(source)!r} ({exc}). Pass tokenizer=<HF dir>."
                    ) from exc
            return self._tokenizer

    def prompt_ids(self, chat: Chat) -> list[int]:
        """Token ids of the chat (template + generation prompt) followed by ANSWER_PREFIX."""
        tok = self._get_tokenizer()
        text = tok.apply_chat_template(list(chat), tokenize=False, add_generation_prompt=True)
        # The template already holds every special token it wants (BOS included): add none.
        return tok(text + ANSWER_PREFIX, add_special_tokens=False)["input_ids"]

    def choice_logprobs(
        self, chats: Sequence[Chat], letters: Sequence[str], adapter: str | None = None
    ) -> np.ndarray:
        tok = self._get_tokenizer()
        ids = letter_token_ids(tok, letters)
        targets = [(tid, tok.decode([tid])) for tid in ids]
        model = self._served_name(adapter)
        # Tokenize here, not in the worker threads: a HF fast tokenizer shared across threads can
        # fail with "Already borrowed" (its __call__ mutates padding/truncation state).
        prompts = [self.prompt_ids(chat) for chat in chats]
        until = self._call_until()
        rows = self._map(lambda prompt: self._score_one(prompt, targets, model, until), prompts)
        return np.asarray(rows, dtype=np.float32).reshape(len(chats), len(letters))

    def _score_one(self, prompt: list[int], targets: list[tuple[int, str]], model: str,
                   until: float | None = None) -> list[float]:
        payload = {
            "model": model,
            "prompt": prompt,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": self.choice_top_k,
        }
        body = self._request("POST", "/completions", payload, until)
        try:
            logprobs = body["choices"][0]["logprobs"]
        except (KeyError, IndexError, TypeError) as exc:
            raise BackendRequestError(f"unexpected /completions response: {str(body)[:300]}") from exc
        by_id, by_text = _first_position_top(logprobs)
        if not by_id and not by_text:
            raise BackendRequestError("server returned no top logprobs for /completions")
        return _letter_scores(targets, by_id, by_text)

    def unload(self) -> None:
        """Close connections and threads; the server keeps its model. Reopened on next use."""
        with self._lock:
            pool, self._pool = self._pool, None
            client, self._client = self._client, None
        if pool is not None:
            pool.shutdown(wait=True)
        if client is not None:
            client.close()


def _first_position_top(logprobs: Any) -> tuple[dict[int, float], dict[str, float]]:
    """Top logprobs of the first generated token, keyed by token id (llama.cpp gives ids) and by
    token text (vLLM's legacy completions format gives only text)."""
    by_id: dict[int, float] = {}
    by_text: dict[str, float] = {}
    if not isinstance(logprobs, dict):
        return by_id, by_text
    if logprobs.get("top_logprobs"):  # vLLM / OpenAI legacy: [{token_text: logprob}, ...]
        first = logprobs["top_logprobs"][0] or {}
        by_text = {str(k): float(v) for k, v in first.items()}
    elif logprobs.get("content"):  # llama.cpp (and chat-style): [{token, logprob, top_logprobs}]
        first = logprobs["content"][0]
        for entry in first.get("top_logprobs") or []:
            by_text[str(entry["token"])] = float(entry["logprob"])
            if "id" in entry:
                by_id[int(entry["id"])] = float(entry["logprob"])
    return by_id, by_text


def _letter_scores(
    targets: list[tuple[int, str]], by_id: dict[int, float], by_text: dict[str, float]
) -> list[float]:
    returned = list(by_id.values()) or list(by_text.values())
    mass = sum(math.exp(v) for v in returned)
    # Floor for letters outside the top-k (see module docstring): both terms bound the truth
    # from above, and the 1e-12 keeps log finite when the top-k already holds ~all the mass.
    floor = min(min(returned), math.log(max(1.0 - mass, 1e-12)))
    scores = []
    for tid, text in targets:
        if tid in by_id:
            scores.append(by_id[tid])
        elif text in by_text:
            scores.append(by_text[text])
        else:
            scores.append(floor)
    return scores
