"""Which words to keep, given word probabilities: pure numpy, table-tested.

Two families:

- ``llmlingua_*`` reproduce llmlingua 0.2.2 bit for bit: word means accumulated in float32
  left to right (as its ``sum(p) / len(p)`` over numpy float32 scalars does), a per-chunk
  threshold ``np.percentile(p repeated once per counter token, int(100*reduce_rate + 1))``,
  keep iff ``p > threshold`` (or ``p == threshold == 1``), and its two-pass drop_consecutive.
- our greedy rules: a per-prompt token budget (highest probabilities first, forced words
  first), or an absolute threshold ``p >= tau``; drop_consecutive removes a force token whose
  previous kept word is the same force token.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def seq_mean_f32(token_probs: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per-word mean of contiguous token runs, summed left to right in float32."""
    p = np.asarray(token_probs, dtype=np.float32)
    if len(starts) == 0:
        return np.zeros(0, dtype=np.float32)
    acc = p[starts].copy()
    for k in range(1, int(lengths.max())):
        m = lengths > k
        acc[m] = acc[m] + p[starts[m] + k]
    return acc / lengths.astype(np.float32)


def segment_mean(token_probs: np.ndarray, word_of_token: np.ndarray, n_words: int) -> np.ndarray:
    """Mean token probability per word; tokens with word index -1 are ignored."""
    m = word_of_token >= 0
    sums = np.bincount(word_of_token[m], weights=token_probs[m], minlength=n_words)
    counts = np.bincount(word_of_token[m], minlength=n_words)
    return sums / np.maximum(counts, 1)


def segment_first(token_probs: np.ndarray, word_of_token: np.ndarray, n_words: int) -> np.ndarray:
    out = np.zeros(n_words, dtype=np.float64)
    m = word_of_token >= 0
    idx = np.flatnonzero(m)
    w = word_of_token[idx]
    first = np.ones(len(w), dtype=bool)
    first[1:] = w[1:] != w[:-1]
    out[w[first]] = token_probs[idx[first]]
    return out


def llmlingua_chunk_keep(
    words: Sequence[str],
    probs: np.ndarray,
    n_tokens: np.ndarray,
    reduce_rate: float,
    force_tokens: Sequence[str],
    drop_consecutive: bool,
    py_float: np.ndarray | None = None,
) -> np.ndarray:
    """Labels of one chunk's words exactly as llmlingua's ``__compress`` computes them.

    ``py_float`` marks words whose upstream probability is a Python float (every token forced)
    rather than a numpy float32: ``np.percentile`` of a list of float32 scalars works in
    float32, and in float64 as soon as one Python float is in the list.
    """
    n = len(words)
    if n == 0:
        return np.zeros(0, dtype=bool)
    p = np.asarray(probs, dtype=np.float64).copy()
    pyf = np.zeros(n, dtype=bool) if py_float is None else np.asarray(py_float, dtype=bool).copy()

    def pct(values: np.ndarray, mask: np.ndarray, q: int) -> float:
        return np.percentile(values if mask.any() else values.astype(np.float32), q)

    force = set(force_tokens)
    is_force = np.fromiter((w in force for w in words), dtype=bool, count=n)
    if drop_consecutive:
        thr0 = pct(p, pyf, int(100 * reduce_rate))
        good = (~is_force) & (p > thr0)
        cum = np.concatenate([[0], np.cumsum(good)])
        prev_pos = -1
        for i in np.flatnonzero(is_force):
            between = cum[i] - cum[prev_pos + 1] > 0  # good words strictly between
            if not between and prev_pos >= 0 and words[i] == words[prev_pos]:
                p[i] = 0.0
                pyf[i] = True
            prev_pos = i
    thr = pct(np.repeat(p, n_tokens), np.repeat(pyf, n_tokens), int(100 * reduce_rate + 1))
    keep = (p > thr) | ((thr == 1.0) & (p == thr))
    if drop_consecutive:
        cand = np.flatnonzero(keep)
        for j in range(1, len(cand)):
            i = cand[j]
            if is_force[i] and words[cand[j - 1]] == words[i]:
                keep[i] = False
    return keep


def llmlingua_context_keep(
    scores: Sequence[float], context_level_rate: float, force_ids: Sequence[int] = ()
) -> np.ndarray:
    """llmlingua's context-level filter: keep contexts scoring >= the percentile threshold.

    Scores keep their dtype (upstream's are float32 scalars: the percentile runs in float32).
    """
    s = np.asarray(scores)
    thr = np.percentile(s, int(100 * (1 - context_level_rate)))
    keep = s >= thr
    for i in force_ids:
        if 0 <= i < len(keep):
            keep[i] = True
    return keep


def keep_by_rate(
    probs: np.ndarray, weights: np.ndarray, rate: float, forced: np.ndarray
) -> np.ndarray:
    """Keep forced words, then the most probable words while the kept weight fits the budget.

    The budget is ``rate * weights.sum()``; ties break by position (earlier first).
    """
    n = len(probs)
    if rate >= 1.0 or n == 0:
        return np.ones(n, dtype=bool)
    key = np.where(forced, np.inf, np.asarray(probs, dtype=np.float64))
    order = np.lexsort((np.arange(n), -key))
    cum = np.cumsum(np.asarray(weights, dtype=np.float64)[order])
    budget = rate * float(np.sum(weights))
    keep = np.zeros(n, dtype=bool)
    keep[order[cum <= budget + 1e-9]] = True
    return keep | forced


def keep_by_threshold(probs: np.ndarray, tau: float, forced: np.ndarray) -> np.ndarray:
    return (np.asarray(probs) >= tau) | forced


def drop_consecutive(keep: np.ndarray, words: Sequence[str], is_force: np.ndarray) -> np.ndarray:
    """Drop a kept force token when the previous kept word is the same force token."""
    keep = keep.copy()
    cand = np.flatnonzero(keep)
    for j in range(1, len(cand)):
        i, prev = cand[j], cand[j - 1]
        if is_force[i] and is_force[prev] and words[i] == words[prev]:
            keep[i] = False
    return keep
