"""The paying lease's rows in a DuckDB warehouse (``writer_leases``).

Design decision: **one paying process per warehouse** (the rule, and why, is
:mod:`tacorl_offline.leases`, pure logic). This module is its DuckDB side: a paying phase
takes a row under the warehouse's write lock, renews the rows it holds on its instance's
write opens, and deletes its row when the phase ends. A second process is refused with
:class:`WarehouseBusy` naming the holder before it sends anything.
"""

from __future__ import annotations

import os
import socket
import time

import duckdb

from tacorl_offline import leases
from tacorl_offline.batch_sql import placeholders
from tacorl_offline.errors import UserError
from tacorl_offline.process_rows import pid_alive


class WarehouseBusy(UserError):
    """Another process holds the warehouse's paying lease."""


def _liveness(owner: leases.Owner) -> bool | None:
    """Whether a lease's owner lives: known on this host, unknown elsewhere."""
    return pid_alive(owner.pid) if owner.host == socket.gethostname() else None


class PayingLeases:
    """The leases one warehouse instance holds (run ids), and their rows."""

    def __init__(self, warehouse_name: str) -> None:
        self.warehouse_name = warehouse_name  # for the refusal's message
        self.held: set[str] = set()
        self._renewed_at = 0.0

    def take(self, con: duckdb.DuckDBPyConnection, run_id: str, phase: str) -> None:
        """Take this process's paying lease for ``run_id``, or raise :class:`WarehouseBusy`
        naming the process that holds one."""
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
            raise WarehouseBusy(leases.refusal(standing[0], self.warehouse_name, now))
        for lease in stale:
            con.execute("DELETE FROM writer_leases WHERE run_id = ?", [lease.run_id])
        con.execute(
            "INSERT OR REPLACE INTO writer_leases (run_id, phase, pid, host, expires_at)"
            " VALUES (?, ?, ?, ?, ?)",
            [run_id, phase, me.pid, me.host, leases.expiry(now)],
        )
        self.held.add(run_id)
        self._renewed_at = now

    def release(self, con: duckdb.DuckDBPyConnection, run_id: str) -> None:
        con.execute("DELETE FROM writer_leases WHERE run_id = ?", [run_id])
        self.held.discard(run_id)

    def renew(self, con: duckdb.DuckDBPyConnection) -> None:
        """Push the held leases' expiry forward (at most every tenth of the TTL)."""
        now = time.time()
        if not self.held or now - self._renewed_at < leases.LEASE_TTL_S / 10:
            return
        ids = sorted(self.held)
        con.execute(
            f"UPDATE writer_leases SET expires_at = ? WHERE run_id IN ({placeholders(len(ids))})",
            [leases.expiry(now), *ids],
        )
        self._renewed_at = now
