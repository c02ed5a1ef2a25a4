"""A scriptable OpenAI-compatible chat-completions server on 127.0.0.1 (stdlib only).

Tests point the real ``openai`` SDK at it. It answers ``POST .../chat/completions`` (any
prefix, so both ``/v1/chat/completions`` and Azure's ``/openai/deployments/<d>/chat/completions``
work) with a deterministic answer: ``"Answer: "`` + the first 12 words of the last user
message, and usage counted in words (or what ``responder(messages)`` returns, when a test sets
one: e.g. a judge's verdict). Behaviour is set at runtime with :meth:`LoopbackServer.set`
(``latency_s``, a standing ``mode``) and :meth:`LoopbackServer.script` (a queue of one-shot
modes consumed by the next requests). Modes: ``ok``, ``429`` (with ``Retry-After``), ``500``,
``hang`` (no reply until ``hang_s`` passes or the server stops), ``malformed`` (invalid JSON),
``empty`` (empty content), ``content_filter`` (finish_reason content_filter), ``no_usage``.

Counters are thread-safe: ``calls``, ``calls_by_hash`` (sha256 of the raw body), ``in_flight``,
``max_in_flight``, ``auth_headers``, ``bodies``.

``python -m tests.loopback --port 0 --latency 0.2`` prints the base URL on its first stdout line
and serves until killed.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

MODES = ("ok", "429", "500", "hang", "malformed", "empty", "content_filter", "no_usage")
ANSWER_WORDS = 12


def words(text: str) -> list[str]:
    return text.split()


def answer_for(messages: list[dict[str, Any]]) -> str:
    """The deterministic answer the server gives for ``messages``."""
    users = [m for m in messages if m.get("role") == "user"]
    last = str(users[-1].get("content") or "") if users else ""
    return "Answer: " + " ".join(words(last)[:ANSWER_WORDS])


class _Handler(BaseHTTPRequestHandler):
    # Headers and body go out in two writes; with Nagle on, the body waits ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return None

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(code, json.dumps(obj).encode(), headers)

    def do_POST(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not self.path.split("?", 1)[0].endswith("/chat/completions"):
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        mode, latency, retry_after, hang_s = owner._begin(raw, self.headers)
        try:
            if latency > 0:
                owner._stop.wait(latency)
            self._reply(mode, raw, retry_after, hang_s)
        finally:
            owner._end()

    def _reply(self, mode: str, raw: bytes, retry_after: float, hang_s: float) -> None:
        owner = self.server.owner
        if mode == "429":
            self._json(
                429,
                {"error": {"message": "rate limited (loopback)", "type": "rate_limit_exceeded"}},
                {"Retry-After": f"{retry_after:g}"},
            )
            return
        if mode == "500":
            self._json(
                500, {"error": {"message": "internal error (loopback)", "type": "server_error"}}
            )
            return
        if mode == "hang":
            owner._stop.wait(hang_s)
            self.close_connection = True
            return  # no reply at all; the client times out
        if mode == "malformed":
            self._send(200, b'{"id": "x", "choices": [ {"message": ')
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._json(
                400, {"error": {"message": "request body is not JSON", "type": "invalid_request"}}
            )
            return
        messages = body.get("messages") or []
        responder = owner.responder or answer_for
        answer = "" if mode == "empty" else responder(messages)
        finish = "content_filter" if mode == "content_filter" else "stop"
        if mode == "content_filter":
            answer = ""
        prompt_tokens = sum(len(words(str(m.get("content") or ""))) for m in messages)
        resp: dict[str, Any] = {
            "id": "chatcmpl-loopback",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "loopback"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": finish,
                }
            ],
        }
        if mode != "no_usage":
            resp["usage"] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(words(answer)),
                "total_tokens": prompt_tokens + len(words(answer)),
            }
        self._json(200, resp)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default listen backlog (5) drops bursts of connects
    owner: LoopbackServer


class LoopbackServer:
    """Owns the HTTP server thread, the runtime settings and the counters."""

    def __init__(self, port: int = 0, *, latency_s: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.latency_s = latency_s
        self.mode = "ok"
        self.retry_after = 1.0
        self.hang_s = 30.0
        self._script: collections.deque[str] = collections.deque()
        #: messages -> answer text; None answers with :func:`answer_for`
        self.responder: Callable[[list[dict[str, Any]]], str] | None = None
        self.reset()
        self._httpd = _Server(("127.0.0.1", port), _Handler)
        self._httpd.owner = self
        self.port: int = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.endpoint = f"http://127.0.0.1:{self.port}"  # for Azure's azure_endpoint
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="loopback", daemon=True
        )
        self._thread.start()

    # -------------------------------------------------------------- control
    def set(
        self,
        *,
        latency_s: float | None = None,
        mode: str | None = None,
        retry_after: float | None = None,
        hang_s: float | None = None,
    ) -> None:
        with self._lock:
            if mode is not None:
                if mode not in MODES:
                    raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
                self.mode = mode
            if latency_s is not None:
                self.latency_s = latency_s
            if retry_after is not None:
                self.retry_after = retry_after
            if hang_s is not None:
                self.hang_s = hang_s

    def script(self, *modes: str) -> None:
        """Queue one-shot modes: the next requests get them in order, then ``mode`` again."""
        for m in modes:
            if m not in MODES:
                raise ValueError(f"unknown mode {m!r}; one of {MODES}")
        with self._lock:
            self._script.extend(modes)

    def reset(self) -> None:
        with self._lock:
            self.calls = 0
            self.calls_by_hash: collections.Counter[str] = collections.Counter()
            self.in_flight = 0
            self.max_in_flight = 0
            self.auth_headers: list[str] = []
            self.bodies: list[dict[str, Any]] = []
            self.modes_served: list[str] = []
            self._script.clear()

    # -------------------------------------------------------- request hooks
    def _begin(self, raw: bytes, headers: Any) -> tuple[str, float, float, float]:
        with self._lock:
            self.calls += 1
            self.calls_by_hash[hashlib.sha256(raw).hexdigest()] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.auth_headers.append(
                str(headers.get("Authorization") or headers.get("api-key") or "")
            )
            try:
                self.bodies.append(json.loads(raw or b"{}"))
            except ValueError:
                self.bodies.append({})
            mode = self._script.popleft() if self._script else self.mode
            self.modes_served.append(mode)
            return mode, self.latency_s, self.retry_after, self.hang_s

    def _end(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def stop(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LoopbackServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def loopback_server() -> Iterator[LoopbackServer]:
    """A fresh loopback server per test (starting one takes about a millisecond)."""
    server = LoopbackServer()
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="OpenAI-compatible loopback test server")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    ap.add_argument("--mode", choices=MODES, default="ok")
    args = ap.parse_args(argv)
    server = LoopbackServer(args.port, latency_s=args.latency)
    server.set(mode=args.mode)
    print(server.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
