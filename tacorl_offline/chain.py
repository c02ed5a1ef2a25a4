"""The chain every task recipe runs, one stage after another, each reporting what it did.

A recipe (:class:`Recipe`) names a config under ``configs/``, its training data under
``data/`` (a bundled sample, or the SQuAD split) and optionally a held-out file scored at the
end instead of the training prompts, or a share of the training file's prompts to hold out
(``heldout_share``: a deterministic split by prompt, see :func:`split_by_prompt`; nothing of
the held-out part is trained on), and says whether a supervised warm start (``sft``)
comes before RL; the recipes themselves are a plain mapping in ``pipelines/``, which only
the CLI imports. Rendering is not done here: the caller passes ``say`` (a line of progress),
``show`` (a stage's result) and ``train`` (how to run training, e.g. with a progress display).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
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
    data: str  # training file under data/ (e.g. sample/summarization.json)
    about: str
    heldout: str | None = None  # held-out file under data/, evaluated instead of the train split
    sft: bool = False  # supervised warm start before RL
    heldout_share: float = 0.0  # share of `data`'s prompts held out (when `heldout` is None)
    # share of the training texts carved as split 'val' (every prompt of a text together: a
    # SQuAD paragraph's questions stay on one side), never trained on; train.validation
    # scores it and keeps the best point (tacorl_offline/training/validation.py)
    val_share: float = 0.0


def split_by_prompt(
    records: Sequence[Any],
    share: float,
    salt: str = "heldout",
    group: Callable[[Any], str] = lambda r: r.prompt_id,
) -> tuple[list[Any], list[Any]]:
    """(kept, held out): of the records' distinct ``group`` keys (the prompt id unless said
    otherwise), the ``round(share * n)`` whose ``sha256(salt:key)`` ranks lowest are held out,
    with every record of theirs. Deterministic, independent of row order; a different
    ``salt`` carves a different part (e.g. a validation part from the kept records)."""
    keys = sorted(
        {group(r) for r in records},
        key=lambda g: hashlib.sha256(f"{salt}:{g}".encode()).hexdigest(),
    )
    out = set(keys[: round(share * len(keys))])
    return [r for r in records if group(r) not in out], [r for r in records if group(r) in out]


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
    from tacorl_offline.reports import cost_report

    cfg = recipe_config(recipe, overrides)
    if recipe.val_share > 0:  # the carve below is the run's validation split
        cfg = cfg.model_copy(deep=True)
        cfg.train.validation.split = "val"
    wh = Warehouse(cfg.warehouse)
    show = show or (lambda stage, result: say(f"{stage}: {result}"))
    out: dict[str, Any] = {}

    files, records_of = _recipe_records(recipe, cfg)
    held_out = "heldout" in files
    stages = 5 + (1 if recipe.sft else 0)
    n = iter(range(1, stages + 1))

    def step() -> str:
        return f"[{next(n)}/{stages}]"

    _ingest_and_fill(cfg, wh, files, records_of, step, say, show, out)

    base = cfg.compressor.model
    start = cfg
    if recipe.sft:
        from tacorl_offline.sft import sft_phase

        say(
            f"{step()} sft: supervised warm start on the teacher's answers ({cfg.sft.source} labels)"
        )
        out["sft"] = sft_phase(
            cfg,
            warehouse=wh,
            on_epoch=lambda log: say(
                f"      epoch {log.epoch}: loss {log.loss:.4f}, {log.label_text}"
            ),
        )
        start = cfg.model_copy(deep=True)
        start.compressor.model = str(out["sft"].output)

    say(f"{step()} train (REINFORCE, cached teacher answers)")
    out["train"] = train(start)
    show("train", out["train"])

    say(f"{step()} cost report")
    out["cost"] = cost_report(wh, by="phase")
    show("cost", out["cost"])

    trained = str(out["train"].final_model)
    ev = cfg.model_copy(deep=True)
    ev.data.split = "heldout" if held_out else cfg.data.split
    models = [trained, base] + ([str(out["sft"].output)] if recipe.sft else [])
    say(
        f"{step()} evaluate the trained compressor against the base ({base})"
        + (", the SFT warm start" if recipe.sft else "")
        + f" and the baselines on {ev.data.dataset}/{ev.data.split}, rate {cfg.compressor.rate}"
    )
    evaluate = evaluate or (lambda c, **kw: asyncio.run(run_evaluation(c, warehouse=wh, **kw)))
    out["eval"] = evaluate(ev, models=models, reference=trained)
    show("eval", out["eval"])

    out["plots"] = _plots(wh, out["train"].run_id, say)
    return out


def _recipe_records(recipe: Recipe, cfg: Config) -> tuple[dict[str, Path], dict[str, list[Any]]]:
    """Each split's source file and records: the recipe's train file, and its held-out file
    or the ``heldout_share`` of the train file's prompts (:func:`split_by_prompt`)."""
    from tacorl_offline.ingest import read_records

    files = {cfg.data.split: Path(resource_dir("data")) / recipe.data}
    if recipe.heldout:
        files["heldout"] = Path(resource_dir("data")) / recipe.heldout
    records_of = {split: read_records(path, cfg.data)[0] for split, path in files.items()}
    if not recipe.heldout and recipe.heldout_share > 0:
        kept, held = split_by_prompt(records_of[cfg.data.split], recipe.heldout_share)
        records_of = {cfg.data.split: kept, "heldout": held}
        files["heldout"] = files[cfg.data.split]
    if recipe.val_share > 0:
        kept, val = split_by_prompt(
            records_of[cfg.data.split], recipe.val_share, salt="val", group=lambda r: r.text
        )
        records_of = {**records_of, cfg.data.split: kept, "val": val}
        files["val"] = files[cfg.data.split]
    return files, records_of


