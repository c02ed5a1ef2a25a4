"""The ``tacorl-offline`` command line: a thin layer.

Each command parses its options, resolves the config once (file < environment < flags, see
:func:`tacorl_offline.config.resolve`) and calls one library function. A
:class:`~tacorl_offline.errors.UserError` becomes one line on stderr and a non-zero exit;
anything else is a bug and keeps its traceback (without local variables, which could hold
secrets).
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from pipelines import RECIPES
from tacorl_offline.config import Config, resolve
from tacorl_offline.display import (
    err,
    evaluate_with_progress,
    fill_progress,
    out,
    print_eval_report,
    print_fill_summary,
    print_json,
    print_run_report,
    print_sft_summary,
    print_train_summary,
    render,
    sft_with_progress,
    show_stage,
    train_with_progress,
)
from tacorl_offline.errors import UserError

# Library chatter (load reports, shard-writing progress bars) is not ours to print.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

app = typer.Typer(
    help="Fine-tune LLMLingua-2 prompt compressors with TACO-RL, paying each teacher answer once.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
report_app = typer.Typer(help="Reports over the warehouse.", no_args_is_help=True)
runs_app = typer.Typer(help="Training run directories.", no_args_is_help=True)
warehouse_app = typer.Typer(help="Warehouse maintenance.", no_args_is_help=True)
app.add_typer(report_app, name="report")
app.add_typer(warehouse_app, name="warehouse")
app.add_typer(runs_app, name="runs")


def _version(value: bool) -> None:
    if value:
        from tacorl_offline import __version__

        print(f"tacorl-offline {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Fine-tune LLMLingua-2 prompt compressors with TACO-RL, paying each teacher answer once."""


F = TypeVar("F", bound=Callable[..., Any])

# Exit codes: 2 a user error, 3 stopped by the budget (rerun resumes), 4 a Batch API job still
# running (rerun collects it), 5 some requests failed (rerun retries the transient ones).
EXIT_FAILURES = 5

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config (ours or upstream train_reinforce.yaml)."),
]
WarehouseOpt = Annotated[
    str | None,
    typer.Option(
        "--warehouse",
        "-w",
        help="DuckDB warehouse file.",
        envvar="TACORL_WAREHOUSE",
        show_envvar=True,
    ),
]


DatasetOpt = Annotated[
    str | None,
    typer.Option(
        help="Dataset (default: data.dataset; the only one in the warehouse when that is absent)."
    ),
]
SplitOpt = Annotated[
    str | None,
    typer.Option(help="Split (default: data.split; the dataset's only split when that is absent)."),
]


def user_errors(fn: F) -> F:
    """One line and a non-zero exit for user errors; tracebacks stay for bugs."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            err.print(f"error: {e}" if e.exit_code else str(e), markup=False)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print(
                "interrupted: answers received so far are committed; rerun to resume", markup=False
            )
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _config(config: Path | None, **overrides: Any) -> Config:
    return resolve(config, overrides=overrides)


def _warehouse(cfg_or_path: Config | str):
    from tacorl_offline.warehouse import Warehouse

    return Warehouse(cfg_or_path.warehouse if isinstance(cfg_or_path, Config) else cfg_or_path)


def _settle(cfg: Config, dataset: str | None, split: str | None) -> Config:
    """The dataset and split a phase uses: a flag must exist; the config's choice falls back
    to the warehouse's only dataset/split (with a note). See :mod:`tacorl_offline.datasets`."""
    from tacorl_offline.datasets import settle

    w = _warehouse(cfg)
    if not w.path.exists():
        return cfg  # the phase says what to do
    with w.connect(read_only=True) as con:
        cfg, note = settle(
            cfg,
            con,
            dataset_given=dataset is not None,
            split_given=split is not None,
            where=str(w.path),
        )
    if note:
        err.print(f"note: {note}", markup=False)
    return cfg


def _default_warehouse(flag: str | None) -> str:
    return flag or resolve(None).warehouse


# --------------------------------------------------------------------------- ingest


