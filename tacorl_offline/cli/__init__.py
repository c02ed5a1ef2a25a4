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
import sys
from typing import Annotated, Any

import typer

from tacorl_offline.cli import data, evaluate, reports, train
from tacorl_offline.cli.common import user_errors
from tacorl_offline.display import err

# Library chatter (load reports, shard-writing progress bars) is not ours to print.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


class OneLineErrors(typer.core.TyperGroup):
    """Command-line mistakes (an unknown option, a missing or malformed value) print one line
    and exit 2, like every other user error, instead of a usage box; ``--help`` shows usage."""

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None,
             standalone_mode: bool = True, **extra: Any) -> Any:  # fmt: skip
        # typer vendors click; its exception classes live beside the public BadParameter
        click = sys.modules[typer.BadParameter.__module__]

        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.NoSuchOption as e:
            hint = ""
            if " " in e.option_name or not e.option_name.startswith("--"):
                hint = (
                    "; a value that starts with '-' goes after '--' "
                    "(e.g. tacorl-offline sql -- '-- a comment')"
                )
            err.print(f"error: {e.format_message().rstrip('.')}{hint}; see --help", markup=False)
            sys.exit(2)
        except click.UsageError as e:
            err.print(f"error: {e.format_message().rstrip('.')}; see --help", markup=False)
            sys.exit(2)
        except click.ClickException as e:
            err.print(f"error: {e.format_message()}", markup=False)
            sys.exit(e.exit_code)
        except click.Abort:
            err.print("aborted", markup=False)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def _plain_flags() -> None:
    """Help shows an on/off flag without a ``<bool>`` type (typer prints one for every option)."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "_tacorl", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    display_type_rich._tacorl = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_plain_flags()

app = typer.Typer(
    cls=OneLineErrors,
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
