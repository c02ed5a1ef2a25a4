"""Warehouse work per training step at 10k, 100k and 1M cached answers, side by side.

Design decisions:

- **Built through the project's own insert path.** Prompts go in through ``store_records``
  (ingest); every answer's ``responses``, ``masks`` and ``api_calls`` rows are made by the
  real :class:`~tacorl_offline.calls.Caller` row builders from real hashes (``mask_hash``,
  ``request_hash`` of the rendered messages) and inserted with ``insert_rows`` in Arrow
  batches, plus one ``samples`` row per answer and one ``steps`` row per 64. The builds are
  cached under ``bench/.cache`` (gitignored); each size extends a copy of the one below.
- **Measured on a scratch copy**, so the cache stays pristine: for every size, the
  operations run interleaved (size A op 1, size B op 1, ...) for 5 rounds and the median is
  printed, next to the load average.
- **Per-step warehouse work** = what the trainer does per step: the 64-key lookup decided
  in memory (the run's exact :class:`~tacorl_offline.replay.MaskMap` plus the journal tail,
  no open), then one write open that flushes a 64-answer journal and writes the step's rows
  in one transaction. Its share is taken of a MiniLM training step (sample 8 prompts, loss,
  backward, AdamW step) measured in the same run. The DuckDB lookups the trainer falls back
  to (after another process wrote the file) are measured beside it.
- **Memory is the peak RSS of a fresh process** holding what ``train`` holds before its first
  step (the trainer module, torch, the MiniLM compressor) that warms the run's map as the
  trainer does and decides one 64-key lookup; the same process without the map is the
  baseline, and the difference over the answers is the bytes an answer costs (issue 19's
  target: at most 250 B, so 10M answers fit in 4 GB).

Run from the repository root::

    python bench/warehouse_scale.py                 # builds the cache on the first run
    python bench/warehouse_scale.py --sizes 10k,100k
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    ROOT,
    load_average,
    loopback_config,
    markdown_table,
    median_ms,
    print_run_header,
    text_records,
    warehouse_with_prompts,
)

from tacorl_offline.calls import Caller, Job, hit_ledger_rows
from tacorl_offline.config import Config
from tacorl_offline.hashing import mask_hash, prompt_id, request_hash, teacher_key
from tacorl_offline.replay import MaskMap, Wanted, lookup_in_memory
from tacorl_offline.teachers import render_messages
from tacorl_offline.teachers.base import TeacherRequest, TeacherResult
from tacorl_offline.warehouse import Warehouse, insert_rows

CACHE = ROOT / "bench" / ".cache"
BUILD_VERSION = 1  # bump when the shape of the built rows changes
SIZES = {"10k": 10_000, "100k": 100_000, "1M": 1_000_000}
MASKS_PER_PROMPT = 100
BATCH = 50_000
STEP = 64  # answers per step: the lookup size and the step write size
ROUNDS = 5


@dataclass(frozen=True)
class NamedTeacher:
    """What the Caller row builders read from a teacher (no call is ever made here)."""

    backend: str = "openai"
    model: str = "gpt-4o-mini"


def bench_config() -> Config:
    """The teacher the rows are rendered and keyed for (a closed port: never called)."""
    return loopback_config("http://127.0.0.1:9/v1", {"data.dataset": "scale"})


CFG = bench_config()
TKEY = teacher_key(CFG.teacher.key_settings())


def prompt_text(p: int) -> str:
    words = " ".join(f"w{p}_{j}" for j in range(60))
    return f"Meeting {p}.\nAlice: we discussed {words}.\nBob: decision {p} was taken."


def compression(p: int, k: int) -> tuple[str, str, str]:
    """(prompt id, mask hash, compressed text) of the k-th distinct mask of prompt p."""
    text = prompt_text(p)
    pid = prompt_id(text, {})
    rng = random.Random(p * 1_000_003 + k)
    spans, start = [], 0
    for word in text.split(" "):
        spans.append((start, start + len(word)))
        start += len(word) + 1
    kept = sorted(rng.sample(range(len(spans)), len(spans) // 2))
    kept_spans = [spans[i] for i in kept]
    comp = " ".join(text[s:e] for s, e in kept_spans)
    return pid, mask_hash(text, kept_spans), comp


def answer_rows(
    caller: Caller, lo: int, hi: int, *, run_id: str
) -> tuple[dict[str, list[dict[str, Any]]], list[tuple[str, str, str]]]:
    """Rows for answers lo..hi-1 as the trainer writes them, and their (pid, mask, rh) keys."""
    out: dict[str, list[dict[str, Any]]] = {
        "responses": [],
        "masks": [],
        "api_calls": [],
        "samples": [],
        "steps": [],
    }
    keys = []
    cost = 1.8e-05
    for i in range(lo, hi):
        p, k = divmod(i, MASKS_PER_PROMPT)
        pid, mh, comp = compression(p, k)
        messages = render_messages(CFG.teacher, comp, {})
        rh = request_hash(TKEY, messages)
        job = Job(TeacherRequest(rh, messages, text=comp), "compressed", pid, mh)
        res = TeacherResult(
            rh,
            True,
            f"Answer {i}: the team agreed on decision {p} and the budget.",
            input_tokens=70,
            output_tokens=13,
            finish_reason="stop",
            latency_s=0.3,
        )
        out["responses"].append(caller._response_row(job, res, cost))
        out["masks"].append(
            {"prompt_id": pid, "mask_hash": mh, "teacher_key": TKEY, "request_hash": rh}
        )
        out["api_calls"].extend(caller._ledger_rows(res, cost))
        step, idx = divmod(i, STEP)
        out["samples"].append(
            {
                "run_id": run_id,
                "step": step,
                "prompt_id": pid,
                "sample_idx": idx,
                "mask_hash": mh,
                "request_hash": rh,
                "reward": 0.5,
                "metrics": {"bleu": 0.5, "metric": 0.5},
                "n_orig_tokens": 68,
                "n_comp_tokens": 34,
                "n_words": 64,
                "n_kept": 32,
                "cache_hit": False,
                "short_circuit": False,
                "unscorable": False,
            }
        )
        if idx == STEP - 1:
            out["steps"].append(step_row(run_id, step))
        keys.append((pid, mh, rh))
    return out, keys


def step_row(run_id: str, step: int) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "step": step,
        "epoch": 0,
        "loss": 0.1,
        "reward_mean": 0.5,
        "reward_std": 0.1,
        "reward_min": 0.1,
        "reward_max": 0.9,
        "compression": 0.5,
        "entropy": 0.69,
        "lr": 1e-5,
        "n_samples": STEP,
        "n_unscorable": 0,
        "calls": STEP,
        "hits": 0,
        "short_circuits": 0,
        "cost_usd": STEP * 1.8e-05,
        "saved_usd": 0.0,
        "seconds": 1.3,
        "teacher_seconds": 0.3,
    }


def make_caller(w: Warehouse, run_id: str) -> Caller:
    from tacorl_offline.pricing import prices_from_config

    return Caller(w, NamedTeacher(), TKEY, prices_from_config(CFG), "train", run_id)  # type: ignore[arg-type]


def build(path: Path, lo: int, hi: int) -> None:
    n_prompts = -(-hi // MASKS_PER_PROMPT)
    first = lo // MASKS_PER_PROMPT
    texts = [prompt_text(p) for p in range(first, n_prompts)]
    w = warehouse_with_prompts(path, text_records(texts, first_row=first), dataset="scale")
    caller = make_caller(w, "scale-build")
    t0 = time.perf_counter()
    for a in range(lo, hi, BATCH):
        b = min(hi, a + BATCH)
        rows, _ = answer_rows(caller, a, b, run_id="scale-build")
        with w.transaction() as con:
            if a == 0:
                Warehouse.start_run(
                    con,
                    {"run_id": "scale-build", "kind": "train", "config": {}, "teacher_key": TKEY},
                )
            for table, table_rows in rows.items():
                insert_rows(con, table, table_rows)
        print(f"  built {b:,}/{hi:,} answers ({time.perf_counter() - t0:.0f} s)", flush=True)


def cached(name: str) -> Path:
    """The cached warehouse of a size, built (from the next size down) if missing."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"scale_{name}.duckdb"
    stamp = CACHE / f"scale_{name}.json"
    n = SIZES[name]
    if (
        path.exists()
        and stamp.exists()
        and json.loads(stamp.read_text())["version"] == BUILD_VERSION
    ):
        return path
    smaller = [(k, v) for k, v in SIZES.items() if v < n]
    base = 0
    path.unlink(missing_ok=True)
    if smaller:
        prev_name, base = smaller[-1]
        shutil.copyfile(cached(prev_name), path)
    print(f"building {name} ({n:,} answers) at {path} ...", flush=True)
    build(path, base, n)
    stamp.write_text(json.dumps({"version": BUILD_VERSION, "answers": n}))
    return path


