"""Stages 2 and 3: the length gate, then replay or pay.

2. **length gate**: decide the length-only rewards (over-compressed, outside the tolerance
   band) with no call; computed once per step and reused by scoring;
3. **replay**: look the rest up by mask hash, then by request hash: a hit replays the stored
   answer; the misses (deduplicated within the step) are sent concurrently, each journaled
   before it is scored (:mod:`tacorl_offline.replay`, :mod:`tacorl_offline.calls`).

A step opens the warehouse once, in stage 7 (:mod:`.record`). Stage 3 decides its lookups in
memory: the run's :class:`~tacorl_offline.replay.MaskMap` (masks, answers, cached metric
values, warmed once and fed every entry this process journals or flushes) plus the journal
tail, exact while no other process has written DuckDB since this one last closed it (a stat of
the file). When another has, stage 3 opens the file for its lookups (IN lists by key) and
closes it before any teacher call; while a reader holds the file that connection is read-only
and the journal tail is consulted too. Readers get the lock between steps either way.

Both take a list of rollouts, not a step: any set of masks (a validation split's greedy ones,
say) is answered and paid for the same way.

Design decision (issue 19): in one process, stages 1-3 overlap (:func:`sample_and_replay`).
The policy runs one forward pass over the batch and draws the masks prompt by prompt in a
worker thread, and each prompt's rollouts are gated, looked up and their misses sent from the
event loop as soon as they are drawn, so the teacher answers the first prompts while the last
are still sampled. One forward, not one a prompt: the last prompt's calls, which bound the
step's wait, then start sooner (bench/README.md "Step overlap": 43 against 65 ms of sampling
before the last call on the bench's policy, 1.13x against 1.24x max(local, wait)); what is
lost is calls starting during the forward itself. The masks are the sequential
stages' (the sampler's generator is drawn in the same order), and the step is settled once,
in rollout order, when the last answer is in: which answers are replayed, paid or counted as
in-step duplicates does not depend on when they arrived. Every call still goes through the
write-ahead ledger and is journaled before its answer is used. A multi-process run keeps the
stages in sequence (rank 0 pays for every rank's masks after the gather).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import torch

from tacorl_offline import metric_cache
from tacorl_offline.hashing import text_hash
from tacorl_offline.replay import (
    Lookup,
    ReplayStats,
    Wanted,
    lookup,
    lookup_in_memory,
    pay,
    plan_jobs,
    settle,
)
from tacorl_offline.rewards import needs_teacher
from tacorl_offline.runs import PhaseRun
from tacorl_offline.teachers import render_messages
from tacorl_offline.training.records import Rollout, StageContext, StepData
from tacorl_offline.training.rollout import rollout


def length_gate(ctx: StageContext, rollouts: list[Rollout]) -> None:
    """Sets each rollout's ``gate``: its length-only reward, or None (ask the teacher)."""
    gates, _ = needs_teacher(
        ctx.settings, [r.n_orig for r in rollouts], [r.n_comp for r in rollouts]
    )
    for r, g in zip(rollouts, gates, strict=True):
        r.gate = g


async def replay(ctx: StageContext, rollouts: list[Rollout], run: PhaseRun | None) -> ReplayStats:
    """Answers for the masks the gate left open: replayed, or paid once each.

    Decided in memory (mask map, answers, metric values of the hits) while the map is
    exact; otherwise one warehouse connection for the lookups, closed before any teacher
    call, so readers get the lock during the step. While a reader holds the file it is
    read-only and the journal tail is consulted too.
    """
    asking = [r for r in rollouts if r.needs_teacher]
    wanted = _wanted(ctx, asking)
    if run is None or not wanted:
        return ReplayStats()
    found = _lookup_in_memory(ctx, asking, wanted, run)
    if found is None:
        found = _lookup_in_warehouse(ctx, asking, wanted, run)
    stats = await pay(
        found,
        caller=run.caller,
        concurrency=ctx.cfg.teacher.concurrency,
        mask_map=ctx.mask_map,
    )
    for r, w in zip(asking, wanted, strict=True):
        r.request_hash, r.answer, r.cache_hit = w.request_hash, w.answer, w.cache_hit
    return stats


