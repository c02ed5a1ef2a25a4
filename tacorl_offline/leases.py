"""Who may pay a teacher for a warehouse: leases with an owner and an expiry (pure logic).

Design decision: **one paying process per warehouse.** Two processes that pay the same
teacher for the same warehouse (two ``train`` runs, a ``teacher-fill`` beside a ``train``)
could each miss the other's answers still in flight and pay twice for one request. Rather than
coordinate request by request, the second process is refused in one line before it sends
anything. A paying phase takes a lease row (``writer_leases``) in the same warehouse, under
the warehouse's write lock, and renews it on every write open; it releases it when the phase
ends. Phases in one process share the process's right (they are one writer).

A lease held by another process stands while that process lives. Where liveness can be
checked (same host), a dead holder's lease is taken over at once; where it cannot (another
host on a shared disk), the lease stands until it expires. This module holds that decision
and nothing else; the DuckDB reads and writes are in :mod:`tacorl_offline.lease_store`.

In a team warehouse (:mod:`tacorl_offline.shared_store`) the two rules stack: this lease
lives in each machine's local file (it is never replicated), so two processes on one local
file are still one payer and the second is refused in one line; processes on separate local
files are separate machines to the team warehouse and cooperate request by request through
its claim rows, whose expiry PostgreSQL's clock decides (``tacorl_claims``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

# A holder that stops renewing (its host gone, its disk unplugged) frees the warehouse after
# this long; renewals happen on every write open (a fill flushes every second, a train step
# writes once a step).
LEASE_TTL_S = 15 * 60.0


@dataclass(frozen=True)
class Owner:
    """A process that wants to pay: its id on its host."""

    pid: int
    host: str


@dataclass(frozen=True)
class Lease:
    """A lease row: who holds it, for which run and phase, and until when (unix seconds)."""

    run_id: str
    phase: str
    owner: Owner
    expires_at: float


def expiry(now: float, ttl_s: float = LEASE_TTL_S) -> float:
    """The expiry a lease taken or renewed at ``now`` gets."""
    return now + ttl_s


def stands(lease: Lease, me: Owner, now: float, alive: Callable[[Owner], bool | None]) -> bool:
    """Whether ``lease`` still keeps ``me`` from paying.

    ``alive(owner)`` is True or False where the owner's liveness can be checked (same host),
    None where it cannot. A lease of ``me`` never stands against me.
    """
    if lease.owner == me:
        return False
    known = alive(lease.owner)
    if known is not None:
        return known
    return lease.expires_at > now


def sort_out(
    leases: Iterable[Lease], me: Owner, now: float, alive: Callable[[Owner], bool | None]
) -> tuple[list[Lease], list[Lease]]:
    """(leases that stand against ``me``, stale leases of others to remove)."""
    standing, stale = [], []
    for lease in leases:
        if stands(lease, me, now, alive):
            standing.append(lease)
        elif lease.owner != me:
            stale.append(lease)
    return standing, stale


def refusal(lease: Lease, where: str, now: float) -> str:
    """The one line that refuses a second paying process."""
    o = lease.owner
    left = max(0.0, lease.expires_at - now)
    return (
        f"warehouse {where} is in use by {lease.phase} run {lease.run_id} (PID {o.pid} on "
        f"{o.host}, lease renewed until {left:.0f}s from now): one process at a time may pay the "
        "teacher for a warehouse, so nothing is paid twice; wait for it to finish, or pass "
        "another --warehouse"
    )
