"""The team warehouse: many machines, one PostgreSQL database as the shared log.

Design decisions:

- **Why PostgreSQL and not DuckLake.** DuckLake (a PostgreSQL catalog plus Parquet files) was
  the first choice, but the ``duckdb-ext-ducklake`` and ``duckdb-ext-postgres`` packages
  (newest 1.4.4.20260205) are built for DuckDB v1.4.4 and refuse to load into the DuckDB 2.0
  we pin ("built specifically for DuckDB version 'v1.4.4'", re-checked with duckdb 2.0.1),
  and DuckLake enforces no primary key, so neither "the first
  answer for a request hash wins" nor a claim row could be atomic in it. A plain PostgreSQL
  table with a primary key gives both in one statement (``INSERT ... ON CONFLICT``).
- **Every machine keeps its local warehouse.** The ``warehouse:`` setting
  ``postgresql://user@host:5432/db?local=warehouse/tacorl.duckdb`` names the shared database
  and this machine's DuckDB file (``local``, default ``warehouse/tacorl.duckdb``). Everything
  works on the local file as before: the journal, the in-memory mask map, ``sql``, ``report``,
  ``evaluate``. The shared database is a log of rows (``tacorl_rows``: table, primary key,
  the row as JSON, a sequence number) that every machine pushes to and pulls from, so each
  local file becomes a replica of every machine's rows.
- **Push as soon as journaled, and at every close; pull on every write open.** An answer
  is journaled locally (fsync) first, then pushed (:meth:`SharedStore.publish`); every write
  connection pushes, as it closes, this machine's rows written since the last confirmed
  push (a watermark on ``created_at``, and every ``runs`` row), so a run's last rows leave
  with it; every write open pulls the rows other machines added since the last pulled
  sequence number (and pushes first if an earlier push failed). A machine killed between its
  journal and its push, or cut off from PostgreSQL, pushes on its next write open: nothing
  paid for is lost, and a replayed push changes nothing (``ON CONFLICT``).
- **A run row has an owner.** Runs are the one replicated row that changes after it is
  written ('running', then 'finished'). A pulled copy, unchanged, is never pushed back
  (``foreign_runs`` in the state file), and :data:`RUNS_UPSERT` lets a machine other than
  the owner only close a 'running' run (its process is gone) or resume one, so an old copy
  never turns the owner's 'finished' back into 'running' or 'interrupted'.
- **Few round trips.** Claims and pushes are flat-combined: threads that ask at the same
  time share one round trip (the claim and the answer check pipelined, each with its own
  snapshot) or one transaction (the pushes), so the PostgreSQL cost per answer falls as the
  concurrency rises.
- **A claim row before paying.** Before a miss is paid, the caller claims its request hash in
  ``tacorl_claims`` for a lease (``lease_s``, default 120). Granted: it checks that no machine
  has answered meanwhile, pays, pushes and drops the claim. Held by another machine: the job is
  set aside and polled until that machine's answer arrives (then replayed: a ledger 'hit'), or
  until the lease runs out (then it is claimed and paid). A duplicate can happen only when a
  lease runs out or PostgreSQL is unreachable; the ledger then holds two paid rows for the
  request hash, and ``report cost`` shows them (:func:`duplicate_calls`).
- **PostgreSQL away is not fatal.** Any PostgreSQL error turns the store offline for a few
  seconds (a one-line warning, once): calls are paid without a claim, answers stay in the
  local journal and DuckDB, and the next write open after it comes back pushes them.
- **Credentials stay in memory.** The URL is kept only in this object; what is printed or
  stored is :func:`~tacorl_offline.redaction.redact_url_credentials` of it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tacorl_offline.errors import UserError
from tacorl_offline.redaction import redact_url_credentials

log = logging.getLogger("tacorl_offline")

SCHEMES = ("postgresql", "postgres")
DEFAULT_LOCAL = "warehouse/tacorl.duckdb"
DEFAULT_LEASE_S = 120.0
# Rows replicated between machines, with the rule a pulled row is inserted by locally.
IGNORE_TABLES = ("responses", "masks", "api_calls", "metric_values")
REPLACE_TABLES = ("runs", "steps", "samples", "replays", "evaluations")
SHARED_TABLES = IGNORE_TABLES + REPLACE_TABLES
# Rows pushed within this many seconds are pulled again on the next open: a sequence number
# is taken before its push commits, so a lower one may still become visible after a higher one.
SETTLE_S = 5.0
# Re-push rows this much older than the watermark (clock steps, same-second writes).
PUSH_OVERLAP_S = 2.0
OFFLINE_RETRY_S = 5.0
# A run row has an owner: the machine and local file that pushed it first (the first part
# of the ``machine`` column, '<machine>@<file>'; a later push by its owner keeps it). Its owner may change it at will;
# another machine may only close a run that is still 'running' (its process is gone: a write
# open on the same host marks it 'interrupted') or take up a run again ('running': a resume;
# an unchanged pulled copy is never pushed back, see ``foreign_runs``). So a replica's stale
# copy never turns the owner's 'finished' back, and a stale mark loses to the owner's own.
RUNS_UPSERT = (
    "INSERT INTO tacorl_rows (tbl, pk, row, machine) VALUES (%s, %s, %s, %s)"
    " ON CONFLICT (tbl, pk) DO UPDATE SET row = EXCLUDED.row,"
    " machine = CASE WHEN split_part(tacorl_rows.machine, ':', 1)"
    " = split_part(EXCLUDED.machine, ':', 1) OR EXCLUDED.row->>'status' = 'running'"
    " THEN EXCLUDED.machine ELSE tacorl_rows.machine END,"
    " seq = nextval('tacorl_rows_seq_seq'), pushed_at = now()"
    " WHERE tacorl_rows.row IS DISTINCT FROM EXCLUDED.row AND ("
    " split_part(tacorl_rows.machine, ':', 1) = split_part(EXCLUDED.machine, ':', 1)"
    " OR EXCLUDED.row->>'status' = 'running' OR tacorl_rows.row->>'status' = 'running')"
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS tacorl_rows (
    seq     BIGSERIAL NOT NULL,
    tbl     TEXT NOT NULL,
    pk      TEXT NOT NULL,
    row     JSONB NOT NULL,
    machine TEXT NOT NULL,
    pushed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tbl, pk)
);
CREATE INDEX IF NOT EXISTS tacorl_rows_by_seq ON tacorl_rows (seq);
CREATE TABLE IF NOT EXISTS tacorl_claims (
    request_hash TEXT PRIMARY KEY,
    machine      TEXT NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL
);
"""


