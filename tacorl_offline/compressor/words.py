"""Token-to-word alignment, decided by the tokenizer's own word markers.

Word boundaries come from the tokenizer, never from the model's name (the upstream bug,
llmlingua issues #168/#221): WordPiece marks continuations with ``##``, SentencePiece marks
word starts with ``▁``, byte-level BPE marks them with ``Ġ``. A token also starts a word when
whitespace separates it from the previous one (offsets), when it is punctuation in a
marker-at-start scheme, or when it *is* a force token. Words carry the character span they
cover in the original text (whitespace trimmed), which is what compressed text and mask
hashes are built from. This module is pure: token strings and offsets in, arrays out.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Scheme = Literal["wordpiece", "sentencepiece", "bytelevel"]

#: llmlingua decides word boundaries from these substrings of the model path.
LLMLINGUA_MAGIC: dict[str, str] = {
    "wordpiece": "bert-base-multilingual-cased",
    "sentencepiece": "xlm-roberta-large",
}

_DIGIT = re.compile(r"\d")


def detect_scheme(tokenizer_json: dict[str, Any], vocab: dict[str, int] | None = None) -> Scheme:
    """The word scheme of a fast tokenizer, from its serialized model/pre-tokenizer/decoder."""
    model = (tokenizer_json.get("model") or {}).get("type")
    blob = json.dumps({k: tokenizer_json.get(k) for k in ("pre_tokenizer", "decoder")})
    if model == "WordPiece":
        return "wordpiece"
    if '"ByteLevel"' in blob:
        return "bytelevel"
    if '"Metaspace"' in blob or model == "Unigram":
        return "sentencepiece"
    if vocab:  # fall back to the markers the vocabulary uses most
        counts = {
            "wordpiece": sum(t.startswith("##") for t in vocab),
            "sentencepiece": sum(t.startswith("▁") for t in vocab),
            "bytelevel": sum(t.startswith("Ġ") for t in vocab),
        }
        best = max(counts, key=lambda k: counts[k])
        if counts[best] > 0:
            return best  # type: ignore[return-value]
    raise ValueError(f"cannot detect the word scheme of a {model} tokenizer")


def _is_punct(tok: str) -> bool:
    return bool(tok) and not any(c.isalnum() for c in tok)


def pure(token: str, scheme: Scheme) -> str:
    """The token's text without its word marker."""
    if scheme == "wordpiece":
        return token[2:] if token.startswith("##") else token
    if scheme == "sentencepiece":
        return token.lstrip("▁")
    return token.lstrip("Ġ")


def starts_word(
    token: str, prev: str | None, scheme: Scheme, force: frozenset[str] | set[str]
) -> bool:
    """Whether ``token`` begins a new word (the first token always does)."""
    if prev is None:
        return True
    p = pure(token, scheme)
    if p in force or token in force:
        return True
    if scheme == "wordpiece":
        return not token.startswith("##") or pure(prev, scheme) in force
    if scheme == "sentencepiece":
        return token.startswith("▁") or _is_punct(token) or prev in force
    # byte-level: Ġ marks a preceding space; Ċ/ĉ are newline/tab bytes
    return (
        token.startswith(("Ġ", "Ċ", "ĉ"))
        or _is_punct(p)
        or _is_punct(pure(prev, scheme))
        or prev in force
    )


@dataclass
class WordGroups:
    """Words of one token stream: token -> word index (-1: in no word) and word spans."""

    word_of_token: np.ndarray
    spans: list[tuple[int, int]]


@dataclass
class TokenFeatures:
    """Per-token boolean features that decide word starts and chunk ends.

    Computed per *vocabulary entry* once (:func:`vocab_features`) and gathered by token id,
    or per distinct token string (:func:`token_features`); both give the same arrays.
    """

    has_marker: np.ndarray
    in_force: np.ndarray
    punct: np.ndarray
    newline: np.ndarray
    is_end: np.ndarray

    def take(self, idx: np.ndarray) -> TokenFeatures:
        return TokenFeatures(*(a[idx] for a in dataclasses.astuple(self)))


_MARKER = {"wordpiece": "##", "sentencepiece": "▁", "bytelevel": "Ġ"}


def _features_of(
    strings: list[str],
    scheme: Scheme,
    force: frozenset[str] | set[str],
    ends: frozenset[str] | set[str] = frozenset(),
) -> TokenFeatures:
    n = len(strings)
    marker = _MARKER[scheme]
    pures = [pure(t, scheme) for t in strings]
    return TokenFeatures(
        has_marker=np.fromiter((t.startswith(marker) for t in strings), dtype=bool, count=n),
        in_force=np.fromiter(
            (p in force or t in force for p, t in zip(pures, strings, strict=True)),
            dtype=bool,
            count=n,
        ),
        punct=np.fromiter((_is_punct(p) for p in pures), dtype=bool, count=n),
        newline=np.fromiter((t.startswith(("Ċ", "ĉ")) for t in strings), dtype=bool, count=n),
        is_end=np.fromiter(
            (p in ends or t in ends for p, t in zip(pures, strings, strict=True)),
            dtype=bool,
            count=n,
        ),
    )


