"""The KL anchor to the start policy (pure torch).

RL from a warm start should move only where the reward says so. Like TRL GRPO's ``beta``, the
loss adds ``kl_coeff * KL(pi || pi_start)``, here in closed form: the policy is a product of
per-word Bernoullis, so the KL of two policies over the same deciding words is the sum of
per-word Bernoulli KLs, with no sampling noise. It is summed over a prompt's deciding words
(normalised like the per-mask log-prob of the policy term) and averaged over the step's
prompts. Both policies' probabilities are taken after the same rate shift, so the anchor pulls
towards the start policy as it is sampled.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

EPS = 1e-6


def bernoulli_kl(p: Tensor, q: Tensor) -> Tensor:
    """Per-word ``KL(Bernoulli(p) || Bernoulli(q))``, differentiable in ``p``."""
    p = p.clamp(EPS, 1 - EPS)
    q = q.detach().to(p.dtype).clamp(EPS, 1 - EPS)
    return p * (p.log() - q.log()) + (1 - p) * ((1 - p).log() - (1 - q).log())


def kl_penalty(policy: Sequence[Tensor], start: Sequence[Tensor]) -> Tensor:
    """Mean over prompts of the summed per-word KL to the start policy."""
    if len(policy) != len(start):
        raise ValueError(f"{len(policy)} policy prompts against {len(start)} start prompts")
    if not policy:
        raise ValueError("kl_penalty needs at least one prompt")
    terms = []
    for p, q in zip(policy, start, strict=True):
        if p.shape != q.shape:
            raise ValueError(f"word counts differ: {tuple(p.shape)} against {tuple(q.shape)}")
        terms.append(bernoulli_kl(p, q).sum())
    return torch.stack(terms).mean()
