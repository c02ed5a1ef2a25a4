"""Paragraph-disjoint splits of the bundled SQuAD train file for RL settings selection.

``data/squad/train.jsonl`` is split again, by paragraph, never by question:

- **val**: the paragraphs whose sha256 of ``"val/" + title/paragraph`` falls in the lowest
  ``VAL_SHARE``. Every setting (learning rate, steps, G, baseline, entropy, KL anchor) is
  chosen on it; ``data/squad/heldout.jsonl`` is never read while choosing.
- **train pool**: the other train paragraphs. ``--train-questions N`` takes the first N of
  its questions in a seeded paragraph order (sha256 of ``"order/" + title/paragraph``), so
  the 200-question set is a prefix of every larger one.

Deterministic and pure (no I/O beyond reading the file): the same file gives the same splits.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

VAL_SHARE = 0.2


def _unit(tag: str, title: str, paragraph: int) -> float:
    h = hashlib.sha256(f"{tag}/{title}/{paragraph}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_train(
    rows: list[dict[str, Any]], n_train: int | None, n_rl: int = 0
) -> dict[str, list[dict]]:
    """{"train": the first ``n_train`` pool questions (all when None), "val": the carve}, and
    with ``n_rl``, "rl": the next ``n_rl`` pool questions (RL on prompts SFT never saw)."""
    val = [r for r in rows if _unit("val", r["title"], r["paragraph"]) < VAL_SHARE]
    pool = [r for r in rows if _unit("val", r["title"], r["paragraph"]) >= VAL_SHARE]
    pool.sort(key=lambda r: (_unit("order", r["title"], r["paragraph"]), r["id"]))
    train = pool if n_train is None else pool[:n_train]
    if n_train is not None and len(train) < n_train:
        raise SystemExit(
            f"--train-questions {n_train}: the train pool holds {len(pool)} questions "
            f"({len(val)} more are the validation carve); ask for at most {len(pool)}"
        )
    out = {"train": train, "val": val}
    if n_rl:
        if n_train is None or len(pool) < n_train + n_rl:
            raise SystemExit(f"--rl-questions {n_rl}: the pool holds {len(pool)} questions")
        out["rl"] = pool[n_train : n_train + n_rl]
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
