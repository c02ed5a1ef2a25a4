"""Text surgery on character spans: splitting at force strings, replacement maps, rebuilding.

Compressed text is rebuilt from the original's character spans, so case and spacing survive:
two kept words that are neighbours in the original keep the exact text between them; across
dropped words, the next kept word keeps the whitespace that precedes it in the original
(so "\n\n" paragraph breaks and spaces survive, "now ." does not appear). Text before the
first and after the last word survives when those words are kept, so keeping every word
returns the original text unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np


def rebuild(text: str, spans: Sequence[tuple[int, int]], keep: Sequence[bool] | np.ndarray) -> str:
    """The compressed text: kept words' original substrings, joined as described above."""
    idx = np.flatnonzero(np.asarray(keep, dtype=bool))
    if len(idx) == 0:
        return ""
    n = len(spans)
    parts: list[str] = []
    if idx[0] == 0:
        parts.append(text[: spans[0][0]])
    prev = -1
    for i in idx:
        s, e = spans[i]
        if s >= e:
            continue
        if prev >= 0:
            ps = spans[prev][1]
            gap = text[ps:s]
            if i == prev + 1 or not any(spans[k][1] > spans[k][0] for k in range(prev + 1, i)):
                parts.append(gap)
            else:
                parts.append(gap[len(gap.rstrip()) :])
        parts.append(text[s:e])
        prev = i
    if idx[-1] == n - 1 and prev >= 0:
        parts.append(text[spans[prev][1] :])
    return "".join(parts)


def split_at(text: str, needles: Sequence[str]) -> list[tuple[int, int, bool]]:
    """Segments (start, end, is_needle) covering ``text``; longest needle first at each place."""
    if not needles:
        return [(0, len(text), False)] if text else []
    pat = re.compile("|".join(re.escape(n) for n in sorted(set(needles), key=len, reverse=True)))
    out: list[tuple[int, int, bool]] = []
    pos = 0
    for m in pat.finditer(text):
        if m.start() > pos:
            out.append((pos, m.start(), False))
        out.append((m.start(), m.end(), True))
        pos = m.end()
    if pos < len(text):
        out.append((pos, len(text), False))
    return out


class ReplaceMap:
    """``str.replace`` applied in order, remembering where each new character came from."""

    def __init__(self, text: str, pairs: Sequence[tuple[str, str]]) -> None:
        # segments: (text, orig_start, orig_end, replaced)
        segs: list[tuple[str, int, int, bool]] = [(text, 0, len(text), False)]
        for old, new in pairs:
            if not old:
                continue
            nxt: list[tuple[str, int, int, bool]] = []
            for s, a, b, rep in segs:
                if rep or old not in s:
                    nxt.append((s, a, b, rep))
                    continue
                pos = 0
                for part_i, part in enumerate(s.split(old)):
                    if part_i:
                        nxt.append((new, a + pos, a + pos + len(old), True))
                        pos += len(old)
                    if part:
                        nxt.append((part, a + pos, a + pos + len(part), False))
                    pos += len(part)
            segs = nxt
        self.text = "".join(s for s, *_ in segs)
        m = len(self.text)
        self.start = np.zeros(m + 1, dtype=np.int64)
        self.end = np.zeros(m + 1, dtype=np.int64)
        k = 0
        for s, a, b, rep in segs:
            L = len(s)
            if rep:
                self.start[k : k + L] = a
                self.end[k : k + L] = b
            else:
                self.start[k : k + L] = np.arange(a, a + L)
                self.end[k : k + L] = np.arange(a + 1, a + L + 1)
            k += L
        self.start[m] = len(text)
        self.end[m] = len(text)

    def span(self, s: int, e: int) -> tuple[int, int]:
        """Original span of the new text's [s, e)."""
        if e <= s:
            o = int(self.start[min(s, len(self.text))])
            return (o, o)
        return int(self.start[s]), int(self.end[e - 1])
