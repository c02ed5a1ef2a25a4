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


def group_words(
    tokens: list[str],
    offsets: list[tuple[int, int]],
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
    uniq, inv = np.unique(np.asarray(tokens, dtype=object).astype(str), return_inverse=True)
    u = [str(t) for t in uniq]
    marker = {"wordpiece": "##", "sentencepiece": "▁", "bytelevel": "Ġ"}[scheme]
    has_marker = np.fromiter((t.startswith(marker) for t in u), dtype=bool, count=len(u))[inv]
    in_force = np.fromiter(
        (pure(t, scheme) in force or t in force for t in u), dtype=bool, count=len(u)
    )[inv]
    punct = np.fromiter((_is_punct(pure(t, scheme)) for t in u), dtype=bool, count=len(u))[inv]
    off = np.asarray(offsets, dtype=np.int64).reshape(n, 2)
    start = np.zeros(n, dtype=bool)
    start[0] = True
    prev_force = in_force[:-1]
    if scheme == "wordpiece":
        rule = ~has_marker[1:] | prev_force
    elif scheme == "sentencepiece":
        rule = has_marker[1:] | punct[1:] | prev_force
    else:
        nl = np.fromiter((t.startswith(("Ċ", "ĉ")) for t in u), dtype=bool, count=len(u))[inv]
        rule = has_marker[1:] | nl[1:] | punct[1:] | punct[:-1] | prev_force
    start[1:] = rule | in_force[1:] | (off[1:, 0] > off[:-1, 1])
    wid = np.cumsum(start) - 1
    firsts = np.flatnonzero(start)
    s_arr = off[firsts, 0]
    e_arr = np.maximum.reduceat(off[:, 1], firsts)
    word_of_token = np.full(n, -1, dtype=np.int64)
    spans: list[tuple[int, int]] = []
    new_id = np.full(len(firsts), -1, dtype=np.int64)
    for k, (s, e) in enumerate(zip(s_arr.tolist(), e_arr.tolist(), strict=False)):
        if s < e and (text[s].isspace() or text[e - 1].isspace()):
            while s < e and text[s].isspace():
                s += 1
            while e > s and text[e - 1].isspace():
                e -= 1
        if e > s:
            new_id[k] = len(spans)
            spans.append((s, e))
    word_of_token = new_id[wid]
    return WordGroups(word_of_token, spans)


def has_digit(word: str) -> bool:
    return bool(_DIGIT.search(word))
