"""A scriptable OpenAI-compatible chat-completions server on 127.0.0.1 (stdlib only).

Tests point the real ``openai`` SDK at it. It answers ``POST .../chat/completions`` (any
prefix, so both ``/v1/chat/completions`` and Azure's ``/openai/deployments/<d>/chat/completions``
work) with a deterministic answer: ``"Answer: "`` + the first 12 words of the last user
message, and usage counted in words (or what ``responder(messages)`` returns, when a test sets
one: e.g. a judge's verdict). Behaviour is set at runtime with :meth:`LoopbackServer.set`
(``latency_s``, a standing ``mode``) and :meth:`LoopbackServer.script` (a queue of one-shot
modes consumed by the next requests). Modes: ``ok``, ``401``/``403`` (auth refused), ``429``
(with ``Retry-After``), ``500``, ``hang`` (no reply until ``hang_s`` passes or the server stops),
``close`` (headers and half the body, then the connection is closed), ``malformed`` (invalid JSON),
``empty`` (empty content), ``content_filter`` (finish_reason content_filter), ``no_usage``.

Counters are thread-safe: ``calls``, ``calls_by_hash`` (sha256 of the raw body), ``in_flight``,
``max_in_flight``, ``auth_headers``, ``bodies``.

It also implements the Batch API's files and batches endpoints (``POST /v1/files``,
``GET /v1/files/<id>/content``, ``POST /v1/batches``, ``GET /v1/batches[/<id>]``,
``POST /v1/batches/<id>/cancel``). A batch completes ``batch_latency_s`` after it is created
(``set(batch_latency_s=...)``), or ends as ``batch_final`` (``completed``/``failed``/``expired``);
each of its lines is answered like a chat request, consuming the one-shot mode script
(``500``/``429``/``hang`` go to the error file). Counters: ``files_uploaded``,
``batches_created``, ``batch_polls``, ``batch_lines``.

``python -m tests.loopback --port 0 --latency 0.2`` prints the base URL on its first stdout line
and serves until killed.
"""

from __future__ import annotations

import argparse
import collections
import email.parser
import email.policy
import hashlib
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

MODES = (
    "ok",
    "401",
    "403",
    "429",
    "500",
    "hang",
    "close",
    "malformed",
    "empty",
    "content_filter",
    "no_usage",
)
ANSWER_WORDS = 12


def words(text: str) -> list[str]:
    return text.split()


def answer_for(messages: list[dict[str, Any]]) -> str:
    """The deterministic answer the server gives for ``messages``."""
    users = [m for m in messages if m.get("role") == "user"]
    last = str(users[-1].get("content") or "") if users else ""
    return "Answer: " + " ".join(words(last)[:ANSWER_WORDS])


def completion(
    body: dict[str, Any],
    mode: str,
    responder: Callable[[list[dict[str, Any]]], str] | None = None,
) -> dict[str, Any]:
    """The chat completion the server returns for a request ``body`` in an answering mode;
    ``responder`` (messages -> answer) replaces :func:`answer_for`."""
    messages = body.get("messages") or []
    answer = "" if mode in ("empty", "content_filter") else (responder or answer_for)(messages)
    finish = "content_filter" if mode == "content_filter" else "stop"
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
    return resp


