"""Word labels for supervised warm starts, LLMLingua-2 style (pure, no I/O).

LLMLingua-2 (Pan et al. 2024) labels a word of the original *keep* when it can be aligned to a
word of an extractive compression of it. We align the original to a *target text*: the
teacher's answer to the original prompt (for QA and lead summaries the answer is extractive,
so its words are the original's words), or any compressed version of the prompt.

The alignment follows LLMLingua-2's rules:

- walk the target's words in order, keeping a pointer into the original;
- a target word matches the first original word at or after the pointer, within a sliding
  ``window`` of original words, that is equal to it exactly; failing that, equal after
  normalisation (lowercase, punctuation stripped, a light suffix stemmer standing in for
  LLMLingua-2's spaCy lemmatiser, which needs model files we cannot download);
- a match labels that original word keep and moves the pointer past it; an unmatched target
  word is counted (its share is LLMLingua-2's "variation rate", used to filter bad samples).

Words are whitespace-delimited pieces of text with their character spans; callers map the
labels onto the compressor's own word layout by span (:func:`labels_for_spans`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_PIECE = re.compile(r"\S+")
_STRIP = re.compile(r"^\W+|\W+$", re.UNICODE)
_SUFFIXES = ("ingly", "edly", "ings", "ing", "ies", "ied", "ed", "es", "s", "ly")


def normalise(word: str) -> str:
    """Lowercase, outer punctuation stripped, a light suffix stem: 'Kings,' -> 'king'."""
    w = _STRIP.sub("", word.lower())
    for suf in _SUFFIXES:
        if len(w) > len(suf) + 2 and w.endswith(suf):
            return w[: -len(suf)] + ("y" if suf in ("ies", "ied") else "")
    return w


def words_with_spans(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Whitespace-delimited words of ``text`` and their character spans."""
    ms = list(_PIECE.finditer(text))
    return [m.group() for m in ms], [(m.start(), m.end()) for m in ms]


@dataclass(frozen=True)
class Alignment:
    labels: np.ndarray  # bool per original word: aligned to the target
    matched: int  # target words matched
    target_words: int

    @property
    def variation_rate(self) -> float:
        """Share of target words not found in the original (LLMLingua-2's filter)."""
        return 1.0 - self.matched / self.target_words if self.target_words else 0.0


def align(original: Sequence[str], target: Sequence[str], window: int = 150) -> Alignment:
    """Label the original words that the target's words align to (see the module docstring)."""
    labels = np.zeros(len(original), dtype=bool)
    norm = [normalise(w) for w in original]
    ptr, matched = 0, 0
    for t in target:
        tn = normalise(t)
        if not tn:  # pure punctuation: align only exactly
            tn = None
        stop = min(len(original), ptr + window)
        hit = next((j for j in range(ptr, stop) if original[j] == t), None)
        if hit is None and tn is not None:
            hit = next((j for j in range(ptr, stop) if norm[j] == tn), None)
        if hit is not None:
            labels[hit] = True
            matched += 1
            ptr = hit + 1
    return Alignment(labels, matched, len(target))


def align_text(
    original: str, target: str, window: int = 150
) -> tuple[Alignment, list[tuple[int, int]]]:
    """:func:`align` on whitespace words of two texts; also returns the original's spans."""
    ow, spans = words_with_spans(original)
    tw, _ = words_with_spans(target)
    return align(ow, tw, window), spans


def labels_for_spans(
    keep_spans: Sequence[tuple[int, int]], word_spans: Sequence[tuple[int, int]]
) -> np.ndarray:
    """Map labels given as kept character spans onto another segmentation's words: a word is
    keep when it overlaps a kept span (a compressor word inside a kept whitespace word)."""
    out = np.zeros(len(word_spans), dtype=bool)
    if not keep_spans:
        return out
    ks = np.asarray(sorted(keep_spans), dtype=np.int64).reshape(-1, 2)
    for i, (a, b) in enumerate(word_spans):
        j = int(np.searchsorted(ks[:, 0], b, side="left")) - 1  # last kept span starting before b
        if j >= 0 and ks[j, 1] > a and b > a:
            out[i] = True
    return out


def trim_to_rate(labels: np.ndarray, weights: np.ndarray, rate: float) -> np.ndarray:
    """At most ``rate`` of the total weight labelled keep: the earliest aligned words win.
    Labels under the budget are returned unchanged (the rate is a ceiling, not a quota)."""
    labels = np.asarray(labels, dtype=bool)
    w = np.asarray(weights, dtype=np.float64)
    budget = rate * float(w.sum())
    cum = np.cumsum(np.where(labels, w, 0.0))
    return labels & (cum <= budget + 1e-9)
