"""Answers for compressed prompts: replay what the warehouse holds, pay only for misses.

Shared by ``train`` and ``evaluate``. A compression is looked up by ``(prompt id, mask
hash)`` first, which needs no re-rendering of the prompt; what that misses is rendered,
hashed and looked up by request hash (the same compressed text reached by another mask, or
by another run).

The lookup is served from a :class:`MaskMap` when the caller holds one: an in-process
picture of what the warehouse holds for the run (masks, their answers, cached metric
values), warmed once and kept current with every entry this process journals or flushes.
While no other process has written DuckDB since this one last closed it (a stat, no open),
the map plus the journal tail decide every lookup, a miss included, in memory
(:func:`lookup_in_memory`); otherwise the lookup goes to DuckDB (:func:`lookup`) and the map
serves masks only, a cache, never the truth: a key it lacks is rendered and found by its
request hash, which costs a render, never a call. Only the remaining requests are sent, once
each however many samples share them, through :class:`~tacorl_offline.calls.Caller`, which
journals every answer before it is returned.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
    """What the warehouse holds for one run under one teacher key, in memory.

    - ``(prompt id, mask hash) -> request hash`` for the run's prompts;
    - the stored answers those request hashes lead to (answer, ok, cost), and every answer
      this process journals or flushes later, so a replayed answer needs no read;
    - the request hashes answered under the key for other prompts (as 64-bit digests: such a
      key is never decided from memory, only checked in DuckDB);
    - cached metric values of those answers.

    Warmed once, inside one connection (:meth:`warm`); kept current through the warehouse's
    entry listener (:meth:`Warehouse.add_listener`): every answer this process journals and
    every journal entry any of its opens flushes (another process's included). So while
    :meth:`Warehouse.unchanged_since_close` holds (no other process has written DuckDB since
    this process last closed it), the map plus the journal tail know exactly what is stored,
    and a step decides every lookup, a miss included, without opening the file
    (:func:`lookup_in_memory`). Once another process has written DuckDB the map is no longer
    exact: lookups go to DuckDB as before (:func:`lookup`), the map serving masks only.

    Keys are 16-byte digests of the pair (about 170 bytes an entry with the value); an
    answer adds its tuple and text (measured by bench/warehouse_scale.py).
    """

    def __init__(self, teacher_key: str) -> None:
        self.teacher_key = teacher_key
        self._map: dict[bytes, str] = {}
        self._answers: dict[str, tuple[str | None, bool, float]] = {}
        # Sorted 64-bit digests (8 bytes each, however many other prompts' answers there are).
        self._elsewhere: np.ndarray = np.zeros(0, dtype=np.uint64)
        self._metrics: dict[tuple[str, str], dict[str, float]] = {}
        self._prompts: set[str] = set()
        self._exact_gen: int | None = None  # Warehouse.generation the map is exact for

    @staticmethod
    def _key(prompt_id: str, mask_hash: str) -> bytes:
        return hashlib.blake2b(f"{prompt_id}\x00{mask_hash}".encode(), digest_size=16).digest()

    @staticmethod
    def _digest(request_hash_: str) -> int:
        return int.from_bytes(
            hashlib.blake2b(request_hash_.encode(), digest_size=8).digest(), "little"
        )

    def __len__(self) -> int:
        return len(self._map)

    @property
    def answers(self) -> int:
        return len(self._answers)

    def get(self, prompt_id: str, mask_hash: str) -> str | None:
        return self._map.get(self._key(prompt_id, mask_hash))

    def add(self, prompt_id: str, mask_hash: str, request_hash: str) -> None:
        self._map[self._key(prompt_id, mask_hash)] = request_hash

    def answer(self, request_hash_: str) -> dict[str, Any] | None:
        """The stored answer as a response row (the fields :func:`pay` reads), if held."""
        a = self._answers.get(request_hash_)
        if a is None:
            return None
        return {"request_hash": request_hash_, "answer": a[0], "ok": a[1], "cost_usd": a[2]}

    def elsewhere(self, request_hash_: str) -> bool:
        """Answered under this key for a prompt outside the run (only DuckDB has it)."""
        if request_hash_ in self._answers or not len(self._elsewhere):
            return False
        d = np.uint64(self._digest(request_hash_))
        i = int(np.searchsorted(self._elsewhere, d))
        return i < len(self._elsewhere) and self._elsewhere[i] == d

    def metrics(
        self, key: tuple[str, str] | None, names: Mapping[str, str]
    ) -> dict[str, float] | None:
        """Cached values of (request hash, reference hash), by component (``names``:
        component -> stored metric name, as :func:`metric_cache.load` takes them)."""
        held = self._metrics.get(key) if key is not None else None
        if not held:
            return None
        out = {comp: held[stored] for comp, stored in names.items() if stored in held}
        return out or None

    def add_metrics(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for r in rows:
            self._metrics.setdefault((r["request_hash"], r["reference_hash"]), {})[r["metric"]] = (
                float(r["value"])
            )

    def exact(self, warehouse: Warehouse) -> bool:
        """Whether the map (with the journal tail) knows all DuckDB holds for the run."""
        return self._exact_gen is not None and self._exact_gen == warehouse.generation

    def absorb(self, entries: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """Journal-shaped entries this process wrote or flushed: learn their answers."""
        for table, row in entries:
            if table == "responses" and row.get("teacher_key") == self.teacher_key:
                rh = row["request_hash"]
                if rh not in self._answers:  # the first stored row wins (INSERT OR IGNORE)
                    self._answers[rh] = (
                        row.get("answer"),
                        bool(row.get("ok")),
                        float(row.get("cost_usd") or 0.0),
                    )
            elif (
                table == "masks"
                and row.get("teacher_key") == self.teacher_key
                and row.get("prompt_id") in self._prompts
            ):
                key = self._key(row["prompt_id"], row["mask_hash"])
                self._map.setdefault(key, row["request_hash"])

    def warm(
        self,
        con: Any,
        prompt_ids: Iterable[str],
        *,
        warehouse: Warehouse | None = None,
        metric_names: Iterable[str] = (),
    ) -> int:
        """Load the run's masks, the answers stored for its prompts (and those its masks lead
        to), their metric values, and the request hashes answered for other prompts. With
        ``warehouse`` (whose connection ``con`` is) the map becomes exact and listens to the
        warehouse's entries."""
        import pyarrow as pa

        self._prompts = set(prompt_ids)
        ids = pa.table({"prompt_id": list(self._prompts)})
        con.register("_mask_map_prompts", ids)
        try:
            cur = con.execute(
                "SELECT m.prompt_id, m.mask_hash, m.request_hash, r.answer, r.ok, r.cost_usd"
                " FROM masks m SEMI JOIN _mask_map_prompts p USING (prompt_id)"
                " LEFT JOIN responses r USING (request_hash) WHERE m.teacher_key = ?",
                [self.teacher_key],
            )
            n = 0
            while batch := cur.fetchmany(100_000):
                for pid, mh, rh, answer, ok, cost in batch:
                    self.add(pid, mh, rh)
                    if ok is not None:
                        self._answers[rh] = (answer, bool(ok), float(cost or 0.0))
                n += len(batch)
            # Every answer under the key: the run's prompts' in memory (a mask never recorded
            # may reach one), the others' as digests (left to DuckDB).
            cur = con.execute(
                "SELECT r.request_hash, r.answer, r.ok, r.cost_usd, p.prompt_id IS NOT NULL"
                " FROM responses r LEFT JOIN _mask_map_prompts p USING (prompt_id)"
                " WHERE r.teacher_key = ?",
                [self.teacher_key],
            )
            elsewhere: list[int] = []
            while batch := cur.fetchmany(100_000):
                for rh, answer, ok, cost, ours in batch:
                    if rh in self._answers:
                        continue
                    if ours:
                        self._answers[rh] = (answer, bool(ok), float(cost or 0.0))
                    else:
                        elsewhere.append(self._digest(rh))
            self._elsewhere = np.unique(np.array(elsewhere, dtype=np.uint64))
            names = list(dict.fromkeys(metric_names))
            if names and self._answers:
                con.register("_mask_map_answers", pa.table({"request_hash": list(self._answers)}))
                try:
                    cur = con.execute(
                        "SELECT v.request_hash, v.reference_hash, v.metric, v.value"
                        " FROM metric_values v SEMI JOIN _mask_map_answers USING (request_hash)"
                        f" WHERE v.metric IN ({', '.join(['?'] * len(names))})",
                        names,
                    )
                    while batch := cur.fetchmany(100_000):
                        self.add_metrics(
                            {"request_hash": a, "reference_hash": b, "metric": c, "value": d}
                            for a, b, c, d in batch
                        )
                finally:
                    con.unregister("_mask_map_answers")
        finally:
            con.unregister("_mask_map_prompts")
        if warehouse is not None:
            warehouse.add_listener(self.absorb)
            self._exact_gen = warehouse.generation
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