def _multipart_file(content_type: str, raw: bytes) -> tuple[bytes, dict[str, str]]:
    """(file bytes, other form fields) of a multipart/form-data upload."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    data, form = b"", {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if part.get_filename():
            data = payload
        elif name:
            form[str(name)] = payload.decode()
    return data, form


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

    def do_GET(self) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        parts = path.strip("/").split("/")
        if path.endswith("/content") and "files" in parts:
            data = owner._file_content(parts[-2])
            if data is None:
                self._json(404, {"error": {"message": "no such file", "type": "not_found"}})
            else:
                self._send(200, data)
            return
        if parts[-1] == "batches":
            self._json(200, owner._batch_list())
            return
        if len(parts) >= 2 and parts[-2] == "batches":
            batch = owner._batch_poll(parts[-1])
            if batch is None:
                self._json(404, {"error": {"message": "no such batch", "type": "not_found"}})
            else:
                self._json(200, batch)
            return
        self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        if path.endswith("/files"):
            data, form = _multipart_file(self.headers.get("Content-Type", ""), raw)
            self._json(200, owner._upload(data, form.get("purpose", "")))
            return
        if path.endswith("/batches"):
            batch = owner._batch_create(json.loads(raw or b"{}"))
            if batch is None:
                self._json(400, {"error": {"message": "no such input file", "type": "invalid"}})
            else:
                self._json(200, batch)
            return
        if path.endswith("/cancel"):
            batch = owner._batch_cancel(path.strip("/").split("/")[-2])
            self._json(200 if batch else 404, batch or {"error": {"message": "no such batch"}})
            return
        if not path.endswith("/chat/completions"):
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
        if mode in ("401", "403"):
            self._json(
                int(mode),
                {
                    "error": {
                        "message": "invalid api key (loopback)",
                        "type": "invalid_request_error",
                    }
                },
            )
            return
        if mode == "close":
            body = json.dumps({"id": "x", "choices": [], "pad": "x" * 200}).encode()
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True
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
        self._json(200, completion(body, mode, owner.responder))


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
        self.batch_latency_s = 0.0
        self.batch_final = "completed"
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
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
        batch_latency_s: float | None = None,
        batch_final: str | None = None,
    ) -> None:
        with self._lock:
            if batch_latency_s is not None:
                self.batch_latency_s = batch_latency_s
            if batch_final is not None:
                if batch_final not in ("completed", "failed", "expired"):
                    raise ValueError(f"unknown batch_final {batch_final!r}")
                self.batch_final = batch_final
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
            self.files_uploaded = 0
            self.batches_created = 0
            self.batch_polls = 0
            self.batch_lines = 0
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

    # ------------------------------------------------------------ batch API
    def _upload(self, data: bytes, purpose: str) -> dict[str, Any]:
        with self._lock:
            self.files_uploaded += 1
            fid = "file-" + uuid.uuid4().hex[:16]
            self.files[fid] = data
        return {
            "id": fid,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": "input.jsonl",
            "purpose": purpose or "batch",
            "status": "processed",
        }

    def _file_content(self, fid: str) -> bytes | None:
        with self._lock:
            return self.files.get(fid)

    def _batch_create(self, body: dict[str, Any]) -> dict[str, Any] | None:
        with self._lock:
            if body.get("input_file_id") not in self.files:
                return None
            self.batches_created += 1
            bid = "batch_" + uuid.uuid4().hex[:16]
            self.batches[bid] = {
                "id": bid,
                "object": "batch",
                "endpoint": body.get("endpoint", "/v1/chat/completions"),
                "input_file_id": body["input_file_id"],
                "completion_window": body.get("completion_window", "24h"),
                "status": "validating",
                "output_file_id": None,
                "error_file_id": None,
                "created_at": int(time.time()),
                "metadata": body.get("metadata"),
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
                "_t0": time.monotonic(),
            }
            return self._public(self.batches[bid])

    @staticmethod
    def _public(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    def _batch_list(self) -> dict[str, Any]:
        with self._lock:
            data = [self._public(b) for b in self.batches.values()]
        return {"object": "list", "data": data, "has_more": False}

    def _batch_cancel(self, bid: str) -> dict[str, Any] | None:
        with self._lock:
            b = self.batches.get(bid)
            if b is None:
                return None
            if b["status"] not in ("completed", "failed", "expired"):
                b["status"] = "cancelled"
            return self._public(b)

    def _batch_poll(self, bid: str) -> dict[str, Any] | None:
        with self._lock:
            self.batch_polls += 1
            b = self.batches.get(bid)
            if b is None:
                return None
            if b["status"] in ("validating", "in_progress"):
                if time.monotonic() - b["_t0"] < self.batch_latency_s:
                    b["status"] = "in_progress"
                elif self.batch_final != "completed":
                    b["status"] = self.batch_final
                else:
                    self._run_batch(b)
            return self._public(b)

    def _run_batch(self, b: dict[str, Any]) -> None:
        """Answer every line of the batch's input file (called with the lock held)."""
        out, errors = [], []
        lines = [ln for ln in self.files[b["input_file_id"]].decode().splitlines() if ln.strip()]
        for line in lines:
            req = json.loads(line)
            self.batch_lines += 1
            mode = self._script.popleft() if self._script else self.mode
            self.modes_served.append(mode)
            rid = "batch_req_" + uuid.uuid4().hex[:12]
            if mode in ("500", "429", "hang", "malformed"):
                errors.append(
                    {
                        "id": rid,
                        "custom_id": req["custom_id"],
                        "response": None,
                        "error": {"code": "server_error", "message": f"loopback {mode}"},
                    }
                )
                continue
            out.append(
                {
                    "id": rid,
                    "custom_id": req["custom_id"],
                    "response": {
                        "status_code": 200,
                        "request_id": rid,
                        "body": completion(req["body"], mode, self.responder),
                    },
                    "error": None,
                }
            )
        for name, rows in (("output_file_id", out), ("error_file_id", errors)):
            if rows:
                fid = "file-" + uuid.uuid4().hex[:16]
                self.files[fid] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                b[name] = fid
        b["status"] = "completed"
        b["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(errors)}

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
