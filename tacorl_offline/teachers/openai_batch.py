"""The OpenAI Batch API as a teacher (``teacher.backend: openai_batch``): half price, offline.

Design decisions:
- Same requests, same answers: a batch line's body is exactly what the online teacher would
  send, its ``custom_id`` is the request hash, and the teacher key is the online ``openai``
  key. Answers collected from a batch therefore serve ``train`` and ``evaluate`` later, and
  those phases (which need an answer now) call the same endpoint online through the inherited
  :meth:`OpenAITeacher.answer`, at the full price.
- This module only speaks HTTP (files and batches endpoints, through the official SDK); what
  is stored where, and when, is :mod:`tacorl_offline.batch_fill`'s business.
- Results are parsed by the online teacher's own parser, so empty and content-filtered
  answers are permanent failures here too; lines in the error file (or missing from the
  output) are transient: not stored, submitted again by the next fill.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import openai
from openai.types.chat import ChatCompletion

from tacorl_offline.errors import UserError
from tacorl_offline.pricing import worst_case_input_tokens
from tacorl_offline.teachers.base import Attempt, TeacherRequest, TeacherResult
from tacorl_offline.teachers.openai_teacher import OpenAITeacher, redact_url

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
ENDPOINT = "/v1/chat/completions"


@dataclass
class BatchState:
    batch_id: str
    status: str
    input_file_id: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    message: str | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


def _state(b: Any) -> BatchState:
    errors = getattr(b, "errors", None)
    data = getattr(errors, "data", None) or []
    message = "; ".join(str(getattr(e, "message", e)) for e in data)[:300] or None
    return BatchState(
        batch_id=b.id,
        status=b.status,
        input_file_id=b.input_file_id,
        output_file_id=b.output_file_id,
        error_file_id=b.error_file_id,
        message=message,
    )


class OpenAIBatchTeacher(OpenAITeacher):
    """Submits requests as a Batch API job and parses its output file into results."""

    def __init__(self, cfg: Any, *, environ: Mapping[str, str] | None = None) -> None:
        super().__init__(cfg, environ=environ)
        self.backend = "openai_batch"

    def __repr__(self) -> str:
        return f"OpenAIBatchTeacher(model={self.model!r}, endpoint={redact_url(self.endpoint)!r})"

    def worst_case_tokens(self, request: TeacherRequest) -> tuple[int, int]:
        """(input bound, ``max_tokens``): the most one request can be billed. The input bound is
        one token per UTF-8 byte plus chat overhead (:func:`~tacorl_offline.pricing.worst_case_input_tokens`):
        a local count could be lower than what the API bills."""
        return worst_case_input_tokens(request.messages), int(self._cfg.max_tokens)

    def jsonl(self, requests: Iterable[TeacherRequest]) -> bytes:
        """The batch input file: one chat-completions request per line, keyed by request hash."""
        lines = [
            json.dumps(
                {
                    "custom_id": r.request_hash,
                    "method": "POST",
                    "url": ENDPOINT,
                    "body": self._params(r),
                },
                ensure_ascii=False,
                sort_keys=True,
            )
            for r in requests
        ]
        return ("\n".join(lines) + "\n").encode("utf-8")

    async def _api(self, what: str, coro: Any) -> Any:
        where = redact_url(self.endpoint)
        try:
            return await coro
        except openai.APIConnectionError as e:
            raise UserError(
                f"Batch API unreachable at {where} while {what} ({type(e).__name__}); "
                "check teacher.base_url and rerun teacher-fill (submitted batches are kept)"
            ) from None
        except openai.APIStatusError as e:
            msg = self._scrub(getattr(e, "message", "") or "")
            raise UserError(
                f"Batch API at {where} refused {what}: HTTP {e.status_code}: {msg}; "
                "check the model and key, then rerun teacher-fill"
            ) from None

    async def upload(self, data: bytes) -> str:
        f = await self._api(
            "uploading the input file",
            self._client.files.create(file=("tacorl-batch.jsonl", data), purpose="batch"),
        )
        return str(f.id)

    async def create(self, input_file_id: str, metadata: Mapping[str, str]) -> BatchState:
        b = await self._api(
            "creating the batch",
            self._client.batches.create(
                input_file_id=input_file_id,
                endpoint=ENDPOINT,
                completion_window="24h",
                metadata=dict(metadata),
            ),
        )
        return _state(b)

    async def retrieve(self, batch_id: str) -> BatchState:
        return _state(
            await self._api(f"polling batch {batch_id}", self._client.batches.retrieve(batch_id))
        )

    async def find_by_input_file(self, input_file_id: str) -> BatchState | None:
        """The batch created from ``input_file_id``, if a create call got through before a crash."""
        page = await self._api("listing batches", self._client.batches.list(limit=100))
        async for b in page:
            if b.input_file_id == input_file_id:
                return _state(b)
        return None

    async def _lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if not file_id:
            return []
        content = await self._api(
            f"downloading file {file_id}", self._client.files.content(file_id)
        )
        out = []
        for line in content.text.splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # a torn line is a missing result: submitted again next fill
        return out

    async def results(
        self, state: BatchState, requests: Mapping[str, TeacherRequest]
    ) -> list[TeacherResult]:
        """One result per request of the batch: parsed answers, or transient failures."""
        where = redact_url(self.endpoint)
        got: dict[str, TeacherResult] = {}
        for line in await self._lines(state.output_file_id):
            rh = line.get("custom_id")
            req = requests.get(rh) if isinstance(rh, str) else None
            if req is None:
                continue
            resp = line.get("response") or {}
            code = resp.get("status_code")
            if code == 200:
                attempt = Attempt(status="ok", latency_s=0.0)
                try:
                    body = ChatCompletion.model_validate(resp.get("body"))
                except Exception as e:
                    body = f"{type(e).__name__}"
                res = self._parse(req, body, [attempt], where)
                res.attempts = [attempt]
            else:
                err = (line.get("error") or {}).get("message") or f"HTTP {code}"
                res = self._fail(req, "http", self._scrub(f"batch line failed: {err}"))
                res.attempts = [Attempt(status=f"http_{code}", latency_s=0.0, error=res.error)]
            res.via_batch = True
            got[req.request_hash] = res
        for line in await self._lines(state.error_file_id):
            rh = line.get("custom_id")
            if isinstance(rh, str) and rh in requests and rh not in got:
                err = (line.get("error") or {}).get("message") or "error"
                res = self._fail(requests[rh], "http", self._scrub(f"batch line failed: {err}"))
                res.via_batch = True
                got[rh] = res
        for rh, req in requests.items():
            if rh not in got:
                res = self._fail(
                    req, "batch", f"no result in batch {state.batch_id} ({state.status})"
                )
                res.via_batch = True
                got[rh] = res
        return [got[rh] for rh in requests]
