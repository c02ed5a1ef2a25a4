"""Where a QA compressor loses F1 against the extractive stand-in, on a work directory's split.

The stand-in teacher answers with the sentence that overlaps the question most, so a
compressed prompt can lose in two ways: the teacher picks **another sentence** (the kept words
made a different sentence overlap more), or it picks **the right sentence, partly kept**. The
second splits again by whether the sentence fits the budget at all (more than ``rate`` of the
context's words: no compression at that rate keeps it whole). Each line gives the count and the
F1 it costs, as a share of the split's mean. Greedy compression as ``evaluate`` does it
(``configs/qa.yaml``'s rate and forced tokens); scores are recomputed here, no teacher call.

    python bench/qa_errors.py --workdir bench/.cache/lab200 --model DIR [--split val]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from rl_lab import base_config

from tacorl_offline.compressor import Compressor
from tacorl_offline.metrics import squad_f1
from tacorl_offline.teachers.extractive import best_overlap_sentence, split_sentences


def classify(context: str, question: str, compressed: str, rate: float) -> tuple[str, float]:
    """(kind, F1 lost): ok, wrong sentence, partial (fits), partial (over budget)."""
    orig = best_overlap_sentence(context, question)
    ans = best_overlap_sentence(compressed, question)
    f = squad_f1(ans, orig)
    if f >= 0.999:
        return "ok", 0.0
    source = max(split_sentences(context), key=lambda s: squad_f1(ans, s))
    if source != orig:
        return "wrong sentence", 1 - f
    if len(orig.split()) > rate * len(context.split()):
        return "partial (over budget)", 1 - f
    return "partial (fits)", 1 - f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--model", required=True, action="append", help="a compressor directory")
    ap.add_argument("--split", default="val")
    args = ap.parse_args()
    cfg = base_config(Path(args.workdir))
    rows = [json.loads(x) for x in (Path(args.workdir) / "data" / f"{args.split}.jsonl").open()]
    rate = cfg.compressor.rate
    for model in args.model:
        comp = Compressor.from_pretrained(model)
        out = comp.compress(
            [r["context"] for r in rows],
            fields=[{"question": r["question"]} for r in rows],
            rate=rate,
            force_tokens=cfg.compressor.force_tokens,
        )
        kinds: dict[str, list[float]] = {}
        for r, c in zip(rows, out, strict=True):
            kind, lost = classify(r["context"], r["question"], c["compressed_prompt"], rate)
            kinds.setdefault(kind, []).append(lost)
        n = len(rows)
        mean = 1 - sum(sum(v) for v in kinds.values()) / n
        print(f"{model}: {args.split} F1 vs teacher {mean:.3f} over {n} questions")
        for kind in ("ok", "wrong sentence", "partial (fits)", "partial (over budget)"):
            v = kinds.get(kind, [])
            print(f"  {kind:22s} {len(v):4d} questions, F1 lost / n {sum(v) / n:.3f}")


if __name__ == "__main__":
    main()
