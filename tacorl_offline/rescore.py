"""Exact rescoring: a run's stored answers scored again under today's reward, with no call.

The warehouse stores answers, not only rewards (DESIGN.md), so a change of reward family,
metric or rate costs nothing: ``tacorl-offline train --rescore RUN`` reads the run's samples,
their answers (by request hash) and the teacher's answers to the originals, and scores them
with the config's reward settings. The result is a new run of kind ``rescore`` (status
``finished``, today's config, the same teacher key) whose ``samples`` rows are the source's
masks, actions and behaviour log-probs with the new rewards. So:

- the new rewards are queryable in SQL beside the old ones (join on prompt and mask);
- a later training run with the new reward replays them (``train.reuse``): a rescore run
  shares its reward signature.

Samples that the new length gate sends to the teacher but that the source decided by length
(no answer was ever asked for) cannot be rescored without a call: they are written unscorable
and counted. Metric values go through the metric cache, so a metric seen before is not
recomputed.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

from tacorl_offline import metric_cache
from tacorl_offline.config import Config
from tacorl_offline.errors import UserError
from tacorl_offline.hashing import text_hash
from tacorl_offline.items import load_items
from tacorl_offline.rewards import RewardSettings, needs_teacher, score
from tacorl_offline.runs import key_of
from tacorl_offline.warehouse import Warehouse, insert_rows


@dataclass
class RescoreSummary:
    run_id: str
    source_run: str
    samples: int
    unscorable: int  # needed an answer the source never asked for
    calls: int  # always 0: rescoring never calls the teacher
    reward_before: float
    reward_after: float


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def rescore_run(cfg: Config, warehouse: Warehouse, source: str) -> RescoreSummary:
    """Score ``source``'s stored answers under ``cfg``'s reward; see the module docstring."""
    tkey = key_of(cfg.teacher)
    settings = RewardSettings.from_config(cfg)
    names = metric_cache.metric_names(settings)
    with warehouse.transaction() as con:  # read and write in one open; all or nothing
        source = _source_run(con, warehouse, source, tkey)
        rows = con.execute(
            "SELECT s.step, s.prompt_id, s.sample_idx, s.mask_hash, s.request_hash, s.reward,"
            " s.n_orig_tokens, s.n_comp_tokens, s.n_words, s.n_kept, s.actions,"
            " s.behaviour_logp, r.answer FROM samples s"
            " LEFT JOIN responses r ON r.request_hash = s.request_hash AND r.ok"
            " WHERE s.run_id = ? ORDER BY s.step, s.prompt_id, s.sample_idx",
            [source],
        ).fetchall()
        if not rows:
            raise UserError(f"run {source} has no samples to rescore")
        items = {i.prompt_id: i for i in load_items(con, cfg, tkey)}
        missing = sorted({r[1] for r in rows} - items.keys())
        if missing:
            raise UserError(
                f"{len(missing)} prompt(s) of run {source} are not in dataset "
                f"{cfg.data.dataset!r} split {cfg.data.split!r}; pass the run's --dataset/--split"
            )
        n_orig = [int(r[6]) for r in rows]
        n_comp = [int(r[7]) for r in rows]
        gates, _ = needs_teacher(settings, n_orig, n_comp)
        answers = [r[12] if g is None else None for r, g in zip(rows, gates, strict=True)]
        refs = [items[r[1]].reference for r in rows]
        keys = [
            (r[4], text_hash(ref)) if r[4] and ref and a is not None else None
            for r, ref, a in zip(rows, refs, answers, strict=True)
        ]
        known = metric_cache.load(con, keys, names) if any(keys) else [None] * len(rows)
        batch = score(
            settings,
            n_orig,
            n_comp,
            answers,
            refs,
            [items[r[1]].gold for r in rows],
            gates=gates,
            known=known,
        )
        run_id = "rescore-" + uuid.uuid4().hex[:12]
        samples = _sample_rows(run_id, rows, gates, batch.rewards, batch.metrics)
        new_metrics = metric_cache.new_rows(keys, known, batch.metrics, names)
        Warehouse.start_run(
            con,
            {
                "run_id": run_id,
                "kind": "rescore",
                "dataset": cfg.data.dataset,
                "split": cfg.data.split,
                "teacher_key": tkey,
                "config": cfg.stored(),
                "message": f"rescored {source} with no call",
            },
        )
        insert_rows(con, "samples", samples)
        insert_rows(con, "metric_values", new_metrics, on_conflict="ignore")
        Warehouse.finish_run(con, run_id, "finished", f"rescored {source} with no call")
    return RescoreSummary(
        run_id=run_id,
        source_run=source,
        samples=len(samples),
        unscorable=sum(1 for s in samples if s["unscorable"]),
        calls=0,
        reward_before=_mean([r[5] for r in rows]),
        reward_after=_mean(batch.rewards),
    )


def _source_run(con: Any, warehouse: Warehouse, source: str, tkey: str) -> str:
    """The run id ``source`` names (an id or 'latest'): a train or rescore run of this teacher."""
    found = con.execute(
        "SELECT run_id, kind, teacher_key FROM runs WHERE run_id = ? "
        "OR (? = 'latest' AND run_id = (SELECT run_id FROM runs WHERE kind = 'train' "
        "ORDER BY started_at DESC LIMIT 1))",
        [source, source],
    ).fetchall()
    if not found:
        raise UserError(
            f'no run {source!r} in {warehouse.path}; list them with: tacorl-offline sql "SELECT run_id, kind FROM runs"'
        )
    source, kind, source_key = found[0]
    if kind not in ("train", "rescore"):
        raise UserError(f"run {source} is a {kind} run; --rescore takes a train run")
    if source_key != tkey:
        raise UserError(
            f"run {source} was answered by another teacher (key {source_key[:12]}); "
            "rescore it with the config it was trained with, changing only train.reward"
        )
    return source


def _sample_rows(
    run_id: str,
    rows: list[Any],
    gates: list[Any],
    rewards: list[float],
    metrics: list[Any],
) -> list[dict[str, Any]]:
    """The rescore run's ``samples`` rows: the source's samples with the new rewards."""
    samples: list[dict[str, Any]] = []
    for r, g, reward, m in zip(rows, gates, rewards, metrics, strict=True):
        samples.append(
            {
                "run_id": run_id,
                "step": r[0],
                "prompt_id": r[1],
                "sample_idx": r[2],
                "mask_hash": r[3],
                "request_hash": r[4] if g is None else None,
                "reward": None if math.isnan(reward) else reward,
                "metrics": m or None,
                "n_orig_tokens": r[6],
                "n_comp_tokens": r[7],
                "n_words": r[8],
                "n_kept": r[9],
                "cache_hit": g is None and r[12] is not None,
                "short_circuit": g is not None,
                "unscorable": math.isnan(reward),
                "actions": r[10],
                "behaviour_logp": r[11],
            }
        )
    return samples