# ----------------------------------------------------------------------------- per-step work


class Scratch:
    """A scratch copy of one cached size, with the keys and rows the operations use."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.name = name
        self.n = SIZES[name]
        self.path = tmp / f"{name}.duckdb"
        shutil.copyfile(cached(name), self.path)
        self.w = Warehouse(self.path)
        with self.w.connect():  # applies any migration newer than the cache, untimed
            pass
        self.caller = make_caller(self.w, "scale-bench")
        self.rng = random.Random(0)
        self.next_answer = self.n  # journaled answers get fresh indices past the build
        self.step = 0
        self.timed: float | None = None
        self._mask_map: MaskMap | None = None
        self.warm_s = float("nan")
        self.map_bytes = float("nan")

    def sample_keys(self) -> list[tuple[str, str, str]]:
        """64 stored (prompt id, mask hash, request hash) keys, spread over the whole file."""
        out = []
        for i in self.rng.sample(range(self.n), STEP):
            p, k = divmod(i, MASKS_PER_PROMPT)
            pid, mh, comp = compression(p, k)
            out.append((pid, mh, request_hash(TKEY, render_messages(CFG.teacher, comp, {}))))
        return out

    # -- the operations, each timed by the caller -------------------------------------

    def op_open(self) -> Callable[[], None]:
        def run() -> None:
            with self.w.connect():
                pass

        return run

    def op_lookup_join(self) -> Callable[[], None]:
        """The lookup as it was: joins against registered Arrow tables (full scans)."""
        import pyarrow as pa

        keys = self.sample_keys()

        def run() -> None:
            with self.w.connect() as con:
                t0 = time.perf_counter()
                con.register(
                    "_mk",
                    pa.table(
                        {"prompt_id": [k[0] for k in keys], "mask_hash": [k[1] for k in keys]}
                    ),
                )
                m = con.execute(
                    "SELECT m.request_hash FROM masks m JOIN _mk USING (prompt_id, mask_hash) WHERE m.teacher_key = ?",
                    [TKEY],
                ).fetchall()
                con.unregister("_mk")
                con.register("_rk", pa.table({"request_hash": [r for (r,) in m]}))
                r = con.execute(
                    "SELECT r.request_hash, r.answer FROM responses r JOIN _rk USING (request_hash)"
                ).fetchall()
                con.unregister("_rk")
                self.timed = time.perf_counter() - t0
            assert len(r) == STEP, len(r)

        return run

    def op_lookup(self) -> Callable[[], None]:
        """The lookup as ``resolve`` does it without a mask map: two IN-list queries."""
        keys = self.sample_keys()

        def run() -> None:
            with self.w.connect() as con:
                t0 = time.perf_counter()
                by_mask = Warehouse.lookup_masks(con, [(k[0], k[1]) for k in keys], TKEY)
                got = Warehouse.lookup_responses(con, list(by_mask.values()))
                self.timed = time.perf_counter() - t0
            assert len(got) == STEP, len(got)

        return run

    def op_lookup_map(self) -> Callable[[], None]:
        """The lookup as the trainer does it: masks from the warmed in-process map, answers by
        one IN-list query."""
        keys = self.sample_keys()
        mm = self.mask_map()

        def run() -> None:
            with self.w.connect() as con:
                t0 = time.perf_counter()
                rhs = [mm.get(k[0], k[1]) for k in keys]
                got = Warehouse.lookup_responses(con, [r for r in rhs if r])
                self.timed = time.perf_counter() - t0
            assert len(got) == STEP, len(got)

        return run

    def mask_map(self) -> MaskMap:
        """The run's map as the trainer warms it (every prompt of the file), exact for
        ``self.w``: every operation here opens the file through ``self.w``."""
        if self._mask_map is None:
            with self.w.connect() as con:
                pids = [r[0] for r in con.execute("SELECT prompt_id FROM prompts").fetchall()]
            t0 = time.perf_counter()
            self._mask_map = MaskMap(TKEY)
            with self.w.connect() as con:
                self._mask_map.warm(con, pids, warehouse=self.w, metric_names=["bleu"])
            self.warm_s = time.perf_counter() - t0
            self.map_bytes = deep_size(self._mask_map)
        return self._mask_map

    def op_lookup_mem(self) -> Callable[[], None]:
        """The lookup as the trainer does it while its map is exact: no open (a stat of the
        file, the journal tail, the map)."""
        keys = self.sample_keys()
        mm = self.mask_map()

        def run() -> None:
            found = self._lookup_mem(mm, keys)
            assert found is not None and len(found.stored) == STEP, "map not exact"

        return run

    def _lookup_mem(self, mm: MaskMap, keys: Sequence[tuple[str, str, str]]) -> Any:
        ws = [Wanted(pid, mh, "", {}) for pid, mh, _ in keys]
        return lookup_in_memory(
            ws,
            teacher_key=TKEY,
            render=lambda text, fields: render_messages(CFG.teacher, text, fields),
            mask_map=mm,
            warehouse=self.w,
        )

    def op_step(self) -> Callable[[], None]:
        """A training step's warehouse work as the trainer does it: the 64-key lookup and the
        metric values of the hits decided in memory (no open), then one write open that
        flushes the 64 answers paid this step from the journal (their own transaction, as
        every write open does) and writes the step's rows in one transaction; close."""
        write = self._step_rows_writer()
        keys = self.sample_keys()
        mm = self.mask_map()
        names = {"bleu": "bleu"}

        def run() -> None:
            t0 = time.perf_counter()
            found = self._lookup_mem(mm, keys)
            assert found is not None and len(found.stored) == STEP, "map not exact"
            for k in keys:
                mm.metrics((k[2], "v1:ref"), names)
            lookup_s = time.perf_counter() - t0
            self._journal_answers()  # what the Caller journals during the step (untimed)
            t0 = time.perf_counter()
            with self.w.transaction(lock_timeout_s=1.0) as con:  # as Trainer._write_step
                write(con)
            self.timed = lookup_s + time.perf_counter() - t0

        return run

    def _journal_answers(self) -> None:
        lo = self.next_answer
        self.next_answer += STEP
        rows, _ = answer_rows(self.caller, lo, lo + STEP, run_id="scale-bench-j")
        entries = [(t, r) for t in ("responses", "masks", "api_calls") for r in rows[t]]
        self.w.journal(entries)  # one group-committed fsync, untimed

    def op_step_write(self) -> Callable[[], None]:
        write = self._step_rows_writer()

        def run() -> None:
            with self.w.transaction() as con:
                t0 = time.perf_counter()
                write(con)
            self.timed = time.perf_counter() - t0  # includes the COMMIT

        return run

    def _step_rows_writer(self) -> Callable[[Any], None]:
        """The trainer's step write: samples, the step row, masks, hit ledger, metric values."""
        keys = self.sample_keys()
        self.step += 1
        step = self.step
        samples = []
        for j, (pid, mh, rh) in enumerate(keys):
            samples.append(
                {
                    "run_id": "scale-bench",
                    "step": step,
                    "prompt_id": pid,
                    "sample_idx": j,
                    "mask_hash": mh,
                    "request_hash": rh,
                    "reward": 0.5,
                    "metrics": {"bleu": 0.5, "metric": 0.5},
                    "n_orig_tokens": 68,
                    "n_comp_tokens": 34,
                    "n_words": 64,
                    "n_kept": 32,
                    "cache_hit": True,
                    "short_circuit": False,
                    "unscorable": False,
                }
            )
        hits = hit_ledger_rows(
            run_id="scale-bench",
            phase="train",
            teacher_key=TKEY,
            backend="openai",
            model="gpt-4o-mini",
            hits=[(k[2], 1.8e-05) for k in keys],
        )
        metric_rows = [
            {
                "request_hash": k[2],
                "reference_hash": f"v1:ref{step}",
                "metric": "bleu",
                "value": 0.5,
            }
            for k in keys
        ]

        def write(con: Any) -> None:
            # The trainer's count of the step's calls and cost, from the ledger.
            con.execute(
                "SELECT count(DISTINCT request_hash), coalesce(sum(cost_usd), 0) FROM api_calls"
                " WHERE run_id = ? AND step = ? AND status <> 'hit'",
                ["scale-bench", step],
            ).fetchall()
            insert_rows(con, "samples", samples, on_conflict="replace")  # as the trainer
            insert_rows(con, "steps", [step_row("scale-bench", step)], on_conflict="replace")
            insert_rows(con, "masks", [], on_conflict="ignore")
            insert_rows(con, "metric_values", metric_rows, on_conflict="ignore")
            insert_rows(con, "api_calls", hits)

        return write

    def op_replay(self) -> Callable[[], None]:
        """Open + replay of a journal holding 64 answers (responses, masks, ledger rows)."""
        self._journal_answers()

        def run() -> None:
            with self.w.connect():
                pass

        return run

    def op_report(self) -> Callable[[], None]:
        from tacorl_offline.reports import cost_report

        def run() -> None:
            res = cost_report(self.w, by="phase")  # what `report cost` runs
            assert res.rows

        return run