def is_shared_url(setting: str | os.PathLike[str]) -> bool:
    return (
        isinstance(setting, str)
        and setting.split(":", 1)[0].lower() in SCHEMES
        and "://" in setting
    )


def without_password(setting: str) -> str:
    """The setting as a user may see it and copy it: the password left out of the URL (and
    out of a ``password=`` parameter); user, host, database and ``local=`` kept, so the
    copied command works with ``PGPASSWORD`` or ``~/.pgpass``."""
    try:
        parts = urlsplit(setting)
    except ValueError:
        return redact_url_credentials(setting) or ""
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = userinfo.split(":", 1)[0] + "@" + host
    query = urlencode(
        [
            (k, v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if k.lower() not in ("password", "sslpassword")
        ],
        safe="/",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def parse_setting(setting: str) -> tuple[str, str, float]:
    """(libpq URL without our own parameters, local DuckDB path, lease seconds)."""
    try:
        parts = urlsplit(setting)
    except ValueError:
        raise UserError(
            f"warehouse {redact_url_credentials(setting)} is not a valid URL; use "
            "postgresql://user@host:5432/db?local=PATH"
        ) from None
    params = parse_qsl(parts.query, keep_blank_values=True)
    local, lease = DEFAULT_LOCAL, DEFAULT_LEASE_S
    rest = []
    for k, v in params:
        if k == "local":
            local = v
        elif k == "lease_s":
            try:
                lease = float(v)
                if lease <= 0:
                    raise ValueError
            except ValueError:
                raise UserError(
                    f"warehouse URL: lease_s={v!r} is not a positive number of seconds"
                ) from None
        else:
            rest.append((k, v))
    if not parts.hostname and not any(k == "host" for k, _ in rest):
        raise UserError(
            f"warehouse {redact_url_credentials(setting)} names no host; use "
            "postgresql://user@host:5432/db?local=PATH"
        )
    if not local:
        raise UserError("warehouse URL: local= is empty; give this machine's DuckDB file")
    url = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(rest), ""))
    return url, local, lease


