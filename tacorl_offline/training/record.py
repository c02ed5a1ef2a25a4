"""Stage 7, record: the step's row, its samples and replays in the warehouse in one
transaction; if a reader holds the lock past a second, they go to the journal instead (metric
values, a cache, are then left out) and the next write open flushes them. This run's scored
samples join the reuse store; ``train.csv_logs`` appends upstream's two CSV files.

Design decision (issue 19): in one process the warehouse write may wait in a
:class:`Deferred` until the next step's teacher wait (the policy has sampled every prompt and
the calls are out; a worker thread writes it), where it costs no wall time; the reuse store
and the CSV logs are updated at once. A periodic checkpoint waits behind it the same way: its
small state (position, RNG states) is taken when it is held, and the model and optimizer,
which only the next update changes, are written before that update starts. Nothing held was
paid for: every answer was journaled when it arrived, and the masks are in the run's map. The
trainer flushes before a validation point, ``after_step`` callbacks, a budget stop and the end
of the run (a crash included, where it can); a kill in between loses the step's bookkeeping
rows and that checkpoint only: the run resumes from the one before and redoes the steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

from tacorl_offline import csvlogs, reuse
from tacorl_offline.replay import ReplayStats
from tacorl_offline.runs import PhaseRun
from tacorl_offline.training.records import NAN, Rollout, StageContext, StepData, StepLog, mean_std
from tacorl_offline.warehouse import WarehouseLocked, insert_rows


def step_log(data: StepData, step: int, seconds: float, update_epochs: int) -> StepLog:
    """The ``steps`` row of a finished step (rank 0: every rank's rollouts)."""
    rollouts = data.everyone
    train = [r for r in rollouts if r.trains and r.fresh]
    finite = [r.reward for r in train if not math.isnan(r.reward)]
    mean, std = mean_std(finite)
    comp = [r.n_comp / r.n_orig for r in train if r.n_orig > 0]
    return StepLog(
        step=step,
        epoch=data.epoch,
        loss=data.loss,
        lr=data.lr,
        reward_mean=mean,
        reward_std=std,
        reward_min=min(finite) if finite else NAN,
        reward_max=max(finite) if finite else NAN,
        compression=sum(comp) / len(comp) if comp else NAN,
        entropy=sum(r.entropy for r in train) / max(1, len(train)),
        n_samples=len(train),
        n_unscorable=sum(1 for r in rollouts if r.fresh and math.isnan(r.reward)),
        short_circuits=sum(1 for r in rollouts if r.fresh and r.gate is not None),
        spend=data.replay.spend,
        seconds=seconds,
        teacher_seconds=data.replay.teacher_seconds,
        fresh_samples=len(train),
        replayed_samples=sum(1 for r in rollouts if r.stored is not None),
        replay_dropped=data.dropped,
        update_epochs=update_epochs,
    )


class Deferred:
    """Writes held until :meth:`flush`, which runs them in the order they were held: a step's
    warehouse rows, then its checkpoint (the trainer holds one every ``checkpoint_every``)."""

    def __init__(self) -> None:
        self._writes: list[Callable[[], Any]] = []

    def hold(self, write: Callable[[], Any]) -> None:
        self._writes.append(write)

    def flush(self) -> None:
        while self._writes:
            self._writes.pop(0)()


def record(
    ctx: StageContext,
    log: StepLog,
    data: StepData,
    run: PhaseRun | None,
    *,
    defer: Deferred | None = None,
) -> None:
    """The step's rows (warehouse or journal; held in ``defer`` when given), the reuse store,
    the CSV logs."""
    # Built here only when the reuse store needs them now; else by the (maybe held) write.
    rows = _sample_rows(ctx, log, data) if ctx.cfg.train.reuse.stored_per_prompt else None
    write = partial(_write_rows, ctx, log, data, run, rows)
    if defer is None:
        write()
    else:
        defer.hold(write)
    if rows is not None:  # this run's samples may join later groups
        _store(ctx, log.step, rows)
    if ctx.cfg.train.csv_logs:
        csvlogs.append_step(
            ctx.run_dir,
            epoch=log.epoch,
            step=log.step,
            loss=log.loss,
            lr=log.lr,
            reward=log.reward_mean,
            kept=log.compression,
        )


def _sample_rows(ctx: StageContext, log: StepLog, data: StepData) -> list[dict[str, Any]]:
    return [_sample_row(ctx.run_id, log.step, r) for r in data.everyone if r.fresh]


def _write_rows(
    ctx: StageContext,
    log: StepLog,
    data: StepData,
    run: PhaseRun | None,
    sample_rows: list[dict[str, Any]] | None,
) -> None:
    """The step's rows in the warehouse, or in the journal while a reader holds the lock."""
    if sample_rows is None:
        sample_rows = _sample_rows(ctx, log, data)
    replay_rows = [
        _replay_row(ctx.run_id, log.step, r) for r in data.everyone if r.stored is not None
    ]
    step_row = {"run_id": ctx.run_id, **log.row()}
    replay = data.replay
    try:
        write_step(ctx, step_row, sample_rows, replay, run, log.step, replay_rows)
    except WarehouseLocked:
        # A long reader holds the file: training goes on. The step's rows go to the
        # journal (durable), and the next write open, any process's, flushes them.
        entries: list[tuple[str, dict[str, Any]]] = [("steps", step_row)]
        entries += [("samples", r) for r in sample_rows]
        entries += [("replays", r) for r in replay_rows]
        if run is not None:
            entries += run.record_entries(
                hits=replay.hits_ledger, masks=replay.new_masks, step=log.step
            )
        ctx.warehouse.journal(entries)


def _sample_row(run_id: str, step: int, r: Rollout) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "step": step,
        "prompt_id": r.prompt_id,
        "sample_idx": r.sample_idx,
        "mask_hash": r.mask_hash,
        "request_hash": r.request_hash if r.needs_teacher else None,
        "reward": None if math.isnan(r.reward) else r.reward,
        "metrics": r.metrics or None,
        "n_orig_tokens": r.n_orig,
        "n_comp_tokens": r.n_comp,
        "n_words": r.n_words,
        "n_kept": r.n_kept,
        "cache_hit": r.cache_hit,
        "short_circuit": not r.needs_teacher,
        "unscorable": math.isnan(r.reward),
        **behaviour_columns(r),
    }


