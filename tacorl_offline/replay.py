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

import contextlib
import hashlib
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np

from tacorl_offline.batch_sql import chunks, placeholders
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


_WARM_BATCH = 8_192  # rows per Arrow batch while warming (bounds the transient arrays)

# What DuckDB may hold while warming beyond what it holds already. Every warm-up query is a
# filtered scan, a count or a primary-key IN list (no join, sort or hash table over the
# run), streamed in Arrow batches on one thread, so DuckDB pins a few blocks per column at a
# time whatever the table's size: the limit bounds its buffer pool, and no number of rows
# can make a query fail under it. Only a single value larger than the limit cannot be read
# under it (an answer of megabytes): then the warm-up starts over under DuckDB's default
# limit (:meth:`MaskMap.warm`). Without the limit the blocks the scans read stay cached
# until the connection closes (about 190 MB at 1M answers, bench/README.md).
_WARM_MEMORY = 16 << 20

_HEX = np.full(256, 255, dtype=np.uint8)  # ASCII byte -> its hex digit, 255: not one
for _digits, _first in ((b"0123456789", 0), (b"abcdef", 10), (b"ABCDEF", 10)):
    _HEX[np.frombuffer(_digits, dtype=np.uint8)] = np.arange(_first, _first + len(_digits))
_PREFIX = np.frombuffer(f"{SCHEME}:".encode(), dtype=np.uint8)
_HASH_LEN = len(_PREFIX) + 64


def _raw_hash(h: str) -> bytes | None:
    """The 32 bytes of a ``v1:<64 hex>`` hash (:func:`~tacorl_offline.hashing.hash_obj`), or
    None for any other form (kept as a string instead)."""
    if len(h) != _HASH_LEN or not h.startswith(f"{SCHEME}:"):
        return None
    try:
        raw = bytes.fromhex(h[3:])
    except ValueError:
        return None
    return raw if len(raw) == 32 else None  # fromhex skips spaces


def _utf8(strings: Any) -> tuple[np.ndarray, np.ndarray]:
    """An Arrow string array's offsets (len + 1) and UTF-8 bytes, as numpy views."""
    import pyarrow as pa

    if not (pa.types.is_string(strings.type) or pa.types.is_large_string(strings.type)):
        strings = strings.cast(pa.large_string())
    wide = pa.types.is_large_string(strings.type)
    dtype = np.dtype(np.int64 if wide else np.int32)
    _, offs, data = strings.buffers()
    offsets = np.frombuffer(
        offs, dtype=dtype, count=len(strings) + 1, offset=strings.offset * dtype.itemsize
    )
    return offsets, np.frombuffer(data, dtype=np.uint8) if data else np.zeros(0, np.uint8)


