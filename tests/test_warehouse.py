"""Migrations, the journal, lock handling and batched inserts on a real DuckDB file."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import duckdb
import pytest

from tacorl_offline.errors import UserError
from tacorl_offline.warehouse import Warehouse, insert_rows, migrations, table_names

EXPECTED_TABLES = [
    "api_calls",
    "batch_requests",
    "batches",
    "calls_in_flight",
    "dataset_items",
    "evaluations",
    "masks",
    "metric_values",
    "prompts",
    "replays",
    "responses",
    "runs",
    "samples",
    "schema_migrations",
    "sft_labels",
    "steps",
    "teacher_outputs",
    "writer_leases",
]


def _schema(path: Path) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(
            "SELECT table_name, column_name, data_type, ordinal_position FROM information_schema.columns"
            " ORDER BY table_name, ordinal_position"
        ).fetchall()
    finally:
        con.close()


def test_blank_warehouse_reaches_schema_and_reopen_changes_nothing(wh_path: Path) -> None:
    w = Warehouse(wh_path)
    with w.connect() as con:
        assert table_names(con) == EXPECTED_TABLES
        applied = con.execute("SELECT name FROM schema_migrations ORDER BY name").fetchall()
    assert [a[0] for a in applied] == [m[0] for m in migrations()]
    before = _schema(wh_path)
    with w.connect() as con:
        again = con.execute(
            "SELECT name, applied_at FROM schema_migrations ORDER BY name"
        ).fetchall()
    with w.connect() as con:
        assert (
            con.execute("SELECT name, applied_at FROM schema_migrations ORDER BY name").fetchall()
            == again
        )
    assert _schema(wh_path) == before
    cols = {(t, c) for t, c, *_ in before}
    for needed in [
        ("samples", "mask_hash"),
        ("samples", "cache_hit"),
        ("samples", "short_circuit"),
        ("responses", "request_hash"),
        ("api_calls", "saved_usd"),
        ("steps", "hits"),
        ("runs", "config"),
    ]:
        assert needed in cols


def test_journal_is_replayed_once_and_torn_lines_skipped(wh_path: Path) -> None:
    w = Warehouse(wh_path)
    row = {
        "request_hash": "v1:a",
        "teacher_key": "k",
        "kind": "original",
        "prompt_id": "p",
        "backend": "openai",
        "model": "m",
        "ok": True,
        "source": "api",
        "answer": "hello",
    }
    w.journal([("responses", row)])
    with open(w.journal_path, "a", encoding="utf-8") as f:
        f.write('{"t": "responses", "r": {"request_hash": "v1:torn"')  # a crash mid-write
    assert len(w.pending_journal()) == 1
    w.flush()
    w.journal([("responses", row)])  # the same answer again: ignored, never duplicated
    w.flush()
    with w.connect(read_only=True) as con:
        assert con.execute("SELECT request_hash, answer FROM responses").fetchall() == [
            ("v1:a", "hello")
        ]
    assert w.journal_path.stat().st_size == 0


def test_insert_rows_batch_and_conflicts(wh_path: Path) -> None:
    w = Warehouse(wh_path)
    rows = [
        {"prompt_id": f"p{i}", "text": f"t{i}", "fields": {"q": i}, "n_chars": 2}
        for i in range(1000)
    ]
    with w.connect() as con:
        assert insert_rows(con, "prompts", rows) == 1000
        insert_rows(con, "prompts", rows[:10], on_conflict="ignore")
        with pytest.raises(duckdb.ConstraintException):
            insert_rows(con, "prompts", rows[:1])
        assert con.execute("SELECT count(*) FROM prompts").fetchall()[0][0] == 1000
        assert (
            con.execute("SELECT fields FROM prompts WHERE prompt_id='p3'").fetchall()[0][0]
            == '{"q": 3}'
        )


def _hold_lock(path: str, seconds: float, ready) -> None:  # runs in a child process
    con = duckdb.connect(path)
    ready.set()
    time.sleep(seconds)
    con.close()


def test_lock_held_by_another_process_gives_one_line_then_retry_succeeds(wh_path: Path) -> None:
    Warehouse(wh_path).flush()
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(str(wh_path), 3.0, ready))
    p.start()
    try:
        assert ready.wait(30)
        with (
            pytest.raises(UserError) as e,
            Warehouse(wh_path, lock_timeout_s=0.3).connect(read_only=True),
        ):
            pass
        msg = str(e.value)
        assert "locked by another process" in msg and "\n" not in msg
        # A patient reader gets in once the writer lets go.
        with Warehouse(wh_path, lock_timeout_s=30).connect(read_only=True) as con:
            assert con.execute("SELECT 1").fetchall() == [(1,)]
    finally:
        p.join(10)


def test_not_a_database_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.duckdb"
    bad.write_bytes(b"this is not duckdb" * 100)
    with pytest.raises(UserError) as e, Warehouse(bad).connect():
        pass
    assert "cannot open warehouse" in str(e.value)
    assert bad.read_bytes() == b"this is not duckdb" * 100
