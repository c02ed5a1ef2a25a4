"""teacher-fill against the real openai client and a loopback server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json

import pytest

from tacorl_offline.config import resolve
from tacorl_offline.fill import run_fill
from tacorl_offline.ingest import read_records
from tacorl_offline.ingest_store import store_records
from tacorl_offline.warehouse import Warehouse
from tests.conftest import SECRET, warehouse_snapshot, write_upstream_json
from tests.helpers import openai_setup, rows
from tests.loopback import LoopbackServer


def test_fill_all_then_rerun_pays_nothing(tmp_path, loopback_server, monkeypatch) -> None:
    monkeypatch.setenv("TACORL_TEST_KEY", SECRET)
    loopback_server.set(latency_s=0.15)
    cfg, w = openai_setup(tmp_path, loopback_server, 40, concurrency=8, with_output=5)
    s = asyncio.run(run_fill(cfg, warehouse=w))
    assert (s.prompts, s.imported, s.filled, s.todo) == (40, 5, 35, 35)
    assert loopback_server.calls == 35
    assert loopback_server.max_in_flight == 8  # K calls really were in flight at once
    assert s.spend.cost_usd > 0  # gpt-4o-mini has a default price
    answered = rows(
        w,
        "SELECT count(DISTINCT prompt_id) FROM responses WHERE kind='original' AND ok",
    )[0][0]
    assert answered == 40
    # Exactly one stored answer per prompt under the teacher key (plus the imports).
    dup = rows(
        w, "SELECT prompt_id, count(*) c FROM responses WHERE source='api' GROUP BY 1 HAVING c > 1"
    )
    assert dup == []

    loopback_server.reset()
    s2 = asyncio.run(run_fill(cfg, warehouse=w))
    assert loopback_server.calls == 0
    assert (s2.filled, s2.already, s2.spend.cost_usd) == (0, 35, 0.0)
    assert s2.spend.saved_usd == pytest.approx(s.spend.cost_usd)
    hits = rows(
        w,
        "SELECT count(*), sum(saved_usd), sum(cost_usd) FROM api_calls WHERE run_id = ? AND status='hit'",
        [s2.run_id],
    )
    assert hits[0][0] == 35 and hits[0][1] == pytest.approx(s.spend.cost_usd) and hits[0][2] == 0


def test_failure_modes_land_in_ledger_and_no_answer_is_lost(
    tmp_path, loopback_server, monkeypatch
) -> None:
    monkeypatch.setenv("TACORL_TEST_KEY", SECRET)
    loopback_server.set(retry_after=0.05, hang_s=3.0)
    # max_retries=1: each request gets at most 2 attempts.
    cfg, w = openai_setup(tmp_path, loopback_server, 12, concurrency=1)
    cfg.teacher.timeout_s = 0.5
    loopback_server.script(
        "429", "500", "500", "malformed", "empty", "content_filter", "hang", "hang"
    )
    s = asyncio.run(run_fill(cfg, warehouse=w))
    statuses = [r[0] for r in rows(w, "SELECT status FROM api_calls WHERE run_id = ?", [s.run_id])]
    for expected in ("http_429", "http_500", "empty", "content_filter", "timeout", "ok"):
        assert expected in statuses, (expected, statuses)
    perm = rows(w, "SELECT error_kind FROM responses WHERE NOT ok ORDER BY 1")
    assert perm == [("content_filter",), ("empty",)]
    # Every request whose final attempt succeeded has its answer stored.
    lost = rows(
        w,
        "SELECT request_hash FROM api_calls WHERE status = 'ok' AND request_hash NOT IN (SELECT request_hash FROM responses)",
    )
    assert lost == []
    assert s.permanent_failures == 2 and s.transient_failures >= 2
    ok_before = rows(w, "SELECT count(*) FROM responses WHERE ok")[0][0]
    assert ok_before == 12 - 2 - s.transient_failures
    # A rerun retries only the transient failures; permanent ones are never paid again.
    loopback_server.reset()
    s2 = asyncio.run(run_fill(cfg, warehouse=w))
    assert loopback_server.calls == s.transient_failures
    assert s2.filled == s.transient_failures
    assert rows(w, "SELECT count(*) FROM responses WHERE kind='original'")[0][0] == 12


def test_budget_stops_cleanly_and_resumes(tmp_path, loopback_server, monkeypatch) -> None:
    monkeypatch.setenv("TACORL_TEST_KEY", SECRET)
    cfg, w = openai_setup(tmp_path, loopback_server, 20, concurrency=4)
    cfg.budget.max_calls = 7
    s = asyncio.run(run_fill(cfg, warehouse=w))
    assert s.budget_stopped and s.filled == 7 and loopback_server.calls == 7
    assert rows(w, "SELECT status FROM runs WHERE run_id = ?", [s.run_id]) == [("budget",)]
    cfg.budget.max_calls = None
    s2 = asyncio.run(run_fill(cfg, warehouse=w))
    assert not s2.budget_stopped and s2.filled == 13 and loopback_server.calls == 20


def test_unreachable_teacher_is_one_error_and_leaves_warehouse_unchanged(
    tmp_path, monkeypatch
) -> None:
    from tacorl_offline.errors import UserError

    server = LoopbackServer()
    server.stop()  # nothing listens on that port any more
    monkeypatch.setenv("TACORL_TEST_KEY", SECRET)
    cfg, w = openai_setup(tmp_path, server, 5)
    cfg.teacher.max_retries = 0
    w.flush()
    snapshot = warehouse_snapshot(w.path)
    with pytest.raises(UserError) as e:
        asyncio.run(run_fill(cfg, warehouse=w))
    assert "unreachable" in str(e.value) and "\n" not in str(e.value)
    assert warehouse_snapshot(w.path) == snapshot


def test_extractive_fill_is_free_and_messages_are_stored(tmp_path) -> None:
    data = write_upstream_json(tmp_path / "d.json", 6)
    cfg = resolve(None, environ={}, overrides={"warehouse": str(tmp_path / "w.duckdb")})
    records, _ = read_records(data, cfg.data)
    w = Warehouse(cfg.warehouse)
    store_records(w, records, dataset="sample", split="train", source_path=data)
    s = asyncio.run(run_fill(cfg, warehouse=w))
    assert s.filled == 6 and s.spend.cost_usd == 0
    msgs = rows(w, "SELECT messages FROM responses LIMIT 1")[0][0]
    assert json.loads(msgs)[0]["role"] == "system"


def test_template_without_the_text_is_refused_in_one_line(tmp_path) -> None:
    from typer.testing import CliRunner

    from tacorl_offline.cli import app

    data = write_upstream_json(tmp_path / "d.json", 5)
    wh = tmp_path / "w.duckdb"
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", str(data), "-w", str(wh)]).exit_code == 0
    before = warehouse_snapshot(wh)
    cfg = tmp_path / "c.yaml"
    cfg.write_text('teacher:\n  template: "Summarize the meeting.\\nSummary:"\n', encoding="utf-8")
    r = runner.invoke(app, ["teacher-fill", "-c", str(cfg), "-w", str(wh), "--no-progress"])
    assert r.exit_code == 2
    assert r.output.strip() == (
        f"error: {cfg} + flags: teacher.template: does not use {{transcript}}, the compressible text: "
        "every prompt would send the same request and get the same answer; put {transcript} "
        "(or the name of data.text_field, e.g. {context}) where the text goes"
    )
    assert warehouse_snapshot(wh) == before


def test_template_leaving_out_a_data_field_warns_once(tmp_path) -> None:
    from tacorl_offline.config import DataConfig
    from tacorl_offline.ingest_store import store_records as store

    rows = [{"text": f"Meeting {i} went on.", "question": f"Who spoke {i}?"} for i in range(4)]
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    cfg = resolve(
        None,
        environ={},
        overrides={"warehouse": str(tmp_path / "w.duckdb"), "data.fields": ["question"]},
    )
    records, _ = read_records(p, DataConfig(fields=["question"]))
    w = Warehouse(cfg.warehouse)
    store(w, records, dataset=cfg.data.dataset, split=cfg.data.split, source_path=p)
    s = asyncio.run(run_fill(cfg, warehouse=w))
    warned = [n for n in s.notes if "'question'" in n]
    assert len(warned) == 1 and "add {question} to the template" in warned[0]
