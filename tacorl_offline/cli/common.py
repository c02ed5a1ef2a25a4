"""What every command does the same way: user errors as one line, the config resolved once,
the warehouse it names, the dataset/split settled, the output format checked."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from tacorl_offline.config import Config, resolve
from tacorl_offline.display import config_flag, err
from tacorl_offline.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])

# Exit codes: 2 a user error, 3 stopped by the budget (rerun resumes), 4 a Batch API job still
# running (rerun collects it), 5 some requests failed (rerun retries the transient ones).
EXIT_FAILURES = 5


def check_numbers(**flags: tuple[float | int | None, float]) -> None:
    """Our own one-line refusal of a negative, too small or NaN number on the command line
    (``name=(value, minimum)``; the flag is ``--name`` with dashes)."""
    import math

    for name, (value, low) in flags.items():
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{flag} must be a number >= {low:g}, not {value}")
        if value < low:
            raise UserError(f"{flag} must be >= {low:g} (got {value:g})")


def warehouse_for(config: Path | None, warehouse: str | None) -> str:
    """The warehouse a read-only command uses: -w, else the config's (-c), else the default."""
    if warehouse is None and config is not None:
        return resolve(config).warehouse
    return default_warehouse(warehouse)


def next_flags(
    config: Path | None,
    warehouse: str | None = None,
    dataset: str | None = None,
) -> str:
    """The flags a printed next step needs to work when copied (-c, -w, --dataset)."""
    import shlex

    from tacorl_offline.shared_store import is_shared_url, without_password

    out = config_flag(config)
    if warehouse:  # a team warehouse URL is printed without its password
        shown = without_password(warehouse) if is_shared_url(warehouse) else warehouse
        out += f" -w {shlex.quote(shown)}"
    if dataset:
        out += f" --dataset {shlex.quote(dataset)}"
    return out


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


def config_of(config: Path | None, **overrides: Any) -> Config:
    return resolve(config, overrides=overrides)


def warehouse_of(cfg_or_path: Config | str):
    from tacorl_offline.warehouse import Warehouse

    return Warehouse(cfg_or_path.warehouse if isinstance(cfg_or_path, Config) else cfg_or_path)


def settle_flags(cfg: Config, dataset: str | None, split: str | None) -> Config:
    """The dataset and split a phase uses: a flag must exist; the config's choice falls back
    to the warehouse's only dataset/split (with a note), and is refused when another dataset was
    ingested last; the choice is printed before any call. See :mod:`tacorl_offline.datasets`."""
    from tacorl_offline.datasets import settle, using_line

    w = warehouse_of(cfg)
    if not w.path.exists():
        return cfg  # the phase says what to do
    with w.connect(read_only=True) as con:
        cfg, note = settle(
            cfg,
            con,
            dataset_given=dataset is not None,
            split_given=split is not None,
            where=str(w.path),
            strict=True,
        )
        using = using_line(con, cfg)
    if note:
        err.print(f"note: {note}", markup=False)
    err.print(f"using {using}", markup=False)
    return cfg


def default_warehouse(flag: str | None) -> str:
    return flag or resolve(None).warehouse


FORMATS = ("table", "csv", "json")


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"--format must be table, csv or json, not '{fmt}'")
