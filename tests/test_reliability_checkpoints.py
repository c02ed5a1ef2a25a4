"""Issue 10 items 6 and 7: checkpoints are atomic, resume finds them, resume writes where told."""

from __future__ import annotations

import logging
import shutil

import pytest

from tacorl_offline.errors import UserError
from tacorl_offline.warehouse import Warehouse
from tests.helpers import prepare, q, train


def _ckpts(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def test_keep_checkpoints_prunes_old_ones_and_orphans(tmp_path, loopback_server, tiny_bert):
    cfg = prepare(tmp_path, loopback_server, tiny_bert, max_steps=4, checkpoint_every=1)
    s = train(cfg)
    # Default keep_checkpoints = 2: the two newest, the pointer, nothing else.
    assert _ckpts(s.run_dir) == ["latest", "step-0000003", "step-0000004"]

    cfg.budget.max_calls = 0  # a run stopped after its first step
    s1 = train(cfg)
    assert s1.budget_stopped and _ckpts(s1.run_dir) == ["latest", "step-0000001"]
    orphan = s1.run_dir / "checkpoints" / ".step-0000002.tmp"  # a save killed midway
    orphan.mkdir()
    (orphan / "junk").write_text("x")
    cfg.budget.max_calls = None
    cfg.train.keep_checkpoints = 1
    s2 = train(cfg, resume=s1.run_id)
    assert s2.steps == 3 and s2.final_model is not None
    assert _ckpts(s1.run_dir) == ["latest", "step-0000004"]  # orphan gone, pruned to 1


def test_resuming_a_finished_run_rewrites_nothing(tmp_path, loopback_server, tiny_bert):
    cfg = prepare(tmp_path, loopback_server, tiny_bert, max_steps=2, checkpoint_every=1)
    s = train(cfg)
    ck = s.run_dir / "checkpoints"
    before = {p.name: p.stat().st_mtime_ns for p in ck.iterdir()}
    final_before = (s.final_model / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(UserError) as e:  # "already finished": exit 0, nothing written
        train(cfg, resume=s.run_id)
    assert e.value.exit_code == 0
    assert {p.name: p.stat().st_mtime_ns for p in ck.iterdir()} == before
    assert (s.final_model / "model.safetensors").stat().st_mtime_ns == final_before


def test_latest_naming_a_missing_checkpoint_falls_back(tmp_path, loopback_server, tiny_bert):
    """A kill between deleting and renaming left `latest` naming nothing: resume still works."""
    cfg = prepare(tmp_path, loopback_server, tiny_bert, max_steps=4, checkpoint_every=1)
    train(cfg)  # warms the warehouse: the same seed samples the same masks, all replayed
    cfg.budget.max_calls = 0  # each invocation stops after one step
    s = train(cfg)
    s_mid = train(cfg, resume=s.run_id)
    assert s.budget_stopped and s_mid.budget_stopped
    ck = s.run_dir / "checkpoints"
    assert _ckpts(s.run_dir) == ["latest", "step-0000001", "step-0000002"]
    shutil.rmtree(ck / (ck / "latest").read_text().strip())
    cfg.budget.max_calls = None
    s3 = train(cfg, resume="latest")  # before: FileNotFoundError, on every later resume
    assert s3.run_id == s.run_id and s3.resumed_from == 1 and s3.steps == 3


def test_resume_latest_skips_runs_without_a_checkpoint(
    tmp_path, loopback_server, tiny_bert, caplog
):
    cfg = prepare(tmp_path, loopback_server, tiny_bert, max_steps=3, checkpoint_every=1)
    cfg.budget.max_calls = 0
    s = train(cfg)
    assert s.budget_stopped
    # A newer run killed before its first checkpoint: a row, no directory.
    with Warehouse(cfg.warehouse).transaction() as con:
        con.execute(
            "INSERT INTO runs (run_id, kind, status, started_at, dataset, split, teacher_key, config)"
            " SELECT 'train-killed', kind, 'interrupted', started_at + INTERVAL 1 HOUR, dataset,"
            " split, teacher_key, config FROM runs WHERE run_id = ?",
            [s.run_id],
        )
    cfg.budget.max_calls = None
    with caplog.at_level(logging.WARNING, logger="tacorl_offline"):
        s2 = train(cfg, resume="latest")
    assert s2.run_id == s.run_id and s2.final_model is not None
    assert any("train-killed" in r.getMessage() for r in caplog.records)


def test_resume_writes_where_it_is_told(tmp_path, loopback_server, tiny_bert):
    cfg = prepare(tmp_path, loopback_server, tiny_bert, max_steps=3, checkpoint_every=1)
    cfg.budget.max_calls = 0
    s = train(cfg)
    assert s.budget_stopped
    moved = tmp_path / "moved"
    shutil.move(str(tmp_path / "runs"), moved)
    cfg.budget.max_calls = None
    cfg.train.output_dir = str(moved)  # --output-dir
    s2 = train(cfg, resume=s.run_id)
    assert s2.final_model == moved / s.run_id / "final" and s2.final_model.is_dir()
    assert not (tmp_path / "runs").exists()  # before: the original's final/ was rewritten
    assert q(cfg, "SELECT status FROM runs WHERE run_id = ?", [s.run_id]) == [("finished",)]
