"""Token counters: a callable ``text -> int``, a tiktoken ``Encoding``, or the model tokenizer.

llmlingua counts with tiktoken cl100k (gpt-3.5-turbo). That file cannot be downloaded here,
so nothing defaults to it: without a counter we count the model tokenizer's tokens (no
special tokens). Pass an ``Encoding`` (or any callable) to count like upstream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

TokenCounter = Callable[[str], int]


def make_counter(spec: Any, tokenizer: Any) -> TokenCounter:
    if spec is None:
        backend = tokenizer.backend_tokenizer

        def count(text: str) -> int:
            return len(backend.encode(text, add_special_tokens=False).ids)

        return count
    if hasattr(spec, "encode") and hasattr(spec, "n_vocab"):  # tiktoken.Encoding
        return lambda text: len(spec.encode(text, disallowed_special=()))
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