def lookup_in_memory(
    wanted: Sequence[Wanted],
    *,
    teacher_key: str,
    render: Callable[[str, Mapping[str, Any]], list[dict[str, str]]],
    mask_map: MaskMap,
    warehouse: Warehouse,
) -> Lookup | None:
    """Phase one with no connection: decided from the map and the journal tail, or None.

    None when memory cannot decide: the map is not exact for this warehouse (another process
    has written DuckDB since the map was warmed), or a request hash was answered for a prompt
    outside the run. The caller then looks up in DuckDB (:func:`lookup`). The journal tail is
    read before the file is checked: an answer another process flushes from the journal into
    DuckDB in between changes the file, so it is never missed by both.
    """
    if not mask_map.exact(warehouse):
        return None
    tail_responses, tail_masks = warehouse.journal_tail()
    if not warehouse.unchanged_since_close() or not mask_map.exact(warehouse):
        return None
    stored: dict[str, dict[str, Any]] = {}
    messages: dict[int, list[dict[str, str]]] = {}
    fresh: set[int] = set()
    for i, w in enumerate(wanted):
        rh = mask_map.get(w.prompt_id, w.mask_hash) or tail_masks.get(
            (w.prompt_id, w.mask_hash, teacher_key)
        )
        if rh is None or (mask_map.answer(rh) is None and rh not in tail_responses):
            # Not known by mask (or, never expected, its answer is not held): render it.
            messages[i] = render(w.text, w.fields)
            rh = request_hash(teacher_key, messages[i])
            fresh.add(i)
        w.request_hash = rh
        row = mask_map.answer(rh) or tail_responses.get(rh)
        if row is not None:
            stored[rh] = row
        elif mask_map.elsewhere(rh):
            return None  # stored for another prompt: DuckDB has the answer
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
