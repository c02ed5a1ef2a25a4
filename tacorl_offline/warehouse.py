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
  (a plain ``INSERT``, redone as ``INSERT OR IGNORE`` on primary keys when a row is already
  there, so a replay after a crash is idempotent) and then truncated. A crash at any moment loses at most the calls still in flight, and the DuckDB
  lock is held only for the milliseconds a batch insert takes.
- **A bad journal line never bricks the warehouse.** A line that is not UTF-8, not a JSON
  object of the journal's shape, or whose row fails its insert is moved to
  ``<file>.journal.quarantine`` (with a one-line warning naming it); the good lines still load.
- **A failed append is one clear error.** Disk full (or any OS error) on append undoes the
  partial write and raises :class:`JournalWriteError`; the caller keeps the answer in memory
  and saves it another way (:meth:`Warehouse.write_entries`) before stopping.
- **Run status tells the truth.** A run row records its process (pid, host); on every write
  open, a ``running`` run of this host whose process is gone becomes ``interrupted``.
- **Batched writes.** Rows go in as Arrow tables, 40-100x faster than ``executemany``.
- **This process knows when another one wrote.** Every open compares the file's signature
  (inode, size, mtime and ctime of the file and its WAL) with the one this instance saw after
  its last close, and bumps :attr:`Warehouse.generation` when they differ; so does
  :meth:`Warehouse.unchanged_since_close`, which opens nothing. DuckDB lets one process hold
  the file at a time, a write commits to the WAL and a close checkpoints into the file, so an
  unchanged signature means no other process has written since. Listeners
  (:meth:`Warehouse.add_listener`) see every entry this instance journals or flushes, so an
  in-process cache kept by them (:class:`~tacorl_offline.replay.MaskMap`) stays exact while
  the generation holds, and a training step needs no read open.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
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

# Tables the journal may hold, with the conflict rule used on replay: paid answers and their
# ledger are never overwritten; a training step's rows (journaled while a reader holds the
# lock) replace an earlier execution of the same step.
JOURNAL_TABLES = ("responses", "api_calls", "masks", "steps", "samples", "replays")
REPLACE_ON_REPLAY = frozenset({"steps", "samples", "replays"})

_PID_RE = re.compile(r"PID (\d+)")
# Keys per IN list: far below DuckDB's index-scan limit (index_scan_max_count, 2048).
LOOKUP_CHUNK = 512


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def _placeholders(n: int) -> str:
    return ", ".join(["?"] * n)


log = logging.getLogger("tacorl_offline")


class WarehouseLocked(UserError):
    """Another process held the warehouse for longer than the lock timeout."""


class JournalWriteError(UserError):
    """The journal could not take an append (disk full, permissions, not a file)."""


def _rule(table: str) -> str:
    return "replace" if table in REPLACE_ON_REPLAY else "ignore"


def _journal_entry(raw: bytes) -> tuple[str, dict[str, Any]]:
    """Parse one journal line; ValueError says why it is bad."""
    try:
        e = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    except json.JSONDecodeError:
        raise ValueError("not JSON (a torn write?)") from None
    if (
        not isinstance(e, dict)
        or e.get("t") not in JOURNAL_TABLES
        or not isinstance(e.get("r"), dict)
    ):
        raise ValueError("not a journal entry object")
    return e["t"], e["r"]


def migrations() -> list[tuple[str, str]]:
    """(name, sql) sorted by name, e.g. ('001_core', 'CREATE TABLE ...')."""
    d = resource_dir("warehouse/migrations")
    return [(p.stem, p.read_text(encoding="utf-8")) for p in sorted(d.glob("*.sql"))]


# Columns typed as SQL lists (``samples.actions`` BOOLEAN[], ``behaviour_logp`` FLOAT[]): their
# Python lists go in as Arrow lists; every other dict or list value is stored as JSON text.
LIST_COLUMNS = frozenset({"actions", "behaviour_logp"})


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


