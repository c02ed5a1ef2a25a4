"""Answers for compressed prompts: replay what the warehouse holds, pay only for misses.

Shared by ``train`` and ``evaluate``. A compression is looked up by ``(prompt id, mask
hash)`` first, which needs no re-rendering of the prompt; what that misses is rendered,
hashed and looked up by request hash (the same compressed text reached by another mask, or
by another run).

The mask lookup is served from a :class:`MaskMap` when the caller holds one: an in-process
map of the run's ``(prompt id, mask hash) -> request hash``, warmed once from the ``masks``
table and kept current with every mask this process resolves. It is a cache, never the
truth: a key it lacks (say, written meanwhile by another process) is rendered and found by
its request hash, which costs a render, never a call. Only the remaining requests are sent, once each however many samples share
them, through :class:`~tacorl_offline.calls.Caller`, which journals every answer before it
is returned.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
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


class MaskMap:
    """``(prompt id, mask hash) -> request hash`` for one teacher key, held in memory.

    Keys are stored as 16-byte digests of the pair (about 170 bytes an entry with the value,
    rather than ~500 for two hash strings), so a million masks fit in under 200 MB.
    """

    def __init__(self, teacher_key: str) -> None:
        self.teacher_key = teacher_key
        self._map: dict[bytes, str] = {}

    @staticmethod
    def _key(prompt_id: str, mask_hash: str) -> bytes:
        return hashlib.blake2b(f"{prompt_id}\x00{mask_hash}".encode(), digest_size=16).digest()

    def __len__(self) -> int:
        return len(self._map)

    def get(self, prompt_id: str, mask_hash: str) -> str | None:
        return self._map.get(self._key(prompt_id, mask_hash))

    def add(self, prompt_id: str, mask_hash: str, request_hash: str) -> None:
        self._map[self._key(prompt_id, mask_hash)] = request_hash

    def warm(self, con: Any, prompt_ids: Iterable[str]) -> int:
        """Load every stored mask of these prompts under this teacher key (one query)."""
        import pyarrow as pa

        ids = pa.table({"prompt_id": list(dict.fromkeys(prompt_ids))})
        con.register("_mask_map_prompts", ids)
        try:
            cur = con.execute(
                "SELECT m.prompt_id, m.mask_hash, m.request_hash FROM masks m"
                " SEMI JOIN _mask_map_prompts p USING (prompt_id) WHERE m.teacher_key = ?",
                [self.teacher_key],
            )
            n = 0
            while batch := cur.fetchmany(100_000):
                for pid, mh, rh in batch:
                    self.add(pid, mh, rh)
                n += len(batch)
        finally:
            con.unregister("_mask_map_prompts")
        return n


@dataclass
class ReplayStats:
    spend: Spend = field(default_factory=Spend)
    teacher_seconds: float = 0.0
    hits_ledger: list[tuple[str, float]] = field(
        default_factory=list
    )  # (request hash, its original cost)
    new_masks: list[dict[str, Any]] = field(default_factory=list)
    # Of ``hits``: samples whose request repeats an earlier one of the same call (in-step
    # duplicates); the rest were replayed from answers stored before it (cross-step replay).
    duplicates: int = 0
    # ``metric_values`` rows computed this step (written with the step).
    metric_rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def replayed(self) -> int:
        return self.spend.hits - self.duplicates


@dataclass
class Lookup:
    """What the warehouse holds for one batch of :class:`Wanted` (phase one of a resolve)."""

    wanted: Sequence[Wanted]
    teacher_key: str
    stored: dict[str, dict[str, Any]]  # request hash -> stored response row
    messages: dict[int, list[dict[str, str]]]  # rendered requests, by position in ``wanted``
    fresh: set[int]  # positions resolved by request hash, not by the mask index


def lookup(
    con: Any,
    wanted: Sequence[Wanted],
    *,
    teacher_key: str,
    render: Callable[[str, Mapping[str, Any]], list[dict[str, str]]],
    mask_map: MaskMap | None = None,
    tail: tuple[dict[str, dict[str, Any]], dict[tuple[str, str, str], str]] | None = None,
) -> Lookup:
    """Phase one, on an open connection: each Wanted's request hash and what is stored.

    With ``mask_map`` the mask lookup is served from memory and no ``masks`` query is made.
    ``tail`` is :meth:`Warehouse.journal_tail` when ``con`` is a read-only connection (a
    reader holds the file): what is journaled but not yet in DuckDB is found there.
    """
    tail_responses, tail_masks = tail if tail is not None else ({}, {})
    fresh: set[int] = set()
    messages: dict[int, list[dict[str, str]]] = {}
    if mask_map is not None:
        by_mask = {
            (w.prompt_id, w.mask_hash): rh
            for w in wanted
            if (rh := mask_map.get(w.prompt_id, w.mask_hash)) is not None
        }
    else:
        by_mask = Warehouse.lookup_masks(
            con, [(w.prompt_id, w.mask_hash) for w in wanted], teacher_key
        )
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
    for i, w in enumerate(wanted):
        if i not in fresh and w.request_hash not in stored:
            # A mask whose answer is not stored (never expected; be safe): render it.
            messages[i] = render(w.text, w.fields)
            w.request_hash = request_hash(teacher_key, messages[i])
            fresh.add(i)
            stored.update(Warehouse.lookup_responses(con, [w.request_hash]))
            if w.request_hash in tail_responses and w.request_hash not in stored:
                stored[w.request_hash] = tail_responses[w.request_hash]
    return Lookup(wanted, teacher_key, stored, messages, fresh)


async def resolve(
    wanted: Sequence[Wanted],
    *,
    warehouse: Warehouse,
    caller: Caller,
    teacher_key: str,
    render: Callable[[str, Mapping[str, Any]], list[dict[str, str]]],
    concurrency: int,
    mask_map: MaskMap | None = None,
) -> ReplayStats:
    """Fill in each :class:`Wanted`: replay what is stored, pay once for each miss.

    Opens its own connection for the lookup (read-only, with the journal tail overlaid, while
    a reader holds the file) and closes it before any call is made; a caller
    that already holds a connection uses :func:`lookup` then :func:`pay`.
    """
    # While a reader holds the file, lookups run read-only and the journal tail (answers paid
    # for but not yet flushed into DuckDB) is consulted as well: training goes on.
    with warehouse.lookup_connection() as (con, overlay):
        found = lookup(
            con,
            wanted,
            teacher_key=teacher_key,
            render=render,
            mask_map=mask_map,
            tail=warehouse.journal_tail() if overlay else None,
        )
    return await pay(found, caller=caller, concurrency=concurrency, mask_map=mask_map)


async def pay(
    found: Lookup, *, caller: Caller, concurrency: int, mask_map: MaskMap | None = None
) -> ReplayStats:
    """Phase two, with no connection held: replay the stored answers, pay once per miss."""
    st = ReplayStats()
    wanted, teacher_key, stored = found.wanted, found.teacher_key, found.stored
    messages, fresh = found.messages, found.fresh
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
    if mask_map is not None:
        # Hits found by request hash and paid answers both have a stored mask row now (the
        # step write and the journal hold them).
        for w in wanted:
            rh = w.request_hash
            if rh is not None and (
                rh in stored or (rh in results and (results[rh].ok or results[rh].permanent))
            ):
                mask_map.add(w.prompt_id, w.mask_hash, rh)
    seen: set[str | None] = set()
    for w in wanted:
        if w.cache_hit and w.request_hash in seen:
            st.duplicates += 1
        seen.add(w.request_hash)
    st.spend = Spend(
        calls=len(results),
        hits=sum(1 for w in wanted if w.cache_hit),
        cost_usd=caller.stats.cost_usd - cost_before,
        saved_usd=sum(c for _, c in st.hits_ledger),
    )
    return st