def _jsonable(v: Any) -> Any:
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    return v


def _pk_text(row: Mapping[str, Any], cols: Sequence[str]) -> str:
    return "\x1f".join("" if row.get(c) is None else str(row.get(c)) for c in cols)


class SharedStore:
    """One machine's handle on the shared PostgreSQL log (thread-safe, one connection)."""

    def __init__(self, setting: str) -> None:
        self._url, local, self.lease_s = parse_setting(setting)
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise UserError(
                "a postgresql:// warehouse needs the PostgreSQL driver: "
                "pip install 'tacorl-offline[team]'"
            ) from None
        self.local_path = Path(local)
        self.display = redact_url_credentials(setting.split("?", 1)[0]) or ""
        # '<machine>@<file>:<pid>:<nonce>': the machine is TACORL_MACHINE, else the host name.
        # The owner of a run row is this local file on this machine ('<machine>@<file>'):
        # two processes of one host on separate local files are two owners.
        name = (os.environ.get("TACORL_MACHINE") or socket.gethostname()).translate(
            {ord(":"): "_", ord("@"): "_"}
        )
        where = hashlib.sha256(str(self.local_path.resolve()).encode()).hexdigest()[:8]
        self.machine = f"{name}@{where}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = threading.RLock()
        self._con: Any = None
        self._offline_until = 0.0
        self._warned = False
        self._schema_ready = False
        self._pks: dict[str, list[str]] = {}
        self.dirty = True  # a full watermark push is due (first open, or a failed push)
        # (table, pk) this process has pushed or pulled: a sync skips them (PostgreSQL has
        # them), so the overlap windows cost no rows on the wire and no local inserts.
        self._known: set[tuple[str, str]] = set()
        self.claims = {"claimed": 0, "busy": 0, "answer": 0, "offline": 0}
        self.round_trips = 0  # network round trips to PostgreSQL (bench/team_scale.py)
        # Flat combining: callers queue their request; whoever holds the connection serves
        # every queued one in one round trip (claims) or one transaction (pushes).
        self._queue_lock = threading.Lock()
        self._claim_queue: list[_Pending] = []
        self._push_queue: list[_Pending] = []
        # Claims this machine took on requests that turned out answered: dropped with the
        # next push (harmless meanwhile: every claim is checked against the answers).
        self._stale_claims: set[str] = set()

    # ------------------------------------------------------------------ connection

    @property
    def state_path(self) -> Path:
        return self.local_path.with_name(self.local_path.name + ".shared.json")

    def _connect(self) -> Any:
        import psycopg

        if self._con is not None and not self._con.closed:
            return self._con
        if time.monotonic() < self._offline_until:
            raise ConnectionError("shared warehouse offline")
        self._con = psycopg.connect(self._url, autocommit=True, connect_timeout=3)
        if not self._schema_ready:
            with self._con.transaction():
                self._con.execute("SELECT pg_advisory_xact_lock(7170720)")
                for stmt in SCHEMA.split(";"):
                    if stmt.strip():
                        self._con.execute(stmt)
            self._schema_ready = True
        return self._con

    def _offline(self, e: BaseException) -> None:
        with contextlib.suppress(Exception):
            if self._con is not None:
                self._con.close()
        self._con = None
        self._offline_until = time.monotonic() + OFFLINE_RETRY_S
        self.dirty = True
        if not self._warned:
            self._warned = True
            first = " ".join(str(e).split())[:160]
            log.warning(
                "warning: shared warehouse %s unreachable (%s); answers are kept in the "
                "local warehouse and pushed when it is back",
                self.display,
                redact_url_credentials(first) if "://" in first else first,
            )

    def check(self) -> None:
        """Connect now: a one-line UserError if the database cannot be reached."""
        import psycopg

        try:
            with self._lock:
                self._connect()
        except (psycopg.Error, OSError) as e:
            first = " ".join(str(e).split())[:200]
            raise UserError(
                f"cannot reach the shared warehouse {self.display}: {first}; check the URL "
                "and that PostgreSQL is running"
            ) from None

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                with contextlib.suppress(Exception):
                    self._con.close()
            self._con = None

    def _guard(self, fn: Any, default: Any) -> Any:
        import psycopg

        with self._lock:
            try:
                con = self._connect()
                return fn(con)
            except (psycopg.Error, OSError) as e:
                self._offline(e)
                return default

    # ------------------------------------------------------------------ state

    def _state(self) -> dict[str, Any]:
        try:
            st = json.loads(self.state_path.read_text(encoding="utf-8"))
            if isinstance(st, dict) and st.get("db") == self.display:
                return st
        except (OSError, ValueError):
            pass
        return {"db": self.display, "pulled_seq": 0, "pushed_until": None}

    def _save_state(self, st: Mapping[str, Any]) -> None:
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(dict(st)), encoding="utf-8")
        os.replace(tmp, self.state_path)

    def primary_keys(self, con: Any) -> dict[str, list[str]]:
        if not self._pks:
            rows = con.execute(
                "SELECT table_name, constraint_column_names FROM duckdb_constraints()"
                " WHERE constraint_type = 'PRIMARY KEY' AND schema_name = 'main'"
            ).fetchall()
            self._pks = {t: list(c) for t, c in rows if t in SHARED_TABLES}
        return self._pks

    # ------------------------------------------------------------------ push

    def _push_rows(self, pg: Any, rows: Sequence[tuple[str, str, dict[str, Any]]]) -> int:
        """Insert (table, pk, row) into the log; returns responses rows that were new."""
        from psycopg.types.json import Jsonb

        new = 0
        with pg.cursor() as cur:
            for table in SHARED_TABLES:
                batch = [
                    (t, pk, Jsonb(r, dumps=_dumps), self.machine) for t, pk, r in rows if t == table
                ]
                if not batch:
                    continue
                if table in IGNORE_TABLES:
                    sql = (
                        "INSERT INTO tacorl_rows (tbl, pk, row, machine) VALUES (%s, %s, %s, %s)"
                        " ON CONFLICT (tbl, pk) DO NOTHING"
                    )
                elif table == "runs":
                    sql = RUNS_UPSERT
                else:
                    sql = (
                        "INSERT INTO tacorl_rows (tbl, pk, row, machine) VALUES (%s, %s, %s, %s)"
                        " ON CONFLICT (tbl, pk) DO UPDATE SET row = EXCLUDED.row,"
                        " machine = EXCLUDED.machine, seq = nextval('tacorl_rows_seq_seq'),"
                        " pushed_at = now() WHERE tacorl_rows.row IS DISTINCT FROM EXCLUDED.row"
                    )
                cur.executemany(sql, batch)
                if table == "responses":
                    new += max(cur.rowcount, 0)
        return new

    def publish(
        self,
        entries: Sequence[tuple[str, Mapping[str, Any]]],
        pks: Mapping[str, Sequence[str]] | None = None,
    ) -> bool:
        """Push journal entries now (best effort) and drop this machine's claims on the
        answers among them; False (and the store marked for a full push) if it failed.
        Concurrent publishes share one transaction and one round trip."""
        pks = pks or self._pks or _JOURNAL_PKS
        rows = [
            (t, _pk_text(r, pks[t]), {k: _jsonable(v) for k, v in r.items()})
            for t, r in entries
            if t in SHARED_TABLES and t in pks
        ]
        if not rows:
            return True
        return bool(self._combine(self._push_queue, rows, self._push_batch))

    def _push_batch(self, batch: list[_Pending]) -> None:
        rows = [r for p in batch for r in p.arg]
        answered = [pk for t, pk, _ in rows if t == "responses"]

        def push(pg: Any) -> bool:
            release = sorted(set(answered) | self._stale_claims)
            with pg.pipeline(), pg.transaction():
                self._push_rows(pg, rows)
                if release:
                    pg.execute(
                        "DELETE FROM tacorl_claims WHERE request_hash = ANY(%s) AND machine = %s",
                        [release, self.machine],
                    )
            self.round_trips += 1
            self._stale_claims.difference_update(release)
            return True

        ok = bool(self._guard(push, False))
        if ok:
            self._known.update((t, pk) for t, pk, _ in rows if t in IGNORE_TABLES)
        for p in batch:
            p.result = ok

    def _combine(
        self, queue: list[_Pending], arg: Any, serve: Callable[[list[_Pending]], None]
    ) -> Any:
        """Queue ``arg``; the thread that holds the connection serves the whole queue with
        ``serve(batch)`` (which sets each one's result). Returns this caller's result."""
        me = _Pending(arg)
        with self._queue_lock:
            queue.append(me)
        with self._lock:
            if not me.done:
                with self._queue_lock:
                    batch = queue[:]
                    queue.clear()
                try:
                    serve(batch)
                finally:
                    for p in batch:
                        p.done = True
        return me.result

    # ------------------------------------------------------------------ sync (push + pull)

    def sync(self, warehouse: Any, con: Any, insert_rows: Callable[..., int]) -> tuple[int, int]:
        """At a write open: push what an earlier push missed (the first open of this
        process, or after a failed push), then pull the rows other machines added (stored
        with ``insert_rows``, the warehouse's batch insert); (pushed, pulled). Best effort:
        on a PostgreSQL error nothing is lost locally and a later open tries again."""
        pushed = self.push(con) if self.dirty else 0
        st = self._state()
        pulled = self._pull(warehouse, con, insert_rows, st, st.setdefault("foreign_runs", {}))
        with contextlib.suppress(OSError):
            self._save_state(st)
        return pushed, pulled

    def push(self, con: Any) -> int:
        """Push this machine's rows written since the last confirmed push (at the close of
        every write connection, so a run's last rows leave with it); the rows pushed."""
        st = self._state()
        now = con.execute("SELECT current_timestamp::TIMESTAMP").fetchone()[0].isoformat()
        # A run row of another machine, unchanged since it was pulled, is not pushed back:
        # that copy may be older than the owner's latest (see RUNS_UPSERT).
        foreign: dict[str, str] = st.get("foreign_runs", {})
        rows = [
            r
            for r in _local_rows(con, self.primary_keys(con), st["pushed_until"])
            if r[:2] not in self._known
            and not (r[0] == "runs" and foreign.get(r[1]) == _digest(r[2]))
        ]

        def go(pg: Any) -> bool:
            with pg.pipeline(), pg.transaction():
                self._push_rows(pg, rows)
            self.round_trips += 1
            return True

        if rows and not self._guard(go, False):
            return 0
        self._known.update((t, pk) for t, pk, _ in rows if t in IGNORE_TABLES)
        st["pushed_until"] = now
        self.dirty = False
        with contextlib.suppress(OSError):
            self._save_state(st)
        return len(rows)

    def _pull(
        self,
        warehouse: Any,
        con: Any,
        insert_rows: Callable[..., int],
        st: dict[str, Any],
        foreign: dict[str, str],
    ) -> int:
        """Store the rows other machines pushed since the last pull; the number stored."""

        def pull(pg: Any) -> list[tuple[int, str, Any, bool]]:
            self.round_trips += 1
            return pg.execute(
                "SELECT seq, tbl, row, pushed_at < now() - make_interval(secs => %s)"
                " FROM tacorl_rows WHERE seq > %s AND machine <> %s ORDER BY seq",
                [SETTLE_S, int(st["pulled_seq"]), self.machine],
            ).fetchall()

        got = self._guard(pull, None)
        if not got:
            return 0
        by_table: dict[str, list[dict[str, Any]]] = {}
        pks = self.primary_keys(con)
        fresh: list[tuple[str, str]] = []
        for _, t, r, _ in got:
            key = (t, _pk_text(r, pks.get(t, [])))
            if key not in self._known:
                by_table.setdefault(t, []).append(r)
                if t in IGNORE_TABLES:
                    fresh.append(key)
        try:
            entries = _store_pulled(con, by_table, insert_rows, foreign)
            self._known.update(fresh)
        except Exception as e:  # never fatal: the rows stay in PostgreSQL for the next open
            log.warning(
                "warning: rows pulled from the shared warehouse could not be stored "
                "locally (%s); the next open tries again",
                " ".join(str(e).split())[:200],
            )
            return 0
        # The mark moves past settled rows only: a row pushed in the last SETTLE_S may
        # still have a lower-numbered one committing after it, so it is read again.
        for seq, _, _, settled in got:
            if not settled:
                break
            st["pulled_seq"] = seq
        warehouse._notify([(t, r) for t, r in entries if t in ("responses", "masks")])
        return len(entries)

    # ------------------------------------------------------------------ claims

    def acquire(self, request_hash: str) -> tuple[str, dict[str, Any] | None]:
        """('answer', row) if a machine has answered it; ('claimed', None) if this machine
        may pay for it now; ('busy', None) while another machine's lease runs;
        ('offline', None) if PostgreSQL cannot be reached (pay without a claim).
        Concurrent acquires share one round trip."""
        verdict = self._combine(self._claim_queue, request_hash, self._acquire_batch)
        self.claims[verdict[0]] += 1
        return verdict

    def _acquire_batch(self, batch: list[_Pending]) -> None:
        hashes = sorted({p.arg for p in batch})

        def go(pg: Any) -> dict[str, tuple[str, dict[str, Any] | None]]:
            # Two statements, in this order, each with its own snapshot (one round trip):
            # the claim first, then the answers, so an answer pushed before another
            # machine dropped its claim is always seen by whoever claims next.
            with pg.pipeline():
                claim = pg.execute(
                    "INSERT INTO tacorl_claims (request_hash, machine, expires_at)"
                    " SELECT h, %s, now() + make_interval(secs => %s) FROM unnest(%s::text[]) AS h"
                    " ON CONFLICT (request_hash) DO UPDATE SET machine = EXCLUDED.machine,"
                    " expires_at = EXCLUDED.expires_at"
                    " WHERE tacorl_claims.expires_at < now()"
                    " OR tacorl_claims.machine = EXCLUDED.machine"
                    " RETURNING request_hash",
                    [self.machine, self.lease_s, hashes],
                )
                answers = pg.execute(
                    "SELECT pk, row FROM tacorl_rows WHERE tbl = 'responses' AND pk = ANY(%s)",
                    [hashes],
                )
            self.round_trips += 1
            claimed = {r[0] for r in claim.fetchall()}
            rows = {pk: row for pk, row in answers.fetchall()}
            out: dict[str, tuple[str, dict[str, Any] | None]] = {}
            for h in hashes:
                if h in rows:
                    if h in claimed:
                        self._stale_claims.add(h)
                    out[h] = ("answer", rows[h])
                else:
                    out[h] = ("claimed", None) if h in claimed else ("busy", None)
            return out

        got = self._guard(go, None)
        for p in batch:
            p.result = got[p.arg] if got is not None else ("offline", None)

    def release(self, request_hash: str) -> None:
        """Drop this machine's claim (a call that ended without an answer to share)."""
        self._guard(
            lambda pg: pg.execute(
                "DELETE FROM tacorl_claims WHERE request_hash = %s AND machine = %s",
                [request_hash, self.machine],
            ),
            None,
        )

    def lookup_responses(self, request_hashes: Sequence[str]) -> dict[str, dict[str, Any]]:
        """request_hash -> response row, straight from PostgreSQL (one indexed query)."""

        def go(pg: Any) -> dict[str, dict[str, Any]]:
            rows = pg.execute(
                "SELECT pk, row FROM tacorl_rows WHERE tbl = 'responses' AND pk = ANY(%s)",
                [list(request_hashes)],
            ).fetchall()
            return {pk: r for pk, r in rows}

        return self._guard(go, {})


