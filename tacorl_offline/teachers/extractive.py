"""Extractive teacher: a deterministic STAND-IN for a real LLM (no model, no network).

It exists for the quick start and the tests, not for real training signal. It "answers" by
copying sentences of the (possibly compressed) text it is given:

- ``summary``: the first ``extractive_sentences`` sentences (a lead-N summary);
- ``qa``: the one sentence with the largest word overlap with ``fields["question"]``;
- ``auto``: ``qa`` when the record has a ``question`` field, else ``summary``.

Sentences are split on ``.``, ``!``, ``?`` (followed by whitespace) and on newlines. Tokens
are counted with a whitespace counter (``usage_source="tokenizer"``); the cost is 0 because
its model name always starts with ``extractive`` (``key_settings()`` says backend
``extractive``). The answer text is not prefixed with a marker on purpose: a constant prefix
would inflate every similarity reward computed between two of its answers.
"""

from __future__ import annotations

import re
import time
from typing import Any

from tacorl_offline.teachers.base import Attempt, TeacherRequest, TeacherResult
from tacorl_offline.tokens import count_messages, whitespace_count

_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+|\s*\n+\s*")
_WORD = re.compile(r"\w+", re.UNICODE)
_STOPWORDS = (
    "a an the of to in on at for by with and or but is are was were be been it its this that "
    "these those what which who whom whose when where why how do does did from as into than "
    "then there their they he she his her i you we our your my me not no yes"
)
_STOP = frozenset(_STOPWORDS.split())


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT_SPLIT.split(text) if s and s.strip()]


def _words(text: str) -> set[str]:
    return {w for w in (m.lower() for m in _WORD.findall(text)) if w not in _STOP}


def lead_summary(text: str, n: int) -> str:
    return " ".join(split_sentences(text)[:n])


def best_overlap_sentence(text: str, question: str) -> str:
    """The first sentence with the most distinct non-stopword words shared with ``question``."""
    sentences = split_sentences(text)
    if not sentences:
        return ""
    q = _words(question)
    best, best_score = sentences[0], -1
    for s in sentences:
        score = len(q & _words(s))
        if score > best_score:
            best, best_score = s, score
    return best


class ExtractiveTeacher:
    """Deterministic stand-in teacher. See the module docstring."""

    backend = "extractive"

    def __init__(self, cfg: Any) -> None:
        self._cfg = cfg
        self.mode: str = cfg.extractive_mode
        self.sentences: int = cfg.extractive_sentences
        model = str(cfg.model or "")
        # Never claim to be a real model (a stale "gpt-4o" would also hit the price table).
        self.model: str = (
            model if model.startswith("extractive") else f"extractive-{self.mode}-{self.sentences}"
        )

    def __repr__(self) -> str:
        return f"ExtractiveTeacher(model={self.model!r}, mode={self.mode!r}, stand_in=True)"

    def key_settings(self) -> dict[str, Any]:
        return self._cfg.key_settings()

    def extract(self, text: str, fields: Any) -> str:
        mode = self.mode
        if mode == "auto":
            mode = "qa" if fields and "question" in fields else "summary"
        if mode == "qa":
            return best_overlap_sentence(text, str((fields or {}).get("question") or ""))
        return lead_summary(text, self.sentences)

    def answer_sync(self, request: TeacherRequest) -> TeacherResult:
        t0 = time.perf_counter()
        answer = self.extract(request.text, request.fields)
        latency = time.perf_counter() - t0
        common: dict[str, Any] = {
            "request_hash": request.request_hash,
            "input_tokens": count_messages(whitespace_count, request.messages)
            if request.messages
            else whitespace_count(request.text),
            "output_tokens": whitespace_count(answer),
            "latency_s": latency,
            "model": self.model,
            "usage_source": "tokenizer",
        }
        if not answer:
            return TeacherResult(
                ok=False,
                answer=None,
                finish_reason="stop",
                error="extractive stand-in found no sentence in the text",
                error_kind="empty",
                permanent=True,
                attempts=[Attempt("empty", latency, "no sentence")],
                **common,
            )
        return TeacherResult(
            ok=True,
            answer=answer,
            finish_reason="stop",
            attempts=[Attempt("ok", latency)],
            **common,
        )

    async def answer(self, request: TeacherRequest) -> TeacherResult:
        return self.answer_sync(request)

    async def aclose(self) -> None:
        return None
