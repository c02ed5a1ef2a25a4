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
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tacorl_offline.errors import UserError
from tacorl_offline.pricing import PriceTable
from tacorl_offline.teachers.base import Teacher, TeacherRequest, TeacherResult
from tacorl_offline.warehouse import Warehouse


@dataclass
class Budget:
    """Stops *launching* calls once the cap is reached; calls in flight still finish."""

    max_cost_usd: float | None = None
    max_calls: int | None = None
    spent_usd: float = 0.0
    calls: int = 0  # paid calls started (requests, not retry attempts)
    exhausted: bool = False

    def can_start(self, in_flight: int) -> bool:
        if self.max_calls is not None and self.calls >= self.max_calls:
            self.exhausted = True
        if self.max_cost_usd is not None:
            done = max(self.calls - in_flight, 0)
            per_call = self.spent_usd / done if done else 0.0
            if self.spent_usd + in_flight * per_call >= self.max_cost_usd and (
                self.spent_usd > 0 or self.max_cost_usd == 0
            ):
                self.exhausted = True
        return not self.exhausted

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
    # Group commit: entries waiting for the next fsync, each with the future its caller awaits.
    _waiting: list[tuple[list[tuple[str, dict[str, Any]]], asyncio.Future[None]]] = field(
        default_factory=list, init=False, repr=False
    )
    _flusher: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    fsyncs: int = field(default=0, init=False)  # journal fsyncs made (group commit counter)

    async def _journal(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        """Return once ``entries`` are on disk; concurrent callers share one fsync."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((entries, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_waiting())
        await fut

    async def _flush_waiting(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting, []
            try:
                await asyncio.to_thread(
                    self.warehouse.journal, [e for entries, _ in group for e in entries]
                )
            except BaseException as e:  # e.g. disk full: every answer of the group fails loudly
                for _, fut in group:
                    if not fut.done():
                        fut.set_exception(e)
                if not isinstance(e, Exception):
                    raise
                continue
            self.fsyncs += 1
            for _, fut in group:
                if not fut.done():
                    fut.set_result(None)

    @property
    def source(self) -> str:
        return "local" if self.teacher.backend in ("extractive", "hf") else "api"

    def _ledger_rows(self, res: TeacherResult, cost: float) -> list[dict[str, Any]]:
        attempts = res.attempts or []
        rows = []
        base = {
            "run_id": self.run_id,
            "phase": self.phase,
            "request_hash": res.request_hash,
            "teacher_key": self.teacher_key,
            "backend": self.teacher.backend,
            "model": self.teacher.model,
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
                }
            )
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

    async def commit(self, job: Job, res: TeacherResult) -> None:
        """Journal the answer and its ledger rows before anyone uses them."""
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
        ledger = self._ledger_rows(res, cost)
        st = self.stats
        st.attempts += len(ledger)
        st.teacher_seconds += res.latency_s
        if res.ok or res.permanent:
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
            await self._journal(entries)
            st.cost_usd += cost
            st.input_tokens += res.input_tokens
            st.output_tokens += res.output_tokens
            self.budget.spent_usd += cost
            if res.ok:
                st.ok += 1
            else:
                st.permanent_failures += 1
        else:
            self.pending_ledger.extend(ledger)
            st.transient_failures += 1

    async def run(
        self,
        jobs: Sequence[Job],
        *,
        concurrency: int,
        on_result: Callable[[Job, TeacherResult], None] | None = None,
    ) -> dict[str, TeacherResult]:
        """Run jobs with at most ``concurrency`` in flight. Returns request_hash -> result for
        every job that was started (a budget stop leaves the rest unstarted)."""
        queue: asyncio.Queue[Job] = asyncio.Queue()
        seen: set[str] = set()
        for j in jobs:
            if j.request.request_hash not in seen:  # never pay twice within one batch either
                seen.add(j.request.request_hash)
                queue.put_nowait(j)
        results: dict[str, TeacherResult] = {}
        in_flight = 0
        connection_failures = 0
        unreachable: list[str] = []

        async def worker() -> None:
            nonlocal in_flight, connection_failures
            while True:
                if unreachable or not self.budget.can_start(in_flight):
                    return
                try:
                    job = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                self.budget.calls += 1
                self.stats.requests += 1
                in_flight += 1
                t0 = time.perf_counter()
                try:
                    res = await self.teacher.answer(job.request)
                finally:
                    in_flight -= 1
                if not res.latency_s:
                    res.latency_s = time.perf_counter() - t0
                await self.commit(job, res)
                results[job.request.request_hash] = res
                if (
                    res.error_kind == "connection"
                    and self.stats.ok + self.stats.permanent_failures == 0
                ):
                    connection_failures += 1
                    if connection_failures >= min(self.unreachable_after, len(seen)):
                        unreachable.append(res.error or "connection refused")
                if on_result is not None:
                    on_result(job, res)

        n = max(1, min(concurrency, queue.qsize()))
        await asyncio.gather(*(worker() for _ in range(n)))
        if unreachable:
            raise UserError(
                f"teacher unreachable ({unreachable[0]}); check teacher.base_url and that the server is running"
            )
        if not queue.empty():
            self.stats.budget_stopped = True
        return results

    def write_pending_ledger(self, con: Any) -> None:
        """Write the buffered transient-failure ledger rows (call inside a write connection)."""
        from tacorl_offline.warehouse import insert_rows

        insert_rows(con, "api_calls", self.pending_ledger, on_conflict="ignore")
        self.pending_ledger.clear()


def hit_ledger_rows(
    *,
    run_id: str,
    phase: str,
    teacher_key: str,
    backend: str,
    model: str,
    hits: Sequence[tuple[str, float]],
) -> list[dict[str, Any]]:
    """Ledger rows for cache hits: cost 0, saved = what the original call cost."""
    return [
        {
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
