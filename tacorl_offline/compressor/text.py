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

from .words import space_mask


def rebuild(
    text: str,
    spans: Sequence[tuple[int, int]] | np.ndarray,
    keep: Sequence[bool] | np.ndarray,
    spaces: np.ndarray | None = None,
) -> str:
    """The compressed text: kept words' original substrings, joined as described above.

    Vectorised: each kept word contributes one character range (its word, preceded by the
    whole gap or only the gap's trailing whitespace); touching ranges merge before slicing.
    """
    keep_a = np.asarray(keep, dtype=bool)
    idx = np.flatnonzero(keep_a)
    if len(idx) == 0:
        return ""
    n = len(keep_a)
    sp = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    s_all, e_all = sp[:, 0], sp[:, 1]
    nonempty = s_all < e_all
    valid = idx[nonempty[idx]]  # kept words with text, in order
    seg_a: list[np.ndarray] = []
    seg_b: list[np.ndarray] = []
    if idx[0] == 0:
        seg_a.append(np.zeros(1, dtype=np.int64))
        seg_b.append(s_all[:1])
    if len(valid):
        s, e = s_all[valid], e_all[valid]
        gap_a = s.copy()
        if len(valid) > 1:
            prev, cur = valid[:-1], valid[1:]
            cum = np.concatenate([[0], np.cumsum(nonempty)])
            whole = cum[cur] - cum[prev + 1] == 0  # no word with text dropped in between
            ps = e_all[prev]
            # start of the gap's trailing whitespace: after the last non-space before s
            ws = space_mask(text) if spaces is None else spaces
            pos = np.arange(len(text), dtype=np.int64)
            last_ns = np.maximum.accumulate(np.where(ws, -1, pos)) if len(text) else pos
            trail = np.maximum(ps, last_ns[s[1:] - 1] + 1)
            gap_a[1:] = np.minimum(np.where(whole, ps, trail), s[1:])
        seg_a.append(gap_a)
        seg_b.append(e)
        if idx[-1] == n - 1:
            seg_a.append(e[-1:])
            seg_b.append(np.asarray([len(text)], dtype=np.int64))
    if not seg_a:
        return ""
    a = np.concatenate(seg_a)
    b = np.concatenate(seg_b)
    if len(a) > 1:  # merge ranges that touch
        brk = np.flatnonzero(a[1:] != b[:-1]) + 1
        starts = np.concatenate([[0], brk])
        stops = np.concatenate([brk, [len(a)]]) - 1
        a, b = a[starts], b[stops]
    return "".join(text[x:y] for x, y in zip(a.tolist(), b.tolist(), strict=True))


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
