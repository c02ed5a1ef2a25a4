"""tacorl-offline: TACO-RL fine-tuning of LLMLingua-2 compressors with a reward warehouse.

The Python API (see the README's "Python API")::

    from tacorl_offline.api import Compressor, evaluate, train
    Compressor.from_pretrained("runs/summarization/<run>/final").compress(text, rate=0.33)
    summary = train("my.yaml")

(``tacorl_offline.evaluate`` is the evaluation module, hence ``tacorl_offline.api``.)
``Compressor`` is also importable from here; it is imported on first use, so
``import tacorl_offline`` stays cheap for the CLI.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Compressor": "tacorl_offline.compressor",
    "Config": "tacorl_offline.config",
    "UserError": "tacorl_offline.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tacorl_offline' has no attribute {name!r}")
