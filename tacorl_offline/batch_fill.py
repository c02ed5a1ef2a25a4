"""teacher-fill through the OpenAI Batch API: submit once, store the batch id, collect later.

Design decisions:
- **Write-ahead.** The submission row and its requests are committed (table ``batches`` and
  ``batch_requests``) after the input file is uploaded and *before* the batch is created; the
  batch id is stored the moment the API returns it. A fill killed anywhere after that finds
  its batch again on the next run: by id, or, if it died inside the create call, by its input
  file id in the API's batch list. Nothing is submitted, or paid, twice.
- **Collected like any answer.** Results go through :meth:`Caller.commit`: journaled before
  use, ledgered per request, priced with the model's batch discount, ``source='batch'``. An
  answer is ledgered under the fill run that collected it.
- **A budget is never exceeded.** A batch's price is known only once it has run, so requests
  are admitted on a worst-case estimate (prompt tokens counted locally, ``max_tokens`` of
  output, at the batch price), with the still-open batches of earlier runs reserved first.
- **One submission per run.** Requests that a failed or expired batch left unanswered are
  submitted again by the next fill, never in a loop inside one.
- **Waiting is bounded** by ``teacher.batch_wait_s``; a fill that stops waiting reports its
  pending batches (the CLI exits 4), and a rerun collects them.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tacorl_offline.calls import Caller, Job
from tacorl_offline.teachers.base import TeacherRequest, TeacherResult
from tacorl_offline.teachers.openai_batch import TERMINAL, BatchState, OpenAIBatchTeacher
from tacorl_offline.warehouse import Warehouse, insert_rows


@dataclass
class BatchOutcome:
    submitted: list[str] = field(default_factory=list)  # batch ids created by this run
    resumed: list[str] = field(default_factory=list)  # batch ids of earlier runs picked up
    collected: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # still running when waiting stopped
    ended_badly: list[str] = field(default_factory=list)  # "batch_x: expired (...)"
    not_admitted: int = 0  # requests left out by the budget


@dataclass
class _Submission:
    submission_id: str
    input_file_id: str
    batch_id: str | None
    jobs: list[Job]
    state: BatchState | None = None


def worst_case_usd(caller: Caller, teacher: OpenAIBatchTeacher, request: TeacherRequest) -> float:
    """The most one request can cost through the batch: all of ``max_tokens`` spent."""
    n_in, n_out = teacher.worst_case_tokens(request)
    return caller.prices.cost(teacher.backend, teacher.model, n_in, n_out, batch=True)


def _open_submissions(warehouse: Warehouse, teacher_key: str) -> list[_Submission]:
    terminal = ", ".join(f"'{s}'" for s in sorted(TERMINAL | {"collected"}))
    with warehouse.connect() as con:
        subs = con.execute(
            "SELECT submission_id, input_file_id, batch_id FROM batches"
            f" WHERE teacher_key = ? AND status NOT IN ({terminal}) ORDER BY created_at",
            [teacher_key],
        ).fetchall()
        out = []
        for sid, fid, bid in subs:
            reqs = con.execute(
                "SELECT request_hash, kind, prompt_id, messages FROM batch_requests"
                " WHERE submission_id = ? ORDER BY request_hash",
                [sid],
            ).fetchall()
            jobs = [
                Job(TeacherRequest(rh, json.loads(msgs)), kind, pid) for rh, kind, pid, msgs in reqs
            ]
            out.append(_Submission(sid, fid, bid, jobs))
    return out


def _store_state(warehouse: Warehouse, sub: _Submission, status: str | None = None) -> None:
    st = sub.state
    with warehouse.transaction() as con:
        con.execute(
            "UPDATE batches SET batch_id = ?, status = ?, output_file_id = ?, error_file_id = ?,"
            " message = ?, collected_at = CASE WHEN ? = 'collected' OR ? IN"
            " ('failed', 'expired', 'cancelled') THEN current_timestamp ELSE collected_at END"
            " WHERE submission_id = ?",
            [
                sub.batch_id,
                status or (st.status if st else "submitting"),
                st.output_file_id if st else None,
                st.error_file_id if st else None,
                st.message if st else None,
                status,
                status,
                sub.submission_id,
            ],
        )


async def _submit(
    teacher: OpenAIBatchTeacher,
    warehouse: Warehouse,
    jobs: Sequence[Job],
    *,
    run_id: str,
    teacher_key: str,
) -> _Submission:
    sid = "sub-" + uuid.uuid4().hex[:16]
    file_id = await teacher.upload(teacher.jsonl(j.request for j in jobs))
    with warehouse.transaction() as con:
        insert_rows(
            con,
            "batches",
            [
                {
                    "submission_id": sid,
                    "input_file_id": file_id,
                    "run_id": run_id,
                    "teacher_key": teacher_key,
                    "model": teacher.model,
                    "status": "submitting",
                    "n_requests": len(jobs),
                }
            ],
        )
        insert_rows(
            con,
            "batch_requests",
            [
                {
                    "submission_id": sid,
                    "request_hash": j.request.request_hash,
                    "kind": j.kind,
                    "prompt_id": j.prompt_id,
                    "messages": j.request.messages,
                }
                for j in jobs
            ],
        )
    sub = _Submission(sid, file_id, None, list(jobs))
    sub.state = await teacher.create(file_id, {"tacorl_submission": sid, "tacorl_run": run_id})
    sub.batch_id = sub.state.batch_id
    _store_state(warehouse, sub)
    return sub


def _admit(
    caller: Caller,
    teacher: OpenAIBatchTeacher,
    jobs: Sequence[Job],
    open_subs: Sequence[_Submission],
    outcome: BatchOutcome,
) -> list[Job]:
    """The jobs the budget admits. Earlier runs' open batches are reserved first (they will
    be collected here); ``outcome.not_admitted`` counts the rest."""
    budget = caller.budget
    covered = {j.request.request_hash for s in open_subs for j in s.jobs}
    reserved = sum(worst_case_usd(caller, teacher, j.request) for s in open_subs for j in s.jobs)
    admitted: list[Job] = []
    for j in jobs:
        if j.request.request_hash in covered:
            continue
        est = worst_case_usd(caller, teacher, j.request)
        if budget.max_calls is not None and budget.calls + len(admitted) >= budget.max_calls:
            break
        if budget.max_cost_usd is not None and reserved + est > budget.max_cost_usd:
            break
        reserved += est
        admitted.append(j)
    outcome.not_admitted = sum(1 for j in jobs if j.request.request_hash not in covered) - len(
        admitted
    )
    return admitted


async def run_batch_fill(
    caller: Caller,
    teacher: OpenAIBatchTeacher,
    jobs: Sequence[Job],
    *,
    wait_s: float,
    poll_s: float,
    on_result: Callable[[Job, TeacherResult], None] | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    outcome: BatchOutcome | None = None,
) -> BatchOutcome:
    """Collect open batches of this teacher key, submit one for the rest, wait, collect.
    ``outcome`` is filled in place, so a caller that catches an error still sees what was
    submitted."""
    warehouse, budget = caller.warehouse, caller.budget
    outcome = outcome if outcome is not None else BatchOutcome()
    open_subs = _open_submissions(warehouse, caller.teacher_key)
    for sub in open_subs:
        if sub.batch_id is None:  # died inside the create call: did it get through?
            sub.state = await teacher.find_by_input_file(sub.input_file_id)
            if sub.state is None:
                sub.state = await teacher.create(
                    sub.input_file_id, {"tacorl_submission": sub.submission_id}
                )
            sub.batch_id = sub.state.batch_id
            _store_state(warehouse, sub)
        outcome.resumed.append(str(sub.batch_id))

    admitted = _admit(caller, teacher, jobs, open_subs, outcome)
    if outcome.not_admitted:
        caller.stats.budget_stopped = True
        budget.exhausted = True
    if admitted:
        sub = await _submit(
            teacher, warehouse, admitted, run_id=caller.run_id, teacher_key=caller.teacher_key
        )
        budget.calls += len(admitted)
        caller.stats.requests += len(admitted)
        outcome.submitted.append(str(sub.batch_id))
        open_subs.append(sub)

    deadline = time.monotonic() + wait_s
    while open_subs:
        still = []
        for sub in open_subs:
            sub.state = await teacher.retrieve(str(sub.batch_id))
            if not sub.state.done:
                _store_state(warehouse, sub)
                still.append(sub)
                continue
            requests = {j.request.request_hash: j for j in sub.jobs}
            results = await teacher.results(
                sub.state, {rh: j.request for rh, j in requests.items()}
            )
            for res in results:
                job = requests[res.request_hash]
                await caller.commit(job, res)  # journaled before anything else happens
                if on_result is not None:
                    on_result(job, res)
            if sub.state.status == "completed":
                _store_state(warehouse, sub, "collected")
                outcome.collected.append(str(sub.batch_id))
            else:
                _store_state(warehouse, sub, sub.state.status)
                why = f" ({sub.state.message})" if sub.state.message else ""
                outcome.ended_badly.append(f"{sub.batch_id}: {sub.state.status}{why}")
        open_subs = still
        if not open_subs or time.monotonic() >= deadline:
            break
        await sleep(min(poll_s, max(deadline - time.monotonic(), 0.0)))
    outcome.pending = [str(s.batch_id) for s in open_subs]
    caller.save_unsaved()  # answers the journal refused (disk full): saved, then one error
    return outcome