@app.command()
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

    cfg = _config(
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
        _warehouse(cfg), records, dataset=cfg.data.dataset, split=cfg.data.split, source_path=path
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


# --------------------------------------------------------------------------- teacher-fill


@app.command("teacher-fill")
@user_errors
def teacher_fill(
    config: ConfigOpt = None,
    split: SplitOpt = None,
    dataset: DatasetOpt = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Requests in flight.")] = None,
    max_cost_usd: Annotated[
        float | None, typer.Option(min=0, help="Stop once this much is spent.")
    ] = None,
    max_calls: Annotated[
        int | None, typer.Option(min=0, help="Stop after this many paid calls.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a live progress bar.")] = True,
    warehouse: WarehouseOpt = None,
) -> None:
    """Answer every original prompt once (a rerun pays nothing; a budget stop resumes)."""
    from tacorl_offline.fill import run_fill

    cfg = _config(
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
    cfg = _settle(cfg, dataset, split)
    with bar:
        summary = asyncio.run(run_fill(cfg, warehouse=_warehouse(cfg), on_progress=on_progress))
    print_fill_summary(summary)
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


# --------------------------------------------------------------------------- sft


@app.command()
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
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs (sft.epochs).")] = None,
    output_dir: Annotated[
        str | None, typer.Option(help="Where the model directory goes (sft.output_dir).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    dataset: DatasetOpt = None,
    split: SplitOpt = None,
    warehouse: WarehouseOpt = None,
) -> None:
    """Supervised warm start (LLMLingua-2 style): word labels, class-balanced token loss,
    held-out label F1; the result is a compressor directory that train can start from."""
    cfg = _config(
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
    cfg = _settle(cfg, dataset, split)
    print_sft_summary(sft_with_progress(cfg, warehouse=_warehouse(cfg), progress=progress))


# --------------------------------------------------------------------------- train


@app.command()
@user_errors
def train(
    config: ConfigOpt = None,
    resume: Annotated[str | None, typer.Option(help="Continue a run: its id, or 'latest'.")] = None,
    max_cost_usd: Annotated[
        float | None, typer.Option(min=0, help="Stop cleanly once this much is spent.")
    ] = None,
    max_calls: Annotated[
        int | None, typer.Option(min=0, help="Stop cleanly after this many paid calls.")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many steps.")
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
    cfg = _config(
        config,
        **{
            "warehouse": warehouse,
            "budget.max_cost_usd": max_cost_usd,
            "budget.max_calls": max_calls,
            "train.max_steps": max_steps,
            "train.output_dir": output_dir,
            "data.dataset": dataset,
            "data.split": split,
        },
    )
    if not resume:
        cfg = _settle(cfg, dataset, split)
    if rescore is not None:
        from tacorl_offline.rescore import rescore_run

        r = rescore_run(cfg, _warehouse(cfg), rescore)
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
        return
    summary, d = train_with_progress(cfg, resume=resume, progress=progress)
    if not d.is_main:
        return
    print_train_summary(summary)
    if summary.final_model:
        out.print(f"model saved to {summary.final_model}", markup=False)
        out.print(
            f"evaluate it: tacorl-offline evaluate -m run:{summary.run_id} (or -m latest)",
            markup=False,
        )
    if summary.budget_stopped:
        err.print(
            f"budget reached: checkpoint saved; resume with --resume {summary.run_id}", markup=False
        )
        raise typer.Exit(3)


def _split_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    if value.strip().lower() in ("", "none"):
        return []
    return [v.strip() for v in value.split(",") if v.strip()]


@app.command()
@user_errors
def evaluate(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Compressor to evaluate (repeatable): a directory, 'minilm', 'run:<id>' "
            "(a training run's final model) or 'latest' (the latest run's).",
        ),
    ] = None,
    config: ConfigOpt = None,
    dataset: DatasetOpt = None,
    split: SplitOpt = None,
    rate: Annotated[
        float | None,
        typer.Option(help="Keep rate in (0, 1] for every system (default: compressor.rate)."),
    ] = None,
    target_token: Annotated[
        int | None,
        typer.Option(min=1, help="Keep this many tokens per prompt instead of a rate."),
    ] = None,
    baselines: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated baselines: original,random,stopword,lead, or 'none' (default: all)."
        ),
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(help="System the differences are taken against (default: the first -m)."),
    ] = None,
    judge: Annotated[
        bool | None,
        typer.Option(
            "--judge/--no-judge",
            help="Also have the teacher judge compressed vs original answers, in both orders.",
        ),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, json or csv.")] = "table",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the json/csv output here.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a live progress bar.")] = True,
    warehouse: WarehouseOpt = None,
) -> None:
    """Score models and baselines on the same prompts at the same rate, with paired 95% CIs."""
    from tacorl_offline import eval_output

    _check_format(fmt)
    if rate is not None and target_token is not None:
        raise UserError("pass either --rate or --target-token, not both")
    cfg = _config(
        config,
        **{
            "warehouse": warehouse,
            "data.split": split,
            "data.dataset": dataset,
            "compressor.rate": rate,
            "compressor.target_token": target_token,
            "eval.baselines": _split_list(baselines),
            "eval.reference": reference,
            "eval.judge": judge,
        },
    )
    cfg = _settle(cfg, dataset, split)
    report = evaluate_with_progress(cfg, progress=progress, models=model or None)
    if fmt == "table":
        if output is not None:
            raise UserError("--output writes json or csv; add --format json or --format csv")
        print_eval_report(report)
    else:
        text = eval_output.to_json(report) if fmt == "json" else eval_output.to_csv(report)
        if output is not None:
            try:
                output.write_text(text, encoding="utf-8", newline="")
            except OSError as e:
                raise UserError(f"cannot write {output}: {e.strerror}; check the path") from None
            err.print(f"wrote {fmt} for {len(report.systems)} systems to {output}", markup=False)
        else:
            sys.stdout.write(text)
    if report.budget_stopped:
        err.print(
            "budget reached: rerun evaluate to resume (answers paid so far are kept)", markup=False
        )
        raise typer.Exit(3)


# --------------------------------------------------------------------------- pipelines


def _run_pipeline(name: str, max_steps: int | None, warehouse: str | None, progress: bool) -> None:
    from tacorl_offline.chain import run_chain

    run_chain(
        RECIPES[name],
        train=lambda cfg: train_with_progress(cfg, resume=None, progress=progress)[0],
        evaluate=lambda cfg, **kw: evaluate_with_progress(cfg, progress=progress, **kw),
        overrides={"warehouse": warehouse, "train.max_steps": max_steps},
        say=lambda line: out.print(line, markup=False),
        show=show_stage,
    )
    out.print("done: rerun the same command and it pays for no teacher answer again", markup=False)


@app.command()
@user_errors
def pipeline(
    task: Annotated[str, typer.Argument(help="summarization, qa or code.")],
    max_steps: Annotated[
        int | None, typer.Option(min=1, help="Training steps (default: the task config's).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show live progress.")] = True,
    warehouse: WarehouseOpt = None,
) -> None:
    """Run a task recipe on its bundled sample: ingest, teacher-fill, evaluate, train, evaluate, report."""
    if task not in RECIPES:
        raise UserError(f"unknown task '{task}'; choose one of: {', '.join(RECIPES)}")
    _run_pipeline(task, max_steps, warehouse, progress)


@app.command()
@user_errors
def quickstart(
    max_steps: Annotated[
        int | None, typer.Option(min=1, help="Training steps (default 10).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show live progress.")] = True,
    warehouse: WarehouseOpt = None,
) -> None:
    """The main job on embedded defaults: bundled sample, offline extractive teacher, MiniLM, DuckDB."""
    _run_pipeline("summarization", max_steps, warehouse, progress)


# --------------------------------------------------------------------------- sql / report / warehouse

FORMATS = ("table", "csv", "json")


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"--format must be table, csv or json, not '{fmt}'")


