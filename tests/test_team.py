"""The team warehouse: machines as separate processes (own working directory, own local
warehouse and journal) against one real PostgreSQL the test starts, and the real ``openai``
client against the loopback teacher. Marked ``team`` (``make test-team``; CI runs them)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from click.testing import Result
from typer.testing import CliRunner

from tacorl_offline.cli import app
from tacorl_offline.config import resolve
from tacorl_offline.warehouse import Warehouse
from tests.conftest import SECRET, write_upstream_json
from tests.helpers import ingest_file
from tests.loopback import LoopbackServer
from tests.pg_server import PASSWORD, PgServer

pytestmark = pytest.mark.team
runner = CliRunner()

ROOT = Path(__file__).resolve().parents[1]


class Machine:
    """One machine: a working directory with its config, data and local warehouse."""

    def __init__(
        self,
        root: Path,
        name: str,
        pg: PgServer,
        server: LoopbackServer,
        n: int,
        concurrency: int = 4,
    ) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir()
        self.local = self.dir / "wh.duckdb"
        self.url = f"{pg.url}?local={self.local}"
        self.data = write_upstream_json(self.dir / "d.json", n)
        self.cfg = self.dir / "c.yaml"
        self.cfg.write_text(
            f"""
warehouse: {self.url}
teacher:
  backend: openai
  model: gpt-4o-mini
  base_url: {server.base_url}
  api_key_env: TACORL_TEST_KEY
  concurrency: {concurrency}
  timeout_s: 10
  max_retries: 1
""",
            encoding="utf-8",
        )
        self.env = {
            **os.environ,
            "TACORL_TEST_KEY": SECRET,
            "PYTHONPATH": str(ROOT),
            "TACORL_MACHINE": name,
        }

    @contextlib.contextmanager
    def here(self) -> Iterator[None]:
        """Act as this machine in the test process (its name and working directory)."""
        old_cwd, old_env = os.getcwd(), dict(os.environ)
        os.environ.update({"TACORL_MACHINE": self.name, "TACORL_TEST_KEY": SECRET})
        os.chdir(self.dir)
        try:
            yield
        finally:
            os.chdir(old_cwd)
            os.environ.clear()
            os.environ.update(old_env)

    def cli(self, *args: str) -> Result:
        """A command run in this process as this machine (no interpreter start-up)."""
        with self.here():
            r = runner.invoke(app, list(args))
        assert r.exit_code == 0, r.output
        return r

    def ingest(self) -> None:
        with self.here():
            ingest_file(resolve(self.cfg), self.data)

    def sync(self) -> None:
        """A write open: push this machine's rows, pull the others'."""
        with self.here():
            Warehouse(resolve(self.cfg).warehouse).flush()

    def fill(self) -> subprocess.Popen[str]:
        """teacher-fill in its own process."""
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tacorl_offline.cli",
                "teacher-fill",
                "-c",
                str(self.cfg),
                "--no-progress",
            ],
            cwd=self.dir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def q(self, sql: str) -> list[tuple]:
        con = duckdb.connect(str(self.local), read_only=True)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()


def _wait(p: subprocess.Popen[str]) -> str:
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    return out


def _pg_rows(pg: PgServer, table: str) -> int:
    import psycopg

    with psycopg.connect(pg.url) as c:
        return int(
            c.execute("SELECT count(*) FROM tacorl_rows WHERE tbl = %s", [table]).fetchone()[0]
        )


def _ledger_by_machine(pg: PgServer) -> dict[str, float]:
    """Dollars in each machine's own pushed ledger rows."""
    import psycopg

    with psycopg.connect(pg.url) as c:
        rows = c.execute(
            "SELECT split_part(machine, ':', 1), sum((row->>'cost_usd')::float8)"
            " FROM tacorl_rows WHERE tbl = 'api_calls' GROUP BY 1"
        ).fetchall()
    return {m: float(v) for m, v in rows}


def test_two_machines_at_once_pay_each_request_once(tmp_path, pg, loopback_server) -> None:
    """Same 24 prompts, two machines filling at the same moment: 24 paid calls, no duplicate;
    each machine ends with all 24 answers, and its report sees every machine's ledger."""
    loopback_server.set(latency_s=0.2)
    a = Machine(tmp_path, "a", pg, loopback_server, 24)
    b = Machine(tmp_path, "b", pg, loopback_server, 24)
    a.ingest()
    b.ingest()
    pa, pb = a.fill(), b.fill()
    _wait(pa), _wait(pb)
    assert loopback_server.calls == 24  # never paid twice
    for m in (a, b):
        m.sync()
    for m in (a, b):
        ((answers,),) = m.q("SELECT count(*) FROM responses WHERE kind = 'original'")
        assert answers == 24
        paid = m.q(
            "SELECT count(*), count(DISTINCT request_hash) FROM api_calls WHERE status = 'ok'"
        )
        assert paid == [(24, 24)]
    # Both replicas hold the same ledger: every machine's rows, each once.
    ledger = "SELECT call_id, cost_usd FROM api_calls ORDER BY call_id"
    assert a.q(ledger) == b.q(ledger)
    total = sum(c for _, c in a.q(ledger))
    per_machine = _ledger_by_machine(pg)
    assert set(per_machine) == {"a", "b"} and total > 0
    assert total == pytest.approx(per_machine["a"] + per_machine["b"])
    r = b.cli("report", "cost", "-w", b.url)
    assert "duplicate paid calls (a request answered twice): 0" in r.output, r.output
    r = b.cli("sql", "SELECT count(DISTINCT run_id) AS n FROM api_calls", "-f", "csv", "-w", b.url)
    assert r.output.split() == ["n", "2"], r.output