def _local_rows(
    con: Any, pks: Mapping[str, Sequence[str]], since: str | None
) -> list[tuple[str, str, dict[str, Any]]]:
    """(table, pk, row) of the local rows written since ``since`` (less an overlap), and every
    ``runs`` row."""
    out = []
    for table, cols in pks.items():
        if table == "runs" or since is None:
            cur = con.execute(f'SELECT * FROM "{table}"')
        else:
            cur = con.execute(
                f'SELECT * FROM "{table}" WHERE created_at >= ?::TIMESTAMP'
                f" - INTERVAL {PUSH_OVERLAP_S:.0f} SECOND",
                [since],
            )
        names = [d[0] for d in cur.description]
        for rec in cur.fetchall():
            r = {k: _jsonable(v) for k, v in zip(names, rec, strict=True)}
            out.append((table, _pk_text(r, cols), r))
    return out


def _store_pulled(
    con: Any,
    by_table: Mapping[str, list[dict[str, Any]]],
    insert_rows: Callable[..., int],
    foreign: dict[str, str],
) -> list[tuple[str, dict[str, Any]]]:
    """Insert pulled rows in one local transaction (all or nothing) and note the digest of
    each pulled run row as stored (``foreign``); the (table, row) entries stored."""
    entries: list[tuple[str, dict[str, Any]]] = []
    digests: dict[str, str] = {}
    con.execute("BEGIN TRANSACTION")
    try:
        for t in SHARED_TABLES:
            # One batch per set of columns: a journaled row has no created_at (the default
            # fills it), a row read from DuckDB has one.
            shapes: dict[frozenset[str], list[dict[str, Any]]] = {}
            for r in by_table.get(t, []):
                shapes.setdefault(frozenset(r), []).append(r)
            for rs in shapes.values():
                rule = "ignore" if t in IGNORE_TABLES else "replace"
                insert_rows(con, t, rs, on_conflict=rule)
                entries += [(t, r) for r in rs]
        ids = [str(r.get("run_id")) for t, r in entries if t == "runs"]
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            cur = con.execute(
                f"SELECT * FROM runs WHERE run_id IN ({', '.join('?' * len(chunk))})", chunk
            )
            names = [d[0] for d in cur.description]
            for rec in cur.fetchall():
                r = {k: _jsonable(v) for k, v in zip(names, rec, strict=True)}
                digests[str(r["run_id"])] = _digest(r)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    foreign.update(digests)
    return entries


