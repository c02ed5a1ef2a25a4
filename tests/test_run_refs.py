"""Run references (-m run:<id>, -m latest, a wrong runs/<run>/final) and `runs prune`, on real
training runs of a tiny BERT against a loopback teacher."""

from __future__ import annotations

from pathlib import Path

import pytest

from tacorl_offline.errors import UserError
from tacorl_offline.model_ref import resolve_model_ref
from tacorl_offline.prune import apply_prune, plan_prune
from tacorl_offline.warehouse import Warehouse
from tests.helpers import prepare, q, train, train_killed_after


@pytest.fixture
def two_runs(tmp_path, loopback_server, tiny_bert):
    """A finished run, then a newer one that crashed after step 4 (checkpoint every 2)."""
    cfg = prepare(tmp_path, loopback_server, tiny_bert, max_steps=6, checkpoint_every=2)
    done = train(cfg)

    crashed = train_killed_after(cfg, 5)
    assert q(cfg, "SELECT run_id FROM runs WHERE kind = 'train' AND status = 'failed'") == [
        (crashed,)
    ]
    return cfg, done, crashed


def test_model_references_resolve_through_the_warehouse(two_runs, monkeypatch) -> None:
    cfg, done, crashed = two_runs
    w = Warehouse(cfg.warehouse)
    assert resolve_model_ref(f"run:{done.run_id}", w) == str(done.final_model)
    assert resolve_model_ref(f"run:{done.run_id[:10]}", w) == str(done.final_model)
    with pytest.raises(UserError) as ei:  # the latest run crashed: it has no final model
        resolve_model_ref("latest", w)
    assert f"run {crashed} has no final model" in str(ei.value)
    assert f"--resume {crashed}" in str(ei.value)
    # The README's old path (runs/<run>/final) names the run: the error gives the real one.
    with pytest.raises(UserError) as ei:
        resolve_model_ref(f"runs/{done.run_id}/final", w)
    assert str(done.final_model) in str(ei.value) and f"run:{done.run_id}" in str(ei.value)
    assert resolve_model_ref("minilm", w) == "minilm"


def test_prune_removes_checkpoints_not_models(two_runs) -> None:
    cfg, done, crashed = two_runs
    w = Warehouse(cfg.warehouse)
    root = Path(cfg.train.output_dir)
    orphan = root / "train-0123456789ab"
    (orphan / "final").mkdir(parents=True)
    (orphan / "final" / "x.bin").write_bytes(b"x" * 100)
    ck = root / crashed / "checkpoints"
    latest = (ck / "latest").read_text().strip()
    older = sorted(d.name for d in ck.iterdir() if d.is_dir() and d.name != latest)
    assert older  # step 2 was checkpointed before step 4

    items = plan_prune(w, [root])
    removed = {it.path for it in items if it.remove}
    assert root / done.run_id / "checkpoints" in removed
    assert {ck / n for n in older} <= removed and ck / latest not in removed
    assert orphan not in removed and any(it.path == orphan for it in items)
    freed = apply_prune(items)
    assert freed > 0
    assert not (root / done.run_id / "checkpoints").exists()
    assert (done.final_model / "model.safetensors").is_file()  # the model stays
    assert (ck / latest / "model").is_dir() and orphan.is_dir()
    # The crashed run still resumes from the checkpoint prune kept.
    resumed = train(cfg, resume=crashed)
    assert resumed.final_model is not None
    assert q(cfg, "SELECT status FROM runs WHERE run_id = ?", [crashed]) == [("finished",)]
    # A second prune finds the resumed run finished; --orphans takes the unknown directory.
    apply_prune(plan_prune(w, [root], orphans=True))
    assert not orphan.exists() and not ck.exists()
    assert (resumed.final_model / "model.safetensors").is_file()
