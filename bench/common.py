"""What the benches share, so each bench reads as what it measures.

- ``ROOT`` (the repository) on ``sys.path``: a bench runs as ``python bench/<name>.py`` and
  imports the package and ``tests`` (the loopback server, the tiny models) from the checkout.
- ``KEY_ENV``: the teacher's API-key variable; unset is fine, a loopback ``base_url`` gets a
  dummy key.
- :func:`load_average`: the three load averages, printed beside every measurement.
- :func:`clone_warehouse`: a fresh copy of a prepared warehouse, so runs start alike.
- :func:`query`: a read-only query on a warehouse file.
- :func:`quiet_fd`: silence output that native code writes to a file descriptor.

The loopback OpenAI-compatible server itself is :class:`tests.loopback.LoopbackServer`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KEY_ENV = "TACORL_BENCH_KEY"  # unset is fine: a loopback base_url gets a dummy key


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. ``"1.85 1.40 1.20"``."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def clone_warehouse(src: Path, dst: Path) -> None:
    """Copy a (flushed, closed) warehouse file and anything beside it that shares its name."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    for p in src.parent.iterdir():
        if p.is_file() and p.name.startswith(src.name):
            shutil.copy2(p, dst.parent / (dst.name + p.name[len(src.name) :]))


def query(wh: Path, sql: str, params: list[Any] | None = None) -> list[tuple]:
    """Rows of a read-only query on the warehouse file ``wh``."""
    import duckdb

    con = duckdb.connect(str(wh), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


@contextlib.contextmanager
def quiet_fd(fd: int) -> Iterator[None]:
    """Silence a file descriptor (output written by native code bypasses ``sys.stdout``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(fd)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
