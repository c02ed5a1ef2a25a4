"""Stage 6, update: the on-policy REINFORCE loss on this rank's samples, then (every
``grad_accum`` steps) an optimizer step. ``train.credit: sentence`` credits
each reward difference to one sentence's words (:func:`sentence_loss`). The reusing update
(``train.reuse``) is :func:`tacorl_offline.offpolicy_update.update_reusing`.

Extra loss terms (the KL anchor to the start policy, :func:`kl_anchor`) are :data:`LossTerm`
functions, passed in a list: each gets the step's data and the (rollout, sample) pairs whose
log-probs the policy loss differentiates, and returns a scalar added to that loss before the
backward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from tacorl_offline import credit
from tacorl_offline.advantages import policy_loss
from tacorl_offline.training.optim import optimizer_step
from tacorl_offline.training.records import Rollout, StageContext, StepData

LossTerm = Callable[[StepData, list[tuple[Rollout, Any]]], torch.Tensor]


def add_terms(
    loss: torch.Tensor,
    terms: Sequence[LossTerm],
    data: StepData,
    pairs: list[tuple[Rollout, Any]],
) -> torch.Tensor:
    """``loss`` plus every extra term (``loss`` itself when there is none)."""
    for term in terms:
        loss = loss + term(data, pairs)
    return loss


def kl_anchor(coeff: float) -> LossTerm:
    """train.kl_coeff: ``coeff`` times the rollout's KL to the start policy (``data.kl``)."""

    def term(data: StepData, pairs: list[tuple[Rollout, Any]]) -> torch.Tensor:
        assert data.kl is not None
        return coeff * data.kl

    return term


def zero_loss(model: torch.nn.Module) -> torch.Tensor:
    """A zero that reaches every parameter: a rank with nothing to learn still joins DDP's
    gradient average."""
    return sum(p.sum() * 0.0 for p in model.parameters())  # type: ignore[return-value]


def update(
    ctx: StageContext,
    data: StepData,
    *,
    step: int,
    total_steps: int,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    loss_terms: Sequence[LossTerm] = (),
) -> tuple[float, float]:
    """REINFORCE on ``data``'s samples (``data.adv`` every rank's), step ``step`` of
    ``total_steps``. Returns (loss, learning rate)."""
    tc = ctx.cfg.train
    pairs = data.trained_pairs()
    if pairs and tc.credit == "sentence":
        loss = add_terms(sentence_loss(ctx, data, pairs), loss_terms, data, pairs)
    elif pairs:
        loss = _reinforce_loss(ctx, data, pairs, loss_terms)
    else:
        loss = zero_loss(ctx.model)
    (loss / tc.grad_accum).backward()
    if step % tc.grad_accum == 0 or step == total_steps:
        optimizer_step(ctx.model, opt, tc.grad_clip)
        sched.step()
    lr = sched.get_last_lr()[0]
    return float(ctx.dist.broadcast(float(loss.detach()))), lr


def _reinforce_loss(
    ctx: StageContext,
    data: StepData,
    pairs: list[tuple[Rollout, Any]],
    loss_terms: Sequence[LossTerm],
) -> torch.Tensor:
    adv = data.adv
    assert adv is not None
    row_of = {i: n for n, i in enumerate(data.batch)}
    lp = torch.stack([s.log_prob for _, s in pairs])
    # per-mask sums, like the log-probs: entropy_coeff weighs them as upstream does
    ent = torch.stack([s.entropy for _, s in pairs])
    n_act = torch.tensor([s.n_actions for _, s in pairs])
    cells = [(row_of[r.item], r.sample_idx) for r, _ in pairs]
    a = torch.tensor([float(adv.values[c]) for c in cells], dtype=lp.dtype)
    valid = torch.tensor([bool(adv.valid[c]) for c in cells])
    loss, _ = policy_loss(lp, a, ent, n_act, ctx.cfg.train.entropy_coeff, valid)
    loss = add_terms(loss, loss_terms, data, pairs)
    if ctx.dist.enabled:
        # DDP averages gradients over ranks; rescale so the result is the global mean.
        n_local = int(valid.sum())
        loss = loss * (n_local * ctx.dist.world_size / max(1, int(adv.valid.sum())))
    return loss


def sentence_loss(
    ctx: StageContext, data: StepData, pairs: list[tuple[Rollout, Any]]
) -> torch.Tensor:
    """train.credit sentence: the paired loss of each prompt's group (:mod:`.credit`),
    summed and divided by the global batch's prompts, plus the entropy term."""
    groups: dict[int, list[tuple[Rollout, Any]]] = {}
    for r, s in pairs:
        groups.setdefault(r.item, []).append((r, s))
    total = None
    for item, members in groups.items():
        members.sort(key=lambda t: t[0].sample_idx)
        loss, _ = credit.paired_loss(
            [s.word_log_probs for _, s in members],
            [r.reward for r, _ in members],
            [r.sentence for r, _ in members],
            data.sent_of[item],
        )
        if loss is not None:
            total = loss if total is None else total + loss
    firsts = [members[0][1] for members in groups.values()]
    # Every rank's loss is its share of the global mean (DDP averages the gradients).
    scale = ctx.dist.world_size / max(1, len(data.batch))
    ent = torch.stack([s.entropy for s in firsts]).mean()
    return -ctx.cfg.train.entropy_coeff * ent + (0.0 if total is None else total * scale)
