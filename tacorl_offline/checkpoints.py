"""Training checkpoints on disk: atomic writes, found by run id, read as data.

Design decisions:

- A checkpoint is a directory ``<output_dir>/<run>/checkpoints/step-NNNNNNN`` holding the
  model (``model/``, the compressor's save layout), the trainer state (``trainer_state.pt``:
  optimizer, scheduler, both RNG states, position in the data, moving-average baseline), the
  resolved config (``config.json``) and the run id (``run.json``).
- Writes are atomic: a temp directory is renamed into place, and the ``latest`` pointer is
  replaced last, so a kill at any moment leaves the previous checkpoint usable.
- ``torch.load(weights_only=True)``: a checkpoint is data, never code.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tacorl_offline.errors import UserError
from tacorl_offline.warehouse import Warehouse

STATE_FILE = "trainer_state.pt"
CONFIG_FILE = "config.json"
RUN_FILE = "run.json"


def find(output_dir: Path, run: str, warehouse: Warehouse) -> Path:
    """The latest checkpoint of run ``run`` (an id, or 'latest': the newest training run)."""
    if run == "latest":
        with warehouse.connect(read_only=True) as con:
            found = con.execute(
                "SELECT run_id FROM runs WHERE kind = 'train' ORDER BY started_at DESC LIMIT 1"
            ).fetchall()
        if not found:
            raise UserError(
                "--resume latest: no training run in the warehouse; start one without --resume"
            )
        run = found[0][0]
    with warehouse.connect(read_only=True) as con:
        status = con.execute("SELECT status FROM runs WHERE run_id = ?", [run]).fetchall()
    if status and status[0][0] == "finished":
        # Not an error: the work asked for is done (exit 0), and nothing is paid or written.
        raise UserError(
            f"run {run} is already finished: its model is at {output_dir / run / 'final'}; "
            "nothing to resume (start a new run without --resume to train further)",
            exit_code=0,
        )
    pointer = output_dir / run / "checkpoints" / "latest"
    if not pointer.exists():
        raise UserError(
            f"--resume {run}: no checkpoint under {output_dir / run / 'checkpoints'}; check train.output_dir or the run id"
        )
    return output_dir / run / "checkpoints" / pointer.read_text().strip()


def read_config(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / CONFIG_FILE).read_text(encoding="utf-8"))


def read_run_id(ckpt: Path) -> str:
    return json.loads((ckpt / RUN_FILE).read_text())["run_id"]


def read_state(ckpt: Path) -> dict[str, Any]:
    return torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)


def save(
    run_dir: Path,
    step: int,
    *,
    run_id: str,
    save_model: Callable[[Path], None],
    state: dict[str, Any],
    config: dict[str, Any],
) -> Path:
    """Write checkpoint ``step-NNNNNNN`` atomically and point ``latest`` at it."""
    ck_root = run_dir / "checkpoints"
    name = f"step-{step:07d}"
    tmp = ck_root / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(tmp / "model")
    torch.save(state, tmp / STATE_FILE)
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    (tmp / RUN_FILE).write_text(json.dumps({"run_id": run_id, "step": step}), encoding="utf-8")
    final = ck_root / name
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    (ck_root / "latest.tmp").write_text(name)
    (ck_root / "latest.tmp").replace(ck_root / "latest")
    return final


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over the state dict (names and bytes): equal on every rank after each update."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
