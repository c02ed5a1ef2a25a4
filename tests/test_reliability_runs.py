"""Issue 10 items 8 and 9: run status tells the truth; a budget stop leaves no sample unscored."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tacorl_offline.cli import app
from tacorl_offline.warehouse import Warehouse
from tests.conftest import SECRET, openai_config, write_upstream_json
from tests.helpers import prepare, q, train, train_command
from tests.loopback import LoopbackServer


def _status(wh: Path, run_id: str | None = None) -> list[tuple]:
    import duckdb

    con = duckdb.connect(str(wh), read_only=True)
    try:
        sql = "SELECT run_id, status, message FROM runs"
        return con.execute(
            sql + (" WHERE run_id = ?" if run_id else ""), [run_id] if run_id else []
        ).fetchall()
    finally:
        con.close()


@pytest.mark.timeout(120)
def test_a_killed_run_becomes_interrupted_on_the_next_open(tmp_path: Path) -> None:
    with LoopbackServer(latency_s=0.3) as server:
        data = write_upstream_json(tmp_path / "d.json", 30)
        wh = tmp_path / "w.duckdb"
        cfg = openai_config(tmp_path / "c.yaml", server, concurrency=2)
        assert CliRunner().invoke(app, ["ingest", str(data), "-w", str(wh)]).exit_code == 0
        cmd = [sys.executable, "-m", "tacorl_offline.cli", "teacher-fill", "-c", str(cfg)]
        cmd += ["-w", str(wh), "--no-progress"]
        env = {**os.environ, "TACORL_TEST_KEY": SECRET}
        child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.calls < 4:
            time.sleep(0.05)
        child.kill()
        child.wait()
    ((run_id, status, _),) = _status(wh)
    assert status == "running"  # it never got to say
    # A run whose process is alive (this one) is left alone.
    with Warehouse(wh).transaction() as con:
        con.execute(
            "INSERT INTO runs (run_id, kind, status, config, pid, host) VALUES"
            " ('live', 'fill', 'running', '{}', ?, ?)",
            [os.getpid(), socket.gethostname()],
        )
    assert _status(wh, run_id)[0][1] == "interrupted"  # that write open noticed the dead one
    assert f"PID {child.pid}" in _status(wh, run_id)[0][2]
    assert _status(wh, "live")[0][1] == "running"


@pytest.mark.timeout(180)
def test_ctrl_c_before_the_first_checkpoint_is_interrupted(
    tmp_path, loopback_server, tiny_bert
) -> None:
    cfg = prepare(tmp_path, loopback_server, tiny_bert, max_steps=6, checkpoint_every=5)
    loopback_server.set(latency_s=1.0)
    cmd = train_command(cfg, tmp_path)
    loopback_server.reset()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and loopback_server.calls < 1 and child.poll() is None:
        time.sleep(0.05)
    assert child.poll() is None
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    # Before: 'failed' (CancelledError); the Ctrl-C came before any checkpoint.
    assert q(cfg, "SELECT status FROM runs WHERE kind = 'train'") == [("interrupted",)]
    assert not list(Path(cfg.train.output_dir).glob("train-*/checkpoints/step-*"))


def test_budget_stop_redoes_the_step_and_steps_agree_with_the_ledger(
    tmp_path, loopback_server, tiny_bert
) -> None:
    cfg = prepare(tmp_path, loopback_server, tiny_bert, max_steps=3, checkpoint_every=10)
    loopback_server.reset()
    cfg.budget.max_calls = 1  # fewer than a step needs: some invocations stop mid-step
    s = train(cfg)
    runs = [s]
    while runs[-1].budget_stopped:
        runs.append(train(cfg, resume=s.run_id))
        assert len(runs) < 60
    r = runs[-1]
    # A step the budget stopped midway was undone (and redone by the next invocation).
    assert any(x.budget_stopped and x.steps == 0 for x in runs)
    assert r.final_model is not None
    # Every sample was scored: none was left without a reward because its call was not sent.
    n, unscorable = q(
        cfg,
        "SELECT count(*), count(*) FILTER (WHERE unscorable) FROM samples WHERE run_id = ?",
        [s.run_id],
    )[0]
    assert n == 3 * 4 * 2 and unscorable == 0
    # steps.calls agrees with the ledger (and the server), step by step.
    by_step = q(
        cfg,
        "SELECT s.step, s.calls, (SELECT count(DISTINCT a.request_hash) FROM api_calls a"
        " WHERE a.run_id = s.run_id AND a.step = s.step AND a.status <> 'hit')"
        " FROM steps s WHERE s.run_id = ? ORDER BY 1",
        [s.run_id],
    )
    assert [st for st, _, _ in by_step] == [1, 2, 3]
    assert all(calls == ledger for _, calls, ledger in by_step), by_step
    assert sum(c for _, c, _ in by_step) == loopback_server.calls
