"""Sentence-level credit: the paired estimator is unbiased (by enumeration), sentences are cut
where they end, and groups differ from their base in one sentence only."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from tacorl_offline.compressor import sampling
from tacorl_offline.credit import draw_group, paired_loss, sentence_ids


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["A", "cat", ".", "It", "sat", "."], [0, 0, 0, 1, 1, 1]),
        (["Why", "?", "Yes", "!", "no"], [0, 0, 1, 1, 2]),
        (["one", "\n", "two"], [0, 0, 1]),
        (["end."], [0]),
        ([], []),
    ],
)
def test_sentence_ids(words: list[str], expected: list[int]) -> None:
    assert sentence_ids(words).tolist() == expected


def _prob(p: torch.Tensor, bits: tuple[int, ...]) -> float:
    return math.prod(float(p[i]) if b else 1 - float(p[i]) for i, b in enumerate(bits))


@pytest.mark.parametrize("shifted", [False, True])
def test_paired_estimator_is_unbiased_by_enumeration(shifted: bool) -> None:
    """E[paired surrogate's gradient] over base draws, sentence choices and re-draws equals
    -grad E[R], with and without the (differentiated) rate shift."""
    g = torch.Generator().manual_seed(3)
    n = 4
    sent = np.array([0, 0, 1, 1])
    z0 = torch.randn(n, generator=g, dtype=torch.float64)
    masks = list(itertools.product([0, 1], repeat=n))
    reward = {m: float(torch.rand(1, generator=g)) + 0.4 * m[0] * m[3] for m in masks}
    w = torch.ones(n, dtype=torch.float64)

    def probs(z: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(z)
        return sampling.shifted_probs(p, w, 2.0) if shifted else p

    z = z0.clone().requires_grad_(True)
    p = probs(z)
    exact = torch.stack(
        [
            sampling.log_prob(p, torch.tensor([m], dtype=torch.bool))[0].exp() * reward[m]
            for m in masks
        ]
    ).sum()
    (g_exact,) = torch.autograd.grad(exact, z)

    z = z0.clone().requires_grad_(True)
    p = probs(z)
    pd = p.detach()
    total = torch.zeros((), dtype=torch.float64)
    for m0 in masks:
        for s in (0, 1):  # one variant (G = 2): each sentence chosen with probability 1/2
            idx = np.flatnonzero(sent == s)
            for redraw in itertools.product([0, 1], repeat=len(idx)):
                mj = list(m0)
                for i, b in zip(idx, redraw, strict=True):
                    mj[i] = b
                weight = _prob(pd, m0) * 0.5 * _prob(pd[idx], redraw)
                lps = [
                    sampling.word_log_probs(p, torch.tensor([m], dtype=torch.bool))[0]
                    for m in (m0, tuple(mj))
                ]
                loss, used = paired_loss(lps, [reward[m0], reward[tuple(mj)]], [None, s], sent)
                assert used == 1
                total = total + weight * loss
    (g_paired,) = torch.autograd.grad(total, z)
    assert torch.allclose(-g_paired, g_exact, atol=1e-10), (g_paired, g_exact)


def test_variants_differ_from_the_base_in_their_sentence_only() -> None:
    p = torch.full((9,), 0.5)
    sent = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    acts, chosen = draw_group(p, sent, 4, torch.Generator().manual_seed(0))
    assert acts.shape == (4, 9) and chosen[0] is None
    assert sorted(c for c in chosen[1:3]) == sorted(set(chosen[1:3]))  # distinct while they last
    assert set(chosen[1:]) == {0, 1, 2}
    for row, s in zip(acts[1:], chosen[1:], strict=True):
        outside = torch.as_tensor(sent != s)
        assert torch.equal(row[outside], acts[0][outside])


def test_unscorable_pairs_are_left_out() -> None:
    sent = np.array([0, 1])
    lp = [torch.zeros(2, requires_grad=True) for _ in range(3)]
    loss, used = paired_loss(lp, [0.5, float("nan"), 0.7], [None, 0, 1], sent)
    assert used == 1 and loss is not None
    assert paired_loss(lp, [float("nan"), 0.1, 0.2], [None, 0, 1], sent) == (None, 0)
    with pytest.raises(ValueError, match="base"):
        paired_loss(lp, [0.1, 0.2, 0.3], [0, 0, 1], sent)
