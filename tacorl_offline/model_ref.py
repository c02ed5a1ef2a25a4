"""What ``-m/--model`` names: a directory, a hub id, ``minilm``, ``run:<id>`` or ``latest``.

Design decisions:
- ``run:<id>`` (an id or a unique prefix) and ``latest`` (the latest training run) are looked
  up in the warehouse, which records each run's output directory, so a user never has to
  rebuild ``<train.output_dir>/<run>/final`` by hand.
- A path that does not exist but names a run the warehouse knows (``runs/<run>/final`` when
  the run saved under ``runs/summarization/<run>/final``) is an error that prints the right
  path, rather than a hub lookup that fails far away.
- A run without a final model (stopped by a budget, interrupted, still going) is an error
  saying how to finish it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tacorl_offline.errors import UserError
from tacorl_offline.run_report import resolve_run_id
from tacorl_offline.warehouse import Warehouse

_RUN_IN_PATH = re.compile(r"(train-[0-9a-f]{6,})")


def final_model_path(con: object, run_id: str) -> tuple[Path, str]:
    """(<output_dir>/<run>/final, status) of a training run."""
    rows = con.execute(  # type: ignore[attr-defined]
        "SELECT kind, status, config FROM runs WHERE run_id = ?", [run_id]
    ).fetchall()
    kind, status, config = rows[0]
    if kind != "train":
        raise UserError(f"run {run_id} is a {kind} run, not a training run; it saved no model")
    cfg = json.loads(config) if isinstance(config, str) else config
    out = Path((cfg.get("train") or {}).get("output_dir", "runs"))
    return out / run_id / "final", status


def resolve_model_ref(ref: str, warehouse: Warehouse) -> str:
    """The directory (or hub id / ``minilm``) that ``ref`` stands for."""
    if ref == "latest" or ref.startswith("run:"):
        if not warehouse.path.exists():
            raise UserError(f"-m {ref}: warehouse {warehouse.path} does not exist; train first")
        with warehouse.connect(read_only=True) as con:
            run_id = resolve_run_id(con, "latest" if ref == "latest" else ref[4:])
            final, status = final_model_path(con, run_id)
        if not final.is_dir():
            raise UserError(
                f"-m {ref}: run {run_id} has no final model at {final} (status: {status}); "
                f"finish it with 'tacorl-offline train --resume {run_id}'"
            )
        return str(final)
    p = Path(ref)
    if not p.exists() and (m := _RUN_IN_PATH.search(ref)) and warehouse.path.exists():
        with warehouse.connect(read_only=True) as con:
            known = con.execute(
                "SELECT run_id FROM runs WHERE run_id = ? AND kind = 'train'", [m.group(1)]
            ).fetchall()
            if known:
                final, _ = final_model_path(con, known[0][0])
                raise UserError(
                    f"-m {ref}: no such directory; run {known[0][0]} saved its model under "
                    f"{final} (or pass -m run:{known[0][0]})"
                )
    return ref
