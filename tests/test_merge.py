"""`warehouse merge`: two machines' real warehouses (filled against the loopback teacher)
folded together from a DuckDB file and from a `warehouse export` directory."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from tacorl_offline.cli import app
from tacorl_offline.config import resolve
from tacorl_offline.fill import run_fill
from tacorl_offline.merge import merge_warehouse
from tacorl_offline.warehouse import Warehouse
from tests.conftest import SECRET, openai_config, warehouse_snapshot, write_upstream_json
from tests.helpers import ingest_file

runner = CliRunner()


def _machine(tmp: Path, server, name: str, n: int) -> Path:
    """A machine's warehouse: ``n`` prompts ingested and filled (paid) against the teacher."""
    d = tmp / name
    d.mkdir()
    data = write_upstream_json(d / "d.json", n)
    cfg = resolve(
        openai_config(d / "c.yaml", server),
        environ={},
        overrides={"warehouse": str(d / "wh.duckdb")},
    )
    w = ingest_file(cfg, data)
    asyncio.run(run_fill(cfg, warehouse=w))
    return w.path


def _q(path: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _ledger(path: Path) -> tuple[int, float]:
    (n, cost), *_ = _q(path, "SELECT count(*), coalesce(sum(cost_usd), 0) FROM api_calls")
    return int(n), float(cost)


@pytest.fixture
def two(tmp_path: Path, loopback_server, monkeypatch) -> tuple[Path, Path]:
    """Machine a answers 6 prompts; machine b, later, 10 (the same 6 first, then 4 more)."""
    monkeypatch.setenv("TACORL_TEST_KEY", SECRET)
    a = _machine(tmp_path, loopback_server, "a", 6)
    b = _machine(tmp_path, loopback_server, "b", 10)
    return a, b


def test_merge_adds_the_new_rows_keeps_the_earliest_answer_and_is_idempotent(two) -> None:
    a, b = two
    a_calls, a_cost = _ledger(a)
    b_calls, b_cost = _ledger(b)
    assert a_calls == 6 and b_calls == 10 and a_cost > 0
    shared = {r[0] for r in _q(a, "SELECT request_hash FROM responses")}
    assert shared < {r[0] for r in _q(b, "SELECT request_hash FROM responses")}
    a_rows = dict(_q(a, "SELECT request_hash, run_id FROM responses"))

    res = merge_warehouse(Warehouse(a), b)
    assert res.added["responses"] == 4  # the 6 shared request hashes stay a's (earlier)
    assert res.replaced_answers == 0
    assert res.added["api_calls"] == 10  # b's ledger whole: each paid attempt once
    assert res.added["prompts"] == 4 and res.added["runs"] == 1
    assert _ledger(a) == (a_calls + b_calls, pytest.approx(a_cost + b_cost))
    merged = dict(_q(a, "SELECT request_hash, run_id FROM responses"))
    assert {h: merged[h] for h in shared} == a_rows

    snap = warehouse_snapshot(a)
    again = merge_warehouse(Warehouse(a), b)
    assert again.total == 0 and set(again.added.values()) == {0}
    assert warehouse_snapshot(a) == snap


def test_merge_the_other_way_keeps_the_earlier_answer_too(two) -> None:
    """b into a and a into b end with the same answer per request hash (a's: earlier)."""
    a, b = two
    a_copy = a.with_name("copy.duckdb")
    shutil.copy(a, a_copy)
    a_runs = dict(_q(a, "SELECT request_hash, run_id FROM responses"))
    # Give a's shared answers a mark so that which one survives is visible.
    con = duckdb.connect(str(a))
    con.execute("UPDATE responses SET answer = 'from a: ' || answer")
    con.close()
    res = merge_warehouse(Warehouse(b), a)
    assert res.replaced_answers == 6 and res.added["responses"] == 0
    got = dict(_q(b, "SELECT request_hash, answer FROM responses"))
    assert all(got[h].startswith("from a: ") for h in a_runs)
    assert (
        dict(_q(b, "SELECT request_hash, run_id FROM responses WHERE answer LIKE 'from a:%'"))
        == a_runs
    )
    # Converged: merging b back into a changes no answer.
    res = merge_warehouse(Warehouse(a), b)
    assert res.replaced_answers == 0


def test_merge_from_an_export_directory_equals_merge_from_the_file(two, tmp_path: Path) -> None:
    a, b = two
    a2 = a.with_name("a2.duckdb")
    shutil.copy(a, a2)
    export = tmp_path / "b-export"
    r = runner.invoke(app, ["warehouse", "export", str(export), "-w", str(b)])
    assert r.exit_code == 0, r.output

    from_file = merge_warehouse(Warehouse(a), b)
    from_dir = merge_warehouse(Warehouse(a2), export)
    assert from_dir.added == from_file.added
    assert warehouse_snapshot(a2) == warehouse_snapshot(a)
    assert merge_warehouse(Warehouse(a2), export).total == 0


def test_merge_cli_prints_table_by_table(two) -> None:
    a, b = two
    r = runner.invoke(app, ["warehouse", "merge", str(b), "-w", str(a)])
    assert r.exit_code == 0, r.output
    assert "responses: 4 added" in r.output
    assert "api_calls: 10 added" in r.output
    assert f"merged {b}" in r.output
    r = runner.invoke(app, ["warehouse", "merge", str(b), "-w", str(a)])
    assert r.exit_code == 0 and "nothing new" in r.output, r.output


def _one_line_error(r) -> str:
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "Traceback" not in r.output
    return lines[0]


def test_merge_refuses_bad_input_in_one_line_and_changes_nothing(two, tmp_path: Path) -> None:
    a, b = two
    before = warehouse_snapshot(a)
    cases = {}
    cases["missing"] = (tmp_path / "nope.duckdb", "no such file")
    junk = tmp_path / "junk.duckdb"
    junk.write_bytes(b"not a database at all" * 100)
    cases["junk"] = (junk, "not a readable DuckDB warehouse")
    other = tmp_path / "other.duckdb"
    duckdb.connect(str(other)).execute("CREATE TABLE t (x INT)").close()
    cases["foreign"] = (other, "not a tacorl-offline warehouse")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    cases["empty_dir"] = (empty_dir, "not a 'warehouse export' directory")
    cases["itself"] = (a, "into itself")
    newer = tmp_path / "newer.duckdb"
    shutil.copy(b, newer)
    con = duckdb.connect(str(newer))
    con.execute("INSERT INTO schema_migrations (name) VALUES ('999_future')")
    con.close()
    cases["newer"] = (newer, "newer tacorl-offline")
    pending = tmp_path / "pending.duckdb"
    shutil.copy(b, pending)
    pending.with_name("pending.duckdb.journal").write_text('{"t": "responses", "r": {}}\n')
    cases["journal"] = (pending, "warehouse migrate")
    for name, (src, why) in cases.items():
        r = runner.invoke(app, ["warehouse", "merge", str(src), "-w", str(a)])
        assert why in _one_line_error(r), (name, r.output)
        assert warehouse_snapshot(a) == before, name


def test_a_failure_mid_merge_rolls_everything_back(two, tmp_path: Path) -> None:
    """A source row that breaks a constraint (NULL in a NOT NULL column) after others went in."""
    a, b = two
    bad = tmp_path / "bad.duckdb"
    shutil.copy(b, bad)
    con = duckdb.connect(str(bad))
    # api_calls is merged after prompts/responses: NULL model breaks only there.
    con.execute("ALTER TABLE api_calls ALTER COLUMN model DROP NOT NULL")
    con.execute(
        "UPDATE api_calls SET model = NULL WHERE call_id = (SELECT min(call_id) FROM api_calls)"
    )
    con.close()
    before = warehouse_snapshot(a)
    r = runner.invoke(app, ["warehouse", "merge", str(bad), "-w", str(a)])
    assert "the warehouse is unchanged" in _one_line_error(r)
    assert warehouse_snapshot(a) == before
