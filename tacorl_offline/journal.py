"""The warehouse's journal: paid answers on disk before anything uses them.

Design decisions:

- **Paid answers go to a journal first.** A teacher answer is appended to
  ``<file>.journal`` (JSON lines ``{"t": table, "r": row}``, flushed and fsync'd) the moment
  it arrives, before anything uses it. The journal is replayed into DuckDB in one Arrow batch
  on every write open (a plain ``INSERT``, redone as ``INSERT OR IGNORE`` on primary keys when
  a row is already there, so a replay after a crash is idempotent) and then truncated. A crash
  at any moment loses at most the calls still in flight, and the DuckDB lock is held only for
  the milliseconds a batch insert takes.
- **A bad journal line never bricks the warehouse.** A line that is not UTF-8, not a JSON
  object of the journal's shape, or whose row fails its insert is moved to
  ``<file>.journal.quarantine`` (with a one-line warning naming it); the good lines still load.
- **A failed append is one clear error.** Disk full (or any OS error) on append undoes the
  partial write and raises :class:`JournalWriteError`; the caller keeps the answer in memory
  and saves it another way (:meth:`~tacorl_offline.warehouse.Warehouse.write_entries`, else
  the reserved rescue file of :mod:`tacorl_offline.rescue`, loaded on the next write open)
  before stopping.
- **Every append starts on a line boundary.** Under the journal's lock, an append first looks
  at the last byte: a tail with no line end (a process died mid-write) is moved to the
  quarantine, or, when it is a whole entry that only lost its newline, finished with one. A new
  entry is never written onto a torn line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb

from tacorl_offline import rescue
from tacorl_offline.batch_sql import delete_done, disk_error, insert_rows, rollback
from tacorl_offline.errors import UserError

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

Entries = Sequence[tuple[str, Mapping[str, Any]]]

log = logging.getLogger("tacorl_offline")


class JournalWriteError(UserError):
    """The journal could not take an append (disk full, permissions, not a file)."""


def _rule(table: str) -> str:
    return "replace" if table in REPLACE_ON_REPLAY else "ignore"


def journal_entry(raw: bytes) -> tuple[str, dict[str, Any]]:
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


def insert_entries(
    con: duckdb.DuckDBPyConnection,
    entries: Sequence[tuple[str, dict[str, Any]]],
    warehouse_path: Path,
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
            rollback(con)
            if isinstance(e, duckdb.IOException) or disk_error(warehouse_path, e):
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


class Journal:
    """``<warehouse>.journal`` and the warehouse's rescue file.

    ``notify(entries)`` is called with every entry appended, replayed or loaded from a rescue
    file (the warehouse's listeners).
    """

    def __init__(self, warehouse_path: Path, notify: Callable[[Entries], None]) -> None:
        self.warehouse_path = warehouse_path
        self.path = warehouse_path.with_name(warehouse_path.name + ".journal")
        self._notify = notify
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the file

    @contextlib.contextmanager
    def _locked(self, mode: str) -> Iterator[Any]:
        self.check_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Appends are unbuffered (a failed write is cut off, never flushed later); reads buffer.
        buffering = 0 if "a" in mode else -1
        with self._lock, open(self.path, mode, buffering=buffering) as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield f
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def check_path(self) -> None:
        if self.path.is_dir():
            raise UserError(
                f"the warehouse journal {self.path} is a directory; move it away "
                "(the journal must be a file beside the warehouse)"
            )

    def _empty(self) -> bool:
        return not self.path.exists() or self.path.stat().st_size == 0

    # ------------------------------------------------------------------ append

    def append(self, entries: Iterable[tuple[str, Mapping[str, Any]]], *, sync: bool) -> None:
        """Append (table, row) entries; see :meth:`~tacorl_offline.warehouse.Warehouse.journal`."""
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
            with self._locked("a+b") as f:
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
                f"cannot append to the warehouse journal {self.path}: "
                f"{e.strerror or type(e).__name__}"
            ) from None
        self._notify(entries)

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
            journal_entry(torn)
        except ValueError as e:
            self.quarantine([(torn, f"a torn last line ({e})")])
            os.ftruncate(f.fileno(), start)
            return start
        os.write(f.fileno(), b"\n")
        return end + 1

    # ------------------------------------------------------------------ read and replay

    @staticmethod
    def _read(f: Any) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[bytes, str]]]:
        """(good entries, (bad line, why)) from an open binary journal."""
        good, bad = [], []
        for raw in f:
            if not raw.strip():
                continue
            try:
                good.append(journal_entry(raw))
            except ValueError as e:
                bad.append((raw, str(e)))
        return good, bad

    def pending(self) -> list[tuple[str, dict[str, Any]]]:
        """Entries not yet replayed into DuckDB (bad lines, such as a torn write, are skipped)."""
        if self._empty():
            return []
        with self._locked("rb") as f:
            return self._read(f)[0]

    def quarantine(self, bad: Sequence[tuple[bytes, str]]) -> None:
        q = self.path.with_name(self.path.name + ".quarantine")
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

    def replay(self, con: duckdb.DuckDBPyConnection) -> int:
        """Insert the journal's entries, quarantine the bad ones, then truncate it."""
        self.check_path()
        if self._empty():
            return 0
        with self._locked("rb+") as f:
            entries, bad = self._read(f)
            failed = insert_entries(con, entries, self.warehouse_path)
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
                self.quarantine(bad)
            # Only after the commit: a crash before this line replays again, harmlessly.
            f.seek(0)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
        return len(entries)

    # ------------------------------------------------------------------ the rescue file

    def load_rescue(self, con: duckdb.DuckDBPyConnection) -> int:
        """Load what rescue files hold (answers a full disk kept out), then remove them."""
        n = 0
        for path in rescue.paths(self.warehouse_path):
            rf = rescue.RescueFile(path)
            lines = rf.lines()
            if not lines:
                continue
            good, bad = [], []
            for raw in lines:
                try:
                    good.append(journal_entry(raw))
                except ValueError as e:
                    bad.append((raw, str(e)))
            failed = insert_entries(con, good, self.warehouse_path)
            bad += [
                (json.dumps({"t": t, "r": r}, default=str).encode(), f"insert into {t}: {why}")
                for t, r, why in failed
            ]
            if bad:
                self.quarantine(bad)
            gone = {id(r) for _, r, _ in failed}
            self._notify([(t, r) for t, r in good if id(r) not in gone])
            rf.remove()
            n += len(good)
            log.warning("loaded %d entries saved in the rescue file %s", len(good), path)
        return n

    def reserve_rescue(self) -> Path:
        """Set room aside for a rescue file (:mod:`tacorl_offline.rescue`) before paying."""
        path = rescue.paths(self.warehouse_path)[0]
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
        for path in rescue.paths(self.warehouse_path):
            rf = rescue.RescueFile(path)
            with contextlib.suppress(OSError):
                if path.exists() and not rf.lines():
                    rf.remove()

    def rescue(self, entries: Sequence[Entries]) -> tuple[Path, int]:
        """Save answers (each a list of journal entries) in the reserved rescue file; returns
        (its path, how many answers fit)."""
        path = rescue.paths(self.warehouse_path)[0]
        groups = [
            "".join(
                json.dumps({"t": t, "r": dict(r)}, ensure_ascii=False, default=str) + "\n"
                for t, r in group
            ).encode("utf-8")
            for group in entries
        ]
        return path, rescue.RescueFile(path).save(groups)
