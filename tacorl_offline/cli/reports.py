"""Report commands: ``sql``, ``report cost|run``, ``runs prune``, ``warehouse export|merge|migrate``, ``config``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tacorl_offline.cli.common import (
    check_format,
    config_of,
    default_warehouse,
    user_errors,
    warehouse_for,
    warehouse_of,
)
from tacorl_offline.cli.options import ConfigOpt, FormatOpt, WarehouseOpt
from tacorl_offline.display import err, out, print_json, print_run_report, render
from tacorl_offline.errors import UserError


@user_errors
def sql(
    query: Annotated[str | None, typer.Argument(help="A read-only SQL query (SELECT).")] = None,
    named: Annotated[
        str | None, typer.Option("--query", "-q", help="Run a named query from warehouse/queries.")
    ] = None,
    fmt: FormatOpt = "table",
    list_queries: Annotated[bool, typer.Option("--list", help="List the named queries.")] = False,
    config: ConfigOpt = None,
    warehouse: WarehouseOpt = None,
) -> None:
    """Query the warehouse read-only. Any write is refused."""
    from tacorl_offline.reports import load_named_query, named_queries, run_query

    check_format(fmt)
    if list_queries:
        for name, p in named_queries().items():
            first = p.read_text(encoding="utf-8").splitlines()[0].lstrip("- ")
            out.print(f"{name}: {first}", markup=False)
        return
    if (query is None) == (named is None):
        raise UserError("pass either a SQL query or --query NAME (see --list)")
    text = load_named_query(named) if named else query
    res = run_query(warehouse_of(warehouse_for(config, warehouse)), text or "")
    render(res.columns, res.rows, fmt, title=named)


@user_errors
def report_cost(
    run: Annotated[str | None, typer.Option(help="Only this run id (implies --by run).")] = None,
    by: Annotated[str, typer.Option(help="phase (one row each) or run.")] = "phase",
    dataset: Annotated[str | None, typer.Option(help="Only calls of runs on this dataset.")] = None,
    teacher: Annotated[
        str | None,
        typer.Option(help="Only calls to this teacher model or backend (e.g. gpt-4o-mini)."),
    ] = None,
    fmt: FormatOpt = "table",
    config: ConfigOpt = None,
    warehouse: WarehouseOpt = None,
) -> None:
    """Calls, cache hits, dollars spent and saved, by phase (or --by run). Calls to a free
    stand-in (the extractive teacher) or a local model cost $0: a note says how many."""
    from tacorl_offline.reports import cost_report, for_table, free_calls_note

    check_format(fmt)
    by = "run" if run else by
    w = warehouse_of(warehouse_for(config, warehouse))
    res = cost_report(w, run, by=by, dataset=dataset, teacher=teacher)
    if not res.rows:
        out.print("no teacher calls recorded yet", markup=False)
        return
    if fmt == "table":
        res = for_table(res, by)
    render(res.columns, res.rows, fmt, title=f"cost by {by}")
    note = free_calls_note(w, dataset=dataset, teacher=teacher) if fmt == "table" else None
    if note:
        err.print(note, markup=False)
    if fmt == "table":
        from tacorl_offline.shared_store import duplicate_calls

        with w.connect(read_only=True) as con:
            n, usd = duplicate_calls(con)
        if n or w.shared is not None:
            out.print(
                f"duplicate paid calls (a request answered twice): {n} (${usd:.4f})",
                markup=False,
            )


@user_errors
def report_run(
    run: Annotated[str, typer.Argument(help="Run id, a unique prefix of one, or 'latest'.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
    plots: Annotated[bool, typer.Option(help="Write PNG curves against step.")] = True,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Directory for the PNGs (default: <run dir>/plots)."),
    ] = None,
    config: ConfigOpt = None,
    warehouse: WarehouseOpt = None,
) -> None:
    """A run's summary, plus PNG curves of reward, compression, entropy, hit rate, calls and spend."""
    from tacorl_offline.plots import write_plots
    from tacorl_offline.run_report import default_plot_dir, load_run_report

    if fmt not in ("table", "json"):
        raise UserError(f"--format must be table or json, not '{fmt}'")
    r = load_run_report(warehouse_of(warehouse_for(config, warehouse)), run)
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

    cfg = config_of(config, **{"warehouse": warehouse})
    items = plan_prune(warehouse_of(cfg), [Path(cfg.train.output_dir)], orphans=orphans)
    for it in items:
        verb = ("would remove" if dry_run else "remove") if it.remove else "keep"
        out.print(f"{verb} {it.path} ({it.size / 1e6:.1f} MB): {it.why}", markup=False)
    size = sum(it.size for it in items if it.remove)
    if dry_run:
        out.print(f"dry run: {size / 1e6:.1f} MB would be freed", markup=False)
    else:
        out.print(f"freed {apply_prune(items) / 1e6:.1f} MB", markup=False)


@user_errors
def warehouse_export(
    out_dir: Annotated[Path, typer.Argument(help="Directory for the Parquet export.")],
    config: ConfigOpt = None,
    warehouse: WarehouseOpt = None,
) -> None:
    """Write every table as partitioned Parquet."""
    from tacorl_offline.reports import export_parquet

    counts = export_parquet(warehouse_of(warehouse_for(config, warehouse)), out_dir)
    for t, n in counts.items():
        out.print(f"{t}: {n} rows", markup=False)
    out.print(f"exported to {out_dir}", markup=False)


@user_errors
def warehouse_merge(
    source: Annotated[
        Path, typer.Argument(help="Another warehouse file, or a 'warehouse export' directory.")
    ],
    warehouse: WarehouseOpt = None,
) -> None:
    """Add another machine's answers, ledger and runs (idempotent; earliest answer kept)."""
    from tacorl_offline.merge import merge_warehouse

    res = merge_warehouse(warehouse_of(default_warehouse(warehouse)), source)
    for t, n in res.added.items():
        if n:
            out.print(f"{t}: {n} added", markup=False)
    if res.replaced_answers:
        out.print(f"responses: {res.replaced_answers} replaced by the earlier answer", markup=False)
    out.print(f"merged {source}" if res.total else f"merged {source}: nothing new", markup=False)


@user_errors
def warehouse_migrate(warehouse: WarehouseOpt = None) -> None:
    """Create the warehouse or bring its schema up to date (also done on every write)."""
    w = warehouse_of(default_warehouse(warehouse))
    w.flush()
    out.print(f"warehouse {w.path} is up to date", markup=False)


@user_errors
def show_config(config: ConfigOpt = None) -> None:
    """Print the resolved config (defaults < file < environment) as YAML."""
    cfg = config_of(config)
    out.print(cfg.to_yaml(), markup=False)
