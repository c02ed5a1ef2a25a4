"""``runs prune``: free the disk that training checkpoints take, never a model or a paid answer.

Design decisions (what is removed, and why it is safe):
- A **finished** run's ``checkpoints/`` go: a checkpoint exists only to resume, and a
  finished run is not resumed. Its ``final/`` model, logs and plots stay.
- An **unfinished** run (budget stop, interrupted, failed) keeps its latest checkpoint, the one
  ``--resume`` loads; older checkpoints and half-written ``.step-*.tmp`` directories go.
- A run the warehouse records as **running** is left alone: it may be writing right now.
- A ``train-*`` directory the warehouse does not know (its warehouse was deleted or is
  another one) is only listed, and removed with ``orphans=True``.
- The warehouse itself is never touched: answers in it were paid for.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tacorl_offline.warehouse import Warehouse


@dataclass
class PruneItem:
    path: Path
    why: str
    size: int
    remove: bool = True


def _size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())


def plan_prune(
    warehouse: Warehouse, roots: list[Path], *, orphans: bool = False
) -> list[PruneItem]:
    runs: dict[str, tuple[str, Path]] = {}
    if warehouse.path.exists():
        with warehouse.connect(read_only=True) as con:
            for run_id, status, config in con.execute(
                "SELECT run_id, status, config FROM runs WHERE kind = 'train' ORDER BY started_at"
            ).fetchall():
                cfg = json.loads(config) if isinstance(config, str) else config
                out = Path((cfg.get("train") or {}).get("output_dir", "runs"))
                runs[run_id] = (status, out / run_id)
    items: list[PruneItem] = []
    for run_id, (status, run_dir) in runs.items():
        ck = run_dir / "checkpoints"
        if not ck.is_dir() or status == "running":
            continue
        if status == "finished" and (run_dir / "final").is_dir():
            items.append(
                PruneItem(ck, f"{run_id} finished: checkpoints not needed (final/ kept)", _size(ck))
            )
            continue
        pointer = ck / "latest"
        latest = pointer.read_text().strip() if pointer.is_file() else None
        for d in sorted(ck.iterdir()):
            if not d.is_dir() or d.name == latest:
                continue
            why = (
                "half-written checkpoint"
                if d.name.endswith(".tmp")
                else f"older checkpoint ({latest or 'none'} kept for --resume)"
            )
            items.append(PruneItem(d, f"{run_id} {status}: {why}", _size(d)))
    known_dirs = {d.resolve() for _, d in runs.values()}
    roots = list(dict.fromkeys([*roots, *(d.parent for _, d in runs.values())]))
    for root in roots:
        if not root.is_dir():
            continue
        for d in sorted(root.glob("train-*")):
            if d.is_dir() and d.resolve() not in known_dirs:
                items.append(
                    PruneItem(
                        d,
                        f"not a run of {warehouse.path}"
                        + ("" if orphans else " (kept; --orphans removes it)"),
                        _size(d),
                        remove=orphans,
                    )
                )
    return items


def apply_prune(items: list[PruneItem]) -> int:
    """Remove the items marked for removal; returns the bytes freed."""
    freed = 0
    for it in items:
        if it.remove and it.path.exists():
            shutil.rmtree(it.path)
            freed += it.size
    return freed
