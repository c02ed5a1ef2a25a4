"""Paying for teacher answers: bounded concurrency, a budget, the ledger, durable commits.

Shared by ``teacher-fill`` and ``train``. The rule it enforces: **an answer is committed
before it is used.** Each result is appended to the warehouse journal (fsync'd) as soon as
it arrives, together with its ledger rows, and only then handed back to the caller.

Journal writes are **group-committed**: answers that arrive while an fsync is in flight wait
and go to disk together in the next one, so at high concurrency one fsync covers several
answers. Each caller still awaits the fsync that covers its own answer before it returns, so
nothing is used before it is durable.

Transient failures (timeouts, 5xx, connection errors) carry nothing paid for: their ledger
rows are kept in memory and written when the phase ends, so that a teacher that is simply
unreachable leaves the warehouse unchanged and gets one clear error instead.

**Write-ahead ledger.** Before a request leaves, a ``calls_in_flight`` row (its worst-case
cost, this process) is appended to the journal: one buffered append, no fsync, so a killed
process still leaves it. The answer's journal entries carry a ``calls_done`` marker that
removes it. A row left behind becomes a ledger row ``in_flight_at_crash``
(:meth:`~tacorl_offline.warehouse.Warehouse.close_in_flight`), so the ledger counts every
request the server may have billed, even after a kill.

**Spend over the bound.** A response billed more than its worst case (a server that ignores
``max_tokens``) is recorded on its ledger row (``error``, ``reserved_usd``); under a dollar cap
the run stops before its next call, with one line naming the model and the overrun.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tacorl_offline.errors import UserError
from tacorl_offline.pricing import FREE_BACKENDS, PriceTable, worst_case_input_tokens
from tacorl_offline.teachers.base import Teacher, TeacherRequest, TeacherResult
from tacorl_offline.warehouse import JournalWriteError, Warehouse

# How often answers another machine is paying for are looked for (team warehouse).
SHARED_POLL_S = 0.05


@dataclass
class Budget:
    """Stops *launching* calls before a cap could be passed.

    A dollar cap holds by reservation: before a call is sent, its worst-case cost (see
    :func:`worst_case_cost`) is reserved, and the call is only launched if spent + reserved +
    that worst case stays within the cap; near the cap, a call that does not fit waits for the
    calls in flight to settle, and launching stops only when it does not fit with none in
    flight. When an answer arrives, its reservation is swapped for the real cost. So
    ``spent_usd`` never exceeds ``max_cost_usd``, whatever the concurrency.
    """

    max_cost_usd: float | None = None
    max_calls: int | None = None
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    in_flight: int = 0  # calls admitted and not yet settled
    calls: int = 0  # paid calls started (requests, not retry attempts)
    exhausted: bool = False

    def admit(self, worst_usd: float = 0.0) -> str:
        """'go' (and the worst case is reserved) if one more call fits under every cap;
        'wait' if it would fit once calls in flight settle (their reservations are released);
        'stop' if it cannot fit."""
        if self.max_calls is not None and self.calls >= self.max_calls:
            self.exhausted = True
        if self.exhausted:
            return "stop"
        if (
            self.max_cost_usd is not None
            and self.spent_usd + self.reserved_usd + worst_usd > self.max_cost_usd
        ):
            if self.in_flight > 0:
                return "wait"
            self.exhausted = True
            return "stop"
        self.reserved_usd += worst_usd
        self.in_flight += 1
        return "go"

    def settle(self, reserved_usd: float, cost_usd: float) -> None:
        """Swap a call's reservation for what it really cost."""
        self.in_flight -= 1
        # Exactly 0 once nothing is in flight: float residue must not look like a reservation.
        self.reserved_usd = max(self.reserved_usd - reserved_usd, 0.0) if self.in_flight else 0.0
        self.spent_usd += cost_usd

    def reached(self) -> bool:
        """True once a cap is met or a call was refused for it."""
        return (
            self.exhausted
            or (self.max_calls is not None and self.calls >= self.max_calls)
            or (self.max_cost_usd is not None and self.spent_usd >= self.max_cost_usd)
        )

    def remaining_text(self) -> str:
        parts = []
        if self.max_calls is not None:
            parts.append(f"{self.calls}/{self.max_calls} calls")
        if self.max_cost_usd is not None:
            parts.append(f"${self.spent_usd:.4f}/${self.max_cost_usd:.4f}")
        return ", ".join(parts)


