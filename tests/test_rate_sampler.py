"""Rate-consistent sampling: the budget is kept in expectation and the log-prob is exact."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tacorl_offline.compressor import sampling


def test_shift_meets_the_budget_in_expectation() -> None:
    p = torch.tensor([0.9, 0.8, 0.5, 0.2, 0.1, 0.05, 0.6], dtype=torch.float64)
    w = torch.tensor([1, 2, 1, 3, 1, 1, 2], dtype=torch.float64)
    for budget in (1.0, 4.5, 8.0, 10.0):
        q = sampling.shifted_probs(p, w, budget)
        assert float((w * q).sum()) == pytest_approx(budget)
        # monotone: the ranking greedy uses is unchanged
        assert torch.equal(torch.argsort(q, stable=True), torch.argsort(p, stable=True))


def pytest_approx(x: float) -> object:
    return pytest.approx(x, abs=1e-6)


def test_budget_edges() -> None:
    p = torch.tensor([0.3, 0.7])
    w = torch.ones(2)
    assert sampling.shifted_probs(p, w, 0.0).max() < 1e-6
    assert sampling.shifted_probs(p, w, 2.0).min() > 1 - 1e-6


def test_log_prob_matches_enumeration_and_sums_to_one() -> None:
    p = torch.tensor([0.7, 0.2, 0.55, 0.9], dtype=torch.float64)
    w = torch.ones(4, dtype=torch.float64)
    q = sampling.shifted_probs(p, w, 2.0)
    total = 0.0
    for bits in itertools.product([0, 1], repeat=4):
        a = torch.tensor(bits, dtype=torch.bool).unsqueeze(0)
        lp = float(sampling.log_prob(q, a)[0])
        by_hand = math.prod(float(q[i]) if b else 1 - float(q[i]) for i, b in enumerate(bits))
        assert math.exp(lp) == pytest_approx(by_hand)
        total += by_hand
    assert total == pytest_approx(1.0)


def test_empirical_kept_weight_matches_budget() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.rand(60, generator=g, dtype=torch.float64)
    w = torch.randint(1, 4, (60,), generator=g).double()
    budget = 0.5 * float(w.sum())
    q = sampling.shifted_probs(p, w, budget)
    acts = sampling.draw(q, 4000, torch.Generator().manual_seed(1))
    kept = (acts.double() * w).sum(dim=1)
    assert abs(float(kept.mean()) - budget) < 0.01 * budget


def test_gradient_flows_through_p_not_the_shift() -> None:
    p = torch.tensor([0.6, 0.3, 0.8], dtype=torch.float64, requires_grad=True)
    q = sampling.shifted_probs(p, torch.ones(3, dtype=torch.float64), 1.5)
    lp = sampling.log_prob(q, torch.tensor([[1, 0, 1]], dtype=torch.bool))[0]
    lp.backward()
    assert p.grad is not None and torch.all(p.grad != 0)
