"""Teacher-fill throughput and warehouse write rates, measured side by side in one run.

Design decision: everything is real except the model behind the endpoint. ``run_fill`` drives
the real ``openai`` async client against the loopback OpenAI-compatible server
(:mod:`tests.loopback`, fixed per-request latency) and commits into a real DuckDB warehouse in
a temp dir, so the measured rate includes rendering, hashing, the fsync'd journal and the
flusher. The ideal rate of a setting is ``concurrency / latency``; efficiency is measured/ideal.

Run from the repository root::

    python bench/fill_speed.py               # about a minute
    python bench/fill_speed.py --quick       # a few seconds per section
    python bench/fill_speed.py --latency 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import KEY_ENV, ROOT, load_average

from tacorl_offline.config import Config, resolve
from tacorl_offline.fill import FillSummary, run_fill
from tacorl_offline.hashing import prompt_id
from tacorl_offline.ingest import Record
from tacorl_offline.ingest_store import store_records
from tacorl_offline.warehouse import Warehouse, insert_rows
from tests.loopback import LoopbackServer

# (concurrency, prompts): each setting takes a few seconds at 200 ms latency.
FULL_SETTINGS = ((1, 20), (8, 120), (32, 400))
QUICK_SETTINGS = ((1, 8), (8, 48), (32, 160))


# ----------------------------------------------------------------------------- data


def synthetic_records(n: int, *, tag: str) -> list[Record]:
    """``n`` distinct meeting-like prompts of about 60 words."""
    out = []
    for i in range(n):
        body = " ".join(f"item{i}_{j}" for j in range(50))
        text = f"Meeting {tag} {i}.\nAlice: we discussed {body}.\nBob: decision {i} was taken."
        out.append(
            Record(
                prompt_id=prompt_id(text, {}),
                text=text,
                fields={},
                reference=None,
                imported_answer=None,
                row=i,
            )
        )
    return out


def response_rows(n: int, *, tag: str) -> list[dict[str, Any]]:
    """Rows shaped like the ``responses`` rows teacher-fill writes."""
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Summarize the provided text.\n" + "word " * 60},
    ]
    return [
        {
            "request_hash": f"v1:{tag}:{i:08d}",
            "teacher_key": "v1:bench",
            "kind": "original",
            "prompt_id": f"v1:p{i:08d}",
            "mask_hash": None,
            "backend": "openai",
            "model": "gpt-4o-mini",
            "messages": messages,
            "answer": "Answer: the team agreed on the plan and the budget for the quarter.",
            "ok": True,
            "error_kind": None,
            "finish_reason": "stop",
            "input_tokens": 70,
            "output_tokens": 13,
            "cost_usd": 1.8e-05,
            "usage_source": "api",
            "source": "api",
            "run_id": "bench",
        }
        for i in range(n)
    ]


# ----------------------------------------------------------------------------- fill


def fill_config(server: LoopbackServer, wh: Path, concurrency: int) -> Config:
    return resolve(
        None,
        environ={},
        overrides={
            "warehouse": str(wh),
            "data.dataset": "bench",
            "teacher.backend": "openai",
            "teacher.model": "gpt-4o-mini",
            "teacher.base_url": server.base_url,
            "teacher.api_key_env": KEY_ENV,
            "teacher.concurrency": concurrency,
            "teacher.timeout_s": 30,
            "teacher.max_retries": 0,
        },
    )


def bench_fill(
    server: LoopbackServer, tmp: Path, concurrency: int, n: int, latency: float
) -> dict[str, Any]:
    d = tmp / f"fill_c{concurrency}"
    d.mkdir()
    cfg = fill_config(server, d / "wh.duckdb", concurrency)
    w = Warehouse(cfg.warehouse)
    store_records(
        w,
        synthetic_records(n, tag=f"c{concurrency}"),
        dataset="bench",
        split="train",
        source_path="synthetic",
    )
    server.reset()
    server.set(latency_s=latency)
    t0 = time.perf_counter()
    s: FillSummary = asyncio.run(run_fill(cfg, warehouse=w, concurrency=concurrency))
    wall = time.perf_counter() - t0
    with w.connect(read_only=True) as con:
        stored = con.execute(
            "SELECT count(*) FROM responses WHERE run_id = ? AND ok", [s.run_id]
        ).fetchall()[0][0]
    if s.filled != n or stored != n:
        raise SystemExit(f"c={concurrency}: filled {s.filled}, stored {stored}, expected {n}")
    ideal = concurrency / latency
    return {
        "concurrency": concurrency,
        "prompts": n,
        "seconds": s.seconds,
        "wall": wall,
        "rate": s.answers_per_s,
        "ideal": ideal,
        "efficiency": s.answers_per_s / ideal,
        "max_in_flight": server.max_in_flight,
        # Time per call beyond the server's sleep, as seen by one worker.
        "overhead_ms": (s.seconds * concurrency / n - latency) * 1000,
        "calls": server.calls,
    }


class _Endpoint:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url


def bench_fill_client_cpu(tmp: Path, concurrency: int, n: int, latency: float) -> dict[str, Any]:
    """The same fill with the loopback server in its own process, so this process's CPU time
    is the client's alone (rendering, hashing, the openai client, the journal, the flusher)."""
    import subprocess

    srv = subprocess.Popen(
        [sys.executable, "-m", "tests.loopback", "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert srv.stdout is not None
        endpoint = _Endpoint(srv.stdout.readline().strip())
        d = tmp / f"fill_sub_c{concurrency}"
        d.mkdir()
        cfg = fill_config(endpoint, d / "wh.duckdb", concurrency)  # type: ignore[arg-type]
        w = Warehouse(cfg.warehouse)
        store_records(
            w,
            synthetic_records(n, tag=f"s{concurrency}"),
            dataset="bench",
            split="train",
            source_path="synthetic",
        )
        # The SDK's import (once per process, about a second of CPU) is not an answer's cost.
        imp0 = time.process_time()
        import tacorl_offline.teachers.openai_teacher  # noqa: F401

        imported = time.process_time() - imp0
        cpu0 = time.process_time()
        s: FillSummary = asyncio.run(run_fill(cfg, warehouse=w, concurrency=concurrency))
        cpu = time.process_time() - cpu0
    finally:
        srv.terminate()
        srv.wait()
    if s.filled != n:
        raise SystemExit(f"c={concurrency} (subprocess server): filled {s.filled}, expected {n}")
    ideal = concurrency / latency
    return {
        "concurrency": concurrency,
        "prompts": n,
        "rate": s.answers_per_s,
        "ideal": ideal,
        "efficiency": s.answers_per_s / ideal,
        "cpu_ms": cpu / n * 1000,
        "import_s": imported,
        "load": os.getloadavg()[0],
    }


# ----------------------------------------------------------------------------- warehouse


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_insert(tmp: Path, n_arrow: int, n_many: int) -> dict[str, float]:
    w = Warehouse(tmp / "insert" / "wh.duckdb")
    arrow_rows = response_rows(n_arrow, tag="arrow")
    many_rows = response_rows(n_many, tag="many")
    with w.connect() as con:
        t_arrow = _timed(lambda: insert_rows(con, "responses", arrow_rows))
        cols = list(many_rows[0])
        sql = f"INSERT INTO responses ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        params = [
            [json.dumps(r[c], sort_keys=True) if isinstance(r[c], list) else r[c] for c in cols]
            for r in many_rows
        ]
        t_many = _timed(lambda: con.executemany(sql, params))
        total = con.execute("SELECT count(*) FROM responses").fetchall()[0][0]
    if total != n_arrow + n_many:
        raise SystemExit(f"insert: {total} rows stored, expected {n_arrow + n_many}")
    return {
        "arrow_rows": n_arrow,
        "arrow_s": t_arrow,
        "arrow_rate": n_arrow / t_arrow,
        "many_rows": n_many,
        "many_s": t_many,
        "many_rate": n_many / t_many,
    }


def bench_journal(tmp: Path, n_append: int, n_replay: int) -> dict[str, float]:
    w = Warehouse(tmp / "journal" / "wh.duckdb")
    with w.connect():
        pass  # create the file and apply migrations outside the timings
    rows = response_rows(n_append, tag="append")
    t_append = _timed(lambda: [w.journal([("responses", r)]) for r in rows])
    w.flush()
    # Replay: a journal of n_replay entries written in one append, then one flush.
    w.journal(("responses", r) for r in response_rows(n_replay, tag="replay"))
    t_replay = _timed(w.flush)
    with w.connect(read_only=True) as con:
        total = con.execute("SELECT count(*) FROM responses").fetchall()[0][0]
    if total != n_append + n_replay or w.journal_path.stat().st_size != 0:
        raise SystemExit(f"journal: {total} rows replayed, expected {n_append + n_replay}")
    return {
        "append_n": n_append,
        "append_s": t_append,
        "append_rate": n_append / t_append,
        "replay_n": n_replay,
        "replay_s": t_replay,
        "replay_rate": n_replay / t_replay,
    }


# ----------------------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency", type=float, default=0.2, help="loopback latency per request, s")
    ap.add_argument("--quick", action="store_true", help="fewer prompts and rows (smoke run)")
    ap.add_argument(
        "--tmpdir", default=None, help="where the temp warehouses go (default: system temp)"
    )
    args = ap.parse_args(argv)
    if args.latency <= 0:
        ap.error("--latency must be > 0 (the ideal rate is concurrency / latency)")

    settings = QUICK_SETTINGS if args.quick else FULL_SETTINGS
    n_arrow, n_many = (10_000, 500) if args.quick else (50_000, 2_000)
    n_append, n_replay = (100, 5_000) if args.quick else (500, 20_000)

    cmd = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    print(f"command: {cmd}")
    print(f"load average at the start: {load_average()}")
    print(
        f"cpus: {os.cpu_count()}  latency: {args.latency * 1000:.0f} ms  quick: {args.quick}"
        "  (the loopback server sends with TCP_NODELAY)"
    )
    print()

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tacorl-bench-", dir=args.tmpdir) as td:
        tmp = Path(td)
        print(f"temp dir: {tmp}")
        with LoopbackServer(latency_s=args.latency) as server:
            fills = [bench_fill(server, tmp, c, n, args.latency) for c, n in settings]
        sub = [bench_fill_client_cpu(tmp, c, n, args.latency) for c, n in settings if c >= 32] + (
            [bench_fill_client_cpu(tmp, 64, 2 * settings[-1][1], args.latency)]
        )
        ins = bench_insert(tmp, n_arrow, n_many)
        jr = bench_journal(tmp, n_append, n_replay)

    base = fills[0]["rate"]
    print("teacher-fill (run_fill, real openai client, loopback server, DuckDB warehouse)")
    hdr = (
        f"{'concurrency':>11} {'prompts':>7} {'seconds':>8} {'answers/s':>10} {'ideal/s':>8} "
        f"{'efficiency':>10} {'speedup':>8} {'in flight':>9} {'overhead/call':>13}"
    )
    print(hdr)
    print("-" * len(hdr))
    for f in fills:
        print(
            f"{f['concurrency']:>11} {f['prompts']:>7} {f['seconds']:>8.2f} {f['rate']:>10.1f} "
            f"{f['ideal']:>8.1f} {f['efficiency']:>9.0%} {f['rate'] / base:>7.1f}x "
            f"{f['max_in_flight']:>9} {f['overhead_ms']:>10.1f} ms"
        )
    print("  seconds: run_fill's own timer (calls + journal); ideal = concurrency / latency;")
    print("  speedup is over concurrency 1; in flight = max requests the server saw at once;")
    print("  overhead/call = seconds * concurrency / prompts - latency.")
    print()
    print("client CPU (server in its own process; this process's CPU time per answer)")
    hdr3 = (
        f"{'concurrency':>11} {'prompts':>7} {'answers/s':>10} {'ideal/s':>8} {'efficiency':>10}"
        f" {'client CPU/answer':>17} {'load avg':>8}"
    )
    print(hdr3)
    print("-" * len(hdr3))
    for f in sub:
        print(
            f"{f['concurrency']:>11} {f['prompts']:>7} {f['rate']:>10.1f} {f['ideal']:>8.1f}"
            f" {f['efficiency']:>9.0%} {f['cpu_ms']:>14.2f} ms {f['load']:>8.2f}"
        )
    print(
        "  targets (issue 19): >= 85% of the ideal at K=32, >= 75% at K=64; "
        + ", ".join(f"K={f['concurrency']}: {f['efficiency']:.0%}" for f in sub)
    )
    print()
    print("warehouse writes (responses table)")
    hdr2 = f"{'operation':<44} {'rows':>7} {'seconds':>8} {'rows/s':>10}"
    print(hdr2)
    print("-" * len(hdr2))
    lines = [
        ("insert_rows (one Arrow batch)", ins["arrow_rows"], ins["arrow_s"], ins["arrow_rate"]),
        ("executemany (parameterised INSERT)", ins["many_rows"], ins["many_s"], ins["many_rate"]),
        (
            "journal append (1 entry per call, fsync'd)",
            jr["append_n"],
            jr["append_s"],
            jr["append_rate"],
        ),
        ("journal replay (flush into DuckDB)", jr["replay_n"], jr["replay_s"], jr["replay_rate"]),
    ]
    for name, n, s, r in lines:
        print(f"{name:<44} {n:>7} {s:>8.3f} {r:>10,.0f}")
    print(f"  Arrow batch vs executemany: {ins['arrow_rate'] / ins['many_rate']:.0f}x rows/s")
    print(f"load average at the end: {load_average()}")
    print()
    print(f"total {time.perf_counter() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
