"""Advantages (reward minus a baseline) and the REINFORCE loss.

Rewards come shaped ``[B, G]``: B prompts, G sampled masks per prompt. ``NaN`` marks an
unscorable sample (teacher failure). Such a sample gets advantage exactly 0, is left out of
every baseline, and is left out of the loss's mean.

Baselines:

- ``none``: advantage = reward (upstream TACO-RL).
- ``moving_average``: reward minus an exponential moving average of past batch means
  (finite rewards only). The baseline used at a step is the EMA *before* that step's
  update; on the first step (no EMA yet) it is the batch mean. The EMA is passed in and
  returned, so the state is one float to checkpoint.
- ``group_mean``: reward minus the mean of the finite rewards of its group.
- ``group_std``: ``(r - mean) / (std + eps)`` over the group's finite rewards, with the
  sample (Bessel-corrected) std as TRL's GRPO; a group with fewer than 2 finite rewards or
  zero spread gives 0.
- ``rloo``: reward minus the mean of the *other* finite rewards of its group; 0 if none.
- ``scst``: reward minus the greedy mask's reward of the same prompt (PCRL); 0 where
  the greedy reward is NaN.

Arithmetic runs in float64 so equal rewards give exactly zero spread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

BASELINES = ("none", "moving_average", "group_mean", "group_std", "rloo", "scst")
_STD_ZERO = 1e-12


@dataclass(frozen=True)
class Advantages:
    values: Tensor  # [B, G], 0 where unscorable
    valid: Tensor  # [B, G] bool: finite reward (the samples that enter the loss)
    n_unscorable: int
    ema: float | None = None  # moving_average only: the EMA after this step's update


def _finite_mean(x: Tensor, mask: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Mean of ``x`` over ``mask`` along ``dim`` (NaN where the count is 0), and the count."""
    count = mask.sum(dim=dim, keepdim=True)
    total = torch.where(mask, x, 0.0).sum(dim=dim, keepdim=True)
    mean = total / count.clamp(min=1)
    return torch.where(count > 0, mean, math.nan), count


def compute_advantages(
    rewards: Tensor | Sequence[Sequence[float]],
    baseline: str,
    *,
    greedy_rewards: Tensor | Sequence[float] | None = None,
    ema: float | None = None,
    beta: float = 0.9,
    eps: float = 1e-6,
) -> Advantages:
    """Advantages for rewards ``[B, G]`` (NaN = unscorable) under ``baseline``.

    ``greedy_rewards`` ``[B]`` is required for ``scst``. ``ema``/``beta`` are the moving
    average state and decay for ``moving_average``; the updated EMA is returned.
    """
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of: {', '.join(BASELINES)}")
    r_in = torch.as_tensor(rewards)
    if r_in.dim() != 2:
        raise ValueError(f"rewards must be shaped [B, G], got {tuple(r_in.shape)}")
    out_dtype = r_in.dtype if r_in.is_floating_point() else torch.float32
    r = r_in.detach().to(torch.float64)
    valid = torch.isfinite(r)
    n_unscorable = int((~valid).sum())
    new_ema = ema

    if baseline == "none":
        adv = r
    elif baseline == "moving_average":
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"moving-average beta must be in [0, 1), got {beta}")
        if valid.any():
            batch_mean = float(r[valid].mean())
            base = batch_mean if ema is None else ema
            new_ema = batch_mean if ema is None else beta * ema + (1.0 - beta) * batch_mean
            adv = r - base
        else:
            adv = torch.zeros_like(r)
    elif baseline == "group_mean":
        mean, _ = _finite_mean(r, valid, dim=1)
        adv = r - mean
    elif baseline == "group_std":
        mean, count = _finite_mean(r, valid, dim=1)
        sq = torch.where(valid, (r - mean) ** 2, 0.0).sum(dim=1, keepdim=True)
        std = torch.sqrt(sq / (count - 1).clamp(min=1))
        ok = (count >= 2) & (std > _STD_ZERO)
        adv = torch.where(ok, (r - mean) / (std + eps), 0.0)
    elif baseline == "rloo":
        count = valid.sum(dim=1, keepdim=True)
        total = torch.where(valid, r, 0.0).sum(dim=1, keepdim=True)
        others = count - 1  # for a valid sample: how many *other* finite rewards there are
        loo = (total - torch.where(valid, r, 0.0)) / others.clamp(min=1)
        adv = torch.where(others >= 1, r - loo, 0.0)
    else:  # scst
        if greedy_rewards is None:
            raise ValueError(
                "the scst baseline needs greedy_rewards (the greedy mask's reward per prompt)"
            )
        g = torch.as_tensor(greedy_rewards).detach().to(torch.float64).reshape(-1, 1)
        if g.shape[0] != r.shape[0]:
            raise ValueError(f"greedy_rewards has {g.shape[0]} entries for {r.shape[0]} prompts")
        adv = torch.where(torch.isfinite(g), r - g, 0.0)

    adv = torch.where(valid & torch.isfinite(adv), adv, 0.0)
    return Advantages(values=adv.to(out_dtype), valid=valid, n_unscorable=n_unscorable, ema=new_ema)


def policy_loss(
    log_probs: Tensor,
    advantages: Tensor,
    entropies: Tensor,
    n_actions: Tensor,
    entropy_coeff: float,
    valid_mask: Tensor,
) -> tuple[Tensor, dict[str, Any]]:
    """REINFORCE loss ``-mean(adv * log_prob) - entropy_coeff * mean(entropy)`` over valid samples.

    All inputs are ``[N]`` (one entry per sampled mask). ``log_probs[i]`` is the *sum* of the
    per-word Bernoulli log-probs of mask i (the log-probability of the whole mask, which is
    what REINFORCE needs); ``entropies[i]`` is the *sum* of the per-word entropies of the
    policy that drew mask i, normalised exactly like the log-prob term. Upstream averages both
    terms over token positions; scaling both by the same count keeps their ratio, so
    ``entropy_coeff`` means what upstream's means;
    ``n_actions[i]`` is its number of words (used for the per-action log-prob in stats only).
    Advantages are treated as constants. With no valid sample the loss is a zero still
    connected to the inputs' graph, so every DDP rank runs the same backward.
    """
    valid = valid_mask.to(torch.bool)
    n_valid = int(valid.sum())
    adv = advantages.detach().to(log_probs.dtype)
    if n_valid == 0:
        loss = (log_probs * 0.0).sum() + (entropies * 0.0).sum()
        return loss, {
            "loss": 0.0,
            "pg_loss": 0.0,
            "entropy": 0.0,
            "n_valid": 0,
            "mean_advantage": 0.0,
            "logp_per_action": math.nan,
        }
    lp = log_probs[valid]
    ent = entropies[valid]
    pg_loss = -(adv[valid] * lp).mean()
    entropy = ent.mean()
    loss = pg_loss - entropy_coeff * entropy
    n_act = n_actions[valid].to(lp.dtype).clamp(min=1)
    stats = {
        "loss": float(loss.detach()),
        "pg_loss": float(pg_loss.detach()),
        "entropy": float(entropy.detach()),
        "n_valid": n_valid,
        "mean_advantage": float(adv[valid].mean()),
        "logp_per_action": float((lp.detach() / n_act).mean()),
    }
    return loss, stats
