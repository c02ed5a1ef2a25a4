"""Token counters: a callable ``text -> int``, a tiktoken ``Encoding``, or the model tokenizer.

llmlingua counts with tiktoken cl100k (gpt-3.5-turbo). That file cannot be downloaded here,
so nothing defaults to it: without a counter we count the model tokenizer's tokens (no
special tokens). Pass an ``Encoding`` (or any callable) to count like upstream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

TokenCounter = Callable[[str], int]


class ModelTokenCounter:
    """Counts a Rust tokenizer's tokens (no special tokens). The compressor recognises it and
    reuses the token ids it already has instead of tokenizing the text again."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def __call__(self, text: str) -> int:
        return len(self.backend.encode(text, add_special_tokens=False).ids)

    def many(self, texts: list[str]) -> list[int]:
        encs = self.backend.encode_batch(texts, add_special_tokens=False) if texts else []
        return [len(e.ids) for e in encs]


class TiktokenCounter:
    """Counts a tiktoken ``Encoding``'s tokens, special-token text counted as ordinary text
    (``encode_ordinary`` is ``encode(text, disallowed_special=())``, without its checks)."""

    def __init__(self, encoding: Any) -> None:
        self.encoding = encoding

    def __call__(self, text: str) -> int:
        return len(self.encoding.encode_ordinary(text))


#: counters whose work runs in Rust without the GIL and that are safe to call from a thread
THREAD_SAFE = (ModelTokenCounter, TiktokenCounter)


def make_counter(spec: Any, tokenizer: Any) -> TokenCounter:
    """``tokenizer``: a transformers fast tokenizer or a ``tokenizers.Tokenizer`` (used when
    ``spec`` is None; pass one without truncation/padding)."""
    if spec is None:
        return ModelTokenCounter(getattr(tokenizer, "backend_tokenizer", tokenizer))
    if hasattr(spec, "encode_ordinary") and hasattr(spec, "n_vocab"):  # tiktoken.Encoding
        return TiktokenCounter(spec)
    if callable(spec):
        return spec
    raise TypeError(
        f"token counter must be a callable or a tiktoken Encoding, not {type(spec).__name__}"
    )


class CachedCounter:
    """Memoises a counter over repeated short strings (words)."""

    def __init__(self, counter: TokenCounter) -> None:
        self.counter = counter
        self.cache: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        n = self.cache.get(text)
        if n is None:
            n = self.cache[text] = self.counter(text)
        return n
