"""The options several commands share, each defined once (typer ``Annotated`` types)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config (ours or upstream train_reinforce.yaml)."),
]

WarehouseOpt = Annotated[
    str | None,
    typer.Option(
        "--warehouse",
        "-w",
        help="DuckDB warehouse file, or a team warehouse postgresql://user@host/db?local=PATH.",
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

FormatOpt = Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")]
ProgressBarOpt = Annotated[bool, typer.Option(help="Show a live progress bar.")]
ProgressOpt = Annotated[bool, typer.Option(help="Show live progress.")]
