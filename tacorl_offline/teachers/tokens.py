"""Token counting where a backend returns no usage.

Design decision: tiktoken is used only when its encoding file is already in the local cache
(``TIKTOKEN_CACHE_DIR`` / ``DATA_GYM_CACHE_DIR`` / the temp ``data-gym-cache``); it is never
asked to download (there is no network on the project's machines, and a hang there would stall
a fill). Otherwise a whitespace counter (``len(text.split())``) stands in. Either way the result is
marked ``usage_source="tokenizer"`` by the caller.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable

_BLOBS = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}


def whitespace_count(text: str) -> int:
    """Whitespace-separated words: a rough, dependency-free token count."""
    return len(text.split())


def _cache_dir() -> str | None:
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        d = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        d = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        d = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return d or None


def _cached(encoding: str) -> bool:
    d = _cache_dir()
    blob = _BLOBS.get(encoding)
    if d is None or blob is None:
        return False
    return os.path.exists(os.path.join(d, hashlib.sha1(blob.encode()).hexdigest()))


@functools.lru_cache(maxsize=8)
def _counter_for(model: str) -> Callable[[str], int]:
    try:
        import tiktoken
    except ImportError:
        return whitespace_count
    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        name = "cl100k_base"
    for enc_name in (name, "cl100k_base"):
        if _cached(enc_name):
            try:
                enc = tiktoken.get_encoding(enc_name)
            except Exception:
                continue
            return lambda s: len(enc.encode(s, disallowed_special=()))
    return whitespace_count


def counter_for(model: str) -> Callable[[str], int]:
    """tiktoken for ``model`` if its encoding is cached locally, else :func:`whitespace_count`."""
    return _counter_for(model)


def count_messages(count: Callable[[str], int], messages: Iterable[dict[str, str]]) -> int:
    return sum(count(str(m.get("content") or "")) for m in messages)
