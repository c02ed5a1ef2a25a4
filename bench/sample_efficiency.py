"""Sample-efficiency benchmark: held-out quality against cumulative paid teacher calls, each
configuration at its own validation-best learning rate.

Same data, teacher and scoring as ``bench/learning.py``: the bundled paragraph-disjoint SQuAD
split, carved again by :mod:`squad_splits` into a train pool and a validation carve; the
extractive stand-in teacher; ``configs/qa.yaml`` (question-aware MiniLM, rate 0.5, upstream's
default tolerance of 30 tokens); RL from the base encoder (the calls are what RL pays for; the
SFT warm start pays none). Three configurations, each paying 8 calls per step:

- **on-policy**: upstream-style REINFORCE: one mask per prompt (G=1), a moving-average
  baseline, each paid answer used for one gradient step, 8 prompts per step;
- **single-pass (G=4)**: 2 prompts x G=4 with a leave-one-out baseline, one pass;
- **reuse**: the same, each paid batch used for ``--epochs`` PPO-clipped passes
  (``train.reuse.update_epochs``).

1. **Selection, on validation only.** On-policy and reuse each run at every learning rate of
   ``--lrs`` (seed 0); each run's final model is scored on the validation carve, and each
   configuration keeps its own best rate. Single-pass runs at the reuse's rate, so the two
   differ only in the passes.
2. **Held-out curves.** The three configurations at their rates, with each of ``--seeds``
   (seed 0's on-policy and reuse runs are the selection runs), every run in its own copy of the
   filled warehouse (each pays its own calls from an empty answer cache), checkpointed every
   ``--every`` steps; every checkpoint is scored on the held-out split (95% paired bootstrap).

The headline is the calls the reuse configuration needs to reach the tuned on-policy run's final
held-out score, on the curves averaged over the seeds (linear between checkpoints), over the
calls the on-policy runs paid. ``--sweep`` adds the older 3-seed sweep that shares one
warehouse (seeds 2 and 3 learn from the samples seed 1 paid for).

Run from the repository root::

    python bench/sample_efficiency.py            # about 75 min on 2 cores at load 8 (40 steps, 1 seed)
    python bench/sample_efficiency.py --quick    # a smoke run on a subset

The last line reads ``calls ratio vs tuned on-policy: X``. A PNG of the curves goes to
``bench/sample_efficiency.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from rl_lab import prepare_workdir  # noqa: E402

from tacorl_offline.config import Config, resolve  # noqa: E402
from tacorl_offline.evaluate import run_evaluation  # noqa: E402
from tacorl_offline.trainer import Trainer  # noqa: E402
from tacorl_offline.warehouse import Warehouse  # noqa: E402

DATASET = "squad-lab"  # rl_lab.prepare_workdir's dataset name


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
    for (name, pts), color in zip(
        curves.items(), ("tab:blue", "tab:green", "tab:orange"), strict=False
    ):
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


CONFIGS = {
    "on-policy": {"batch_size": 8, "samples_per_prompt": 1, "baseline": "moving_average"},
    "single-pass": {"batch_size": 2, "samples_per_prompt": 4, "baseline": "rloo"},
    "reuse": {"batch_size": 2, "samples_per_prompt": 4, "baseline": "rloo"},
}


class Lab:
    """The work directory: the filled warehouse, one copy per run, and the runs' checkpoints."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.workdir)
        self.base = resolve(
            args.config,
            overrides={
                "warehouse": str(self.work / "tacorl.duckdb"),
                "data.dataset": DATASET,
                "train.output_dir": str(self.work / "runs"),
                "train.max_steps": args.steps,
                "train.checkpoint_every": args.every,
                "train.keep_checkpoints": 1000,
                "train.seed": 0,
            },
        )
        self.wh: Warehouse | None = None
        # points[(config, lr, seed)] = [(step, cumulative calls, model dir), ...]
        self.points: dict[tuple[str, float, int], list[tuple[int, int, str]]] = {}

    def prepare(self) -> None:
        quick = 60 if self.args.quick else None
        prepare_workdir(self.work, quick, None, agnostic=False, sft=False)
        self.wh = Warehouse(self.base.warehouse)

    def train(self, config: str, lr: float, seed: int) -> list[tuple[int, int, str]]:
        key = (config, lr, seed)
        if key in self.points:
            return self.points[key]
        name = f"{config}-lr{lr:g}-{seed}"
        cfg = configure(self.base, name, **CONFIGS[config], lr=lr, seed=seed)
        if config == "reuse":
            cfg.train.reuse = cfg.train.reuse.model_copy(update={"update_epochs": self.args.epochs})
        assert self.wh is not None
        w = Warehouse(self.work / f"{name}.duckdb")  # every run pays its own calls
        shutil.copy(self.wh.path, w.path)
        cfg.warehouse = str(w.path)
        t0 = time.perf_counter()
        summary = run(cfg, w)
        print(
            f"  {name}: {summary.spend.calls} calls, {time.perf_counter() - t0:.0f} s, "
            f"load {load_average()}",
            flush=True,
        )
        self.points[key] = checkpoints_of(summary, w)
        return self.points[key]

    def evaluate(self, split: str, models: list[str]) -> Any:
        assert self.wh is not None
        return asyncio.run(
            run_evaluation(
                with_split(self.base, split),
                models=models,
                baselines=[],
                reference=models[0],
                warehouse=self.wh,
            )
        )