def check_budget_enforceable(budget: Budget, prices: PriceTable, backend: str, model: str) -> None:
    """A dollar cap needs a price: refuse it up front rather than spend unmetered."""
    if budget.max_cost_usd is not None and not prices.known(backend, model):
        raise UserError(
            f"--max-cost-usd / budget.max_cost_usd needs a price for model '{model}', which is not in "
            f"the price table; add prices.{model}: {{input: USD_PER_1M, output: USD_PER_1M}} to the "
            "config, or cap with --max-calls instead"
        )


@dataclass(frozen=True)
class Job:
    """A request to pay for, with what its stored answer must say about itself."""

    request: TeacherRequest
    kind: str  # 'original' | 'compressed'
    prompt_id: str
    mask_hash: str | None = None


@dataclass
class CallStats:
    requests: int = 0
    ok: int = 0
    permanent_failures: int = 0
    transient_failures: int = 0
    attempts: int = 0
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    teacher_seconds: float = 0.0
    budget_stopped: bool = False
    # Attempts that reached the server (everything but a refused connection).
    reached_attempts: int = 0
    # Answers another machine paid for, taken from the team warehouse instead of paying.
    shared_hits: int = 0
    # error kind -> requests that ended in it (permanent and transient failures).
    failures: dict[str, int] = field(default_factory=dict)

    def failure_text(self) -> str:
        """e.g. '3 of 10 requests failed (timeout: 2, http: 1)'; '' when none failed."""
        n = sum(self.failures.values())
        if not n:
            return ""
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(self.failures.items()))
        return f"{n} of {self.requests} requests failed ({kinds})"


_LEDGER_LOCK = threading.Lock()  # Caller.pending_ledger / pending_done, across threads


