"""Token counting: the one home for every counter (compressor, rewards, evaluation, teachers).

Design decisions:

- llmlingua counts with tiktoken cl100k (gpt-3.5-turbo), and in rate mode that count is not
  just reported: its per-chunk threshold is a percentile over word probabilities each
  repeated once per cl100k token of the word, so kept words match llmlingua's only when
  counted with the same encoding. That file is never downloaded: :func:`llmlingua_encoding`
  loads it from a ``.tiktoken`` file the user names (``compress --tiktoken-file``), or from
  tiktoken's cache (``TIKTOKEN_CACHE_DIR``) when it is already there. Without one the
  compressor counts the model tokenizer's tokens (no special tokens).
- The reward's counter (``train.token_counter``) is built by :func:`make_token_counter`:
  the policy tokenizer (a private copy without truncation or padding: some tokenizer.json
  files, MiniLM's among them, truncate to 128 tokens, which would cap every count),
  tiktoken cl100k, or whitespace.
- Where a teacher backend returns no usage, tiktoken is used only when its encoding file is
  already in the local cache (``TIKTOKEN_CACHE_DIR`` / ``DATA_GYM_CACHE_DIR`` / the temp
  ``data-gym-cache``); it is never asked to download (there is no network on the project's
  machines, and a hang there would stall a fill). Otherwise a whitespace counter
  (``len(text.split())``) stands in. Either way the result is marked
  ``usage_source="tokenizer"`` by the caller.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tacorl_offline.errors import UserError

TokenCounter = Callable[[str], int]


def whitespace_count(text: str) -> int:
    """Whitespace-separated words: a rough, dependency-free token count."""
    return len(text.split())


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
    """The compressor's counter. ``tokenizer``: a transformers fast tokenizer or a
    ``tokenizers.Tokenizer`` (used when ``spec`` is None; pass one without truncation/padding)."""
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


def untruncated(tokenizer: Any) -> Any:
    """A private copy of a fast tokenizer's backend without truncation or padding."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


def make_token_counter(kind: str, tokenizer: Any) -> TokenCounter:
    """The reward and evaluation counter named by ``train.token_counter``."""
    if kind == "whitespace":
        return whitespace_count
    if kind == "tiktoken":
        try:
            import tiktoken

            enc = tiktoken.get_encoding("cl100k_base")
        except Exception as e:  # no cached cl100k file and no network
            raise UserError(
                f"train.token_counter 'tiktoken' needs the cl100k_base file ({type(e).__name__}); "
                "set TIKTOKEN_CACHE_DIR to a folder holding it, or use token_counter: policy"
            ) from None
        return TiktokenCounter(enc)
    return ModelTokenCounter(untruncated(tokenizer))


# ---------------------------------------------------------------------------- teachers

_BLOBS = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}


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
def _counter_for(model: str) -> TokenCounter:
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
            return TiktokenCounter(enc)
    return whitespace_count


def counter_for(model: str) -> TokenCounter:
    """A teacher's usage counter: tiktoken for ``model`` if its encoding is cached locally,
    else :func:`whitespace_count`."""
    return _counter_for(model)


def count_messages(count: TokenCounter, messages: Iterable[dict[str, str]]) -> int:
    return sum(count(str(m.get("content") or "")) for m in messages)


# tiktoken_ext.openai_public.cl100k_base, which llmlingua counts with (gpt-3.5-turbo).
CL100K_URL = _BLOBS["cl100k_base"]
CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
CL100K_SPECIAL = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}


def _tiktoken_cache_file() -> Path | None:
    """Where tiktoken keeps cl100k once fetched (the same rules as tiktoken.load)."""
    d = _cache_dir()
    if d is None:
        return None
    p = Path(d) / hashlib.sha1(CL100K_URL.encode()).hexdigest()
    return p if p.is_file() else None


def load_tiktoken_file(path: str | os.PathLike[str]) -> Any:
    """A cl100k-style ``tiktoken.Encoding`` from a ``.tiktoken`` file (base64 token, rank per line)."""
    import tiktoken

    p = Path(path)
    try:
        lines = p.read_bytes().splitlines()
    except OSError as e:
        raise UserError(
            f"cannot read tiktoken file {p}: {e.strerror or type(e).__name__}"
        ) from None
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise UserError(
                f"{p}:{n}: not a .tiktoken file (each line is a base64 token and its rank); "
                "pass cl100k_base.tiktoken"
            ) from None
    special = {k: v for k, v in CL100K_SPECIAL.items() if v not in ranks.values()}
    return tiktoken.Encoding(
        name=f"file:{p.name}", pat_str=CL100K_PAT, mergeable_ranks=ranks, special_tokens=special
    )


def llmlingua_encoding(tiktoken_file: str | os.PathLike[str] | None = None) -> Any | None:
    """The encoding llmlingua counts with: from ``tiktoken_file``, else from tiktoken's cache
    (``TIKTOKEN_CACHE_DIR``) if cl100k is there, else None (never downloaded)."""
    if tiktoken_file is not None:
        return load_tiktoken_file(tiktoken_file)
    cached = _tiktoken_cache_file()
    return load_tiktoken_file(cached) if cached is not None else None
