"""OpenAI-compatible teacher (OpenAI, Azure OpenAI, vLLM, Ollama, proxies).

Design decisions:
- The official SDK's async client does the HTTP work and its own retries (429/5xx/timeouts,
  honouring ``Retry-After``); we never add a second retry loop.
- Every HTTP attempt, including the SDK's internal retries, is observed by handing the SDK
  an HTTP client whose ``send`` is timed (:class:`_ObservedClient`). Attempts are attributed
  to the ``answer`` call that made them through a :mod:`contextvars` variable, because the
  SDK awaits ``send`` inside the caller's task.
- ``answer`` never raises for per-request failures. Empty content and ``content_filter`` are
  permanent failures (upstream TACO-RL paid +0.4 for them, a bug); transport failures are
  non-permanent. Error strings are one line and scrubbed of the API key.
- A 401/403 is classed ``auth`` (in the ledger too): the caller stops the run at the first one,
  since every other request would be refused the same way. A connection closed mid-response
  is ``disconnected`` (the request reached the server), not ``connection`` (it never did).
- Client CPU per answer is kept low, because at concurrency >= 32 it bounds throughput:
  one client per teacher with a connection pool sized to ``teacher.concurrency``; the
  request body's constant part is built once; the request goes through the SDK's generic
  ``post`` (same retries, timeouts, auth and Azure routing) with a plain JSON body, skipping
  ``create``'s per-request TypedDict transform, and the reply is read as plain JSON instead
  of being built into pydantic models. Together those were ~40% of the client CPU.
- The API key comes from the environment variable named by ``teacher.api_key_env``. It is
  required, except for a loopback ``base_url``/``azure_endpoint`` (127.0.0.1, ::1,
  localhost: a local vLLM/Ollama/test server), where a dummy key is used if it is unset.
"""

from __future__ import annotations

import contextvars
import ipaddress
import os
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai

from tacorl_offline.errors import UserError
from tacorl_offline.teachers.base import Attempt, TeacherRequest, TeacherResult
from tacorl_offline.tokens import count_messages, counter_for

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOOPBACK_DUMMY_KEY = "sk-local-no-key"

# The attempts list of the ``answer`` call running in the current task (None outside one).
_ATTEMPTS: contextvars.ContextVar[list[Attempt] | None] = contextvars.ContextVar(
    "tacorl_teacher_attempts", default=None
)


def _one_line(s: str, limit: int = 300) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _exc_kind(err: BaseException) -> str:
    """'connection': the request never reached a server (refused, DNS, connect timeout);
    'timeout': sent, no answer in time; 'disconnected': sent, then the connection broke."""
    # By name: the SDK's HTTP library (httpx, or its successor) is its own business.
    name = type(err).__name__
    if name in ("ConnectError", "ConnectTimeout"):
        return "connection"
    if "Timeout" in name:
        return "timeout"
    if name in ("RemoteProtocolError", "ReadError", "WriteError"):
        return "disconnected"
    return "connection"


class _ObservedClient(openai.DefaultAsyncHttpxClient):  # type: ignore[misc,valid-type]
    """The SDK's default async HTTP client, with each ``send`` timed and recorded."""

    async def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        sink = _ATTEMPTS.get()
        t0 = time.perf_counter()
        try:
            response = await super().send(request, *args, **kwargs)
        except Exception as err:
            if sink is not None:
                sink.append(
                    Attempt(
                        status=_exc_kind(err),
                        latency_s=time.perf_counter() - t0,
                        error=_one_line(
                            f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
                        ),
                    )
                )
            raise
        if sink is not None:
            code = response.status_code
            error = None
            if not 200 <= code < 300:
                retry_after = response.headers.get("retry-after")
                error = f"HTTP {code}" + (f" (Retry-After: {retry_after})" if retry_after else "")
            status = "ok" if error is None else f"http_{code}"
            if code in (401, 403):
                status = "auth"
            sink.append(
                Attempt(
                    status=status,
                    latency_s=time.perf_counter() - t0,
                    error=_one_line(error, 120) if error else None,
                )
            )
        return response