OPS = (
    "open",
    "lookup_join",
    "lookup",
    "lookup_map",
    "lookup_mem",
    "step_write",
    "replay",
    "step",
    "report",
)


def deep_size(mm: MaskMap) -> int:
    """Bytes held by the map: its arrays, plus the dicts of later entries and the objects in
    them (shared ones once)."""
    seen: set[int] = set()
    total = mm.held_bytes()

    def add(o: Any) -> None:
        nonlocal total
        if id(o) not in seen:
            seen.add(id(o))
            total += sys.getsizeof(o)

    for container in (mm._map, mm._answers, mm._metrics):
        add(container)
        for k, v in container.items():
            add(k)
            add(v)
    return total


# ----------------------------------------------------------------------------- peak RSS


def _peak_rss_kib_of_this_process() -> int:
    """This process's own peak RSS in KiB: VmHWM belongs to the process's address space, which
    exec replaces. ``ru_maxrss`` does not start over at exec: it keeps the peak of the process
    that forked this one (2.2 GiB after building the 1M cache), which hid every child's own."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def rss_child(path: str, warm: bool, built: int) -> None:
    """In a fresh process: import and load what ``train`` holds before its first step (the
    trainer module, torch, the MiniLM compressor, pandas through its run row), warm the run's
    map as the trainer does, decide one 64-key lookup in memory; print the peak RSS in KiB."""

    import pyarrow as pa

    from tacorl_offline import trainer  # noqa: F401  (what train imports)
    from tacorl_offline.compressor import Compressor

    Compressor.from_pretrained("minilm")
    # What train's run row loads before its first step, map or not: insert_rows builds an
    # Arrow table from Python lists, and pyarrow imports pandas for it (about 48 MiB).
    pa.table({"run_id": ["bench"]})
    w = Warehouse(Path(path))
    mm = MaskMap(TKEY)
    if not warm:  # the baseline opens the file too (DuckDB's own start-up memory)
        with w.connect() as con:
            con.execute("SELECT count(*) FROM prompts").fetchone()
    else:
        with w.connect() as con:
            pids = [r[0] for r in con.execute("SELECT prompt_id FROM prompts").fetchall()]
            mm.warm(con, pids, warehouse=w, metric_names=["bleu"])
        keys = random.Random(0).sample(range(built), STEP)  # answers the build stored
        ws = [Wanted(*compression(*divmod(i, MASKS_PER_PROMPT))[:2], "", {}) for i in keys]
        found = lookup_in_memory(
            ws,
            teacher_key=TKEY,
            render=lambda text, fields: render_messages(CFG.teacher, text, fields),
            mask_map=mm,
            warehouse=w,
        )
        assert found is not None and len(found.stored) == STEP, "map not exact"
    print(_peak_rss_kib_of_this_process())


def peak_rss_kib(path: Path, warm: bool, built: int) -> int:
    import subprocess

    args = [sys.executable, __file__, "--rss-child", str(path), "1" if warm else "0", str(built)]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"peak RSS child failed:\n{done.stderr[-2000:]}")
    return int(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- MiniLM step


class MiniLMStep:
    """One training step's compute with the real MiniLM: sample, loss, backward, AdamW."""

    def __init__(self, batch: int = 8) -> None:
        import torch

        from tacorl_offline.compressor import Compressor
        from tacorl_offline.trainer import build_optimizer

        torch.manual_seed(0)
        self.torch = torch
        self.comp = Compressor.from_pretrained("minilm")
        data = json.loads((ROOT / "data/sample/summarization.json").read_text(encoding="utf-8"))
        self.texts = [v["original_prompt"] for v in list(data.values())[:batch]]
        params = list(self.comp.model.parameters())
        self.opts = {
            "fused": build_optimizer(params, lr=1e-5, weight_decay=0.0),
            "default": torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0),
        }
        self.gen = torch.Generator().manual_seed(0)

    def run(self) -> dict[str, float]:
        torch = self.torch
        t0 = time.perf_counter()
        self.comp.model.train()
        samples = self.comp.sample(self.texts, num_samples=1, generator=self.gen)
        lp = torch.stack([s.log_prob for row in samples for s in row])
        loss = -(lp * torch.linspace(-1, 1, len(lp))).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.comp.model.parameters(), 1.0)
        t1 = time.perf_counter()
        self.opts["fused"].step()
        t2 = time.perf_counter()
        self.opts["default"].step()  # the same gradients, the old optimizer: side by side
        t3 = time.perf_counter()
        # The fused step again on one intra-op thread: on loaded shared cores each of its
        # ~100 parallel regions can wait a scheduler tick for a descheduled OpenMP thread.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            t4 = time.perf_counter()
            self.opts["fused"].step()
            t5 = time.perf_counter()
        finally:
            torch.set_num_threads(threads)
        for o in self.opts.values():
            o.zero_grad(set_to_none=True)
        return {
            "step": (t1 - t0) + (t2 - t1),  # the step as the trainer runs it (fused)
            "opt_fused": t2 - t1,
            "opt_default": t3 - t2,
            "opt_fused_1thread": t5 - t4,
        }