def _ingest_and_fill(
    cfg: Config,
    wh: Warehouse,
    files: dict[str, Path],
    records_of: dict[str, list[Any]],
    step: Callable[[], str],
    say: Callable[[str], None],
    show: Callable[[str, Any], None],
    out: dict[str, Any],
) -> None:
    """The ingest and teacher-fill stages, over every split of the recipe."""
    from tacorl_offline.fill import run_fill
    from tacorl_offline.ingest_store import store_records

    say(f"{step()} ingest -> {cfg.data.dataset} in {wh.path}")
    for split, path in files.items():
        out[f"ingest:{split}"] = store_records(
            wh, records_of[split], dataset=cfg.data.dataset, split=split, source_path=path
        )
        show("ingest", out[f"ingest:{split}"])
    out["ingest"] = out[f"ingest:{cfg.data.split}"]
    if files.get("heldout") == files[cfg.data.split]:
        say(
            f"      {len(records_of['heldout'])} of the {sum(map(len, records_of.values()))} "
            "prompts held out (split 'heldout', by prompt hash): scored at the end, never trained on"
        )
    if "val" in records_of:
        texts = len({r.text for r in records_of["val"]})
        say(
            f"      {len(records_of['val'])} prompts ({texts} texts) carved as split 'val' (by text "
            "hash): never trained on; train scores it and keeps its best point"
        )

    say(f"{step()} teacher-fill with the {cfg.teacher.backend} teacher ({cfg.teacher.model})")
    if cfg.teacher.backend == "extractive":
        say(
            "      note: the extractive teacher is a deterministic stand-in for an LLM, not a real model"
        )
    for split in files:
        out[f"fill:{split}"] = asyncio.run(run_fill(cfg, warehouse=wh, split=split))
        show("fill", out[f"fill:{split}"])
    out["fill"] = out[f"fill:{cfg.data.split}"]


def _plots(wh: Warehouse, run_id: str, say: Callable[[str], None]) -> list[Path]:
    """The trained run's curves, written beside it (as ``report run`` does)."""
    from tacorl_offline.plots import write_plots
    from tacorl_offline.run_report import default_plot_dir, load_run_report

    report = load_run_report(wh, run_id)
    plots = write_plots(report, default_plot_dir(report))
    for p in plots:
        say(f"plot: {p}")
    say(f"      (again any time: tacorl-offline report run {report.run_id})")
    return plots