def token_features(
    tokens: list[str],
    scheme: Scheme,
    force: frozenset[str] | set[str] = frozenset(),
    ends: frozenset[str] | set[str] = frozenset(),
) -> TokenFeatures:
    """Features of a token sequence, computed once per distinct token string."""
    if not tokens:
        return _features_of([], scheme, force, ends)
    uniq, inv = np.unique(np.asarray(tokens, dtype=object).astype(str), return_inverse=True)
    return _features_of([str(t) for t in uniq], scheme, force, ends).take(inv)


def vocab_features(
    vocab: list[str],
    scheme: Scheme,
    force: frozenset[str] | set[str] = frozenset(),
    ends: frozenset[str] | set[str] = frozenset(),
) -> TokenFeatures:
    """Features indexed by token id (``vocab[i]`` is the string of id ``i``)."""
    return _features_of(vocab, scheme, force, ends)


# str.isspace() for every code point below 0x3001 (none above is whitespace)
_WS_LIMIT = 0x3001
_WS_TABLE = np.fromiter((chr(i).isspace() for i in range(_WS_LIMIT)), dtype=bool, count=_WS_LIMIT)


def space_mask(text: str) -> np.ndarray:
    """``[c.isspace() for c in text]`` as a bool array, vectorised."""
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return _WS_TABLE[np.minimum(cp, _WS_LIMIT - 1)]


def group_words(
    tokens: list[str],
    offsets: list[tuple[int, int]] | np.ndarray,
    text: str,
    scheme: Scheme,
    force: frozenset[str] | set[str] = frozenset(),
) -> WordGroups:
    """Merge tokens into words; a word's span runs from its first to its last token, trimmed.

    Whitespace between two tokens (by offsets) always separates words. A word whose trimmed
    span is empty (e.g. a lone ``▁``) is removed and its tokens belong to no word.
    Vectorised: per-token features are computed once per distinct token string.
    """
    n = len(tokens)
    if n == 0:
        return WordGroups(np.zeros(0, dtype=np.int64), [])
    off = np.asarray(offsets, dtype=np.int64).reshape(n, 2)
    wot, s, e = group_words_arrays(token_features(tokens, scheme, force), off, text, scheme)
    return WordGroups(wot, list(zip(s.tolist(), e.tolist(), strict=True)))


def group_words_arrays(
    feats: TokenFeatures,
    off: np.ndarray,
    text: str,
    scheme: Scheme,
    spaces: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`group_words` on feature arrays: (word_of_token, span starts, span ends).

    ``spaces`` is ``space_mask(text)`` when the caller has it already.
    """
    n = len(off)
    if n == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z.copy(), z.copy()
    has_marker, in_force, punct = feats.has_marker, feats.in_force, feats.punct
    start = np.zeros(n, dtype=bool)
    start[0] = True
    prev_force = in_force[:-1]
    if scheme == "wordpiece":
        rule = ~has_marker[1:] | prev_force
    elif scheme == "sentencepiece":
        rule = has_marker[1:] | punct[1:] | prev_force
    else:
        rule = has_marker[1:] | feats.newline[1:] | punct[1:] | punct[:-1] | prev_force
    start[1:] = rule | in_force[1:] | (off[1:, 0] > off[:-1, 1])
    wid = np.cumsum(start) - 1
    firsts = np.flatnonzero(start)
    s_arr = off[firsts, 0].copy()
    e_arr = np.maximum.reduceat(off[:, 1], firsts)
    if len(text):
        ws = space_mask(text) if spaces is None else spaces
        ok = s_arr < e_arr
        lim = len(text) - 1
        edge = ok & (ws[np.clip(s_arr, 0, lim)] | ws[np.clip(e_arr - 1, 0, lim)])
        for k in np.flatnonzero(edge).tolist():  # rare: trim whitespace at the span's ends
            s, e = int(s_arr[k]), int(e_arr[k])
            while s < e and ws[s]:
                s += 1
            while e > s and ws[e - 1]:
                e -= 1
            s_arr[k], e_arr[k] = s, e
    keep = e_arr > s_arr
    new_id = np.where(keep, np.cumsum(keep) - 1, -1)
    return new_id[wid], s_arr[keep], e_arr[keep]


def has_digit(word: str) -> bool:
    return bool(_DIGIT.search(word))