# ----------------------------------------------------------------------------- main

COLUMNS = (
    "answers",
    "open (write)",
    "lookup64 join (before)",
    "lookup64 IN-list",
    "lookup64 mask map + IN",
    "lookup64 in memory (trainer)",
    "step write",
    "open + replay 64-answer journal",
    "all per-step work (one open)",
    "share of MiniLM step",
    "report cost",
    "file size",
    "map warm-up",
    "map memory",
    "peak RSS (train's process)",
    "RSS per answer",
)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


Times = dict[str, dict[str, list[float]]]


@dataclass
class Measured:
    """What one invocation measured, per size name."""

    names: list[str]
    rounds: int
    times: Times  # size -> operation -> seconds per round
    step_times: dict[str, list[float]] | None  # the MiniLM step's parts (None: skipped)
    rss_base: int  # KiB: the process that only opens the file
    rss: dict[str, int]  # KiB: the process holding the warmed map
    sizes: dict[str, int]  # file bytes
    warm_s: dict[str, float]
    map_bytes: dict[str, float]


def timed_rounds(
    scratch: dict[str, Scratch], rounds: int, minilm: MiniLMStep | None
) -> tuple[Times, dict[str, list[float]]]:
    """Every operation on every size, interleaved, ``rounds`` times (after a warm-up); and
    the MiniLM step's parts once per round."""
    times: Times = {n: {op: [] for op in OPS} for n in scratch}
    step_times: dict[str, list[float]] = {
        "step": [],
        "opt_fused": [],
        "opt_default": [],
        "opt_fused_1thread": [],
    }
    if minilm is not None:
        minilm.run()  # warm-up
    for sc in scratch.values():  # warm-up: first touch of each file
        for op in OPS:
            getattr(sc, f"op_{op}")()()
    for _ in range(rounds):
        for op in OPS:
            for n, sc in scratch.items():
                fn = getattr(sc, f"op_{op}")()
                sc.timed = None
                t0 = time.perf_counter()
                fn()
                wall = time.perf_counter() - t0
                # Lookups and the step write report the work inside their connection.
                times[n][op].append(sc.timed if sc.timed is not None else wall)
        if minilm is not None:
            for k, v in minilm.run().items():
                step_times[k].append(v)
    return times, step_times


