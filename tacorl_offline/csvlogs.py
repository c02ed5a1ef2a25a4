"""Upstream-compatible CSV logs (``train.csv_logs``): the two files TACO-RL's trainer wrote."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


def append_step(
    run_dir: Path, *, epoch: int, step: int, loss: float, lr: float, reward: float, kept: float
) -> None:
    """One row each in reinforce_logs_updated.csv and rewards_logs_updated.csv.
    ``kept`` is compressed / original tokens; upstream's "Comp Ratio" is its inverse."""
    run_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[list[str], list[Any]]] = {
        "reinforce_logs_updated.csv": (
            ["Train/Val", "Epoch", "Step", "Policy Loss", "LR"],
            ["Train", epoch, step, loss, lr],
        ),
        "rewards_logs_updated.csv": (
            ["Train/Val", "Epoch", "Step", "Rewards", "Comp Ratio"],
            ["Train", epoch, step, reward, (1 / kept) if kept else ""],
        ),
    }
    for name, (header, row) in files.items():
        p = run_dir / name
        new = not p.exists()
        with open(p, "a", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            if new:
                w.writerow(header)
            w.writerow(row)
