"""Stage 5, advantages: the step's rewards as a [prompts, G] table in batch order, and its
baseline (:func:`tacorl_offline.advantages.compute_advantages`)."""

from __future__ import annotations

import torch

from tacorl_offline.advantages import Advantages, compute_advantages
from tacorl_offline.config import TrainConfig
from tacorl_offline.training.records import NAN, Rollout


def advantages(
    tc: TrainConfig, rollouts: list[Rollout], batch: list[int], ema: float | None
) -> Advantages:
    """Advantages over the global batch, shaped [prompts, G] in batch order; ``ema`` is the
    moving-average baseline before this step (the result carries the one after it)."""
    row_of = {i: n for n, i in enumerate(batch)}
    rewards = torch.full((len(batch), tc.samples_per_prompt), NAN, dtype=torch.float64)
    greedy = torch.full((len(batch),), NAN, dtype=torch.float64)
    for r in rollouts:
        if r.trains:
            rewards[row_of[r.item], r.sample_idx] = r.reward
        else:
            greedy[row_of[r.item]] = r.reward
    return compute_advantages(
        rewards,
        tc.baseline,
        greedy_rewards=greedy if tc.baseline == "scst" else None,
        ema=ema,
        beta=tc.moving_average_beta,
    )