class Overlap:
    """Stages 2 and 3 while stage 1 still samples (one process, ``run`` held).

    Each prompt's rollouts are gated and looked up as soon as they are drawn (:meth:`add`),
    and its misses are sent at once through one :class:`~tacorl_offline.calls.CallStream`
    while the policy samples the next prompts; :meth:`finish` waits for the last answers and
    settles the whole step in rollout order, so which answers are replayed, paid or counted
    as in-step duplicates is what :func:`replay` decides for the same rollouts. Lookups are
    decided in memory (the map is exact); once it is not, the remaining rollouts are looked
    up in DuckDB by :meth:`finish`, as :func:`replay` would. A request this step already sent
    is never replayed from the answer it journaled meanwhile: it counts as paid once.
    """

    def __init__(self, ctx: StageContext, run: PhaseRun) -> None:
        self.ctx, self.run = ctx, run
        self.stream = run.caller.stream(concurrency=ctx.cfg.teacher.concurrency)
        self.parts: list[tuple[list[Rollout], Lookup]] = []
        self.later: list[Rollout] = []  # decided at the end, in DuckDB
        self.cost_before = run.caller.stats.cost_usd
        self.sent = False  # whether any call was made

    def add(self, rollouts: list[Rollout]) -> None:
        """One prompt's rollouts, just drawn: gate them, look them up, send the misses."""
        fresh = [r for r in rollouts if r.fresh]
        length_gate(self.ctx, fresh)
        asking = [r for r in fresh if r.needs_teacher]
        if not asking:
            return
        if self.later:  # keep rollout order: once one waits for DuckDB, the rest do too
            self.later += asking
            return
        wanted = _wanted(self.ctx, asking)
        found = _lookup_in_memory(self.ctx, asking, wanted, self.run, sent=self.stream.seen)
        if found is None:
            self.later += asking
            return
        self._send(asking, found)

    def _send(self, asking: list[Rollout], found: Lookup) -> None:
        jobs = plan_jobs(found, skip=self.stream.seen)
        if jobs:
            self.sent = True
            self.stream.submit(jobs.values())
        self.parts.append((asking, found))

    async def finish(self) -> ReplayStats:
        """Every answer of the step (the last ones awaited), settled in rollout order."""
        if self.later:
            wanted = _wanted(self.ctx, self.later)
            found = _lookup_in_warehouse(
                self.ctx, self.later, wanted, self.run, sent=self.stream.seen
            )
            self._send(self.later, found)
        if not self.parts:
            return ReplayStats()
        # The step's teacher time is the wait it still has once sampling is done: the calls'
        # time before it overlapped the sampling (so the step's wall minus it is local work).
        t0 = time.perf_counter()
        results = await self.stream.finish()
        waited = time.perf_counter() - t0 if self.sent else 0.0
        found = Lookup.concat([f for _, f in self.parts], self.run.teacher_key)
        stats = settle(
            found,
            results,
            caller=self.run.caller,
            mask_map=self.ctx.mask_map,
            cost_before=self.cost_before,
            teacher_seconds=waited,
        )
        asking = [r for a, _ in self.parts for r in a]
        for r, w in zip(asking, found.wanted, strict=True):
            r.request_hash, r.answer, r.cache_hit = w.request_hash, w.answer, w.cache_hit
        return stats


def _wanted(ctx: StageContext, asking: list[Rollout]) -> list[Wanted]:
    return [Wanted(r.prompt_id, r.mask_hash, r.text, ctx.items[r.item].fields) for r in asking]


def _render(ctx: StageContext) -> Any:
    def render(text: str, fields: Any) -> list[dict[str, str]]:
        return render_messages(ctx.cfg.teacher, text, fields)

    return render


