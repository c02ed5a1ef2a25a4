"""Phase one: ``teacher-fill`` answers every original prompt once under the current teacher key.

Idempotent and resumable by construction: the work list is "prompts of the split with no
stored answer under this teacher key" (or an imported one, when ``teacher.use_imported``),
computed from the warehouse at start. Answers are journaled as they arrive
(:mod:`tacorl_offline.calls`), and a flusher moves them into DuckDB about once a second (less
often while a flush is slow, so flushing never costs the fill more than a twentieth of its
time), so readers get the lock between flushes. A rerun pays 0; a budget stop resumes where it ended.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tacorl_offline.calls import Budget, Job
from tacorl_offline.config import Config
from tacorl_offline.datasets import settle
from tacorl_offline.errors import UserError
from tacorl_offline.hashing import request_hash
from tacorl_offline.runs import PhaseRun, Spend, phase_run
from tacorl_offline.teachers import render_messages, template_fields
from tacorl_offline.teachers.base import TeacherRequest, TeacherResult
from tacorl_offline.warehouse import Warehouse


@dataclass
class FillSummary:
    run_id: str
    dataset: str
    split: str
    teacher_key: str
    prompts: int = 0
    already: int = 0
    imported: int = 0
    todo: int = 0
    filled: int = 0
    permanent_failures: int = 0
    transient_failures: int = 0
    attempts: int = 0
    spend: Spend = field(default_factory=Spend)  # hits: prompts already answered ($0)
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    budget_stopped: bool = False
    failures: dict[str, int] = field(default_factory=dict)  # error kind -> requests
    failure_text: str = ""  # e.g. "3 of 10 requests failed (timeout: 3)"
    price_known: bool = True
    batches_submitted: list[str] = field(default_factory=list)
    batches_pending: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def answers_per_s(self) -> float:
        return self.filled / self.seconds if self.seconds > 0 else 0.0


def _plan(
    con, dataset: str, split: str, tkey: str, use_imported: bool
) -> tuple[list[tuple], list[tuple], int]:
    """(todo rows, hits (request_hash, cost), imported count) for the split."""
    rows = con.execute(
        """
        SELECT d.prompt_id, p.text, p.fields,
               (SELECT r.request_hash FROM responses r
                 WHERE r.prompt_id = d.prompt_id AND r.kind = 'original' AND r.teacher_key = ?
                 LIMIT 1) AS own,
               (SELECT r.cost_usd FROM responses r
                 WHERE r.prompt_id = d.prompt_id AND r.kind = 'original' AND r.teacher_key = ?
                 LIMIT 1) AS own_cost,
               EXISTS (SELECT 1 FROM responses r
                 WHERE r.prompt_id = d.prompt_id AND r.kind = 'original'
                   AND r.source = 'import' AND r.ok) AS has_import
        FROM dataset_items d JOIN prompts p USING (prompt_id)
        WHERE d.dataset = ? AND d.split = ?
        ORDER BY d.row_number
        """,
        [tkey, tkey, dataset, split],
    ).fetchall()
    todo, hits, imported = [], [], 0
    for pid, text, fields, own, own_cost, has_import in rows:
        if own is not None:
            hits.append((own, own_cost or 0.0))
        elif use_imported and has_import:
            imported += 1
        else:
            todo.append((pid, text, json.loads(fields) if fields else {}))
    return todo, hits, len(rows)


# A flush (a DuckDB open, the journal's replay, the checkpoint on close) costs the fill CPU
# whatever it carries: the next one waits at least this many times as long as the last took.
FLUSH_SPACING = 20


async def _flusher(warehouse: Warehouse, every_s: float, stop: asyncio.Event) -> None:
    """Move journaled answers into DuckDB about once a second, less often while flushes are
    slow (a loaded machine): flushing stays under about 1/FLUSH_SPACING of the fill's time.
    A failed flush (say, a reader holding the lock for long) is retried on the next tick:
    the answers stay in the journal."""
    wait = every_s
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=wait)
        except asyncio.TimeoutError:
            t0 = time.perf_counter()
            try:
                await asyncio.to_thread(warehouse.flush)
            except UserError:
                continue
            wait = max(every_s, FLUSH_SPACING * (time.perf_counter() - t0))


async def run_fill(
    cfg: Config,
    *,
    warehouse: Warehouse,
    split: str | None = None,
    concurrency: int | None = None,
    budget: Budget | None = None,
    on_progress: Callable[[FillSummary, int], None] | None = None,
    flush_every_s: float = 1.0,
) -> FillSummary:
    if split:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"split": split})})
    with warehouse.connect() as con:  # the dataset and split this fill is for
        cfg, note = settle(cfg, con, split_given=split is not None, where=str(warehouse.path))
    split = cfg.data.split
    async with phase_run(warehouse, cfg, "fill", budget=budget, forget_unpaid_failure=True) as run:
        summary = FillSummary(
            run_id=run.run_id, dataset=cfg.data.dataset, split=split, teacher_key=run.teacher_key
        )
        summary.notes += run.notes + ([note] if note else [])
        summary.price_known = not run.notes
        try:
            await _fill(run, summary, split, concurrency, on_progress, flush_every_s)
        finally:
            st = run.caller.stats
            summary.filled = st.ok
            summary.permanent_failures = st.permanent_failures
            summary.transient_failures = st.transient_failures
            summary.attempts = st.attempts
            summary.spend.calls = st.requests
            summary.spend.cost_usd = st.cost_usd
            summary.input_tokens, summary.output_tokens = st.input_tokens, st.output_tokens
            summary.budget_stopped = st.budget_stopped
            summary.failures = dict(st.failures)
            summary.failure_text = st.failure_text()
        if st.failures:  # a fill in which requests failed is a failure (exit 4), not 'finished'
            run.status, run.message = "failed", f"{summary.failure_text}; rerun to retry them"
        elif st.budget_stopped:
            run.stop_for_budget(f"budget reached ({run.budget.remaining_text()}); rerun to resume")
    return summary


async def _fill(
    run: PhaseRun,
    summary: FillSummary,
    split: str,
    concurrency: int | None,
    on_progress: Callable[[FillSummary, int], None] | None,
    flush_every_s: float,
) -> None:
    cfg, warehouse, tkey = run.cfg, run.warehouse, run.teacher_key
    # One transaction: the plan is read, every request rendered (a template error changes
    # nothing), then the run row and the hit ledger rows are written.
    with warehouse.transaction() as con:
        todo, hits, summary.prompts = _plan(
            con, cfg.data.dataset, split, tkey, cfg.teacher.use_imported
        )
        summary.imported = summary.prompts - len(todo) - len(hits)
        unused = sorted(
            {k for _, _, f in todo for k in f} - set(template_fields(cfg.teacher.template))
        )
        if unused:
            names = ", ".join(f"'{k}'" for k in unused)
            summary.notes.append(
                f"teacher.template does not use the data's field(s) {names}: the teacher never "
                f"sees them; add {{{unused[0]}}} to the template, or leave it out of data.fields"
            )
        jobs = []
        for pid, text, fields in todo:
            messages = render_messages(cfg.teacher, text, fields)
            rh = request_hash(tkey, messages)
            jobs.append(
                Job(TeacherRequest(rh, messages, text=text, fields=fields), "original", pid)
            )
        # An identical request stored under another prompt id is replayed, not paid.
        known = warehouse.lookup_responses(con, [j.request.request_hash for j in jobs])
        hits += [(rh, known[rh]["cost_usd"]) for rh in known]
        run.begin(con, split=split)
        run.record(con, hits=hits)
    jobs = [j for j in jobs if j.request.request_hash not in known]
    summary.already = len(hits)
    summary.todo = len(jobs)
    summary.spend.hits = len(hits)
    summary.spend.saved_usd = sum(c or 0.0 for _, c in hits)

    caller = run.caller
    t0 = time.perf_counter()

    def progress(job: Job, res: TeacherResult) -> None:
        st = caller.stats
        summary.filled, summary.spend.cost_usd = st.ok, st.cost_usd
        summary.seconds = time.perf_counter() - t0
        if on_progress:
            on_progress(summary, st.ok + st.permanent_failures + st.transient_failures)

    stop = asyncio.Event()
    flusher = asyncio.create_task(_flusher(warehouse, flush_every_s, stop))
    try:
        if cfg.teacher.backend == "openai_batch":
            await _batch(run, summary, jobs, progress)
        else:
            await caller.run(
                jobs, concurrency=concurrency or cfg.teacher.concurrency, on_result=progress
            )
    finally:
        stop.set()
        await flusher
        summary.seconds = time.perf_counter() - t0


async def _batch(
    run: PhaseRun,
    summary: FillSummary,
    jobs: list[Job],
    progress: Callable[[Job, TeacherResult], None],
) -> None:
    """The Batch API path (:mod:`tacorl_offline.batch_fill`); a run whose batch is still
    going when waiting stops ends as 'batch_pending'."""
    from tacorl_offline.batch_fill import run_batch_fill

    tcfg = run.cfg.teacher
    batch = await run_batch_fill(
        run.caller,
        run.teacher,  # type: ignore[arg-type]
        jobs,
        wait_s=tcfg.batch_wait_s,
        poll_s=tcfg.batch_poll_s,
        on_result=progress,
    )
    summary.batches_submitted = batch.submitted
    summary.batches_pending = batch.pending
    if batch.resumed:
        summary.notes.append(f"picked up batch(es) of an earlier fill: {', '.join(batch.resumed)}")
    for bad in batch.ended_badly:
        summary.notes.append(f"batch {bad}: its unanswered requests go into the next fill's batch")
    if batch.not_admitted:
        summary.notes.append(
            f"{batch.not_admitted} request(s) not submitted: the budget admits batch requests "
            "at their worst case (max_tokens of output)"
        )
    if batch.pending:
        run.status, run.message = (
            "batch_pending",
            f"batch(es) {', '.join(batch.pending)} still running; rerun teacher-fill to collect",
        )
