"""The reward warehouse: one DuckDB file plus a durable journal beside it.

Design decisions:

- **Schema from migrations.** ``warehouse/migrations/NNN_name.sql`` are applied in order on a
  write open, each in one transaction, and recorded in ``schema_migrations``.
- **Short write connections.** DuckDB allows one process to hold the file, readers included.
  Writers therefore never hold the connection between steps: they open, write a batch, and
  close. Every open retries on a lock with backoff, so ``sql`` and ``report`` work while a long
  run is going.
- **Paid answers go to a journal first.** A teacher answer is appended to
  ``<file>.journal`` (JSON lines, flushed and fsync'd) the moment it arrives, before anything
  uses it. The journal is replayed into DuckDB in one Arrow batch on every write open
  (``INSERT OR IGNORE`` on primary keys, so a replay after a crash is idempotent) and then
  truncated. A crash at any moment loses at most the calls still in flight, and the DuckDB
  lock is held only for the milliseconds a batch insert takes.
- **Batched writes.** Rows go in as Arrow tables, 40-100x faster than ``executemany``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from tacorl_offline.errors import UserError
from tacorl_offline.resources import resource_dir

# Tables the journal may hold, with the conflict rule used on replay.
JOURNAL_TABLES = ("responses", "api_calls", "masks")

_PID_RE = re.compile(r"PID (\d+)")
# Keys per IN list: far below DuckDB's index-scan limit (index_scan_max_count, 2048).
LOOKUP_CHUNK = 512


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def _placeholders(n: int) -> str:
    return ", ".join(["?"] * n)


def migrations() -> list[tuple[str, str]]:
    """(name, sql) sorted by name, e.g. ('001_core', 'CREATE TABLE ...')."""
    d = resource_dir("warehouse/migrations")
    return [(p.stem, p.read_text(encoding="utf-8")) for p in sorted(d.glob("*.sql"))]


def _rows_to_arrow(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> pa.Table:
    data: dict[str, list[Any]] = {c: [] for c in columns}
    for r in rows:
        for c in columns:
            v = r.get(c)
            if isinstance(v, (dict, list)):
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


class Warehouse:
    """A DuckDB warehouse file. Cheap to construct; connections are opened per use."""

    def __init__(self, path: str | os.PathLike[str], *, lock_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.journal_path = self.path.with_name(self.path.name + ".journal")
        self.lock_timeout_s = lock_timeout_s
        self._journal_lock = threading.Lock()

    # ------------------------------------------------------------------ connections

    def _open(
        self, read_only: bool, config: Mapping[str, Any] | None = None
    ) -> duckdb.DuckDBPyConnection:
        if read_only and not self.path.exists():
            raise UserError(
                f"warehouse {self.path} does not exist; run 'tacorl-offline ingest' first or pass --warehouse"
            )
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.02
        while True:
            try:
                return duckdb.connect(
                    str(self.path), read_only=read_only, config=dict(config or {})
                )
            except (duckdb.IOException, duckdb.ConnectionException) as e:
                msg = str(e)
                locked = "lock" in msg.lower() or "different configuration" in msg.lower()
                if not locked:
                    first = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
                    raise UserError(
                        f"cannot open warehouse {self.path}: {first}; check the path or pass another --warehouse"
                    ) from None
                if time.monotonic() >= deadline:
                    pid = _PID_RE.search(msg)
                    who = f" (PID {pid.group(1)})" if pid else ""
                    raise UserError(
                        f"warehouse {self.path} is locked by another process{who} for over "
                        f"{self.lock_timeout_s:.0f}s; wait for it to finish or pass another --warehouse"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 1.5, 0.25)

    @contextlib.contextmanager
    def connect(
        self, *, read_only: bool = False, safe: bool = False, replay_journal: bool = True
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open, yield, close. A write open applies migrations and replays the journal first.

        ``safe=True`` (read-only) also disables external access, so a user query cannot read
        or write files, attach databases or load extensions. ``replay_journal=False`` leaves
        the journal to the caller, who flushes it with :meth:`flush_with` together with its
        own writes.
        """
        config = {"enable_external_access": False} if safe else None
        con = self._open(read_only, config)
        try:
            if not read_only:
                self._migrate(con)
                if replay_journal:
                    self._replay_journal(con)
            yield con
        finally:
            con.close()

    def flush_with(
        self,
        con: duckdb.DuckDBPyConnection,
        write: Callable[[duckdb.DuckDBPyConnection], None],
    ) -> int:
        """Replay the journal and run ``write(con)`` in one transaction (one batched commit:
        e.g. a training step's rows together with the answers it paid for)."""
        return self._replay_journal(con, also=write)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A write connection inside one transaction: all or nothing."""
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    # ------------------------------------------------------------------ migrations

    @staticmethod
    def _migrate(con: duckdb.DuckDBPyConnection) -> list[str]:
        con.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name VARCHAR PRIMARY KEY, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)"
        )
        done = {r[0] for r in con.execute("SELECT name FROM schema_migrations").fetchall()}
        applied = []
        for name, sql in migrations():
            if name in done:
                continue
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(sql)
                con.execute("INSERT INTO schema_migrations (name) VALUES (?)", [name])
            except Exception:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
            applied.append(name)
        return applied

    # ------------------------------------------------------------------ journal

    @contextlib.contextmanager
    def _locked_journal(self, mode: str) -> Iterator[Any]:
        self.journal_path.parent.mkdir(parents=True, exist_ok=True)
        with self._journal_lock, open(self.journal_path, mode, encoding="utf-8") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield f
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def journal(self, entries: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """Durably append (table, row) entries. Returns once they are on disk."""
        lines = []
        for table, row in entries:
            if table not in JOURNAL_TABLES:
                raise ValueError(f"table {table!r} is not journaled")
            lines.append(
                json.dumps({"t": table, "r": dict(row)}, ensure_ascii=False, default=str) + "\n"
            )
        if not lines:
            return
        with self._locked_journal("a") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())

    def pending_journal(self) -> list[tuple[str, dict[str, Any]]]:
        """Entries not yet replayed into DuckDB (a torn last line from a crash is skipped)."""
        if not self.journal_path.exists():
            return []
        out = []
        with self._locked_journal("r") as f:
            for line in f:
                try:
                    e = json.loads(line)
                    out.append((e["t"], e["r"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
        return out

    def _replay_journal(
        self,
        con: duckdb.DuckDBPyConnection,
        also: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
    ) -> int:
        if not self.journal_path.exists() or self.journal_path.stat().st_size == 0:
            if also is not None:
                con.execute("BEGIN TRANSACTION")
                try:
                    also(con)
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")
            return 0
        with self._locked_journal("r+") as f:
            by_table: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for line in f:
                try:
                    e = json.loads(line)
                    by_table[e["t"]].append(e["r"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # torn trailing write from a crash: that call was still in flight
            n = 0
            con.execute("BEGIN TRANSACTION")
            try:
                for table in JOURNAL_TABLES:
                    n += insert_rows(con, table, by_table.get(table, []), on_conflict="ignore")
                if also is not None:
                    also(con)
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
            # Only after the commit: a crash before this line replays again, harmlessly.
            f.seek(0)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
        return n

    def flush(self) -> None:
        """Replay the journal into DuckDB now (opens and closes a write connection)."""
        with self.connect():
            pass

    # ------------------------------------------------------------------ lookups

    @staticmethod
    def lookup_responses(
        con: duckdb.DuckDBPyConnection, request_hashes: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """request_hash -> response row.

        A parameterised ``IN`` list per chunk of keys, the only filter: DuckDB answers it from
        the primary-key index, so the time stays flat as the table grows (a join against a registered Arrow
        table scans the whole table: 31x slower at 1M answers).
        """
        keys = list(dict.fromkeys(request_hashes))
        out: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(keys, LOOKUP_CHUNK):
            cur = con.execute(
                "SELECT request_hash, answer, ok, error_kind, cost_usd, input_tokens,"
                " output_tokens, source FROM responses"
                f" WHERE request_hash IN ({_placeholders(len(chunk))})",
                chunk,
            )
            cols = [d[0] for d in cur.description]
            out.update({row[0]: dict(zip(cols, row, strict=True)) for row in cur.fetchall()})
        return out

    @staticmethod
    def lookup_masks(
        con: duckdb.DuckDBPyConnection, keys: Sequence[tuple[str, str]], teacher_key: str
    ) -> dict[tuple[str, str], str]:
        """(prompt_id, mask_hash) -> request_hash under ``teacher_key``; no re-rendering needed.

        Filtered by an ``IN`` list on the indexed ``mask_hash`` (migration 003) and nothing
        else: DuckDB uses an index only when the indexed column is the sole filter, so the
        teacher key and the prompt id (a mask hash covers the text, not the never-compressed
        fields) are checked here.
        """
        wanted = set(keys)
        out: dict[tuple[str, str], str] = {}
        for chunk in _chunks(list(dict.fromkeys(m for _, m in keys)), LOOKUP_CHUNK):
            rows = con.execute(
                "SELECT prompt_id, mask_hash, teacher_key, request_hash FROM masks"
                f" WHERE mask_hash IN ({_placeholders(len(chunk))})",
                chunk,
            ).fetchall()
            out.update({(p, m): r for p, m, t, r in rows if t == teacher_key and (p, m) in wanted})
        return out

    # ------------------------------------------------------------------ runs

    @staticmethod
    def start_run(con: duckdb.DuckDBPyConnection, row: Mapping[str, Any]) -> None:
        insert_rows(con, "runs", [{"status": "running", **row}], on_conflict="replace")

    @staticmethod
    def finish_run(
        con: duckdb.DuckDBPyConnection, run_id: str, status: str, message: str | None = None
    ) -> None:
        con.execute(
            "UPDATE runs SET status = ?, message = ?, finished_at = current_timestamp WHERE run_id = ?",
            [status, message, run_id],
        )


def table_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [
        r[0]
        for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' ORDER BY table_name"
        ).fetchall()
    ]
