"""The policy a run trains: the compressor (from its checkpoint when resuming; its lower layers
frozen as ``train.freeze_layers`` says), its DDP wrapper, and for the KL anchor
(``train.kl_coeff``) a frozen copy of the start policy."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from tacorl_offline.config import Config
from tacorl_offline.distributed import Dist
from tacorl_offline.training.optim import freeze_lower_layers


def build_policy(
    cfg: Config, dist: Dist, ckpt: Path | None
) -> tuple[Any, torch.nn.Module, torch.nn.Module | None, str]:
    """(compressor, policy: its model or the DDP wrapper, start model or None, device)."""
    from tacorl_offline.compressor import CompressOptions, Compressor
    from tacorl_offline.model_ref import resolve_model_ref
    from tacorl_offline.warehouse import Warehouse

    cc, tc = cfg.compressor, cfg.train
    # -m style names (sft:latest, run:<id>, latest, minilm) resolve here, as in every phase
    start_ref = resolve_model_ref(cc.model, Warehouse(cfg.warehouse), hub_download=cc.hub_download)
    device = cc.device
    if dist.enabled and device.startswith("cuda"):
        device = f"cuda:{dist.local_rank}"
    torch.manual_seed(tc.seed)  # the fresh head of a base encoder is seeded too
    comp = Compressor.from_pretrained(
        str(ckpt / "model") if ckpt else start_ref,
        device=device,
        options=CompressOptions.from_config(cc),
        condition_on=cc.condition_on,
    )
    # train.freeze_layers: before DDP wraps the model, so its reducer sees only trainable weights
    freeze_lower_layers(comp.model, tc.freeze_layers, setting="train.freeze_layers")
    policy: torch.nn.Module = comp.model
    if dist.enabled:
        policy = torch.nn.parallel.DistributedDataParallel(
            comp.model, device_ids=[dist.local_rank] if device.startswith("cuda") else None
        )
    # The KL anchor's reference: a frozen copy of the start policy (train.kl_coeff).
    start_model: torch.nn.Module | None = None
    if tc.kl_coeff > 0:
        start_model = copy.deepcopy(comp.model).eval().requires_grad_(False)
        if ckpt:  # a resumed run anchors to its own start: the model its config names
            torch.manual_seed(tc.seed)  # as at the run's start (a base encoder's fresh head)
            start = Compressor.from_pretrained(
                start_ref,
                device=device,
                options=CompressOptions.from_config(cc),
                condition_on=cc.condition_on,
            )
            start_model = start.model.eval().requires_grad_(False)
    return comp, policy, start_model, device
