"""Our (normal-mode) layout of one context: tokens, chunks and words, before any model call.

Multi-piece force strings (e.g. "\\n", which WordPiece drops as whitespace) are found in the
original text and become *pseudo-words*: forced, kept, never shown to the model, so the
model and tokenizer stay untouched (upstream adds ``[NEWi]`` tokens with random embeddings
instead). The text between them is tokenized as is; chunks hold at most ``max_len`` tokens
and end after a chunk-end token (or before a chunk-end pseudo-word).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .chunking import chunks as make_chunks
from .words import Scheme, group_words, has_digit, pure


@dataclass
class Layout:
    text: str
    ids: np.ndarray  # model token ids, no specials
    chunks: list[tuple[int, int]]
    word_of_token: np.ndarray  # -1: token in no word
    spans: list[tuple[int, int]]
    words: list[str]
    forced: np.ndarray  # always kept, no action
    is_force: np.ndarray  # a force token (for drop_consecutive)
    weights: np.ndarray  # model tokens per word (pseudo-words: 1)

    @property
    def n_words(self) -> int:
        return len(self.spans)


def build_layout(
    text: str,
    segments: Sequence[tuple[int, int, bool]],
    encodings: Sequence[tuple[list[str], list[int], list[tuple[int, int]]]],
    scheme: Scheme,
    force_tokens: Sequence[str],
    chunk_end_tokens: Sequence[str],
    force_reserve_digit: bool,
    max_len: int,
) -> Layout:
    """``encodings`` has one (tokens, ids, offsets) per non-force segment, offsets segment-local."""
    force = frozenset(force_tokens)
    ends = set(chunk_end_tokens)
    ids: list[int] = []
    is_end: list[bool] = []
    wot: list[np.ndarray] = []
    spans: list[tuple[int, int]] = []
    pseudo: list[bool] = []
    enc_it = iter(encodings)
    for s, e, is_needle in segments:
        if is_needle:
            spans.append((s, e))
            pseudo.append(True)
            if text[s:e] in ends and is_end:
                is_end[-1] = True
            continue
        toks, tids, offs = next(enc_it)
        offs = [(a + s, b + s) for a, b in offs]
        g = group_words(toks, offs, text, scheme, force)
        w = g.word_of_token.copy()
        w[w >= 0] += len(spans)
        wot.append(w)
        spans.extend(g.spans)
        pseudo.extend([False] * len(g.spans))
        ids.extend(tids)
        is_end.extend(pure(t, scheme) in ends or t in ends for t in toks)
    word_of_token = np.concatenate(wot) if wot else np.zeros(0, dtype=np.int64)
    words = [text[a:b] for a, b in spans]
    pseudo_a = np.asarray(pseudo, dtype=bool)
    is_force = pseudo_a | np.fromiter((w in force for w in words), dtype=bool, count=len(words))
    forced = is_force.copy()
    if force_reserve_digit:
        forced |= np.fromiter((has_digit(w) for w in words), dtype=bool, count=len(words))
    m = word_of_token >= 0
    weights = np.bincount(word_of_token[m], minlength=len(spans)).astype(np.int64)
    weights[pseudo_a] = 1
    return Layout(
        text=text,
        ids=np.asarray(ids, dtype=np.int64),
        chunks=make_chunks(np.asarray(is_end, dtype=bool), max_len),
        word_of_token=word_of_token,
        spans=spans,
        words=words,
        forced=forced,
        is_force=is_force,
        weights=np.maximum(weights, 1),
    )