@app.command()
@user_errors
def sql(
    query: Annotated[str | None, typer.Argument(help="A read-only SQL query (SELECT).")] = None,
    named: Annotated[
        str | None, typer.Option("--query", "-q", help="Run a named query from warehouse/queries.")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
    list_queries: Annotated[bool, typer.Option("--list", help="List the named queries.")] = False,
    warehouse: WarehouseOpt = None,
) -> None:
    """Query the warehouse read-only. Any write is refused."""
    from tacorl_offline.reports import load_named_query, named_queries, run_query

    _check_format(fmt)
    if list_queries:
        for name, p in named_queries().items():
            first = p.read_text(encoding="utf-8").splitlines()[0].lstrip("- ")
            out.print(f"{name}: {first}", markup=False)
        return
    if (query is None) == (named is None):
        raise UserError("pass either a SQL query or --query NAME (see --list)")
    text = load_named_query(named) if named else query
    res = run_query(_warehouse(_default_warehouse(warehouse)), text or "")
    render(res.columns, res.rows, fmt, title=named)


@report_app.command("cost")
@user_errors
def report_cost(
    run: Annotated[str | None, typer.Option(help="Only this run id (implies --by run).")] = None,
    by: Annotated[str, typer.Option(help="phase (one row each) or run.")] = "phase",
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
    warehouse: WarehouseOpt = None,
) -> None:
    """Calls, cache hits, dollars spent and saved, by phase (or --by run)."""
    from tacorl_offline.reports import cost_report, for_table

    _check_format(fmt)
    by = "run" if run else by
    res = cost_report(_warehouse(_default_warehouse(warehouse)), run, by=by)
    if not res.rows:
        out.print("no teacher calls recorded yet", markup=False)
        return
    if fmt == "table":
        res = for_table(res, by)
    render(res.columns, res.rows, fmt, title=f"cost by {by}")


@report_app.command("run")
@user_errors
def report_run(
    run: Annotated[str, typer.Argument(help="Run id, a unique prefix of one, or 'latest'.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
    plots: Annotated[bool, typer.Option(help="Write PNG curves against step.")] = True,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Directory for the PNGs (default: <run dir>/plots)."),
    ] = None,
    warehouse: WarehouseOpt = None,
) -> None:
    """A run's summary, plus PNG curves of reward, compression, entropy, hit rate, calls and spend."""
    from tacorl_offline.plots import write_plots
    from tacorl_offline.run_report import default_plot_dir, load_run_report

    if fmt not in ("table", "json"):
        raise UserError(f"--format must be table or json, not '{fmt}'")
    r = load_run_report(_warehouse(_default_warehouse(warehouse)), run)
    if plots:
        r.plots = [str(p) for p in write_plots(r, out_dir or default_plot_dir(r))]
    if fmt == "json":
        print_json(r.to_json())
        return
    print_run_report(r)
    if plots and not r.plots:
        out.print("no steps logged for this run: nothing to plot", markup=False)
    for p in r.plots:
        out.print(f"plot: {p}", markup=False)


@runs_app.command("prune")
@user_errors
def runs_prune(
    config: ConfigOpt = None,
    orphans: Annotated[
        bool, typer.Option(help="Also remove train-* directories this warehouse does not know.")
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="Only list what would be removed.")] = False,
    warehouse: WarehouseOpt = None,
) -> None:
    """Remove checkpoints no resume needs: finished runs keep final/, unfinished runs keep the
    checkpoint --resume loads. Models and the warehouse are never touched."""
    from tacorl_offline.prune import apply_prune, plan_prune

    cfg = _config(config, **{"warehouse": warehouse})
    items = plan_prune(_warehouse(cfg), [Path(cfg.train.output_dir)], orphans=orphans)
    for it in items:
        verb = ("would remove" if dry_run else "remove") if it.remove else "keep"
        out.print(f"{verb} {it.path} ({it.size / 1e6:.1f} MB): {it.why}", markup=False)
    size = sum(it.size for it in items if it.remove)
    if dry_run:
        out.print(f"dry run: {size / 1e6:.1f} MB would be freed", markup=False)
    else:
        out.print(f"freed {apply_prune(items) / 1e6:.1f} MB", markup=False)


@warehouse_app.command("export")
@user_errors
def warehouse_export(
    out_dir: Annotated[Path, typer.Argument(help="Directory for the Parquet export.")],
    warehouse: WarehouseOpt = None,
) -> None:
    """Write every table as partitioned Parquet."""
    from tacorl_offline.reports import export_parquet

    counts = export_parquet(_warehouse(_default_warehouse(warehouse)), out_dir)
    for t, n in counts.items():
        out.print(f"{t}: {n} rows", markup=False)
    out.print(f"exported to {out_dir}", markup=False)


@warehouse_app.command("migrate")
@user_errors
def warehouse_migrate(warehouse: WarehouseOpt = None) -> None:
    """Create the warehouse or bring its schema up to date (also done on every write)."""
    w = _warehouse(_default_warehouse(warehouse))
    w.flush()
    out.print(f"warehouse {w.path} is up to date", markup=False)


@app.command("config")
@user_errors
def show_config(config: ConfigOpt = None) -> None:
    """Print the resolved config (defaults < file < environment) as YAML."""
    import yaml

    cfg = _config(config)
    out.print(yaml.safe_dump(cfg.stored(), sort_keys=False), markup=False)


def _register_compress() -> None:
    # The compress command lives beside the compressor; imported here, registered once.
    from tacorl_offline.cli_compress import compress

    app.command("compress")(user_errors(compress))


_register_compress()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
