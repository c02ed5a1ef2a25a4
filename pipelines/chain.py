"""The chain every recipe runs, one stage after another, each printing what it did."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tacorl_offline.config import Config, resolve
from tacorl_offline.resources import resource_dir
from tacorl_offline.warehouse import Warehouse


@dataclass(frozen=True)
class Recipe:
    name: str
    config: str  # file name under configs/
    data: str  # file name under data/sample/
    about: str


RECIPES: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    RECIPES[recipe.name] = recipe
    return recipe


def recipe_config(recipe: Recipe, overrides: dict[str, Any] | None = None) -> Config:
    return resolve(resource_dir("configs") / recipe.config, overrides=overrides)


def run_recipe(
    name: str,
    *,
    overrides: dict[str, Any] | None = None,
    say: Callable[[str], None] = print,
    show: Callable[[str, Any], None] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the chain for recipe ``name``. ``show(stage, result)`` renders each stage's result."""
    import pipelines.code
    import pipelines.qa
    import pipelines.summarization  # noqa: F401
    from tacorl_offline.evaluate import run_eval
    from tacorl_offline.fill import run_fill
    from tacorl_offline.ingest import read_records
    from tacorl_offline.ingest_store import store_records
    from tacorl_offline.reports import cost_report

    recipe = RECIPES[name]
    cfg = recipe_config(recipe, overrides)
    wh = Warehouse(cfg.warehouse)
    show = show or (lambda stage, result: say(f"{stage}: {result}"))
    out: dict[str, Any] = {}

    data = Path(resource_dir("data/sample")) / recipe.data
    say(f"[1/6] ingest {data.name} -> {cfg.data.dataset}/{cfg.data.split} in {wh.path}")
    records, _ = read_records(data, cfg.data)
    out["ingest"] = store_records(
        wh, records, dataset=cfg.data.dataset, split=cfg.data.split, source_path=data
    )
    show("ingest", out["ingest"])

    say(f"[2/6] teacher-fill with the {cfg.teacher.backend} teacher ({cfg.teacher.model})")
    if cfg.teacher.backend == "extractive":
        say(
            "      note: the extractive teacher is a deterministic stand-in for an LLM, not a real model"
        )
    out["fill"] = asyncio.run(run_fill(cfg, warehouse=wh))
    show("fill", out["fill"])

    say(f"[3/6] evaluate the base compressor ({cfg.compressor.model})")
    base = asyncio.run(run_eval(cfg, warehouse=wh, model=cfg.compressor.model))

    say("[4/6] train (REINFORCE, cached teacher answers)")
    from tacorl_offline.cli import train_with_progress

    out["train"], _ = train_with_progress(cfg, resume=None, progress=progress)
    show("train", out["train"])

    say(f"[5/6] evaluate the trained compressor ({out['train'].final_model})")
    trained = asyncio.run(run_eval(cfg, warehouse=wh, model=str(out["train"].final_model)))
    out["eval"] = [base, trained]
    show("eval", out["eval"])

    say("[6/6] cost report")
    out["cost"] = cost_report(wh)
    show("cost", out["cost"])
    return out
