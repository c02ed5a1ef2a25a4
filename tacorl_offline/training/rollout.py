"""Stage 1, rollout: sample G word keep-masks per prompt (one forward pass, with gradient),
plus the greedy mask for the SCST baseline; each becomes a :class:`~.records.Rollout`.

With off-policy reuse (``train.reuse.stored_per_prompt``), part of a prompt's group is filled
with that prompt's stored samples (:mod:`tacorl_offline.reuse`), re-scored under today's policy;
one whose policy drifted past ``max_log_ratio`` is dropped and counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tacorl_offline import anchor, credit, offpolicy, reuse
from tacorl_offline.training.records import GREEDY, Rollout, StageContext, StepData


def rollout(
    ctx: StageContext,
    data: StepData,
    mine: list[int],
    *,
    gen: torch.Generator,
    step: int,
    chunk: int | None = None,
    on_prompt: Callable[[list[Rollout]], None] | None = None,
) -> None:
    """Sampled masks (with gradient) of this rank's prompts ``mine`` and, for SCST, the greedy
    mask of each; fills ``data.rollouts`` and the ``Sample`` objects they came from, aligned,
    and ``data.dropped``. ``step`` is the step being taken (1-based).

    ``chunk``: prompts per forward pass (None: all in one). ``on_prompt`` gets each prompt's
    rollouts as soon as they are drawn, so their teacher calls can start while the next
    chunk is sampled (:class:`~.replay_stage.Overlap`). Neither changes the masks: the
    sampler's generator is drawn from in the same order, prompt by prompt."""
    tc = ctx.cfg.train
    if not mine:
        return
    # Rollouts run in eval mode (dropout off): masks come from the very policy greedy
    # compression uses, the SCST greedy mask is deterministic, and the log-prob that is
    # differentiated (the same forward, grad on) is exactly the behaviour policy's.
    ctx.policy.eval()
    # train.sampler 'rate': masks keep, in expectation, the budget greedy keeps at evaluation
    rate = ctx.cfg.compressor.rate if tc.sampler == "rate" else None
    size = chunk or len(mine)
    probs: list[torch.Tensor] = []
    data.probs = {}
    for lo in range(0, len(mine), size):
        part = mine[lo : lo + size]
        texts = [ctx.items[i].text for i in part]
        fields = [ctx.items[i].fields for i in part]
        decisions = ctx.comp.decisions(texts, model=ctx.policy, fields=fields, rate=rate)
        probs += [d.probs for d in decisions]
        data.probs.update({i: d.probs for i, d in zip(part, decisions, strict=True)})
        # SCST: the greedy mask of the same prompts, at the same budget, is the baseline.
        greedy = (
            ctx.comp.greedy(texts, model=ctx.policy, fields=fields, rate=rate)
            if tc.baseline == "scst"
            else []
        )
        for k, i in enumerate(part):
            group, chosen = _group(ctx, data, i, decisions[k], gen=gen, step=step)
            if greedy:
                group.append((GREEDY, greedy[k], None))
            n_orig = ctx.count(ctx.items[i].text)
            mine_now = []
            for j, s, origin in group:
                r = _record_of(ctx, i, j, s, origin, n_orig)
                if chosen and 0 <= j < len(chosen):
                    r.sentence = chosen[j]
                data.rollouts.append(r)
                data.samples.append(s)
                mine_now.append(r)
            if on_prompt is not None:
                on_prompt(mine_now)
    texts = [ctx.items[i].text for i in mine]
    fields = [ctx.items[i].fields for i in mine]
    data.kl = kl_term(ctx, data, mine, texts, fields, rate, probs)


Origin = tuple[reuse.StoredSample, float]  # a stored sample and its drift


