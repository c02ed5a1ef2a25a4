"""Training checkpoints on disk: atomic writes, found by run id, read as data.

Design decisions:

- A checkpoint is a directory ``<output_dir>/<run>/checkpoints/step-NNNNNNN`` holding the
  model (``model/``, the compressor's save layout), the trainer state (``trainer_state.pt``:
  optimizer, scheduler, both RNG states, position in the data, moving-average baseline), the
  resolved config (``config.json``) and the run id (``run.json``).
- Write new, then swap: a checkpoint is written to a temp directory, renamed to a name that
  is not taken (``step-NNNNNNN``, or ``step-NNNNNNN.K`` when that step was saved before, say by
  a resumed run), and the ``latest`` pointer is replaced after that. Nothing is deleted before
  the new checkpoint is complete and pointed at, so a kill at any moment leaves ``latest``
  pointing at a complete checkpoint. Then orphaned temp directories (from killed saves) are
  removed and all but the newest ``keep`` checkpoints pruned.
- ``find`` trusts ``latest`` only if it names a complete checkpoint, else falls back to the
  newest complete one; ``--resume latest`` skips training runs that have none, and says so.
- ``torch.load(weights_only=True)``: a checkpoint is data, never code.
- Small and exact (issue 21): AdamW keeps two moments per parameter, twice the model. The rows
  of a 2-D moment that are exactly zero in both moments (the word embeddings of tokens the run
  never saw: half of MiniLM) are left out and restored as zeros, bit for bit (``pack_state``).
  Files of the model directory equal to the previous checkpoint's (tokenizer, configs) are hard
  links to it, and the final model is a hard link to the last checkpoint's, not a second copy
  (``link_model``). Every file is written with normal permissions (0644 under the usual umask).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tacorl_offline.config import Config
from tacorl_offline.errors import UserError
from tacorl_offline.redaction import URL_FIELDS, is_redacted
from tacorl_offline.warehouse import Warehouse

STATE_FILE = "trainer_state.pt"
CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
LATEST = "latest"
_NAME = re.compile(r"^step-(\d{7})(?:\.(\d+))?$")

log = logging.getLogger("tacorl_offline")


def _complete(ckpt: Path) -> bool:
    return (
        all((ckpt / f).is_file() for f in (STATE_FILE, CONFIG_FILE, RUN_FILE))
        and (ckpt / "model").is_dir()
    )


def _order(name: str) -> tuple[int, int]:
    m = _NAME.match(name)
    assert m is not None
    return int(m.group(1)), int(m.group(2) or 0)


def complete_checkpoints(ck_root: Path) -> list[Path]:
    """The run's complete checkpoints, oldest first."""
    if not ck_root.is_dir():
        return []
    found = [p for p in ck_root.iterdir() if _NAME.match(p.name) and p.is_dir() and _complete(p)]
    return sorted(found, key=lambda p: _order(p.name))


def latest_of(ck_root: Path) -> Path | None:
    """What ``latest`` names if that is complete, else the newest complete checkpoint."""
    pointer = ck_root / LATEST
    if pointer.is_file():
        named = ck_root / pointer.read_text().strip()
        if _NAME.match(named.name) and _complete(named):
            return named
    found = complete_checkpoints(ck_root)
    return found[-1] if found else None


def find(output_dir: Path, run: str, warehouse: Warehouse) -> Path:
    """The latest checkpoint of run ``run`` (an id, or 'latest': the newest training run that
    has a checkpoint under ``output_dir``; runs without one are skipped with a warning)."""
    if run == "latest":
        with warehouse.connect(read_only=True) as con:
            runs = [
                r[0]
                for r in con.execute(
                    "SELECT run_id FROM runs WHERE kind = 'train' ORDER BY started_at DESC"
                ).fetchall()
            ]
        if not runs:
            raise UserError(
                "--resume latest: no training run in the warehouse; start one without --resume"
            )
        skipped = []
        for rid in runs:
            if latest_of(output_dir / rid / "checkpoints") is not None:
                break
            skipped.append(rid)
        else:
            raise UserError(
                f"--resume latest: none of the {len(runs)} training run(s) has a checkpoint under "
                f"{output_dir}; check train.output_dir (--output-dir) or start a run without --resume"
            )
        if skipped:
            log.warning(
                "warning: --resume latest: skipped %d newer run(s) with no checkpoint under %s "
                "(%s); resuming %s",
                len(skipped),
                output_dir,
                ", ".join(skipped[:5]),
                rid,
            )
        run = rid
    with warehouse.connect(read_only=True) as con:
        status = con.execute("SELECT status FROM runs WHERE run_id = ?", [run]).fetchall()
    if status and status[0][0] == "finished":
        # Not an error: the work asked for is done (exit 0), and nothing is paid or written.
        raise UserError(
            f"run {run} is already finished: its model is at {output_dir / run / 'final'}; "
            "nothing to resume (start a new run without --resume to train further)",
            exit_code=0,
        )
    ckpt = latest_of(output_dir / run / "checkpoints")
    if ckpt is None:
        raise UserError(
            f"--resume {run}: no checkpoint under {output_dir / run / 'checkpoints'}; check train.output_dir or the run id"
        )
    return ckpt


