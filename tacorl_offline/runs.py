"""One run lifecycle for every phase that may pay a teacher (teacher-fill, train, evaluate).

Design decision: the run row, the teacher and everything paid for belong to one context
manager, :func:`phase_run`, so each phase writes them the same way:

- on entry it resolves the teacher key, the prices and the budget, builds the teacher and the
  :class:`~tacorl_offline.calls.Caller` (the one place that bounds concurrency and spends the
  budget);
- the phase writes the run row with :meth:`PhaseRun.begin` inside its own transaction (so
  that, e.g., a template error before it changes nothing), and records cache hits and newly
  seen masks with :meth:`PhaseRun.record`;
- on exit it closes the teacher, writes the buffered transient-failure ledger rows and
  finishes the run row with a status derived from how the block exited: ``finished``,
  ``budget`` (the phase called :meth:`PhaseRun.stop_for_budget`), ``failed`` (a
  :class:`~tacorl_offline.errors.UserError`: its message; any other error: its type) or
  ``interrupted`` (Ctrl-C, cancellation).

What a phase spent is one :class:`Spend` record (paid calls, cache hits, dollars spent and
saved), summed the same way everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from tacorl_offline.calls import Budget, Caller, check_budget_enforceable, hit_ledger_rows
from tacorl_offline.config import Config, TeacherConfig
from tacorl_offline.errors import UserError
from tacorl_offline.hashing import teacher_key
from tacorl_offline.pricing import FREE_BACKENDS, PriceTable, prices_from_config
from tacorl_offline.teachers import Teacher, build_teacher
from tacorl_offline.warehouse import Warehouse, insert_rows, run_owner


@dataclass
class Spend:
    """What a phase, a step or a replay spent: the one record of calls, hits and dollars."""

    calls: int = 0  # paid teacher requests
    hits: int = 0  # answers replayed from the warehouse ($0)
    cost_usd: float = 0.0
    saved_usd: float = 0.0  # what the replayed answers cost when first paid for

    def add(self, other: Spend) -> None:
        self.calls += other.calls
        self.hits += other.hits
        self.cost_usd += other.cost_usd
        self.saved_usd += other.saved_usd

    @property
    def hit_rate(self) -> float:
        seen = self.calls + self.hits
        return self.hits / seen if seen else 0.0


def key_of(teacher: TeacherConfig) -> str:
    """The teacher key answers are stored under (credentials and endpoints never enter)."""
    return teacher_key(teacher.key_settings())


@dataclass
class PhaseRun:
    """A phase's run: its id, teacher, budget and caller, and what it has recorded."""

    warehouse: Warehouse
    cfg: Config
    phase: str
    run_id: str
    teacher_key: str
    prices: PriceTable
    teacher: Teacher
    budget: Budget
    caller: Caller
    status: str = "finished"
    message: str | None = None
    begun: bool = False
    notes: list[str] = field(default_factory=list)

    def begin(
        self,
        con: Any,
        *,
        split: str | None = None,
        resume: bool = False,
        world_size: int | None = None,
        config: Mapping[str, Any] | None = None,
        message: str | None = None,
    ) -> None:
        """Write the run row (or mark a resumed run running again) inside ``con``'s transaction."""
        if resume:
            owner = run_owner()
            con.execute(
                "UPDATE runs SET status = 'running', finished_at = NULL, message = NULL,"
                " pid = ?, host = ? WHERE run_id = ?",
                [owner["pid"], owner["host"], self.run_id],
            )
        else:
            row: dict[str, Any] = {
                "run_id": self.run_id,
                "kind": self.phase,
                "dataset": self.cfg.data.dataset,
                "split": split or self.cfg.data.split,
                "teacher_key": self.teacher_key,
                "config": dict(config) if config is not None else self.cfg.stored(),
            }
            if world_size is not None:
                row["world_size"] = world_size
            if message is not None:
                row["message"] = message
            Warehouse.start_run(con, row)
        self.begun = True
        if message is not None:
            self.message = message

    def record(
        self,
        con: Any,
        *,
        hits: Sequence[tuple[str, float]] = (),
        masks: Sequence[Mapping[str, Any]] = (),
        step: int | None = None,
    ) -> None:
        """Ledger rows for cache hits (cost 0, saved = the original cost), newly seen masks,
        and the transient-failure ledger rows buffered so far, inside ``con``'s transaction."""
        insert_rows(con, "masks", list(masks), on_conflict="ignore")
        insert_rows(
            con,
            "api_calls",
            hit_ledger_rows(
                run_id=self.run_id,
                phase=self.phase,
                teacher_key=self.teacher_key,
                backend=self.teacher.backend,
                model=self.teacher.model,
                hits=hits,
                step=step,
            ),
        )
        self.caller.write_pending_ledger(con)

    def record_entries(
        self,
        *,
        hits: Sequence[tuple[str, float]] = (),
        masks: Sequence[Mapping[str, Any]] = (),
        step: int | None = None,
    ) -> list[tuple[str, dict[str, Any]]]:
        """What :meth:`record` writes, as journal entries (for when a reader holds the lock)."""
        rows = hit_ledger_rows(
            run_id=self.run_id,
            phase=self.phase,
            teacher_key=self.teacher_key,
            backend=self.teacher.backend,
            model=self.teacher.model,
            hits=hits,
            step=step,
        )
        entries = [("masks", dict(m)) for m in masks]
        ledger, done = self.caller.take_pending_ledger()
        entries += [("api_calls", r) for r in rows + ledger]
        entries += [("calls_done", {"call_id": c}) for c in done]
        return entries

    def stop_for_budget(self, message: str) -> None:
        """The phase stopped because the budget was reached: the run ends with 'budget'."""
        self.status, self.message = "budget", message

    @property
    def paid_anything(self) -> bool:
        st = self.caller.stats
        return st.ok + st.permanent_failures > 0

    @property
    def reached_server(self) -> bool:
        """Did any attempt reach the server (answered or not)? Such attempts stay in the ledger."""
        return self.caller.stats.reached_attempts > 0


