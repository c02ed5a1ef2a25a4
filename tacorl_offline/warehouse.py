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
  and saves it another way (:meth:`Warehouse.write_entries`, else the reserved rescue file of
  :mod:`tacorl_offline.rescue`, loaded on the next write open) before stopping.
- **Every append starts on a line boundary.** Under the journal's lock, an append first looks
  at the last byte: a tail with no line end (a process died mid-write) is moved to the
  quarantine, or, when it is a whole entry that only lost its newline, finished with one. A new
  entry is never written onto a torn line.
- **A write-ahead ledger.** A paid request is journaled into ``calls_in_flight`` before it
  leaves (a buffered append, no fsync: it survives a process kill) and removed when its
  ledger rows are written. On a write open, a row whose process is gone becomes an
  ``api_calls`` row with status ``in_flight_at_crash`` and its worst-case cost in
  ``reserved_usd`` (:meth:`Warehouse.close_in_flight`), so the ledger counts every request the
  server may have billed.
- **One paying process.** A paying phase holds a ``writer_leases`` row
  (:mod:`tacorl_offline.leases`); it is renewed on this instance's write opens.
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

from tacorl_offline import leases, rescue
from tacorl_offline.errors import UserError
from tacorl_offline.resources import resource_dir

# Tables the journal may hold, with the conflict rule used on replay: paid answers and their
# ledger are never overwritten; a training step's rows (journaled while a reader holds the
# lock) replace an earlier execution of the same step.
# ``calls_in_flight`` rows are the write-ahead ledger; a ``calls_done`` entry ({"call_id"})
# deletes one once the call's ledger rows are written.
JOURNAL_TABLES = (
    "responses",
    "api_calls",
    "masks",
    "steps",
    "samples",
    "replays",
    "calls_in_flight",
    "calls_done",
)
REPLACE_ON_REPLAY = frozenset({"steps", "samples", "replays"})
INSERTED_TABLES = tuple(t for t in JOURNAL_TABLES if t != "calls_done")

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


