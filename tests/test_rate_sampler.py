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


def _expected_reward(z: torch.Tensor, w: torch.Tensor, budget: float, reward: dict) -> float:
    q = sampling.shifted_probs(torch.sigmoid(z), w, budget)
    total = 0.0
    for bits, r in reward.items():
        total += r * math.prod(float(q[i]) if b else 1 - float(q[i]) for i, b in enumerate(bits))
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_score_function_through_the_shift_is_the_exact_gradient(seed: int) -> None:
    """E_pi[R grad log pi] (enumerated over every mask) equals the finite-difference gradient
    of E_pi[R], where each evaluation re-solves the shift. Holding the shift constant does
    not: the missing term is Cov(R, K) db/dz (issue 16)."""
    g = torch.Generator().manual_seed(seed)
    n = 5
    z0 = torch.randn(n, generator=g, dtype=torch.float64)
    w = torch.randint(1, 3, (n,), generator=g).double()
    budget = 0.5 * float(w.sum())
    masks = list(itertools.product([0, 1], repeat=n))
    # A reward that depends on how much is kept, so Cov(R, K) != 0.
    reward = {m: float(torch.rand(1, generator=g)) + 0.3 * sum(m) for m in masks}

    z = z0.clone().requires_grad_(True)
    q = sampling.shifted_probs(torch.sigmoid(z), w, budget)
    acts = torch.tensor(masks, dtype=torch.bool)
    lp = sampling.log_prob(q, acts)
    pi = lp.detach().exp()
    r = torch.tensor([reward[m] for m in masks], dtype=torch.float64)
    (pi * r * lp).sum().backward()
    estimator = z.grad.clone()

    h = 1e-6
    exact = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        up, down = z0.clone(), z0.clone()
        up[i] += h
        down[i] -= h
        exact[i] = (
            _expected_reward(up, w, budget, reward) - _expected_reward(down, w, budget, reward)
        ) / (2 * h)
    assert torch.allclose(estimator, exact, atol=1e-6), (estimator, exact)

    # The constant-shift estimator (the bias this replaced) is measurably off.
    zc = z0.clone().requires_grad_(True)
    b = sampling.budget_shift(zc.detach(), w, budget)
    lpc = sampling.log_prob(torch.sigmoid(zc + b), acts)
    (pi * r * lpc).sum().backward()
    assert (zc.grad - exact).norm() > 1e-3 * exact.norm()
