"""Content-addressed keys.

Every key is ``"v1:" + sha256(canonical JSON)``. Canonical JSON is sorted keys, compact
separators and non-ASCII kept, so the same object always hashes the same on every
machine. The version prefix makes a change of scheme detectable: a ``v2`` key never
collides with, or silently replays, a ``v1`` answer.

- prompt id: the record's content (compressible text + never-compressed fields).
- teacher key: everything that changes the teacher's answer (backend, model, system prompt,
  template, sampling settings, namespace). Never credentials or endpoints.
- request hash: the teacher key plus the exact messages sent.
- mask hash: the prompt's text hash plus the kept words' character spans, so it identifies
  a compression independently of the tokenizer that produced it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SCHEME = "v1"

# Keys whose *names* mark a secret. A teacher key built from a mapping holding one is a bug.
_SECRET_WORDS = ("api_key", "apikey", "secret", "password", "token_value", "authorization")


def canonical_json(obj: Any) -> str:
    """Sorted keys, compact separators, non-ASCII kept (simonw/llm style)."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def hash_obj(obj: Any) -> str:
    return f"{SCHEME}:" + hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def text_hash(text: str) -> str:
    return f"{SCHEME}:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def prompt_id(text: str, fields: Mapping[str, Any] | None = None) -> str:
    """Content hash of a record: dedups re-ingested rows. The reference answer is not part of it."""
    return hash_obj({"kind": "prompt", "text": text, "fields": dict(fields or {})})


def _check_no_secrets(obj: Any, path: str = "") -> None:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            lk = str(k).lower()
            if any(w in lk for w in _SECRET_WORDS):
                raise ValueError(f"refusing to hash a secret-looking field {path}{k!s}")
            _check_no_secrets(v, f"{path}{k}.")
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_no_secrets(v, path)


def teacher_key(settings: Mapping[str, Any]) -> str:
    """Hash of everything that changes the teacher's answer. ``settings`` must hold no secret."""
    _check_no_secrets(settings)
    return hash_obj({"kind": "teacher", **settings})


def request_hash(teacher_key_: str, messages: Sequence[Mapping[str, Any]]) -> str:
    """One stored answer per request hash, ever."""
    return hash_obj(
        {"kind": "request", "teacher": teacher_key_, "messages": [dict(m) for m in messages]}
    )


def mask_hash(text: str, kept_spans: Iterable[tuple[int, int]]) -> str:
    """A compression of ``text``: its hash plus the kept words' [start, end) character spans."""
    return hash_obj(
        {
            "kind": "mask",
            "text": text_hash(text),
            "spans": [[int(s), int(e)] for s, e in kept_spans],
        }
    )


def import_request_hash(prompt_id: str) -> str:
    """The request hash an imported answer (``source='import'``) is stored under."""
    return hash_obj({"kind": "import", "prompt": prompt_id})
