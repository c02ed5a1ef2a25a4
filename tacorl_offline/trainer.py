"""Phase two: REINFORCE on the compressor, replaying cached teacher answers.

The :class:`Trainer` keeps the loop, the run's state and resume. One step
(:meth:`Trainer.step`) reads top to bottom as its stages, each in its own module of
:mod:`tacorl_offline.training`, passing one :class:`~tacorl_offline.training.records.StepData`:

1. **rollout** (:mod:`~tacorl_offline.training.rollout`): G sampled masks per prompt, plus the
   greedy one for SCST;
2. **length gate** and 3. **replay** (:mod:`~tacorl_offline.training.replay_stage`): length-only
   rewards with no call; the rest replayed by mask or request hash, the misses paid once each,
   journaled before they are scored;
4. **score** (:mod:`~tacorl_offline.training.scoring`) -> 5. **advantages**
   (:mod:`~tacorl_offline.training.advantage_stage`) -> 6. **update**
   (:mod:`~tacorl_offline.training.update`, or :mod:`tacorl_offline.offpolicy_update` with reuse);
7. **record** (:mod:`~tacorl_offline.training.record`) the step and its samples.

A step opens the warehouse once, in stage 7, which in one process runs (with a periodic
checkpoint) during the next step's teacher wait; stage 3 decides its lookups in memory while
that is exact (:mod:`~tacorl_offline.training.record`, :mod:`~.training.replay_stage`). Every
answer paid for is journaled first, so a crash never loses one.

Off-policy reuse (``train.reuse``, off by default): stage 1 may fill part of a prompt's group
with stored samples of it, which skip stages 2-4; stage 6 then runs ``update_epochs``
importance-weighted passes (:mod:`tacorl_offline.offpolicy_update`).

Stages 2-5 run on rank 0 (warehouse, teacher); every rank updates its shard (DDP).

Two places take additions: ``Trainer.loss_terms`` (:data:`~tacorl_offline.training.update.LossTerm`;
the KL anchor of ``train.kl_coeff`` is one) join the update's loss; ``Trainer.after_step``
callbacks (:data:`AfterStep`) run once a step is recorded, before the budget check and
checkpoint. ``train.validation`` scores the start and every N steps on a held-apart split;
the final model is the best point (:mod:`~tacorl_offline.training.validation`).

Determinism is what makes ``--resume`` exact: the data order is a seeded permutation per
epoch, mask sampling uses its own ``torch.Generator``, and every checkpoint
(:mod:`tacorl_offline.checkpoints`) stores the optimizer, scheduler, both RNG states, the
moving-average baseline and the position in the data. Against a warm warehouse a
killed-and-resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from tacorl_offline import checkpoints, metric_cache
from tacorl_offline.calls import Budget
from tacorl_offline.config import Config
from tacorl_offline.distributed import Dist
from tacorl_offline.errors import UserError
from tacorl_offline.offpolicy_update import update_reusing
from tacorl_offline.replay import MaskMap
from tacorl_offline.rewards import RewardSettings
from tacorl_offline.runs import PhaseRun, key_of, phase_run
from tacorl_offline.tokens import make_token_counter
from tacorl_offline.training.advantage_stage import advantages
from tacorl_offline.training.data import epoch_order, read_items, read_store
from tacorl_offline.training.optim import build_optimizer, lr_schedule, rl_optimizer
from tacorl_offline.training.policy import build_policy
from tacorl_offline.training.record import Deferred, record, step_log
from tacorl_offline.training.records import Position, StageContext, StepData, StepLog, TrainSummary
from tacorl_offline.training.replay_stage import length_gate, replay, sample_and_replay
from tacorl_offline.training.rollout import rollout
from tacorl_offline.training.scoring import score_rollouts
from tacorl_offline.training.update import LossTerm, kl_anchor, update
from tacorl_offline.training.validation import validator_for
from tacorl_offline.warehouse import Warehouse

__all__ = ["AfterStep", "StepLog", "TrainSummary", "Trainer", "build_optimizer", "epoch_order"]

# Runs on every rank after step k is recorded (``log.step == k``), before the budget check
# and the checkpoint; its teacher calls count against the run's budget.
AfterStep = Callable[["Trainer", PhaseRun | None, StepLog], Awaitable[None]]


class Trainer:
    def __init__(
        self,
        cfg: Config,
        *,
        warehouse: Warehouse,
        resume: str | None = None,
        budget: Budget | None = None,
        dist: Dist | None = None,
        on_step: Callable[[StepLog, TrainSummary], None] | None = None,
    ) -> None:
        self.dist = dist or Dist()
        self.warehouse = warehouse
        self.on_step = on_step
        # One process: sample the next prompts while the first ones' calls run (stages 1-3
        # overlapped, same masks and result); False runs them one after another (benches).
        self.overlap = True
        self.loss_terms: list[LossTerm] = []  # extra terms of the update's loss
        self.after_step: list[AfterStep] = []  # callbacks once a step is recorded
        self.deferred = Deferred()  # a step's warehouse write, held for the next step's wait
        ckpt = checkpoints.find(Path(cfg.train.output_dir), resume, warehouse) if resume else None
        self.cfg = cfg = checkpoints.resumed_config(cfg, ckpt) if ckpt else cfg
        self.settings = RewardSettings.from_config(cfg)
        self.metric_names = metric_cache.metric_names(self.settings)
        self.mask_map = MaskMap(key_of(cfg.teacher))
        self.reuse = cfg.train.reuse
        if self.reuse.active and self.dist.enabled:
            raise UserError(
                "train.reuse runs in one process; set update_epochs: 1 and stored_per_prompt: 0 "
                "for a multi-process (torchrun) run"
            )
        self.budget = budget or Budget(cfg.budget.max_cost_usd, cfg.budget.max_calls)
        self.comp, self.policy, self.start_model, self.device = build_policy(cfg, self.dist, ckpt)
        self.model = self.comp.model
        if self.start_model is not None:
            self.loss_terms.append(kl_anchor(cfg.train.kl_coeff))
        self.count = make_token_counter(cfg.train.token_counter, self.comp.tokenizer)
        self.cfg, self.dataset_note, self.items = read_items(
            cfg,
            warehouse,
            self.dist,
            mask_map=self.mask_map,
            metric_names=self.metric_names.values(),
            settle_dataset=not resume,
        )
        self._build_schedule()
        self.pos = Position()
        self.resumed_from: int | None = None
        if ckpt:
            self.run_id = checkpoints.read_run_id(ckpt)
            self._restore(checkpoints.read_state(ckpt))
            self.resumed_from = self.pos.step
        else:
            self.run_id = "train-" + uuid.uuid4().hex[:12]
        if self.dist.enabled:
            self.run_id = self.dist.broadcast(self.run_id)
        self.run_dir = Path(self.cfg.train.output_dir) / self.run_id
        self.validator = validator_for(
            self.cfg, warehouse, self.dist, self.run_dir, self.resumed_from
        )
        store = read_store(self.cfg, warehouse, self.dist, self.run_id, self.pos.step, self.items)
        self.ctx = StageContext(
            cfg=self.cfg,
            comp=self.comp,
            policy=self.policy,
            start_model=self.start_model,
            items=self.items,
            count=self.count,
            settings=self.settings,
            metric_names=self.metric_names,
            mask_map=self.mask_map,
            warehouse=self.warehouse,
            dist=self.dist,
            run_id=self.run_id,
            run_dir=self.run_dir,
            store=store,
        )

    def _build_schedule(self) -> None:
        """Steps, optimizer, learning-rate schedule and the sampler's generator."""
        tc = self.cfg.train
        self.steps_per_epoch = math.ceil(len(self.items) / tc.batch_size)
        self.total_steps = tc.max_steps or tc.epochs * self.steps_per_epoch
        total_updates = max(1, math.ceil(self.total_steps / tc.grad_accum))
        self.opt = rl_optimizer(self.model, tc)
        self.sched = lr_schedule(self.opt, warmup=tc.warmup_steps, total_updates=total_updates)
        self.gen = torch.Generator(device="cpu").manual_seed(tc.seed * 7919 + self.dist.rank)

    # ------------------------------------------------------------------ one step

    def _next_batch(self) -> tuple[int, list[int]]:
        """(epoch, indices into self.items) for the next step; advances the position."""
        b = self.cfg.train.batch_size
        if self.pos.index >= len(self.items):
            self.pos.epoch += 1
            self.pos.index = 0
        tc = self.cfg.train
        seed = tc.seed if tc.data_seed is None else tc.data_seed
        order = epoch_order(len(self.items), seed, self.pos.epoch)
        idx = order[self.pos.index : self.pos.index + b]
        self.pos.index += b
        return self.pos.epoch, idx

    async def step(self, run: PhaseRun | None) -> StepLog | None:
        """One step; None when the budget stopped it before every answer it needs was sent.

        Such a step is undone (position and RNG states restored, no update, nothing recorded)
        so that the resumed run redoes it: the answers it did pay for are replayed then, and
        no sample is left unscored without saying so.
        """
        t_start = time.perf_counter()
        before = (replace(self.pos), self.gen.get_state(), torch.get_rng_state())
        data = StepData(*self._next_batch(), started=t_start)
        mine = data.batch[self.dist.rank :: self.dist.world_size]  # this rank's shard
        unsent = False
        overlapped = self.overlap and run is not None and not self.dist.enabled
        if overlapped:  # one process: the policy samples while the first calls run
            assert run is not None
            run.caller.step = self.pos.step + 1  # the ledger rows of this step say so
            data.replay = await sample_and_replay(
                self.ctx,
                data,
                mine,
                run,
                gen=self.gen,
                step=self.pos.step + 1,
                before_wait=self.deferred.flush,
            )
            data.everyone = list(data.rollouts)
            unsent = run.caller.stats.budget_stopped
        else:
            self.deferred.flush()
            rollout(self.ctx, data, mine, gen=self.gen, step=self.pos.step + 1)
            data.everyone = [r for part in self.dist.gather(data.rollouts) for r in part]
        if self.dist.is_main and not overlapped:
            length_gate(self.ctx, data.fresh)
            if run is not None:
                run.caller.step = self.pos.step + 1  # the ledger rows of this step say so
            data.replay = await replay(self.ctx, data.fresh, run)
            unsent = bool(run is not None and run.caller.stats.budget_stopped)
        if self.dist.broadcast(unsent):
            self.pos, gen_state, rng_state = before
            self.gen.set_state(gen_state)
            torch.set_rng_state(rng_state)
            return None
        if self.dist.is_main:
            score_rollouts(self.ctx, data.fresh, data.replay)
            data.adv = advantages(self.cfg.train, data.everyone, data.batch, self.pos.ema)
        data.adv = self.dist.broadcast(data.adv)
        assert data.adv is not None
        self.pos.ema = data.adv.ema
        data.loss, data.lr = self._update(data)
        self.pos.step += 1
        if not self.dist.is_main:
            return StepLog(self.pos.step, data.epoch, data.loss, data.lr)
        seconds = time.perf_counter() - t_start
        log = step_log(data, self.pos.step, seconds, self.reuse.update_epochs)
        # Overlapped: the warehouse write waits for the next step's teacher wait (record.py)
        defer = self.deferred if overlapped and not self.after_step else None
        record(self.ctx, log, data, run, defer=defer)
        return log

    def _update(self, data: StepData) -> tuple[float, float]:
        """Stage 6 for step ``pos.step + 1``: (loss, learning rate)."""
        if self.reuse.active:
            return update_reusing(
                self.ctx, data, opt=self.opt, sched=self.sched, loss_terms=self.loss_terms
            )
        return update(
            self.ctx,
            data,
            step=self.pos.step + 1,
            total_steps=self.total_steps,
            opt=self.opt,
            sched=self.sched,
            loss_terms=self.loss_terms,
        )

    # ------------------------------------------------------------------ checkpoints

    def _restore(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.gen.set_state(state["sampler_rng"][self.dist.rank])
        p = state["position"]
        ema = p.get("ema")
        ema = None if ema is None or math.isnan(ema) else float(ema)
        self.pos = Position(int(p["step"]), int(p["epoch"]), int(p["index"]), ema)

    def save_checkpoint(self, *, defer: bool = False) -> Path:
        """Atomic (:mod:`tacorl_offline.checkpoints`), every rank's sampler state kept, once its
        steps are in the warehouse; ``defer``: held behind them (training/record.py)."""
        states = self.dist.gather(self.gen.get_state())
        if not self.dist.is_main:
            return self.run_dir
        write = partial(
            checkpoints.save,
            self.run_dir,
            self.pos.step,
            run_id=self.run_id,
            save_model=self.comp.save_pretrained,
            state={
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "sampler_rng": states,
                "position": {
                    "step": self.pos.step,
                    "epoch": self.pos.epoch,
                    "index": self.pos.index,
                    "ema": math.nan if self.pos.ema is None else self.pos.ema,
                },
            },
            config=self.cfg.stored(),
            keep=self.cfg.train.keep_checkpoints,
        )
        if defer:
            self.deferred.hold(write)
            return self.run_dir
        self.deferred.flush()
        return write()

    # ------------------------------------------------------------------ the loop

    async def run(self) -> TrainSummary:
        if not self.dist.is_main:  # rank 0 owns the run, the teacher and the warehouse
            return await self._loop(None)
        async with phase_run(
            self.warehouse, self.cfg, "train", run_id=self.run_id, budget=self.budget
        ) as run:
            with self.warehouse.transaction() as con:
                run.begin(
                    con, resume=self.resumed_from is not None, world_size=self.dist.world_size
                )
            return await self._loop(run)

    async def _loop(self, run: PhaseRun | None) -> TrainSummary:
        s = TrainSummary(
            run_id=self.run_id,
            run_dir=self.run_dir,
            resumed_from=self.resumed_from,
            world_size=self.dist.world_size,
        )
        t0 = time.perf_counter()
        try:
            await self._validate(run, s)  # the start model (or a point a kill left unscored)
            while self.pos.step < self.total_steps and s.stopped_early is None:
                log = await self.step(run)
                if log is None:  # the budget stopped this step midway: it is redone on resume
                    self._stop_for_budget(
                        run, s, f"during step {self.pos.step + 1}, which a resume redoes"
                    )
                    break
                await self._after_step(run, log, s)
                # Budgets count this invocation's calls; the last step finishes the run anyway.
                stop = self.dist.broadcast(bool(run and run.budget.reached()))
                if stop and self.pos.step < self.total_steps:
                    self._stop_for_budget(run, s, f"at step {self.pos.step}")
                    break
                if self.pos.step % self.cfg.train.checkpoint_every == 0 and (
                    self.pos.step < self.total_steps
                ):
                    self.save_checkpoint(defer=self.overlap and not self.dist.enabled)
                if self.pos.step < self.total_steps:
                    await self._validate(run, s)  # after the checkpoint: see validation.py
            else:
                await self._validate(run, s)
                self._finish(s)
            checkpoints.check_ranks_agree(self.dist, self.model, self.run_dir)
        except BaseException:
            with contextlib.suppress(Exception):  # keep the last step's rows if the file can
                self.deferred.flush()
            raise
        finally:
            s.seconds = time.perf_counter() - t0
        return s

    async def _after_step(self, run: PhaseRun | None, log: StepLog, s: TrainSummary) -> None:
        """The one place "after step k": the summary, ``on_step``, then ``after_step``."""
        s.steps += 1
        s.last = log
        if self.dist.is_main:
            s.spend.add(log.spend)
            s.short_circuits += log.short_circuits
            s.unscorable += log.n_unscorable
            s.rewards.append(log.reward_mean)
            if self.on_step:
                self.on_step(log, s)
        if self.after_step:
            self.deferred.flush()
        for callback in self.after_step:
            await callback(self, run, log)

    async def _validate(self, run: PhaseRun | None, s: TrainSummary) -> None:
        if self.validator is not None and run is not None:  # rank 0 holds the run
            await self.validator.score_due(self, run, s)

    def _stop_for_budget(self, run: PhaseRun | None, s: TrainSummary, where: str) -> None:
        s.budget_stopped = True
        if run is not None:
            run.stop_for_budget(
                f"budget reached ({run.budget.remaining_text()}) {where}; "
                f"resume with --resume {self.run_id}"
            )
        self.save_checkpoint()

    def _finish(self, s: TrainSummary) -> None:
        """The last checkpoint and the final model (resuming a finished run rewrites nothing)."""
        final = self.run_dir / "final"
        if s.steps or not final.is_dir():
            ckpt = self.save_checkpoint()
            if self.dist.is_main:  # the last checkpoint's model or the best on validation
                best = self.validator.best_model() if self.validator else None
                checkpoints.publish_model(best or ckpt / "model", final)
        s.final_model = final
