"""Rows into DuckDB in batches, on a connection the caller opened.

Design decisions:

- **Batched writes.** Rows go in as one Arrow table per insert, 40-100x faster than
  ``executemany`` (bench/fill_speed.py). A dict or list value is stored as JSON text, except in
  the columns typed as SQL lists (:data:`LIST_COLUMNS`).
- **Keys in chunks.** A lookup or delete by key takes a parameterised ``IN`` list of at most
  :data:`LOOKUP_CHUNK` keys, far below DuckDB's index-scan limit (``index_scan_max_count``,
  2048), so DuckDB answers it from the primary-key index.
- **A disk error is one line.** :func:`disk_error` turns DuckDB's "no space left" or
  "read-only file system" into a :class:`~tacorl_offline.errors.UserError` that says what to
  do; every other error is left to the caller.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from tacorl_offline.errors import UserError

# Keys per IN list: far below DuckDB's index-scan limit (index_scan_max_count, 2048).
LOOKUP_CHUNK = 512

# Columns typed as SQL lists (``samples.actions`` BOOLEAN[], ``behaviour_logp`` FLOAT[]): their
# Python lists go in as Arrow lists; every other dict or list value is stored as JSON text.
LIST_COLUMNS = frozenset({"actions", "behaviour_logp"})


def chunks(items: Sequence[str], size: int = LOOKUP_CHUNK) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def placeholders(n: int) -> str:
    return ", ".join(["?"] * n)


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def disk_error(path: Path, e: BaseException) -> UserError | None:
    """A one-line error for a write that failed for want of disk (None: not that)."""
    msg = str(e)
    if "No space left" in msg or "Read-only file system" in msg or "Could not write" in msg:
        why = "read-only file system" if "Read-only" in msg else "no space left on device"
        return UserError(
            f"cannot write warehouse {path} ({why}): {' '.join(first_line(e).split())[:160]}; "
            "free disk space (or remount read-write) and rerun"
        )
    return None


def rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back, if DuckDB has not already aborted the transaction (say, on a disk error)."""
    with contextlib.suppress(duckdb.Error):
        con.execute("ROLLBACK")


def _rows_to_arrow(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> pa.Table:
    data: dict[str, list[Any]] = {c: [] for c in columns}
    for r in rows:
        for c in columns:
            v = r.get(c)
            if c in LIST_COLUMNS:
                pass
            elif isinstance(v, (dict, list)):
                v = json.dumps(v, ensure_ascii=False, sort_keys=True)
            data[c].append(v)
    return pa.table(data)


def insert_rows(
    con: duckdb.DuckDBPyConnection,
    table: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    on_conflict: str = "error",
) -> int:
    """Insert dict rows as one Arrow batch. on_conflict: 'error' | 'ignore' | 'replace'."""
    if not rows:
        return 0
    columns = sorted({k for r in rows for k in r})
    tbl = _rows_to_arrow(rows, columns)
    verb = {"error": "INSERT", "ignore": "INSERT OR IGNORE", "replace": "INSERT OR REPLACE"}[
        on_conflict
    ]
    name = f"_batch_{table}_{threading.get_ident()}"
    con.register(name, tbl)
    try:
        cols = ", ".join(f'"{c}"' for c in columns)
        # Table and column names come from our own code, never from user data.
        con.execute(f"{verb} INTO {table} ({cols}) SELECT {cols} FROM {name}")
    finally:
        con.unregister(name)
    return len(rows)


def delete_done(con: duckdb.DuckDBPyConnection, rows: Sequence[Mapping[str, Any]]) -> None:
    """``calls_done`` entries: their calls' ledger rows are written; they are in flight no more."""
    ids = [r.get("call_id") for r in rows]
    if not all(isinstance(i, str) for i in ids):
        raise ValueError("a calls_done entry needs a call_id")
    for chunk in chunks(ids):  # type: ignore[arg-type]
        con.execute(
            f"DELETE FROM calls_in_flight WHERE call_id IN ({placeholders(len(chunk))})", chunk
        )
