"""Chunking token streams to the model's window, cutting after chunk-end tokens.

Two rules, both pure functions of a boolean "is chunk end" array:

- :func:`llmlingua_chunks` reproduces llmlingua 0.2.2 exactly: a window of ``max_len``
  (510) tokens is cut after the last end token at positions ``st+1 .. st+max_len``; with none,
  the chunk takes ``max_len + 1`` tokens (one more than fits: upstream then truncates the
  model input and loses the ``[SEP]``). The last chunk takes the rest when at most
  ``max_len`` tokens remain.
- :func:`chunks` is our rule: at most ``max_len`` tokens per chunk, cut after the last end token
  in the window (never at its first token), else at the window's end.
"""

from __future__ import annotations

import numpy as np


def llmlingua_chunks(is_end: np.ndarray, max_len: int = 510) -> list[tuple[int, int]]:
    """[start, stop) token ranges as llmlingua's ``__chunk_context`` makes them."""
    n = len(is_end)
    ends = np.flatnonzero(is_end)
    out: list[tuple[int, int]] = []
    st = 0
    while st < n:
        if st + max_len > n - 1:
            out.append((st, n))
            break
        ed = st + max_len
        # last end token in (st, st+max_len]
        k = np.searchsorted(ends, ed, side="right") - 1
        if k >= 0 and ends[k] > st:
            ed = int(ends[k])
        out.append((st, ed + 1))
        st = ed + 1
    return out


def chunks(is_end: np.ndarray, max_len: int = 510) -> list[tuple[int, int]]:
    """[start, stop) ranges of at most ``max_len`` tokens, cut after chunk-end tokens."""
    n = len(is_end)
    ends = np.flatnonzero(is_end)
    out: list[tuple[int, int]] = []
    st = 0
    while st < n:
        if n - st <= max_len:
            out.append((st, n))
            break
        last = st + max_len - 1  # last index that fits
        k = np.searchsorted(ends, last, side="right") - 1
        stop = int(ends[k]) + 1 if k >= 0 and ends[k] > st else st + max_len
        out.append((st, stop))
        st = stop
    return out
