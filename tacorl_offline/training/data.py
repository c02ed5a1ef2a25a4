"""What a run trains on: its items (rank 0 reads them and warms the mask map; the other ranks
receive them), the seeded data order of each epoch, and the samples stored for reuse."""

from __future__ import annotations

from typing import Any

import torch

from tacorl_offline import reuse
from tacorl_offline.config import Config
from tacorl_offline.datasets import settle
from tacorl_offline.distributed import Dist
from tacorl_offline.errors import UserError
from tacorl_offline.items import Item, load_items
from tacorl_offline.replay import MaskMap
from tacorl_offline.runs import key_of
from tacorl_offline.warehouse import Warehouse


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def read_items(
    cfg: Config,
    warehouse: Warehouse,
    dist: Dist,
    *,
    mask_map: MaskMap,
    metric_names: Any,
    settle_dataset: bool,
) -> tuple[Config, str | None, list[Item]]:
    """(config with its dataset settled, the note saying so, the items). A resumed run keeps
    its own dataset and split (``settle_dataset`` False). The mask map is warmed once: each
    step's lookups are then served from memory."""
    items: list[Item] | UserError | None = None
    note: str | None = None
    if dist.is_main:  # rank 0 owns the warehouse; the others get the items from it
        try:
            with warehouse.connect() as con:
                if settle_dataset:
                    cfg, note = settle(cfg, con, where=str(warehouse.path))
                items = load_items(con, cfg, key_of(cfg.teacher))
                mask_map.warm(
                    con,
                    [i.prompt_id for i in items],
                    warehouse=warehouse,
                    metric_names=metric_names,
                )
        except UserError as e:
            items = e
    items = dist.broadcast(items)
    if isinstance(items, UserError):
        raise items
    assert items is not None
    return cfg, note, items


def read_store(
    cfg: Config, warehouse: Warehouse, dist: Dist, run_id: str, step: int, items: list[Item]
) -> reuse.ReplayStore:
    """The samples stored for reuse (``train.reuse.stored_per_prompt``), read once on rank 0:
    other runs' and this run's up to ``step``."""
    ru = cfg.train.reuse
    if not (ru.stored_per_prompt and dist.is_main):
        return reuse.ReplayStore()
    with warehouse.connect() as con:
        return reuse.load(
            con,
            cfg,
            teacher_key=key_of(cfg.teacher),
            run_id=run_id,
            upto_step=step,
            prompt_ids=[i.prompt_id for i in items],
            other_runs=ru.from_other_runs,
        )
