"""The Python API: the CLI's phases as functions that take a config and return summaries.

Design decisions:
- Same code path as the CLI: each function resolves the config with
  :func:`tacorl_offline.config.resolve` (defaults < YAML < environment < the keyword
  overrides given here) and calls the same library function the command calls, so a script
  and a shell session fill, train and pay exactly alike (the warehouse, the journal, budgets).
- ``config`` is a :class:`~tacorl_offline.config.Config`, a path to a YAML file, or None for
  the embedded defaults. Overrides are dotted keys, given as a dict:
  ``train("my.yaml", overrides={"train.max_steps": 20})``.
- The functions run their own event loop (``asyncio.run``); from a notebook that already runs
  one, call the ``run_*`` coroutines of the modules directly.
- Errors a user can fix raise :class:`~tacorl_offline.errors.UserError` with a one-line message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tacorl_offline.config import Config, resolve
from tacorl_offline.warehouse import Warehouse

__all__ = [  # noqa: F822
    "Compressor",
    "evaluate",
    "ingest",
    "load_config",
    "model_path",
    "teacher_fill",
    "train",
]


def __getattr__(name: str) -> Any:
    if name == "Compressor":  # torch and transformers load only when it is asked for
        from tacorl_offline.compressor import Compressor

        return Compressor
    raise AttributeError(f"module 'tacorl_offline.api' has no attribute {name!r}")


if TYPE_CHECKING:
    from tacorl_offline.evaluate import EvalReport
    from tacorl_offline.fill import FillSummary
    from tacorl_offline.ingest_store import IngestSummary
    from tacorl_offline.trainer import TrainSummary

ConfigLike = Config | str | Path | None


def load_config(config: ConfigLike = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """A validated config from a Config, a YAML path or the defaults, with dotted overrides."""
    if isinstance(config, Config):
        if not overrides:
            return config
        return resolve(None, environ={}, overrides={**_flatten(config), **overrides})
    return resolve(config, overrides=overrides)


def _flatten(cfg: Config) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(prefix: str, d: Mapping[str, Any]) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, Mapping) and k != "prices" and v:
                walk(key + ".", v)
            else:
                out[key] = v

    walk("", cfg.model_dump(mode="json"))
    return out


def ingest(
    config: ConfigLike = None,
    path: str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    skip_invalid: bool = False,
) -> IngestSummary:
    """Load ``path`` (default: ``data.path``) into ``data.dataset``/``data.split``."""
    from tacorl_offline.errors import UserError
    from tacorl_offline.ingest import read_records
    from tacorl_offline.ingest_store import store_records

    cfg = load_config(config, overrides)
    src = path or cfg.data.path
    if src is None:
        raise UserError("no file to ingest: pass a path or set data.path in the config")
    records, _ = read_records(src, cfg.data, skip_invalid=skip_invalid)
    return store_records(
        Warehouse(cfg.warehouse),
        records,
        dataset=cfg.data.dataset,
        split=cfg.data.split,
        source_path=src,
    )


def teacher_fill(
    config: ConfigLike = None, *, overrides: Mapping[str, Any] | None = None
) -> FillSummary:
    """Answer every original prompt of the split once (a rerun pays nothing)."""
    from tacorl_offline.fill import run_fill

    cfg = load_config(config, overrides)
    return asyncio.run(run_fill(cfg, warehouse=Warehouse(cfg.warehouse)))


def train(
    config: ConfigLike = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    resume: str | None = None,
) -> TrainSummary:
    """REINFORCE on the compressor; returns the run's summary (``final_model`` is its path)."""
    from tacorl_offline.trainer import Trainer

    cfg = load_config(config, overrides)
    return asyncio.run(Trainer(cfg, warehouse=Warehouse(cfg.warehouse), resume=resume).run())


def evaluate(
    config: ConfigLike = None,
    model: str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    rate: float | None = None,
    models: Sequence[str | Path] | None = None,
    baselines: Sequence[str] | None = None,
) -> EvalReport:
    """Score ``model`` (or ``models``; default: ``compressor.model``) and the baselines on the
    split at the same rate, with paired 95% intervals (see :func:`.evaluate.run_evaluation`)."""
    from tacorl_offline.evaluate import run_evaluation

    cfg = load_config(config, overrides)
    names = [str(m) for m in (models or ([model] if model else [cfg.compressor.model]))]
    return asyncio.run(
        run_evaluation(
            cfg, models=names, baselines=baselines, rate=rate, warehouse=Warehouse(cfg.warehouse)
        )
    )


def model_path(name: str | Path, config: ConfigLike = None) -> str:
    """What a model name stands for, as ``-m`` reads it: a directory, ``minilm``, ``latest``,
    ``run:<id>``, ``sft:latest`` or a cached hub id (see :mod:`tacorl_offline.model_ref`)."""
    from tacorl_offline.model_ref import resolve_model_ref

    cfg = load_config(config)
    return resolve_model_ref(
        str(name), Warehouse(cfg.warehouse), hub_download=cfg.compressor.hub_download
    )
