"""Validation inside ``train`` (``train.validation``): the pure rules, and a tiny real run
against the loopback teacher that scores a held-apart split and keeps its best point."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tacorl_offline.config import resolve
from tacorl_offline.errors import UserError
from tacorl_offline.fill import run_fill
from tacorl_offline.training.validation import (
    ValPoint,
    best_point,
    due,
    gain_interval,
    mean_score,
    stale,
)
from tacorl_offline.warehouse import Warehouse
from tests.helpers import ingest_file, prepare, q, train, train_killed_after, write_data


def _p(step: int, score: float, scored: int = 5, prompts: int = 5, low: float = 0.01) -> ValPoint:
    return ValPoint(step, score, scored, prompts, paid=0, hits=0, gain_low=low)


def test_due_at_start_every_n_and_at_the_end() -> None:
    assert [s for s in range(0, 26) if due(s, 10, 25)] == [0, 10, 20, 25]
    assert [s for s in range(0, 5) if due(s, 1, 4)] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("select", ["best", "significant"])
def test_best_point_is_the_highest_complete_and_the_earliest_on_a_tie(select: str) -> None:
    assert best_point([], select) is None
    pts = [_p(0, 0.5), _p(10, 0.7), _p(20, 0.7), _p(30, 0.6)]
    assert best_point(pts, select).step == 10  # a tie: the earlier step
    assert best_point(list(reversed(pts)), select).step == 10  # list order does not matter
    # the start model wins when no step beats it
    assert best_point([_p(0, 0.8), _p(10, 0.8), _p(20, 0.79)], select).step == 0
    # an incomplete point (a failed call) never competes, however high
    assert best_point([_p(0, 0.5), _p(10, 0.9, scored=4)], select).step == 0
    assert best_point([_p(0, math.nan, scored=0)], select) is None


def test_significant_keeps_the_start_unless_a_step_beats_it_clearly() -> None:
    pts = [
        _p(0, 0.842),
        _p(10, 0.816, low=-0.04),
        _p(20, 0.849, low=-0.012),
        _p(30, 0.848, low=-0.01),
    ]
    assert best_point(pts, "best").step == 20
    assert best_point(pts, "significant").step == 0
    # a clear gain is taken, the highest of the clear ones
    pts = [_p(0, 0.72), _p(10, 0.79, low=0.04), _p(20, 0.80, low=-0.001), _p(30, 0.78, low=0.03)]
    assert best_point(pts, "significant").step == 10
    # no interval (step 0 had no complete point): a later point cannot prove a gain
    assert best_point([_p(10, 0.9, low=math.nan)], "significant") is None
    assert best_point([_p(10, 0.9, low=math.nan)], "best").step == 10


def test_stale_counts_complete_points_after_the_best() -> None:
    # the tuned-SFT runs of bench/README.md: no step beats the start clearly
    pts = [_p(0, 0.914), _p(10, 0.884, low=-0.06), _p(20, 0.895, low=-0.045)]
    assert not stale(pts[:1], "significant", 1)
    assert stale(pts[:2], "significant", 1)  # step 10 did not replace step 0: stop there
    assert not stale(pts[:2], "significant", 2) and stale(pts, "significant", 2)
    assert not stale(pts, "significant", None)  # no patience: never
    # a new best resets the count; a failed point (incomplete) is no evidence either way
    pts = [_p(0, 0.72), _p(10, 0.79, low=0.04), _p(20, 0.78, scored=4), _p(30, 0.80, low=0.05)]
    assert not stale(pts, "significant", 1)
    assert not stale(pts[:3], "significant", 1)
    assert stale([*pts, _p(40, 0.79, low=0.04)], "significant", 1)
    # "best" counts a higher mean as a new best however small; "significant" does not
    pts = [_p(0, 0.80), _p(10, 0.81, low=-0.01)]
    assert not stale(pts, "best", 1) and stale(pts, "significant", 1)
    assert not stale([_p(0, math.nan, scored=0), _p(10, 0.5, low=math.nan)], "significant", 1)


def test_gain_interval_is_the_paired_bootstrap_of_the_difference() -> None:
    start = [0.0, 1.0] * 50
    lo, hi = gain_interval([v + 0.1 for v in start], start)  # every prompt gains exactly 0.1
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    lo, hi = gain_interval([1.0 - v for v in start], start)  # half gain 1, half lose 1
    assert lo < 0 < hi


def test_mean_score_leaves_out_nan() -> None:
    assert mean_score([0.5, math.nan, 1.0]) == (0.75, 2)
    m, n = mean_score([math.nan])
    assert math.isnan(m) and n == 0


def test_validation_split_cannot_be_the_training_split() -> None:
    with pytest.raises(UserError, match="'train' is the split the run trains on"):
        resolve(None, environ={}, overrides={"train.validation.split": "train"})
    with pytest.raises(UserError, match=r"train\.validation\.every"):
        resolve(None, environ={}, overrides={"train.validation.every": 0})
    with pytest.raises(UserError, match=r"train\.validation\.patience"):
        resolve(None, environ={}, overrides={"train.validation.patience": 0})


def _with_val(tmp_path, loopback_server, tiny_bert, **train_kw):
    """Train split (12 prompts) and a filled val split (6 other prompts)."""
    cfg = prepare(
        tmp_path,
        loopback_server,
        tiny_bert,
        **{"validation.split": "val", "validation.every": 2, **train_kw},
    )
    vcfg = cfg.model_copy(deep=True)
    vcfg.data.split = "val"
    ingest_file(vcfg, write_data(tmp_path / "v.json", n=6, seed=7))
    asyncio.run(run_fill(vcfg, warehouse=Warehouse(cfg.warehouse)))
    return cfg


def test_run_scores_val_keeps_the_best_point_and_a_rerun_pays_nothing(
    tmp_path, loopback_server, tiny_bert
) -> None:
    cfg = _with_val(tmp_path, loopback_server, tiny_bert, max_steps=5, checkpoint_every=2)
    loopback_server.reset()
    s = train(cfg)
    assert [p.step for p in s.validation] == [0, 2, 4, 5]
    assert all(p.prompts == 6 and p.complete for p in s.validation)
    # every validation answer was paid once, counted in the run's spend
    val_paid = sum(p.paid for p in s.validation)
    assert val_paid > 0 and s.spend_validation.calls == val_paid
    assert loopback_server.calls == s.spend.calls
    assert s.spend.calls == val_paid + sum(
        r[0] for r in q(cfg, "SELECT calls FROM steps WHERE run_id = ?", [s.run_id])
    )
    # the final model is the best point's model
    best = best_point(s.validation, "significant")
    assert s.best_step == best.step
    assert s.validation[0].gain_low == 0.0 and len(s.validation[0].scores) == 6
    assert all(p.gain_low <= p.score - s.validation[0].score <= p.gain_high for p in s.validation)
    kept = json.loads((s.run_dir / "best" / "point.json").read_text())
    assert kept["step"] == best.step
    a = load_file(str(s.final_model / "model.safetensors"))
    b = load_file(str(s.run_dir / "best" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = load_file(str(tiny_bert / "model.safetensors"))
    same_as_start = all(torch.equal(a[k], start[k]) for k in start if k in a)
    assert same_as_start == (best.step == 0)
    stored = json.loads((s.run_dir / "validation.json").read_text())
    assert stored["split"] == "val" and [p["step"] for p in stored["points"]] == [0, 2, 4, 5]

    # the same run again: every validation answer is replayed, none paid
    loopback_server.reset()
    s2 = train(cfg)
    assert loopback_server.calls == 0 and s2.spend_validation.calls == 0
    assert [(p.step, p.score) for p in s2.validation] == [(p.step, p.score) for p in s.validation]


def test_keep_best_off_ends_with_the_last_step(tmp_path, loopback_server, tiny_bert) -> None:
    cfg = _with_val(tmp_path, loopback_server, tiny_bert, max_steps=2, checkpoint_every=2)
    cfg.train.validation.keep_best = False
    s = train(cfg)
    assert [p.step for p in s.validation] == [0, 2] and s.best_step is None
    assert not (s.run_dir / "best").exists()
    last = load_file(
        str(s.run_dir / "checkpoints" / "step-0000002" / "model" / "model.safetensors")
    )
    final = load_file(str(s.final_model / "model.safetensors"))
    assert all(torch.equal(last[k], final[k]) for k in last)


def test_killed_run_resumes_with_its_points(tmp_path, loopback_server, tiny_bert) -> None:
    cfg = _with_val(tmp_path, loopback_server, tiny_bert, max_steps=4, checkpoint_every=2)
    ref = train(cfg)
    run_id = train_killed_after(cfg, 3)  # points 0 and 2 are scored; step 3 is lost
    assert [
        p["step"]
        for p in json.loads((ref.run_dir.parent / run_id / "validation.json").read_text())["points"]
    ] == [0, 2]
    loopback_server.reset()
    resumed = train(cfg, resume=run_id)
    assert loopback_server.calls == 0  # warm warehouse: steps and points replay
    assert [(p.step, p.score) for p in resumed.validation] == [
        (p.step, p.score) for p in ref.validation
    ]
    assert resumed.best_step == ref.best_step
    a = load_file(str(ref.final_model / "model.safetensors"))
    b = load_file(str(resumed.final_model / "model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_patience_stops_where_the_full_run_went_stale_and_pays_nothing_more(
    tmp_path, loopback_server, tiny_bert
) -> None:
    cfg = _with_val(tmp_path, loopback_server, tiny_bert, max_steps=6, checkpoint_every=1)
    cfg.train.validation.every = 1
    full = train(cfg)  # every step, every point
    assert full.stopped_early is None and [p.step for p in full.validation] == list(range(7))
    stop = next(k for k in range(7) if stale(full.validation[: k + 1], "significant", 2))
    assert stop < 6, "the tiny run never went stale: the test would not test patience"

    cfg.train.validation.patience = 2
    loopback_server.reset()
    s = train(cfg)  # the same seed: the same steps, replayed
    assert loopback_server.calls == 0
    assert s.stopped_early == stop and s.steps == stop
    assert [(p.step, p.score) for p in s.validation] == [
        (p.step, p.score) for p in full.validation[: stop + 1]
    ]
    best = best_point(s.validation, "significant")
    assert s.best_step == best.step
    assert json.loads((s.run_dir / "best" / "point.json").read_text())["step"] == best.step
    assert (s.run_dir / "checkpoints" / f"step-{stop:07d}").is_dir()
    final = load_file(str(s.final_model / "model.safetensors"))
    kept = load_file(str(s.run_dir / "best" / "model" / "model.safetensors"))
    assert all(torch.equal(final[k], kept[k]) for k in final)

    # a run that ends at that step did not stop early (its schedule differs: some new answers)
    cfg.train.max_steps = stop
    last = train(cfg)
    assert last.steps == stop and last.stopped_early is None
    cfg.train.max_steps = 6
    loopback_server.reset()

    # killed at that step before its point was scored (patience 2: stop >= 2, so a checkpoint
    # is on disk): the resumed run stops where it would have
    run_id = train_killed_after(cfg, stop)
    resumed = train(cfg, resume=run_id)
    assert resumed.stopped_early == stop and loopback_server.calls == 0
    assert [p.step for p in resumed.validation] == [p.step for p in s.validation]
    assert resumed.best_step == s.best_step
    assert all(
        torch.allclose(final[k], v, atol=1e-6)
        for k, v in load_file(str(resumed.final_model / "model.safetensors")).items()
    )


def test_unfilled_validation_split_is_one_clear_error(tmp_path, loopback_server, tiny_bert) -> None:
    cfg = prepare(tmp_path, loopback_server, tiny_bert, **{"validation.split": "val"})
    with pytest.raises(UserError, match=r"train\.validation\.split 'val': no prompts") as e:
        train(cfg)
    assert "teacher-fill --split val" in str(e.value)
