"""A fault-injecting HTTP proxy in front of an OpenAI-compatible server (issue 12).

    from fault_proxy import KINDS, FaultProxy
    with FaultProxy("http://127.0.0.1:8000/v1", seed=0, attempt_timeout=5.0) as proxy:
        cfg.execution.base_url = proxy.base_url      # http://127.0.0.1:<port>/v1
        ...                                          # run anything against it
    proxy.injected      # Counter({"5xx": 11, "timeout": 3, "truncated": 2, "slow": 3, "reset": 1})
    proxy.requests      # requests received; proxy.forwarded: those sent on to the server

Each request the proxy receives gets one fate, drawn in arrival order from a generator seeded with
`seed` (with one client thread the order, and so every fate, is the same on every run):
  5xx        20%: HTTP 500/502/503/504 with an error body; not forwarded
  timeout     5%: nothing, for `attempt_timeout` + HOLD_MARGIN seconds, then the connection closes;
                  not forwarded (the client's attempt times out first)
  truncated   5%: forwarded; the server's 200 with the first half of its JSON body (a matching
                  Content-Length: the reply ends cleanly, the JSON does not)
  slow        5%: forwarded; the reply held SLOW_SECONDS first (below the attempt timeout: it succeeds)
  reset      exactly once: forwarded; the headers and half the body sent, then a TCP reset (RST)
  clean      the rest: forwarded as is
So that every kind happens even in a short run, each also befalls one request at a seeded position
among the first FIRST_WITHIN (that request's draw is then not used). The upstream server never
sees a request the proxy failed before forwarding; a forwarded one it answers again when the client
retries.

A ThreadingHTTPServer (standard library) on 127.0.0.1, forwarding with httpx; HTTP/1.1 keep-alive
like a real server.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

KINDS = ("5xx", "timeout", "truncated", "slow", "reset")
RATES = {"5xx": 0.20, "timeout": 0.05, "truncated": 0.05, "slow": 0.05}  # of requests; reset: once
STATUSES = (500, 502, 503, 504)
FIRST_WITHIN = 20      # every kind's first fate lies among this many first requests
HOLD_MARGIN = 1.0      # seconds a held request outlives the client's attempt timeout
SLOW_SECONDS = 1.0     # a slow reply's delay; must stay below the attempt timeout


class FaultProxy:
    """See the module docstring. `upstream`: the server's base URL (with or without /v1);
    `attempt_timeout`: the client's per-attempt timeout in seconds (execution.request_timeout_seconds)."""

    def __init__(self, upstream: str, seed: int = 0, attempt_timeout: float = 5.0):
        if SLOW_SECONDS >= attempt_timeout:
            raise ValueError(f"attempt_timeout {attempt_timeout} s must exceed a slow reply's {SLOW_SECONDS} s")
        url = httpx.URL(upstream)
        self.origin = f"{url.scheme}://{url.host}:{url.port}"
        self.hold = attempt_timeout + HOLD_MARGIN
        self.injected: Counter = Counter()
        self.requests = self.forwarded = 0
        self._rng = random.Random(seed)
        firsts = self._rng.sample(range(FIRST_WITHIN), len(KINDS))
        self._first = dict(zip(firsts, KINDS))
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=httpx.Timeout(600.0, connect=10.0))
        handler = type("Handler", (_Handler,), {"proxy": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True  # a held request does not keep the process alive

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def fate(self) -> str:
        """The next request's fate (see the module docstring), counted in `injected`."""
        with self._lock:
            index, self.requests = self.requests, self.requests + 1
            draw = self._rng.random()  # drawn for every request, so the sequence never shifts
            kind = self._first.get(index)
            edge = 0.0
            for name, rate in RATES.items():
                edge += rate
                if kind is None and draw < edge:
                    kind = name
            kind = kind or "clean"
            if kind != "clean":
                self.injected[kind] += 1
            return kind

    def status(self) -> int:
        with self._lock:
            return self._rng.choice(STATUSES)

    def forward(self, method: str, path: str, body: bytes, content_type: str | None) -> httpx.Response:
        with self._lock:
            self.forwarded += 1
        headers = {"content-type": content_type} if content_type else {}
        return self._client.request(method, self.origin + path, content=body, headers=headers)

    def __enter__(self) -> "FaultProxy":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._server, closing(self._client):  # both closed on the way out
            self._server.shutdown()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every reply carries its Content-Length
    proxy: FaultProxy

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        kind = self.proxy.fate()
        if kind == "5xx":
            status = self.proxy.status()
            self._reply(status, b'{"error": {"message": "injected HTTP %d"}}' % status)
            return
        if kind == "timeout":
            time.sleep(self.proxy.hold)  # the client gave up meanwhile
            self.close_connection = True
            return
        upstream = self.proxy.forward(self.command, self.path, body, self.headers.get("Content-Type"))
        data = upstream.content
        if kind == "slow":
            time.sleep(SLOW_SECONDS)
        elif kind == "truncated":
            data = data[: len(data) // 2]
        elif kind == "reset":
            self._reset_midway(upstream.status_code, data)
            return
        self._reply(upstream.status_code, data)

    def _reply(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _reset_midway(self, status: int, data: bytes) -> None:
        """Headers promising the whole body, half of it, then RST (SO_LINGER 0: close resets)."""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # Closed here, before socketserver's shutdown(SHUT_WR) could send a graceful FIN: the
        # descriptor goes when rfile is closed (finish()), and with SO_LINGER 0 that sends RST.
        self.connection.close()
        self.close_connection = True

    def log_message(self, *args) -> None:  # quiet: pytest and the bench print their own lines
        pass
