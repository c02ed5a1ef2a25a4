"""Locate files shipped with the package.

In a source checkout (or an editable install) they live at the repository's top level
(``warehouse/``, ``configs/``, ``data/sample``). In a wheel, hatch force-includes them under
``tacorl_offline/_warehouse``, ``_configs`` and ``_data`` (see pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent
_WHEEL_NAMES = {"warehouse": "_warehouse", "configs": "_configs", "data": "_data"}


def resource_dir(relative: str) -> Path:
    """``resource_dir("warehouse/migrations")`` -> the directory, wherever it was installed."""
    top, _, rest = relative.partition("/")
    candidates = [_PKG / _WHEEL_NAMES.get(top, top) / rest, _PKG.parent / relative]
    for c in candidates:
        if c.is_dir():
            return c
    raise FileNotFoundError(f"packaged resource {relative!r} not found (looked in {candidates})")