def measure(names: list[str], rounds: int, with_minilm: bool) -> Measured:
    for n in names:
        cached(n)
    with tempfile.TemporaryDirectory(prefix="wh-scale-") as tmp:
        scratch = {n: Scratch(n, Path(tmp)) for n in names}
        minilm = MiniLMStep() if with_minilm else None
        times, step_times = timed_rounds(scratch, rounds, minilm)
        # Peak RSS of a process that holds what train holds, with and without the warmed map
        # (after the timed rounds, one size at a time, each in a fresh process).
        return Measured(
            names,
            rounds,
            times,
            step_times if minilm is not None else None,
            peak_rss_kib(scratch[names[0]].path, warm=False, built=SIZES[names[0]]),
            {n: peak_rss_kib(scratch[n].path, warm=True, built=SIZES[n]) for n in names},
            {n: scratch[n].path.stat().st_size for n in names},
            {n: scratch[n].warm_s for n in names},
            {n: scratch[n].map_bytes for n in names},
        )


def print_table(m: Measured, step_ms: float) -> dict[str, tuple[float, float, float]]:
    """The Markdown table; returns (in-memory lookup ms, share of the MiniLM step %, bytes
    per answer) per size."""
    out = {}
    rows = []
    for n in m.names:
        t = {op: median_ms(v) for op, v in m.times[n].items()}
        per_answer = (m.rss[n] - m.rss_base) * 1024 / SIZES[n]
        out[n] = (t["lookup_mem"], 100 * t["step"] / step_ms, per_answer)
        rows.append(
            [
                n,
                f"{t['open']:.1f} ms",
                f"{t['lookup_join']:.1f} ms",
                f"{t['lookup']:.1f} ms",
                f"{t['lookup_map']:.1f} ms",
                f"{t['lookup_mem']:.2f} ms",
                f"{t['step_write']:.1f} ms",
                f"{t['replay']:.1f} ms",
                f"{t['step']:.1f} ms",
                f"{out[n][1]:.1f}%",
                f"{t['report']:.1f} ms",
                f"{m.sizes[n] / 1e6:.0f} MB",
                f"{m.warm_s[n]:.2f} s",
                f"{m.map_bytes[n] / 1e6:.0f} MB",
                f"{m.rss[n] / 1024:.0f} MiB",
                f"{per_answer:.0f} B",
            ]
        )
    print("\n".join(markdown_table(COLUMNS, rows)))
    return out


