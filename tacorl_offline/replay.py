"""Answers for compressed prompts: replay what the warehouse holds, pay only for misses.

Shared by ``train`` and ``evaluate``. A compression is looked up by ``(prompt id, mask
hash)`` first, which needs no re-rendering of the prompt; what that misses is rendered,
hashed and looked up by request hash (the same compressed text reached by another mask, or
by another run). Only the remaining requests are sent, once each however many samples share
them, through :class:`~tacorl_offline.calls.Caller`, which journals every answer before it
is returned.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tacorl_offline.calls import Caller, Job
from tacorl_offline.hashing import request_hash
from tacorl_offline.runs import Spend
from tacorl_offline.teachers.base import TeacherRequest
from tacorl_offline.warehouse import Warehouse


@dataclass
class Wanted:
    """One compressed prompt whose teacher answer is needed."""

    prompt_id: str
    mask_hash: str
    text: str  # the compressed text
    fields: Mapping[str, Any]
    # Filled in by resolve():
    request_hash: str | None = None
    answer: str | None = None  # None: failed (or not started because of the budget)
    cache_hit: bool = False
    paid: bool = False


@dataclass
class ReplayStats:
    spend: Spend = field(default_factory=Spend)
    teacher_seconds: float = 0.0
    hits_ledger: list[tuple[str, float]] = field(
        default_factory=list
    )  # (request hash, its original cost)
    new_masks: list[dict[str, Any]] = field(default_factory=list)


async def resolve(
    wanted: Sequence[Wanted],
    *,
    warehouse: Warehouse,
    caller: Caller,
    teacher_key: str,
    render: Callable[[str, Mapping[str, Any]], list[dict[str, str]]],
    concurrency: int,
) -> ReplayStats:
    st = ReplayStats()
    fresh: set[int] = set()  # positions resolved by request hash, not by the mask index
    messages: dict[int, list[dict[str, str]]] = {}
    # While a reader holds the file, lookups run read-only and the journal tail (answers paid
    # for but not yet flushed into DuckDB) is consulted as well: training goes on.
    with warehouse.lookup_connection() as (con, overlay):
        by_mask = Warehouse.lookup_masks(
            con, [(w.prompt_id, w.mask_hash) for w in wanted], teacher_key
        )
        tail_responses: dict[str, dict[str, Any]] = {}
        if overlay:
            tail_responses, tail_masks = warehouse.journal_tail()
            for (pid, mh, tk), rh in tail_masks.items():
                if tk == teacher_key:
                    by_mask.setdefault((pid, mh), rh)
        for i, w in enumerate(wanted):
            w.request_hash = by_mask.get((w.prompt_id, w.mask_hash))
            if w.request_hash is None:  # render only what the mask index did not resolve
                messages[i] = render(w.text, w.fields)
                w.request_hash = request_hash(teacher_key, messages[i])
                fresh.add(i)
        stored = Warehouse.lookup_responses(con, [w.request_hash for w in wanted if w.request_hash])
        for w in wanted:
            if w.request_hash in tail_responses and w.request_hash not in stored:
                stored[w.request_hash] = tail_responses[w.request_hash]
    jobs: dict[str, Job] = {}
    counted: set[str] = set()
    for i, w in enumerate(wanted):
        rh = w.request_hash
        assert rh is not None
        if rh in stored:
            w.cache_hit = True
            if rh not in counted:
                counted.add(rh)
                st.hits_ledger.append((rh, stored[rh]["cost_usd"] or 0.0))
            if i in fresh:
                st.new_masks.append(
                    {
                        "prompt_id": w.prompt_id,
                        "mask_hash": w.mask_hash,
                        "teacher_key": teacher_key,
                        "request_hash": rh,
                    }
                )
        elif rh not in jobs:
            jobs[rh] = Job(
                TeacherRequest(rh, messages[i], text=w.text, fields=w.fields),
                "compressed",
                w.prompt_id,
                w.mask_hash,
            )
    cost_before = caller.stats.cost_usd
    t0 = time.perf_counter()
    results = await caller.run(list(jobs.values()), concurrency=concurrency) if jobs else {}
    st.teacher_seconds = time.perf_counter() - t0
    paid_once: set[str] = set()
    for w in wanted:
        rh = w.request_hash
        if rh in stored:
            w.answer = stored[rh]["answer"] if stored[rh]["ok"] else None
        elif rh in results:
            w.answer = results[rh].answer if results[rh].ok else None
            if rh in paid_once:
                # The same compression twice in one batch: paid once, replayed here.
                w.cache_hit = True
                res = results[rh]
                price = caller.prices.cost(
                    caller.teacher.backend,
                    caller.teacher.model,
                    res.input_tokens,
                    res.output_tokens,
                )
                st.hits_ledger.append((rh, price))
            else:
                paid_once.add(rh)
                w.paid = True
    st.spend = Spend(
        calls=len(results),
        hits=sum(1 for w in wanted if w.cache_hit),
        cost_usd=caller.stats.cost_usd - cost_before,
        saved_usd=sum(c for _, c in st.hits_ledger),
    )
    return st
