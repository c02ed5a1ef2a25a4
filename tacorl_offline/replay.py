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
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tacorl_offline.calls import Caller, Job
from tacorl_offline.hashing import SCHEME, request_hash
from tacorl_offline.runs import Spend
from tacorl_offline.teachers.base import TeacherRequest, TeacherResult
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


_WARM_BATCH = 20_000  # rows per fetch while warming (bounds the transient Python tuples)


def _raw_hash(h: str) -> bytes | None:
    """The 32 bytes of a ``v1:<64 hex>`` hash (:func:`~tacorl_offline.hashing.hash_obj`), or
    None for any other form (kept as a string instead)."""
    if len(h) != 67 or not h.startswith(f"{SCHEME}:"):
        return None
    try:
        return bytes.fromhex(h[3:])
    except ValueError:
        return None


class _Sorted:
    """Fixed-width binary keys (``width`` little-endian uint64 words each) in sorted order,
    found by binary search on the first word; ``order`` is the permutation applied, for the
    caller's parallel columns. A few bytes a key, no Python object per key."""

    def __init__(self, keys: np.ndarray) -> None:
        order = np.lexsort(keys.T[::-1]) if len(keys) else np.zeros(0, dtype=np.int64)
        self.keys = keys[order]
        self.first = np.ascontiguousarray(self.keys[:, 0]) if len(keys) else np.zeros(0, "<u8")
        self.order = order

    def __len__(self) -> int:
        return len(self.keys)

    def range(self, key: bytes) -> range:
        """Positions whose key equals ``key`` (at most one for unique keys)."""
        n = len(self.first)
        if not n:
            return range(0)
        w0 = np.frombuffer(key, dtype="<u8", count=1)[0]
        lo = int(self.first.searchsorted(w0))
        hi = lo
        while hi < n and self.first[hi] == w0:
            hi += 1
        hits = [i for i in range(lo, hi) if self.keys[i].tobytes() == key]
        return range(hits[0], hits[-1] + 1) if hits else range(0)

    def find(self, key: bytes) -> int:
        r = self.range(key)
        return r.start if r else -1

    def contains_rows(self, rows: np.ndarray) -> np.ndarray:
        """Per row of ``rows`` (n, width), whether it is held (vectorised)."""
        if not len(self.keys) or not len(rows):
            return np.zeros(len(rows), dtype=bool)
        idx = np.searchsorted(self.first, rows[:, 0], "left").clip(0, len(self.keys) - 1)
        return (self.keys[idx] == rows).all(axis=1)


def _words(chunks: list[bytes], width: int) -> np.ndarray:
    return np.frombuffer(b"".join(chunks), dtype="<u8").reshape(-1, width).copy()


