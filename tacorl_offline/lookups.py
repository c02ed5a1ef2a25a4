"""Stored answers by key: responses by request hash, masks by (prompt id, mask hash).

Design decision: **each lookup is a parameterised IN list on an indexed column, and that is
its only filter.** DuckDB answers it from the index, so the time stays flat as the table grows
(a join against a registered Arrow table scans the whole table: 31x slower at 1M answers,
bench/warehouse_scale.py). DuckDB uses an index only when the indexed column is the sole
filter, so any other condition (the teacher key, the prompt id) is checked here in Python.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import duckdb

from tacorl_offline.batch_sql import chunks, placeholders


def lookup_responses(
    con: duckdb.DuckDBPyConnection, request_hashes: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """request_hash -> response row, by the ``responses`` primary key."""
    keys = list(dict.fromkeys(request_hashes))
    out: dict[str, dict[str, Any]] = {}
    for chunk in chunks(keys):
        cur = con.execute(
            "SELECT request_hash, answer, ok, error_kind, cost_usd, input_tokens,"
            " output_tokens, source FROM responses"
            f" WHERE request_hash IN ({placeholders(len(chunk))})",
            chunk,
        )
        cols = [d[0] for d in cur.description]
        out.update({row[0]: dict(zip(cols, row, strict=True)) for row in cur.fetchall()})
    return out


def lookup_masks(
    con: duckdb.DuckDBPyConnection, keys: Sequence[tuple[str, str]], teacher_key: str
) -> dict[tuple[str, str], str]:
    """(prompt_id, mask_hash) -> request_hash under ``teacher_key``; no re-rendering needed.

    Filtered by the indexed ``mask_hash`` (migration 003) alone; the teacher key and the
    prompt id (a mask hash covers the text, not the never-compressed fields) are checked here.
    """
    wanted = set(keys)
    out: dict[tuple[str, str], str] = {}
    for chunk in chunks(list(dict.fromkeys(m for _, m in keys))):
        rows = con.execute(
            "SELECT prompt_id, mask_hash, teacher_key, request_hash FROM masks"
            f" WHERE mask_hash IN ({placeholders(len(chunk))})",
            chunk,
        ).fetchall()
        out.update({(p, m): r for p, m, t, r in rows if t == teacher_key and (p, m) in wanted})
    return out


def answers_in(
    entries: Iterable[tuple[str, dict[str, Any]]],
) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str, str], str]]:
    """(request_hash -> response row, (prompt_id, mask_hash, teacher_key) -> request_hash)
    of journal entries: what a lookup finds in the journal's tail."""
    responses: dict[str, dict[str, Any]] = {}
    masks: dict[tuple[str, str, str], str] = {}
    for table, row in entries:
        if table == "responses" and row.get("request_hash"):
            responses[row["request_hash"]] = row
        elif table == "masks":
            masks[(row["prompt_id"], row["mask_hash"], row["teacher_key"])] = row["request_hash"]
    return responses, masks
