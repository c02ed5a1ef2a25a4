"""A warehouse file cut short (a partial copy, a disk that filled mid-copy) is one line and exit 2,
not a report built from the blocks that happen to remain (issue 18 item 7)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tacorl_offline.errors import UserError
from tacorl_offline.warehouse import Warehouse, truncated


@pytest.mark.parametrize(
    ("size", "blocks", "block", "cut"),
    [
        (13_905_920, 53, 262_144, False),  # 53 blocks and the 12 KiB of headers
        (13_893_632, 53, 262_144, False),  # exactly the blocks
        (6_952_960, 53, 262_144, True),  # cut in half
        (12_288, 0, 262_144, False),  # a fresh file with no block yet
    ],
)
def test_truncated(size: int, blocks: int, block: int, cut: bool) -> None:
    assert truncated(size, blocks, block) is cut


def test_a_cut_warehouse_is_one_line(tmp_path) -> None:
    path = tmp_path / "w.duckdb"
    w = Warehouse(path)
    with w.connect() as con:  # migrations create the tables: several blocks
        con.execute(
            "CREATE TABLE filler AS SELECT range AS i, repeat('x', 200) AS s FROM range(20000)"
        )
        con.execute("CHECKPOINT")
    with Warehouse(path).connect(read_only=True) as con:  # whole: opens
        assert con.execute("SELECT count(*) FROM filler").fetchone() == (20000,)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(UserError, match="cut short"), Warehouse(path).connect(read_only=True):
        pass
    r = subprocess.run(
        [sys.executable, "-m", "tacorl_offline.cli", "report", "cost", "-w", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2
    assert "cut short" in r.stderr and "Traceback" not in r.stderr + r.stdout
    assert len(r.stderr.strip().splitlines()) == 1
