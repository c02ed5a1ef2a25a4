"""The CLI end to end through typer's CliRunner: exit codes, one-line errors, database rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml
from typer.testing import CliRunner

from tacorl_offline.cli import app
from tests.conftest import SECRET, openai_config, warehouse_snapshot, write_upstream_json
from tests.helpers import MALFORMED_CASES

runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    """A warehouse with the bundled sample ingested and filled by the extractive teacher."""
    wh = tmp_path / "w.duckdb"
    sample = Path(__file__).resolve().parents[1] / "data" / "sample" / "summarization.json"
    r = invoke("ingest", str(sample), "-w", str(wh))
    assert r.exit_code == 0, r.output
    r = invoke("teacher-fill", "-w", str(wh), "--no-progress")
    assert r.exit_code == 0, r.output
    return wh


def test_ingest_is_idempotent(tmp_path: Path) -> None:
    data = write_upstream_json(tmp_path / "d.json", 10, with_output=3)
    wh = tmp_path / "w.duckdb"
    r = invoke("ingest", str(data), "-w", str(wh), "--dataset", "mine", "--split", "dev")
    assert r.exit_code == 0 and "10 new prompts" in r.output and "3 imported answers" in r.output
    snap = warehouse_snapshot(wh)
    r = invoke("ingest", str(data), "-w", str(wh), "--dataset", "mine", "--split", "dev")
    assert r.exit_code == 0 and "0 new prompts" in r.output
    assert warehouse_snapshot(wh) == snap


@pytest.mark.parametrize(
    ("name", "suffix", "content", "overrides"), MALFORMED_CASES, ids=[c[0] for c in MALFORMED_CASES]
)
def test_malformed_ingest_one_line_nonzero_warehouse_unchanged(
    tmp_path, name, suffix, content, overrides
) -> None:
    wh = tmp_path / "w.duckdb"
    good = write_upstream_json(tmp_path / "good.json", 3)
    assert invoke("ingest", str(good), "-w", str(wh)).exit_code == 0
    before = warehouse_snapshot(wh)
    path = tmp_path / f"bad{suffix}"
    if content is not None:
        path.write_bytes(content)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": overrides}), encoding="utf-8")
    r = runner.invoke(app, ["ingest", str(path), "-w", str(wh), "-c", str(cfg)])
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "Traceback" not in r.output
    assert warehouse_snapshot(wh) == before


def test_bad_config_names_file_and_field(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("teacher:\n  temperature: hot\n", encoding="utf-8")
    r = runner.invoke(app, ["teacher-fill", "-c", str(cfg), "-w", str(tmp_path / "w.duckdb")])
    assert r.exit_code == 2
    assert str(cfg) in r.output and "teacher.temperature" in r.output
    cfg.write_text("teacher:\n  temprature: 0\n", encoding="utf-8")
    r = runner.invoke(app, ["teacher-fill", "-c", str(cfg), "-w", str(tmp_path / "w.duckdb")])
    assert r.exit_code == 2 and "teacher.temprature" in r.output and "unknown field" in r.output
    cfg.write_text("teacher: [unclosed\n", encoding="utf-8")
    r = runner.invoke(app, ["teacher-fill", "-c", str(cfg)])
    assert r.exit_code == 2 and "invalid YAML" in r.output


def test_fill_without_ingest_is_a_user_error(tmp_path: Path) -> None:
    r = runner.invoke(app, ["teacher-fill", "-w", str(tmp_path / "w.duckdb"), "--no-progress"])
    assert (
        r.exit_code == 2
        and "holds no prompts yet; run 'tacorl-offline ingest FILE' first" in r.output
    )


@pytest.mark.parametrize(
    "query",
    [
        "DROP TABLE prompts",
        "INSERT INTO prompts VALUES ('x','y',NULL,NULL,1,now())",
        "UPDATE prompts SET text = 'x'",
        "DELETE FROM responses",
        "CREATE TABLE t AS SELECT 1",
        "COPY prompts TO 'out.csv'",
        "ATTACH 'other.duckdb'",
        "SELECT 1; DROP TABLE prompts",
    ],
)
def test_sql_refuses_writes(filled: Path, query: str) -> None:
    before = warehouse_snapshot(filled)
    r = runner.invoke(app, ["sql", query, "-w", str(filled)])
    assert r.exit_code == 2 and "refused" in r.output, r.output
    assert warehouse_snapshot(filled) == before


def test_sql_cannot_read_other_files(filled: Path, tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a\n1\n")
    r = runner.invoke(
        app, ["sql", f"SELECT * FROM read_csv('{tmp_path / 'x.csv'}')", "-w", str(filled)]
    )
    assert r.exit_code == 2 and "query failed" in r.output


def test_sql_formats_and_named_queries(filled: Path) -> None:
    r = invoke("sql", "SELECT count(*) AS n FROM prompts", "-w", str(filled), "--format", "json")
    assert r.exit_code == 0 and json.loads(r.output) == [{"n": 80}]
    r = invoke(
        "sql",
        "SELECT source, count(*) AS n FROM responses GROUP BY 1 ORDER BY 1",
        "-w",
        str(filled),
        "-f",
        "csv",
    )
    assert r.output.splitlines() == ["source,n", "import,40", "local,40"]
    r = invoke("sql", "--list")
    names = [ln.split(":")[0] for ln in r.output.splitlines()]
    assert {"cost_by_run", "cache_savings", "fill_status", "runs", "reward_by_step"} <= set(names)
    for name in names:
        r = invoke("sql", "--query", name, "-w", str(filled), "-f", "json")
        assert r.exit_code == 0, (name, r.output)
        json.loads(r.output)
    r = invoke("sql", "--query", "nope", "-w", str(filled))
    assert r.exit_code == 2 and "no named query" in r.output


def test_report_cost_and_export(filled: Path, tmp_path: Path) -> None:
    r = invoke("teacher-fill", "-w", str(filled), "--no-progress")  # rerun: all hits
    r = invoke("report", "cost", "-w", str(filled), "-f", "json")
    assert json.loads(r.output) == [
        {
            "phase": "fill",
            "runs": 2,
            "calls": 40,
            "hits": 40,
            "hit_rate": 0.5,
            "spent_usd": 0.0,
            "saved_usd": 0.0,
            "in_flight_at_crash": 0,
            "in_flight_reserved_usd": 0.0,
        }
    ]
    r = invoke("report", "cost", "-w", str(filled), "-f", "json", "--by", "run")
    rows = json.loads(r.output)
    assert [x["phase"] for x in rows] == ["fill", "fill"]
    assert rows[0]["calls"] == 40 and rows[0]["hits"] == 0
    assert rows[1]["calls"] == 0 and rows[1]["hits"] == 40
    one = json.loads(
        invoke("report", "cost", "-w", str(filled), "--run", rows[1]["run_id"], "-f", "json").output
    )
    assert len(one) == 1
    out = tmp_path / "export"
    r = invoke("warehouse", "export", str(out), "-w", str(filled))
    assert r.exit_code == 0
    import pyarrow.dataset as ds

    assert ds.dataset(out / "prompts", format="parquet").count_rows() == 80
    parts = {p.name for p in (out / "responses").iterdir()}
    assert parts == {"kind=original"}
    assert ds.dataset(out / "api_calls", format="parquet", partitioning="hive").count_rows() == 80


def test_cost_report_is_readable_at_80_columns(filled: Path) -> None:
    for _ in range(3):  # more runs: the phase summary does not grow
        assert invoke("teacher-fill", "-w", str(filled), "--no-progress").exit_code == 0
    env = {"COLUMNS": "80"}
    by_phase = invoke("report", "cost", "-w", str(filled), env=env).output
    lines = by_phase.splitlines()
    assert max(map(len, lines)) <= 80 and len(lines) <= 9  # the table and the $0 note
    assert any(ln.split("│")[1].strip() == "fill" for ln in lines if ln.count("│") > 2)
    by_run = invoke("report", "cost", "--by", "run", "-w", str(filled), env=env).output
    assert max(map(len, by_run.splitlines())) <= 80
    with duckdb.connect(str(filled), read_only=True) as con:
        run_ids = [r[0] for r in con.execute("SELECT run_id FROM runs").fetchall()]
    for rid in run_ids:  # each id whole on one line (it used to wrap over 3)
        assert sum(rid in ln for ln in by_run.splitlines()) == 1, rid
    csv_out = invoke("report", "cost", "-w", str(filled), "-f", "csv").output
    assert "\r" not in csv_out and csv_out.endswith("\n")
    assert csv_out.splitlines()[-1].split(",")[0] == "fill"  # `tail -1` gives the value


def test_api_key_never_reaches_warehouse_exports_or_logs(tmp_path: Path, loopback_server) -> None:
    data = write_upstream_json(tmp_path / "d.json", 8)
    wh = tmp_path / "w.duckdb"
    cfg = openai_config(tmp_path / "c.yaml", loopback_server)
    env = {"TACORL_TEST_KEY": SECRET}
    outputs = [invoke("ingest", str(data), "-w", str(wh)).output]
    loopback_server.script("500", "429")
    for _ in range(2):
        r = invoke("teacher-fill", "-c", str(cfg), "-w", str(wh), "--no-progress", env=env)
        outputs.append(r.output)
        assert r.exit_code == 0, r.output
    outputs.append(invoke("report", "cost", "-w", str(wh)).output)
    outputs.append(invoke("config", "-c", str(cfg), env=env).output)
    export = tmp_path / "export"
    invoke("warehouse", "export", str(export), "-w", str(wh))
    # The key really was sent: the server saw it.
    assert any(SECRET in h for h in loopback_server.auth_headers)
    blobs = [wh.read_bytes()] + [
        p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p != data
    ]
    for b in blobs:
        assert SECRET.encode() not in b
    for o in outputs:
        assert SECRET not in o


def _ingest_and_fill_cmd(tmp_path: Path, server, n: int, k: int) -> tuple[Path, list[str]]:
    """Ingest n prompts; return the warehouse and a teacher-fill command line for a subprocess."""
    data = write_upstream_json(tmp_path / "d.json", n)
    wh = tmp_path / "w.duckdb"
    cfg = openai_config(tmp_path / "c.yaml", server, concurrency=k)
    assert invoke("ingest", str(data), "-w", str(wh)).exit_code == 0
    return wh, [
        sys.executable,
        "-m",
        "tacorl_offline.cli",
        "teacher-fill",
        "-c",
        str(cfg),
        "-w",
        str(wh),
        "--no-progress",
    ]


@pytest.mark.timeout(120)
def test_sigkill_mid_fill_then_rerun_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL teacher-fill midway against a slow server; the rerun completes, paying at most K extra."""
    import time

    import duckdb

    from tests.loopback import LoopbackServer

    n, k = 40, 4
    with LoopbackServer(latency_s=0.25) as server:
        wh, cmd = _ingest_and_fill_cmd(tmp_path, server, n, k)
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.calls < n // 2:
            time.sleep(0.05)
        child.kill()
        child.wait()
        first_calls = server.calls
        assert 0 < first_calls < n, "the kill should land mid-run"
        rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
        assert rerun.returncode == 0, rerun.stderr
        con = duckdb.connect(str(wh), read_only=True)
        per_prompt = con.execute(
            "SELECT d.prompt_id, count(r.request_hash) FROM dataset_items d "
            "LEFT JOIN responses r ON r.prompt_id = d.prompt_id AND r.kind = 'original' GROUP BY 1"
        ).fetchall()
        con.close()
        assert len(per_prompt) == n and all(c == 1 for _, c in per_prompt)
        # Only the calls in flight at the kill were paid twice.
        assert n <= server.calls <= n + k