def read_config(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / CONFIG_FILE).read_text(encoding="utf-8"))


def read_run_id(ckpt: Path) -> str:
    return json.loads((ckpt / RUN_FILE).read_text())["run_id"]


def read_state(ckpt: Path) -> dict[str, Any]:
    return unpack_state(torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True))


_MOMENTS = ("exp_avg", "exp_avg_sq")
_PACKED = "packed_rows"


def pack_state(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with each 2-D optimizer moment pair stored as its nonzero rows only (when that
    saves at least half). Exact: a row left out is zero in both moments."""
    opt = state.get("optimizer")
    if not isinstance(opt, dict) or "state" not in opt:
        return state
    packed = {}
    for k, st in opt["state"].items():
        m, v = st.get(_MOMENTS[0]), st.get(_MOMENTS[1])
        if not (isinstance(m, torch.Tensor) and isinstance(v, torch.Tensor)) or m.dim() != 2:
            packed[k] = st
            continue
        rows = torch.nonzero((m != 0).any(dim=1) | (v != 0).any(dim=1)).flatten()
        if rows.numel() * 2 > m.shape[0]:
            packed[k] = st
            continue
        packed[k] = {
            **{n: t for n, t in st.items() if n not in _MOMENTS},
            _PACKED: rows,
            "shape": torch.tensor(list(m.shape)),
            **{n: st[n].index_select(0, rows).clone() for n in _MOMENTS},
        }
    return {**state, "optimizer": {**opt, "state": packed}}


def unpack_state(state: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`pack_state` (a state saved unpacked passes through)."""
    opt = state.get("optimizer")
    if not isinstance(opt, dict) or "state" not in opt:
        return state
    out = {}
    for k, st in opt["state"].items():
        if _PACKED not in st:
            out[k] = st
            continue
        rows, shape = st[_PACKED], [int(x) for x in st["shape"]]
        full = {}
        for n in _MOMENTS:
            t = torch.zeros(shape, dtype=st[n].dtype)
            t.index_copy_(0, rows, st[n])
            full[n] = t
        out[k] = {
            **{n: t for n, t in st.items() if n not in (*_MOMENTS, _PACKED, "shape")},
            **full,
        }
    return {**state, "optimizer": {**opt, "state": out}}


def normal_permissions(root: Path) -> None:
    """0644 for files, 0755 for directories, minus the umask (some writers create 0600)."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        p.chmod((0o755 if p.is_dir() else 0o644) & ~mask)


def _same_file(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def dedupe_against(new: Path, old: Path | None) -> int:
    """Replace each file of ``new`` that equals the same-named file of ``old`` by a hard link
    to it. Returns the bytes saved. Nothing changes where links are not supported."""
    if old is None or not old.is_dir():
        return 0
    import os

    saved = 0
    for f in new.rglob("*"):
        if f.is_symlink() or not f.is_file():
            continue
        twin = old / f.relative_to(new)
        if twin.is_symlink() or not twin.is_file() or os.path.samefile(f, twin):
            continue
        if not _same_file(f, twin):
            continue
        tmp = f.with_name(f".{f.name}.link")
        try:
            os.link(twin, tmp)
            tmp.replace(f)
            saved += twin.stat().st_size
        except OSError:
            tmp.unlink(missing_ok=True)
    return saved


def link_model(src: Path, dst: Path) -> None:
    """``dst``: a copy of the model directory ``src`` whose files are hard links (copies where
    the filesystem refuses links); symlinks (the llmlingua view) are recreated as such."""
    import os

    dst.mkdir(parents=True)
    for p in sorted(src.rglob("*")):
        q = dst / p.relative_to(src)
        if p.is_symlink():
            q.symlink_to(os.readlink(p))
        elif p.is_dir():
            q.mkdir(exist_ok=True)
        else:
            try:
                os.link(p, q)
            except OSError:
                shutil.copy2(p, q)


def _free_name(ck_root: Path, step: int) -> str:
    name = f"step-{step:07d}"
    k = 0
    while (ck_root / name).exists():
        k += 1
        name = f"step-{step:07d}.{k}"
    return name


def save(
    run_dir: Path,
    step: int,
    *,
    run_id: str,
    save_model: Callable[[Path], None],
    state: dict[str, Any],
    config: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write a checkpoint of ``step`` (write new, then swap) and point ``latest`` at it."""
    ck_root = run_dir / "checkpoints"
    ck_root.mkdir(parents=True, exist_ok=True)
    name = _free_name(ck_root, step)
    tmp = ck_root / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(tmp / "model")
    torch.save(pack_state(state), tmp / STATE_FILE)
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    (tmp / RUN_FILE).write_text(json.dumps({"run_id": run_id, "step": step}), encoding="utf-8")
    normal_permissions(tmp)
    prev = latest_of(ck_root)
    dedupe_against(tmp / "model", prev / "model" if prev else None)
    final = ck_root / name
    tmp.rename(final)
    (ck_root / "latest.tmp").write_text(name)
    (ck_root / "latest.tmp").replace(ck_root / LATEST)
    cleanup(ck_root, keep=keep)
    return final


def cleanup(ck_root: Path, *, keep: int) -> list[Path]:
    """Remove orphaned temp directories and all but the newest ``keep`` complete checkpoints
    (never the one ``latest`` names). Returns what was removed."""
    removed = []
    current = latest_of(ck_root)
    for p in ck_root.iterdir():
        if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    done = complete_checkpoints(ck_root)
    for p in done[: max(0, len(done) - keep)]:
        if p != current:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def swap_dir(new: Path, final: Path) -> None:
    """Put the complete directory ``new`` in place of ``final``, deleting the old one last."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    new.rename(final)
    if old.exists():
        shutil.rmtree(old)


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over the state dict (names and bytes): equal on every rank after each update."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def resumed_config(cfg: Config, ckpt: Path) -> Config:
    """The run's own resolved config from its checkpoint; only the budget and where it writes
    (output_dir, keep_checkpoints, warehouse) and masked URL credentials come from ``cfg``."""
    saved = read_config(ckpt)
    saved["budget"] = cfg.budget.model_dump()
    # URLs were stored with their credentials masked: take them from today's config.
    for section, key in URL_FIELDS:
        if is_redacted(saved.get(section, {}).get(key)):
            saved[section][key] = getattr(getattr(cfg, section), key)
    saved["warehouse"] = cfg.warehouse
    # Resume writes where it is told: today's train.output_dir (--output-dir), where the
    # checkpoint was found, not where the run first lived. Likewise keep_checkpoints.
    saved.setdefault("train", {})["output_dir"] = cfg.train.output_dir
    saved["train"]["keep_checkpoints"] = cfg.train.keep_checkpoints
    return Config.model_validate(saved)


def publish_model(src: Path, final: Path) -> None:
    """``final``: the model directory ``src``, hard-linked (one copy on disk), swapped in."""
    tmp = final.with_name(f".{final.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    link_model(src, tmp)
    swap_dir(tmp, final)


def check_ranks_agree(dist: Any, model: torch.nn.Module, run_dir: Path) -> None:
    """Every rank's weights digest in ``<run>/weights_digest.json``; raises if they differ."""
    digests = dist.gather(weights_digest(model))
    if dist.is_main:
        (run_dir / "weights_digest.json").write_text(
            json.dumps({"ranks": digests}), encoding="utf-8"
        )
        if len(set(digests)) != 1:
            raise RuntimeError(f"weights differ across ranks: {digests}")
