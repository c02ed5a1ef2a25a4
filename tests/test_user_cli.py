"""Issue 21 (the CLI side) and issue 18 item 7: bad inputs are one line and exit 2 from our own
check; compress prints llmlingua's formats and feeds a question-aware model its fields; the
dataset a phase uses is printed and a copied config's dataset is refused; help and config read
cleanly."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tacorl_offline.cli import app
from tacorl_offline.compressor import Compressor
from tests import tiny_models as tm

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
TEXT = tm.random_text(random.Random(21), 80)


def one_line_error(r) -> str:
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "Usage" not in r.output and "╭" not in r.output and "Traceback" not in r.output
    return lines[0]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["teacher-fill", "--concurrency", "-1"], "--concurrency must be >= 1"),
        (["teacher-fill", "--max-cost-usd", "-1"], "--max-cost-usd must be >= 0"),
        (["teacher-fill", "--max-cost-usd", "nan"], "--max-cost-usd must be a number"),
        (["teacher-fill", "--max-calls", "-5"], "--max-calls must be >= 0"),
        (["train", "--max-steps", "0"], "--max-steps must be >= 1"),
        (["train", "--max-cost-usd", "inf"], "--max-cost-usd must be a number"),
        (["evaluate", "--target-token", "-3"], "--target-token must be >= 1"),
        (["sql", "-- nothing"], "goes after '--'"),
        (["sql", "--", "-- nothing"], "empty SQL"),
        (["teacher-fill", "--bogus"], "No such option: --bogus"),
        (["report", "cost", "--run"], "requires an argument"),
    ],
)
def test_bad_inputs_are_one_line(tmp_path, args, says):
    wh = tmp_path / "wh.duckdb"
    k = 2 if args[0] == "report" else 1  # -w goes right after the command's name
    r = runner.invoke(app, [*args[:k], "-w", str(wh), *args[k:]])
    assert says in one_line_error(r)
    assert not wh.exists()  # nothing was created or changed


def test_compress_of_an_empty_file_is_one_line(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("  \n", encoding="utf-8")
    assert "is empty" in one_line_error(runner.invoke(app, ["compress", str(f)]))


def test_an_unknown_model_name_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    f = tmp_path / "t.txt"
    f.write_text(TEXT, encoding="utf-8")
    line = one_line_error(runner.invoke(app, ["compress", "-m", "minilmx", str(f)]))
    assert "not a directory, an alias" in line and "minilm" in line


def test_help_shows_flags_without_a_type():
    for cmd in (["compress", "--help"], ["train", "--help"], ["teacher-fill", "--help"]):
        r = runner.invoke(app, cmd, env={"COLUMNS": "120"})
        assert r.exit_code == 0 and "<bool>" not in r.output, r.output
    assert "--init" in runner.invoke(app, ["train", "--help"]).output


def test_config_prints_force_tokens_cleanly():
    r = runner.invoke(app, ["config", "-c", str(ROOT / "configs" / "summarization.yaml")])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    i = lines.index("  force_tokens:")
    assert lines[i + 1] == '  - "\\n"'


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return str(tm.cached_model("bert", tmp_path_factory.getbasetemp()))


def test_compress_format_json_is_the_api_dict(bert_dir, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(TEXT, encoding="utf-8")
    r = runner.invoke(
        app, ["compress", "-m", bert_dir, "--rate", "0.33", "--format", "json", str(f)]
    )
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    api = Compressor.from_pretrained(bert_dir).compress(TEXT, rate=0.33)
    for key in ("compressed_prompt", "origin_tokens", "compressed_tokens", "ratio", "rate"):
        assert got[key] == api[key], key
    assert got["ratio"].endswith("x") and got["rate"].endswith("%")
    alias = runner.invoke(app, ["compress", "-m", bert_dir, "--rate", "0.33", "--json", str(f)])
    assert json.loads(alias.stdout) == got
    import re

    assert not re.search(r"--json\b(?!l)", runner.invoke(app, ["compress", "--help"]).output)


def test_jsonl_fields_reach_a_question_aware_model(tiny_bert, tmp_path):
    qa = tmp_path / "qa-model"
    Compressor.from_pretrained(tiny_bert, condition_on=["question"]).save_pretrained(qa)
    f = tmp_path / "in.jsonl"
    recs = [
        {"text": TEXT, "question": "who voted for the budget?", "id": 1},
        {"text": TEXT, "question": "when is the next meeting?", "id": 2},
    ]
    f.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    r = runner.invoke(app, ["compress", "-m", str(qa), "--jsonl", "--format", "json", str(f)])
    assert r.exit_code == 0, r.output
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert [o["id"] for o in out] == [1, 2] and all(o["compressed_prompt"] for o in out)
    comp = Compressor.from_pretrained(qa)
    want = comp.compress([TEXT, TEXT], fields=recs)
    assert [o["mask_hash"] for o in out] == [w.mask_hash for w in want]  # the question was read
    plain = tmp_path / "plain.txt"
    plain.write_text(TEXT, encoding="utf-8")
    assert "--jsonl" in one_line_error(runner.invoke(app, ["compress", "-m", str(qa), str(plain)]))
    f.write_text(json.dumps({"text": TEXT}) + "\n", encoding="utf-8")
    assert "question" in one_line_error(
        runner.invoke(app, ["compress", "-m", str(qa), "--jsonl", str(f)])
    )


def test_a_copied_config_is_refused_and_the_dataset_is_printed(tmp_path):
    """The user's path: the sample is in the warehouse, `ingest --dataset mine` comes last, and
    the copied config still names the sample: teacher-fill refuses in one line, pays nothing,
    and runs on `mine` when told."""
    import yaml

    cfg = yaml.safe_load((ROOT / "configs" / "summarization.yaml").read_text(encoding="utf-8"))
    wh = tmp_path / "wh.duckdb"
    cfg["warehouse"] = str(wh)
    c = tmp_path / "my.yaml"
    c.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    sample = json.loads((ROOT / "data" / "sample" / "summarization.json").read_text())
    keys = list(sample)
    for name, part in (("sample.json", keys[:4]), ("mine.json", keys[4:7])):
        (tmp_path / name).write_text(json.dumps({k: sample[k] for k in part}), encoding="utf-8")
    assert (
        runner.invoke(app, ["ingest", str(tmp_path / "sample.json"), "-c", str(c)]).exit_code == 0
    )
    r = runner.invoke(
        app, ["ingest", str(tmp_path / "mine.json"), "-c", str(c), "--dataset", "mine"]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["teacher-fill", "-c", str(c), "--no-progress"])
    line = one_line_error(r)
    assert "'mine' was ingested last" in line and "--dataset mine" in line
    r = runner.invoke(
        app,
        ["teacher-fill", "-c", str(c), "--no-progress", "--dataset", "mine"],
        env={"COLUMNS": "200"},
    )
    assert r.exit_code == 0, r.output
    assert "using dataset 'mine', split 'train': 3 prompts" in r.output
    assert "extractive teacher: offline stand-in" in r.output  # why it cost $0
    r = runner.invoke(
        app, ["report", "cost", "-c", str(c), "--dataset", "mine"], env={"COLUMNS": "200"}
    )
    assert r.exit_code == 0 and "offline stand-in" in r.output, r.output
