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
"""

from __future__ import annotations

from typing import Any

from tacorl_offline import metric_cache
from tacorl_offline.hashing import text_hash
from tacorl_offline.replay import Lookup, ReplayStats, Wanted, lookup, lookup_in_memory, pay
from tacorl_offline.rewards import needs_teacher
from tacorl_offline.runs import PhaseRun
from tacorl_offline.teachers import render_messages
from tacorl_offline.training.records import Rollout, StageContext


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
    wanted = [Wanted(r.prompt_id, r.mask_hash, r.text, ctx.items[r.item].fields) for r in asking]
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


def _render(ctx: StageContext) -> Any:
    def render(text: str, fields: Any) -> list[dict[str, str]]:
        return render_messages(ctx.cfg.teacher, text, fields)

    return render


def _lookup_in_memory(
    ctx: StageContext, asking: list[Rollout], wanted: list[Wanted], run: PhaseRun
) -> Lookup | None:
    """The lookups served from the mask map, or None when it may be stale."""
    found = lookup_in_memory(
        wanted,
        teacher_key=run.teacher_key,
        render=_render(ctx),
        mask_map=ctx.mask_map,
        warehouse=ctx.warehouse,
    )
    if found is not None:
        for r, w in zip(asking, wanted, strict=True):
            if w.request_hash in found.stored:
                key = metric_key(ctx, r, w.request_hash)
                r.known_metrics = ctx.mask_map.metrics(key, ctx.metric_names)
    return found


def _lookup_in_warehouse(
    ctx: StageContext, asking: list[Rollout], wanted: list[Wanted], run: PhaseRun
) -> Lookup:
    """The lookups on one warehouse connection, closed before any teacher call."""
    with ctx.warehouse.lookup_connection() as (con, overlay):
        found = lookup(
            con,
            wanted,
            teacher_key=run.teacher_key,
            render=_render(ctx),
            mask_map=ctx.mask_map,
            tail=ctx.warehouse.journal_tail() if overlay else None,
        )
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
