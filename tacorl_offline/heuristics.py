"""Heuristic compression baselines: what a trained compressor must beat at the same rate.

Design decisions:

- Every baseline works on the **compressor's own word segmentation** (its
  :class:`~tacorl_offline.compressor.layout.Layout`: words, model tokens per word, forced
  words) and goes through the **same budget rule** as greedy compression,
  :func:`~tacorl_offline.compressor.selection.keep_by_rate`: forced words first, then words in
  priority order while the kept model tokens fit ``rate * total``. Only the priority differs,
  so a baseline and a model at rate 0.5 keep the same token budget. ``drop_consecutive`` is
  applied as the compressor applies it. The text is rebuilt from the original's character
  spans and hashed with :func:`~tacorl_offline.hashing.mask_hash`, so a baseline's teacher
  answer is cached and replayed like any other compression.
- ``original``: every word (no compression; the ceiling, and the teacher's consistency).
- ``lead``: the first words up to the rate (all priorities equal; ties break by position).
- ``stopword``: stopwords and punctuation are dropped first, then the rest to reach the rate
  (PCRL's heuristic, rate-controlled): content words have priority over stopwords and
  punctuation, and within each class earlier words come first. So at a low rate the last
  content words go too; at a high rate the earliest stopwords come back to fill the budget.
- ``random``: a uniform random priority per word from ``numpy.random.default_rng(seed)``;
  evaluation averages it over several fixed seeds.
- The stopword list is the NLTK English list (179 words), matched case-insensitively;
  punctuation is a word made only of Unicode punctuation or symbol characters.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tacorl_offline.compressor.layout import Layout
from tacorl_offline.compressor.selection import drop_consecutive as _drop_consecutive
from tacorl_offline.compressor.selection import keep_by_rate
from tacorl_offline.compressor.text import rebuild
from tacorl_offline.config import BASELINE_NAMES, check_baselines  # noqa: F401  (re-exported)
from tacorl_offline.hashing import mask_hash

BASELINES = BASELINE_NAMES
DEFAULT_RANDOM_SEEDS: tuple[int, ...] = (0, 1, 2)

_NLTK_ENGLISH = """i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself
    yourselves he him his himself she she's her hers herself it it's its itself they them their
    theirs themselves what which who whom this that that'll these those am is are was were be
    been being have has had having do does did doing a an the and but if or because as until
    while of at by for with about against between into through during before after above below
    to from up down in out on off over under again further then once here there when where why
    how all any both each few more most other some such no nor not only own same so than too
    very s t can will just don don't should should've now d ll m o re ve y ain aren aren't
    couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't
    ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't
    weren weren't won won't wouldn wouldn't"""
STOPWORDS: frozenset[str] = frozenset(_NLTK_ENGLISH.split())


def is_punctuation(word: str) -> bool:
    """True for a non-empty word made only of punctuation or symbol characters."""
    w = word.strip()
    return bool(w) and all(unicodedata.category(ch)[0] in "PS" for ch in w)


def is_droppable(word: str) -> bool:
    """A stopword (case-insensitive) or punctuation: what ``stopword`` drops first."""
    w = word.strip()
    return w.lower() in STOPWORDS or is_punctuation(w)


def priorities(name: str, words: Sequence[str], seed: int | None = None) -> np.ndarray:
    """Per-word keep priority of baseline ``name`` (higher first; ties: earlier first)."""
    n = len(words)
    if name in ("original", "lead"):
        return np.zeros(n, dtype=np.float64)
    if name == "stopword":
        return np.fromiter((0.0 if is_droppable(w) else 1.0 for w in words), np.float64, n)
    if name == "random":
        return np.random.default_rng(0 if seed is None else seed).random(n)
    raise ValueError(f"unknown baseline {name!r}; choose from: {', '.join(BASELINES)}")


def baseline_keep(
    name: str,
    words: Sequence[str],
    weights: np.ndarray,
    forced: np.ndarray,
    rate: float,
    *,
    seed: int | None = None,
    is_force: np.ndarray | None = None,
    drop_consecutive: bool = False,
) -> np.ndarray:
    """The keep mask of baseline ``name`` over one context's words at ``rate``."""
    if name == "original":
        return np.ones(len(words), dtype=bool)
    keep = keep_by_rate(
        priorities(name, words, seed),
        np.asarray(weights),
        rate,
        np.asarray(forced, dtype=bool),
    )
    if drop_consecutive and is_force is not None:
        keep = _drop_consecutive(keep, words, np.asarray(is_force, dtype=bool))
    return keep


@dataclass(frozen=True)
class HeuristicCompression:
    """One baseline compression of one prompt, keyed like a compressor's."""

    text: str  # the compressed text
    kept_spans: list[tuple[int, int]]
    mask_hash: str
    n_words: int
    n_kept: int


def compress_layout(
    layout: Layout,
    name: str,
    rate: float,
    *,
    seed: int | None = None,
    drop_consecutive: bool = False,
) -> HeuristicCompression:
    """Apply baseline ``name`` to a compressor :class:`Layout` (one context)."""
    words, spans, text = layout.words, layout.spans, layout.text
    keep = baseline_keep(
        name,
        words,
        layout.weights,
        layout.forced,
        rate,
        seed=seed,
        is_force=layout.is_force,
        drop_consecutive=drop_consecutive,
    )
    kept = [s for s, k in zip(spans, keep.tolist(), strict=True) if k and s[1] > s[0]]
    out = text if name == "original" else rebuild(text, spans, keep)
    return HeuristicCompression(
        text=out,
        kept_spans=kept,
        mask_hash=mask_hash(text, kept),
        n_words=len(words),
        n_kept=int(keep.sum()),
    )