def print_notes(
    m: Measured, step_ms: float, per_size: dict[str, tuple[float, float, float]]
) -> None:
    print(
        "\nlookup64 (join, IN-list, mask map + IN): on an open connection, as the lookups"
        " were and as the trainer still does them once another process has written the file."
        " in memory: what the trainer does while its map is exact (no open)."
        " all per-step work: the in-memory lookup + one write open (flush of a 64-answer"
        " journal, the step's rows), timed whole."
    )
    if m.step_times is not None:
        f, d = median_ms(m.step_times["opt_fused"]), median_ms(m.step_times["opt_default"])
        f1 = median_ms(m.step_times["opt_fused_1thread"])
        print(
            f"\nMiniLM step (batch 8, sample + backward + fused AdamW): {step_ms:.0f} ms;"
            f" AdamW fused {f:.1f} ms ({100 * f / step_ms:.1f}% of the step) vs default"
            f" {d:.1f} ms ({100 * d / step_ms:.1f}%), {d / f:.1f}x; fused on 1 intra-op thread"
            f" {f1:.1f} ms ({100 * f1 / step_ms:.1f}%; the run used {torch_threads()})"
        )
    lo, hi = m.names[0], m.names[-1]
    if len(m.names) > 1:
        print(
            f"lookup64 in memory {hi} / {lo}: {per_size[hi][0] / per_size[lo][0]:.2f}x;"
            f" all per-step work {hi} / {lo}:"
            f" {median_ms(m.times[hi]['step']) / median_ms(m.times[lo]['step']):.2f}x"
        )
    print(
        f"\npeak RSS: a fresh process that imports the trainer and loads MiniLM, warms the run's"
        f" map (every prompt) and decides one 64-key lookup; {m.rss_base / 1024:.0f} MiB for the"
        " same process that only opens the file (both build an Arrow table first, as train's"
        " run row does: pandas). RSS per answer = (peak - that) / answers."
    )
    if len(m.names) > 1:
        slope = (m.rss[hi] - m.rss[lo]) * 1024 / (SIZES[hi] - SIZES[lo])
        print(f"RSS per answer between {lo} and {hi}: {slope:.0f} B")
    lookup_ms, overhead, per_answer = per_size[hi]
    print(
        f"{hi}: lookup64 {lookup_ms:.2f} ms, step overhead {overhead:.1f}%,"
        f" {per_answer:.0f} B per answer (peak RSS)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10k,100k,1M", help="comma-separated, from 10k,100k,1M")
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--no-minilm", action="store_true", help="skip the MiniLM step")
    args = ap.parse_args(argv)
    names = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for n in names:
        if n not in SIZES:
            ap.error(f"unknown size {n!r}; choose from {', '.join(SIZES)}")
    print_run_header()
    sys.stdout.flush()
    m = measure(names, args.rounds, not args.no_minilm)
    la = load_average()
    step_ms = median_ms(m.step_times["step"]) if m.step_times is not None else float("nan")
    print(f"\nmedian of {args.rounds} interleaved rounds; load average after: {la}\n")
    per_size = print_table(m, step_ms)
    print_notes(m, step_ms, per_size)
    return 0


if __name__ == "__main__":
    if "--rss-child" in sys.argv:
        i = sys.argv.index("--rss-child")
        rss_child(sys.argv[i + 1], sys.argv[i + 2] == "1", int(sys.argv[i + 3]))
        sys.exit(0)
    if "--build-only" in sys.argv:
        for s in sys.argv[sys.argv.index("--build-only") + 1].split(","):
            cached(s)
        sys.exit(0)
    sys.exit(main())
