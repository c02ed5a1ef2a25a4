"""Training commands: ``train`` (and ``--rescore``), and the ``pipeline``/``quickstart`` recipes."""

from __future__ import annotations

import functools
from typing import Annotated, Any

import typer

from pipelines import RECIPES
from tacorl_offline.cli.common import (
    check_numbers,
    config_of,
    next_flags,
    settle_flags,
    user_errors,
    warehouse_of,
)
from tacorl_offline.cli.options import ConfigOpt, DatasetOpt, ProgressOpt, SplitOpt, WarehouseOpt
from tacorl_offline.display import (
    err,
    evaluate_with_progress,
    out,
    print_train_summary,
    show_stage,
    train_with_progress,
)
from tacorl_offline.errors import UserError


@user_errors
def train(
    config: ConfigOpt = None,
    resume: Annotated[str | None, typer.Option(help="Continue a run: its id, or 'latest'.")] = None,
    init: Annotated[
        str | None,
        typer.Option(
            "--init",
            help="Start from this model (compressor.model): a directory, 'minilm', 'sft:latest' "
            "(the latest sft output), 'run:<id>' or 'latest'.",
        ),
    ] = None,
    max_cost_usd: Annotated[
        float | None, typer.Option(help="Stop cleanly once this much is spent (USD, >= 0).")
    ] = None,
    max_calls: Annotated[
        int | None, typer.Option(help="Stop cleanly after this many paid calls (>= 0).")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="Stop after this many steps (>= 1).")
    ] = None,
    output_dir: Annotated[
        str | None, typer.Option(help="Run directory root (train.output_dir).")
    ] = None,
    dataset: DatasetOpt = None,
    split: SplitOpt = None,
    progress: Annotated[bool, typer.Option(help="Show a live progress display.")] = True,
    warehouse: WarehouseOpt = None,
    rescore: Annotated[
        str | None,
        typer.Option(
            help="Do not train: score a train run's stored answers (its id, or 'latest') under "
            "this config's reward, with no teacher call; writes a 'rescore' run."
        ),
    ] = None,
) -> None:
    """REINFORCE on the compressor, replaying cached teacher answers and paying only misses."""
    check_numbers(
        max_cost_usd=(max_cost_usd, 0), max_calls=(max_calls, 0), max_steps=(max_steps, 1)
    )
    if init is not None and resume is not None:
        raise UserError(
            "--init starts a new run; --resume continues one from its checkpoint: pass one"
        )
    cfg = config_of(
        config,
        **{
            "warehouse": warehouse,
            "compressor.model": init,
            "budget.max_cost_usd": max_cost_usd,
            "budget.max_calls": max_calls,
            "train.max_steps": max_steps,
            "train.output_dir": output_dir,
            "data.dataset": dataset,
            "data.split": split,
        },
    )
    if not resume:
        cfg = settle_flags(cfg, dataset, split)
    if rescore is not None:
        _rescore(cfg, rescore)
        return
    summary, d = train_with_progress(cfg, resume=resume, progress=progress)
    if not d.is_main:
        return
    print_train_summary(summary, backend=cfg.teacher.backend)
    _next_steps(summary, next_flags(config, warehouse, dataset))


def _rescore(cfg: Any, rescore: str) -> None:
    from tacorl_offline.rescore import rescore_run

    r = rescore_run(cfg, warehouse_of(cfg), rescore)
    out.print(
        f"rescored run {r.source_run} as {r.run_id}: {r.samples} samples, {r.calls} teacher "
        f"calls; mean reward {r.reward_before:.4f} -> {r.reward_after:.4f} "
        f"({cfg.train.reward.family}, {cfg.train.reward.metric})",
        markup=False,
    )
    if r.unscorable:
        out.print(
            f"{r.unscorable} sample(s) would need an answer the run never asked for: "
            "left unscorable",
            markup=False,
        )


def _next_steps(summary: Any, flags: str) -> None:
    """Where the model went and the command to run next (exit 3 after a budget stop); each
    printed command carries the flags this one was given (-c, -w, --dataset)."""
    if summary.final_model:
        out.print(f"model saved to {summary.final_model}", markup=False)
        out.print(
            f"next: evaluate it: tacorl-offline evaluate{flags} -m run:{summary.run_id}"
            " (or -m latest)",
            markup=False,
        )
    if summary.budget_stopped:
        err.print(
            f"budget reached: checkpoint saved; resume with: tacorl-offline train{flags}"
            f" --resume {summary.run_id}",
            markup=False,
        )
        raise typer.Exit(3)


def _run_pipeline(name: str, max_steps: int | None, warehouse: str | None, progress: bool) -> None:
    from tacorl_offline.chain import recipe_config, run_chain

    run_chain(
        RECIPES[name],
        train=lambda cfg: train_with_progress(cfg, resume=None, progress=progress)[0],
        evaluate=lambda cfg, **kw: evaluate_with_progress(cfg, progress=progress, **kw),
        overrides={"warehouse": warehouse, "train.max_steps": max_steps},
        say=lambda line: out.print(line, markup=False),
        show=functools.partial(show_stage, backend=recipe_config(RECIPES[name]).teacher.backend),
    )
    out.print("done: rerun the same command and it pays for no teacher answer again", markup=False)


@user_errors
def pipeline(
    task: Annotated[str, typer.Argument(help="summarization, qa or code.")],
    max_steps: Annotated[
        int | None, typer.Option(help="Training steps (>= 1; default: the task config's).")
    ] = None,
    progress: ProgressOpt = True,
    warehouse: WarehouseOpt = None,
) -> None:
    """Run a task recipe on its bundled sample: ingest, teacher-fill, evaluate, train, evaluate, report."""
    check_numbers(max_steps=(max_steps, 1))
    if task not in RECIPES:
        raise UserError(f"unknown task '{task}'; choose one of: {', '.join(RECIPES)}")
    _run_pipeline(task, max_steps, warehouse, progress)


@user_errors
def quickstart(
    max_steps: Annotated[
        int | None, typer.Option(help="Training steps (>= 1; default 10).")
    ] = None,
    progress: ProgressOpt = True,
    warehouse: WarehouseOpt = None,
) -> None:
    """The main job on embedded defaults: bundled sample, offline extractive teacher, MiniLM, DuckDB."""
    check_numbers(max_steps=(max_steps, 1))
    _run_pipeline("summarization", max_steps, warehouse, progress)
