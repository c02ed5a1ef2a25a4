"""`tacorl-offline sft` end to end: labels into the warehouse, a model train can start from."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import yaml
from typer.testing import CliRunner

from tacorl_offline.cli import app
from tacorl_offline.compressor import Compressor
from tests.conftest import warehouse_snapshot, write_upstream_json

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def _setup(tmp_path: Path, tiny_bert: Path, **sft) -> tuple[Path, Path]:
    wh = tmp_path / "w.duckdb"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "warehouse": str(wh),
                "compressor": {"model": str(tiny_bert), "rate": 0.5},
                "sft": {
                    "epochs": 2,
                    "batch_size": 4,
                    "lr": 1e-3,
                    "eval_share": 0.25,
                    "output_dir": str(tmp_path / "sft"),
                    **sft,
                },
            }
        )
    )
    data = write_upstream_json(tmp_path / "d.json", 12, words=40)
    assert invoke("ingest", str(data), "-c", str(cfg)).exit_code == 0
    assert invoke("teacher-fill", "-c", str(cfg), "--no-progress").exit_code == 0
    return cfg, wh


def test_sft_from_teacher_labels_writes_labels_and_a_loadable_model(tmp_path, tiny_bert) -> None:
    cfg, wh = _setup(tmp_path, tiny_bert)
    r = invoke("sft", "-c", str(cfg), "--no-progress")
    assert r.exit_code == 0, r.output
    assert "held-out label F1" in r.output
    con = duckdb.connect(str(wh), read_only=True)
    try:
        run_id, status, kind = con.execute(
            "SELECT run_id, status, kind FROM runs WHERE kind = 'sft'"
        ).fetchone()
        n, heldout, kept_share = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE heldout), avg(n_kept / n_words) FROM sft_labels WHERE run_id = ?",
            [run_id],
        ).fetchone()
        # the lead-3 teacher answer of each prompt is what the labels keep, in the text's words
        sample = con.execute(
            "SELECT s.kept_text, p.text FROM sft_labels s JOIN prompts p USING (prompt_id) LIMIT 1"
        ).fetchone()
    finally:
        con.close()
    assert status == "finished" and kind == "sft"
    # the rate caps the labelled tokens (0.5); as a share of words it is close to that
    assert n == 12 and 0 < heldout < 12 and 0.2 < kept_share < 0.6
    assert sample[1].startswith(sample[0].split(" ")[0])
    model = tmp_path / "sft" / run_id / "final"
    comp = Compressor.from_pretrained(model)
    assert comp.compress(["alpha beta gamma delta."], rate=0.5)[0].compressed_prompt
    assert (tmp_path / "sft" / run_id / "checkpoints" / "epoch-2").is_dir()


def test_sft_from_a_label_file_and_bad_inputs(tmp_path, tiny_bert) -> None:
    cfg, wh = _setup(tmp_path, tiny_bert)
    before = warehouse_snapshot(wh)
    r = invoke("sft", "-c", str(cfg), "--source", "file", "--no-progress")
    assert r.exit_code == 2 and "labels_path" in r.output and "Traceback" not in r.output
    bad = tmp_path / "bad.json"
    bad.write_text('[{"words": ["a", "b"], "labels": [1]}]')
    r = invoke("sft", "-c", str(cfg), "--source", "file", "--labels", str(bad), "--no-progress")
    assert r.exit_code == 2 and "as long as 'words'" in r.output
    assert warehouse_snapshot(wh) == before
    # an LLMLingua-2 label file (a mapping of records), matched by the original text
    texts = json.loads((tmp_path / "d.json").read_text())
    recs = {}
    for k, v in texts.items():
        words = v["original_prompt"].split()
        recs[k] = {
            "origin": v["original_prompt"],
            "words": words,
            "labels": [i % 2 == 0 for i in range(len(words))],
        }
    good = tmp_path / "labels.json"
    good.write_text(json.dumps(recs))
    r = invoke("sft", "-c", str(cfg), "--source", "file", "--labels", str(good), "--no-progress")
    assert r.exit_code == 0, r.output
    con = duckdb.connect(str(wh), read_only=True)
    try:
        src, n = con.execute(
            "SELECT any_value(source), count(*) FROM sft_labels WHERE source = 'file'"
        ).fetchone()
    finally:
        con.close()
    assert src == "file" and n == 12


def test_sft_with_nothing_held_out_says_so_instead_of_nan(tmp_path, tiny_bert) -> None:
    cfg, wh = _setup(tmp_path, tiny_bert, eval_share=0.0)
    r = invoke("sft", "-c", str(cfg), "--no-progress")
    assert r.exit_code == 0, r.output
    assert "nan" not in r.output
    assert "held-out label F1 - (sft.eval_share 0: none held out)" in r.output
    con = duckdb.connect(str(wh), read_only=True)
    try:
        message, heldout = con.execute(
            "SELECT r.message, (SELECT count(*) FILTER (WHERE heldout) FROM sft_labels) "
            "FROM runs r WHERE kind = 'sft'"
        ).fetchone()
    finally:
        con.close()
    assert heldout == 0 and "nan" not in message