def test_an_answer_paid_by_one_machine_is_replayed_by_the_other(
    tmp_path, pg, loopback_server
) -> None:
    a = Machine(tmp_path, "a", pg, loopback_server, 10)
    a.ingest()
    _wait(a.fill())
    assert loopback_server.calls == 10
    b = Machine(tmp_path, "b", pg, loopback_server, 12)  # the same 10 prompts and 2 more
    b.ingest()
    out = _wait(b.fill())
    assert loopback_server.calls == 12, out  # b paid only for its 2 new prompts
    hits = b.q(
        "SELECT count(*) FROM api_calls WHERE status = 'hit' AND run_id ="
        " (SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1)"
    )
    assert hits == [(10,)]


def test_a_duplicate_that_does_happen_is_counted_in_report_cost(
    tmp_path, pg, loopback_server
) -> None:
    """PostgreSQL away: both machines pay for the same requests on their own; once it is
    back, every paid call is in both ledgers and report cost names the duplicates."""
    a = Machine(tmp_path, "a", pg, loopback_server, 5)
    b = Machine(tmp_path, "b", pg, loopback_server, 5)
    a.ingest()
    b.ingest()
    pg.stop("immediate")
    pg.wait_stopped()
    for m in (a, b):
        out = _wait(m.fill())
        assert "unreachable" in out and PASSWORD not in out
    assert loopback_server.calls == 10
    pg.start()
    for m in (a, b, a):
        m.sync()
    r = a.cli("report", "cost", "-w", a.url)
    assert "duplicate paid calls (a request answered twice): 5" in r.output, r.output
    assert a.q("SELECT count(*) FROM api_calls WHERE status = 'ok'") == [(10,)]


def test_sigkill_loses_only_calls_in_flight_and_the_journal_is_pushed_on_restart(
    tmp_path, pg, loopback_server
) -> None:
    loopback_server.set(latency_s=0.3)
    a = Machine(tmp_path, "a", pg, loopback_server, 30, concurrency=3)
    a.ingest()
    p = a.fill()
    deadline = time.monotonic() + 60
    while loopback_server.calls < 9 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    answered_before_kill = loopback_server.calls
    # Its journal and file hold what it had paid for; the restart pushes all of it.
    a.sync()
    pushed = _pg_rows(pg, "responses")
    assert pushed >= answered_before_kill - 3  # at most the calls in flight (concurrency 3)
    b = Machine(tmp_path, "b", pg, loopback_server, 30)
    b.ingest()
    _wait(b.fill())
    # Every answer a received is reused: the 30 prompts cost at most 30 + the 3 in flight.
    assert loopback_server.calls <= 30 + 3
    assert _pg_rows(pg, "responses") == 30


def test_postgresql_going_away_mid_run_loses_nothing(tmp_path, pg, loopback_server) -> None:
    loopback_server.set(latency_s=0.2)
    a = Machine(tmp_path, "a", pg, loopback_server, 24, concurrency=2)
    a.ingest()
    p = a.fill()
    deadline = time.monotonic() + 60
    while loopback_server.calls < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    pg.stop("immediate")
    out = _wait(p)  # the run goes on with its local warehouse
    assert "unreachable" in out and PASSWORD not in out, out
    assert a.q("SELECT count(*) FROM responses WHERE kind = 'original'") == [(24,)]
    assert loopback_server.calls == 24
    pg.start()
    a.sync()  # synced later
    assert _pg_rows(pg, "responses") == 24
    b = Machine(tmp_path, "b", pg, loopback_server, 24)
    b.ingest()
    _wait(b.fill())
    assert loopback_server.calls == 24  # nothing paid is lost: b pays nothing


def test_the_catalog_password_is_never_stored_or_printed(tmp_path, pg, loopback_server) -> None:
    a = Machine(tmp_path, "a", pg, loopback_server, 4)
    a.ingest()
    out = _wait(a.fill())
    r = a.cli("config", "-c", str(a.cfg))
    assert PASSWORD not in r.output + out and "***@127.0.0.1" in r.output
    a.sync()
    dump = json.dumps(a.q("SELECT * FROM runs"), default=str)
    assert PASSWORD not in dump and "***" in dump
    import psycopg

    with psycopg.connect(pg.url) as c:
        rows = c.execute("SELECT row::text FROM tacorl_rows").fetchall()
    assert rows and not any(PASSWORD in r[0] for r in rows)
    export = tmp_path / "export"
    with a.here():
        r = runner.invoke(app, ["warehouse", "export", str(export), "-w", a.url])
    assert r.exit_code == 0, r.output
    for f in export.rglob("*.parquet"):
        assert PASSWORD.encode() not in f.read_bytes()
    # Unreachable: one line, no password.
    pg.stop("immediate")
    pg.wait_stopped()
    p = a.fill()
    out, _ = p.communicate(timeout=300)
    assert PASSWORD not in out
