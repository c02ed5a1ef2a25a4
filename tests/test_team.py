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
        *,
        extra: str = "",
        data: Path | None = None,
        local: Path | None = None,
        machine: str | None = None,
    ) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir()
        self.local = local or self.dir / "wh.duckdb"
        self.url = f"{pg.url}?local={self.local}"
        self.data = data or write_upstream_json(self.dir / "d.json", n)
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
{extra}
""",
            encoding="utf-8",
        )
        self.machine = machine or name
        self.env = {
            **os.environ,
            "TACORL_TEST_KEY": SECRET,
            "PYTHONPATH": str(ROOT),
            "TACORL_MACHINE": self.machine,
        }

    @contextlib.contextmanager
    def here(self) -> Iterator[None]:
        """Act as this machine in the test process (its name and working directory)."""
        old_cwd, old_env = os.getcwd(), dict(os.environ)
        os.environ.update({"TACORL_MACHINE": self.machine, "TACORL_TEST_KEY": SECRET})
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
        return self.spawn("teacher-fill")

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        """A command (with this machine's config) in its own process."""
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tacorl_offline.cli",
                *args,
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


def _pg_run_status(pg: PgServer) -> dict[str, str]:
    import psycopg

    with psycopg.connect(pg.url) as c:
        rows = c.execute(
            "SELECT row->>'run_id', row->>'status' FROM tacorl_rows WHERE tbl = 'runs'"
        ).fetchall()
    return dict(rows)


def _ledger_by_machine(pg: PgServer) -> dict[str, float]:
    """Dollars in each machine's own pushed ledger rows."""
    import psycopg

    with psycopg.connect(pg.url) as c:
        rows = c.execute(
            "SELECT split_part(split_part(machine, ':', 1), '@', 1), sum((row->>'cost_usd')::float8)"
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
    # Every run row as its own machine last wrote it: both fills finished, on both replicas
    # and in PostgreSQL (no replica pushes back a stale copy of another machine's run).
    runs = "SELECT run_id, status FROM runs ORDER BY run_id"
    assert a.q(runs) == b.q(runs) and [s for _, s in a.q(runs)] == ["finished"] * 2
    assert _pg_run_status(pg) == dict(a.q(runs))
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


def _train_extra(model: Path, out: Path) -> str:
    """Config lines for a short training run of the tiny model (as tests/helpers.make_cfg)."""
    return f"""compressor:
  model: {model}
train:
  batch_size: 4
  samples_per_prompt: 2
  baseline: rloo
  lr: 0.001
  max_steps: 2
  checkpoint_every: 2
  output_dir: {out}
  tolerance_tokens: 8
  seed: 3
  reward:
    metric: rougeL
"""


def test_train_replays_answers_another_machine_paid_for_and_pays_nothing_again(
    tmp_path, pg, loopback_server, tiny_bert
) -> None:
    """Machine a fills and trains; machine b (its own directory and local file, nothing
    filled there) trains the same seed: every answer comes from a's purchases, b pays nothing,
    scores the same rewards, and one ledger holds both."""
    from tests.helpers import write_data

    data = write_data(tmp_path / "d.json")
    a = Machine(tmp_path, "a", pg, loopback_server, 0,
                extra=_train_extra(tiny_bert, tmp_path / "a" / "runs"), data=data)  # fmt: skip
    b = Machine(tmp_path, "b", pg, loopback_server, 0,
                extra=_train_extra(tiny_bert, tmp_path / "b" / "runs"), data=data)  # fmt: skip
    a.ingest()
    b.ingest()
    _wait(a.fill())
    _wait(a.spawn("train"))  # a process of its own
    paid_by_a = loopback_server.calls
    ((a_ok,),) = a.q("SELECT count(*) FROM api_calls WHERE status = 'ok'")
    assert paid_by_a == a_ok > 12  # 12 originals and the compressed prompts of 2 steps
    b.cli("train", "-c", str(b.cfg), "--no-progress")
    assert loopback_server.calls == paid_by_a  # b paid nothing
    b.sync()
    a.sync()
    runs = b.q("SELECT run_id FROM runs WHERE kind = 'train' ORDER BY started_at")
    assert len(runs) == 2, runs
    ra, rb = runs[0][0], runs[1][0]
    sample = (
        "SELECT step, prompt_id, sample_idx, request_hash, reward FROM samples"
        " WHERE run_id = '{}' ORDER BY ALL"
    )
    assert b.q(sample.format(ra)) == b.q(sample.format(rb)) != []  # same seed, same rewards
    assert b.q(f"SELECT count(*) FROM api_calls WHERE run_id = '{rb}' AND status = 'ok'") == [(0,)]
    ((hits,),) = b.q(f"SELECT count(*) FROM api_calls WHERE run_id = '{rb}' AND status = 'hit'")
    assert hits > 0
    # One ledger: a's replica holds b's run too, and the paid total is a's alone.
    ledger = (
        "SELECT run_id, status, count(*), round(sum(cost_usd), 12) FROM api_calls"
        " GROUP BY ALL ORDER BY ALL"
    )
    assert a.q(ledger) == b.q(ledger)
    ((total,),) = b.q("SELECT sum(cost_usd) FROM api_calls")
    assert total == pytest.approx(sum(_ledger_by_machine(pg).values()))
    assert _ledger_by_machine(pg)["b"] == 0.0


def test_evaluate_sees_every_machines_answers_and_rows(
    tmp_path, pg, loopback_server, tiny_bert
) -> None:
    """b evaluates on answers a paid for (the originals), a evaluates after it and pays
    nothing (b's compressed answers); each replica holds both evaluations."""
    import yaml

    from tests.test_evaluate import write_config, write_qa

    base = yaml.safe_load(write_config(tmp_path, loopback_server, tiny_bert).read_text())
    teacher = base["teacher"]["template"]
    data = write_qa(tmp_path / "qa.jsonl", n=4)
    a, b = (Machine(tmp_path, n, pg, loopback_server, 0, data=data) for n in ("a", "b"))
    for m in (a, b):
        # The teacher block and the eval settings in one YAML document.
        cfg = yaml.safe_load(m.cfg.read_text())
        cfg.update({k: base[k] for k in ("data", "compressor", "train", "eval")})
        cfg["teacher"]["template"] = teacher
        m.cfg.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        m.ingest()
    _wait(a.fill())
    originals = loopback_server.calls
    assert originals == 4
    out_b = tmp_path / "b.json"
    b.cli("evaluate", "-c", str(b.cfg), "-m", str(tiny_bert), "--format", "json",
          "--output", str(out_b), "--no-progress")  # fmt: skip
    paid_by_b = loopback_server.calls - originals
    assert paid_by_b > 0
    doc_b = json.loads(out_b.read_text(encoding="utf-8"))
    orig = next(s for s in doc_b["systems"] if s["system"] == "original")
    assert (orig["calls"], orig["hits"]) == (0, 4)  # a's originals, replayed on b
    out_a = tmp_path / "a.json"
    p = a.spawn("evaluate", "-m", str(tiny_bert), "--format", "json", "--output", str(out_a))
    _wait(p)
    assert loopback_server.calls == originals + paid_by_b  # a paid nothing again
    doc_a = json.loads(out_a.read_text(encoding="utf-8"))
    assert all(s["calls"] == 0 for s in doc_a["systems"])
    key = ("system", "metric", "mean")
    assert sorted(tuple(r[k] for k in key) for r in doc_a["rows"]) == sorted(
        tuple(r[k] for k in key) for r in doc_b["rows"]
    )
    for m in (a, b):
        m.sync()
    for m in (a, b):
        # 4 prompts: the model, lead, original, stopword and 3 random draws, for each run
        assert m.q("SELECT count(DISTINCT run_id), count(*) FROM evaluations") == [(2, 2 * 28)]
        assert m.q("SELECT status, count(*) FROM runs GROUP BY 1") == [("finished", 3)]


def test_two_processes_on_one_local_file_one_pays_the_other_is_refused_in_one_line(
    tmp_path, pg, loopback_server
) -> None:
    """One machine, one local file, the shared store: the local writer lease lets one
    process pay and refuses the other in one line; a third process of the same machine on
    its own local file cooperates through the claims."""
    loopback_server.set(latency_s=1.0)  # long enough for all three to start while it runs
    a = Machine(tmp_path, "a", pg, loopback_server, 40, concurrency=1, machine="m")
    a2 = Machine(tmp_path, "a2", pg, loopback_server, 40, concurrency=1, machine="m",
                 local=a.local, data=a.data)  # fmt: skip
    c = Machine(tmp_path, "c", pg, loopback_server, 40, concurrency=1, machine="m")
    a.ingest()
    c.ingest()
    procs = [m.fill() for m in (a, a2, c)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert codes[2] == 0, outs[2]
    assert sorted(codes[:2]) == [0, 2], outs  # one of the two on the same file was refused
    refused = outs[codes.index(2)]
    lines = [ln for ln in refused.splitlines() if ln.strip() and not ln.startswith("using dataset")]
    assert len(lines) == 1 and "is in use by fill run" in lines[0], refused
    assert not any(PASSWORD in o for o in outs)
    assert loopback_server.calls == 40  # the payer on a's file and c shared the work
    a.sync(), c.sync(), a.sync()
    for m in (a, c):
        assert m.q("SELECT count(*), count(DISTINCT request_hash) FROM api_calls"
                   " WHERE status = 'ok'") == [(40, 40)]  # fmt: skip
    assert a.q("SELECT count(*) FROM runs WHERE status = 'finished'") == [(2,)]


def test_torchrun_over_two_nodes_keeps_rank_0_the_only_teacher_caller(
    tmp_path, pg, loopback_server, tiny_bert
) -> None:
    """The README's multi-node launch, two torchrun agents on this host as two nodes (one
    process each, static rendezvous): global rank 0 is on node 0, opens node 0's local file
    and the shared store, and is the only caller; node 1 has no warehouse at all; a second
    machine then replays the run's answers from the shared store."""
    from tests.helpers import write_data
    from tests.pg_server import _free_port

    data = write_data(tmp_path / "d.json")
    n0 = Machine(tmp_path, "node0", pg, loopback_server, 0,
                 extra=_train_extra(tiny_bert, tmp_path / "node0" / "runs"), data=data)  # fmt: skip
    n1 = Machine(tmp_path, "node1", pg, loopback_server, 0,
                 extra=_train_extra(tiny_bert, tmp_path / "node1" / "runs"), data=data)  # fmt: skip
    n0.ingest()
    _wait(n0.fill())
    filled = loopback_server.calls
    port = _free_port()
    procs = []
    for rank, m in enumerate((n0, n1)):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
               "--nproc_per_node", "1", "--node_rank", str(rank), "--master_addr", "127.0.0.1",
               "--master_port", str(port), "-m", "tacorl_offline.cli", "train",
               "-c", str(m.cfg), "-w", m.url, "--no-progress"]  # fmt: skip
        env = {**m.env, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        out = subprocess.PIPE
        procs.append(subprocess.Popen(cmd, cwd=m.dir, env=env, text=True, stdout=out, stderr=out))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (o, e) in zip(procs, outs, strict=True):
        assert p.returncode == 0, o[-3000:] + e[-3000:]
    assert "world size 2" in outs[0][1], outs[0][1]
    assert not n1.local.exists()  # rank 1 never opened a warehouse
    ((run_id, world),) = n0.q("SELECT run_id, world_size FROM runs WHERE kind = 'train'")
    assert world == 2
    ((paid,),) = n0.q(
        "SELECT count(DISTINCT request_hash) FROM samples"
        f" WHERE run_id = '{run_id}' AND NOT short_circuit"
    )
    assert loopback_server.calls - filled == paid > 0  # every call from rank 0, once each
    assert not any(PASSWORD in o + e for o, e in outs)
    assert "-w 'postgresql://tacorl@127.0.0.1" in outs[0][0], outs[0][0]  # next steps
    # The run's rows reached the shared store: another machine replays them.
    assert _pg_run_status(pg)[run_id] == "finished"
    assert _pg_rows(pg, "responses") == n0.q("SELECT count(*) FROM responses")[0][0]
