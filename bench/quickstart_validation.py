"""Choose the quick start's settings on validation prompts, never on its held-out part.

The quick start (``tacorl-offline quickstart``: the summarization recipe, centroid stand-in
teacher) holds out a deterministic share of the bundled sample (``split_by_prompt``) and
scores the trained model there. This script never reads those held-out prompts: it takes the
quick start's train part, carves a validation part from it with the same deterministic split
(the recipe's share again, of the train part), and runs the whole chain (ingest, fill, SFT,
RL, evaluate) with the recipe's config plus the ``--set`` overrides, training on the rest and
scoring on the validation part. Each run uses its own temporary warehouse and run directory.

It prints one line per system: the teacher-BLEU mean on validation and the paired difference
(95% bootstrap CI) of the trained model against it, then the wall time and the load average.

Run from the repository root, e.g.::

    python bench/quickstart_validation.py                          # the shipped settings
    python bench/quickstart_validation.py --set train.lr=4.0e-5 --set train.max_steps=20
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from common import parse_sets  # noqa: E402

from pipelines import RECIPES  # noqa: E402
from tacorl_offline.chain import Recipe, recipe_config, run_chain, split_by_prompt  # noqa: E402
from tacorl_offline.display import train_with_progress  # noqa: E402
from tacorl_offline.ingest import read_records  # noqa: E402
from tacorl_offline.resources import resource_dir  # noqa: E402


def load() -> str:
    la = os.getloadavg()
    return f"{la[0]:.2f} {la[1]:.2f} {la[2]:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    args = ap.parse_args()
    overrides = parse_sets(args.set, value=yaml.safe_load)

    quick = RECIPES["summarization"]
    cfg = recipe_config(quick)
    records, _ = read_records(Path(resource_dir("data")) / quick.data, cfg.data)
    train_part, _ = split_by_prompt(records, quick.heldout_share)  # the held-out part is dropped
    with tempfile.TemporaryDirectory(prefix="quick-val-") as tmp:
        data = Path(tmp) / "train_part.json"
        data.write_text(
            json.dumps({str(i): {"original_prompt": r.text} for i, r in enumerate(train_part)}),
            encoding="utf-8",
        )
        recipe = Recipe(
            name="summarization-validation",
            config=quick.config,
            data=str(data),  # an absolute path: data/ / it is it
            about="the quick start's train part; validation carved from it",
            sft=quick.sft,
            heldout_share=quick.heldout_share,
        )
        t0 = time.perf_counter()
        out = run_chain(
            recipe,
            train=lambda c: train_with_progress(c, resume=None, progress=False)[0],
            overrides={
                "warehouse": str(Path(tmp) / "w.duckdb"),
                "train.output_dir": str(Path(tmp) / "runs"),
                "sft.output_dir": str(Path(tmp) / "sft"),
                **overrides,
            },
            say=lambda line: None,
            show=lambda stage, result: None,
        )
        seconds = time.perf_counter() - t0
    report = out["eval"]
    fit = out["ingest:train"].records
    print(f"settings: {overrides or 'as shipped'}")
    print(
        f"train prompts: {fit}, validation prompts: {report.prompts} "
        f"(of the quick start's {len(train_part)} train prompts)"
    )
    trained = report.reference
    for row in report.rows:
        if not row.metric.startswith("teacher."):
            continue
        name = "trained" if row.system == trained else row.system
        if name.startswith("/") or "sft" in name:
            name = "sft"
        line = f"  {name:10s} {row.metric} {row.mean:.3f}"
        if row.system != trained:
            line += f"   trained - it {-row.diff:+.3f} [{-row.diff_ci_high:+.3f}, {-row.diff_ci_low:+.3f}]"
        print(line)
    print(f"wall {seconds:.0f} s, load average {load()}")


if __name__ == "__main__":
    main()
