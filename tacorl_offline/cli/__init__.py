"""The ``tacorl-offline`` command line: a thin layer, one module per command family.

Each command parses its options, resolves the config once (file < environment < flags, see
:func:`tacorl_offline.config.resolve`) and calls one library function. A
:class:`~tacorl_offline.errors.UserError` becomes one line on stderr and a non-zero exit;
anything else is a bug and keeps its traceback (without local variables, which could hold
secrets).

This file is the table of contents: the app, its groups and the commands in the order
``--help`` lists them. The commands live in ``data`` (ingest, teacher-fill, sft), ``train``
(train, pipeline, quickstart), ``evaluate`` (evaluate, compress) and ``reports`` (sql, report,
runs, warehouse, config); ``options`` defines the shared options, ``common`` the shared steps.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from tacorl_offline.cli import data, evaluate, reports, train
from tacorl_offline.cli.common import user_errors

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


app.command()(data.ingest)
app.command("teacher-fill")(data.teacher_fill)
app.command()(data.sft)
app.command()(train.train)
app.command()(evaluate.evaluate)
app.command()(train.pipeline)
app.command()(train.quickstart)
app.command()(reports.sql)
report_app.command("cost")(reports.report_cost)
report_app.command("run")(reports.report_run)
runs_app.command("prune")(reports.runs_prune)
warehouse_app.command("export")(reports.warehouse_export)
warehouse_app.command("merge")(reports.warehouse_merge)
warehouse_app.command("migrate")(reports.warehouse_migrate)
app.command("config")(reports.show_config)
app.command("compress")(user_errors(evaluate.compress))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