class WarehouseBusy(UserError):
    """Another process holds the warehouse's paying lease."""


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _disk_error(path: Path, e: BaseException) -> UserError | None:
    """A one-line error for a write that failed for want of disk (None: not that)."""
    msg = str(e)
    if "No space left" in msg or "Read-only file system" in msg or "Could not write" in msg:
        why = "read-only file system" if "Read-only" in msg else "no space left on device"
        return UserError(
            f"cannot write warehouse {path} ({why}): {' '.join(_first_line(e).split())[:160]}; "
            "free disk space (or remount read-write) and rerun"
        )
    return None


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back, if DuckDB has not already aborted the transaction (say, on a disk error)."""
    with contextlib.suppress(duckdb.Error):
        con.execute("ROLLBACK")


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


def delete_done(con: duckdb.DuckDBPyConnection, rows: Sequence[Mapping[str, Any]]) -> None:
    """``calls_done`` entries: their calls' ledger rows are written; they are in flight no more."""
    ids = [r.get("call_id") for r in rows]
    if not all(isinstance(i, str) for i in ids):
        raise ValueError("a calls_done entry needs a call_id")
    for chunk in _chunks(ids, LOOKUP_CHUNK):  # type: ignore[arg-type]
        con.execute(
            f"DELETE FROM calls_in_flight WHERE call_id IN ({_placeholders(len(chunk))})", chunk
        )


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
        self._leases: set[str] = set()  # paying leases this instance holds (run ids)
        self._renewed_at = 0.0

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
        failed = True
        try:
            if not read_only:
                self._migrate(con)
                if replay_journal:
                    self._replay_journal(con)
                    self._load_rescue(con)
                Warehouse.mark_stale_runs(con)
                Warehouse.close_in_flight(con)
                self._renew_leases(con)
                if self.shared is not None:
                    self.shared.sync(self, con, insert_rows)
            yield con
            if self.shared is not None and not read_only:  # this connection's writes leave now
                self.shared.push(con)
            failed = False
        except duckdb.Error as e:
            disk = _disk_error(self.path, e)
            if disk is not None:
                raise disk from None
            if not isinstance(
                e, (duckdb.IOException, duckdb.SerializationException, duckdb.InternalException)
            ):
                raise
            # Reads past the end of a truncated file and the like: the file, not our code.
            raise UserError(
                f"warehouse {self.path} cannot be read ({_first_line(e)}); it is damaged or "
                "truncated: restore it from a copy, or pass another --warehouse"
            ) from None
        finally:
            try:
                con.close()
            except duckdb.Error as e:  # the close checkpoints: a full disk shows here
                if not failed:
                    raise _disk_error(self.path, e) or UserError(
                        f"cannot close warehouse {self.path}: {_first_line(e)}"
                    ) from None
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
            _rollback(con)
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
                _rollback(con)
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
        # Appends are unbuffered (a failed write is cut off, never flushed later); reads buffer.
        buffering = 0 if "a" in mode else -1
        with self._journal_lock, open(self.journal_path, mode, buffering=buffering) as f:
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

    def journal(
        self, entries: Iterable[tuple[str, Mapping[str, Any]]], *, sync: bool = True
    ) -> None:
        """Durably append (table, row) entries. Returns once they are on disk.

        ``sync=False`` (the write-ahead ledger's ``calls_in_flight`` rows) returns once the
        operating system has them: they survive a killed process, not a power cut.
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
            with self._locked_journal("a+b") as f:
                start = self._heal_tail(f)
                try:
                    # Unbuffered: a partial write is cut off here, never flushed later.
                    done = 0
                    while done < len(data):
                        done += os.write(f.fileno(), data[done:])
                    if sync:
                        os.fsync(f.fileno())
                except OSError:
                    with contextlib.suppress(OSError):
                        os.ftruncate(f.fileno(), start)
                    raise
        except OSError as e:
            raise JournalWriteError(
                f"cannot append to the warehouse journal {self.journal_path}: "
                f"{e.strerror or type(e).__name__}"
            ) from None
        self._notify(entries)
        if self.shared is not None:  # durable here first; pushed now, or on a later open
            self.shared.publish(entries)

    def _heal_tail(self, f: Any) -> int:
        """Make the journal end on a line boundary (a crash mid-append leaves a torn line);
        returns the end offset. A torn tail that parses as an entry only lost its newline and
        gets it back; anything else is quarantined and cut off."""
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return 0
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return end
        start, pos = 0, end
        while pos > 0:
            lo = max(0, pos - 65536)
            f.seek(lo)
            i = f.read(pos - lo).rfind(b"\n")
            if i >= 0:
                start = lo + i + 1
                break
            pos = lo
        f.seek(start)
        torn = f.read(end - start)
        try:
            _journal_entry(torn)
        except ValueError as e:
            self._quarantine([(torn, f"a torn last line ({e})")])
            os.ftruncate(f.fileno(), start)
            return start
        os.write(f.fileno(), b"\n")
        return end + 1

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
                for table in INSERTED_TABLES:
                    rule = _rule(table)
                    if plain and rule == "ignore":
                        rule = "error"
                    insert_rows(con, table, by_table.get(table, []), on_conflict=rule)
                delete_done(con, by_table.get("calls_done", []))
                con.execute("COMMIT")
                return []
            except Exception as e:
                _rollback(con)
                if isinstance(e, duckdb.IOException) or _disk_error(self.path, e):
                    raise  # the disk, not a row: nothing goes in one by one either
        failed = []
        for table in JOURNAL_TABLES:  # each row on its own (INSERT OR IGNORE: idempotent)
            for row in by_table.get(table, []):
                try:
                    if table == "calls_done":
                        delete_done(con, [row])
                    else:
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

    def _load_rescue(self, con: duckdb.DuckDBPyConnection) -> int:
        """Load what rescue files hold (answers a full disk kept out), then remove them."""
        n = 0
        for path in rescue.paths(self.path):
            rf = rescue.RescueFile(path)
            lines = rf.lines()
            if not lines:
                continue
            good, bad = [], []
            for raw in lines:
                try:
                    good.append(_journal_entry(raw))
                except ValueError as e:
                    bad.append((raw, str(e)))
            failed = self._insert_entries(con, good)
            bad += [
                (json.dumps({"t": t, "r": r}, default=str).encode(), f"insert into {t}: {why}")
                for t, r, why in failed
            ]
            if bad:
                self._quarantine(bad)
            gone = {id(r) for _, r, _ in failed}
            self._notify([(t, r) for t, r in good if id(r) not in gone])
            rf.remove()
            n += len(good)
            log.warning("loaded %d entries saved in the rescue file %s", len(good), path)
        return n

    def reserve_rescue(self) -> Path:
        """Set room aside for a rescue file (:mod:`tacorl_offline.rescue`) before paying."""
        path = rescue.paths(self.path)[0]
        try:
            rescue.RescueFile(path).reserve()
        except OSError as e:
            raise UserError(
                f"cannot set {rescue.RESERVE_BYTES // 1024} KiB aside for the rescue file {path} "
                f"({e.strerror or type(e).__name__}); nothing was sent: free disk space, or set "
                f"{rescue.ENV} to a file on another disk"
            ) from None
        return path

    def release_rescue(self) -> None:
        """Give the reserved room back when the rescue file holds nothing."""
        for path in rescue.paths(self.path):
            rf = rescue.RescueFile(path)
            with contextlib.suppress(OSError):
                if path.exists() and not rf.lines():
                    rf.remove()

    def rescue(
        self, entries: Sequence[Sequence[tuple[str, Mapping[str, Any]]]]
    ) -> tuple[Path, int]:
        """Save answers (each a list of journal entries) in the reserved rescue file; returns
        (its path, how many answers fit)."""
        path = rescue.paths(self.path)[0]
        groups = [
            "".join(
                json.dumps({"t": t, "r": dict(r)}, ensure_ascii=False, default=str) + "\n"
                for t, r in group
            ).encode("utf-8")
            for group in entries
        ]
        return path, rescue.RescueFile(path).save(groups)

    def write_entries(self, entries: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Write journal-shaped entries straight into DuckDB (when the journal cannot take them)."""
        try:
            with self.connect() as con:
                rows = [(t, dict(r)) for t, r in entries]
                failed = self._insert_entries(con, rows)
                gone = {id(r) for _, r, _ in failed}
                self._notify([(t, r) for t, r in rows if id(r) not in gone])
        except duckdb.Error as e:
            raise _disk_error(self.path, e) or UserError(
                f"cannot write warehouse {self.path}: {_first_line(e)}"
            ) from None
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
        for chunk in _chunks(ids, LOOKUP_CHUNK):
            marks = _placeholders(len(chunk))
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

    # ------------------------------------------------------------------ the paying lease

    def take_lease(self, con: duckdb.DuckDBPyConnection, run_id: str, phase: str) -> None:
        """Take this process's paying lease for ``run_id`` (see :mod:`tacorl_offline.leases`),
        or raise :class:`WarehouseBusy` naming the process that holds one."""
        me = leases.Owner(os.getpid(), socket.gethostname())
        now = time.time()
        held = [
            leases.Lease(r, ph, leases.Owner(int(pid), host), float(exp))
            for r, ph, pid, host, exp in con.execute(
                "SELECT run_id, phase, pid, host, expires_at FROM writer_leases"
            ).fetchall()
        ]
        standing, stale = leases.sort_out(held, me, now, _liveness)
        if standing:
            raise WarehouseBusy(leases.refusal(standing[0], str(self.path), now))
        for lease in stale:
            con.execute("DELETE FROM writer_leases WHERE run_id = ?", [lease.run_id])
        con.execute(
            "INSERT OR REPLACE INTO writer_leases (run_id, phase, pid, host, expires_at)"
            " VALUES (?, ?, ?, ?, ?)",
            [run_id, phase, me.pid, me.host, leases.expiry(now)],
        )
        self._leases.add(run_id)
        self._renewed_at = now

    def holds_lease(self, run_id: str) -> bool:
        return run_id in self._leases

    def release_lease(self, con: duckdb.DuckDBPyConnection, run_id: str) -> None:
        con.execute("DELETE FROM writer_leases WHERE run_id = ?", [run_id])
        self._leases.discard(run_id)

    def _renew_leases(self, con: duckdb.DuckDBPyConnection) -> None:
        """Push this instance's leases' expiry forward (at most every tenth of the TTL)."""
        now = time.time()
        if not self._leases or now - self._renewed_at < leases.LEASE_TTL_S / 10:
            return
        ids = sorted(self._leases)
        con.execute(
            f"UPDATE writer_leases SET expires_at = ? WHERE run_id IN ({_placeholders(len(ids))})",
            [leases.expiry(now), *ids],
        )
        self._renewed_at = now

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


def _liveness(owner: leases.Owner) -> bool | None:
    """Whether a lease's owner lives: known on this host, unknown elsewhere."""
    return pid_alive(owner.pid) if owner.host == socket.gethostname() else None


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
