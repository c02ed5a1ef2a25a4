"""Stage 4, score: each fresh rollout's reward and metric values, from its gate or its answer
(:func:`tacorl_offline.rewards.score`); the metric values computed here become cache rows,
written with the step."""

from __future__ import annotations

from tacorl_offline import metric_cache
from tacorl_offline.replay import ReplayStats
from tacorl_offline.rewards import score
from tacorl_offline.training.records import Rollout, StageContext
from tacorl_offline.training.replay_stage import metric_key


def score_rollouts(ctx: StageContext, rollouts: list[Rollout], replay: ReplayStats) -> None:
    """Sets each rollout's ``reward`` and ``metrics``; ``replay.metric_rows`` gets the new
    metric-cache rows."""
    batch = score(
        ctx.settings,
        [r.n_orig for r in rollouts],
        [r.n_comp for r in rollouts],
        [r.answer for r in rollouts],
        [ctx.items[r.item].reference for r in rollouts],
        [ctx.items[r.item].gold for r in rollouts],
        gates=[r.gate for r in rollouts],
        known=[r.known_metrics for r in rollouts],
    )
    for r, reward, m in zip(rollouts, batch.rewards, batch.metrics, strict=True):
        r.reward, r.metrics = reward, m
    keys = [metric_key(ctx, r, r.request_hash) if r.answer is not None else None for r in rollouts]
    replay.metric_rows = metric_cache.new_rows(
        keys, [r.known_metrics for r in rollouts], batch.metrics, ctx.metric_names
    )