def exit_status(e: BaseException) -> tuple[str, str]:
    if isinstance(e, UserError):
        return "failed", str(e)
    if isinstance(e, KeyboardInterrupt | asyncio.CancelledError):
        return "interrupted", type(e).__name__
    return "failed", type(e).__name__


@asynccontextmanager
async def phase_run(
    warehouse: Warehouse,
    cfg: Config,
    phase: str,
    *,
    run_id: str | None = None,
    budget: Budget | None = None,
    forget_unpaid_failure: bool = False,
) -> AsyncIterator[PhaseRun]:
    """Own a phase's run from teacher to final status (see the module docstring).

    ``forget_unpaid_failure``: a run that failed before any attempt reached the server (say,
    an unreachable teacher) is removed with its ledger rows, leaving the warehouse as it was.
    An attempt that reached the server is a ledger row, whatever happened to it.
    """
    prices = prices_from_config(cfg)
    budget = budget or Budget(cfg.budget.max_cost_usd, cfg.budget.max_calls)
    check_budget_enforceable(budget, prices, cfg.teacher.backend, cfg.teacher.model)
    teacher = build_teacher(cfg.teacher)
    tkey = key_of(cfg.teacher)
    run_id = run_id or f"{phase}-{uuid.uuid4().hex[:12]}"
    run = PhaseRun(
        warehouse=warehouse,
        cfg=cfg,
        phase=phase,
        run_id=run_id,
        teacher_key=tkey,
        prices=prices,
        teacher=teacher,
        budget=budget,
        caller=Caller(warehouse, teacher, tkey, prices, phase, run_id, budget),
    )
    if not prices.known(teacher.backend, teacher.model):
        run.notes.append(
            f"no price known for model '{teacher.model}': its cost is reported as $0; add prices.{teacher.model} to the config"
        )
    pays = teacher.backend not in FREE_BACKENDS
    body_failed = False
    try:
        if pays:  # before anything is sent: one paying process, room for a rescue file
            with warehouse.transaction() as con:
                warehouse.take_lease(con, run_id, phase)
            warehouse.reserve_rescue()
        yield run
    except BaseException as e:
        body_failed = True
        run.status, run.message = exit_status(e)
        raise
    finally:
        try:
            _finish(run, forget_unpaid_failure, pays, body_failed)
        finally:
            await _close_teacher(teacher)


def finish_run_surely(warehouse: Warehouse, run_id: str, status: str, message: str | None) -> None:
    """Finish a run row that has no teacher (sft); a second Ctrl-C during the write is
    absorbed and the write redone, so the row never stays 'running'."""
    interrupted: BaseException | None = None
    for _ in range(3):
        try:
            with warehouse.transaction() as con:
                Warehouse.finish_run(con, run_id, status, message)
            break
        except KeyboardInterrupt as e:
            interrupted = e
            status, message = "interrupted", "KeyboardInterrupt"
    if interrupted is not None:
        raise interrupted


def _finish(run: PhaseRun, forget_unpaid_failure: bool, pays: bool, body_failed: bool) -> None:
    """The run's last write: its status, its buffered ledger rows, its calls still in flight,
    its lease. Written before anything is awaited, so a Ctrl-C (which cancels the task at its
    next await) cannot skip it; a second Ctrl-C during it is absorbed and the write redone."""
    interrupted: BaseException | None = None
    for _ in range(3):
        try:
            _finish_once(run, forget_unpaid_failure)
            break
        except KeyboardInterrupt as e:
            interrupted = e
            run.status, run.message = "interrupted", "KeyboardInterrupt"
        except UserError:
            # Say, a full disk: a phase that is failing already keeps its own one-line error;
            # the run row is marked interrupted at the next write open (its process is gone).
            if body_failed:
                break
            raise
    if pays:
        run.warehouse.release_rescue()  # kept when it holds answers
    if interrupted is not None:
        raise interrupted


def _finish_once(run: PhaseRun, forget_unpaid_failure: bool) -> None:
    warehouse = run.warehouse
    leased = warehouse.holds_lease(run.run_id)
    if not run.begun and not leased:
        return
    # The run's last write waits longer than a step's: a long reader delays it, never
    # loses it (a step's own rows go to the journal meanwhile, see the trainer).
    with warehouse.transaction(lock_timeout_s=warehouse.lock_timeout_s * 10) as con:
        if leased:
            warehouse.release_lease(con, run.run_id)
        if not run.begun:
            return
        if forget_unpaid_failure and run.status == "failed" and not run.reached_server:
            con.execute("DELETE FROM api_calls WHERE run_id = ?", [run.run_id])
            con.execute("DELETE FROM calls_in_flight WHERE run_id = ?", [run.run_id])
            con.execute("DELETE FROM runs WHERE run_id = ?", [run.run_id])
        else:
            run.caller.write_pending_ledger(con)
            Warehouse.close_in_flight(
                con,
                run_id=run.run_id,
                why=f"the run ended ({run.status}) with the request in flight; the server may "
                "have billed it",
            )
            Warehouse.finish_run(con, run.run_id, run.status, run.message)


async def _close_teacher(teacher: Teacher) -> None:
    """Close the teacher's client; a Ctrl-C landing here has nothing left to undo."""
    with contextlib.suppress(Exception):  # the run is recorded: a failing close hides nothing
        await teacher.aclose()
