"""Issue 10: the budget holds for every model, failures are failures, every attempt is a ledger row,
and the journal survives bad lines and a full disk. Real openai client, loopback server, DuckDB."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tacorl_offline.cli import app
from tacorl_offline.errors import UserError
from tacorl_offline.fill import run_fill
from tacorl_offline.warehouse import Warehouse
from tests.conftest import SECRET, openai_config, warehouse_snapshot, write_upstream_json
from tests.helpers import error_lines, openai_setup, rows


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def test_dollar_cap_on_unpriced_model_is_refused_before_any_call(
    tmp_path, loopback_server, monkeypatch
) -> None:
    monkeypatch.setenv("TACORL_TEST_KEY", SECRET)
    cfg, w = openai_setup(tmp_path, loopback_server, 6)
    cfg.teacher.model = "my-vllm-deployment"
    cfg.budget.max_cost_usd = 0.001
    w.flush()
    before = warehouse_snapshot(w.path)
    with pytest.raises(UserError) as e:
        asyncio.run(run_fill(cfg, warehouse=w))
    msg = str(e.value)
    assert "my-vllm-deployment" in msg and "prices" in msg and "--max-calls" in msg
    assert "\n" not in msg
    assert loopback_server.calls == 0
    assert warehouse_snapshot(w.path) == before
    # --max-calls caps it instead; a price makes the dollar cap enforceable.
    cfg.budget.max_cost_usd = None
    cfg.budget.max_calls = 2
    s = asyncio.run(run_fill(cfg, warehouse=w))
    assert s.filled == 2 and loopback_server.calls == 2
    from tacorl_offline.config import Price

    cfg.prices = {"my-vllm-deployment": Price(input=1.0, output=1.0)}
    cfg.budget.max_calls = None
    cfg.budget.max_cost_usd = 1.0
    s = asyncio.run(run_fill(cfg, warehouse=w))
    assert s.filled == 4 and s.spend.cost_usd > 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cap", [1.2e-4, 3.8e-4])
def test_dollar_cap_never_overshoots_with_many_calls_in_flight(
    tmp_path, loopback_server, monkeypatch, cap
) -> None:
    monkeypatch.setenv("TACORL_TEST_KEY", SECRET)
    loopback_server.set(latency_s=0.1)
    cfg, w = openai_setup(tmp_path, loopback_server, 24, concurrency=8)
    cfg.teacher.max_tokens = 20
    # One answer costs about 1.7e-5 here; its worst case (bytes + max_tokens) about 7e-5, so
    # 8 in flight could overshoot either cap (before: by up to 8 calls).
    cfg.budget.max_cost_usd = cap
    s = asyncio.run(run_fill(cfg, warehouse=w))
    spent = rows(w, "SELECT sum(cost_usd) FROM api_calls WHERE run_id = ?", [s.run_id])[0][0]
    assert s.budget_stopped and 0 < s.filled < 24
    assert spent == pytest.approx(s.spend.cost_usd)
    assert spent <= cap, (spent, cap)
    assert loopback_server.calls == s.filled
    # Near the cap, calls wait for those in flight instead of giving up early.
    assert spent > cap - 7e-5 - 1.7e-5, (spent, cap)


def test_auth_error_stops_the_run_at_once_and_names_the_key_variable(
    tmp_path, loopback_server
) -> None:
    loopback_server.set(mode="401")
    data = write_upstream_json(tmp_path / "d.json", 30)
    wh = tmp_path / "w.duckdb"
    cfg = openai_config(tmp_path / "c.yaml", loopback_server, concurrency=2)
    assert invoke("ingest", str(data), "-w", str(wh)).exit_code == 0
    env = {"TACORL_TEST_KEY": SECRET}
    for _ in range(2):  # a rerun stops at once too
        loopback_server.reset()
        r = invoke("teacher-fill", "-c", str(cfg), "-w", str(wh), "--no-progress", env=env)
        assert r.exit_code == 2, r.output
        lines = error_lines(r.stderr)
        assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
        assert "TACORL_TEST_KEY" in lines[0] and "401" in lines[0] and SECRET not in r.output
        assert loopback_server.calls <= 2  # only what was already in flight
    w = Warehouse(wh)
    assert rows(w, "SELECT DISTINCT status FROM api_calls") == [("auth",)]
    assert rows(w, "SELECT count(*) FROM api_calls")[0][0] <= 4
    assert {r[0] for r in rows(w, "SELECT status FROM runs")} == {"failed"}


@pytest.mark.parametrize("mode", ["500", "malformed", "hang"])
def test_fill_with_failures_exits_nonzero_and_says_how_many_and_why(
    tmp_path, loopback_server, mode
) -> None:
    loopback_server.set(mode=mode, hang_s=2.0)
    data = write_upstream_json(tmp_path / "d.json", 4)
    wh = tmp_path / "w.duckdb"
    cfg = openai_config(
        tmp_path / "c.yaml", loopback_server, concurrency=4, extra="  timeout_s: 0.3\n"
    )
    text = cfg.read_text().replace("  max_retries: 1\n", "  max_retries: 0\n")
    text = text.replace("  timeout_s: 2\n", "")
    cfg.write_text(text)
    assert invoke("ingest", str(data), "-w", str(wh)).exit_code == 0
    r = invoke(
        "teacher-fill", "-c", str(cfg), "-w", str(wh), "--no-progress",
        env={"TACORL_TEST_KEY": SECRET},
    )  # fmt: skip
    assert r.exit_code == 5, r.output
    kind = {"500": "http", "malformed": "malformed", "hang": "timeout"}[mode]
    assert f"4 of 4 requests failed ({kind}: 4)" in r.stderr, r.stderr
    status = rows(Warehouse(wh), "SELECT status, message FROM runs")
    assert status[0][0] == "failed" and "4 of 4" in status[0][1]


def test_connection_closed_mid_response_is_a_ledger_row_per_attempt(
    tmp_path, loopback_server, monkeypatch
) -> None:
    monkeypatch.setenv("TACORL_TEST_KEY", SECRET)
    loopback_server.set(mode="close")
    cfg, w = openai_setup(tmp_path, loopback_server, 6, concurrency=2)  # max_retries 1: 2 attempts
    s = asyncio.run(run_fill(cfg, warehouse=w))
    assert s.failures == {"disconnected": 6}
    ledger = rows(w, "SELECT status FROM api_calls WHERE run_id = ?", [s.run_id])
    assert loopback_server.calls == 12
    assert len(ledger) == loopback_server.calls and {r[0] for r in ledger} == {"disconnected"}
    assert rows(w, "SELECT status FROM runs WHERE run_id = ?", [s.run_id]) == [("failed",)]


# ------------------------------------------------------------------------------- journal


def _good_entry(i: int) -> dict:
    return {
        "t": "api_calls",
        "r": {
            "call_id": f"c{i}",
            "run_id": "r",
            "phase": "fill",
            "request_hash": f"h{i}",
            "teacher_key": "k",
            "backend": "openai",
            "model": "m",
            "attempt": 1,
            "status": "ok",
            "input_tokens": 1,
            "output_tokens": 1,
            "cost_usd": 0.0,
            "saved_usd": 0.0,
            "latency_s": 0.1,
        },
    }


def test_bad_journal_lines_are_quarantined_and_good_lines_load(tmp_path, caplog) -> None:
    w = Warehouse(tmp_path / "w.duckdb")
    w.flush()
    bad_insert = _good_entry(99)
    del bad_insert["r"]["request_hash"]  # NOT NULL column: the row fails its insert
    lines = [
        json.dumps(_good_entry(1)).encode(),
        b"\xff\xfe not utf-8",
        b"[1, 2, 3]",
        json.dumps({"t": "responses", "r": "not an object"}).encode(),
        json.dumps(bad_insert).encode(),
        json.dumps(_good_entry(2)).encode(),
        b'{"t": "api_calls", "r": {"call_id"',  # a torn write
    ]
    w.journal_path.write_bytes(b"\n".join(lines))
    with caplog.at_level(logging.WARNING, logger="tacorl_offline"):
        w.flush()  # before: UnicodeDecodeError, then TransactionException on every write
    quarantine = w.journal_path.with_name(w.journal_path.name + ".quarantine")
    assert [r.getMessage() for r in caplog.records if str(quarantine) in r.getMessage()]
    assert len(quarantine.read_bytes().splitlines()) == 5
    assert b"\xff\xfe not utf-8" in quarantine.read_bytes()
    assert rows(w, "SELECT call_id FROM api_calls ORDER BY 1") == [("c1",), ("c2",)]
    assert w.journal_path.stat().st_size == 0
    w.flush()  # and the warehouse keeps working
    assert len(quarantine.read_bytes().splitlines()) == 5


def test_disk_full_on_append_is_one_line_and_no_paid_answer_is_lost(
    tmp_path, loopback_server, monkeypatch
) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    monkeypatch.setenv("TACORL_TEST_KEY", SECRET)
    cfg, w = openai_setup(tmp_path, loopback_server, 10, concurrency=2)
    w.flush()
    w.journal_path.unlink(missing_ok=True)
    w.journal_path.symlink_to("/dev/full")  # every append: ENOSPC
    with pytest.raises(UserError) as e:
        asyncio.run(run_fill(cfg, warehouse=w))
    msg = str(e.value)
    assert "No space left on device" in msg and "\n" not in msg
    # The write-ahead row of the first request could not be journaled: nothing was sent.
    assert loopback_server.calls == 0
    assert rows(w, "SELECT count(*) FROM responses WHERE kind = 'original'")[0][0] == 0
    w.journal_path.unlink()
    s = asyncio.run(run_fill(cfg, warehouse=w))
    assert s.filled == 10 and loopback_server.calls == 10


def test_a_response_billed_over_its_reservation_stops_the_run_before_the_next_call(
    tmp_path, loopback_server, monkeypatch
) -> None:
    """Issue 18 item 5: a server that ignores max_tokens (200k output tokens billed) cannot
    run a dollar cap over: the run stops after that answer, in one line naming the model and
    the overrun, and the ledger row says so."""
    monkeypatch.setenv("TACORL_TEST_KEY", SECRET)
    cfg, w = openai_setup(tmp_path, loopback_server, 8, concurrency=1)
    cfg.teacher.max_tokens = 16
    cfg.budget.max_cost_usd = 0.01
    loopback_server.responder = lambda messages: " ".join(["word"] * 200_000)
    with pytest.raises(UserError) as e:
        asyncio.run(run_fill(cfg, warehouse=w))
    msg = str(e.value)
    assert "\n" not in msg
    assert "model gpt-4o-mini billed $0.12" in msg and "over its reservation" in msg, msg
    assert "200000 output tokens against max_tokens 16" in msg
    assert loopback_server.calls == 1  # stopped before the next call
    ((status, cost, reserved, error),) = rows(
        w, "SELECT status, cost_usd, reserved_usd, error FROM api_calls WHERE status <> 'hit'"
    )
    assert status == "ok" and cost > reserved > 0
    assert error.startswith("billed over its reservation: model gpt-4o-mini")
    assert rows(w, "SELECT count(*) FROM responses WHERE ok") == [(1,)]  # paid: kept
    (run_status,) = rows(w, "SELECT status FROM runs")[0]
    assert run_status == "failed"
