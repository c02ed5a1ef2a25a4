"""The user's path through the CLI: --version, ingest from data.path, --dataset/--split on
every phase, train printing where the model went, -m run:<id>/latest, a finished run's
--resume, runs prune. Real tiny models, a real warehouse, the loopback teacher."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from tacorl_offline import __version__
from tacorl_offline.cli import app
from tests.conftest import write_upstream_json
from tests.helpers import write_data

runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env, catch_exceptions=False)


def test_version() -> None:
    r = invoke("--version")
    assert r.exit_code == 0 and r.output.strip() == f"tacorl-offline {__version__}"


def test_ingest_takes_its_path_from_the_config(tmp_path: Path) -> None:
    data = write_upstream_json(tmp_path / "d.json", 4)
    wh = str(tmp_path / "w.duckdb")
    ours = tmp_path / "ours.yaml"
    ours.write_text(yaml.safe_dump({"data": {"path": str(data), "dataset": "mine"}}))
    r = invoke("ingest", "-c", str(ours), "-w", wh)
    assert r.exit_code == 0 and "ingested 4 records into mine/train" in r.output
    upstream = tmp_path / "up.yaml"  # upstream train_reinforce.yaml: data.train_file_path
    upstream.write_text(
        yaml.safe_dump(
            {"data": {"train_file_path": str(data)}, "hyperparams": {"train_batch_size": 2}}
        )
    )
    r = invoke("ingest", "-c", str(upstream), "-w", wh, "--dataset", "up")
    assert r.exit_code == 0 and "ingested 4 records into up/train" in r.output
    r = invoke("ingest", "-w", wh)
    assert r.exit_code == 2 and "no file to ingest: pass PATH, or set data.path" in r.output


def test_phase_flags_and_the_only_dataset(tmp_path: Path, loopback_server, tiny_bert) -> None:
    wh = str(tmp_path / "w.duckdb")
    data = write_data(tmp_path / "d.json", n=8)
    cfg = tmp_path / "my.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data": {"dataset": "sample-summarization"},  # the config the user started from
                "teacher": {
                    "backend": "openai",
                    "model": "gpt-4o-mini",
                    "base_url": loopback_server.base_url,
                },
                "compressor": {"model": str(tiny_bert)},
                "train": {
                    "max_steps": 2,
                    "batch_size": 4,
                    "output_dir": str(tmp_path / "runs" / "task"),
                    "reward": {"metric": "rougeL"},
                },
            }
        )
    )
    c = ["-c", str(cfg), "-w", wh]
    assert invoke("ingest", str(data), "--dataset", "mine", "--split", "train", *c).exit_code == 0
    r = invoke("teacher-fill", *c, "--no-progress")  # verbatim: follows the ingested dataset
    assert r.exit_code == 0, r.output
    assert "using dataset 'mine'" in r.output and "run ingest" not in r.output
    r = invoke("teacher-fill", *c, "--no-progress", "--dataset", "nope")
    assert r.exit_code == 2 and "no dataset 'nope'" in r.output and "mine (train: 8)" in r.output
    r = invoke("train", *c, "--no-progress", "--split", "dev")
    assert r.exit_code == 2 and "dataset 'mine' has no split 'dev'" in r.output

    r = invoke("train", *c, "--no-progress")
    assert r.exit_code == 0, r.output
    (line,) = [ln for ln in r.output.splitlines() if ln.startswith("model saved to ")]
    final = Path(line.removeprefix("model saved to "))
    assert (final / "model.safetensors").is_file() and final.parent.parent.name == "task"
    run_id = final.parent.name

    for ref in ("latest", f"run:{run_id}"):  # both name the run's final model
        r = invoke("evaluate", *c, "-m", ref, "--dataset", "mine", "--baselines", "lead")
        assert r.exit_code == 0, r.output
        assert "final" in r.output
    # the same model twice is one system: refused in one line
    r = invoke("evaluate", *c, "-m", "latest", "-m", f"run:{run_id}")
    assert r.exit_code == 2 and "pass each model once" in r.output
    r = invoke("evaluate", *c, "-m", f"runs/{run_id}/final")  # the README's old path
    assert r.exit_code == 2 and str(final) in r.output

    r = invoke("train", *c, "--resume", run_id, "--no-progress")
    assert r.exit_code == 0 and f"run {run_id} is already finished" in r.output
    assert "error" not in r.output

    r = invoke("runs", "prune", *c, "--dry-run")
    assert (
        r.exit_code == 0 and "would remove" in r.output and (final.parent / "checkpoints").is_dir()
    )
    r = invoke("runs", "prune", *c)
    assert r.exit_code == 0 and not (final.parent / "checkpoints").exists()
    assert (final / "model.safetensors").is_file()
    r = invoke("report", "run", run_id, "-w", wh, "-f", "json", "--no-plots")
    assert json.loads(r.stdout)["dataset"] == "mine"