@dataclass
class Caller:
    warehouse: Warehouse
    teacher: Teacher
    teacher_key: str
    prices: PriceTable
    phase: str
    run_id: str
    budget: Budget = field(default_factory=Budget)
    pending_ledger: list[dict[str, Any]] = field(default_factory=list)
    stats: CallStats = field(default_factory=CallStats)
    unreachable_after: int = 8
    # Answers received but not journaled (disk full): kept here, never dropped silently.
    unsaved: list[list[tuple[str, dict[str, Any]]]] = field(default_factory=list)
    journal_error: str | None = None
    # The training step the calls belong to (written on their ledger rows); None outside train.
    step: int | None = None
    # Write-ahead rows of transient failures, removed with their ledger rows at the phase end;
    # both lists are guarded by _LEDGER_LOCK (a step's record may write them from a thread).
    pending_done: list[str] = field(default_factory=list)
    # Set when a response was billed over its reservation under a dollar cap: the run stops.
    overrun: str | None = None

    def __post_init__(self) -> None:
        check_budget_enforceable(self.budget, self.prices, self.teacher.backend, self.teacher.model)

    def cost_bound(self, job: Job) -> float:
        """What ``job`` could be billed at most if the server keeps to ``max_tokens`` ($0 for
        a free backend or an unpriced model)."""
        if self.teacher.backend in FREE_BACKENDS:
            return 0.0
        max_tokens = int(self.teacher.key_settings().get("max_tokens") or 0)
        return self.prices.cost(
            self.teacher.backend,
            self.teacher.model,
            worst_case_input_tokens(job.request.messages),
            max_tokens,
        )

    def worst_case_cost(self, job: Job) -> float:
        """What ``job`` could be billed at most: reserved before it is sent (under a dollar cap)."""
        return 0.0 if self.budget.max_cost_usd is None else self.cost_bound(job)

    def _in_flight_row(self, job: Job, call_id: str, bound: float) -> dict[str, Any]:
        return {
            "call_id": call_id,
            "run_id": self.run_id,
            "phase": self.phase,
            **({"step": self.step} if self.step is not None else {}),
            "request_hash": job.request.request_hash,
            "teacher_key": self.teacher_key,
            "backend": self.teacher.backend,
            "model": self.teacher.model,
            "reserved_usd": bound,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }

    def _check_overrun(self, job: Job, res: TeacherResult, cost: float) -> str | None:
        """The overrun text when ``res`` was billed more than its worst case, else None."""
        bound = self.cost_bound(job)
        if bound <= 0 or cost <= bound * (1 + 1e-9):
            return None
        max_tokens = self.teacher.key_settings().get("max_tokens")
        return (
            f"model {self.teacher.model} billed ${cost:.6f} for one request, "
            f"${cost - bound:.6f} over its reservation of ${bound:.6f} "
            f"({res.output_tokens} output tokens against max_tokens {max_tokens})"
        )

    # Group commit: one writer per kind of append (fsync'd answers; write-ahead rows).
    _synced: _GroupJournal | None = field(default=None, init=False, repr=False)
    _ahead: _GroupJournal | None = field(default=None, init=False, repr=False)

    @property
    def fsyncs(self) -> int:
        """Journal fsyncs made (the group commit counter)."""
        return self._synced.writes if self._synced is not None else 0

    async def _journal(self, entries: list[tuple[str, dict[str, Any]]], sync: bool = True) -> None:
        """Return once ``entries`` are on disk (``sync=False``: handed to the operating system);
        concurrent callers share one append (and one fsync)."""
        if sync:
            self._synced = self._synced or _GroupJournal(self.warehouse, sync=True)
            await self._synced.write(entries)
        else:
            self._ahead = self._ahead or _GroupJournal(self.warehouse, sync=False)
            await self._ahead.write(entries)

    @property
    def source(self) -> str:
        return "local" if self.teacher.backend in ("extractive", "hf") else "api"

    def _ledger_rows(
        self, res: TeacherResult, cost: float, bound: float | None = None, over: str | None = None
    ) -> list[dict[str, Any]]:
        attempts = res.attempts or []
        rows = []
        base = {
            "run_id": self.run_id,
            "phase": self.phase,
            "request_hash": res.request_hash,
            "teacher_key": self.teacher_key,
            "backend": self.teacher.backend,
            "model": self.teacher.model,
            **({"step": self.step} if self.step is not None else {}),
        }
        final_status = "ok" if res.ok else (res.error_kind or "error")
        if not attempts:
            attempts_view = [(final_status, res.latency_s, res.error)]
        else:
            attempts_view = [(a.status, a.latency_s, a.error) for a in attempts]
            # The last HTTP attempt can be 200 while the answer is unusable (empty, filtered).
            last = attempts_view[-1]
            attempts_view[-1] = (
                final_status if last[0] == "ok" else last[0],
                last[1],
                last[2] or res.error,
            )
        for i, (status, latency, err) in enumerate(attempts_view, start=1):
            last = i == len(attempts_view)
            billed = last and (res.ok or res.permanent)
            rows.append(
                {
                    **base,
                    "call_id": uuid.uuid4().hex,
                    "attempt": i,
                    "status": status,
                    "error": err,
                    "input_tokens": res.input_tokens if billed else 0,
                    "output_tokens": res.output_tokens if billed else 0,
                    "cost_usd": cost if billed else 0.0,
                    "saved_usd": 0.0,
                    "latency_s": latency,
                    **({"reserved_usd": bound} if last and bound is not None else {}),
                }
            )
        if over is not None and rows:
            rows[-1]["error"] = f"billed over its reservation: {over}"
        return rows

    def _response_row(self, job: Job, res: TeacherResult, cost: float) -> dict[str, Any]:
        return {
            "request_hash": res.request_hash,
            "teacher_key": self.teacher_key,
            "kind": job.kind,
            "prompt_id": job.prompt_id,
            "mask_hash": job.mask_hash,
            "backend": self.teacher.backend,
            "model": self.teacher.model,
            "messages": job.request.messages,
            "answer": res.answer,
            "ok": bool(res.ok),
            "error_kind": res.error_kind,
            "finish_reason": res.finish_reason,
            "input_tokens": res.input_tokens,
            "output_tokens": res.output_tokens,
            "cost_usd": cost,
            "usage_source": res.usage_source,
            "source": "batch" if res.via_batch else self.source,
            "run_id": self.run_id,
        }

    async def commit(
        self,
        job: Job,
        res: TeacherResult,
        reserved: float | None = None,
        call_id: str | None = None,
    ) -> bool:
        """Journal the answer and its ledger rows before anyone uses them.

        ``reserved``: the worst case :class:`Budget` reserved for this call, swapped for its
        real cost here (None: the caller did its own admission, e.g. the Batch API path).
        Returns False when the journal could not take them (disk full): they are kept in
        :attr:`unsaved` and saved by :meth:`save_unsaved` before the phase ends. ``call_id``:
        the call's write-ahead row, removed with the answer's entries.
        """
        cost = (
            self.prices.cost(
                self.teacher.backend,
                self.teacher.model,
                res.input_tokens,
                res.output_tokens,
                batch=res.via_batch,
            )
            if (res.ok or res.permanent)
            else 0.0
        )
        billed = res.ok or res.permanent
        over = self._check_overrun(job, res, cost) if billed and call_id is not None else None
        if over is not None and self.budget.max_cost_usd is not None and self.overrun is None:
            self.overrun = (
                f"{over}: the server does not keep to max_tokens, so the dollar cap cannot be "
                f"held (spent ${self.budget.spent_usd + cost:.4f} of "
                f"${self.budget.max_cost_usd:.4f}); the run stopped before its next call"
            )
        ledger = self._ledger_rows(
            res, cost, self.cost_bound(job) if call_id is not None else None, over
        )
        st = self.stats
        st.attempts += len(ledger)
        st.reached_attempts += sum(1 for r in ledger if r["status"] != "connection")
        st.teacher_seconds += res.latency_s
        if reserved is None:
            self.budget.spent_usd += cost
        else:
            self.budget.settle(reserved, cost)
        if not res.ok:
            kind = res.error_kind or "error"
            st.failures[kind] = st.failures.get(kind, 0) + 1
        if res.ok or res.permanent:
            entries = self._answer_entries(job, res, cost, ledger, call_id)
            saved = True
            try:
                await self._journal(entries)
            except JournalWriteError as e:
                self.unsaved.append(entries)
                self.journal_error = str(e)
                saved = False
            st.cost_usd += cost
            st.input_tokens += res.input_tokens
            st.output_tokens += res.output_tokens
            if res.ok:
                st.ok += 1
            else:
                st.permanent_failures += 1
            return saved
        with _LEDGER_LOCK:
            self.pending_ledger.extend(ledger)
            if call_id is not None:
                self.pending_done.append(call_id)
        st.transient_failures += 1
        return True

    def _answer_entries(
        self,
        job: Job,
        res: TeacherResult,
        cost: float,
        ledger: list[dict[str, Any]],
        call_id: str | None,
    ) -> list[tuple[str, dict[str, Any]]]:
        """What an answer journals: its response row, its mask row, its ledger rows and the
        marker that removes its write-ahead row."""
        entries: list[tuple[str, dict[str, Any]]] = [
            ("responses", self._response_row(job, res, cost))
        ]
        if job.mask_hash is not None:
            entries.append(
                (
                    "masks",
                    {
                        "prompt_id": job.prompt_id,
                        "mask_hash": job.mask_hash,
                        "teacher_key": self.teacher_key,
                        "request_hash": res.request_hash,
                    },
                )
            )
        entries += [("api_calls", r) for r in ledger]
        if call_id is not None:
            entries.append(("calls_done", {"call_id": call_id}))
        return entries

    def save_unsaved(self) -> None:
        """Save answers the journal refused, then report the journal error in one line.

        Always raises once the journal failed (a run whose journal is failing must stop), but
        only after every paid answer held in memory is saved: into DuckDB, else into the
        rescue file reserved beside the warehouse (loaded on the next open), else named by
        request hash in the message.
        """
        if self.journal_error is None:
            return
        if not self.unsaved:
            raise UserError(
                f"{self.journal_error}; the run stopped before sending more requests; "
                "free disk space and rerun to resume"
            )
        entries = [e for batch in self.unsaved for e in batch]
        n = len(self.unsaved)
        try:
            self.warehouse.write_entries(entries)
        except UserError as e:  # the disk may be just as full for DuckDB
            path, saved = self.warehouse.rescue(self.unsaved)
            lost = self.unsaved[saved:]
            self.unsaved = []
            if not lost:
                why = "" if "no space left" in str(e) else f" ({str(e)[:160]})"
                raise UserError(
                    f"{self.journal_error}; the run stopped; DuckDB could not take the {n} "
                    f"answer(s) received meanwhile either{why}, so they were saved to the "
                    f"rescue file {path}, which the next open loads: free disk space and rerun "
                    "to resume"
                ) from None
            hashes = ", ".join(
                r["request_hash"][:16] for group in lost for t, r in group if t == "responses"
            )
            raise UserError(
                f"{self.journal_error}; the run stopped; {saved} of the {n} answer(s) received "
                f"meanwhile were saved to the rescue file {path}; {len(lost)} could not be saved "
                f"anywhere (request hashes {hashes}): free disk space and rerun"
            ) from None
        self.unsaved.clear()
        raise UserError(
            f"{self.journal_error}; the run stopped and the {n} answer(s) received meanwhile were "
            "written to the warehouse directly; free disk space and rerun to resume"
        )

    def stream(
        self,
        *,
        concurrency: int,
        on_result: Callable[[Job, TeacherResult], None] | None = None,
    ) -> CallStream:
        """A :class:`CallStream`: jobs submitted as they are known, at most ``concurrency``
        in flight, collected by :meth:`CallStream.finish`."""
        return CallStream(self, concurrency, on_result)

    async def run(
        self,
        jobs: Sequence[Job],
        *,
        concurrency: int,
        on_result: Callable[[Job, TeacherResult], None] | None = None,
    ) -> dict[str, TeacherResult]:
        """Run jobs with at most ``concurrency`` in flight. Returns request_hash -> result for
        every job that was started (a budget stop leaves the rest unstarted).

        Stops launching at the first auth error (401/403: every other request would fail the
        same way) and raises it; a teacher that refuses every connection is one error, too.
        """
        stream = self.stream(concurrency=concurrency, on_result=on_result)
        stream.submit(jobs)
        return await stream.finish()

    async def _replicate(self, job: Job, row: dict[str, Any]) -> TeacherResult:
        """Another machine's answer (team warehouse): journaled here with a 'hit' ledger row,
        never paid again."""
        rh = job.request.request_hash
        entries: list[tuple[str, dict[str, Any]]] = [("responses", dict(row))]
        if job.mask_hash is not None:
            entries.append(
                (
                    "masks",
                    {
                        "prompt_id": job.prompt_id,
                        "mask_hash": job.mask_hash,
                        "teacher_key": self.teacher_key,
                        "request_hash": rh,
                    },
                )
            )
        entries += [
            ("api_calls", r)
            for r in hit_ledger_rows(
                run_id=self.run_id,
                phase=self.phase,
                teacher_key=self.teacher_key,
                backend=self.teacher.backend,
                model=self.teacher.model,
                hits=[(rh, float(row.get("cost_usd") or 0.0))],
                step=self.step,
            )
        ]
        try:
            await self._journal(entries)
        except JournalWriteError as e:
            self.unsaved.append(entries)
            self.journal_error = str(e)
        self.stats.shared_hits += 1
        ok = bool(row.get("ok"))
        return TeacherResult(
            request_hash=rh,
            ok=ok,
            answer=row.get("answer"),
            error_kind=row.get("error_kind"),
            permanent=not ok,
            model=self.teacher.model,
        )

    def take_pending_ledger(self) -> tuple[list[dict[str, Any]], list[str]]:
        """The buffered failure ledger rows and write-ahead ids, taken whole."""
        with _LEDGER_LOCK:
            rows, self.pending_ledger = self.pending_ledger, []
            done, self.pending_done = self.pending_done, []
        return rows, done

    def write_pending_ledger(self, con: Any) -> None:
        """Write the buffered transient-failure ledger rows (call inside a write connection)."""
        from tacorl_offline.warehouse import delete_done, insert_rows

        rows, done = self.take_pending_ledger()  # rows added meanwhile wait for the next write
        try:
            insert_rows(con, "api_calls", rows, on_conflict="ignore")
            delete_done(con, [{"call_id": c} for c in done])
        except BaseException:  # kept for the next write
            with _LEDGER_LOCK:
                self.pending_ledger[:0], self.pending_done[:0] = rows, done
            raise