def metric_of(report: Any) -> str:
    m = "teacher.squad_f1"
    return m if m in report.primary_metrics else report.primary_metrics[0]


def select(lab: Lab, lrs: list[float]) -> dict[str, float]:
    """Each configuration's learning rate: the best final score on the validation carve."""
    finals = {(c, lr): lab.train(c, lr, 0)[-1] for c in ("on-policy", "reuse") for lr in lrs}
    report = lab.evaluate("val", [m for _, _, m in finals.values()])
    metric = metric_of(report)
    print()
    print(f"selection on val ({report.prompts} questions), seed 0, final models, {metric}:")
    chosen: dict[str, float] = {}
    for c in ("on-policy", "reuse"):
        scores = {lr: report.row(finals[(c, lr)][2], metric) for lr in lrs}
        chosen[c] = max(lrs, key=lambda lr: scores[lr].mean)
        for lr in lrs:
            r = scores[lr]
            mark = "  <- chosen" if lr == chosen[c] else ""
            print(
                f"  {c:12s} lr {lr:<8g} {finals[(c, lr)][1]:5d} calls  "
                f"{fmt_ci(r.mean, r.ci_low, r.ci_high)}{mark}"
            )
    chosen["single-pass"] = chosen["reuse"]
    return chosen


def curves_on_heldout(
    lab: Lab, chosen: dict[str, float], seeds: list[int]
) -> dict[str, dict[int, list[tuple[int, float]]]]:
    runs = {(c, s): lab.train(c, chosen[c], s) for s in seeds for c in CONFIGS}
    ref = runs[("on-policy", seeds[0])][-1][2]
    models = [ref] + [m for pts in runs.values() for _, _, m in pts if m != ref]
    t0 = time.perf_counter()
    report = lab.evaluate("heldout", models)
    print(f"  evaluate: {len(models)} models, {time.perf_counter() - t0:.0f} s", flush=True)
    metric = metric_of(report)
    print()
    print(
        f"held-out: {report.prompts} questions, rate {report.rate}, metric {metric}, "
        f"{report.confidence:.0%} bootstrap CIs; calls = cumulative paid teacher calls"
    )
    print(
        f"{'run':12s} {'lr':>7s} {'seed':>4s} {'step':>5s} {'calls':>6s} | "
        f"{metric + ' [CI]':>26s} {'diff vs on-policy seed ' + str(seeds[0]) + ' final [CI]':>36s}"
    )
    per_seed: dict[str, dict[int, list[tuple[int, float]]]] = {c: {} for c in CONFIGS}
    for (c, seed), pts in runs.items():
        per_seed[c][seed] = []
        for step, calls, model in pts:
            r = report.row(model, metric)
            per_seed[c][seed].append((calls, r.mean))
            print(
                f"{c:12s} {chosen[c]:7g} {seed:4d} {step:5d} {calls:6d} | "
                f"{fmt_ci(r.mean, r.ci_low, r.ci_high):>26s} "
                f"{fmt_diff(r.diff, r.diff_ci_low, r.diff_ci_high):>36s}"
            )
    return per_seed


def mean_curve(per: dict[int, list[tuple[int, float]]]) -> list[tuple[float, float]]:
    """Checkpoint k's mean calls and mean held-out score over the seeds."""
    n = min(len(c) for c in per.values())
    return [
        (sum(per[s][k][0] for s in per) / len(per), sum(per[s][k][1] for s in per) / len(per))
        for k in range(n)
    ]