class _Pending:
    """One caller's request in a combining queue, and its result once served."""

    __slots__ = ("arg", "done", "result")

    def __init__(self, arg: Any) -> None:
        self.arg = arg
        self.done = False
        self.result: Any = None


def _digest(row: Mapping[str, Any]) -> str:
    """A row's content, for 'unchanged since it was pulled'."""
    return hashlib.sha256(_dumps(dict(sorted(row.items()))).encode()).hexdigest()[:32]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str)


# Primary keys of the journaled tables (migrations 001 and 007), for a push before the first
# write open has read them from DuckDB.
_JOURNAL_PKS: dict[str, list[str]] = {
    "responses": ["request_hash"],
    "masks": ["prompt_id", "mask_hash", "teacher_key"],
    "api_calls": ["call_id"],
    "steps": ["run_id", "step"],
    "samples": ["run_id", "step", "prompt_id", "sample_idx"],
    "replays": ["run_id", "step", "prompt_id", "slot"],
}


def duplicate_calls(con: Any) -> tuple[int, float]:
    """(paid calls beyond the first answer of their request hash, what they cost): requests
    two machines paid for (a lease ran out, or PostgreSQL was away)."""
    row = con.execute(
        "SELECT coalesce(sum(n - 1), 0), coalesce(sum(extra), 0) FROM ("
        " SELECT count(*) AS n, sum(cost_usd) - arg_min(cost_usd, created_at) AS extra"
        " FROM api_calls WHERE status = 'ok' AND attempt >= 1 GROUP BY request_hash"
        " HAVING count(*) > 1)"
    ).fetchone()
    return int(row[0]), float(row[1])
