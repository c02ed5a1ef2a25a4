"""Off-policy reuse of paid answers: importance weights and the weighted REINFORCE loss (pure).

A mask's probability is a product of per-word Bernoullis, so its importance ratio against the
policy that drew it (the *behaviour* policy, whose per-word log-probs every sample stores) is
a product of per-word ratios ``r_w = pi(a_w) / mu(a_w)``. Over ~100 deciding words the product
is useless as a weight (it explodes or vanishes after one update), so, like TRL's GRPO and PPO
on tokens, every word decision is treated as an action that shares its mask's advantage, and
the ratio is taken per word:

- **clip** (PPO, for the ``update_epochs`` passes over a freshly paid batch): the gradient of
  ``min(r A, clip(r, 1-eps, 1+eps) A)``, i.e. ``A r grad(log pi)`` where the ratio has not left
  the trust region in the advantage's direction, else 0;
- **truncate** (V-trace/IMPALA, for samples replayed from the warehouse, drawn by older
  policies): ``A min(rho_bar, r) grad(log pi)``: a truncated importance weight, never clipped
  to zero, never above ``rho_bar``.

Both are written as a *weighted REINFORCE* loss ``-mean_i A_i sum_w sg(weight_iw) log pi(a_iw)``
with the weights held constant. Its gradient is exactly the clipped/truncated surrogate's, and
at ratio 1 (the first pass over fresh samples, the default) every weight is 1, so the value
and the gradient are exactly :func:`tacorl_offline.advantages.policy_loss`'s.

A stored sample is dropped when its policy has drifted too far: when the mean per-word
``|log r|`` exceeds ``max_log_ratio`` (:func:`drift`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

Kind = Literal["clip", "truncate"]


def word_weights(
    log_now: Tensor,
    log_behaviour: Tensor,
    advantage: float,
    kind: Kind,
    *,
    clip_eps: float = 0.2,
    rho_bar: float = 1.0,
) -> Tensor:
    """Per-word weights (no gradient) for one sample: see the module docstring.

    ``log_now``/``log_behaviour``: [n] per-word log-probs of the sample's actions under today's
    policy and the behaviour policy.
    """
    r = torch.exp(log_now.detach().double() - log_behaviour.detach().to(log_now.device).double())
    if kind == "truncate":
        return r.clamp(max=rho_bar).to(log_now.dtype)
    if kind != "clip":
        raise ValueError(f"unknown weighting {kind!r}; choose clip or truncate")
    if advantage > 0:
        out = r > 1.0 + clip_eps
    elif advantage < 0:
        out = r < 1.0 - clip_eps
    else:
        out = torch.zeros_like(r, dtype=torch.bool)
    return torch.where(out, 0.0, r).to(log_now.dtype)


def drift(log_now: Tensor, log_behaviour: Tensor) -> float:
    """Mean per-word ``|log r|``: how far today's policy is from the one that drew the sample."""
    if log_now.numel() == 0:
        return 0.0
    d = (log_now.detach().double() - log_behaviour.detach().to(log_now.device).double()).abs()
    return float(d.mean())


def weighted_policy_loss(
    word_log_probs: Sequence[Tensor],
    weights: Sequence[Tensor],
    advantages: Sequence[float],
    entropies: Sequence[Tensor],
    entropy_coeff: float,
) -> tuple[Tensor, dict[str, Any]]:
    """``-mean_i A_i sum_w weight_iw log pi(a_iw) - entropy_coeff * mean_i H_i`` over the
    samples given (the caller leaves out unscorable ones). ``entropies[i]`` is the per-mask sum
    of today's per-word entropies of sample i's prompt, as in ``policy_loss``."""
    n = len(word_log_probs)
    if n == 0:
        raise ValueError("weighted_policy_loss needs at least one sample")
    terms = [
        a * (w.detach() * lp).sum()
        for lp, w, a in zip(word_log_probs, weights, advantages, strict=True)
    ]
    pg_loss = -torch.stack(terms).sum() / n
    entropy = torch.stack(list(entropies)).sum() / n
    loss = pg_loss - entropy_coeff * entropy
    flat = torch.cat([w.detach().reshape(-1) for w in weights])
    return loss, {
        "loss": float(loss.detach()),
        "pg_loss": float(pg_loss.detach()),
        "entropy": float(entropy.detach()),
        "n": n,
        "zero_weight_share": float((flat == 0).double().mean()) if flat.numel() else 0.0,
        "mean_weight": float(flat.double().mean()) if flat.numel() else 1.0,
    }


def baseline_correction(
    keep_prob: Tensor, behaviour_keep_prob: Tensor, baseline: float, *, rho_bar: float = 1.0
) -> Tensor:
    """The term that keeps a baseline unbiased under truncated weights (a surrogate to add to
    the loss of one stored sample).

    With ``c(a) = min(rho_bar, pi(a)/mu(a))`` per word, ``E_mu[c (R - b) grad log pi]`` is not
    ``E_mu[c R grad log pi]``: ``E_mu[c grad log pi] != 0`` once ``c`` truncates (for example
    -0.10 at mu = 0.3, pi = 0.5, rho_bar = 1). Adding back its exact expectation, which a
    Bernoulli word allows in closed form, ``b sum_w sum_{a in {0,1}} mu(a) c(a) grad log pi(a)``,
    makes the estimator's mean that of the baseline-free one, whatever ``b``. Returned as
    ``-b sum_w sum_a sg(mu(a) c(a)) log pi(a)`` (a loss term: its gradient is minus that).
    It is exactly 0 where no weight truncates (``sum_a pi(a) grad log pi(a) = 0``).

    ``keep_prob``: today's per-word keep-probabilities [n] (with gradient);
    ``behaviour_keep_prob``: the behaviour policy's [n].
    """
    pi1 = keep_prob.clamp(1e-6, 1 - 1e-6)
    mu1 = behaviour_keep_prob.detach().to(pi1.dtype).clamp(1e-6, 1 - 1e-6)
    total = torch.zeros((), dtype=pi1.dtype, device=pi1.device)
    for pi_a, mu_a in ((pi1, mu1), (1 - pi1, 1 - mu1)):
        c = (pi_a.detach() / mu_a).clamp(max=rho_bar)
        total = total + (mu_a * c * pi_a.log()).sum()
    return -baseline * total


def behaviour_keep_probs(actions: Any, behaviour_log_probs: Tensor) -> Tensor:
    """The behaviour policy's keep-probability per word, from the stored log-prob of the action
    taken: ``mu(1) = exp(lp)`` where the word was kept, ``1 - exp(lp)`` where it was dropped."""
    a = torch.as_tensor(actions, dtype=torch.bool, device=behaviour_log_probs.device)
    p_taken = behaviour_log_probs.detach().double().exp()
    return torch.where(a, p_taken, 1 - p_taken)