@pytest.mark.timeout(120)
def test_readers_work_while_a_fill_is_running(tmp_path: Path) -> None:
    """`sql` and `report cost` succeed while teacher-fill writes from another process."""
    import time

    from tests.loopback import LoopbackServer

    with LoopbackServer(latency_s=0.2) as server:
        wh, cmd = _ingest_and_fill_cmd(tmp_path, server, 60, 4)
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            while server.calls < 4:
                time.sleep(0.02)
            seen = []
            while child.poll() is None and len(seen) < 12:
                time.sleep(0.3)
                r = runner.invoke(
                    app, ["sql", "SELECT count(*) AS n FROM responses", "-w", str(wh), "-f", "json"]
                )
                assert r.exit_code == 0, r.output
                seen.append(json.loads(r.output)[0]["n"])
                assert runner.invoke(app, ["report", "cost", "-w", str(wh)]).exit_code == 0
            assert child.wait(timeout=60) == 0, child.stderr.read() if child.stderr else ""
        finally:
            if child.poll() is None:
                child.kill()
        # Readers never failed, and saw answers land while the fill was still running.
        assert seen == sorted(seen) and any(0 < n < 60 for n in seen), seen
        final = json.loads(
            invoke("sql", "SELECT count(*) AS n FROM responses", "-w", str(wh), "-f", "json").output
        )
        assert final == [{"n": 60}]
