"""The ``compress`` command through typer's CliRunner, registered on a local app."""

from __future__ import annotations

import json
import random

import pytest
import typer
from typer.testing import CliRunner

from tacorl_offline.cli.evaluate import compress
from tacorl_offline.errors import UserError
from tests import tiny_models as tm

app = typer.Typer()
app.command("compress")(compress)
app.command("noop")(lambda: None)  # keeps "compress" a subcommand, as in the real CLI
runner = CliRunner()
TEXT = tm.random_text(random.Random(99), 120)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(tm.cached_model("bert", tmp_path_factory.getbasetemp()))


def test_compress_file_prints_text(model_dir, tmp_path):
    f = tmp_path / "in.txt"
    f.write_text(TEXT)
    r = runner.invoke(app, ["compress", "--model", model_dir, "--rate", "0.4", str(f)])
    assert r.exit_code == 0, r.output
    out = r.stdout.strip()
    assert 0 < len(out) < len(TEXT)
    it = iter("".join(TEXT.split()))
    assert all(c in it for c in "".join(out.split()))  # a subsequence of the original's characters


def test_stdin_json_counts_and_force_tokens(model_dir):
    args = ["compress", "-m", model_dir, "--json", "--force-tokens", "\\n"]
    r = runner.invoke(app, [*args, "--no-drop-consecutive", "-"], input=TEXT)
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["origin_tokens"] > d["compressed_tokens"] > 0
    assert d["compressed_prompt"].count("\n") == TEXT.count("\n")
    # The default comes from the config (compressor.drop_consecutive: true): a line break
    # with no kept word since the previous one is dropped.
    r = runner.invoke(app, [*args, "-"], input=TEXT)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["compressed_prompt"].count("\n") < TEXT.count("\n")


def test_config_file_supplies_the_defaults(model_dir, tmp_path):
    """compress resolves the config like every other command: -c file < flags."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"compressor:\n  model: {model_dir}\n  rate: 0.3\n", encoding="utf-8")
    by_file = runner.invoke(app, ["compress", "-c", str(cfg), "--json", "-"], input=TEXT)
    by_flag = runner.invoke(
        app, ["compress", "-m", model_dir, "--rate", "0.3", "--json", "-"], input=TEXT
    )
    default = runner.invoke(app, ["compress", "-m", model_dir, "--json", "-"], input=TEXT)
    assert by_file.exit_code == by_flag.exit_code == default.exit_code == 0, by_file.output
    assert json.loads(by_file.stdout) == json.loads(by_flag.stdout)
    assert json.loads(by_file.stdout) != json.loads(default.stdout)  # default rate 0.5
    over = runner.invoke(
        app, ["compress", "-c", str(cfg), "--rate", "0.6", "--json", "-"], input=TEXT
    )
    assert (
        json.loads(over.stdout)["compressed_tokens"]
        > json.loads(by_file.stdout)["compressed_tokens"]
    )


def test_jsonl_batch(model_dir, tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text(
        json.dumps({"text": TEXT, "id": 1})
        + "\n\n"
        + json.dumps({"prompt": "Short text here."})
        + "\n"
    )
    r = runner.invoke(app, ["compress", "-m", model_dir, "--jsonl", "--target-token", "20", str(f)])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.stdout.strip().splitlines()]
    assert [x.get("id") for x in lines] == [1, None]
    assert all("compressed_prompt" in x and float(x["ratio"].rstrip("x")) >= 1 for x in lines)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--rate", "0.5", "--threshold", "0.5"], "mutually exclusive"),
        (["--model", "/nonexistent/dir/model"], "does not exist"),
        (["missing-file.txt"], "does not exist"),
    ],
)
def test_user_errors_are_one_line(model_dir, args, match):
    full = ["compress", *([] if "--model" in args else ["-m", model_dir]), *args]
    r = runner.invoke(app, full, input="x")
    assert r.exit_code != 0
    assert (
        isinstance(r.exception, UserError)
        and match in str(r.exception)
        and "\n" not in str(r.exception)
    )


def test_bad_jsonl_line(model_dir, tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(UserError, match=":2:"):
        compress(file=str(f), model=model_dir, jsonl=True)