def shared_sweep(lab: Lab, lr: float) -> None:
    """The 3-seed sweep sharing one warehouse: seeds 2 and 3 learn from seed 1's samples."""
    assert lab.wh is not None
    sweep_wh = Warehouse(lab.work / "sweep.duckdb")
    shutil.copy(lab.wh.path, sweep_wh.path)
    paid = []
    for seed in (1, 2, 3):
        c = configure(lab.base, f"sweep-{seed}", **CONFIGS["reuse"], lr=lr)
        c.train.seed, c.train.data_seed = seed, 100
        c.train.max_steps = lab.args.sweep_steps
        c.train.reuse = c.train.reuse.model_copy(
            update={"update_epochs": lab.args.epochs, "stored_per_prompt": 3}
        )
        c.warehouse = str(sweep_wh.path)
        paid.append(run(c, sweep_wh).spend.calls)
    print(
        f"3-seed sweep ({lab.args.sweep_steps} steps each), one warehouse, one data order: "
        f"calls per seed {paid}; total {sum(paid)} = {sum(paid) / max(1, paid[0]):.2f}x one run, "
        f"against 3.00x without reuse"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/qa.yaml"))
    ap.add_argument("--workdir", default=str(ROOT / "bench/.cache/sample_efficiency"))
    ap.add_argument("--steps", type=int, default=40, help="steps per run")
    ap.add_argument("--every", type=int, default=10, help="checkpoint (and score) every N steps")
    ap.add_argument("--epochs", type=int, default=4, help="reuse: PPO passes per paid batch")
    ap.add_argument("--lrs", default="1e-5,4e-5,1e-4", help="learning rates tried on val")
    ap.add_argument("--seeds", default="0", help="training seeds of the held-out curves")
    ap.add_argument("--quick", action="store_true", help="a subset and short runs (smoke test)")
    ap.add_argument("--sweep", action="store_true", help="also the shared-warehouse 3-seed sweep")
    ap.add_argument("--sweep-steps", type=int, default=30, help="steps per sweep run")
    ap.add_argument("--plot", default=str(ROOT / "bench/sample_efficiency.png"))
    ap.add_argument("--report", action="store_true", help="only summarize <workdir>/curves.json")
    args = ap.parse_args()
    if args.report:
        saved = json.loads((Path(args.workdir) / "curves.json").read_text())
        per_seed = {
            c: {int(s): [tuple(p) for p in pts] for s, pts in per.items()}
            for c, per in saved["per_seed"].items()
        }
        summarize(
            saved["chosen"], per_seed, [int(s) for s in args.seeds.split(",")], Path(args.plot)
        )
        return
    if args.quick:
        args.steps, args.every, args.sweep_steps = 4, 2, 4
    lrs = [float(x) for x in args.lrs.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    lab = Lab(args)
    print(
        f"sample-efficiency benchmark: {args.config}, RL from {lab.base.compressor.model}, "
        f"{args.steps} steps, lrs {lrs} chosen on val, seeds {seeds}, tolerance "
        f"{lab.base.train.tolerance_tokens} tokens, load average {load_average()}",
        flush=True,
    )
    lab.prepare()
    chosen = select(lab, lrs)
    per_seed = curves_on_heldout(lab, chosen, seeds)
    saved = {"chosen": chosen, "per_seed": per_seed, "load": load_average()}
    (lab.work / "curves.json").write_text(json.dumps(saved))
    if args.sweep:
        print()
        shared_sweep(lab, chosen["reuse"])
    summarize(chosen, per_seed, seeds, Path(args.plot))


def summarize(
    chosen: dict[str, float],
    per_seed: dict[str, dict[int, list[tuple[int, float]]]],
    seeds: list[int],
    png: Path,
) -> None:
    """Mean curves, the plot, and each configuration's calls to the tuned on-policy final."""
    curves = {f"{c} (lr {chosen[c]:g})": mean_curve(per) for c, per in per_seed.items()}
    print()
    print(f"mean over seeds {seeds}:")
    for name, pts in curves.items():
        print(f"  {name:24s} " + "  ".join(f"{c:.0f} calls: {m:.3f}" for c, m in pts))
    plot(curves, {f"{c} (lr {chosen[c]:g})": per for c, per in per_seed.items()}, png)
    print(f"plot: {png}")
    on_calls, on_final = next(iter(curves.values()))[-1]
    print()
    ratios: dict[str, float | None] = {}
    bounds: dict[str, str] = {}
    for c, name in zip(per_seed, curves, strict=True):
        if c == "on-policy":
            continue
        need = reach(curves[name], on_final)
        ratios[c] = None if need is None else need / max(1, on_calls)
        best = max(m for _, m in curves[name])
        # Reached at the first checkpoint: the curve says nothing about fewer calls.
        bound = "<= " if need is not None and curves[name][0][1] >= on_final else ""
        print(
            f"{name}: "
            + (
                f"reaches the tuned on-policy final {on_final:.3f} ({on_calls:.0f} calls) "
                f"after {bound}{need:.0f} calls, ratio {bound}{need / max(1, on_calls):.2f}"
                if need is not None
                else f"never reaches the tuned on-policy final {on_final:.3f} (best {best:.3f})"
            )
        )
        bounds[c] = bound
    print(f"load average {load_average()}")
    r = ratios["reuse"]
    shown = "n/a (not reached)" if r is None else f"{bounds['reuse']}{r:.2f}"
    print(f"calls ratio vs tuned on-policy: {shown}")


if __name__ == "__main__":
    main()
