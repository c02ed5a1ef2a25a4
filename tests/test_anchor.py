"""The KL anchor: closed-form Bernoulli KL checked against enumeration, and its gradient."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tacorl_offline.anchor import bernoulli_kl, kl_penalty


@pytest.mark.parametrize(
    ("p", "q", "expected"),
    [
        (0.5, 0.5, 0.0),
        (0.9, 0.5, 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)),
        (0.2, 0.7, 0.2 * math.log(0.2 / 0.7) + 0.8 * math.log(0.8 / 0.3)),
    ],
)
def test_bernoulli_kl_by_hand(p: float, q: float, expected: float) -> None:
    got = float(
        bernoulli_kl(torch.tensor([p], dtype=torch.float64), torch.tensor([q], dtype=torch.float64))
    )
    assert got == pytest.approx(expected, abs=1e-9)


def test_sum_of_word_kls_is_the_kl_of_the_mask_distribution() -> None:
    p = torch.tensor([0.7, 0.2, 0.55], dtype=torch.float64)
    q = torch.tensor([0.4, 0.3, 0.9], dtype=torch.float64)
    total = 0.0
    for bits in itertools.product([0, 1], repeat=3):
        pp = math.prod(float(p[i]) if b else 1 - float(p[i]) for i, b in enumerate(bits))
        qq = math.prod(float(q[i]) if b else 1 - float(q[i]) for i, b in enumerate(bits))
        total += pp * math.log(pp / qq)
    assert float(kl_penalty([p], [q])) == pytest.approx(total, abs=1e-9)


def test_penalty_is_zero_at_the_start_and_pulls_back_towards_it() -> None:
    q = torch.tensor([0.3, 0.8, 0.5])
    assert float(kl_penalty([q.clone()], [q])) == pytest.approx(0.0, abs=1e-7)
    p = torch.tensor([0.6, 0.4, 0.5], requires_grad=True)
    kl_penalty([p], [q]).backward()
    # gradient descent moves each probability towards the start policy's
    step = -p.grad
    assert step[0] < 0 and step[1] > 0 and abs(float(step[2])) < 1e-6


def test_penalty_averages_over_prompts_and_checks_shapes() -> None:
    a, b = torch.tensor([0.9]), torch.tensor([0.1, 0.1])
    qa, qb = torch.tensor([0.5]), torch.tensor([0.5, 0.5])
    both = float(kl_penalty([a, b], [qa, qb]))
    assert both == pytest.approx((float(kl_penalty([a], [qa])) + float(kl_penalty([b], [qb]))) / 2)
    with pytest.raises(ValueError, match="word counts differ"):
        kl_penalty([a], [qb])