class _GroupJournal:
    """Journal appends that callers arriving while one is being written share: they wait and
    go to disk together in the next one (group commit), each caller returning once its own
    entries are written (and fsync'd, with ``sync``)."""

    def __init__(self, warehouse: Warehouse, *, sync: bool) -> None:
        self.warehouse, self.sync = warehouse, sync
        self._waiting: list[tuple[list[tuple[str, dict[str, Any]]], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.writes = 0  # appends made

    async def write(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((entries, fut))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_waiting())
        await fut

    async def _write_waiting(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting, []
            try:
                await asyncio.to_thread(
                    self.warehouse.journal,
                    [e for entries, _ in group for e in entries],
                    sync=self.sync,
                )
            except BaseException as e:  # e.g. disk full: every entry of the group fails loudly
                for _, fut in group:
                    if not fut.done():
                        fut.set_exception(e)
                if not isinstance(e, Exception):
                    raise
                continue
            self.writes += 1
            for _, fut in group:
                if not fut.done():
                    fut.set_result(None)


class CallStream:
    """Jobs run as they are submitted, at most ``concurrency`` in flight (:meth:`Caller.stream`).

    A step submits each prompt's misses as soon as they are known and collects every result
    at the end (:meth:`finish`); ``teacher-fill`` submits all at once (:meth:`Caller.run`). A
    request submitted twice is sent once. Launching stops at the first auth error (401/403:
    every other request would fail the same way), at a journal failure, at an overrun under a
    dollar cap, and when the teacher refuses every connection; :meth:`finish` raises it.
    """

    def __init__(
        self,
        caller: Caller,
        concurrency: int,
        on_result: Callable[[Job, TeacherResult], None] | None = None,
    ) -> None:
        self.caller = caller
        self.concurrency = max(1, concurrency)
        self.on_result = on_result
        self.pending: collections.deque[Job] = collections.deque()
        self.seen: set[str] = set()  # request hashes submitted
        self.results: dict[str, TeacherResult] = {}
        self.stop: list[str] = []  # why launching stopped (not the budget)
        self.fatal: list[UserError] = []
        self.settled = asyncio.Condition()  # notified whenever a call's reservation is released
        self.connection_failures = 0
        self.shared = caller.warehouse.shared
        self.deferred: list[Job] = []  # claimed by another machine: its answer is awaited
        self._tasks: list[asyncio.Task[None]] = []

    def submit(self, jobs: Iterable[Job]) -> None:
        """Queue ``jobs`` (those not submitted before) and start workers for them."""
        new = []
        for j in jobs:
            if j.request.request_hash not in self.seen:  # never pay twice within one stream
                self.seen.add(j.request.request_hash)
                new.append(j)
        if self.shared is not None:  # machines walk the work in different orders: fewer collisions
            random.Random(self.shared.machine).shuffle(new)
        self.pending.extend(new)
        self._spawn()

    def _spawn(self) -> None:
        live = sum(1 for t in self._tasks if not t.done())
        for _ in range(min(self.concurrency - live, len(self.pending))):
            self._tasks.append(asyncio.create_task(self._worker()))

    def cancel(self) -> None:
        """Stop the workers (the step failed): their write-ahead rows stay in the journal."""
        for t in self._tasks:
            t.cancel()

    async def finish(self) -> dict[str, TeacherResult]:
        """Wait for every submitted job; request_hash -> result of each that was started (a
        budget stop leaves the rest unstarted and sets ``stats.budget_stopped``)."""
        c = self.caller
        while True:
            await asyncio.gather(*self._tasks)
            if not self.deferred or self.stop or self.fatal or c.budget.reached():
                self.pending.extend(self.deferred)  # left unanswered: counted as a budget stop
                break
            await asyncio.sleep(SHARED_POLL_S)
            self.pending.extend(self.deferred)
            self.deferred.clear()
            self._spawn()
        c.save_unsaved()
        if self.fatal:
            raise self.fatal[0]
        if self.pending:
            c.stats.budget_stopped = True
        return self.results

    async def _notify(self) -> None:
        async with self.settled:
            self.settled.notify_all()

    async def _release(self, reserved: float) -> None:
        """A call admitted but not made: its reservation goes back."""
        self.caller.budget.settle(reserved, 0.0)
        await self._notify()

    async def _worker(self) -> None:
        budget = self.caller.budget
        while not self.stop and self.pending:
            job = self.pending[0]
            reserved = self.caller.worst_case_cost(job)
            verdict = budget.admit(reserved)
            if verdict == "stop":
                return
            if verdict == "wait":  # near the cap: wait for a call in flight to settle
                async with self.settled:
                    await self.settled.wait()
                continue
            self.pending.popleft()
            if self.shared is not None and await self._taken_by_team(job, reserved):
                continue
            await self._call(job, reserved)

    async def _taken_by_team(self, job: Job, reserved: float) -> bool:
        """Team warehouse: claim the request, or take another machine's answer (or wait for
        it); True when this machine is not to pay for it."""
        assert self.shared is not None
        rh = job.request.request_hash
        verdict, row = await asyncio.to_thread(self.shared.acquire, rh)
        if verdict not in ("answer", "busy"):
            return False
        await self._release(reserved)
        if verdict == "busy":
            self.deferred.append(job)
        else:
            self.results[rh] = await self.caller._replicate(job, row)
        return True

    async def _call(self, job: Job, reserved: float) -> None:
        c = self.caller
        c.budget.calls += 1  # counted at admission: a worker admitted next sees it
        # The write-ahead row, written before the request leaves (a local teacher bills
        # nothing: none).
        call_id = None if c.teacher.backend in FREE_BACKENDS else uuid.uuid4().hex
        if call_id is not None and not await self._write_ahead(job, call_id, reserved):
            return
        c.stats.requests += 1
        t0 = time.perf_counter()
        try:
            res = await c.teacher.answer(job.request)
        except BaseException:
            await self._release(reserved)
            raise
        if not res.latency_s:
            res.latency_s = time.perf_counter() - t0
        try:
            saved = await c.commit(job, res, reserved, call_id)
        finally:
            await self._notify()
        if self.shared is not None and not (res.ok or res.permanent):
            await asyncio.to_thread(self.shared.release, job.request.request_hash)
        if not saved:
            self.stop.append("journal")
            return
        self.results[job.request.request_hash] = res
        self._check(res)
        if self.on_result is not None:
            self.on_result(job, res)

    async def _write_ahead(self, job: Job, call_id: str, reserved: float) -> bool:
        """The ``calls_in_flight`` row, handed to the operating system before the request
        leaves; False (launching stops) when the journal refuses it."""
        c = self.caller
        try:
            row = c._in_flight_row(job, call_id, c.cost_bound(job))
            await c._journal([("calls_in_flight", row)], sync=False)
        except BaseException as e:
            c.budget.calls -= 1  # never sent
            await self._release(reserved)
            if not isinstance(e, JournalWriteError):
                raise
            c.journal_error = c.journal_error or str(e)
            self.stop.append("journal")
            return False
        return True

    def _check(self, res: TeacherResult) -> None:
        """Stop launching after an overrun, an auth error, or a teacher that is unreachable."""
        c = self.caller
        if c.overrun is not None and "overrun" not in self.stop:
            self.stop.append("overrun")
            self.fatal.append(UserError(c.overrun))
        if res.error_kind == "auth":
            self.stop.append("auth")
            self.fatal.append(UserError(res.error or "teacher rejected the API key"))
        if res.error_kind == "connection" and c.stats.ok + c.stats.permanent_failures == 0:
            self.connection_failures += 1
            if self.connection_failures >= min(c.unreachable_after, len(self.seen)):
                self.stop.append("unreachable")
                self.fatal.append(
                    UserError(
                        f"teacher unreachable ({res.error or 'connection refused'}); "
                        "check teacher.base_url and that the server is running"
                    )
                )


def hit_ledger_rows(
    *,
    run_id: str,
    phase: str,
    teacher_key: str,
    backend: str,
    model: str,
    hits: Sequence[tuple[str, float]],
    step: int | None = None,
) -> list[dict[str, Any]]:
    """Ledger rows for cache hits: cost 0, saved = what the original call cost."""
    return [
        {
            **({"step": step} if step is not None else {}),
            "call_id": uuid.uuid4().hex,
            "run_id": run_id,
            "phase": phase,
            "request_hash": rh,
            "teacher_key": teacher_key,
            "backend": backend,
            "model": model,
            "attempt": 0,
            "status": "hit",
            "error": None,
            "input_tokens": 0,
            "output_tokens": 0,
            "cost_usd": 0.0,
            "saved_usd": float(saved or 0.0),
            "latency_s": 0.0,
        }
        for rh, saved in hits
    ]
