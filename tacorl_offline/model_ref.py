"""What a model name (``-m``, ``--init``, ``compressor.model``) stands for.

Design decisions:
- One resolver for every place a model is taken (``compress``, ``evaluate``, ``sft``,
  ``train``), so a name means the same thing everywhere. Accepted, in this order: an existing
  directory; the aliases ``minilm`` (the packaged base encoder), ``latest`` (the latest training
  run's final model), ``run:<id>`` (a training or sft run by id or unique prefix),
  ``sft:latest`` / ``train:latest`` (the latest finished run of that kind); a Hugging Face hub
  id whose files the local cache already holds; and, only when ``compressor.hub_download`` is
  true, any other hub id (downloaded by transformers).
- Anything else fails at once, before a model loads or a call is paid, with one line listing
  what is available (the aliases and the runs that saved a model), rather than spending half a
  minute retrying the hub and then blaming a file.
- A path that does not exist but names a run the warehouse knows (``runs/<run>/final`` when the
  run saved under ``runs/summarization/<run>/final``) is an error that prints the right path.
- A run without a final model (stopped by a budget, interrupted, still going) is an error
  saying how to finish it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tacorl_offline.errors import UserError
from tacorl_offline.run_report import resolve_run_id
from tacorl_offline.warehouse import Warehouse

_RUN_IN_PATH = re.compile(r"((?:train|sft)-[0-9a-f]{6,})")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
BUILTIN = "minilm"
_OUTPUT_DIR_OF = {"train": "train", "sft": "sft"}  # the config section naming the output dir


def final_model_path(con: Any, run_id: str) -> tuple[Path, str]:
    """(<output_dir>/<run>/final, status) of a training or sft run."""
    rows = con.execute(
        "SELECT kind, status, config FROM runs WHERE run_id = ?", [run_id]
    ).fetchall()
    kind, status, config = rows[0]
    if kind not in _OUTPUT_DIR_OF:
        raise UserError(
            f"run {run_id} is a {kind} run, not a training or sft run; it saved no model"
        )
    cfg = json.loads(config) if isinstance(config, str) else config
    out = Path((cfg.get(_OUTPUT_DIR_OF[kind]) or {}).get("output_dir", "runs"))
    return out / run_id / "final", status


def _latest_of(con: Any, kind: str) -> str:
    rows = con.execute(
        "SELECT run_id FROM runs WHERE kind = ? ORDER BY started_at DESC LIMIT 1", [kind]
    ).fetchall()
    if not rows:
        cmd = "sft" if kind == "sft" else "train"
        raise UserError(f"no {kind} run in the warehouse yet; run 'tacorl-offline {cmd}' first")
    return str(rows[0][0])


def available_models(warehouse: Warehouse, limit: int = 5) -> list[str]:
    """The names a user can pass: the alias ``minilm`` and the latest runs that saved a model."""
    out = [BUILTIN]
    if not warehouse.path.exists():
        return out
    try:
        with warehouse.connect(read_only=True) as con:
            rows = con.execute(
                "SELECT run_id, kind FROM runs WHERE kind IN ('train', 'sft') "
                "ORDER BY started_at DESC"
            ).fetchall()
            seen_kind: set[str] = set()
            named = []
            for run_id, kind in rows:
                final, _ = final_model_path(con, run_id)
                if not final.is_dir():
                    continue
                if kind not in seen_kind:
                    seen_kind.add(kind)
                    named.append(f"{'latest' if kind == 'train' else 'sft:latest'} ({run_id})")
                if len(named) < limit + 2:
                    named.append(f"run:{run_id}")
    except UserError:
        return out
    return out + named


def _is_cached_hub_id(ref: str) -> bool:
    if not _HUB_ID.match(ref):
        return False
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return False
    try:
        hit = try_to_load_from_cache(ref, "config.json")
    except Exception:  # an invalid repo id for the hub's own rules
        return False
    return isinstance(hit, str)


def _run_model(ref: str, warehouse: Warehouse) -> str:
    if not warehouse.path.exists():
        raise UserError(f"'{ref}': warehouse {warehouse.path} does not exist; train first")
    with warehouse.connect(read_only=True) as con:
        if ref == "latest" or ref == "train:latest":
            run_id = _latest_of(con, "train")
        elif ref == "sft:latest":
            run_id = _latest_of(con, "sft")
        else:
            run_id = resolve_run_id(con, ref.split(":", 1)[1])
        final, status = final_model_path(con, run_id)
        kind = con.execute("SELECT kind FROM runs WHERE run_id = ?", [run_id]).fetchone()[0]
    if not final.is_dir():
        fix = (
            f"finish it with 'tacorl-offline train --resume {run_id}'"
            if kind == "train"
            else "run 'tacorl-offline sft' again"
        )
        raise UserError(
            f"'{ref}': run {run_id} has no final model at {final} (status: {status}); {fix}"
        )
    return str(final)


def resolve_model_ref(ref: str, warehouse: Warehouse, *, hub_download: bool = False) -> str:
    """The directory, hub id or ``minilm`` that ``ref`` stands for (see the module docstring)."""
    ref = str(ref)
    p = Path(ref).expanduser()
    if p.is_dir():
        return str(p)
    if ref == BUILTIN:
        return ref
    if ref in ("latest", "train:latest", "sft:latest") or ref.startswith(
        ("run:", "sft:", "train:")
    ):
        return _run_model(ref, warehouse)
    if (m := _RUN_IN_PATH.search(ref)) and warehouse.path.exists():
        with warehouse.connect(read_only=True) as con:
            known = con.execute(
                "SELECT run_id FROM runs WHERE run_id = ? AND kind IN ('train', 'sft')",
                [m.group(1)],
            ).fetchall()
            if known:
                final, _ = final_model_path(con, known[0][0])
                raise UserError(
                    f"-m {ref}: no such directory; run {known[0][0]} saved its model under "
                    f"{final} (or pass -m run:{known[0][0]})"
                )
    if p.exists():
        raise UserError(f"model '{ref}' is a file; pass the model's directory")
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise UserError(
            f"model directory {ref} does not exist; available: {', '.join(available_models(warehouse))}"
        )
    if _is_cached_hub_id(ref):
        return ref
    if hub_download and _HUB_ID.match(ref):
        return ref
    hint = (
        "; a hub id downloads only with compressor.hub_download: true "
        "(or TACORL_COMPRESSOR__HUB_DOWNLOAD=true)"
        if _HUB_ID.match(ref) and not hub_download
        else ""
    )
    raise UserError(
        f"model '{ref}' is not a directory, an alias or a cached hub model; available: "
        f"{', '.join(available_models(warehouse))}{hint}"
    )
