"""Rows a process owns: its runs and its requests in flight; a dead owner's rows are closed.

Design decisions:

- **Run status tells the truth.** A run row records its process (pid, host); on every write
  open, a ``running`` run of this host whose process is gone becomes ``interrupted``
  (:func:`mark_stale_runs`).
- **A write-ahead ledger.** A paid request is journaled into ``calls_in_flight`` before it
  leaves and removed when its ledger rows are written. On a write open, a row whose process
  is gone becomes an ``api_calls`` row with status ``in_flight_at_crash`` and its worst-case
  cost in ``reserved_usd`` (:func:`close_in_flight`), so the ledger counts every request the
  server may have billed.

Liveness is known on this host only (``kill(pid, 0)``); rows of another host are left alone.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

import duckdb

from tacorl_offline.batch_sql import chunks, insert_rows, placeholders


def run_owner() -> dict[str, Any]:
    """The run row's owner: this process on this host."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def start_run(con: duckdb.DuckDBPyConnection, row: Mapping[str, Any]) -> None:
    insert_rows(con, "runs", [{"status": "running", **run_owner(), **row}], on_conflict="replace")


def finish_run(
    con: duckdb.DuckDBPyConnection, run_id: str, status: str, message: str | None = None
) -> None:
    con.execute(
        "UPDATE runs SET status = ?, message = ?, finished_at = current_timestamp WHERE run_id = ?",
        [status, message, run_id],
    )


def mark_stale_runs(con: duckdb.DuckDBPyConnection) -> list[str]:
    """'running' runs of this host whose process is gone become 'interrupted'."""
    rows = con.execute(
        "SELECT run_id, pid FROM runs WHERE status = 'running' AND host = ? AND pid IS NOT NULL",
        [socket.gethostname()],
    ).fetchall()
    stale = [rid for rid, pid in rows if not pid_alive(int(pid))]
    for rid in stale:
        con.execute(
            "UPDATE runs SET status = 'interrupted', finished_at = current_timestamp,"
            " message = 'its process (PID ' || CAST(pid AS VARCHAR) || ') ended without finishing the run'"
            " WHERE run_id = ? AND status = 'running'",
            [rid],
        )
    return stale


def close_in_flight(
    con: duckdb.DuckDBPyConnection, *, run_id: str | None = None, why: str | None = None
) -> int:
    """Write-ahead rows whose process is gone (or, with ``run_id``, that run's, at its end)
    become ledger rows 'in_flight_at_crash' with their worst-case cost reserved."""
    if run_id is None:
        rows = con.execute(
            "SELECT call_id, pid FROM calls_in_flight WHERE host = ?", [socket.gethostname()]
        ).fetchall()
        ids = [c for c, pid in rows if pid is None or not pid_alive(int(pid))]
    else:
        ids = [
            r[0]
            for r in con.execute(
                "SELECT call_id FROM calls_in_flight WHERE run_id = ?", [run_id]
            ).fetchall()
        ]
    for chunk in chunks(ids):
        marks = placeholders(len(chunk))
        con.execute(
            "INSERT OR IGNORE INTO api_calls (call_id, run_id, phase, step, request_hash,"
            " teacher_key, backend, model, attempt, status, error, input_tokens,"
            " output_tokens, cost_usd, saved_usd, reserved_usd, created_at)"
            " SELECT call_id, run_id, phase, step, request_hash, teacher_key, backend,"
            " model, 1, 'in_flight_at_crash', coalesce(?, 'its process (PID '"
            " || CAST(pid AS VARCHAR) || ') ended with the request in flight; the server"
            " may have billed it'), 0, 0, 0, 0, reserved_usd, sent_at"
            f" FROM calls_in_flight WHERE call_id IN ({marks})",
            [why, *chunk],
        )
        con.execute(f"DELETE FROM calls_in_flight WHERE call_id IN ({marks})", chunk)
    return len(ids)
