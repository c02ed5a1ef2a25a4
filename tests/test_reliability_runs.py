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
def _default_sigint() -> None:
    """The child takes SIGINT as a terminal's Ctrl-C would reach it. A suite started in the
    background by a non-interactive shell (``make test &``) ignores SIGINT, and its children
    would inherit that and never see the signal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_before_the_first_checkpoint_is_interrupted(
    tmp_path, loopback_server, tiny_bert
) -> None:
    cfg = prepare(tmp_path, loopback_server, tiny_bert, max_steps=6, checkpoint_every=5)
    loopback_server.set(latency_s=1.0)
    cmd = train_command(cfg, tmp_path)
    loopback_server.reset()
    child = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
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


# ---------------------------------------------------------------- issue 18 item 8


def test_a_cancel_while_the_teacher_closes_still_finishes_the_run_row(
    tmp_path, loopback_server, monkeypatch
) -> None:
    """The observed case (exit 130, row 'running'): Ctrl-C cancels the task at its next
    await; it landed in the teacher's close, before the run row's last write."""
    import asyncio

    from tacorl_offline.runs import phase_run
    from tests.helpers import openai_setup

    monkeypatch.setenv("TACORL_TEST_KEY", SECRET)
    cfg, w = openai_setup(tmp_path, loopback_server, 2)

    async def main() -> None:
        closing = asyncio.Event()

        async def body() -> None:
            async with phase_run(w, cfg, "train") as run:
                with w.transaction() as con:
                    run.begin(con)
                real = run.teacher.aclose

                async def slow_close() -> None:
                    closing.set()
                    await asyncio.sleep(5)
                    await real()

                run.teacher.aclose = slow_close  # type: ignore[method-assign]

        task = asyncio.create_task(body())
        await asyncio.wait_for(closing.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    # Before: 'running' (the finish came after the close and was skipped).
    assert [s for _, s, _ in _status(tmp_path / "wh.duckdb")] == ["finished"]


def _sigint_after(cmd: list[str], ready, *, env=None, timeout: float = 120) -> tuple[int, str]:
    """Start ``cmd``, wait until ``ready()``, send SIGINT; (exit code, stderr)."""
    child = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.poll() is None and not ready():
        time.sleep(0.02)
    assert child.poll() is None, child.communicate()[1]
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    return child.returncode, err


def _has_run(wh: Path, kind: str) -> bool:
    import duckdb

    try:
        con = duckdb.connect(str(wh), read_only=True)
    except duckdb.Error:
        return False
    try:
        return bool(con.execute("SELECT 1 FROM runs WHERE kind = ?", [kind]).fetchall())
    except duckdb.Error:
        return False
    finally:
        con.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigint_in_every_phase_leaves_the_run_interrupted(
    tmp_path, loopback_server, tiny_bert
) -> None:
    """A real SIGINT to teacher-fill, sft, train, a resumed train and evaluate: exit 130 and
    the run row 'interrupted', never 'running'."""
    import yaml

    from tests.helpers import ingest_file, make_cfg, write_data

    cfg = make_cfg(tmp_path, loopback_server, tiny_bert, max_steps=6, checkpoint_every=1)
    ingest_file(cfg, write_data(tmp_path / "d.json", n=16))
    doc = cfg.model_dump(mode="json")
    doc["sft"].update(epochs=200, output_dir=str(tmp_path / "sft"))
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    wh = Path(cfg.warehouse)
    base = [sys.executable, "-m", "tacorl_offline.cli"]

    def cmd(*args: str) -> list[str]:
        return [*base, *args, "-c", str(cfg_path), "--no-progress"]

    def calls_past(n: int):
        return lambda: loopback_server.calls >= n

    def statuses(kind: str) -> list[str]:
        return [s for (s,) in q(cfg, "SELECT status FROM runs WHERE kind = ?", [kind])]

    loopback_server.set(latency_s=0.3)
    # teacher-fill, mid-fill.
    code, err = _sigint_after(cmd("teacher-fill"), calls_past(3))
    assert code == 130, err
    assert statuses("fill") == ["interrupted"]
    loopback_server.set(latency_s=0.0)
    done = subprocess.run(cmd("teacher-fill"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # sft, mid-training (its run row is written when training starts).
    code, err = _sigint_after(cmd("sft"), lambda: _has_run(wh, "sft"))
    assert code == 130, err
    assert statuses("sft") == ["interrupted"]
    # train, mid-step; then the resumed run, mid-step (the case first seen).
    loopback_server.set(latency_s=0.3)

    def checkpointed() -> bool:
        return any(Path(cfg.train.output_dir).glob("train-*/checkpoints/step-*"))

    code, err = _sigint_after(cmd("train"), checkpointed)
    assert code == 130, err
    assert statuses("train") == ["interrupted"]
    (run_id,) = q(cfg, "SELECT run_id FROM runs WHERE kind = 'train'")[0]
    start = loopback_server.calls
    code, err = _sigint_after([*cmd("train"), "--resume", run_id], calls_past(start + 1))
    assert code == 130, err
    assert q(cfg, "SELECT status, message FROM runs WHERE kind = 'train'") == [
        ("interrupted", "CancelledError")
    ]
    # evaluate, mid-evaluation.
    start = loopback_server.calls
    code, err = _sigint_after(
        [*cmd("evaluate"), "-m", str(tiny_bert), "--baselines", "lead"], calls_past(start + 1)
    )
    assert code == 130, err
    assert statuses("eval") == ["interrupted"]
    # Nothing is left 'running', and the ledger holds no write-ahead row.
    assert q(cfg, "SELECT count(*) FROM runs WHERE status = 'running'") == [(0,)]
    assert q(cfg, "SELECT count(*) FROM calls_in_flight") == [(0,)]
