"""Learning benchmark: does the shipped QA recipe beat the simple alternatives on held-out data?

Real data, real components, one run:

- data: the bundled paragraph-disjoint SQuAD 2.0 split (``data/squad/``: train and held-out
  never share a paragraph; CC BY-SA 4.0);
- teacher: the extractive QA stand-in (answers with the context sentence overlapping the
  question most; deterministic, free), teacher-filled once for both splits;
- recipe: ``configs/qa.yaml`` as shipped (question-aware MiniLM, SFT warm start, then
  rate-consistent REINFORCE), trained on train only;
- systems, all at the same rate on the held-out split, scored by ``evaluate`` (paired 95%
  bootstrap CIs): the shipped recipe (SFT+RL), the base encoder (fresh head), SFT only,
  RL only (same RL from the base encoder), and the baselines original / random / stopword /
  lead.

It prints F1 against the teacher's answer to the original (the reward's quantity) and against
the gold answers, each with its CI and its paired difference against the shipped recipe, one
verdict line per baseline, the teacher calls each phase paid, the wall time of each phase and
the load average. The held-out numbers are reported once: nothing here is tuned on them.

Run from the repository root::

    python bench/learning.py                  # the full recipe (about 15-20 min on 2 quiet cores)
    python bench/learning.py --quick          # a smoke run on a subset (a few minutes)
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
# Library chatter (load reports, shard-writing progress bars) is not this report's (as the CLI).
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from common import load_average  # noqa: E402

from tacorl_offline.config import Config, resolve  # noqa: E402
from tacorl_offline.evaluate import run_evaluation  # noqa: E402
from tacorl_offline.fill import run_fill  # noqa: E402
from tacorl_offline.ingest import read_records  # noqa: E402
from tacorl_offline.ingest_store import store_records  # noqa: E402
from tacorl_offline.items import load_items  # noqa: E402
from tacorl_offline.runs import key_of  # noqa: E402
from tacorl_offline.sft import run_sft  # noqa: E402
from tacorl_offline.trainer import Trainer  # noqa: E402
from tacorl_offline.warehouse import Warehouse  # noqa: E402

DATASET = "squad-bench"


load = load_average  # sample_efficiency imports it from here


def with_split(cfg: Config, split: str) -> Config:
    c = cfg.model_copy(deep=True)
    c.data.split = split
    return c


def prepare(cfg: Config, wh: Warehouse, limit: int | None) -> dict[str, int]:
    """Ingest both splits and teacher-fill them; returns the calls each split paid."""
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


def train_rl(cfg: Config, wh: Warehouse, start: str, steps: int | None) -> Any:
    c = cfg.model_copy(deep=True)
    c.compressor.model = start
    if steps:
        c.train.max_steps = steps
    return asyncio.run(Trainer(c, warehouse=wh).run())


def fmt_ci(mean: float, lo: float, hi: float) -> str:
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def fmt_diff(d: float, lo: float, hi: float) -> str:
    return f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/qa.yaml"))
    ap.add_argument("--workdir", default=str(ROOT / "bench/.cache/learning"))
    ap.add_argument("--quick", action="store_true", help="a subset and short runs (smoke test)")
    ap.add_argument("--sft-epochs", type=int, default=None)
    ap.add_argument("--rl-steps", type=int, default=None)
    ap.add_argument("--no-rl-only", action="store_true", help="skip the RL-only run")
    args = ap.parse_args()

    work = Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)  # a fresh warehouse: every call of this run is counted
    work.mkdir(parents=True)
    overrides: dict[str, Any] = {
        "warehouse": str(work / "tacorl.duckdb"),
        "data.dataset": DATASET,
        "sft.output_dir": str(work / "sft"),
        "train.output_dir": str(work / "runs"),
        "sft.epochs": args.sft_epochs or (1 if args.quick else None),
        "train.max_steps": args.rl_steps or (4 if args.quick else None),
    }
    cfg = resolve(args.config, overrides=overrides)
    wh = Warehouse(cfg.warehouse)
    times: dict[str, float] = {}
    calls: dict[str, int] = {}
    print(f"learning benchmark: {args.config}, load average {load()}", flush=True)

    t0 = time.perf_counter()
    fill_calls = prepare(cfg, wh, 120 if args.quick else None)
    times["ingest + teacher-fill"] = time.perf_counter() - t0
    calls["teacher-fill (train + held-out)"] = sum(fill_calls.values())

    t0 = time.perf_counter()
    tkey = key_of(cfg.teacher)
    with wh.connect() as con:
        items = load_items(con, cfg, tkey)
    sft = run_sft(cfg, warehouse=wh, items=items, teacher_key=tkey)
    times["sft"] = time.perf_counter() - t0
    calls["sft"] = 0
    for e in sft.result.epochs:
        print(f"  sft epoch {e.epoch}: loss {e.loss:.4f}, label F1 {e.label_f1:.3f}", flush=True)

    t0 = time.perf_counter()
    shipped = train_rl(cfg, wh, str(sft.output), None)
    times["rl (from sft)"] = time.perf_counter() - t0
    calls["rl (from sft)"] = shipped.spend.calls
    times["recipe total (fill + sft + rl)"] = sum(times.values())

    models = {
        "sft+rl (shipped)": str(shipped.final_model),
        "base": cfg.compressor.model,
        "sft": str(sft.output),
    }
    if not args.no_rl_only:
        t0 = time.perf_counter()
        rl_only = train_rl(cfg, wh, cfg.compressor.model, None)
        times["rl only (from base)"] = time.perf_counter() - t0
        calls["rl only (from base)"] = rl_only.spend.calls
        models["rl only"] = str(rl_only.final_model)

    t0 = time.perf_counter()
    ev_cfg = with_split(cfg, "heldout")
    report = asyncio.run(
        run_evaluation(
            ev_cfg, models=list(models.values()), reference=models["sft+rl (shipped)"], warehouse=wh
        )
    )
    times["evaluate (held-out)"] = time.perf_counter() - t0
    calls["evaluate"] = report.calls
    label = {v: k for k, v in models.items()}

    def name(system: str) -> str:
        return label.get(system, system)

    metrics = report.primary_metrics
    print()
    print(
        f"held-out: {report.prompts} questions from paragraphs never seen in training, rate "
        f"{report.rate}, {report.confidence:.0%} paired bootstrap CIs ({report.resamples} resamples)"
    )
    head = f"{'system':18s} {'ratio':>6s}"
    for m in metrics:
        head += f" | {m + ' mean [CI]':>24s} {'diff vs shipped [CI]':>24s}"
    print(head)
    for s in report.systems:
        line = f"{name(s.name):18s} {s.token_ratio:6.3f}"
        for m in metrics:
            try:
                r = report.row(s.name, m)
            except KeyError:
                line += f" | {'n/a':>24s} {'':>24s}"
                continue
            line += f" | {fmt_ci(r.mean, r.ci_low, r.ci_high):>24s} {fmt_diff(r.diff, r.diff_ci_low, r.diff_ci_high):>24s}"
        print(line)
    print()
    for m in metrics:
        for s in report.systems:
            if s.name == report.reference or s.name == "original":
                continue
            r = report.row(s.name, m)
            verdict = "BEATS" if r.diff < 0 and r.diff_ci_high < 0 else "does NOT beat"
            print(
                f"{m}: shipped recipe {verdict} {name(s.name)}: "
                f"{-r.diff:+.3f} [{-r.diff_ci_high:+.3f}, {-r.diff_ci_low:+.3f}]"
            )
    print()
    print("teacher calls paid: " + ", ".join(f"{k} {v}" for k, v in calls.items()))
    print("wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    print(f"load average at the end: {load()} (2 cores)")


if __name__ == "__main__":
    main()
