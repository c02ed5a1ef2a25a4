"""The chain every task recipe runs, one stage after another, each reporting what it did.

A recipe (:class:`Recipe`) names a config under ``configs/`` and a sample under
``data/sample/``; the recipes themselves are a plain mapping in ``pipelines/``, which only
the CLI imports. Rendering is not done here: the caller passes ``say`` (a line of progress),
``show`` (a stage's result) and ``train`` (how to run training, e.g. with a progress display).
"""

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


def recipe_config(recipe: Recipe, overrides: dict[str, Any] | None = None) -> Config:
    return resolve(resource_dir("configs") / recipe.config, overrides=overrides)


def run_chain(
    recipe: Recipe,
    *,
    train: Callable[[Config], Any],
    overrides: dict[str, Any] | None = None,
    say: Callable[[str], None] = print,
    show: Callable[[str, Any], None] | None = None,
    evaluate: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Run the chain for ``recipe``. ``train(cfg)`` returns a ``TrainSummary``;
    ``evaluate(cfg, **kw)`` an ``EvalReport`` (default: :func:`run_evaluation`, no display);
    ``show(stage, result)`` renders each stage's result."""
    from tacorl_offline.evaluate import run_evaluation
    from tacorl_offline.fill import run_fill
    from tacorl_offline.ingest import read_records
    from tacorl_offline.ingest_store import store_records
    from tacorl_offline.reports import cost_report

    cfg = recipe_config(recipe, overrides)
    wh = Warehouse(cfg.warehouse)
    show = show or (lambda stage, result: say(f"{stage}: {result}"))
    out: dict[str, Any] = {}

    data = Path(resource_dir("data/sample")) / recipe.data
    say(f"[1/5] ingest {data.name} -> {cfg.data.dataset}/{cfg.data.split} in {wh.path}")
    records, _ = read_records(data, cfg.data)
    out["ingest"] = store_records(
        wh, records, dataset=cfg.data.dataset, split=cfg.data.split, source_path=data
    )
    show("ingest", out["ingest"])

    say(f"[2/5] teacher-fill with the {cfg.teacher.backend} teacher ({cfg.teacher.model})")
    if cfg.teacher.backend == "extractive":
        say(
            "      note: the extractive teacher is a deterministic stand-in for an LLM, not a real model"
        )
    out["fill"] = asyncio.run(run_fill(cfg, warehouse=wh))
    show("fill", out["fill"])

    say("[3/5] train (REINFORCE, cached teacher answers)")
    out["train"] = train(cfg)
    show("train", out["train"])

    say("[4/5] cost report")
    out["cost"] = cost_report(wh, by="phase")
    show("cost", out["cost"])

    trained = str(out["train"].final_model)
    say(
        f"[5/5] evaluate the trained compressor against the base ({cfg.compressor.model}) and "
        f"the baselines on {cfg.data.dataset}/{cfg.data.split}, rate {cfg.compressor.rate}"
    )
    evaluate = evaluate or (lambda c, **kw: asyncio.run(run_evaluation(c, warehouse=wh, **kw)))
    out["eval"] = evaluate(cfg, models=[trained, cfg.compressor.model], reference=trained)
    show("eval", out["eval"])

    from tacorl_offline.plots import write_plots
    from tacorl_offline.run_report import default_plot_dir, load_run_report

    report = load_run_report(wh, out["train"].run_id)
    out["plots"] = write_plots(report, default_plot_dir(report))
    for p in out["plots"]:
        say(f"plot: {p}")
    say(f"      (again any time: tacorl-offline report run {report.run_id})")
    return out
