"""Sample-efficiency benchmark: held-out quality against cumulative paid teacher calls.

Same data, teacher and scoring as ``bench/learning.py``: the bundled paragraph-disjoint SQuAD
split, the extractive stand-in teacher, ``configs/qa.yaml`` (question-aware MiniLM, rate 0.5,
upstream's default tolerance of 30 tokens, where the length gate saves nothing), RL from the
base encoder (the calls are what RL pays for; the SFT warm start pays none), scored by
``evaluate`` on the held-out split with 95% paired bootstrap CIs.

- **on-policy**: upstream-style REINFORCE: one mask per prompt (G=1), a moving-average
  baseline, each paid answer used for one gradient step, 8 prompts per step;
- **reuse**: the same calls per step (2 prompts x G=4, leave-one-out baseline), each paid batch
  used for ``--epochs`` PPO-clipped passes (``train.reuse.update_epochs``).

Both run with each of ``--seeds`` (default 0,1,2), every run in its own copy of the filled
warehouse (so each pays its own calls from an empty answer cache), checkpointed every
``--every`` steps; every checkpoint is scored on the held-out split. The headline is the calls
the reuse configuration needs to reach the on-policy configuration's final held-out score, on
the curves averaged over the seeds (linear between checkpoints), over the calls the on-policy
runs paid; each seed's own ratio is printed too.

Then the 3-seed sweep sharing one warehouse: the reuse configuration with three sampling seeds
over one data order (``train.data_seed``) and ``train.reuse.stored_per_prompt: 3``, so seeds 2
and 3 learn from the samples seed 1 paid for and draw one fresh mask per prompt; it prints the
calls of the sweep against three times a single run, and each seed's held-out score.

Run from the repository root::

    python bench/sample_efficiency.py            # ~25 min on 2 quiet cores
    python bench/sample_efficiency.py --quick    # a smoke run on a subset

The last line reads ``calls ratio: X``. A PNG of the two curves goes to ``bench/sample_efficiency.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from common import load_average  # noqa: E402
from learning import fmt_ci, fmt_diff, with_split  # noqa: E402

from tacorl_offline.config import Config, resolve  # noqa: E402
from tacorl_offline.evaluate import run_evaluation  # noqa: E402
from tacorl_offline.fill import run_fill  # noqa: E402
from tacorl_offline.ingest import read_records  # noqa: E402
from tacorl_offline.ingest_store import store_records  # noqa: E402
from tacorl_offline.trainer import Trainer  # noqa: E402
from tacorl_offline.warehouse import Warehouse  # noqa: E402

DATASET = "squad-bench"


def prepare(cfg: Config, wh: Warehouse, limit: int | None) -> dict[str, int]:
    """Ingest the bundled train and held-out splits and teacher-fill them; the calls each paid."""
    calls = {}
    for split in ("train", "heldout"):
        records, _ = read_records(ROOT / "data/squad" / f"{split}.jsonl", cfg.data)
        if limit:
            records = records[: limit if split == "train" else max(40, limit // 3)]
        store_records(
            wh, records, dataset=DATASET, split=split, source_path=f"data/squad/{split}.jsonl"
        )
        s = asyncio.run(run_fill(with_split(cfg, split), warehouse=wh))
        calls[split] = s.spend.calls
    return calls


def configure(base: Config, name: str, **train: Any) -> Config:
    c = base.model_copy(deep=True)
    c.train.output_dir = str(Path(base.train.output_dir) / name)
    c.train = type(c.train).model_validate({**c.train.model_dump(), **train})
    return c


def run(cfg: Config, wh: Warehouse) -> Any:
    return asyncio.run(Trainer(cfg, warehouse=wh).run())


def checkpoints_of(summary: Any, wh: Warehouse) -> list[tuple[int, int, str]]:
    """(step, cumulative paid calls, model dir) per checkpoint of a finished run."""
    import duckdb

    out = []
    for d in sorted((summary.run_dir / "checkpoints").glob("step-*")):
        out.append((int(d.name.split("-")[1].split(".")[0]), str(d / "model")))
    con = duckdb.connect(str(wh.path), read_only=True)
    try:
        per_step = dict(
            con.execute(
                "SELECT step, calls FROM steps WHERE run_id = ? ORDER BY step", [summary.run_id]
            ).fetchall()
        )
    finally:
        con.close()
    rows = []
    for step, model in out:
        rows.append((step, sum(v or 0 for s, v in per_step.items() if s <= step), model))
    return rows


def reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """Calls at which a (calls, score) curve first reaches ``target`` (linear in between)."""
    prev = (0, float("-inf"))
    for calls, score in curve:
        if score >= target:
            if prev[1] == float("-inf"):
                return float(calls)
            c0, s0 = prev
            return c0 + (calls - c0) * (target - s0) / (score - s0) if score > s0 else float(calls)
        prev = (calls, score)
    return None


def plot(
    curves: dict[str, list[tuple[float, float]]],
    per_seed: dict[str, dict[int, list[tuple[int, float]]]],
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (name, pts), color in zip(curves.items(), ("tab:blue", "tab:orange"), strict=False):
        for seed_pts in per_seed[name].values():
            ax.plot([p[0] for p in seed_pts], [p[1] for p in seed_pts], color=color, alpha=0.3)
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            marker="o",
            color=color,
            label=f"{name}, mean of {len(per_seed[name])} seeds",
        )
    ax.set_xlabel("cumulative paid teacher calls")
    ax.set_ylabel("held-out F1 vs teacher")
    ax.set_title("SQuAD held-out, rate 0.5 (thin: single seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/qa.yaml"))
    ap.add_argument("--workdir", default=str(ROOT / "bench/.cache/sample_efficiency"))
    ap.add_argument("--steps", type=int, default=60, help="steps per run")
    ap.add_argument("--every", type=int, default=15, help="checkpoint (and score) every N steps")
    ap.add_argument("--epochs", type=int, default=4, help="reuse: PPO passes per paid batch")
    ap.add_argument("--lr", type=float, default=None, help="default: the config's train.lr")
    ap.add_argument("--sweep-steps", type=int, default=30, help="steps per sweep run")
    ap.add_argument("--quick", action="store_true", help="a subset and short runs (smoke test)")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds of both curves")
    ap.add_argument("--plot", default=str(ROOT / "bench/sample_efficiency.png"))
    args = ap.parse_args()
    if args.quick:
        args.steps, args.every, args.sweep_steps = 4, 2, 4

    work = Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)  # a fresh warehouse: every call of this run is counted
    work.mkdir(parents=True)
    base = resolve(
        args.config,
        overrides={
            "warehouse": str(work / "tacorl.duckdb"),
            "data.dataset": "squad-bench",
            "train.output_dir": str(work / "runs"),
            "train.max_steps": args.steps,
            "train.checkpoint_every": args.every,
            "train.keep_checkpoints": 1000,
            "train.lr": args.lr,
            "train.seed": 0,
        },
    )
    wh = Warehouse(base.warehouse)
    print(
        f"sample-efficiency benchmark: {args.config}, RL from {base.compressor.model}, "
        f"{args.steps} steps, lr {base.train.lr}, tolerance {base.train.tolerance_tokens} tokens, "
        f"load average {load_average()}",
        flush=True,
    )
    prepare(base, wh, 120 if args.quick else None)
    # The sweep gets its own copy of the filled warehouse: its savings come from its own seeds,
    # not from the two runs above.
    sweep_wh = Warehouse(work / "sweep.duckdb")
    shutil.copy(wh.path, sweep_wh.path)

    def own_warehouse(name: str) -> Warehouse:
        """A copy of the filled warehouse: every run pays its own calls from an empty cache."""
        w = Warehouse(work / f"{name}.duckdb")
        shutil.copy(wh.path, w.path)
        return w

    seeds = [int(x) for x in args.seeds.split(",")]
    on_name, ours_name = "on-policy (G=1)", f"reuse (G=4, {args.epochs} passes)"
    # points[name][seed] = [(step, cumulative calls, model dir), ...]
    points: dict[str, dict[int, list[tuple[int, int, str]]]] = {on_name: {}, ours_name: {}}
    for seed in seeds:
        on_cfg = configure(
            base,
            f"on-policy-{seed}",
            batch_size=8,
            samples_per_prompt=1,
            baseline="moving_average",
            seed=seed,
        )
        ours_cfg = configure(
            base, f"reuse-{seed}", batch_size=2, samples_per_prompt=4, baseline="rloo", seed=seed
        )
        ours_cfg.train.reuse = ours_cfg.train.reuse.model_copy(
            update={"update_epochs": args.epochs}
        )
        for name, cfg in ((on_name, on_cfg), (ours_name, ours_cfg)):
            w = own_warehouse(f"{'on' if name == on_name else 'reuse'}-{seed}")
            cfg.warehouse = str(w.path)
            t0 = time.perf_counter()
            summary = run(cfg, w)
            print(
                f"  {name} seed {seed}: {summary.spend.calls} calls, "
                f"{time.perf_counter() - t0:.0f} s, load {load_average()}",
                flush=True,
            )
            points[name][seed] = checkpoints_of(summary, w)
    models = [m for per in points.values() for pts in per.values() for _, _, m in pts]
    sweep: list[Any] = []
    if not args.no_sweep:
        for seed in (1, 2, 3):
            c = configure(
                base, f"sweep-{seed}", batch_size=2, samples_per_prompt=4, baseline="rloo"
            )
            c.train.seed, c.train.data_seed = seed, 100
            c.train.max_steps = args.sweep_steps
            c.train.reuse = c.train.reuse.model_copy(
                update={"update_epochs": args.epochs, "stored_per_prompt": 3}
            )
            t0 = time.perf_counter()
            c.warehouse = str(sweep_wh.path)
            sweep.append(run(c, sweep_wh))
            print(
                f"  sweep seed {seed}: {sweep[-1].spend.calls} calls, "
                f"{time.perf_counter() - t0:.0f} s, load {load_average()}",
                flush=True,
            )
        models += [str(s.final_model) for s in sweep]

    t0 = time.perf_counter()
    on_final_model = points[on_name][seeds[0]][-1][2]
    report = asyncio.run(
        run_evaluation(
            with_split(base, "heldout"),
            models=models,
            baselines=[],
            reference=on_final_model,
            warehouse=wh,
        )
    )
    print(f"  evaluate: {len(models)} models, {time.perf_counter() - t0:.0f} s", flush=True)
    metric = (
        "teacher.squad_f1"
        if "teacher.squad_f1" in report.primary_metrics
        else report.primary_metrics[0]
    )

    def score(model: str) -> tuple[float, float, float]:
        r = report.row(model, metric)
        return r.mean, r.ci_low, r.ci_high

    def diff(model: str) -> str:
        r = report.row(model, metric)
        return fmt_diff(r.diff, r.diff_ci_low, r.diff_ci_high)

    print()
    print(
        f"held-out: {report.prompts} questions, rate {report.rate}, metric {metric}, "
        f"{report.confidence:.0%} bootstrap CIs; calls = cumulative paid teacher calls"
    )
    print(
        f"{'run':26s} {'seed':>4s} {'step':>5s} {'calls':>6s} | {metric + ' [CI]':>26s} "
        f"{'diff vs on-policy seed ' + str(seeds[0]) + ' final [CI]':>36s}"
    )
    # per_seed[name][seed] = [(calls, mean), ...]
    per_seed: dict[str, dict[int, list[tuple[int, float]]]] = {}
    for name, per in points.items():
        per_seed[name] = {}
        for seed, pts in per.items():
            per_seed[name][seed] = []
            for step, calls, model in pts:
                m, lo, hi = score(model)
                per_seed[name][seed].append((calls, m))
                print(
                    f"{name:26s} {seed:4d} {step:5d} {calls:6d} | {fmt_ci(m, lo, hi):>26s} "
                    f"{diff(model):>36s}"
                )
    # The mean curve over seeds: checkpoint k's mean calls and mean held-out score.
    curves: dict[str, list[tuple[float, float]]] = {}
    for name, per in per_seed.items():
        n = min(len(c) for c in per.values())
        curves[name] = [
            (
                sum(per[s][k][0] for s in per) / len(per),
                sum(per[s][k][1] for s in per) / len(per),
            )
            for k in range(n)
        ]
    print()
    print(f"mean over seeds {seeds}:")
    for name, pts in curves.items():
        print(f"  {name:26s} " + "  ".join(f"{c:.0f} calls: {m:.3f}" for c, m in pts))
    png = Path(args.plot)
    plot(curves, per_seed, png)
    print(f"plot: {png}")

    print()
    ratios = []
    for seed in seeds:
        on_c = per_seed[on_name][seed]
        need_s = reach(per_seed[ours_name][seed], on_c[-1][1])
        ratio = None if need_s is None else need_s / max(1, on_c[-1][0])
        ratios.append(ratio)
        print(
            f"seed {seed}: on-policy final {on_c[-1][1]:.3f} after {on_c[-1][0]} calls; reuse "
            + (
                "never reaches it"
                if ratio is None
                else f"reaches it after {need_s:.0f} calls, ratio {ratio:.2f}"
            )
        )
    on_final_calls, on_final = curves[on_name][-1]
    need = reach(curves[ours_name], on_final)
    if sweep:
        paid = [s.spend.calls for s in sweep]
        single = paid[0]  # seed 1 has nothing stored to learn from: a single run's calls
        print()
        print(
            f"3-seed sweep ({args.sweep_steps} steps each), one warehouse, one data order: "
            f"calls per seed {paid}"
        )
        print(
            f"  sweep total {sum(paid)} = {sum(paid) / max(1, single):.2f}x one run ({single}), "
            f"against 3.00x without reuse"
        )
        for seed, s in zip((1, 2, 3), sweep, strict=True):
            m, lo, hi = score(str(s.final_model))
            print(
                f"  seed {seed}: held-out {fmt_ci(m, lo, hi)}, vs on-policy final {diff(str(s.final_model))}"
            )
    print()
    print(
        f"mean curves: on-policy final {on_final:.3f} after {on_final_calls:.0f} calls; "
        f"load average {load_average()}"
    )
    if need is None:
        best = max(m for _, m in curves[ours_name])
        print(f"reuse never reached it (best {best:.3f}): target missed")
        print("calls ratio: n/a (not reached)")
    else:
        first = next(c for c, m in curves[ours_name] if m >= on_final)
        print(
            f"reuse reaches it after {need:.0f} calls (linear between checkpoints; the first "
            f"checkpoint at or above it: {first:.0f} calls, ratio {first / max(1, on_final_calls):.2f})"
        )
        print(f"calls ratio: {need / max(1, on_final_calls):.2f}")


if __name__ == "__main__":
    main()
