"""Issue 10 item 3: a long reader never kills training."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from tacorl_offline.trainer import Trainer
from tacorl_offline.warehouse import Warehouse
from tests.helpers import prepare, q

READER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)   # a long `sql` query, say
con.execute("SELECT count(*) FROM samples").fetchall()
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


@pytest.mark.timeout(240)
def test_a_reader_holding_the_lock_longer_than_the_timeout_never_kills_training(
    tmp_path, loopback_server, tiny_bert
) -> None:
    cfg = prepare(tmp_path, loopback_server, tiny_bert, max_steps=6, checkpoint_every=3)
    w = Warehouse(cfg.warehouse, lock_timeout_s=1.0)
    reader: subprocess.Popen | None = None
    journaled_while_locked = []

    def on_step(log, _s) -> None:
        nonlocal reader
        if log.step == 1:  # from now on a reader holds the file for 5 s (> the 1 s timeout)
            reader = subprocess.Popen(
                [sys.executable, "-c", READER, cfg.warehouse, "5"],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert reader.stdout is not None and reader.stdout.readline().strip() == "holding"
        elif reader is not None and reader.poll() is None:
            journaled_while_locked.append(w.journal_path.stat().st_size > 0)

    s = asyncio.run(Trainer(cfg, warehouse=w, on_step=on_step).run())
    assert reader is not None and reader.wait(timeout=30) == 0
    assert s.steps == 6 and s.final_model is not None  # before: exit 2, "locked by another process"
    assert any(journaled_while_locked), "the reader should have held the lock during a step"
    w.flush()
    assert q(cfg, "SELECT count(*) FROM steps WHERE run_id = ?", [s.run_id]) == [(6,)]
    assert q(cfg, "SELECT count(*) FROM samples WHERE run_id = ?", [s.run_id]) == [(6 * 4 * 2,)]
    assert q(cfg, "SELECT status FROM runs WHERE run_id = ?", [s.run_id]) == [("finished",)]
    # Every paid answer and every ledger row made it too.
    assert q(
        cfg,
        "SELECT count(*) FROM samples s WHERE run_id = ? AND request_hash IS NOT NULL"
        " AND request_hash NOT IN (SELECT request_hash FROM responses)",
        [s.run_id],
    ) == [(0,)]