def is_loopback_url(url: str | None) -> bool:
    if not url:
        return False
    host = (urlsplit(url).hostname or "").strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redact_url(url: str) -> str:
    """Drop user:password@ and the query string from a URL before it goes into a message."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def resolve_api_key(cfg: Any, environ: Mapping[str, str], endpoint: str | None) -> str:
    var = cfg.api_key_env
    key = environ.get(var, "")
    if key:
        return key
    if is_loopback_url(endpoint):
        return LOOPBACK_DUMMY_KEY
    raise UserError(
        f"teacher backend '{cfg.backend}' needs an API key: environment variable {var} is not set; "
        f"set {var} or teacher.api_key_env"
    )


class OpenAITeacher:
    """Chat-completions teacher over ``AsyncOpenAI`` / ``AsyncAzureOpenAI``."""

    def __init__(self, cfg: Any, *, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self._cfg = cfg
        self.backend: str = cfg.backend
        self.model: str = cfg.model
        if cfg.backend == "azure":
            if not cfg.azure_endpoint:
                raise UserError(
                    "teacher.backend is 'azure' but teacher.azure_endpoint is not set; "
                    "set it to https://<resource>.openai.azure.com"
                )
            self.endpoint = cfg.azure_endpoint
        else:
            self.endpoint = cfg.base_url or environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        self._secret = resolve_api_key(cfg, environ, self.endpoint)
        # A pool sized to the concurrency: the SDK default (1,000 connections) makes the pool
        # scan far more slots than there are requests in flight.
        size = max(1, int(cfg.concurrency))
        self._http = _ObservedClient(
            limits=type(openai.DEFAULT_CONNECTION_LIMITS)(
                max_connections=size, max_keepalive_connections=size
            )
        )
        common: dict[str, Any] = {
            "api_key": self._secret,
            "timeout": cfg.timeout_s,
            "max_retries": cfg.max_retries,
            "http_client": self._http,
        }
        if cfg.backend == "azure":
            # The model is the deployment name: the SDK puts it in the URL per request.
            self._client: Any = openai.AsyncAzureOpenAI(
                azure_endpoint=cfg.azure_endpoint, api_version=cfg.api_version, **common
            )
        else:
            self._client = openai.AsyncOpenAI(base_url=self.endpoint, **common)
        self._count = counter_for(cfg.model)
        self._base_params = self._params(TeacherRequest("", []))
        del self._base_params["messages"]

    def __repr__(self) -> str:
        return f"OpenAITeacher(backend={self.backend!r}, model={self.model!r}, endpoint={redact_url(self.endpoint)!r})"

    def key_settings(self) -> dict[str, Any]:
        return self._cfg.key_settings()

    def _params(self, request: TeacherRequest) -> dict[str, Any]:
        cfg = self._cfg
        params: dict[str, Any] = {
            "model": cfg.model,
            "messages": request.messages,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "max_tokens": cfg.max_tokens,
        }
        if cfg.seed is not None:
            params["seed"] = cfg.seed
        return params

    def _scrub(self, text: str) -> str:
        text = _one_line(text)
        if self._secret and len(self._secret) >= 4:
            text = text.replace(self._secret, "***")
        return text

    async def answer(self, request: TeacherRequest) -> TeacherResult:
        attempts: list[Attempt] = []
        token = _ATTEMPTS.set(attempts)
        t0 = time.perf_counter()
        try:
            result = await self._answer(request, attempts)
        finally:
            _ATTEMPTS.reset(token)
        result.latency_s = time.perf_counter() - t0
        result.attempts = attempts
        for a in attempts:
            if a.error:
                a.error = self._scrub(a.error)
        if result.error:
            result.error = self._scrub(result.error)
        return result

    def _fail(
        self, request: TeacherRequest, kind: str, error: str, *, permanent: bool = False, **kw: Any
    ) -> TeacherResult:
        return TeacherResult(
            request_hash=request.request_hash,
            ok=False,
            answer=kw.pop("answer", None),
            error=error,
            error_kind=kind,
            permanent=permanent,
            model=self.model,
            **kw,
        )

    async def _answer(self, request: TeacherRequest, attempts: list[Attempt]) -> TeacherResult:
        where = redact_url(self.endpoint)
        try:
            # The SDK's generic post: its retries, timeouts, auth and Azure deployment routing,
            # without create()'s TypedDict transform; cast_to=object returns the parsed JSON.
            resp = await self._client.post(
                "/chat/completions",
                body={**self._base_params, "messages": request.messages},
                cast_to=object,
            )
        except openai.APITimeoutError:
            tries = f"after {len(attempts)} attempt(s)"
            return self._fail(
                request,
                "timeout",
                f"teacher timed out after {self._cfg.timeout_s:g}s per attempt at {where} {tries}",
            )
        except openai.APIConnectionError as e:
            tries = f"after {len(attempts)} attempt(s)"
            cause = e.__cause__
            detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(e)
            kind = _exc_kind(cause) if cause is not None else "connection"
            if kind == "disconnected":
                return self._fail(
                    request,
                    kind,
                    f"teacher at {where} closed the connection mid-response ({detail}) {tries}",
                )
            return self._fail(
                request, "connection", f"teacher unreachable at {where} ({detail}) {tries}"
            )
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            var = self._cfg.api_key_env
            return self._fail(
                request,
                "auth",
                f"teacher at {where} rejected the API key (HTTP {e.status_code}); check the key in "
                f"the environment variable {var} (teacher.api_key_env)",
            )
        except openai.APIStatusError as e:
            tries = f"after {len(attempts)} attempt(s)"
            msg = e.message if isinstance(getattr(e, "message", None), str) else ""
            return self._fail(request, "http", f"HTTP {e.status_code} from {where} {tries}: {msg}")
        except openai.APIError as e:  # response validation and other SDK-level errors
            self._mark_malformed(attempts)
            return self._fail(
                request, "malformed", f"bad response from {where}: {type(e).__name__}: {e}"
            )
        except Exception as e:  # JSON decode errors and friends: a malformed body
            self._mark_malformed(attempts)
            return self._fail(
                request, "malformed", f"malformed response from {where}: {type(e).__name__}: {e}"
            )
        return self._parse(request, resp, attempts, where)

    @staticmethod
    def _mark_malformed(attempts: list[Attempt]) -> None:
        if attempts and attempts[-1].status == "ok":
            attempts[-1].status = "malformed"
            attempts[-1].error = "malformed response body"

    def _parse(
        self, request: TeacherRequest, resp: Any, attempts: list[Attempt], where: str
    ) -> TeacherResult:
        """``resp``: the chat completion as parsed JSON (a dict), or an SDK model (the Batch
        API teacher validates its result lines into ``ChatCompletion``)."""
        if hasattr(resp, "model_dump"):
            resp = resp.model_dump()
        try:
            choice = resp["choices"][0]
            content = choice["message"].get("content")
            finish = choice.get("finish_reason")
            usage = resp.get("usage")
            if content is not None and not isinstance(content, str):
                raise TypeError(f"content is {type(content).__name__}")
            if usage is not None and not isinstance(usage, dict):
                raise TypeError(f"usage is {type(usage).__name__}")
        except Exception as e:
            self._mark_malformed(attempts)
            detail = "non-JSON body" if isinstance(resp, str) else f"{type(e).__name__}: {e}"
            return self._fail(
                request, "malformed", f"malformed chat completion from {where}: {detail}"
            )

        answer = content or ""
        if usage is not None and usage.get("prompt_tokens") is not None:
            in_tok = int(usage["prompt_tokens"] or 0)
            out_tok = int(usage.get("completion_tokens") or 0)
            source = "api"
        else:
            in_tok = count_messages(self._count, request.messages)
            out_tok = self._count(answer)
            source = "tokenizer"
        counts = {
            "input_tokens": in_tok,
            "output_tokens": out_tok,
            "usage_source": source,
            "finish_reason": finish,
        }
        if finish == "content_filter":
            return self._fail(
                request,
                "content_filter",
                "teacher refused: finish_reason=content_filter",
                permanent=True,
                answer=answer or None,
                **counts,
            )
        if not answer.strip():
            return self._fail(
                request, "empty", "teacher returned empty content", permanent=True, **counts
            )
        return TeacherResult(
            request_hash=request.request_hash, ok=True, answer=answer, model=self.model, **counts
        )

    async def aclose(self) -> None:
        await self._client.close()
