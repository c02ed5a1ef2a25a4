"""The reward warehouse: one DuckDB file plus a durable journal beside it.

Design decision on the layout: **``Warehouse`` is a facade over parts, by composition.** It
owns the connection (opening, retrying on a lock, what every write open does first) and the
change tracking; each other responsibility lives in its own module, and the class exposes it
under its old name, so callers keep one object and one import:

- :mod:`tacorl_offline.journal` (a :class:`~tacorl_offline.journal.Journal` the instance
  holds): paid answers appended before use, replayed on a write open, the rescue file;
- :mod:`tacorl_offline.lookups`: answers and masks by key;
- :mod:`tacorl_offline.process_rows`: run rows and the write-ahead ledger of a process, and
  the closing of a dead process's rows;
- :mod:`tacorl_offline.lease_store` (a :class:`~tacorl_offline.lease_store.PayingLeases`
  the instance holds): the paying lease's rows;
- :mod:`tacorl_offline.schema`: the migrations; :mod:`tacorl_offline.batch_sql`: Arrow batch
  inserts and keyed SQL.

Composition rather than mixins: the journal and the leases have their own state (a lock, the
held run ids), and a part never reaches back into the warehouse, so none of them imports this
module (the package has no import cycle). Names other modules import from here
(``insert_rows``, ``migrations``, ``run_owner``, the errors, ...) are re-exported.

Design decisions of the connection:

- **Short write connections.** DuckDB allows one process to hold the file, readers included.
  Writers therefore never hold the connection between steps: they open, write a batch, and
  close. Every open retries on a lock with backoff, so ``sql`` and ``report`` work while a long
  run is going.
- **A write open cleans up first.** It applies new migrations, replays the journal and any
  rescue file, closes the rows of dead processes (:mod:`~tacorl_offline.process_rows`),
  renews this instance's paying leases, and in shared mode syncs with the team database.
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
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb

from tacorl_offline import lookups, process_rows
from tacorl_offline.batch_sql import (
    LOOKUP_CHUNK,
    delete_done,
    disk_error,
    first_line,
    insert_rows,
    rollback,
)
from tacorl_offline.errors import UserError
from tacorl_offline.journal import JOURNAL_TABLES, Journal, JournalWriteError, insert_entries
from tacorl_offline.lease_store import PayingLeases, WarehouseBusy
from tacorl_offline.process_rows import pid_alive, run_owner
from tacorl_offline.schema import migrate, migrations, table_names

__all__ = [
    "JOURNAL_TABLES",
    "LOOKUP_CHUNK",
    "JournalWriteError",
    "Warehouse",
    "WarehouseBusy",
    "WarehouseLocked",
    "delete_done",
    "insert_rows",
    "migrations",
    "pid_alive",
    "run_owner",
    "table_names",
]

_PID_RE = re.compile(r"PID (\d+)")

Listener = Callable[[Sequence[tuple[str, Mapping[str, Any]]]], None]


class WarehouseLocked(UserError):
    """Another process held the warehouse for longer than the lock timeout."""


class Warehouse:
    """A DuckDB warehouse file. Cheap to construct; connections are opened per use."""

    def __init__(self, path: str | os.PathLike[str], *, lock_timeout_s: float = 60.0) -> None:
        # Shared mode (a postgresql:// setting): this machine's file is the URL's local=.
        from tacorl_offline.shared_store import SharedStore, is_shared_url

        self.shared: SharedStore | None = SharedStore(str(path)) if is_shared_url(path) else None
        self.path = self.shared.local_path if self.shared else Path(path)
        self.lock_timeout_s = lock_timeout_s
        # Bumped whenever the file is found changed since this instance last closed it.
        self.generation = 0
        self._closed_sig: tuple[Any, ...] | None = None
        self._listeners: list[Listener] = []
        self._journal = Journal(self.path, self._notify)
        self.journal_path = self._journal.path
        self._leases = PayingLeases(str(self.path))

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

    def add_listener(self, fn: Listener) -> None:
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
                self._clean_up(con, replay_journal=replay_journal)
            yield con
            if self.shared is not None and not read_only:  # this connection's writes leave now
                self.shared.push(con)
            failed = False
        except duckdb.Error as e:
            disk = disk_error(self.path, e)
            if disk is not None:
                raise disk from None
            if not isinstance(
                e, (duckdb.IOException, duckdb.SerializationException, duckdb.InternalException)
            ):
                raise
            # Reads past the end of a truncated file and the like: the file, not our code.
            raise UserError(
                f"warehouse {self.path} cannot be read ({first_line(e)}); it is damaged or "
                "truncated: restore it from a copy, or pass another --warehouse"
            ) from None
        finally:
            try:
                con.close()
            except duckdb.Error as e:  # the close checkpoints: a full disk shows here
                if not failed:
                    raise disk_error(self.path, e) or UserError(
                        f"cannot close warehouse {self.path}: {first_line(e)}"
                    ) from None
            self._closed_sig = self._signature()

    def _clean_up(self, con: duckdb.DuckDBPyConnection, *, replay_journal: bool) -> None:
        """What every write open does first (see the module docstring)."""
        migrate(con)
        if replay_journal:
            self._journal.replay(con)
            self._journal.load_rescue(con)
        process_rows.mark_stale_runs(con)
        process_rows.close_in_flight(con)
        self._leases.renew(con)
        if self.shared is not None:
            self.shared.sync(self, con, insert_rows)

    def flush_with(
        self,
        con: duckdb.DuckDBPyConnection,
        write: Callable[[duckdb.DuckDBPyConnection], None],
    ) -> int:
        """Replay the journal (its own transaction, bad lines quarantined), then run
        ``write(con)`` in one transaction; returns the entries replayed. For a connection
        opened with ``replay_journal=False`` (bench/warehouse_scale.py times it)."""
        n = self._journal.replay(con)
        con.execute("BEGIN TRANSACTION")
        try:
            write(con)
        except BaseException:
            rollback(con)
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
                rollback(con)
                raise
            con.execute("COMMIT")

    def flush(self, *, lock_timeout_s: float | None = None) -> None:
        """Replay the journal into DuckDB now (opens and closes a write connection)."""
        with self.connect(lock_timeout_s=lock_timeout_s):
            pass

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

    # ------------------------------------------------------------------ the journal

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
        self._journal.append(entries, sync=sync)
        if self.shared is not None and entries:  # durable here first; pushed now or later
            self.shared.publish(entries)

    def pending_journal(self) -> list[tuple[str, dict[str, Any]]]:
        """Entries not yet replayed into DuckDB (bad lines, such as a torn write, are skipped)."""
        return self._journal.pending()

    def journal_tail(self) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str, str], str]]:
        """(request_hash -> response row, (prompt_id, mask_hash, teacher_key) -> request_hash)
        for what the journal holds and DuckDB may not yet."""
        return lookups.answers_in(self._journal.pending())

    def write_entries(self, entries: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Write journal-shaped entries straight into DuckDB (when the journal cannot take them)."""
        try:
            with self.connect() as con:
                rows = [(t, dict(r)) for t, r in entries]
                failed = insert_entries(con, rows, self.path)
                gone = {id(r) for _, r, _ in failed}
                self._notify([(t, r) for t, r in rows if id(r) not in gone])
        except duckdb.Error as e:
            raise disk_error(self.path, e) or UserError(
                f"cannot write warehouse {self.path}: {first_line(e)}"
            ) from None
        if failed:
            t, _, why = failed[0]
            raise UserError(f"{len(failed)} row(s) could not be written: insert into {t}: {why}")

    def reserve_rescue(self) -> Path:
        """Set room aside for a rescue file (:mod:`tacorl_offline.rescue`) before paying."""
        return self._journal.reserve_rescue()

    def release_rescue(self) -> None:
        """Give the reserved room back when the rescue file holds nothing."""
        self._journal.release_rescue()

    def rescue(
        self, entries: Sequence[Sequence[tuple[str, Mapping[str, Any]]]]
    ) -> tuple[Path, int]:
        """Save answers (each a list of journal entries) in the reserved rescue file; returns
        (its path, how many answers fit)."""
        return self._journal.rescue(entries)

    # ------------------------------------------------------------------ lookups and runs

    lookup_responses = staticmethod(lookups.lookup_responses)
    lookup_masks = staticmethod(lookups.lookup_masks)
    start_run = staticmethod(process_rows.start_run)
    finish_run = staticmethod(process_rows.finish_run)
    mark_stale_runs = staticmethod(process_rows.mark_stale_runs)
    close_in_flight = staticmethod(process_rows.close_in_flight)

    # ------------------------------------------------------------------ the paying lease

    def take_lease(self, con: duckdb.DuckDBPyConnection, run_id: str, phase: str) -> None:
        """Take this process's paying lease for ``run_id`` (see :mod:`tacorl_offline.leases`),
        or raise :class:`WarehouseBusy` naming the process that holds one."""
        self._leases.take(con, run_id, phase)

    def holds_lease(self, run_id: str) -> bool:
        return run_id in self._leases.held

    def release_lease(self, con: duckdb.DuckDBPyConnection, run_id: str) -> None:
        self._leases.release(con, run_id)
