"""Data commands: ``ingest`` a split, ``teacher-fill`` the originals' answers, ``sft`` warm start."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from tacorl_offline.cli.common import (
    EXIT_FAILURES,
    check_numbers,
    config_of,
    next_flags,
    settle_flags,
    user_errors,
    warehouse_of,
)
from tacorl_offline.cli.options import ConfigOpt, DatasetOpt, ProgressBarOpt, SplitOpt, WarehouseOpt
from tacorl_offline.display import (
    err,
    fill_progress,
    out,
    print_fill_summary,
    print_sft_summary,
    sft_with_progress,
)
from tacorl_offline.errors import UserError


@user_errors
def ingest(
    path: Annotated[
        Path | None,
        typer.Argument(
            help="JSON (upstream layout), JSONL, Parquet or CSV file (default: data.path, "
            "upstream data.train_file_path)."
        ),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Dataset name (default: data.dataset).")
    ] = None,
    split: Annotated[str | None, typer.Option(help="Split name (default: data.split).")] = None,
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="json, jsonl, parquet or csv (default: by extension)."),
    ] = None,
    text_field: Annotated[
        str | None, typer.Option(help="Field holding the compressible text.")
    ] = None,
    field: Annotated[
        list[str] | None,
        typer.Option("--field", help="A never-compressed field (repeatable), e.g. question."),
    ] = None,
    reference_field: Annotated[
        str | None, typer.Option(help="Field holding a reference answer.")
    ] = None,
    skip_invalid: Annotated[
        bool, typer.Option(help="Load the valid rows and report the invalid ones.")
    ] = False,
    config: ConfigOpt = None,
    warehouse: WarehouseOpt = None,
) -> None:
    """Load a dataset split into the warehouse (idempotent: re-ingesting changes nothing)."""
    from tacorl_offline.ingest import read_records
    from tacorl_offline.ingest_store import store_records

    cfg = config_of(
        config,
        **{
            "warehouse": warehouse,
            "data.dataset": dataset,
            "data.split": split,
            "data.text_field": text_field,
            "data.fields": field or None,
            "data.reference_field": reference_field,
        },
    )
    if path is None:
        if cfg.data.path is None:
            raise UserError(
                "no file to ingest: pass PATH, or set data.path (upstream: data.train_file_path) in -c"
            )
        path = Path(cfg.data.path)
    records, errors = read_records(path, cfg.data, fmt=fmt, skip_invalid=skip_invalid)
    s = store_records(
        warehouse_of(cfg), records, dataset=cfg.data.dataset, split=cfg.data.split, source_path=path
    )
    for e in errors[:20]:
        err.print(f"skipped row {e.row}: {e.reason}", markup=False)
    if len(errors) > 20:
        err.print(f"... and {len(errors) - 20} more invalid rows", markup=False)
    out.print(
        f"ingested {s.records} records into {cfg.data.dataset}/{cfg.data.split}: "
        f"{s.new_prompts} new prompts, {s.new_items} new items, {s.imported_answers} imported answers"
        + (f", {len(errors)} invalid rows skipped" if errors else ""),
        markup=False,
    )


@user_errors
def teacher_fill(
    config: ConfigOpt = None,
    split: SplitOpt = None,
    dataset: DatasetOpt = None,
    concurrency: Annotated[int | None, typer.Option(help="Requests in flight (>= 1).")] = None,
    max_cost_usd: Annotated[
        float | None, typer.Option(help="Stop once this much is spent (USD, >= 0).")
    ] = None,
    max_calls: Annotated[
        int | None, typer.Option(help="Stop after this many paid calls (>= 0).")
    ] = None,
    progress: ProgressBarOpt = True,
    warehouse: WarehouseOpt = None,
) -> None:
    """Answer every original prompt once (a rerun pays nothing; a budget stop resumes).

    A warehouse where every prompt already has an answer exits 0 without contacting the
    teacher (its endpoint is never checked then): there is nothing to pay for."""
    from tacorl_offline.fill import run_fill

    check_numbers(
        concurrency=(concurrency, 1), max_cost_usd=(max_cost_usd, 0), max_calls=(max_calls, 0)
    )

    cfg = config_of(
        config,
        **{
            "warehouse": warehouse,
            "data.split": split,
            "data.dataset": dataset,
            "teacher.concurrency": concurrency,
            "budget.max_cost_usd": max_cost_usd,
            "budget.max_calls": max_calls,
        },
    )
    bar, on_progress = fill_progress(progress)
    cfg = settle_flags(cfg, dataset, split)
    with bar:
        summary = asyncio.run(run_fill(cfg, warehouse=warehouse_of(cfg), on_progress=on_progress))
    print_fill_summary(summary, backend=cfg.teacher.backend)
    if summary.failures:
        err.print(
            f"error: {summary.failure_text}; the answers that arrived are stored; rerun teacher-fill "
            "to retry the transient failures",
            markup=False,
        )
        raise typer.Exit(EXIT_FAILURES)
    if summary.batches_pending:
        err.print(
            f"batch still running: {', '.join(summary.batches_pending)} (id stored in the warehouse); "
            "rerun teacher-fill to collect it, nothing is paid twice",
            markup=False,
        )
        raise typer.Exit(4)
    if summary.budget_stopped:
        err.print("budget reached: stopped cleanly; rerun teacher-fill to resume", markup=False)
        raise typer.Exit(3)


@user_errors
def sft(
    config: ConfigOpt = None,
    source: Annotated[
        str | None,
        typer.Option(help="Word labels: teacher, file or stopword (sft.source)."),
    ] = None,
    labels: Annotated[
        str | None, typer.Option(help="LLMLingua-2 word-label file for --source file.")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (sft.epochs, >= 1).")] = None,
    output_dir: Annotated[
        str | None, typer.Option(help="Where the model directory goes (sft.output_dir).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    dataset: DatasetOpt = None,
    split: SplitOpt = None,
    warehouse: WarehouseOpt = None,
) -> None:
    """Supervised warm start (LLMLingua-2 style): word labels, class-balanced token loss,
    held-out label F1; the result is a compressor directory that train can start from
    (``train --init sft:latest``)."""
    check_numbers(epochs=(epochs, 1))
    cfg = config_of(
        config,
        **{
            "warehouse": warehouse,
            "sft.source": source,
            "sft.labels_path": labels,
            "sft.epochs": epochs,
            "sft.output_dir": output_dir,
            "data.dataset": dataset,
            "data.split": split,
        },
    )
    cfg = settle_flags(cfg, dataset, split)
    print_sft_summary(
        sft_with_progress(cfg, warehouse=warehouse_of(cfg), progress=progress),
        config=next_flags(config, warehouse, dataset).removeprefix(" -c ") or None,
    )