def _lookup_in_memory(
    ctx: StageContext,
    asking: list[Rollout],
    wanted: list[Wanted],
    run: PhaseRun,
    sent: set[str] | None = None,
) -> Lookup | None:
    """The lookups served from the mask map, or None when it may be stale. ``sent``: request
    hashes this step already sent (never replayed, see :class:`Overlap`)."""
    found = lookup_in_memory(
        wanted,
        teacher_key=run.teacher_key,
        render=_render(ctx),
        mask_map=ctx.mask_map,
        warehouse=ctx.warehouse,
    )
    if found is not None:
        if sent:
            found.forget(sent)
        for r, w in zip(asking, wanted, strict=True):
            if w.request_hash in found.stored:
                key = metric_key(ctx, r, w.request_hash)
                r.known_metrics = ctx.mask_map.metrics(key, ctx.metric_names)
    return found


def _lookup_in_warehouse(
    ctx: StageContext,
    asking: list[Rollout],
    wanted: list[Wanted],
    run: PhaseRun,
    sent: set[str] | None = None,
) -> Lookup:
    """The lookups on one warehouse connection, closed before any teacher call (or any more
    of them: ``sent``, the request hashes this step already sent, see :class:`Overlap`)."""
    with ctx.warehouse.lookup_connection() as (con, overlay):
        found = lookup(
            con,
            wanted,
            teacher_key=run.teacher_key,
            render=_render(ctx),
            mask_map=ctx.mask_map,
            tail=ctx.warehouse.journal_tail() if overlay else None,
        )
        if sent:
            found.forget(sent)
        # Metric values of replayed answers are read back, never recomputed.
        keys = [
            metric_key(ctx, r, w.request_hash) if w.request_hash in found.stored else None
            for r, w in zip(asking, wanted, strict=True)
        ]
        if any(keys):
            cached = metric_cache.load(con, keys, ctx.metric_names)
            for r, c in zip(asking, cached, strict=True):
                r.known_metrics = c
    return found


def metric_key(ctx: StageContext, r: Rollout, rh: str | None) -> tuple[str, str] | None:
    """The metric cache's key of a rollout's answer (request hash, reference hash)."""
    ref = ctx.items[r.item].reference
    return (rh, text_hash(ref)) if rh and ref else None


async def sample_and_replay(
    ctx: StageContext,
    data: StepData,
    mine: list[int],
    run: PhaseRun,
    *,
    gen: torch.Generator,
    step: int,
    before_wait: Callable[[], None] | None = None,
) -> ReplayStats:
    """Stages 1-3 overlapped, in one process: the policy draws prompt by prompt in a worker
    thread (:func:`~.rollout.rollout`, one forward pass), each prompt's misses are sent from
    the event loop as soon as they are drawn (:class:`Overlap`), and the step waits only for
    the answers still out once the last prompt is drawn. The masks, and so the step's result,
    are those of the sequential stages. ``before_wait`` (the previous step's record) runs in a
    worker thread once every prompt is drawn, during the wait for the answers."""
    overlap = Overlap(ctx, run)
    loop = asyncio.get_running_loop()
    errors: list[BaseException] = []

    def add(rollouts: list[Rollout]) -> None:  # on the event loop
        if errors:
            return
        try:
            overlap.add(rollouts)
        except BaseException as e:  # raised from the step below, not lost in the loop
            errors.append(e)

    grad = torch.is_grad_enabled()  # thread-local: the worker samples as this thread would

    def sample() -> None:  # in the worker thread
        with torch.set_grad_enabled(grad):
            rollout(
                ctx,
                data,
                mine,
                gen=gen,
                step=step,
                on_prompt=lambda rs: loop.call_soon_threadsafe(add, rs),
            )

    try:
        # The thread's last add() callbacks run before this await resumes (FIFO callbacks).
        await asyncio.to_thread(sample)
        if errors:
            raise errors[0]
        if before_wait is None:
            return await overlap.finish()
        # In a worker thread: the event loop stays free to send the last prompts' calls and
        # take the answers. A step whose lookups go to DuckDB (overlap.later) waits for it
        # first: one write connection at a time in this process.
        side = asyncio.ensure_future(asyncio.to_thread(before_wait))
        try:
            if overlap.later:
                await side
            stats = await overlap.finish()
        finally:
            await side
        return stats
    except BaseException:
        overlap.stream.cancel()
        raise
