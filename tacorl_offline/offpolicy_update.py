"""The reusing update (``train.reuse``): ``update_epochs`` importance-weighted passes over a
step's group, fresh and stored samples, each an optimizer step. The weights are
:mod:`tacorl_offline.offpolicy`'s (pure); this module runs the passes on the policy.

Pass 1 differentiates the rollout's own forward: fresh samples have ratio 1 (weight 1, plain
REINFORCE), stored ones their truncated ratio. Later passes run the policy again on the same
prompts and weight every word by its ratio to the behaviour policy: PPO's clip for fresh
samples, V-trace's truncation for stored ones. The learning-rate schedule advances once per
step. Extra loss terms (:data:`tacorl_offline.training.update.LossTerm`) join pass 1, whose
forward they share; the KL anchor (``train.kl_coeff``) is taken again in every later pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tacorl_offline import anchor, offpolicy
from tacorl_offline.training.optim import optimizer_step
from tacorl_offline.training.records import Rollout, StageContext, StepData
from tacorl_offline.training.update import LossTerm, add_terms, zero_loss


def update_reusing(
    ctx: StageContext,
    data: StepData,
    *,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    loss_terms: Sequence[LossTerm] = (),
) -> tuple[float, float]:
    """``update_epochs`` optimizer steps on the step's group. Returns (pass-1 loss, lr)."""
    adv = data.adv
    assert adv is not None  # reuse runs in one process: rank 0 computed it
    row_of = {i: n for n, i in enumerate(data.batch)}
    pairs = [
        (r, s) for r, s in data.trained_pairs() if bool(adv.valid[row_of[r.item], r.sample_idx])
    ]
    advs = [float(adv.values[row_of[r.item], r.sample_idx]) for r, _ in pairs]

    def one_pass(
        word_lps: list[torch.Tensor],
        ents: list[torch.Tensor],
        terms: Sequence[LossTerm],
        probs: dict[int, torch.Tensor],
    ) -> float:
        loss = _weighted_loss(ctx, pairs, advs, word_lps, ents, probs)
        if pairs:
            loss = add_terms(loss, terms, data, pairs)
        loss.backward()
        optimizer_step(ctx.model, opt, ctx.cfg.train.grad_clip)
        return float(loss.detach())

    first = one_pass(
        [s.word_log_probs for _, s in pairs],
        [s.entropy for _, s in pairs],
        loss_terms,
        data.probs,
    )
    if pairs and ctx.cfg.train.reuse.update_epochs > 1:
        for _ in range(ctx.cfg.train.reuse.update_epochs - 1):
            ds = _decide_again(ctx, pairs, row_of)
            # The KL graph is built before the pass's log-probs (as before the split): autograd
            # then sums the gradient in the same order, so the weights are bit-identical.
            kl = [] if ctx.start_model is None else [_kl_again(ctx, data, ds)]
            one_pass(
                [ds[r.item].word_log_probs(r.actions) for r, _ in pairs],
                [ds[r.item].entropy for r, _ in pairs],
                kl,
                {i: d.probs for i, d in ds.items()},
            )
    sched.step()
    return first, sched.get_last_lr()[0]


def _weighted_loss(
    ctx: StageContext,
    pairs: list[tuple[Rollout, Any]],
    advs: list[float],
    word_lps: list[torch.Tensor],
    ents: list[torch.Tensor],
    probs: dict[int, torch.Tensor],
) -> torch.Tensor:
    """The clipped (fresh) / truncated (stored) weighted REINFORCE loss of one pass, plus
    :func:`offpolicy.baseline_correction` for every stored sample, so that its baseline
    (reward minus advantage) stays unbiased under the truncated weights."""
    if not pairs:
        return zero_loss(ctx.model)
    ru = ctx.cfg.train.reuse
    kinds: list[offpolicy.Kind] = ["clip" if r.fresh else "truncate" for r, _ in pairs]
    weights = [
        offpolicy.word_weights(lp, r.behaviour, a, k, clip_eps=ru.clip_eps, rho_bar=ru.rho_bar)
        for lp, (r, _), a, k in zip(word_lps, pairs, advs, kinds, strict=True)
    ]
    loss, _ = offpolicy.weighted_policy_loss(
        word_lps, weights, advs, ents, ctx.cfg.train.entropy_coeff
    )
    for (r, _), a in zip(pairs, advs, strict=True):
        if r.fresh or r.item not in probs:
            continue
        mu = offpolicy.behaviour_keep_probs(r.actions, r.behaviour).to(probs[r.item].device)
        correction = offpolicy.baseline_correction(
            probs[r.item], mu, r.reward - a, rho_bar=ru.rho_bar
        )
        loss = loss + correction / len(pairs)
    return loss


def _decide_again(
    ctx: StageContext, pairs: list[tuple[Rollout, Any]], row_of: dict[int, int]
) -> dict[int, Any]:
    """Today's policy's decisions on the pairs' prompts (one forward, batch order), by item."""
    tc = ctx.cfg.train
    items = sorted({r.item for r, _ in pairs}, key=row_of.__getitem__)
    rate = ctx.cfg.compressor.rate if tc.sampler == "rate" else None
    ds = ctx.comp.decisions(
        [ctx.items[i].text for i in items],
        model=ctx.policy,
        fields=[ctx.items[i].fields for i in items],
        rate=rate,
    )
    return dict(zip(items, ds, strict=True))


def _kl_again(ctx: StageContext, data: StepData, ds: dict[int, Any]) -> LossTerm:
    """train.kl_coeff in a later pass: the KL of today's decisions to the start policy's
    probabilities the rollout computed, over the pass's prompts."""
    kl = anchor.kl_penalty([d.probs for d in ds.values()], [data.start_probs[i] for i in ds])
    coeff = ctx.cfg.train.kl_coeff
    return lambda _data, _pairs: coeff * kl
