"""Per-word Bernoulli policy: sampling, log-probabilities and entropy (pure torch).

The policy acts once per *deciding* word (not per sub-token, not on padding, specials or
forced words): action 1 keeps the word, with probability ``p`` = the LLMLingua-2 word
probability (mean of its tokens' keep-probabilities), so sampling during training and greedy
inference rank the very same numbers. The log-prob of a sample is the sum over its deciding
words; the entropy is the sum of the per-word Bernoulli entropies.
"""

from __future__ import annotations

import torch

EPS = 1e-6


def draw(
    p: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Bool actions [num_samples, len(p)]; uniforms come from ``generator``'s device."""
    dev = generator.device if generator is not None else p.device
    u = torch.rand((num_samples, p.shape[0]), generator=generator, device=dev)
    return u.to(p.device) < p.detach().unsqueeze(0)


def log_prob(p: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Sum of log-probabilities of ``actions`` [S, n] under Bernoulli(p): a tensor [S]."""
    pc = p.clamp(EPS, 1 - EPS).unsqueeze(0)
    a = actions.to(pc.dtype)
    return (a * pc.log() + (1 - a) * (1 - pc).log()).sum(dim=1)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Sum of the per-word Bernoulli entropies: a scalar tensor."""
    pc = p.clamp(EPS, 1 - EPS)
    return -(pc * pc.log() + (1 - pc) * (1 - pc).log()).sum()
