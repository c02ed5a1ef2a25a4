"""The one small interface every teacher implements.

A teacher turns a :class:`TeacherRequest` into a :class:`TeacherResult`. It never touches
the warehouse: the caller (teacher-fill, the trainer) looks answers up, records every
attempt in the ledger and commits each answer as it arrives. That split is what lets an
OpenAI Batch API backend fit: it submits and collects over the same request/result types
instead of ``answer`` (:mod:`tacorl_offline.teachers.openai_batch`).

Failure semantics:
- ``ok=False, permanent=True``: the teacher answered but the answer is unusable (empty,
  content filtered). Stored, so it is never paid again; the sample is unscorable.
- ``ok=False, permanent=False``: transport failure (timeout, 5xx, 429 after retries,
  malformed body). Not stored as an answer; a rerun tries again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class TeacherRequest:
    request_hash: str
    messages: list[dict[str, str]]
    # The (possibly compressed) compressible text and the never-compressed fields. API
    # teachers ignore these and send ``messages``; the extractive stand-in reads them.
    text: str = ""
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Attempt:
    """One HTTP attempt (the SDK may retry several times inside one ``answer``)."""

    status: str  # "ok" | "http_429" | "http_500" | "timeout" | "connection" | "malformed" | ...
    latency_s: float
    error: str | None = None


@dataclass
class TeacherResult:
    request_hash: str
    ok: bool
    answer: str | None
    input_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None  # one line, never contains credentials
    error_kind: str | None = (
        None  # "empty" | "content_filter" | "timeout" | "http" | "malformed" | "connection"
    )
    permanent: bool = False
    latency_s: float = 0.0
    model: str = ""
    usage_source: str = "api"  # "api" when the backend returned usage, else "tokenizer"
    via_batch: bool = False  # answered through the Batch API: priced with its discount
    attempts: list[Attempt] = field(default_factory=list)


@runtime_checkable
class Teacher(Protocol):
    backend: str
    model: str

    def key_settings(self) -> dict[str, Any]:
        """Everything that changes the answer (goes into the teacher key). No secrets, no URLs."""

    async def answer(self, request: TeacherRequest) -> TeacherResult:
        """Answer one request. Never raises for per-request failures: returns ok=False."""

    async def aclose(self) -> None: ...