class Warehouse:
    """A DuckDB warehouse file. Cheap to construct; connections are opened per use."""

    def __init__(self, path: str | os.PathLike[str], *, lock_timeout_s: float = 60.0) -> None:
        # Shared mode (a postgresql:// setting): this machine's file is the URL's local=.
        from tacorl_offline.shared_store import SharedStore, is_shared_url

        self.shared: SharedStore | None = SharedStore(str(path)) if is_shared_url(path) else None
        self.path = self.shared.local_path if self.shared else Path(path)
        self.journal_path = self.path.with_name(self.path.name + ".journal")
        self.lock_timeout_s = lock_timeout_s
        self._journal_lock = threading.Lock()
        # Bumped whenever the file is found changed since this instance last closed it.
        self.generation = 0
        self._closed_sig: tuple[Any, ...] | None = None
        self._listeners: list[Callable[[Sequence[tuple[str, Mapping[str, Any]]]], None]] = []

    # ------------------------------------------------------------------ change tracking

    def _signature(self) -> tuple[Any, ...]:
        out: list[Any] = []
        for f in (self.path, self.path.with_name(self.path.name + ".wal")):
            try:
                st = f.stat()
            except OSError:
                out.append(None)
            else:
                out.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        return tuple(out)

    def unchanged_since_close(self) -> bool:
        """Whether no process has written the file since this instance last closed it
        (a stat of the file and its WAL; nothing is opened). False bumps the generation."""
        if self._closed_sig is not None and self._signature() == self._closed_sig:
            return True
        self.generation += 1
        return False

    def add_listener(self, fn: Callable[[Sequence[tuple[str, Mapping[str, Any]]]], None]) -> None:
        """``fn(entries)`` is called with every (table, row) this instance journals, flushes
        from the journal (any process's) or writes with :meth:`write_entries`."""
        self._listeners.append(fn)

    def _notify(self, entries: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        for fn in self._listeners:
            fn(entries)

    # ------------------------------------------------------------------ connections

    def _open(
        self,
        read_only: bool,
        config: Mapping[str, Any] | None = None,
        lock_timeout_s: float | None = None,
    ) -> duckdb.DuckDBPyConnection:
        if read_only and not self.path.exists():
            raise UserError(
                f"warehouse {self.path} does not exist; run 'tacorl-offline ingest' first or pass --warehouse"
            )
        if not read_only:
            for parent in self.path.parents:
                if parent.exists() and not parent.is_dir():
                    raise UserError(
                        f"cannot create warehouse {self.path}: {parent} is a file, not a "
                        "directory; pass a --warehouse path in a directory"
                    )
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(
                    f"cannot create the warehouse directory {self.path.parent}: "
                    f"{e.strerror or type(e).__name__}; pass a --warehouse path in a directory"
                ) from None
        if self.path.is_dir():
            raise UserError(
                f"warehouse {self.path} is a directory; pass a file path with --warehouse"
            )
        wait_s = self.lock_timeout_s if lock_timeout_s is None else lock_timeout_s
        deadline = time.monotonic() + wait_s
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
                    raise WarehouseLocked(
                        f"warehouse {self.path} is locked by another process{who} for over "
                        f"{wait_s:.0f}s; wait for it to finish or pass another --warehouse"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 1.5, 0.25)

    @contextlib.contextmanager
    def connect(
        self,
        *,
        read_only: bool = False,
        safe: bool = False,
        lock_timeout_s: float | None = None,
        replay_journal: bool = True,
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open, yield, close. A write open applies migrations and replays the journal first.

        ``safe=True`` (read-only) also disables external access, so a user query cannot read
        or write files, attach databases or load extensions. ``replay_journal=False`` leaves
        the journal to the caller, who flushes it with :meth:`flush_with` together with its
        own writes.
        """
        config = {"enable_external_access": False} if safe else None
        if read_only and self.shared is not None:
            # Shared mode: pull the other machines' rows first, unless a writer holds the
            # file (it syncs on its own opens).
            with contextlib.suppress(WarehouseLocked):
                self.flush(lock_timeout_s=0.0)
        con = self._open(read_only, config, lock_timeout_s)
        # Held now, so nobody else writes until the close: compare with our last close.
        if self._signature() != self._closed_sig:
            self.generation += 1
        try:
            if not read_only:
                self._migrate(con)
                if replay_journal:
                    self._replay_journal(con)
                Warehouse.mark_stale_runs(con)
                if self.shared is not None:
                    self.shared.sync(self, con, insert_rows)
            yield con
        except (duckdb.IOException, duckdb.SerializationException, duckdb.InternalException) as e:
            # Reads past the end of a truncated file and the like: the file, not our code.
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(
                f"warehouse {self.path} cannot be read ({first}); it is damaged or truncated: "
                "restore it from a copy, or pass another --warehouse"
            ) from None
        finally:
            con.close()
            self._closed_sig = self._signature()

    def flush_with(
        self,
        con: duckdb.DuckDBPyConnection,
        write: Callable[[duckdb.DuckDBPyConnection], None],
    ) -> int:
        """Replay the journal (its own transaction, bad lines quarantined), then run
        ``write(con)`` in one transaction; returns the entries replayed. For a connection
        opened with ``replay_journal=False`` (bench/warehouse_scale.py times it)."""
        n = self._replay_journal(con)
        con.execute("BEGIN TRANSACTION")
        try:
            write(con)
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        return n

    @contextlib.contextmanager
    def transaction(
        self, *, lock_timeout_s: float | None = None
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """A write connection inside one transaction: all or nothing."""
        with self.connect(lock_timeout_s=lock_timeout_s) as con:
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
        self._check_journal_path()
        self.journal_path.parent.mkdir(parents=True, exist_ok=True)
        with self._journal_lock, open(self.journal_path, mode) as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield f
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _check_journal_path(self) -> None:
        if self.journal_path.is_dir():
            raise UserError(
                f"the warehouse journal {self.journal_path} is a directory; move it away "
                "(the journal must be a file beside the warehouse)"
            )

    def journal(self, entries: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """Durably append (table, row) entries. Returns once they are on disk.

        Raises :class:`JournalWriteError` (one line) if the append fails; a partial write is
        cut off again, so the journal never keeps half a line from it.
        """
        entries = list(entries)
        lines = []
        for table, row in entries:
            if table not in JOURNAL_TABLES:
                raise ValueError(f"table {table!r} is not journaled")
            lines.append(
                json.dumps({"t": table, "r": dict(row)}, ensure_ascii=False, default=str) + "\n"
            )
        if not lines:
            return
        data = "".join(lines).encode("utf-8")
        try:
            with self._locked_journal("ab") as f:
                start = f.seek(0, os.SEEK_END)
                try:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                except OSError:
                    with contextlib.suppress(OSError):
                        f.truncate(start)
                    raise
        except OSError as e:
            raise JournalWriteError(
                f"cannot append to the warehouse journal {self.journal_path}: "
                f"{e.strerror or type(e).__name__}"
            ) from None
        self._notify(entries)
        if self.shared is not None:  # durable here first; pushed now, or on a later open
            self.shared.publish(entries)

    def _read_journal(
        self, f: Any
    ) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[bytes, str]]]:
        """(good entries, (bad line, why)) from an open binary journal."""
        good, bad = [], []
        for raw in f:
            if not raw.strip():
                continue
            try:
                good.append(_journal_entry(raw))
            except ValueError as e:
                bad.append((raw, str(e)))
        return good, bad

    def pending_journal(self) -> list[tuple[str, dict[str, Any]]]:
        """Entries not yet replayed into DuckDB (bad lines, such as a torn write, are skipped)."""
        if not self.journal_path.exists() or self.journal_path.stat().st_size == 0:
            return []
        with self._locked_journal("rb") as f:
            return self._read_journal(f)[0]

    def _quarantine(self, bad: Sequence[tuple[bytes, str]]) -> None:
        q = self.journal_path.with_name(self.journal_path.name + ".quarantine")
        with open(q, "ab") as f:
            for raw, _ in bad:
                f.write(raw if raw.endswith(b"\n") else raw + b"\n")
            f.flush()
            os.fsync(f.fileno())
        reasons = sorted({why for _, why in bad})
        log.warning(
            "warning: %d bad journal line(s) (%s) moved to %s; the good lines were loaded",
            len(bad),
            "; ".join(reasons),
            q,
        )

    def _insert_entries(
        self, con: duckdb.DuckDBPyConnection, entries: Sequence[tuple[str, dict[str, Any]]]
    ) -> list[tuple[str, dict[str, Any], str]]:
        """Insert entries; returns the ones that failed (table, row, why).

        Fast path: one Arrow batch per table in one transaction, with plain ``INSERT`` where
        the rule is to ignore a row already there (at 1M answers ``INSERT OR IGNORE`` costs
        6-20x more than ``INSERT`` against a cold primary-key index: bench/warehouse_scale.py);
        if a row is already there (a replay after a crash), the batch is redone with
        ``INSERT OR IGNORE``. If that fails too, the rows go in one by one so a single bad row
        cannot keep the others out.
        """
        by_table: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for t, r in entries:
            by_table[t].append(r)
        for plain in (True, False):
            con.execute("BEGIN TRANSACTION")
            try:
                for table in JOURNAL_TABLES:
                    rule = _rule(table)
                    if plain and rule == "ignore":
                        rule = "error"
                    insert_rows(con, table, by_table.get(table, []), on_conflict=rule)
                con.execute("COMMIT")
                return []
            except Exception:
                con.execute("ROLLBACK")
        failed = []
        for table in JOURNAL_TABLES:  # each row on its own (INSERT OR IGNORE: idempotent)
            for row in by_table.get(table, []):
                try:
                    insert_rows(con, table, [row], on_conflict=_rule(table))
                except Exception as e:
                    failed.append((table, row, " ".join(str(e).split())[:200]))
        return failed

    def _replay_journal(self, con: duckdb.DuckDBPyConnection) -> int:
        self._check_journal_path()
        if not self.journal_path.exists() or self.journal_path.stat().st_size == 0:
            return 0
        with self._locked_journal("rb+") as f:
            entries, bad = self._read_journal(f)
            failed = self._insert_entries(con, entries)
            bad += [
                (
                    json.dumps({"t": t, "r": r}, ensure_ascii=False, default=str).encode("utf-8"),
                    f"insert into {t} failed: {why}",
                )
                for t, r, why in failed
            ]
            if failed:
                gone = {id(r) for _, r, _ in failed}
                entries = [(t, r) for t, r in entries if id(r) not in gone]
            self._notify(entries)
            if bad:
                self._quarantine(bad)
            # Only after the commit: a crash before this line replays again, harmlessly.
            f.seek(0)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
        return len(entries)

    def write_entries(self, entries: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Write journal-shaped entries straight into DuckDB (when the journal cannot take them)."""
        with self.connect() as con:
            rows = [(t, dict(r)) for t, r in entries]
            failed = self._insert_entries(con, rows)
            gone = {id(r) for _, r, _ in failed}
            self._notify([(t, r) for t, r in rows if id(r) not in gone])
        if failed:
            t, _, why = failed[0]
            raise UserError(f"{len(failed)} row(s) could not be written: insert into {t}: {why}")

    @contextlib.contextmanager
    def lookup_connection(self) -> Iterator[tuple[duckdb.DuckDBPyConnection, bool]]:
        """A connection for lookups, and whether the journal tail must be consulted too.

        A write open (which replays the journal) is tried briefly; if a reader holds the file,
        a read-only open (readers share it) is used instead, and the caller overlays
        :meth:`journal_tail`: answers journaled but not yet in DuckDB.
        """
        with contextlib.ExitStack() as stack:
            try:
                con = stack.enter_context(
                    self.connect(lock_timeout_s=min(self.lock_timeout_s, 1.0))
                )
                overlay = False
            except WarehouseLocked:
                con = stack.enter_context(self.connect(read_only=True))
                overlay = True
            yield con, overlay

    def journal_tail(self) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str, str], str]]:
        """(request_hash -> response row, (prompt_id, mask_hash, teacher_key) -> request_hash)
        for what the journal holds and DuckDB may not yet."""
        responses: dict[str, dict[str, Any]] = {}
        masks: dict[tuple[str, str, str], str] = {}
        for table, row in self.pending_journal():
            if table == "responses" and row.get("request_hash"):
                responses[row["request_hash"]] = row
            elif table == "masks":
                masks[(row["prompt_id"], row["mask_hash"], row["teacher_key"])] = row[
                    "request_hash"
                ]
        return responses, masks

    def flush(self, *, lock_timeout_s: float | None = None) -> None:
        """Replay the journal into DuckDB now (opens and closes a write connection)."""
        with self.connect(lock_timeout_s=lock_timeout_s):
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
        insert_rows(
            con, "runs", [{"status": "running", **run_owner(), **row}], on_conflict="replace"
        )

    @staticmethod
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

    @staticmethod
    def finish_run(
        con: duckdb.DuckDBPyConnection, run_id: str, status: str, message: str | None = None
    ) -> None:
        con.execute(
            "UPDATE runs SET status = ?, message = ?, finished_at = current_timestamp WHERE run_id = ?",
            [status, message, run_id],
        )


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


def table_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [
        r[0]
        for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' ORDER BY table_name"
        ).fetchall()
    ]
