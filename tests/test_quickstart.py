"""The README's main job, end to end on the real MiniLM: twice, and the second run pays nothing."""

from __future__ import annotations

import duckdb
import pytest
from typer.testing import CliRunner

from tacorl_offline.cli import app


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quickstart_chain_then_rerun_pays_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    wh = tmp_path / "w.duckdb"
    runner = CliRunner()
    r = runner.invoke(
        app,
        ["quickstart", "--max-steps", "2", "--no-progress", "-w", str(wh)],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    for stage in (
        "[1/6] ingest",
        "[2/6] teacher-fill",
        "stand-in",
        "[3/6] sft",
        "[4/6] train",
        "[5/6] cost report",
        "[6/6] evaluate",
    ):
        assert stage in r.output
    # it ends with the table and a plain verdict against the base and every baseline
    for other in ("minilm", "original", "random", "stopword", "lead"):
        assert any(
            f" BEATS {other};" in line or f" does NOT beat {other} (" in line
            for line in r.output.splitlines()
        ), other
    # the warm-started, trained model beats the fresh head it started from, on held-out prompts
    # (a large margin measured; the interval must exclude 0)
    assert any(" BEATS minilm;" in line for line in r.output.splitlines()), r.output[-3000:]
    con = duckdb.connect(str(wh), read_only=True)
    first = con.execute("SELECT count(*) FROM api_calls WHERE status <> 'hit'").fetchall()[0][0]
    runs = con.execute("SELECT kind, status FROM runs ORDER BY started_at").fetchall()
    systems = con.execute("SELECT DISTINCT system FROM evaluations").fetchall()
    con.close()
    # one fill per split (train, heldout)
    assert [k for k, _ in runs] == ["fill", "fill", "sft", "train", "eval"] and {
        s for _, s in runs
    } == {"finished"}
    assert len(systems) == 7  # trained, base, the SFT warm start and the four baselines
    # A quarter of the sample is held out: scored, never trained on (neither SFT nor RL).
    con = duckdb.connect(str(wh), read_only=True)
    split = dict(
        con.execute(
            "SELECT split, count(*) FROM dataset_items WHERE dataset = 'sample-summarization' "
            "GROUP BY split"
        ).fetchall()
    )
    heldout = {
        p
        for (p,) in con.execute(
            "SELECT prompt_id FROM dataset_items WHERE split = 'heldout'"
        ).fetchall()
    }
    scored = {p for (p,) in con.execute("SELECT DISTINCT prompt_id FROM evaluations").fetchall()}
    trained_on = {p for (p,) in con.execute("SELECT DISTINCT prompt_id FROM samples").fetchall()}
    sft_on = {p for (p,) in con.execute("SELECT DISTINCT prompt_id FROM sft_labels").fetchall()}
    con.close()
    assert split == {"train": 60, "heldout": 20}
    assert scored == heldout and trained_on and sft_on
    assert not (trained_on | sft_on) & heldout
    assert "sample-summarization/heldout" in r.output and "centroid" in r.output
    assert first > 0
    final = list((tmp_path / "runs" / "summarization").glob("train-*/final/model.safetensors"))
    assert len(final) == 1
    # The quick start ends by writing the run's curves and printing their paths.
    plots = sorted(final[0].parents[1].glob("plots/*.png"))
    assert len(plots) == 6 and all(p.read_bytes()[:4] == b"\x89PNG" for p in plots)
    assert f"plot: {plots[0].relative_to(tmp_path)}" in r.output

    r = runner.invoke(
        app,
        ["quickstart", "--max-steps", "2", "--no-progress", "-w", str(wh)],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    con = duckdb.connect(str(wh), read_only=True)
    again = con.execute("SELECT count(*) FROM api_calls WHERE status <> 'hit'").fetchall()[0][0]
    hits = con.execute("SELECT count(*) FROM api_calls WHERE status = 'hit'").fetchall()[0][0]
    con.close()
    assert again == first and hits > 0