class _TextStore:
    """Answer texts in an unlinked temporary file, read back on demand: the map holds an
    offset and a length per answer, not the text (page cache, not the process, keeps them)."""

    def __init__(self) -> None:
        # Held for the map's lifetime (closed with it), not a with-block.
        self._f = tempfile.TemporaryFile(prefix="tacorl-answers-")  # noqa: SIM115
        self._size = 0
        self._lock = threading.Lock()

    def append(self, texts: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """Offsets and lengths (-1: None) of ``texts``, written at the end of the file."""
        offs = np.zeros(len(texts), dtype=np.int64)
        lens = np.full(len(texts), -1, dtype=np.int32)
        buf = bytearray()
        for i, t in enumerate(texts):
            offs[i] = self._size + len(buf)
            if t is not None:
                b = t.encode("utf-8")
                lens[i] = len(b)
                buf += b
        with self._lock:
            self._f.seek(self._size)
            self._f.write(buf)
            self._f.flush()
            self._size += len(buf)
        return offs, lens

    def read(self, offset: int, length: int) -> str | None:
        if length < 0:
            return None
        with self._lock:
            self._f.seek(offset)
            return self._f.read(length).decode("utf-8")

    def close(self) -> None:
        self._f.close()


class MaskMap:
    """What the warehouse holds for one run under one teacher key, in memory.

    - ``(prompt id, mask hash) -> request hash`` for the run's prompts;
    - the stored answers those request hashes lead to (ok, cost; the text read on demand),
      and every answer this process journals or flushes later;
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

    Design decision (memory, issue 19): what :meth:`warm` loads is held in sorted numpy arrays,
    no Python object per entry: a mask is a 16-byte digest of the pair and the 32 bytes of its
    request hash; an answer is its 32-byte request hash, a flag byte, its cost, and the offset
    and length of its text in an unlinked temporary file (:class:`_TextStore`), read back when
    a lookup replays it (a 64-key lookup reads at most 64 short texts from the page cache); a
    metric value is a 16-byte digest of (request hash, reference hash), a name index and the
    value. About 100 bytes an answer in all (bench/warehouse_scale.py measures the peak RSS).
    What is learned later (a step's new masks and answers, metric values) goes into small
    dicts beside them, as does any hash not of the ``v1:<hex>`` form.
    """

    _STORED, _OK, _NONE = 1, 2, 4  # answer flags

    def __init__(self, teacher_key: str) -> None:
        self.teacher_key = teacher_key
        # Learned after warm() (and hashes of another form): plain dicts.
        self._map: dict[bytes, str] = {}
        self._answers: dict[str, tuple[str | None, bool, float]] = {}
        self._metrics: dict[tuple[str, str], dict[str, float]] = {}
        # Warmed: sorted arrays (see the class docstring).
        self._masks = _Sorted(np.zeros((0, 2), dtype="<u8"))
        self._mask_rh = np.zeros((0, 4), dtype="<u8")
        self._resp = _Sorted(np.zeros((0, 4), dtype="<u8"))
        self._flags = np.zeros(0, dtype=np.uint8)
        self._cost = np.zeros(0, dtype=np.float64)
        self._text_at = np.zeros(0, dtype=np.int64)
        self._text_len = np.zeros(0, dtype=np.int32)
        self._texts: _TextStore | None = None
        self._mvals = _Sorted(np.zeros((0, 2), dtype="<u8"))
        self._mname = np.zeros(0, dtype=np.uint16)
        self._mvalue = np.zeros(0, dtype=np.float64)
        self._mnames: list[str] = []
        # Sorted 64-bit digests (8 bytes each, however many other prompts' answers there are).
        self._elsewhere: np.ndarray = np.zeros(0, dtype=np.uint64)
        self._prompts: set[str] = set()
        self._exact_gen: int | None = None  # Warehouse.generation the map is exact for

    @staticmethod
    def _key(prompt_id: str, mask_hash: str) -> bytes:
        return hashlib.blake2b(f"{prompt_id}\x00{mask_hash}".encode(), digest_size=16).digest()

    @staticmethod
    def _metric_key(request_hash_: str, reference_hash: str) -> bytes:
        return hashlib.blake2b(
            f"{request_hash_}\x00{reference_hash}".encode(), digest_size=16
        ).digest()

    @staticmethod
    def _digest(request_hash_: str) -> int:
        return int.from_bytes(
            hashlib.blake2b(request_hash_.encode(), digest_size=8).digest(), "little"
        )

    def __len__(self) -> int:
        return len(self._map) + len(self._masks)

    @property
    def answers(self) -> int:
        return len(self._answers) + int(np.count_nonzero(self._flags & self._STORED))

    def held_bytes(self) -> int:
        """Bytes of the warmed arrays (the dicts of later entries not counted)."""
        arrays = (
            self._masks.keys,
            self._masks.first,
            self._mask_rh,
            self._resp.keys,
            self._resp.first,
            self._flags,
            self._cost,
            self._text_at,
            self._text_len,
            self._mvals.keys,
            self._mvals.first,
            self._mname,
            self._mvalue,
            self._elsewhere,
        )
        return sum(a.nbytes for a in arrays)

    def get(self, prompt_id: str, mask_hash: str) -> str | None:
        key = self._key(prompt_id, mask_hash)
        rh = self._map.get(key)
        if rh is not None:
            return rh
        i = self._masks.find(key)
        return f"{SCHEME}:{self._mask_rh[i].tobytes().hex()}" if i >= 0 else None

    def add(self, prompt_id: str, mask_hash: str, request_hash: str) -> None:
        key = self._key(prompt_id, mask_hash)
        if key not in self._map:
            i = self._masks.find(key)
            raw = _raw_hash(request_hash)
            if i >= 0 and raw is not None and self._mask_rh[i].tobytes() == raw:
                return  # already held as it is
        self._map[key] = request_hash

    def _answer_at(self, request_hash_: str) -> int:
        raw = _raw_hash(request_hash_)
        if raw is None:
            return -1
        i = self._resp.find(raw)
        return i if i >= 0 and self._flags[i] & self._STORED else -1

    def answer(self, request_hash_: str) -> dict[str, Any] | None:
        """The stored answer as a response row (the fields :func:`pay` reads), if held."""
        a = self._answers.get(request_hash_)
        if a is None:
            i = self._answer_at(request_hash_)
            if i < 0:
                return None
            assert self._texts is not None
            f = int(self._flags[i])
            text = self._texts.read(int(self._text_at[i]), int(self._text_len[i]))
            a = (text, bool(f & self._OK), float(self._cost[i]))
        return {"request_hash": request_hash_, "answer": a[0], "ok": a[1], "cost_usd": a[2]}

    def _holds_answer(self, request_hash_: str) -> bool:
        return request_hash_ in self._answers or self._answer_at(request_hash_) >= 0

    def elsewhere(self, request_hash_: str) -> bool:
        """Answered under this key for a prompt outside the run (only DuckDB has it)."""
        if not len(self._elsewhere) or self._holds_answer(request_hash_):
            return False
        d = np.uint64(self._digest(request_hash_))
        i = int(np.searchsorted(self._elsewhere, d))
        return i < len(self._elsewhere) and self._elsewhere[i] == d

    def metrics(
        self, key: tuple[str, str] | None, names: Mapping[str, str]
    ) -> dict[str, float] | None:
        """Cached values of (request hash, reference hash), by component (``names``:
        component -> stored metric name, as :func:`metric_cache.load` takes them)."""
        if key is None:
            return None
        held: dict[str, float] = {}
        if len(self._mvals):
            for i in self._mvals.range(self._metric_key(*key)):
                held[self._mnames[int(self._mname[i])]] = float(self._mvalue[i])
        held.update(self._metrics.get(key, {}))
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
                if not self._holds_answer(rh):  # the first stored row wins (INSERT OR IGNORE)
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
                if key not in self._map and self._masks.find(key) < 0:
                    self._map[key] = row["request_hash"]

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
        warehouse's entries. Each query streams (no join holds the answers' text)."""
        import pyarrow as pa

        self._prompts = set(prompt_ids)
        con.register("_mask_map_prompts", pa.table({"prompt_id": list(self._prompts)}))
        try:
            n = self._warm_masks(con)
            self._warm_answers(con)
            self._warm_metrics(con, list(dict.fromkeys(metric_names)))
        finally:
            con.unregister("_mask_map_prompts")
        if warehouse is not None:
            warehouse.add_listener(self.absorb)
            self._exact_gen = warehouse.generation
        return n

    def _warm_masks(self, con: Any) -> int:
        cur = con.execute(
            "SELECT m.prompt_id, m.mask_hash, m.request_hash"
            " FROM masks m SEMI JOIN _mask_map_prompts p USING (prompt_id)"
            " WHERE m.teacher_key = ?",
            [self.teacher_key],
        )
        keys: list[bytes] = []
        hashes: list[bytes] = []
        n = 0
        while batch := cur.fetchmany(_WARM_BATCH):
            kb, hb = [], []
            for pid, mh, rh in batch:
                raw = _raw_hash(rh)
                if raw is None:
                    self._map[self._key(pid, mh)] = rh
                else:
                    kb.append(self._key(pid, mh))
                    hb.append(raw)
            keys.append(b"".join(kb))
            hashes.append(b"".join(hb))
            n += len(batch)
        self._masks = _Sorted(_words(keys, 2))
        del keys
        self._mask_rh = _words(hashes, 4)[self._masks.order]
        self._masks.order = np.zeros(0, dtype=np.int64)
        return n

    def _warm_answers(self, con: Any) -> None:
        """Every answer under the key: the run's prompts' in memory (a mask never recorded
        may reach one), the others' as digests (left to DuckDB); then the few answers of other
        prompts that the run's masks lead to."""
        import pyarrow as pa

        self._texts = self._texts or _TextStore()
        cur = con.execute(
            "SELECT r.request_hash, r.answer, r.ok, r.cost_usd, p.prompt_id IS NOT NULL"
            " FROM responses r LEFT JOIN _mask_map_prompts p USING (prompt_id)"
            " WHERE r.teacher_key = ?",
            [self.teacher_key],
        )
        parts: list[tuple[bytes, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        elsewhere: list[int] = []
        theirs: list[bytes] = []  # raw hashes of other prompts' answers, to match the masks
        while batch := cur.fetchmany(_WARM_BATCH):
            mine = [row for row in batch if row[4]]
            for rh, _, _, _, ours in batch:
                if not ours:
                    elsewhere.append(self._digest(rh))
                    raw = _raw_hash(rh)
                    if raw is not None:
                        theirs.append(raw)
            parts.append(self._answer_part(mine))
        if theirs and len(self._mask_rh):
            # Masks of the run that lead to another prompt's answer: load those answers too.
            other = _Sorted(_words(theirs, 4))
            wanted = self._mask_rh[other.contains_rows(self._mask_rh)]
            if len(wanted):
                hexes = [f"{SCHEME}:{row.tobytes().hex()}" for row in np.unique(wanted, axis=0)]
                con.register("_mask_map_wanted", pa.table({"request_hash": hexes}))
                try:
                    rows = con.execute(
                        "SELECT r.request_hash, r.answer, r.ok, r.cost_usd, true FROM responses r"
                        " SEMI JOIN _mask_map_wanted w USING (request_hash)"
                        " WHERE r.teacher_key = ?",
                        [self.teacher_key],
                    ).fetchall()
                finally:
                    con.unregister("_mask_map_wanted")
                parts.append(self._answer_part(rows))
        del theirs
        self._elsewhere = np.unique(np.array(elsewhere, dtype=np.uint64))
        del elsewhere
        raws = [p[0] for p in parts]
        self._resp = _Sorted(_words(raws, 4))
        del raws
        order = self._resp.order
        self._resp.order = np.zeros(0, dtype=np.int64)
        self._flags = np.concatenate([p[1] for p in parts] or [np.zeros(0, np.uint8)])[order]
        self._cost = np.concatenate([p[2] for p in parts] or [np.zeros(0)])[order]
        self._text_at = np.concatenate([p[3] for p in parts] or [np.zeros(0, np.int64)])[order]
        self._text_len = np.concatenate([p[4] for p in parts] or [np.zeros(0, np.int32)])[order]

    def _answer_part(
        self, rows: Sequence[tuple[Any, ...]]
    ) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One batch of response rows: raw hashes, flags, costs, text offsets and lengths;
        a hash of another form goes to the dict."""
        assert self._texts is not None
        raws, flags, costs, texts = [], [], [], []
        for rh, answer, ok, cost, _ in rows:
            raw = _raw_hash(rh)
            if raw is None:
                self._answers.setdefault(rh, (answer, bool(ok), float(cost or 0.0)))
                continue
            raws.append(raw)
            flags.append(
                self._STORED | (self._OK if ok else 0) | (self._NONE if answer is None else 0)
            )
            costs.append(float(cost or 0.0))
            texts.append(answer)
        at, lens = self._texts.append(texts)
        return (
            b"".join(raws),
            np.array(flags, dtype=np.uint8),
            np.array(costs, dtype=np.float64),
            at,
            lens,
        )

    def _warm_metrics(self, con: Any, names: list[str]) -> None:
        """Cached metric values of the answers the map holds (those of the run's prompts and
        those its masks lead to), by a digest of (request hash, reference hash)."""
        if not names or not (len(self._resp) or self._answers or len(self._mask_rh)):
            return
        cur = con.execute(
            "SELECT v.request_hash, v.reference_hash, v.metric, v.value FROM metric_values v"
            f" WHERE v.metric IN ({', '.join(['?'] * len(names))}) AND v.request_hash IN ("
            " SELECT r.request_hash FROM responses r SEMI JOIN _mask_map_prompts USING (prompt_id)"
            " WHERE r.teacher_key = ? UNION"
            " SELECT m.request_hash FROM masks m SEMI JOIN _mask_map_prompts USING (prompt_id)"
            " WHERE m.teacher_key = ?)",
            [*names, self.teacher_key, self.teacher_key],
        )
        self._mnames = names
        index = {n: i for i, n in enumerate(names)}
        keys: list[bytes] = []
        name_ix: list[np.ndarray] = []
        values: list[np.ndarray] = []
        while batch := cur.fetchmany(_WARM_BATCH):
            keys.append(b"".join(self._metric_key(a, b) for a, b, _, _ in batch))
            name_ix.append(np.array([index[c] for _, _, c, _ in batch], dtype=np.uint16))
            values.append(np.array([float(d) for _, _, _, d in batch], dtype=np.float64))
        self._mvals = _Sorted(_words(keys, 2))
        order = self._mvals.order
        self._mvals.order = np.zeros(0, dtype=np.int64)
        self._mname = np.concatenate(name_ix or [np.zeros(0, np.uint16)])[order]
        self._mvalue = np.concatenate(values or [np.zeros(0)])[order]


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

    @staticmethod
    def concat(parts: Sequence[Lookup], teacher_key: str) -> Lookup:
        """One lookup of every part's wanted, in order (parts decided one after another)."""
        wanted: list[Wanted] = []
        stored: dict[str, dict[str, Any]] = {}
        messages: dict[int, list[dict[str, str]]] = {}
        fresh: set[int] = set()
        for p in parts:
            base = len(wanted)
            wanted += p.wanted
            stored.update(p.stored)
            messages.update({base + i: m for i, m in p.messages.items()})
            fresh.update(base + i for i in p.fresh)
        return Lookup(wanted, teacher_key, stored, messages, fresh)

    def forget(self, request_hashes: set[str]) -> list[int]:
        """Treat ``request_hashes`` as not stored (requests this step already sent: their
        answers reach the warehouse during the step, and are paid, not replayed); the
        positions of the wanted that change."""
        gone = [rh for rh in self.stored if rh in request_hashes]
        for rh in gone:
            del self.stored[rh]
        return [i for i, w in enumerate(self.wanted) if w.request_hash in request_hashes]


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


def plan_jobs(found: Lookup, skip: Iterable[str] = ()) -> dict[str, Job]:
    """The requests to pay for: each miss once (those in ``skip`` not at all: already sent)."""
    jobs: dict[str, Job] = {}
    skip = set(skip)
    for i, w in enumerate(found.wanted):
        rh = w.request_hash
        assert rh is not None
        if rh not in found.stored and rh not in jobs and rh not in skip:
            jobs[rh] = Job(
                TeacherRequest(rh, found.messages[i], text=w.text, fields=w.fields),
                "compressed",
                w.prompt_id,
                w.mask_hash,
            )
    return jobs


async def pay(
    found: Lookup, *, caller: Caller, concurrency: int, mask_map: MaskMap | None = None
) -> ReplayStats:
    """Phase two, with no connection held: replay the stored answers, pay once per miss."""
    jobs = plan_jobs(found)
    cost_before = caller.stats.cost_usd
    t0 = time.perf_counter()
    results = await caller.run(list(jobs.values()), concurrency=concurrency) if jobs else {}
    return settle(
        found,
        results,
        caller=caller,
        mask_map=mask_map,
        cost_before=cost_before,
        teacher_seconds=time.perf_counter() - t0,
    )


def settle(
    found: Lookup,
    results: Mapping[str, TeacherResult],
    *,
    caller: Caller,
    mask_map: MaskMap | None,
    cost_before: float,
    teacher_seconds: float,
) -> ReplayStats:
    """Each :class:`Wanted`'s answer, from what is stored or what was paid for (``results``
    of the caller); the step's hits, in-step duplicates and spend."""
    st = ReplayStats(teacher_seconds=teacher_seconds)
    wanted, stored = found.wanted, found.stored
    counted: set[str] = set()
    for i, w in enumerate(wanted):
        rh = w.request_hash
        if rh in stored:
            w.cache_hit = True
            if rh not in counted:
                counted.add(rh)
                st.hits_ledger.append((rh, stored[rh]["cost_usd"] or 0.0))
            if i in found.fresh:
                st.new_masks.append(
                    {
                        "prompt_id": w.prompt_id,
                        "mask_hash": w.mask_hash,
                        "teacher_key": found.teacher_key,
                        "request_hash": rh,
                    }
                )
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
