"""RL settings lab: choose RL settings on a validation split carved from train (never held-out).

Four subcommands, sharing a work directory:

- ``prepare``: carve ``val`` from the train paragraphs and take ``--train-questions N`` from
  the rest (:mod:`squad_splits`), ingest train / val / held-out, teacher-fill all three with
  the extractive stand-in, and run ``sft`` once on train (``configs/qa.yaml``'s settings).
- ``rl``: one RL run from the SFT model (or ``--start base``, or ``--start agnostic``, the
  task-agnostic warm start) with ``--set section.field=value`` overrides, in its own copy of
  the prepared warehouse (so every run pays its own calls), checkpoints every ``--every``
  steps; then the start model and every checkpoint are scored on **val** by the real
  ``evaluate`` (greedy compression at the recipe's rate, F1 against the teacher's answer to
  the original, paired bootstrap against the start). One JSON line per run is appended to
  ``<workdir>/sweep.jsonl``.
- ``sft``: one SFT run on train with ``--set sft.field=value`` overrides (epochs, eval_share
  ...), scored on **val** against the prepared SFT model, appended to the same file (SFT pays
  no teacher calls). ``rl --start <its model directory>`` then runs RL from it.
- ``heuristics``: the heuristics (lead, stopword, random) and any ``--against NAME=DIR``
  models on **val**, paired against ``--model`` (a run's final model), in a throwaway copy of
  the warehouse: is a run ahead of lead, or of another run, before held-out is ever scored?
  ``--split heldout`` reports a model already chosen the same way.

    python bench/rl_lab.py prepare --workdir bench/.cache/lab200 --train-questions 200
    python bench/rl_lab.py rl --workdir bench/.cache/lab200 --name lr4e-5 --set train.lr=4e-5
    python bench/rl_lab.py sft --workdir bench/.cache/lab200 --name ep30 --set sft.epochs=30
    python bench/rl_lab.py heuristics --workdir bench/.cache/lab200 --model <run>/final

Held-out is ingested and filled here (so ``bench/learning.py`` can reuse the work directory);
this script scores it only when asked (``heuristics --split heldout``), never while choosing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, load_average, parse_sets

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from squad_splits import read_jsonl, split_train, write_jsonl

from tacorl_offline.config import Config, resolve
from tacorl_offline.eval_output import fmt_num
from tacorl_offline.evaluate import run_evaluation
from tacorl_offline.fill import run_fill
from tacorl_offline.ingest import read_records
from tacorl_offline.ingest_store import store_records
from tacorl_offline.items import load_items
from tacorl_offline.runs import key_of
from tacorl_offline.sft import run_sft
from tacorl_offline.trainer import Trainer
from tacorl_offline.warehouse import Warehouse

DATASET = "squad-lab"
METRIC = "teacher.squad_f1"
HEURISTICS = ["lead", "stopword", "random"]


def base_config(work: Path, extra: dict[str, Any] | None = None) -> Config:
    overrides: dict[str, Any] = {
        "warehouse": str(work / "tacorl.duckdb"),
        "data.dataset": DATASET,
        "sft.output_dir": str(work / "sft"),
        "train.output_dir": str(work / "runs"),
    }
    overrides.update(extra or {})
    return resolve(str(ROOT / "configs/qa.yaml"), overrides=overrides)


def with_split(cfg: Config, split: str) -> Config:
    c = cfg.model_copy(deep=True)
    c.data.split = split
    return c


def prepare(args: argparse.Namespace) -> None:
    prepare_workdir(
        Path(args.workdir),
        args.train_questions,
        args.sft_epochs,
        args.agnostic,
        rl_questions=args.rl_questions,
    )


def prepare_workdir(
    work: Path,
    train_questions: int | None,
    sft_epochs: int | None,
    agnostic: bool,
    sft: bool = True,
    rl_questions: int = 0,
) -> dict[str, Any]:
    """Splits, ingest, fill, SFT (and the task-agnostic warm start): ``prepared.json``.

    ``sft=False`` stops after the fill (for RL from the base encoder)."""
    if work.exists():
        shutil.rmtree(work)
    (work / "data").mkdir(parents=True)
    rows = read_jsonl(ROOT / "data/squad/train.jsonl")
    splits = split_train(rows, train_questions, rl_questions)
    splits["heldout"] = read_jsonl(ROOT / "data/squad/heldout.jsonl")
    cfg = base_config(work, {"sft.epochs": sft_epochs})
    wh = Warehouse(cfg.warehouse)
    info: dict[str, Any] = {"train_questions": train_questions, "load_start": load_average()}
    t0 = time.perf_counter()
    for split, rs in splits.items():
        path = work / "data" / f"{split}.jsonl"
        write_jsonl(path, rs)
        records, _ = read_records(path, cfg.data)
        store_records(wh, records, dataset=DATASET, split=split, source_path=str(path))
        s = asyncio.run(run_fill(with_split(cfg, split), warehouse=wh))
        paras = len({(r["title"], r["paragraph"]) for r in rs})
        info[f"{split}_questions"] = len(rs)
        info[f"{split}_paragraphs"] = paras
        info[f"fill_calls_{split}"] = s.spend.calls
        print(f"{split}: {len(rs)} questions, {paras} paragraphs, fill paid {s.spend.calls}")
    info["fill_seconds"] = time.perf_counter() - t0
    if not sft:
        (work / "prepared.json").write_text(json.dumps(info, indent=1))
        return info
    t0 = time.perf_counter()
    tkey = key_of(cfg.teacher)
    with wh.connect() as con:
        items = load_items(con, cfg, tkey)
    warm = run_sft(cfg, warehouse=wh, items=items, teacher_key=tkey)
    for e in warm.result.epochs:
        print(f"  sft epoch {e.epoch}: loss {e.loss:.4f}, label F1 {e.label_f1:.3f}", flush=True)
    info["sft_model"] = str(warm.output)
    info["sft_seconds"] = time.perf_counter() - t0
    if agnostic:
        t0 = time.perf_counter()
        # the task-agnostic start as measured in bench/README.md: 3 epochs, a tenth held out
        acfg = base_config(
            work,
            {
                "sft.source": "stopword",
                "sft.output_dir": str(work / "sft-agnostic"),
                "sft.epochs": 3,
                "sft.eval_share": 0.1,
            },
        )
        agn = run_sft(acfg, warehouse=wh, items=items, teacher_key=tkey)
        info["agnostic_model"] = str(agn.output)
        info["agnostic_seconds"] = time.perf_counter() - t0
    info["load_end"] = load_average()
    (work / "prepared.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))
    return info


def start_model(work: Path, start: str) -> str:
    if start == "base":
        return "minilm"
    if start not in ("sft", "agnostic"):
        return start
    info = json.loads((work / "prepared.json").read_text())
    return info["sft_model"] if start == "sft" else info["agnostic_model"]


def rl(args: argparse.Namespace) -> None:
    work = Path(args.workdir)
    run_dir = work / "sweep" / args.name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    shutil.copy(work / "tacorl.duckdb", run_dir / "tacorl.duckdb")  # every run pays its own
    extra = parse_sets(args.set)
    start = start_model(work, args.start)
    extra.update(
        {
            "warehouse": str(run_dir / "tacorl.duckdb"),
            "train.output_dir": str(run_dir / "runs"),
            "train.checkpoint_every": args.every,
            "train.keep_checkpoints": 1000,
            "compressor.model": start,
        }
    )
    cfg = base_config(work, extra)
    scored = with_split(cfg, "val")  # at the recipe's rate, whatever rate RL trained at
    if args.train_rate is not None:
        cfg.compressor.rate = args.train_rate
    wh = Warehouse(cfg.warehouse)
    t0 = time.perf_counter()
    summary = asyncio.run(Trainer(cfg, warehouse=wh).run())
    train_s = time.perf_counter() - t0
    ck = sorted((summary.run_dir / "checkpoints").glob("step-*"))
    models = {"0": start}
    for c in ck:
        models[str(int(c.name.split("-")[1].split(".")[0]))] = str(c / "model")
    models[str(summary.steps)] = str(summary.final_model)
    t0 = time.perf_counter()
    report = asyncio.run(
        run_evaluation(
            scored,
            models=list(dict.fromkeys(models.values())),
            baselines=[],
            reference=start,
            warehouse=wh,
        )
    )
    curve = {}
    for step, m in models.items():
        r = report.row(m, METRIC)
        curve[step] = {
            "val": round(r.mean, 4),
            "diff": round(r.diff, 4),
            "ci": [round(r.diff_ci_low, 4), round(r.diff_ci_high, 4)],
        }
    best = max(curve, key=lambda s: (curve[s]["val"], -int(s)))
    out = {
        "name": args.name,
        "start": args.start,
        "set": extra | {"compressor.model": args.start},
        "train_rate": args.train_rate,
        "rl_calls": summary.spend.calls,
        "final_model": str(summary.final_model),
        "steps": summary.steps,
        "rewards": [round(x, 4) for x in summary.rewards],
        "curve": curve,
        "best_step": best,
        "train_s": round(train_s, 1),
        "eval_s": round(time.perf_counter() - t0, 1),
        "load": load_average(),
    }
    with (work / "sweep.jsonl").open("a") as f:
        f.write(json.dumps(out) + "\n")
    print(
        f"{args.name}: calls {summary.spend.calls}, val "
        + ", ".join(f"{s}:{v['val']:.3f}" for s, v in curve.items())
        + f" | final-start {curve[str(summary.steps)]['diff']:+.3f} {curve[str(summary.steps)]['ci']}"
        + f" | best step {best} | {train_s:.0f}s train, load {load_average()}"
    )
    if not args.keep:  # the final model stays (bench/learning.py --from-sweep reads it)
        shutil.rmtree(summary.run_dir / "checkpoints", ignore_errors=True)


def sft(args: argparse.Namespace) -> None:
    """One SFT run on the prepared train split with ``--set`` overrides, scored on **val**
    against the prepared SFT model (the SFT settings sweep; SFT pays no teacher calls)."""
    work = Path(args.workdir)
    out_dir = work / "sft-sweep" / args.name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    extra = parse_sets(args.set)
    extra["sft.output_dir"] = str(out_dir)
    cfg = base_config(work, extra)
    wh = Warehouse(cfg.warehouse)
    t0 = time.perf_counter()
    tkey = key_of(cfg.teacher)
    with wh.connect() as con:
        items = load_items(con, cfg, tkey)
    warm = run_sft(cfg, warehouse=wh, items=items, teacher_key=tkey)
    sft_s = time.perf_counter() - t0
    ref = start_model(work, "sft")
    report = asyncio.run(
        run_evaluation(
            with_split(cfg, "val"),
            models=[ref, str(warm.output)],
            baselines=[],
            reference=ref,
            warehouse=wh,
        )
    )
    r, r0 = report.row(str(warm.output), METRIC), report.row(ref, METRIC)
    out = {
        "name": args.name,
        "kind": "sft",
        "set": extra,
        "model": str(warm.output),
        "label_f1": [round(e.label_f1, 4) for e in warm.result.epochs],
        "val": round(r.mean, 4),
        "val_prepared_sft": round(r0.mean, 4),
        "diff": round(r.diff, 4),
        "ci": [round(r.diff_ci_low, 4), round(r.diff_ci_high, 4)],
        "sft_s": round(sft_s, 1),
        "load": load_average(),
    }
    with (work / "sweep.jsonl").open("a") as f:
        f.write(json.dumps(out) + "\n")
    print(
        f"{args.name}: val {r.mean:.3f} (prepared sft {r0.mean:.3f}), diff {r.diff:+.3f} "
        f"[{r.diff_ci_low:+.3f}, {r.diff_ci_high:+.3f}] | label F1 by epoch "
        + ", ".join(f"{e.label_f1:.3f}" if e.held_out else "-" for e in warm.result.epochs)
        + f" | {sft_s:.0f}s, load {load_average()} | model {warm.output}"
    )


def heuristics(args: argparse.Namespace) -> None:
    """Lead, stopword and random (and any ``--against`` models) on ``--split`` (val unless
    said), each paired against ``--model``. The compressed prompts' answers go to a temporary
    copy of the warehouse, so the work directory's (which every ``rl`` run copies) stays as
    prepared."""
    work = Path(args.workdir)
    model = start_model(work, args.model)
    against = {
        name: start_model(work, d)
        for name, d in parse_sets(args.against, value=str, flag="--against").items()
    }
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(work / "tacorl.duckdb", Path(tmp) / "tacorl.duckdb")
        cfg = base_config(work, {"warehouse": str(Path(tmp) / "tacorl.duckdb")})
        report = asyncio.run(
            run_evaluation(
                with_split(cfg, args.split),
                models=[model, *against.values()],
                baselines=HEURISTICS,
                reference=model,
                warehouse=Warehouse(cfg.warehouse),
            )
        )
    print(f"{args.split}, {report.prompts} questions, {METRIC}, paired against {model}")
    print(f"  {'model':<9} {report.row(model, METRIC).mean:.3f}")
    for label, name in [*against.items(), *((h, h) for h in HEURISTICS)]:
        r = report.row(name, METRIC)
        print(f"  {label:<9} {r.mean:.3f}  model minus it {reference_minus(r)}")


def reference_minus(r: Any) -> str:
    """A report row's paired difference turned round: the reference minus this system,
    ``+0.056 [+0.025, +0.088]`` (``evaluate``'s rows hold this system minus the reference)."""
    return (
        f"{fmt_num(-r.diff, True)} [{fmt_num(-r.diff_ci_high, True)}, "
        f"{fmt_num(-r.diff_ci_low, True)}]"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--workdir", required=True)
    p.add_argument("--train-questions", type=int, default=None)
    p.add_argument("--sft-epochs", type=int, default=None)
    p.add_argument(
        "--rl-questions",
        type=int,
        default=0,
        help="also split 'rl': the next M pool questions, for RL on prompts SFT never saw "
        "(then: rl --set data.split=rl)",
    )
    p.add_argument("--agnostic", action="store_true", help="also the task-agnostic warm start")
    p.set_defaults(fn=prepare)
    r = sub.add_parser("rl")
    r.add_argument("--workdir", required=True)
    r.add_argument("--name", required=True)
    r.add_argument("--start", default="sft", help="sft, agnostic, base or a model directory")
    r.add_argument("--set", action="append", default=[], help="section.field=value (JSON value)")
    r.add_argument("--every", type=int, default=10)
    r.add_argument("--keep", action="store_true", help="keep the run's checkpoints")
    r.add_argument(
        "--train-rate",
        type=float,
        default=None,
        help="compression rate RL samples and is rewarded at (default: the recipe's); val is "
        "scored at the recipe's rate either way",
    )
    r.set_defaults(fn=rl)
    f = sub.add_parser("sft")
    f.add_argument("--workdir", required=True)
    f.add_argument("--name", required=True)
    f.add_argument("--set", action="append", default=[], help="section.field=value (JSON value)")
    f.set_defaults(fn=sft)
    h = sub.add_parser("heuristics")
    h.add_argument("--workdir", required=True)
    h.add_argument("--model", default="sft", help="sft, agnostic or a model directory")
    h.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="another model (sft, agnostic or a directory) paired against --model",
    )
    h.add_argument(
        "--split",
        default="val",
        choices=["val", "heldout"],
        help="val (choosing); heldout only to report a model already chosen",
    )
    h.set_defaults(fn=heuristics)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
