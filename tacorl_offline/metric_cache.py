"""Metric values cached in the warehouse by (request hash, reference hash, metric).

Design decision: a metric value is a pure function of the answer, the reference and the
metric's settings, and every answer is stored once by request hash. So a replayed answer's
values are read back from ``metric_values`` (migration 003) instead of being recomputed
(BERTScore alone was 9-12% of a MiniLM step). The key names the reference by its text hash,
so a changed answer to the original never reuses a stale value, and names the metric with
every setting that changes it (:func:`tacorl_offline.metrics.cache_names`), so a changed
metric is computed once per answer and cached in its turn.

Only component metrics are cached (``bleu``, ``rougeL``, ``bertscore``...); weighted sums
and rewards are recomputed from them, which costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tacorl_offline import metrics
from tacorl_offline.rewards import RewardSettings
from tacorl_offline.warehouse import LOOKUP_CHUNK

Key = tuple[str, str]  # (request hash of the answer, text hash of the reference)


def metric_names(settings: RewardSettings) -> dict[str, str]:
    """Component -> cached name for the components this reward family computes."""
    rc = settings.reward
    spec = rc.metric if rc.family == "taco" else "rougeL"
    return metrics.cache_names(
        spec, bertscore_model=rc.bertscore_model, bertscore_layers=rc.bertscore_layers
    )


def load(
    con: Any, keys: Sequence[Key | None], names: Mapping[str, str]
) -> list[dict[str, float] | None]:
    """Cached component values per key (None where a key is None or nothing is cached)."""
    component = {stored: comp for comp, stored in names.items()}
    rhs = list(dict.fromkeys(k[0] for k in keys if k is not None))
    found: dict[Key, dict[str, float]] = {}
    for i in range(0, len(rhs), LOOKUP_CHUNK):
        chunk = rhs[i : i + LOOKUP_CHUNK]
        # The IN list is the only filter, so DuckDB answers it from the request-hash index.
        rows = con.execute(
            "SELECT request_hash, reference_hash, metric, value FROM metric_values"
            f" WHERE request_hash IN ({', '.join(['?'] * len(chunk))})",
            chunk,
        ).fetchall()
        for rh, ref, metric, value in rows:
            if metric in component:
                found.setdefault((rh, ref), {})[component[metric]] = float(value)
    return [found.get(k) if k is not None else None for k in keys]


def new_rows(
    keys: Sequence[Key | None],
    known: Sequence[Mapping[str, float] | None],
    scored: Sequence[Mapping[str, float]],
    names: Mapping[str, str],
) -> list[dict[str, Any]]:
    """``metric_values`` rows for the components computed this time (not read from the cache)."""
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str, str]] = set()
    for key, had, row in zip(keys, known, scored, strict=True):
        if key is None or not row:
            continue
        for comp, stored in names.items():
            if comp in row and (had is None or comp not in had) and (*key, stored) not in seen:
                seen.add((*key, stored))
                out.append(
                    {
                        "request_hash": key[0],
                        "reference_hash": key[1],
                        "metric": stored,
                        "value": float(row[comp]),
                    }
                )
    return out
