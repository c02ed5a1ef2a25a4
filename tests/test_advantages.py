"""Advantage baselines and the REINFORCE loss: hand-computed tables, NaN in every position."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from tacorl_offline.advantages import compute_advantages, policy_loss
from tacorl_offline.config import TrainConfig

N = math.nan


def flat(rows: list[list[float]]) -> list[float]:
    return [x for row in rows for x in row]


S = 1 / math.sqrt(2)  # (1 - 0.5) / sample-std([1, 0]) = 0.5 / sqrt(0.5)

# (baseline, rewards [B, G], expected advantages, expected unscorable count)
TABLE = [
    # none: the reward itself, NaN -> 0
    ("none", [[1.0, N], [0.5, -0.2]], [[1.0, 0.0], [0.5, -0.2]], 1),
    ("none", [[N, N]], [[0.0, 0.0]], 2),
    # group_mean: minus the mean of the finite rewards of the group
    ("group_mean", [[1.0, 0.0, N, 0.5]], [[0.5, -0.5, 0.0, 0.0]], 1),
    ("group_mean", [[N, 1.0, 0.0, 0.5]], [[0.0, 0.5, -0.5, 0.0]], 1),
    ("group_mean", [[0.3, N], [N, N]], [[0.0, 0.0], [0.0, 0.0]], 3),
    ("group_mean", [[1.0, 3.0], [-1.0, -1.0]], [[-1.0, 1.0], [0.0, 0.0]], 0),
    # group_std: (r - mean) / (sample std + eps); < 2 finite or zero spread -> 0
    ("group_std", [[1.0, 0.0]], [[S, -S]], 0),
    ("group_std", [[1.0, N, 0.0]], [[S, 0.0, -S]], 1),
    ("group_std", [[3.0, 1.0, 2.0]], [[1.0, -1.0, 0.0]], 0),  # mean 2, std 1
    ("group_std", [[0.1, 0.1, 0.1]], [[0.0, 0.0, 0.0]], 0),
    ("group_std", [[0.7, N, N]], [[0.0, 0.0, 0.0]], 2),
    ("group_std", [[N, N], [1.0, 0.0]], [[0.0, 0.0], [S, -S]], 2),
    # rloo: minus the mean of the OTHER finite rewards; none -> 0
    ("rloo", [[1.0, 2.0, 3.0]], [[-1.5, 0.0, 1.5]], 0),
    ("rloo", [[1.0, N, 3.0]], [[-2.0, 0.0, 2.0]], 1),
    ("rloo", [[N, 1.0, 3.0]], [[0.0, -2.0, 2.0]], 1),
    ("rloo", [[1.0, 0.0]], [[1.0, -1.0]], 0),
    ("rloo", [[1.0, N], [N, N]], [[0.0, 0.0], [0.0, 0.0]], 3),
    ("rloo", [[0.5, 0.5, 0.5, 0.5]], [[0.0, 0.0, 0.0, 0.0]], 0),
]


@pytest.mark.parametrize(("baseline", "rewards", "expected", "n_bad"), TABLE)
def test_advantage_table(baseline, rewards, expected, n_bad):
    adv = compute_advantages(torch.tensor(rewards), baseline)
    assert flat(adv.values.tolist()) == pytest.approx(flat(expected), abs=1e-5)
    assert adv.n_unscorable == n_bad
    assert adv.valid.tolist() == [[not math.isnan(x) for x in row] for row in rewards]
    assert torch.isfinite(adv.values).all()


@pytest.mark.parametrize(
    ("rewards", "greedy", "expected", "n_bad"),
    [
        (
            [[1.0, 0.5], [0.2, N], [0.3, 0.4]],
            [0.5, 0.1, N],
            [[0.5, 0.0], [0.1, 0.0], [0.0, 0.0]],
            1,
        ),
        ([[0.2]], [0.2], [[0.0]], 0),
        ([[N]], [0.2], [[0.0]], 1),
        ([[-0.4, 0.6]], [-0.1], [[-0.3, 0.7]], 0),
    ],
)
def test_scst(rewards, greedy, expected, n_bad):
    adv = compute_advantages(torch.tensor(rewards), "scst", greedy_rewards=torch.tensor(greedy))
    assert flat(adv.values.tolist()) == pytest.approx(flat(expected), abs=1e-6)
    assert adv.n_unscorable == n_bad


def test_scst_needs_greedy_rewards():
    with pytest.raises(ValueError, match="greedy_rewards"):
        compute_advantages(torch.zeros(2, 1), "scst")
    with pytest.raises(ValueError, match="3 entries for 2 prompts"):
        compute_advantages(torch.zeros(2, 1), "scst", greedy_rewards=[0.0, 0.0, 0.0])


# (ema in, beta, rewards, expected advantages, ema out)
MOVING = [
    (None, 0.9, [[1.0, N], [0.0, 0.5]], [[0.5, 0.0], [-0.5, 0.0]], 0.5),  # first step: batch mean
    (0.5, 0.9, [[1.0, 1.0]], [[0.5, 0.5]], 0.55),  # baseline = EMA before the update
    (0.5, 0.0, [[1.0, 0.0]], [[0.5, -0.5]], 0.5),
    (0.2, 0.5, [[N, 1.0], [N, N]], [[0.0, 0.8], [0.0, 0.0]], 0.6),  # only finite rewards update
    (0.2, 0.9, [[N, N]], [[0.0, 0.0]], 0.2),  # nothing finite: EMA unchanged
    (None, 0.9, [[N]], [[0.0]], None),
]


@pytest.mark.parametrize(("ema", "beta", "rewards", "expected", "ema_out"), MOVING)
def test_moving_average(ema, beta, rewards, expected, ema_out):
    adv = compute_advantages(torch.tensor(rewards), "moving_average", ema=ema, beta=beta)
    assert flat(adv.values.tolist()) == pytest.approx(flat(expected), abs=1e-6)
    assert adv.ema == (None if ema_out is None else pytest.approx(ema_out))


def test_moving_average_over_steps():
    ema = None
    seen = []
    for r in ([[1.0]], [[0.0]], [[N]], [[1.0]]):
        adv = compute_advantages(r, "moving_average", ema=ema, beta=0.5)
        seen.append(adv.values.item())
        ema = adv.ema
    # baselines: 1 (batch mean), 1, (skip), 0.5 -> advantages 0, -1, 0, 0.5; EMA 1 -> .5 -> .5 -> .75
    assert seen == pytest.approx([0.0, -1.0, 0.0, 0.5])
    assert ema == pytest.approx(0.75)


def test_dtype_and_inputs():
    adv = compute_advantages([[1, 2]], "group_mean")  # ints, nested lists
    assert adv.values.dtype == torch.float32
    assert adv.values.tolist() == [[-0.5, 0.5]]
    adv64 = compute_advantages(torch.tensor([[1.0, 2.0]], dtype=torch.float64), "none")
    assert adv64.values.dtype == torch.float64
    with pytest.raises(ValueError, match=r"shaped \[B, G\]"):
        compute_advantages(torch.zeros(3), "none")
    with pytest.raises(ValueError, match="unknown baseline"):
        compute_advantages(torch.zeros(1, 1), "ppo")


def test_rewards_are_not_modified():
    r = torch.tensor([[1.0, N]])
    compute_advantages(r, "group_mean")
    assert math.isnan(r[0, 1].item()) and r[0, 0].item() == 1.0


# ---------------------------------------------------------------------------- validation
# The baseline invariants are checked once, by the config model.


@pytest.mark.parametrize(
    ("baseline", "g", "message"),
    [
        (
            "rloo",
            1,
            r"leave-one-out \(rloo\) baseline needs at least 2 samples per prompt; set train.samples_per_prompt >= 2",
        ),
        ("group_mean", 1, "group mean baseline needs at least 2 samples per prompt"),
        ("group_std", 1, r"group-standardised \(GRPO\) baseline needs at least 2"),
        ("ppo", 4, "baseline"),
        ("none", 0, "samples_per_prompt"),
        ("moving_average", 1, None),
        ("rloo", 2, None),
        ("scst", 1, None),
    ],
)
def test_config_checks_the_baseline(baseline, g, message):
    if message is None:
        TrainConfig(baseline=baseline, samples_per_prompt=g)
        return
    with pytest.raises(ValidationError, match=message):
        TrainConfig(baseline=baseline, samples_per_prompt=g)


def test_config_checks_moving_average_beta():
    with pytest.raises(ValidationError, match="moving_average_beta"):
        TrainConfig(baseline="moving_average", moving_average_beta=1.0)


# ---------------------------------------------------------------------------- loss


def test_policy_loss_values_and_grads():
    lp = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    ent = torch.tensor([0.5, 0.7, 0.9], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 5.0])
    valid = torch.tensor([True, True, False])
    loss, stats = policy_loss(lp, adv, ent, torch.tensor([2, 4, 3]), 0.1, valid)
    # pg = -mean(1 * -1, -1 * -2) = -0.5; entropy = mean(0.5, 0.7) = 0.6; loss = -0.5 - 0.06
    assert loss.item() == pytest.approx(-0.56)
    assert stats["pg_loss"] == pytest.approx(-0.5)
    assert stats["entropy"] == pytest.approx(0.6)
    assert stats["n_valid"] == 2
    assert stats["logp_per_action"] == pytest.approx((-0.5 + -0.5) / 2)
    loss.backward()
    assert lp.grad.tolist() == pytest.approx([-0.5, 0.5, 0.0])
    assert ent.grad.tolist() == pytest.approx([-0.05, -0.05, 0.0])


def test_policy_loss_ignores_nan_in_invalid_samples():
    lp = torch.tensor([-1.0, N], requires_grad=True)
    ent = torch.tensor([0.2, N], requires_grad=True)
    loss, _ = policy_loss(
        lp, torch.tensor([2.0, 0.0]), ent, torch.tensor([1, 1]), 0.0, torch.tensor([True, False])
    )
    loss.backward()
    assert loss.item() == pytest.approx(2.0)
    assert lp.grad.tolist() == [-2.0, 0.0]


def test_policy_loss_without_valid_samples_is_connected_zero():
    lp = torch.tensor([-1.0, -2.0], requires_grad=True)
    ent = torch.tensor([0.3, 0.4], requires_grad=True)
    loss, stats = policy_loss(
        lp, torch.zeros(2), ent, torch.tensor([1, 1]), 0.01, torch.tensor([False, False])
    )
    assert loss.item() == 0.0 and loss.grad_fn is not None
    assert stats["n_valid"] == 0
    loss.backward()
    assert lp.grad.tolist() == [0.0, 0.0] and ent.grad.tolist() == [0.0, 0.0]


def test_policy_loss_detaches_advantages():
    lp = torch.tensor([-1.0], requires_grad=True)
    adv = torch.tensor([1.5], requires_grad=True)
    loss, _ = policy_loss(
        lp, adv, torch.tensor([0.0]), torch.tensor([1]), 0.0, torch.tensor([True])
    )
    loss.backward()
    assert adv.grad is None
    assert lp.grad.tolist() == [-1.5]


def test_end_to_end_from_rewards():
    rewards = torch.tensor([[1.0, N], [0.0, 2.0]])
    adv = compute_advantages(rewards, "rloo")
    lp = torch.tensor([-1.0, -1.0, -2.0, -2.0], requires_grad=True)
    loss, stats = policy_loss(
        lp, adv.values.flatten(), torch.zeros(4), torch.ones(4), 0.0, adv.valid.flatten()
    )
    # group 1 has one finite reward -> 0; group 2: -2, +2 -> -mean(0*-1, -2*-2, 2*-2) = 0
    assert stats["n_valid"] == 3
    assert loss.item() == pytest.approx(0.0)
