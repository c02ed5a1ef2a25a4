"""evaluate end to end: a tiny real compressor, the real openai client on the loopback server,
a real DuckDB file; baselines, intervals, multi-reference gold, the judge, JSON and CSV."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
from pathlib import Path

import duckdb
import pytest
import yaml
from typer.testing import CliRunner

from tacorl_offline.cli import app
from tacorl_offline.config import resolve
from tacorl_offline.eval_output import verdict_lines
from tacorl_offline.evaluate import run_evaluation
from tacorl_offline.fill import run_fill
from tacorl_offline.ingest import read_records
from tacorl_offline.ingest_store import store_records
from tacorl_offline.judge import JUDGE_SYSTEM, pair_score, parse_verdict
from tacorl_offline.warehouse import Warehouse
from tests.conftest import SECRET, warehouse_snapshot
from tests.helpers import error_lines
from tests.loopback import LoopbackServer, answer_for
from tests.tiny_models import WORDS

runner = CliRunner()
SYSTEMS = {"original", "random", "stopword", "lead"}


def write_qa(path: Path, n: int = 8, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            ctx = " ".join(
                " ".join(rng.choice(WORDS) for _ in range(8)).capitalize() + "." for _ in range(4)
            )
            answers = [rng.choice(WORDS), " ".join(rng.choice(WORDS) for _ in range(2))]
            q = f"what is {rng.choice(WORDS)} number {i}?"
            f.write(json.dumps({"context": ctx, "question": q, "answers": answers}) + "\n")
    return path


def write_config(tmp: Path, server: LoopbackServer, model: Path) -> Path:
    cfg = {
        "warehouse": str(tmp / "wh.duckdb"),
        "data": {
            "dataset": "qa",
            "split": "heldout",
            "text_field": "context",
            "fields": ["question"],
            "reference_field": "answers",
        },
        "teacher": {
            "backend": "openai",
            "model": "gpt-4o-mini",
            "base_url": server.base_url,
            "api_key_env": "TACORL_TEST_KEY",
            "concurrency": 8,
            "timeout_s": 5,
            "max_retries": 1,
            "template": "Question: {question}\nContext: {transcript}\nAnswer:",
        },
        "compressor": {"model": str(model), "rate": 0.5},
        "train": {"reward": {"metric": "squad_f1"}},
        "eval": {"bootstrap_resamples": 500},
    }
    p = tmp / "c.yaml"
    p.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return p


@pytest.fixture
def setup(tmp_path: Path, loopback_server: LoopbackServer, tiny_bert: Path, monkeypatch):
    monkeypatch.setenv("TACORL_TEST_KEY", SECRET)
    cfg_path = write_config(tmp_path, loopback_server, tiny_bert)
    cfg = resolve(cfg_path, environ={})
    data = write_qa(tmp_path / "qa.jsonl")
    records, _ = read_records(data, cfg.data)
    w = Warehouse(cfg.warehouse)
    store_records(w, records, dataset="qa", split="heldout", source_path=data)
    asyncio.run(run_fill(cfg, warehouse=w))
    loopback_server.reset()
    return cfg_path, cfg, w


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def q(path: str, sql: str) -> list[tuple]:
    con = duckdb.connect(path, read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_json_and_csv_parse_carry_every_system_and_a_rerun_pays_nothing(
    setup, loopback_server: LoopbackServer, tiny_bert: Path, tmp_path: Path
) -> None:
    cfg_path, cfg, _ = setup
    out = tmp_path / "report.json"
    r = invoke("evaluate", "-c", str(cfg_path), "-m", str(tiny_bert), "--rate", "0.5",
               "--format", "json", "--output", str(out), "--no-progress")  # fmt: skip
    assert r.exit_code == 0, r.output
    paid = loopback_server.calls
    # model + random x3 + stopword + lead, 8 prompts each (original replays the fill)
    assert 0 < paid <= 8 * 6
    doc = json.loads(out.read_text(encoding="utf-8"))
    systems = {s["system"] for s in doc["systems"]}
    assert systems == SYSTEMS | {str(tiny_bert)}
    assert doc["run"]["reference"] == str(tiny_bert) and doc["run"]["rate"] == 0.5
    metrics = {row["metric"] for row in doc["rows"]}
    assert metrics == {
        "teacher.squad_f1",
        "teacher.exact_match",
        "gold.squad_f1",
        "gold.exact_match",
    }
    for m in metrics:
        assert {row["system"] for row in doc["rows"] if row["metric"] == m} == systems
    by = {(row["system"], row["metric"]): row for row in doc["rows"]}
    orig = by[("original", "teacher.squad_f1")]
    assert orig["mean"] == 1.0 and orig["ci_low"] == 1.0  # the teacher agrees with itself
    for s in doc["systems"]:
        if s["system"] == "original":  # replays the answers scored against: never paid
            assert (s["calls"], s["hits"], s["token_ratio"]) == (0, 8, 1.0)
        else:
            assert 0.3 < s["token_ratio"] <= 0.55  # the same budget for every system
    for row in doc["rows"]:
        assert row["ci_low"] <= row["mean"] <= row["ci_high"]
        assert set(row) >= {"diff", "diff_ci_low", "diff_ci_high", "verdict", "n"}
    rows = q(cfg.warehouse, "SELECT system, count(*) FROM evaluations GROUP BY 1 ORDER BY 1")
    assert dict(rows) == {str(tiny_bert): 8, "lead": 8, "original": 8, "random": 24,
                          "stopword": 8}  # fmt: skip
    assert q(cfg.warehouse, "SELECT kind, status FROM runs WHERE kind = 'eval'") == [
        ("eval", "finished")
    ]

    loopback_server.reset()
    r = invoke("evaluate", "-c", str(cfg_path), "-m", str(tiny_bert), "--format", "csv",
               "--no-progress")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert loopback_server.calls == 0  # every answer replayed from the warehouse
    assert "\r" not in r.stdout
    table = list(csv.DictReader(io.StringIO(r.stdout)))
    assert {row["system"] for row in table} == SYSTEMS | {str(tiny_bert)}
    assert {row["calls"] for row in table} == {"0"}
    assert list(table[0]) == [
        "system", "kind", "metric", "n", "mean", "ci_low", "ci_high", "reference", "diff",
        "diff_ci_low", "diff_ci_high", "verdict", "token_ratio", "unscorable", "calls",
        "hits", "cost_usd", "saved_usd",
    ]  # fmt: skip
    same = {(row["system"], row["metric"]): float(row["mean"]) for row in table}
    assert same == {k: v["mean"] for k, v in by.items()}  # replayed answers score the same


def test_judge_sends_both_orders_cancels_position_bias_and_reruns_for_free(
    setup, loopback_server: LoopbackServer, tiny_bert: Path
) -> None:
    _, cfg, _ = setup

    def biased_judge(messages: list[dict]) -> str:
        if messages[0]["content"] == JUDGE_SYSTEM:
            return "A"  # always the first answer shown: pure position bias
        return answer_for(messages)

    loopback_server.responder = biased_judge
    rep = asyncio.run(
        run_evaluation(cfg, models=[str(tiny_bert)], baselines=["original", "lead"], judge=True)
    )
    judge_bodies = [
        b for b in loopback_server.bodies if b["messages"][0]["content"] == JUDGE_SYSTEM
    ]
    assert rep.judge_calls == len(judge_bodies) > 0
    # every judged pair was sent twice, once in each order
    shown = [
        tuple(
            part.split("]\n", 1)[1].split("\n\n")[0]
            for part in b["messages"][1]["content"].split("[Answer ")[1:]
        )
        for b in judge_bodies
    ]
    pairs = {frozenset(s) for s in shown}
    assert len(shown) == 2 * len(pairs)
    assert {s[::-1] for s in shown} == set(shown)
    # a judge that always says "A" gives every compressed answer exactly 0.5: bias cancelled
    for s in ("lead", str(tiny_bert), "original"):
        row = rep.row(s, "judge.win")
        assert row.mean == pytest.approx(0.5) and row.ci_low == row.ci_high
    lines = verdict_lines(rep)  # one per (main metric, other system), never the reference
    assert rep.primary_metrics == ["teacher.squad_f1", "gold.squad_f1", "judge.win"]
    assert len(lines) == 3 * 2 and not any("lead" not in x and "original" not in x for x in lines)
    n_judged = q(cfg.warehouse, "SELECT count(*) FROM responses WHERE kind = 'judge'")[0][0]
    assert n_judged == rep.judge_calls
    ledger = q(
        cfg.warehouse,
        "SELECT count(*) FROM api_calls WHERE phase = 'eval' AND status = 'ok' AND cost_usd > 0",
    )[0][0]
    assert ledger >= rep.judge_calls  # judgements are paid calls in the ledger
    assert q(cfg.warehouse, "SELECT count(*) FROM masks m JOIN responses r USING (request_hash)"
             " WHERE r.kind = 'judge'")[0][0] == 0  # fmt: skip

    loopback_server.reset()
    again = asyncio.run(
        run_evaluation(cfg, models=[str(tiny_bert)], baselines=["original", "lead"], judge=True)
    )
    assert loopback_server.calls == 0 and again.cost_usd == 0.0
    assert again.judge_calls == 0 and again.judge_hits == rep.judge_calls
    assert again.saved_usd > 0


def test_verdicts_and_pair_scores() -> None:
    assert parse_verdict("A") == "A" and parse_verdict(" b. ") == "B"
    assert parse_verdict("Tie") == "tie" and parse_verdict("**TIE**") == "tie"
    assert parse_verdict("Answer B is better than a short one") == "B"
    assert parse_verdict("no idea") is None and parse_verdict(None) is None
    # (original first, compressed first): A/B name positions, the score is the compressed one's
    assert pair_score("B", "A") == 1.0  # compressed wins in both orders
    assert pair_score("A", "B") == 0.0
    assert pair_score("A", "A") == 0.5  # position bias cancels
    assert pair_score("tie", "A") == 0.75
    assert pair_score(None, "A") == 1.0
    assert pair_score(None, None) != pair_score(None, None)  # NaN


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--rate", "1.5"], "compressor.rate"),
        (["--rate", "0"], "compressor.rate"),
        (["--rate", "0.5", "--target-token", "10"], "either --rate or --target-token"),
        (["--baselines", "lead,bogus"], "unknown baseline 'bogus'"),
        (["--format", "xml"], "--format"),
        (["--judge"], "--judge needs an LLM teacher"),
        (["--reference", "nobody"], "reference system 'nobody'"),
    ],
)
def test_bad_evaluate_input_is_one_line_exit_2_warehouse_unchanged(
    tmp_path: Path, args: list[str], says: str
) -> None:
    wh = tmp_path / "w.duckdb"
    sample = Path(__file__).resolve().parents[1] / "data" / "sample" / "qa.jsonl"
    cfg = Path(__file__).resolve().parents[1] / "configs" / "qa.yaml"
    assert invoke("ingest", str(sample), "-c", str(cfg), "-w", str(wh)).exit_code == 0
    assert invoke("teacher-fill", "-c", str(cfg), "-w", str(wh), "--no-progress").exit_code == 0
    before = warehouse_snapshot(wh)
    r = invoke("evaluate", "-c", str(cfg), "-w", str(wh), "--no-progress", *args)
    assert r.exit_code == 2, r.output
    lines = error_lines(r.output)
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in r.output
    assert warehouse_snapshot(wh) == before


def test_a_list_of_references_is_ingested_as_a_list(tmp_path: Path) -> None:
    cfg = resolve(
        None,
        environ={},
        overrides={
            "data.text_field": "context",
            "data.reference_field": "answers",
            "warehouse": str(tmp_path / "w.duckdb"),
        },
    )
    p = tmp_path / "d.jsonl"
    p.write_text(
        json.dumps({"context": "c one", "answers": ["France", "France", "the France"]})
        + "\n"
        + json.dumps({"context": "c two", "answers": "Paris"})
        + "\n",
        encoding="utf-8",
    )
    records, _ = read_records(p, cfg.data)
    assert records[0].references == ("France", "the France") and records[0].reference == "France"
    assert records[1].references == ("Paris",)
    store_records(Warehouse(cfg.warehouse), records, dataset="d", split="s", source_path=p)
    rows = q(cfg.warehouse, "SELECT reference, gold_references FROM prompts ORDER BY text")
    assert [(r, json.loads(g)) for r, g in rows] == [
        ("France", ["France", "the France"]),
        ("Paris", ["Paris"]),
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": "c", "answers": ["ok", 3]}) + "\n", encoding="utf-8")
    with pytest.raises(Exception, match=r"answers\[1\]"):
        read_records(bad, cfg.data)


def test_target_token_gives_every_system_the_same_token_budget(
    setup, loopback_server: LoopbackServer, tiny_bert: Path
) -> None:
    _, cfg, _ = setup
    rep = asyncio.run(
        run_evaluation(
            cfg, models=[str(tiny_bert)], baselines=["lead", "stopword"], target_token=12
        )
    )
    assert rep.rate is None and rep.target_token == 12
    rows = q(
        cfg.warehouse,
        f"SELECT system, max(n_comp_tokens), avg(n_orig_tokens) FROM evaluations"
        f" WHERE run_id = '{rep.run_id}' GROUP BY 1",
    )
    assert {r[0] for r in rows} == {str(tiny_bert), "lead", "stopword"}
    for _, most, orig in rows:
        assert most <= 12 + 2 and orig > 24  # the policy counter; +2: joins across drops


def test_a_budget_stop_is_never_exceeded_and_a_rerun_resumes(
    setup, loopback_server: LoopbackServer, tiny_bert: Path
) -> None:
    _, cfg, _ = setup
    cfg.budget.max_calls = 5
    rep = asyncio.run(run_evaluation(cfg, models=[str(tiny_bert)], baselines=["lead"]))
    assert rep.budget_stopped and loopback_server.calls == rep.calls == 5
    assert sum(s.unscorable for s in rep.systems) == 16 - 5  # 8 prompts x 2 systems
    assert q(cfg.warehouse, f"SELECT status FROM runs WHERE run_id = '{rep.run_id}'") == [
        ("budget",)
    ]
    cfg.budget.max_calls = None
    again = asyncio.run(run_evaluation(cfg, models=[str(tiny_bert)], baselines=["lead"]))
    assert not again.budget_stopped and again.calls == 16 - 5 and again.hits == 5
    assert all(s.unscorable == 0 for s in again.systems)


def test_an_exact_tie_prints_as_plus_zero() -> None:
    """A model kept identical to its start (train.validation kept step 0) ties it exactly; the
    negated difference is -0.0, which must not print as '-0.000'."""
    from tacorl_offline.eval_output import fmt_num

    assert fmt_num(-0.0, True) == "+0.000" and fmt_num(-0.0) == "0.000"
    assert fmt_num(-0.0004, True) == "-0.000" and fmt_num(0.0123, True) == "+0.012"
