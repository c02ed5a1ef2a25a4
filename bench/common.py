"""What the benches share, so each bench reads as what it measures.

- ``ROOT`` (the repository) on ``sys.path``: a bench runs as ``python bench/<name>.py`` and
  imports the package and ``tests`` (the loopback server, the tiny models) from the checkout.
- The run's header: :func:`print_run_header` (the command line, the machine, the versions and
  :func:`load_average`, printed before any measurement).
- A teacher on loopback: :func:`loopback_config` (the openai backend at a local ``base_url``,
  ``KEY_ENV`` for its key: unset is fine, a loopback ``base_url`` gets a dummy key) and
  :func:`serial_latency` (the mean time of one call through the real client).
- Warehouses: :func:`warehouse_with_prompts` (prompts stored through the ingest path),
  :func:`text_records`, :func:`clone_warehouse` (a fresh copy of a prepared warehouse, so runs
  start alike), :func:`query` (a read-only query on a warehouse file).
- Printing: :func:`text_table` and :func:`markdown_table`; :func:`mean` and
  :func:`median_ms`.
- :func:`quiet_fd`: silence output that native code writes to a file descriptor.

The loopback OpenAI-compatible server itself is :class:`tests.loopback.LoopbackServer`.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import statistics
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from tacorl_offline.config import Config
    from tacorl_offline.ingest import Record
    from tacorl_offline.warehouse import Warehouse
    from tests.loopback import LoopbackServer

KEY_ENV = "TACORL_BENCH_KEY"  # unset is fine: a loopback base_url gets a dummy key


def parse_json_or_text(v: str) -> Any:
    """A ``--set`` value: JSON when it parses (numbers like 1e-5, true, null, "quoted"), else
    the text itself."""
    import json

    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def parse_sets(
    sets: Iterable[str], value: Any = parse_json_or_text, flag: str = "--set"
) -> dict[str, Any]:
    """``--set section.field=VALUE`` flags as config overrides (``value`` parses VALUE);
    ``flag`` names the option in the one-line error for a flag without ``=``."""
    out: dict[str, Any] = {}
    for s in sets:
        key, sep, raw = s.partition("=")
        if not sep:
            raise SystemExit(f"{flag} wants KEY=VALUE, not '{s}'")
        out[key] = value(raw)
    return out


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. ``"1.85 1.40 1.20"``."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def print_run_header() -> None:
    """The command line, then the machine and the versions with the load average."""
    import duckdb
    import torch

    print(f"command: {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}")
    print(
        f"env: cpus {os.cpu_count()} (torch threads {torch.get_num_threads()}), "
        f"torch {torch.__version__}, python {sys.version.split()[0]}, duckdb {duckdb.__version__}, "
        f"load average {load_average()} (other processes share the cores)"
    )


# ----------------------------------------------------------------------------- the teacher


def loopback_config(base_url: str, overrides: Mapping[str, Any]) -> Config:
    """A config whose teacher is the openai backend (gpt-4o-mini prices) at ``base_url``,
    its key read from ``KEY_ENV``; ``overrides`` (dotted keys) set the rest."""
    from tacorl_offline.config import resolve

    teacher = {
        "teacher.backend": "openai",
        "teacher.model": "gpt-4o-mini",
        "teacher.base_url": base_url,
        "teacher.api_key_env": KEY_ENV,
    }
    return resolve(None, environ={}, overrides={**teacher, **overrides})


def serial_latency(server: LoopbackServer, n: int) -> float:
    """Mean wall time of ``n`` serial chat completions through the real openai client."""
    import asyncio
    import time

    from openai import AsyncOpenAI

    async def go() -> float:
        client = AsyncOpenAI(base_url=server.base_url, api_key="sk-bench", max_retries=0)
        try:
            msgs = [{"role": "user", "content": "Summarize: the council met on Monday."}]
            await client.chat.completions.create(model="gpt-4o-mini", messages=msgs)  # warm
            t0 = time.perf_counter()
            for _ in range(n):
                await client.chat.completions.create(model="gpt-4o-mini", messages=msgs)
            return (time.perf_counter() - t0) / n
        finally:
            await client.close()

    return asyncio.run(go())


# ----------------------------------------------------------------------------- warehouses


def text_records(texts: Iterable[str], *, first_row: int = 0) -> list[Record]:
    """Ingest records of plain prompts (no fields, no reference)."""
    from tacorl_offline.hashing import prompt_id
    from tacorl_offline.ingest import Record

    return [
        Record(
            prompt_id=prompt_id(text, {}),
            text=text,
            fields={},
            reference=None,
            imported_answer=None,
            row=first_row + i,
        )
        for i, text in enumerate(texts)
    ]


def warehouse_with_prompts(
    path: Path,
    records: Sequence[Record],
    *,
    dataset: str,
    split: str = "train",
    source_path: str | Path = "synthetic",
) -> Warehouse:
    """The warehouse at ``path`` (made if new) with ``records`` stored as ingest stores them."""
    from tacorl_offline.ingest_store import store_records
    from tacorl_offline.warehouse import Warehouse

    path.parent.mkdir(parents=True, exist_ok=True)
    w = Warehouse(path)
    store_records(w, records, dataset=dataset, split=split, source_path=source_path)
    return w


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


# ----------------------------------------------------------------------------- printing


def mean(xs: Sequence[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def median_ms(xs: Sequence[float]) -> float:
    return statistics.median(xs) * 1000


def text_table(columns: Sequence[tuple[str, int]], rows: Iterable[Sequence[str]]) -> list[str]:
    """A fixed-width table: the header, a rule, the rows. ``columns`` are (title, width); the
    first column is left-aligned, the others right-aligned; cells come formatted."""

    def line(cells: Sequence[str]) -> str:
        return " ".join(
            c.ljust(w) if k == 0 else c.rjust(w)
            for k, (c, (_, w)) in enumerate(zip(cells, columns, strict=True))
        )

    head = line([t for t, _ in columns])
    return [head, "-" * len(head), *(line(r) for r in rows)]


def markdown_table(titles: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table of formatted cells."""
    return [
        "| " + " | ".join(titles) + " |",
        "|" + "---|" * len(titles),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
