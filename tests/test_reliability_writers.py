"""Issue 18 item 4: two processes on one warehouse never pay twice for one request."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tacorl_offline import leases
from tacorl_offline.cli import app
from tacorl_offline.warehouse import Warehouse
from tests.conftest import SECRET, openai_config, write_upstream_json
from tests.helpers import error_lines, rows
from tests.loopback import LoopbackServer

ME = leases.Owner(100, "here")


def _lease(owner: leases.Owner, expires_at: float) -> leases.Lease:
    return leases.Lease("run-1", "train", owner, expires_at)


def test_a_lease_stands_while_its_holder_lives_or_until_it_expires() -> None:
    other_here, other_there = leases.Owner(200, "here"), leases.Owner(200, "there")

    def alive(o: leases.Owner) -> bool | None:
        return {"here": o.pid == 200, "there": None}[o.host]

    assert not leases.stands(_lease(ME, 1e12), ME, 0.0, alive)  # my own never stands
    assert leases.stands(_lease(other_here, 0.0), ME, 10.0, alive)  # alive: expiry moot
    dead = leases.Owner(300, "here")
    assert not leases.stands(_lease(dead, 1e12), ME, 10.0, alive)  # dead: taken over
    assert leases.stands(_lease(other_there, 20.0), ME, 10.0, alive)  # unknown: until expiry
    assert not leases.stands(_lease(other_there, 5.0), ME, 10.0, alive)
    standing, stale = leases.sort_out(
        [_lease(other_here, 0.0), _lease(dead, 0.0), _lease(ME, 0.0)], ME, 10.0, alive
    )
    assert [x.owner for x in standing] == [other_here] and [x.owner for x in stale] == [dead]
    line = leases.refusal(_lease(other_here, 70.0), "w.duckdb", 10.0)
    assert "train run run-1 (PID 200 on here" in line and "60s" in line and "\n" not in line


def _fill(cfg: Path, wh: Path) -> list[str]:
    cli = [sys.executable, "-m", "tacorl_offline.cli", "teacher-fill"]
    return [*cli, "-c", str(cfg), "-w", str(wh), "--no-progress"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_second_paying_process_is_refused_in_one_line_and_nothing_is_paid_twice(
    tmp_path: Path,
) -> None:
    n = 200  # at 1.2 s each, the first is still paying when the second (a slow start) asks
    # Slow answers while the second process starts, so the first is surely still paying.
    with LoopbackServer(latency_s=1.2) as server:  # under the 2 s timeout
        data = write_upstream_json(tmp_path / "d.json", n)
        wh = tmp_path / "w.duckdb"
        cfg = openai_config(tmp_path / "c.yaml", server, concurrency=2)
        assert CliRunner().invoke(app, ["ingest", str(data), "-w", str(wh)]).exit_code == 0
        env = {**os.environ, "TACORL_TEST_KEY": SECRET}
        first = subprocess.Popen(
            _fill(cfg, wh), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.calls < 2:
            time.sleep(0.02)
        second = subprocess.run(_fill(cfg, wh), env=env, capture_output=True, text=True)
        assert first.poll() is None
        server.set(latency_s=0.0)
        _, err1 = first.communicate(timeout=120)
        assert first.returncode == 0, err1
        assert second.returncode == 2, second.stderr
        line = "\n".join(error_lines(second.stderr))
        assert "is in use by fill run fill-" in line and f"PID {first.pid}" in line, line
        assert "\n" not in line
        # Every prompt paid once, by the first process only.
        assert server.calls == n and max(server.calls_by_hash.values()) == 1
        # The refused run left nothing behind; the lease is gone with its holder's phase.
        w = Warehouse(wh)
        assert rows(w, "SELECT count(*) FROM writer_leases") == [(0,)]
        assert rows(w, "SELECT kind, status FROM runs") == [("fill", "finished")]
        # Once the first is done, the second runs and pays for nothing.
        again = subprocess.run(_fill(cfg, wh), env=env, capture_output=True, text=True)
        assert again.returncode == 0, again.stderr
        assert server.calls == n


def test_a_dead_holders_lease_is_taken_over(tmp_path: Path) -> None:
    w = Warehouse(tmp_path / "w.duckdb")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    import socket

    with w.transaction() as con:
        con.execute(
            "INSERT INTO writer_leases (run_id, phase, pid, host, expires_at) VALUES (?, ?, ?, ?, ?)",
            ["old", "train", pid, socket.gethostname(), time.time() + 3600],
        )
    with w.transaction() as con:
        w.take_lease(con, "new", "fill")
    assert rows(w, "SELECT run_id FROM writer_leases") == [("new",)]


def test_a_fill_beside_a_live_paying_process_sends_nothing(
    tmp_path, loopback_server, monkeypatch
) -> None:
    """The refusal in process: a lease held by another live process (a sleeping child)
    refuses the fill in one line before any request, and leaves no run behind."""
    import asyncio
    import socket

    from tacorl_offline.fill import run_fill
    from tacorl_offline.warehouse import WarehouseBusy
    from tests.helpers import openai_setup

    monkeypatch.setenv("TACORL_TEST_KEY", SECRET)
    cfg, w = openai_setup(tmp_path, loopback_server, 4)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with w.transaction() as con:
            con.execute(
                "INSERT INTO writer_leases (run_id, phase, pid, host, expires_at)"
                " VALUES ('train-x', 'train', ?, ?, ?)",
                [other.pid, socket.gethostname(), time.time() + 60],
            )
        with pytest.raises(WarehouseBusy) as e:
            asyncio.run(run_fill(cfg, warehouse=w))
        assert f"in use by train run train-x (PID {other.pid}" in str(e.value)
        assert loopback_server.calls == 0
        assert rows(w, "SELECT count(*) FROM runs") == [(0,)]
    finally:
        other.kill()
        other.wait()
    s = asyncio.run(run_fill(cfg, warehouse=w))  # its holder gone, the lease is taken over
    assert s.filled == 4 and rows(w, "SELECT count(*) FROM writer_leases") == [(0,)]
