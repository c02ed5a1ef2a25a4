"""teacher-fill through the Batch API (teacher.backend: openai_batch): the real openai SDK
against the loopback server's files and batches endpoints, a real DuckDB warehouse."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tacorl_offline.cli import app
from tacorl_offline.config import resolve
from tacorl_offline.fill import run_fill
from tacorl_offline.pricing import PriceTable
from tacorl_offline.teachers.openai_batch import OpenAIBatchTeacher
from tests.conftest import SECRET, write_upstream_json
from tests.helpers import ingest_file, rows
from tests.loopback import LoopbackServer, answer_for


def _config(path: Path, server: LoopbackServer, extra: str = "") -> Path:
    path.write_text(
        f"""
teacher:
  backend: openai_batch
  model: gpt-4o-mini
  base_url: {server.base_url}
  api_key_env: TACORL_TEST_KEY
  timeout_s: 5
  max_retries: 0
  max_tokens: 200
  batch_poll_s: 0.05
  batch_wait_s: 5
{extra}
""",
        encoding="utf-8",
    )
    return path


def _setup(tmp_path: Path, server: LoopbackServer, n: int = 12, extra: str = "", with_output=2):
    data = write_upstream_json(tmp_path / "d.json", n, with_output=with_output)
    cfg = resolve(
        _config(tmp_path / "c.yaml", server, extra),
        environ={},
        overrides={"warehouse": str(tmp_path / "wh.duckdb")},
    )
    return cfg, ingest_file(cfg, data)


def test_batch_fill_journals_answers_at_the_batch_price_and_rerun_pays_nothing(
    tmp_path, loopback_server, monkeypatch
) -> None:
    monkeypatch.setenv("TACORL_TEST_KEY", SECRET)
    cfg, w = _setup(tmp_path, loopback_server)
    s = asyncio.run(run_fill(cfg, warehouse=w))
    assert (s.prompts, s.imported, s.todo, s.filled) == (12, 2, 10, 10)
    assert (loopback_server.files_uploaded, loopback_server.batches_created) == (1, 1)
    assert loopback_server.batch_lines == 10 and loopback_server.calls == 0  # nothing online
    assert s.batches_submitted and not s.batches_pending and not s.budget_stopped
    got = rows(
        w,
        "SELECT count(*), sum(input_tokens), sum(output_tokens), sum(cost_usd) FROM responses"
        " WHERE source = 'batch' AND ok AND run_id = ?",
        [s.run_id],
    )[0]
    assert got[0] == 10
    online = PriceTable().cost("openai", "gpt-4o-mini", got[1], got[2])
    assert got[3] == pytest.approx(online * 0.5)  # the batch discount, in responses...
    ledger = rows(
        w,
        "SELECT count(*), sum(cost_usd), min(backend) FROM api_calls WHERE run_id = ? AND status = 'ok'",
        [s.run_id],
    )[0]
    assert ledger[0] == 10 and ledger[1] == pytest.approx(online * 0.5)  # ...and in the ledger
    assert ledger[2] == "openai_batch" and s.spend.cost_usd == pytest.approx(online * 0.5)
    batch = rows(w, "SELECT batch_id, status, n_requests, collected_at FROM batches")
    assert len(batch) == 1 and batch[0][0] == s.batches_submitted[0]
    assert batch[0][1:3] == ("collected", 10) and batch[0][3] is not None
    # The answers are the ones the server gave for exactly what the online teacher sends.
    answers = rows(w, "SELECT answer, messages FROM responses WHERE source = 'batch'")
    assert all(a == answer_for(json.loads(m)) for a, m in answers)

    loopback_server.reset()
    s2 = asyncio.run(run_fill(cfg, warehouse=w))
    assert (loopback_server.files_uploaded, loopback_server.batches_created) == (0, 0)
    assert (s2.filled, s2.already, s2.spend.cost_usd) == (0, 10, 0.0)


def test_restarted_fill_collects_the_stored_batch_instead_of_paying_again(
    tmp_path, loopback_server, monkeypatch
) -> None:
    monkeypatch.setenv("TACORL_TEST_KEY", SECRET)
    cfg, w = _setup(tmp_path, loopback_server, extra="")
    cfg.teacher.batch_wait_s = 0.2
    loopback_server.set(batch_latency_s=60)  # still running when the fill stops waiting
    s = asyncio.run(run_fill(cfg, warehouse=w))
    assert s.batches_pending == s.batches_submitted and len(s.batches_pending) == 1
    assert s.filled == 0
    stored = rows(w, "SELECT batch_id, status FROM batches")
    assert stored == [(s.batches_pending[0], "in_progress")]
    assert rows(w, "SELECT status FROM runs WHERE run_id = ?", [s.run_id]) == [("batch_pending",)]
    assert rows(w, "SELECT count(*) FROM responses WHERE source = 'batch'") == [(0,)]

    loopback_server.set(batch_latency_s=0)  # the batch is done by the time the user reruns
    s2 = asyncio.run(run_fill(cfg, warehouse=w))
    assert (loopback_server.files_uploaded, loopback_server.batches_created) == (1, 1)
    assert s2.filled == 10 and not s2.batches_pending and not s2.batches_submitted
    assert any(s.batches_pending[0] in n for n in s2.notes)
    assert rows(w, "SELECT count(*) FROM responses WHERE source = 'batch' AND ok") == [(10,)]
    assert rows(w, "SELECT status FROM batches") == [("collected",)]


def test_fill_killed_inside_the_create_call_finds_its_batch_by_input_file(
    tmp_path, loopback_server, monkeypatch
) -> None:
    monkeypatch.setenv("TACORL_TEST_KEY", SECRET)
    cfg, w = _setup(tmp_path, loopback_server)
    real_create = OpenAIBatchTeacher.create

    async def create_then_die(self, input_file_id, metadata):
        await real_create(self, input_file_id, metadata)  # the API accepted and will bill it
        raise KeyboardInterrupt  # ...but the process died before storing the id

    monkeypatch.setattr(OpenAIBatchTeacher, "create", create_then_die)
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(run_fill(cfg, warehouse=w))
    assert rows(w, "SELECT batch_id, status FROM batches") == [(None, "submitting")]
    monkeypatch.setattr(OpenAIBatchTeacher, "create", real_create)
    s = asyncio.run(run_fill(cfg, warehouse=w))
    assert loopback_server.batches_created == 1 and loopback_server.files_uploaded == 1
    assert s.filled == 10
    assert rows(w, "SELECT status FROM batches WHERE batch_id IS NOT NULL") == [("collected",)]


def test_failed_lines_are_resubmitted_and_permanent_ones_are_not(
    tmp_path, loopback_server, monkeypatch
) -> None:
    monkeypatch.setenv("TACORL_TEST_KEY", SECRET)
    cfg, w = _setup(tmp_path, loopback_server)
    loopback_server.script("500", "empty")  # first line: error file; second: empty content
    s = asyncio.run(run_fill(cfg, warehouse=w))
    assert (s.filled, s.permanent_failures, s.transient_failures) == (8, 1, 1)
    assert rows(w, "SELECT count(*) FROM responses WHERE source = 'batch' AND NOT ok") == [(1,)]
    loopback_server.reset()
    s2 = asyncio.run(run_fill(cfg, warehouse=w))
    assert loopback_server.batches_created == 1 and loopback_server.batch_lines == 1
    assert s2.filled == 1


def test_expired_batch_is_reported_and_its_requests_go_into_the_next_fill(
    tmp_path, loopback_server, monkeypatch
) -> None:
    monkeypatch.setenv("TACORL_TEST_KEY", SECRET)
    cfg, w = _setup(tmp_path, loopback_server)
    loopback_server.set(batch_final="expired")
    s = asyncio.run(run_fill(cfg, warehouse=w))
    assert s.filled == 0 and s.transient_failures == 10
    assert any("expired" in n for n in s.notes)
    loopback_server.set(batch_final="completed")
    s2 = asyncio.run(run_fill(cfg, warehouse=w))
    assert s2.filled == 10 and loopback_server.batches_created == 2


def test_budget_admits_requests_at_their_worst_case(tmp_path, loopback_server, monkeypatch) -> None:
    monkeypatch.setenv("TACORL_TEST_KEY", SECRET)
    cfg, w = _setup(tmp_path, loopback_server)
    cfg.budget.max_calls = 4
    s = asyncio.run(run_fill(cfg, warehouse=w))
    assert s.budget_stopped and s.filled == 4 and loopback_server.batch_lines == 4
    # 200 output tokens at $0.30/1M (batch) is $0.00006 per request at worst, plus its input.
    cfg.budget.max_calls = None
    cfg.budget.max_cost_usd = 0.00025
    s2 = asyncio.run(run_fill(cfg, warehouse=w))
    assert s2.budget_stopped and 1 <= s2.filled < 6
    assert s2.spend.cost_usd <= 0.00025


def test_cli_exits_4_while_a_batch_runs(tmp_path, loopback_server) -> None:
    data = write_upstream_json(tmp_path / "d.json", 3)
    wh = str(tmp_path / "w.duckdb")
    cfg = _config(tmp_path / "c.yaml", loopback_server)
    runner = CliRunner()
    env = {"TACORL_TEST_KEY": SECRET, "TACORL_TEACHER__BATCH_WAIT_S": "0"}
    r = runner.invoke(app, ["ingest", str(data), "-w", wh, "-c", str(cfg)], env=env)
    assert r.exit_code == 0, r.output
    loopback_server.set(batch_latency_s=60)
    r = runner.invoke(app, ["teacher-fill", "-w", wh, "-c", str(cfg), "--no-progress"], env=env)
    assert r.exit_code == 4, r.output
    assert "rerun teacher-fill to collect" in r.output
    assert SECRET not in r.output
