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
from .words import Scheme, TokenFeatures, group_words_arrays, has_digit, space_mask


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
    plain: bool = False  # no force-string segments: ``ids`` is the whole text's tokenization

    @property
    def n_words(self) -> int:
        return len(self.spans)


def build_layout(
    text: str,
    segments: Sequence[tuple[int, int, bool]],
    encodings: Sequence[tuple[np.ndarray, np.ndarray, TokenFeatures]],
    scheme: Scheme,
    force_tokens: Sequence[str],
    chunk_end_tokens: Sequence[str],
    force_reserve_digit: bool,
    max_len: int,
) -> Layout:
    """``encodings``: one (ids, offsets [n, 2], token features) per non-force segment,
    offsets segment-local. Features carry ``is_end`` for ``chunk_end_tokens``."""
    force = frozenset(force_tokens)
    ends = set(chunk_end_tokens)
    spaces = space_mask(text)
    ids: list[np.ndarray] = []
    is_end: list[np.ndarray] = []
    wot: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    stops: list[np.ndarray] = []
    pseudo: list[np.ndarray] = []
    n_spans = 0
    enc_it = iter(encodings)
    for s, e, is_needle in segments:
        if is_needle:
            starts.append(np.asarray([s], dtype=np.int64))
            stops.append(np.asarray([e], dtype=np.int64))
            pseudo.append(np.ones(1, dtype=bool))
            n_spans += 1
            if text[s:e] in ends:  # the chunk ends after the token before the pseudo-word
                for prev in reversed(is_end):
                    if len(prev):
                        prev[-1] = True
                        break
            continue
        tids, offs, feats = next(enc_it)
        w, a, b = group_words_arrays(feats, offs + s, text, scheme, spaces)
        w = np.where(w >= 0, w + n_spans, -1)
        wot.append(w)
        starts.append(a)
        stops.append(b)
        pseudo.append(np.zeros(len(a), dtype=bool))
        n_spans += len(a)
        ids.append(np.asarray(tids, dtype=np.int64))
        is_end.append(feats.is_end.copy())
    word_of_token = np.concatenate(wot) if wot else np.zeros(0, dtype=np.int64)
    s_all = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
    e_all = np.concatenate(stops) if stops else np.zeros(0, dtype=np.int64)
    spans = list(zip(s_all.tolist(), e_all.tolist(), strict=True))
    words = [text[a:b] for a, b in spans]
    pseudo_a = np.concatenate(pseudo) if pseudo else np.zeros(0, dtype=bool)
    is_force = pseudo_a.copy()
    if force:
        is_force |= np.fromiter((w in force for w in words), dtype=bool, count=len(words))
    forced = is_force.copy()
    if force_reserve_digit:
        forced |= np.fromiter((has_digit(w) for w in words), dtype=bool, count=len(words))
    m = word_of_token >= 0
    weights = np.bincount(word_of_token[m], minlength=len(spans)).astype(np.int64)
    weights[pseudo_a] = 1
    ends_a = np.concatenate(is_end) if is_end else np.zeros(0, dtype=bool)
    return Layout(
        text=text,
        ids=np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64),
        chunks=make_chunks(ends_a, max_len),
        word_of_token=word_of_token,
        spans=spans,
        words=words,
        forced=forced,
        is_force=is_force,
        weights=np.maximum(weights, 1),
    )