def _replay_row(run_id: str, step: int, r: Rollout) -> dict[str, Any]:
    assert r.stored is not None
    return {
        "run_id": run_id,
        "step": step,
        "prompt_id": r.prompt_id,
        "slot": r.sample_idx,
        "source_run": r.stored.run_id,
        "source_step": r.stored.step,
        "source_sample_idx": r.stored.sample_idx,
        "reward": r.reward,
        "drift": r.drift,
    }


def _store(ctx: StageContext, step: int, sample_rows: list[dict[str, Any]]) -> None:
    for row in sample_rows:
        if row["reward"] is not None and row["sample_idx"] >= 0:
            ctx.store.add(
                reuse.stored(
                    ctx.run_id,
                    step,
                    row["sample_idx"],
                    row["prompt_id"],
                    row["mask_hash"],
                    row["actions"],
                    row["behaviour_logp"],
                    row["reward"],
                )
            )


def behaviour_columns(r: Rollout) -> dict[str, Any]:
    """samples.actions / behaviour_logp of a sampled mask (NULL for the greedy one)."""
    if r.behaviour is None or r.actions is None or not r.trains:
        return {"actions": None, "behaviour_logp": None}
    acts, blp = reuse.as_row_lists(r.actions, r.behaviour)
    return {"actions": acts, "behaviour_logp": blp}


def write_step(
    ctx: StageContext,
    step_row: dict[str, Any],
    sample_rows: list[dict[str, Any]],
    replay: ReplayStats,
    run: PhaseRun | None,
    step: int,
    replay_rows: list[dict[str, Any]] | None = None,
) -> None:
    """One transaction for a step's rows. Waits at most a second for the lock."""
    wh = ctx.warehouse
    with wh.transaction(lock_timeout_s=min(wh.lock_timeout_s, 1.0)) as con:
        if run is not None:
            run.record(con, hits=replay.hits_ledger, masks=replay.new_masks, step=step)
        # Calls and cost come from the ledger: a step redone after a kill or a budget stop
        # counts what every execution of it paid for, exactly once.
        calls, cost = con.execute(
            "SELECT count(DISTINCT request_hash), coalesce(sum(cost_usd), 0) FROM api_calls"
            " WHERE run_id = ? AND step = ? AND status <> 'hit'",
            [ctx.run_id, step],
        ).fetchall()[0]
        step_row["calls"], step_row["cost_usd"] = int(calls), float(cost)
        insert_rows(con, "samples", sample_rows, on_conflict="replace")
        insert_rows(con, "steps", [step_row], on_conflict="replace")
        insert_rows(con, "replays", replay_rows or [], on_conflict="replace")
        # Metric values computed this step: a cache, so a step journaled instead (a reader
        # held the lock) leaves them out and a later replay computes them again.
        insert_rows(con, "metric_values", replay.metric_rows, on_conflict="ignore")
    ctx.mask_map.add_metrics(replay.metric_rows)  # committed: later hits read them