def raw_hashes(strings: Any) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_raw_hash` over an Arrow string array, vectorised: the 32 bytes of each
    ``v1:<64 hex>`` hash as four little-endian uint64 words (n, 4) (zeros for a string of
    another form or a null), and whether each string has that form."""
    n = len(strings)
    words = np.zeros((n, 4), dtype="<u8")
    offsets, data = _utf8(strings)
    ok = np.diff(offsets) == _HASH_LEN
    if strings.null_count:
        ok &= strings.is_valid().to_numpy(zero_copy_only=False)
    at = np.flatnonzero(ok)
    if not len(at):
        return words, ok
    if len(at) == n:  # all of the form's length: the bytes are one block
        rows = data[offsets[0] : offsets[0] + n * _HASH_LEN].reshape(n, _HASH_LEN)
    else:
        rows = data[offsets[at][:, None] + np.arange(_HASH_LEN)]
    digits = _HEX[rows[:, len(_PREFIX) :]]
    good = (rows[:, : len(_PREFIX)] == _PREFIX).all(axis=1) & (digits != 255).all(axis=1)
    raw = (digits[good, 0::2] << 4) | digits[good, 1::2]
    words[at[good]] = np.ascontiguousarray(raw).view("<u8")
    ok[at[~good]] = False
    return words, ok


class _Grow:
    """A 1-D array filled batch by batch. Allocated at ``capacity`` (an upper bound when
    known): pages past what is written are never touched, so an over-estimate costs address
    space, not memory; when full it doubles."""

    def __init__(self, capacity: int, dtype: Any) -> None:
        self._a = np.empty(capacity, dtype=dtype)
        self.n = 0

    def extend(self, values: np.ndarray) -> None:
        end = self.n + len(values)
        if end > len(self._a):
            bigger = np.empty(max(end, 2 * len(self._a)), dtype=self._a.dtype)
            bigger[: self.n] = self._a[: self.n]
            self._a = bigger
        self._a[self.n : end] = values
        self.n = end

    def array(self) -> np.ndarray:
        return self._a[: self.n]


class _Sorted:
    """Fixed-width binary keys in sorted order, held as ``width`` arrays of little-endian
    uint64 words (array ``j`` holds word ``j`` of every key): the first word's array is
    binary-searched as it is, and the sort permutes one word array at a time in place (no
    second copy of the keys). ``order`` is the permutation applied, for the caller's parallel
    columns. A few bytes a key, no Python object per key."""

    def __init__(self, cols: Sequence[np.ndarray]) -> None:
        self.cols = list(cols)
        self._pack = struct.Struct(f"<{len(self.cols)}Q").pack
        n = len(self.cols[0])
        self.order = np.lexsort(self.cols[::-1]) if n else np.zeros(0, dtype=np.int64)
        for c in self.cols:
            c[:] = c[self.order]

    @classmethod
    def empty(cls, width: int) -> _Sorted:
        return cls([np.zeros(0, dtype="<u8") for _ in range(width)])

    def __len__(self) -> int:
        return len(self.cols[0])

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.cols)

    def key(self, i: int) -> bytes:
        return self._pack(*[c.item(i) for c in self.cols])

    def range(self, key: bytes) -> range:
        """Positions whose key equals ``key`` (at most one for unique keys)."""
        n = len(self)
        if not n:
            return range(0)
        first = self.cols[0]
        w0 = int.from_bytes(key[:8], "little")
        lo = int(first.searchsorted(np.uint64(w0)))  # a Python int would cast the array
        hi = lo
        while hi < n and first.item(hi) == w0:
            hi += 1
        hits = [i for i in range(lo, hi) if self.key(i) == key]
        return range(hits[0], hits[-1] + 1) if hits else range(0)

    def find(self, key: bytes) -> int:
        r = self.range(key)
        return r.start if r else -1

    def find_rows(self, rows: np.ndarray) -> np.ndarray:
        """Per row of ``rows`` (n, width) words, the position of that key or -1 (vectorised;
        a key sharing its first word with another may read as absent: 2^-64 odds a pair, and
        every caller treats absent as "not in memory", never as "not stored")."""
        if not len(self) or not len(rows):
            return np.full(len(rows), -1, dtype=np.int64)
        at = np.searchsorted(self.cols[0], rows[:, 0]).clip(0, len(self) - 1)
        hit = np.ones(len(rows), dtype=bool)
        for j, c in enumerate(self.cols):
            hit &= c[at] == rows[:, j]
        return np.where(hit, at, -1)


class _TextStore:
    """Answer texts in an unlinked temporary file, read back on demand: the map holds an
    offset and a length per answer, not the text (page cache, not the process, keeps them)."""

    def __init__(self) -> None:
        # Held for the map's lifetime (closed with it), not a with-block.
        self._f = tempfile.TemporaryFile(prefix="tacorl-answers-")  # noqa: SIM115
        self._size = 0
        self._lock = threading.Lock()

    def append(self, texts: Any) -> tuple[np.ndarray, np.ndarray]:
        """Offsets and lengths (-1: null) of an Arrow string array's values, written at the
        end of the file as one block of the UTF-8 bytes Arrow holds."""
        offsets, data = _utf8(texts)
        lens = np.diff(offsets).astype(np.int32)
        if texts.null_count:
            lens[~texts.is_valid().to_numpy(zero_copy_only=False)] = -1
        with self._lock:
            at = self._size + (offsets[:-1] - offsets[0]).astype(np.int64)
            block = data[offsets[0] : offsets[-1]] if len(texts) else data[:0]
            self._f.seek(self._size)
            self._f.write(memoryview(block))
            self._f.flush()
            self._size += len(block)
        return at, lens

    def read(self, offset: int, length: int) -> str | None:
        if length < 0:
            return None
        with self._lock:
            self._f.seek(offset)
            return self._f.read(length).decode("utf-8")

    def close(self) -> None:
        self._f.close()


_STORED, _OK, _NONE = 1, 2, 4  # answer flags


class _AnswerColumns:
    """The answer columns while warming, filled batch by batch (:class:`_Grow`)."""

    def __init__(self, capacity: int) -> None:
        self.keys = [_Grow(capacity, "<u8") for _ in range(4)]
        self.flags = _Grow(capacity, np.uint8)
        self.cost = _Grow(capacity, np.float64)
        self.text_at = _Grow(capacity, np.int64)
        self.text_len = _Grow(capacity, np.int32)

    def append(
        self, batch: Any, texts: _TextStore, other_form: dict[str, tuple[str | None, bool, float]]
    ) -> None:
        """Response rows (request_hash, answer, ok, cost_usd, ...), their text into ``texts``;
        a hash not of the ``v1:<hex>`` form goes to ``other_form`` (the map's dict)."""
        import pyarrow as pa

        words, v1 = raw_hashes(batch.column(0))
        if not v1.all():
            odd = batch.filter(pa.array(~v1))
            for rh, answer, ok, cost in zip(
                *(odd.column(i).to_pylist() for i in range(4)), strict=True
            ):
                other_form.setdefault(rh, (answer, bool(ok), float(cost or 0.0)))
            batch, words = batch.filter(pa.array(v1)), words[v1]
        answer = batch.column(1)
        at, lens = texts.append(answer)
        ok = batch.column(2).to_numpy(zero_copy_only=False).astype(bool)
        none = answer.is_null().to_numpy(zero_copy_only=False)
        self.extend(
            words,
            _STORED | np.where(ok, _OK, 0) | np.where(none, _NONE, 0),
            batch.column(3).fill_null(0.0).to_numpy(zero_copy_only=False),
            at,
            lens,
        )

    def extend(
        self,
        words: np.ndarray,
        flags: np.ndarray,
        cost: np.ndarray,
        text_at: np.ndarray,
        text_len: np.ndarray,
    ) -> None:
        for j, k in enumerate(self.keys):
            k.extend(words[:, j])
        self.flags.extend(flags)
        self.cost.extend(cost)
        self.text_at.extend(text_at)
        self.text_len.extend(text_len)


def _warm_settings(con: Any) -> dict[str, str]:
    """The warm-up's DuckDB settings: one thread, and a memory limit :data:`_WARM_MEMORY`
    above what DuckDB holds now (rows a write connection has not checkpointed yet stay held,
    and a limit below them could not be set)."""
    held = _count(con, "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory()", [])
    return {"memory_limit": f"{(held + _WARM_MEMORY) >> 10}KiB", "threads": "1"}


@contextlib.contextmanager
def _settings(con: Any, settings: Mapping[str, str]) -> Iterator[None]:
    """DuckDB ``settings`` for the block, reset to DuckDB's defaults after it (the warehouse
    opens its connections with the defaults for these: :meth:`Warehouse.connect`)."""
    try:
        for k, v in settings.items():
            con.execute(f"SET {k} = '{v}'")
        yield
    finally:
        for k in settings:
            con.execute(f"RESET {k}")


def _scan(con: Any, sql: str, params: Sequence[Any]) -> Iterator[Any]:
    """The rows of ``sql`` as Arrow record batches, streamed (never materialized whole)."""
    yield from con.sql(sql, params=list(params)).to_arrow_reader(_WARM_BATCH)


def _count(con: Any, sql: str, params: Sequence[Any]) -> int:
    return int(con.execute(sql, list(params)).fetchall()[0][0])


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
    no Python object per entry: a mask is a 16-byte digest of the pair and the position of its
    answer in the answer arrays (4 bytes); an answer is its 32-byte request hash, a flag byte,
    its cost, and the offset and length of its text in an unlinked temporary file
    (:class:`_TextStore`), read back when a lookup replays it (a 64-key lookup reads at most 64
    short texts from the page cache); a metric value is a 16-byte digest of (request hash,
    reference hash), a name index and the value. About 75 bytes an answer, plus 26 a metric
    value. What is learned later (a step's new masks and answers, metric values) goes into
    small dicts beside them, as does any hash not of the ``v1:<hex>`` form and a mask whose
    answer is not stored. The warm-up's peak is what bounds ``train``'s memory
    (bench/warehouse_scale.py measures it): see :meth:`warm`.
    """

    def __init__(self, teacher_key: str) -> None:
        self.teacher_key = teacher_key
        # Learned after warm() (and hashes of another form): plain dicts.
        self._map: dict[bytes, str] = {}
        self._answers: dict[str, tuple[str | None, bool, float]] = {}
        self._metrics: dict[tuple[str, str], dict[str, float]] = {}
        self._unwarm()
        self._prompts: set[str] = set()
        self._exact_gen: int | None = None  # Warehouse.generation the map is exact for

    def _unwarm(self) -> None:
        """The warmed arrays, empty (see the class docstring)."""
        self._masks = _Sorted.empty(2)
        self._mask_at = np.zeros(0, dtype=np.int32)  # its answer's position in _resp
        self._resp = _Sorted.empty(4)
        self._flags = np.zeros(0, dtype=np.uint8)
        self._cost = np.zeros(0, dtype=np.float64)
        self._text_at = np.zeros(0, dtype=np.int64)
        self._text_len = np.zeros(0, dtype=np.int32)
        self._texts: _TextStore | None = None
        self._mvals = _Sorted.empty(2)
        self._mname = np.zeros(0, dtype=np.uint16)
        self._mvalue = np.zeros(0, dtype=np.float64)
        self._mnames: list[str] = []
        # Sorted 64-bit digests (8 bytes each, however many other prompts' answers there are).
        self._elsewhere: np.ndarray = np.zeros(0, dtype=np.uint64)

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
        return len(self._answers) + int(np.count_nonzero(self._flags & _STORED))

    def held_bytes(self) -> int:
        """Bytes of the warmed arrays (the dicts of later entries not counted)."""
        arrays = (
            self._mask_at,
            self._flags,
            self._cost,
            self._text_at,
            self._text_len,
            self._mname,
            self._mvalue,
            self._elsewhere,
        )
        keys = self._masks.nbytes + self._resp.nbytes + self._mvals.nbytes
        return keys + sum(a.nbytes for a in arrays)

    def get(self, prompt_id: str, mask_hash: str) -> str | None:
        key = self._key(prompt_id, mask_hash)
        rh = self._map.get(key)
        if rh is not None:
            return rh
        i = self._masks.find(key)
        return f"{SCHEME}:{self._resp.key(int(self._mask_at[i])).hex()}" if i >= 0 else None

    def add(self, prompt_id: str, mask_hash: str, request_hash: str) -> None:
        key = self._key(prompt_id, mask_hash)
        if key not in self._map:
            i = self._masks.find(key)
            raw = _raw_hash(request_hash)
            if i >= 0 and raw is not None and self._resp.key(int(self._mask_at[i])) == raw:
                return  # already held as it is
        self._map[key] = request_hash

    def _answer_at(self, request_hash_: str) -> int:
        raw = _raw_hash(request_hash_)
        if raw is None:
            return -1
        i = self._resp.find(raw)
        return i if i >= 0 and self._flags[i] & _STORED else -1

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
            a = (text, bool(f & _OK), float(self._cost[i]))
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
        warehouse's entries.

        Memory: the peak of the warm-up is what ``train`` is sized by, so each query is a
        filtered scan streamed in Arrow batches under a small DuckDB memory limit
        (:func:`_warm_settings`), and what it keeps is picked out here, against the run's
        prompts (Arrow's ``is_in``) and the map's own sorted arrays (``searchsorted``), not
        by joins in DuckDB; each column fills a preallocated array and is sorted in place."""
        import pyarrow as pa

        self._prompts = set(prompt_ids)
        prompts = pa.array(sorted(self._prompts), type=pa.string())
        names = list(dict.fromkeys(metric_names))
        try:
            with _settings(con, _warm_settings(con)):
                n = self._load(con, prompts, names)
        except duckdb.OutOfMemoryException:
            # A single value larger than the limit (an answer of megabytes): start over
            # under DuckDB's default limit.
            if self._texts is not None:
                self._texts.close()
            self._map.clear()
            self._answers.clear()
            self._unwarm()
            with _settings(con, {"threads": "1"}):
                n = self._load(con, prompts, names)
        if warehouse is not None:
            warehouse.add_listener(self.absorb)
            self._exact_gen = warehouse.generation
        return n

    def _load(self, con: Any, prompts: Any, names: list[str]) -> int:
        self._warm_answers(con, prompts)
        n = self._warm_masks(con, prompts)
        self._warm_metrics(con, names)
        return n

    def _warm_answers(self, con: Any, prompts: Any) -> None:
        """Every answer under the key, in one scan: the run's prompts' into the arrays (a mask
        never recorded may reach one), the others' as 64-bit digests (left to DuckDB)."""
        import pyarrow.compute as pc

        texts = self._texts = self._texts or _TextStore()
        where = ("FROM responses WHERE teacher_key = ?", [self.teacher_key])
        cols = _AnswerColumns(_count(con, f"SELECT count(*) {where[0]}", where[1]))
        elsewhere = _Grow(0, np.uint64)
        sql = f"SELECT request_hash, answer, ok, cost_usd, prompt_id {where[0]}"
        for batch in _scan(con, sql, where[1]):
            mine = pc.is_in(batch.column(4), value_set=prompts)
            theirs = batch.column(0).filter(pc.invert(mine)).to_pylist()
            elsewhere.extend(np.array([self._digest(rh) for rh in theirs], dtype=np.uint64))
            cols.append(batch.filter(mine), texts, self._answers)
        self._elsewhere = np.unique(elsewhere.array())
        del elsewhere
        self._set_answers(cols)

    def _set_answers(self, cols: _AnswerColumns) -> np.ndarray:
        """The answer arrays, sorted by request hash, from ``cols``; the order applied."""
        self._resp = _Sorted([k.array() for k in cols.keys])
        order = self._resp.order
        self._resp.order = np.zeros(0, dtype=np.int64)
        self._flags = cols.flags.array()[order]
        self._cost = cols.cost.array()[order]
        self._text_at = cols.text_at.array()[order]
        self._text_len = cols.text_len.array()[order]
        return order

    def _warm_masks(self, con: Any, prompts: Any) -> int:
        """The run's masks, each pointing at its answer's position; the few whose answer
        belongs to another prompt have it loaded too (by primary key); a mask whose answer
        is not stored at all stays in the dict."""
        import pyarrow.compute as pc

        where = ("FROM masks WHERE teacher_key = ?", [self.teacher_key])
        cap = _count(con, f"SELECT count(*) {where[0]}", where[1])
        keys = [_Grow(cap, "<u8") for _ in range(2)]
        at = _Grow(cap, np.int64)
        lost = [_Grow(0, "<u8") for _ in range(4)]  # request hashes not among the answers
        n = 0
        sql = f"SELECT prompt_id, mask_hash, request_hash {where[0]}"
        for batch in _scan(con, sql, where[1]):
            batch = batch.filter(pc.is_in(batch.column(0), value_set=prompts))
            n += batch.num_rows
            pids, mhs = batch.column(0).to_pylist(), batch.column(1).to_pylist()
            digests = b"".join(self._key(p, m) for p, m in zip(pids, mhs, strict=True))
            kw = np.frombuffer(digests, dtype="<u8").reshape(-1, 2)
            words, v1 = raw_hashes(batch.column(2))
            if not v1.all():
                for i in np.flatnonzero(~v1):
                    self._map[kw[i].tobytes()] = batch.column(2)[int(i)].as_py()
                kw, words = kw[v1], words[v1]
            pos = self._resp.find_rows(words)
            for j in range(2):
                keys[j].extend(kw[:, j])
            at.extend(pos)
            for j in range(4):
                lost[j].extend(words[pos < 0, j])
        positions = at.array()
        lost_at = np.flatnonzero(positions < 0)
        kcols = [k.array() for k in keys]
        if len(lost_at):
            lost_words = np.stack([w.array() for w in lost], axis=1)
            del lost
            self._load_answers(con, lost_words, positions)
            positions[lost_at] = self._resp.find_rows(lost_words)
            gone = positions[lost_at] < 0
            if gone.any():  # a mask whose answer is not stored (never expected): in the dict
                for i, w in zip(lost_at[gone], lost_words[gone], strict=True):
                    key = np.array([c[i] for c in kcols], dtype="<u8").tobytes()
                    self._map[key] = f"{SCHEME}:{w.tobytes().hex()}"
                keep = positions >= 0
                kcols, positions = [c[keep] for c in kcols], positions[keep]
        self._masks = _Sorted(kcols)
        index = np.int32 if len(self._resp) < 2**31 else np.int64
        self._mask_at = positions[self._masks.order].astype(index)
        self._masks.order = np.zeros(0, dtype=np.int64)
        return n

    def _load_answers(self, con: Any, words: np.ndarray, positions: np.ndarray) -> None:
        """The answers of other prompts that the run's masks lead to (``words``: their request
        hashes), by primary key, added to the answer arrays (a copy of them: a rare path);
        ``positions`` (of the masks' answers) moved to the new order."""
        import pyarrow.compute as pc

        assert self._texts is not None  # answers are warmed first
        hexes = [f"{SCHEME}:{w.tobytes().hex()}" for w in np.unique(words, axis=0)]
        cols = _AnswerColumns(len(self._resp) + len(hexes))
        cols.extend(
            np.stack(self._resp.cols, axis=1),
            self._flags,
            self._cost,
            self._text_at,
            self._text_len,
        )
        for chunk in chunks(hexes):
            sql = (
                "SELECT request_hash, answer, ok, cost_usd, teacher_key FROM responses"
                f" WHERE request_hash IN ({placeholders(len(chunk))})"
            )
            for batch in _scan(con, sql, chunk):
                ours = batch.filter(pc.equal(batch.column(4), self.teacher_key))
                cols.append(ours, self._texts, self._answers)
        order = self._set_answers(cols)
        moved = np.empty_like(order)
        moved[order] = np.arange(len(order))
        held = positions >= 0
        positions[held] = moved[positions[held]]

    def _warm_metrics(self, con: Any, names: list[str]) -> None:
        """Cached metric values of the answers the map holds (those of the run's prompts and
        those its masks lead to), by a digest of (request hash, reference hash): one scan of
        the metrics' rows, kept where the request hash is among the map's answers."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if not names or not (len(self._resp) or self._answers or self._map):
            return
        self._mnames = names
        elsewhere = set(self._answers) | set(self._map.values())  # hashes beside the arrays
        where = (f"FROM metric_values WHERE metric IN ({placeholders(len(names))})", names)
        cap = _count(con, f"SELECT count(*) {where[0]}", where[1])
        keys = [_Grow(cap, "<u8") for _ in range(2)]
        name_ix, values = _Grow(cap, np.uint16), _Grow(cap, np.float64)
        value_set = pa.array(names, type=pa.string())
        sql = f"SELECT request_hash, reference_hash, metric, value {where[0]}"
        for batch in _scan(con, sql, where[1]):
            words, v1 = raw_hashes(batch.column(0))
            keep = v1 & (self._resp.find_rows(words) >= 0)
            if elsewhere and not keep.all():
                rest = batch.column(0).filter(pa.array(~keep)).to_pylist()
                keep[~keep] = [rh in elsewhere for rh in rest]
            batch = batch.filter(pa.array(keep))
            rhs, refs = batch.column(0).to_pylist(), batch.column(1).to_pylist()
            digests = b"".join(self._metric_key(a, b) for a, b in zip(rhs, refs, strict=True))
            kw = np.frombuffer(digests, dtype="<u8").reshape(-1, 2)
            for j in range(2):
                keys[j].extend(kw[:, j])
            ix = pc.index_in(batch.column(2), value_set=value_set)
            name_ix.extend(ix.to_numpy(zero_copy_only=False))
            values.extend(batch.column(3).to_numpy(zero_copy_only=False))
        self._mvals = _Sorted([k.array() for k in keys])
        order = self._mvals.order
        self._mvals.order = np.zeros(0, dtype=np.int64)
        self._mname = name_ix.array()[order]
        self._mvalue = values.array()[order]


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