def kl_term(
    ctx: StageContext,
    data: StepData,
    mine: list[int],
    texts: list[str],
    fields: list[Any],
    rate: float | None,
    probs: list[torch.Tensor],
) -> torch.Tensor | None:
    """train.kl_coeff: the KL anchor of these prompts (the start policy's probabilities are
    computed once per step, with the same rate shift, and kept in ``data`` for the reuse
    passes)."""
    if ctx.start_model is None:
        return None
    with torch.no_grad():
        start = ctx.comp.decisions(texts, model=ctx.start_model, fields=fields, rate=rate)
    data.start_probs = {i: d.probs for i, d in zip(mine, start, strict=True)}
    return anchor.kl_penalty(probs, [d.probs for d in start])


def _group(
    ctx: StageContext, data: StepData, i: int, d: Any, *, gen: torch.Generator, step: int
) -> tuple[list[tuple[int, Any, Origin | None]], list[int | None]]:
    """(slot, Sample, origin) of prompt ``i``'s group: fresh draws, then stored samples;
    and, for train.credit sentence, the sentence each fresh variant re-drew."""
    tc, ru = ctx.cfg.train, ctx.cfg.train.reuse
    # Stored samples of this prompt join its group in place of fresh draws (no call).
    kept = pick_stored(ctx, data, ctx.items[i].prompt_id, d, step) if ru.stored_per_prompt else []
    n_fresh = max(ru.min_fresh, tc.samples_per_prompt - len(kept))
    kept = kept[: tc.samples_per_prompt - n_fresh]
    opts = ctx.comp.options
    chosen: list[int | None] = []
    if tc.credit == "sentence":
        sent_of = credit.sentence_ids(d.layout.words)[d.dec]
        data.sent_of[i] = sent_of
        acts, chosen = credit.draw_group(d.probs, sent_of, n_fresh, gen)
        drawn = [d.sample_of(a.cpu().numpy(), opts) for a in acts]
    else:
        drawn = d.draw(n_fresh, gen, opts)
    group: list[tuple[int, Any, Origin | None]] = [(j, s, None) for j, s in enumerate(drawn)]
    group += [(n_fresh + j, s, (st, drift)) for j, (st, s, drift) in enumerate(kept)]
    return group, chosen


def _record_of(
    ctx: StageContext, i: int, j: int, s: Any, origin: Origin | None, n_orig: int
) -> Rollout:
    item = ctx.items[i]
    r = Rollout(
        item=i,
        prompt_id=item.prompt_id,
        sample_idx=j,
        mask_hash=s.mask_hash,
        text=s.text,
        n_orig=n_orig,
        n_comp=ctx.count(s.text),
        n_words=s.n_words,
        n_kept=s.n_kept,
        entropy=float(s.entropy.detach()) / max(1, s.n_actions),
        actions=s.actions,
    )
    if origin is not None:
        r.stored, r.drift = origin
        r.behaviour = r.stored.behaviour
        r.reward = r.stored.reward
    elif j != GREEDY and s.word_log_probs is not None:
        r.behaviour = s.word_log_probs.detach().to("cpu", torch.float32)
    return r


def pick_stored(
    ctx: StageContext, data: StepData, prompt_id: str, d: Any, step: int
) -> list[tuple[reuse.StoredSample, Any, float]]:
    """The prompt's stored samples that today's policy may learn from, closest first:
    (stored sample, its ``Sample`` under today's policy with gradient, drift). A sample
    whose mask no longer matches (other compressor options) is skipped; one whose policy
    drifted past ``max_log_ratio`` is dropped and counted in ``data.dropped``."""
    ru = ctx.cfg.train.reuse
    out = []
    opts = ctx.comp.options
    for st in ctx.store.of(prompt_id, run_id=ctx.run_id, step=step, max_age=ru.max_age_steps):
        if len(st.actions) != len(d.dec):
            continue
        s = d.sample_of(st.actions, opts)
        if s.mask_hash != st.mask_hash:
            continue
        drift = offpolicy.drift(s.word_log_probs, st.behaviour)
        if drift > ru.max_log_ratio:
            data.dropped += 1
            continue
        out.append((st, s, drift))
    out.sort(key=lambda t: (t[2], t[0].run_id, t[0].step, t[0].sample_idx))
    return out[: ru.stored_per_prompt]
