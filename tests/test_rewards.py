"""Reward families: hand-written tables, boundaries and NaN handling."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from tacorl_offline.config import Config, RewardConfig, TrainConfig
from tacorl_offline.rewards import (
    RewardSettings,
    compression_ratio,
    grpo_reward,
    needs_teacher,
    pcrl_reward,
    score,
    taco_length_gate,
    taco_reward,
)

NAN = float("nan")


def settings(rate: float = 0.5, tolerance_tokens: int = 30, **reward) -> RewardSettings:
    return RewardSettings(RewardConfig(**reward), rate, tolerance_tokens)


def same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)


# ---------------------------------------------------------------------------- taco gate

# (n_orig, n_comp, rate, tolerance, expected); defaults over_ratio 0.1, -0.4 / -0.1.
TACO_GATE = [
    (100, 50, 0.5, 30, None),  # on target
    (100, 10, 0.5, 30, -0.4),  # exactly 10%: over-compressed (inclusive)
    (100, 11, 0.5, 30, -0.1),  # just above 10%, far from target
    (100, 9, 0.5, 30, -0.4),
    (100, 0, 0.5, 30, -0.4),
    (100, 20, 0.5, 30, None),  # |20 - 50| == 30: at the tolerance edge is inside
    (100, 80, 0.5, 30, None),  # upper edge
    (100, 19, 0.5, 30, -0.1),  # one token outside
    (100, 81, 0.5, 30, -0.1),
    (100, 100, 0.5, 30, -0.1),  # not compressed at all
    (100, 20, 0.3, 10, None),  # 0.3 * 100 == 30.000000000000004: edge still inside
    (100, 40, 0.3, 10, None),
    (100, 41, 0.3, 10, -0.1),
    (30, 3, 0.5, 30, -0.4),  # 0.1 * 30 == 3.0000000000000004
    (10, 1, 0.5, 0, -0.4),  # tiny prompt
    (10, 5, 0.5, 0, None),  # zero tolerance: only exactly on target
    (10, 6, 0.5, 0, -0.1),
    (1000, 110, 0.1, 30, None),  # rate 0.1: 100 over-compressed, 110 inside
    (1000, 100, 0.1, 30, -0.4),  # over-compression wins over "inside tolerance"
    (0, 0, 0.5, 30, NAN),  # empty original: unscorable, no call
]


@pytest.mark.parametrize(("n_orig", "n_comp", "rate", "tol", "expected"), TACO_GATE)
def test_taco_length_gate(n_orig, n_comp, rate, tol, expected):
    got = taco_length_gate(n_orig, n_comp, rate=rate, tolerance_tokens=tol)
    assert same(got, expected), got


@pytest.mark.parametrize(
    ("kw", "n_comp", "expected"),
    [
        ({"over_ratio": 0.2}, 20, -0.4),
        ({"over_ratio": 0.2}, 21, None),
        ({"over_ratio": 0.0}, 20, None),
        ({"over_ratio": 0.0}, 0, -0.4),
        ({"over_reward": -1.0}, 5, -1.0),
        ({"outside_reward": -0.5}, 90, -0.5),
    ],
)
def test_taco_length_gate_settings(kw, n_comp, expected):
    got = taco_length_gate(100, n_comp, rate=0.5, tolerance_tokens=30, **kw)
    assert same(got, expected)


def test_taco_length_gate_rejects_negative_counts():
    with pytest.raises(ValueError, match="n_comp"):
        taco_length_gate(10, -1, rate=0.5, tolerance_tokens=3)


@pytest.mark.parametrize(
    ("gate", "metric", "expected"),
    [
        (None, 0.73, 0.73),
        (None, 0.0, 0.0),
        (-0.4, 0.9, -0.4),
        (-0.1, NAN, -0.1),  # decided by length: a failed call does not matter
        (None, NAN, NAN),  # teacher failure: unscorable, never upstream's +0.4
        (NAN, 0.5, NAN),
    ],
)
def test_taco_reward(gate, metric, expected):
    assert same(taco_reward(gate, metric), expected)


# ---------------------------------------------------------------------------- pcrl


@pytest.mark.parametrize(
    ("n_orig", "n_comp", "rouge_l", "kw", "expected"),
    [
        (100, 60, 0.95, {}, 0.4),
        (100, 60, 0.9, {}, 0.4),  # exactly tau: passes (upstream used >)
        (100, 60, 0.8999, {}, -0.01),
        (100, 60, 0.0, {}, -0.01),
        (100, 100, 1.0, {}, 0.0),
        (100, 0, 1.0, {}, 1.0),
        (100, 60, NAN, {}, NAN),
        (100, 60, 0.5, {"tau": 0.5, "lam": -1.0}, 0.4),
        (100, 60, 0.4, {"tau": 0.5, "lam": -1.0}, -1.0),
        (110, 70, 0.95, {"n_fixed": 10}, 0.4),  # 1 - 60/100
        (10, 10, 0.95, {"n_fixed": 10}, 0.0),  # nothing compressible: guarded
        (10, 10, 0.5, {"n_fixed": 10}, -0.01),
        (100, 110, 0.95, {}, -0.1),  # came out longer: negative ratio
    ],
)
def test_pcrl_reward(n_orig, n_comp, rouge_l, kw, expected):
    assert same(pcrl_reward(n_orig, n_comp, rouge_l, **kw), expected)


@pytest.mark.parametrize(
    ("n_orig", "n_comp", "n_fixed", "expected"),
    [(100, 25, 0, 0.75), (100, 100, 0, 0.0), (0, 0, 0, 0.0), (5, 5, 10, 0.0), (20, 15, 10, 0.5)],
)
def test_compression_ratio(n_orig, n_comp, n_fixed, expected):
    assert compression_ratio(n_orig, n_comp, n_fixed) == pytest.approx(expected)


# ---------------------------------------------------------------------------- grpo


@pytest.mark.parametrize(
    ("correct", "similarity", "compression", "weights", "expected"),
    [
        (1.0, 1.0, 1.0, None, 1.0),
        (1.0, 0.0, 0.0, None, 0.5),
        (0.0, 1.0, 0.0, None, 0.35),
        (0.0, 0.0, 1.0, None, 0.15),
        (1.0, 0.5, 0.4, None, 0.5 + 0.175 + 0.06),
        (0.0, 0.0, -0.2, None, -0.03),
        (1.0, 0.5, 0.4, {"correct": 1.0}, 1.0),  # missing keys weigh 0
        (1.0, 0.5, 0.4, {"similarity": 2.0, "compression": 1.0}, 1.4),
        (NAN, 0.5, 0.4, None, NAN),
        (1.0, NAN, 0.4, None, NAN),
    ],
)
def test_grpo_reward(correct, similarity, compression, weights, expected):
    assert same(grpo_reward(correct, similarity, compression, weights), expected)


def test_grpo_reward_unknown_weight():
    with pytest.raises(ValueError, match=r"unknown grpo weight.*'reasoning'"):
        grpo_reward(1, 1, 1, {"reasoning": 0.2})


# ---------------------------------------------------------------------------- settings


def test_settings_from_config_pass_the_section_and_the_one_rate():
    cfg = Config(
        compressor={"rate": 0.4},
        train=TrainConfig(
            tolerance_tokens=12,
            reward=RewardConfig(
                metric="rougeL:0.5+bleu:0.5", over_compression_reward=-0.7, pcrl_tau=0.8
            ),
        ),
    )
    s = RewardSettings.from_config(cfg)
    assert s.reward is cfg.train.reward  # the config section itself, not a copy
    assert (s.rate, s.tolerance_tokens) == (0.4, 12)
    gates, _ = needs_teacher(s, [100, 100, 100], [5, 40, 60])
    assert gates == [-0.7, None, -0.1]  # over-compressed, inside c*n +- 12, outside


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"family": "ppo"}, "family"),
        ({"metric": "meteor"}, "unknown metric 'meteor'"),
        ({"family": "grpo", "grpo_weights": {"speed": 1.0}}, "unknown grpo weight"),
    ],
)
def test_reward_section_validates_up_front(kw, message):
    with pytest.raises(ValidationError, match=message):
        RewardConfig(**kw)


# ---------------------------------------------------------------------------- batch API


def test_needs_teacher_taco():
    s = settings()
    gates, mask = needs_teacher(s, [100, 100, 100, 0], [50, 10, 90, 0])
    assert gates[:3] == [None, -0.4, -0.1] and math.isnan(gates[3])
    assert mask == [True, False, False, False]


@pytest.mark.parametrize("family", ["pcrl", "grpo"])
def test_needs_teacher_other_families_always_ask(family):
    gates, mask = needs_teacher(settings(family=family), [100, 100, 0], [5, 100, 0])
    assert gates[:2] == [None, None] and math.isnan(gates[2])
    assert mask == [True, True, False]


def test_score_taco_batch():
    s = settings(metric="exact_match")
    batch = score(
        s,
        n_orig=[100, 100, 100, 100, 100, 100],
        n_comp=[50, 10, 90, 60, 40, 45],
        answers=["Paris", None, "ignored", None, "   ", "Lyon"],
        references=["paris.", "x", "x", "x", "x", None],
    )
    r = batch.rewards
    assert r[:3] == [1.0, -0.4, -0.1]
    assert all(math.isnan(v) for v in r[3:])  # failed call, empty answer, missing reference
    assert batch.short_circuited == [False, True, True, False, False, False]
    assert batch.unscorable == [False, False, False, True, True, True]
    assert batch.n_unscorable == 3
    assert batch.metrics[0] == {"exact_match": 1.0, "metric": 1.0}
    assert batch.metrics[1] == {} and batch.metrics[3] == {}
    assert batch.kept_ratio == pytest.approx([0.5, 0.1, 0.9, 0.6, 0.4, 0.45])


def test_score_taco_weighted_metric():
    s = settings(metric="squad_f1:0.5+exact_match:0.5")
    batch = score(s, [100], [50], ["the quick brown fox"], ["quick fox"])
    assert batch.rewards == [pytest.approx(0.4)]  # 0.5 * 0.8 + 0.5 * 0
    assert batch.metrics[0]["squad_f1"] == pytest.approx(0.8)


def test_score_pcrl_batch():
    s = settings(family="pcrl", pcrl_tau=0.9, pcrl_lambda=-0.01)
    batch = score(
        s,
        n_orig=[100, 100, 100],
        n_comp=[30, 30, 30],
        answers=["the cat sat on the mat", "a dog", None],
        references=["the cat sat on the mat", "the cat sat on the mat", "x"],
    )
    assert batch.rewards[:2] == [pytest.approx(0.7), -0.01]
    assert math.isnan(batch.rewards[2])
    assert batch.metrics[0] == {"rougeL": pytest.approx(1.0), "compression": pytest.approx(0.7)}
    assert batch.short_circuited == [False, False, False]


def test_score_grpo_batch_uses_gold_when_given():
    s = settings(family="grpo")
    batch = score(
        s,
        n_orig=[10, 10, 10],
        n_comp=[6, 6, 6],
        answers=["42", "42", "42"],
        references=["The answer is 42", "42", "42"],
        gold=["42", None, "41"],
    )
    # sample 0: correct vs gold = 1; rougeL("42", "the answer is 42") = 2*(1*1/4)/(1+1/4) = 0.4
    # sample 1: no gold -> correct vs the teacher's original answer = 1; rougeL 1
    # sample 2: gold disagrees -> 0
    assert batch.rewards == pytest.approx(
        [0.5 + 0.35 * 0.4 + 0.15 * 0.4, 0.5 + 0.35 + 0.06, 0.35 + 0.06]
    )
    assert batch.metrics[0] == pytest.approx(
        {"correct": 1.0, "similarity": 0.4, "compression": 0.4}
    )


def test_score_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="batch lengths differ"):
        score(settings(), [10, 10], [5, 5], ["a"], ["a", "b"])


def test_score_empty_batch():
    batch = score(settings(), [], [], [], [])
    assert batch.rewards == [] and batch.n_unscorable == 0
