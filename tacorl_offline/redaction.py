"""Credentials never leave the process (pure).

Design decision: a URL in the config may carry credentials (``http://user:PW@host/v1``, or a
``?api-key=`` query), and so may a team warehouse URL (``warehouse: postgresql://u:PW@h/db``). Wherever a config is stored (``runs.config``, a checkpoint's
``config.json``, hence the Parquet export) or printed (``tacorl-offline config``), the URL's
userinfo and query values are replaced by ``***``. A resumed run takes such a URL from its
current config, since the stored one cannot be used.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"

# Config fields (section, key) that hold URLs.
URL_FIELDS = (("teacher", "base_url"), ("teacher", "azure_endpoint"))


def redact_url_credentials(url: str | None) -> str | None:
    """``http://u:pw@h:8/v1?key=s`` -> ``http://***@h:8/v1?key=***``; other URLs unchanged."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        query = urlencode(
            [(k, MASK) for k, _ in parse_qsl(query, keep_blank_values=True)], safe="*"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def is_redacted(url: str | None) -> bool:
    return bool(url) and MASK in str(url)


def redact_config(dumped: dict[str, Any]) -> dict[str, Any]:
    """A copy of a dumped config (``Config.model_dump(mode='json')``) safe to store or print."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in dumped.items()}
    if isinstance(out.get("warehouse"), str) and "://" in out["warehouse"]:
        out["warehouse"] = redact_url_credentials(out["warehouse"])  # a team warehouse URL
    for section, key in URL_FIELDS:
        sec = out.get(section)
        if isinstance(sec, dict) and sec.get(key):
            sec[key] = redact_url_credentials(sec[key])
    return out
