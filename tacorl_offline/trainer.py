"""Phase two: REINFORCE on the compressor, replaying cached teacher answers.

One step reads top to bottom as its stages (:meth:`Trainer.step`):

1. **rollout**: sample G word keep-masks per prompt (one forward pass, with gradient), plus
   the greedy mask for the SCST baseline; each becomes a :class:`Rollout` record;
2. **length gate**: decide the length-only rewards (over-compressed, outside the tolerance
   band) with no call; computed once per step and reused by scoring;
3. **replay**: look the rest up by mask hash, then by request hash: a hit replays the stored
   answer; the misses (deduplicated within the step) are sent concurrently, each journaled
   before it is scored (:mod:`tacorl_offline.replay`, :mod:`tacorl_offline.calls`);
4. **score** -> 5. **advantages** (baseline) -> 6. **update** (loss, optimizer step);
7. **record** the step and its samples in the warehouse.

A step opens the warehouse once, in stage 7. Stage 3 decides its lookups in memory: the
run's :class:`~tacorl_offline.replay.MaskMap` (masks, answers, cached metric values, warmed
once and fed every entry this process journals or flushes) plus the journal tail, exact while
no other process has written DuckDB since this one last closed it (a stat of the file). When
another has, stage 3 opens the file for its lookups as before (IN lists by key) and closes it
before any teacher call; while a reader holds the file that connection is read-only and the
journal tail is consulted too. Readers get the lock between steps either way. Stage 7
writes the step's rows (ledger, samples, step, new metric values) in one transaction; if a
reader holds the lock past a second, they go to the journal instead (metric values, a cache,
are then left out) and the next write open flushes them. Every answer paid for is journaled
first, so a crash never loses one.

Off-policy reuse (``train.reuse``, off by default; :mod:`tacorl_offline.offpolicy`): stage 1
may fill part of a prompt's group with samples of that prompt read from the warehouse at the
run's start (:mod:`tacorl_offline.reuse`); they carry their stored reward and skip stages 2-4,
and stage 6 runs ``update_epochs`` importance-weighted passes instead of one. Stage 7 records
them in ``replays`` and counts fresh and replayed contributions in ``steps``.

Stages 2-5 run on rank 0, which owns the warehouse and the teacher; the advantages are
broadcast, and every rank updates its shard (DDP averages the gradients).

Determinism is what makes ``--resume`` exact: the data order is a seeded permutation per
epoch, mask sampling uses its own ``torch.Generator``, and every checkpoint
(:mod:`tacorl_offline.checkpoints`) stores the optimizer, scheduler, both RNG states, the
moving-average baseline and the position in the data. Against a warm warehouse a
killed-and-resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from tacorl_offline import anchor, checkpoints, credit, csvlogs, metric_cache, offpolicy, reuse
from tacorl_offline.advantages import Advantages, compute_advantages, policy_loss
from tacorl_offline.calls import Budget
from tacorl_offline.config import Config
from tacorl_offline.datasets import settle
from tacorl_offline.distributed import Dist
from tacorl_offline.errors import UserError
from tacorl_offline.hashing import text_hash
from tacorl_offline.items import Item, load_items
from tacorl_offline.redaction import URL_FIELDS, is_redacted
from tacorl_offline.replay import MaskMap, ReplayStats, Wanted, lookup, lookup_in_memory, pay
from tacorl_offline.rewards import RewardSettings, needs_teacher, score
from tacorl_offline.runs import PhaseRun, Spend, key_of, phase_run
from tacorl_offline.teachers import render_messages
from tacorl_offline.tokens import make_token_counter
from tacorl_offline.warehouse import Warehouse, WarehouseLocked, insert_rows

NAN = float("nan")
GREEDY = -1  # Rollout.sample_idx of the greedy (SCST baseline) mask


@dataclass
class Position:
    step: int = 0  # steps completed
    epoch: int = 0
    index: int = 0  # next index into this epoch's permutation
    ema: float | None = None  # moving-average baseline


@dataclass
class Rollout:
    """One sampled (or greedy) mask of one prompt, followed through the step's stages."""

    item: int  # index into Trainer.items
    prompt_id: str
    sample_idx: int  # 0..G-1, or GREEDY
    mask_hash: str
    text: str  # the compressed text
    n_orig: int
    n_comp: int
    n_words: int
    n_kept: int
    entropy: float  # per action
    # Off-policy reuse: the deciding words' actions and their behaviour log-probs (float32,
    # as stored); a sample replayed from the warehouse carries its origin and stored reward.
    actions: Any = None
    behaviour: torch.Tensor | None = None
    stored: reuse.StoredSample | None = None
    drift: float = 0.0
    sentence: int | None = None  # train.credit sentence: the sentence a variant re-drew
    # Filled on rank 0 by the later stages:
    gate: float | None = None  # the reward decided by length alone; None: ask the teacher
    request_hash: str | None = None
    answer: str | None = None
    cache_hit: bool = False
    reward: float = NAN
    metrics: dict[str, float] = field(default_factory=dict)
    known_metrics: dict[str, float] | None = None  # cached metric values of a replayed answer

    @property
    def needs_teacher(self) -> bool:
        return self.gate is None and self.stored is None

    @property
    def trains(self) -> bool:
        return self.sample_idx != GREEDY

    @property
    def fresh(self) -> bool:
        """Drawn this step (paid for or replayed from the answer cache), not a stored sample."""
        return self.stored is None


@dataclass
class StepLog:
    """One row of the ``steps`` table. Ranks other than 0 only know the first four fields."""

    step: int
    epoch: int
    loss: float
    lr: float
    reward_mean: float = NAN
    reward_std: float = NAN
    reward_min: float = NAN
    reward_max: float = NAN
    compression: float = NAN
    entropy: float = NAN
    n_samples: int = 0
    n_unscorable: int = 0
    short_circuits: int = 0
    spend: Spend = field(default_factory=Spend)
    seconds: float = 0.0
    teacher_seconds: float = 0.0
    fresh_samples: int = 0  # gradient contributions drawn this step
    replayed_samples: int = 0  # ... and read back from the warehouse (no call)
    replay_dropped: int = 0  # stored samples left out: their policy drifted too far
    update_epochs: int = 1

    def row(self) -> dict[str, Any]:
        """Flat, with NaN as NULL."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "spend"}
        d.update(dataclasses.asdict(self.spend))
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in d.items()}


@dataclass
class TrainSummary:
    run_id: str
    run_dir: Path
    steps: int = 0
    spend: Spend = field(default_factory=Spend)
    short_circuits: int = 0
    unscorable: int = 0
    seconds: float = 0.0
    final_model: Path | None = None
    budget_stopped: bool = False
    resumed_from: int | None = None
    world_size: int = 1
    last: StepLog | None = None
    rewards: list[float] = field(default_factory=list)


def build_optimizer(params: Any, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with the fused kernel where the parameters' device has one (CPU and CUDA in
    torch >= 2.4), else the multi-tensor ``foreach`` path. The default steps through the
    tensors one at a time: 9-10% of a MiniLM step on CPU. Results equal the default within
    float tolerance (tests/test_scale.py)."""
    params = list(params)
    devices = {p.device.type for p in params}
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device/dtype
        return torch.optim.AdamW(
            params, lr=lr, weight_decay=weight_decay, foreach=devices <= {"cpu", "cuda"}
        )


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    if not xs:
        return NAN, NAN
    mean = sum(xs) / len(xs)
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))


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
        from tacorl_offline.compressor import CompressOptions, Compressor

        self.dist = dist or Dist()
        self.dataset_note: str | None = None
        self.warehouse = warehouse
        self.on_step = on_step
        ckpt: Path | None = None
        if resume:
            ckpt = checkpoints.find(Path(cfg.train.output_dir), resume, warehouse)
            saved = checkpoints.read_config(ckpt)
            # The run continues with its own resolved config; only budget/output location may change.
            saved["budget"] = cfg.budget.model_dump()
            # URLs were stored with their credentials masked: take them from today's config.
            for section, key in URL_FIELDS:
                if is_redacted(saved.get(section, {}).get(key)):
                    saved[section][key] = getattr(getattr(cfg, section), key)
            saved["warehouse"] = cfg.warehouse
            # Resume writes where it is told: today's train.output_dir (--output-dir), where the
            # checkpoint was found, not where the run first lived. Likewise keep_checkpoints.
            saved.setdefault("train", {})["output_dir"] = cfg.train.output_dir
            saved["train"]["keep_checkpoints"] = cfg.train.keep_checkpoints
            cfg = Config.model_validate(saved)
        self.cfg = cfg
        tc = cfg.train
        self.settings = RewardSettings.from_config(cfg)
        self.metric_names = metric_cache.metric_names(self.settings)
        self.mask_map = MaskMap(key_of(cfg.teacher))
        self.reuse = tc.reuse
        self.store = reuse.ReplayStore()
        self._dropped = 0  # stored samples dropped for drift in the current step
        if self.reuse.active and self.dist.enabled:
            raise UserError(
                "train.reuse runs in one process; set update_epochs: 1 and stored_per_prompt: 0 "
                "for a multi-process (torchrun) run"
            )
        self.budget = budget or Budget(cfg.budget.max_cost_usd, cfg.budget.max_calls)

        cc = cfg.compressor
        device = cc.device
        if self.dist.enabled and device.startswith("cuda"):
            device = f"cuda:{self.dist.local_rank}"
        self.device = device
        torch.manual_seed(tc.seed)  # the fresh head of a base encoder is seeded too
        self.comp = Compressor.from_pretrained(
            str(ckpt / "model") if ckpt else cc.model,
            device=device,
            options=CompressOptions.from_config(cc),
            condition_on=cc.condition_on,
        )
        self.model = self.comp.model
        self.policy: torch.nn.Module = self.model
        if self.dist.enabled:
            self.policy = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.dist.local_rank] if device.startswith("cuda") else None
            )
        # The KL anchor's reference: a frozen copy of the start policy (train.kl_coeff).
        self.start_model: torch.nn.Module | None = None
        if tc.kl_coeff > 0:
            self.start_model = copy.deepcopy(self.model).eval().requires_grad_(False)
            if ckpt:  # a resumed run anchors to its own start: the model its config names
                torch.manual_seed(tc.seed)  # as at the run's start (a base encoder's fresh head)
                start = Compressor.from_pretrained(
                    cc.model,
                    device=device,
                    options=CompressOptions.from_config(cc),
                    condition_on=cc.condition_on,
                )
                self.start_model = start.model.eval().requires_grad_(False)
        self._start_probs: dict[int, torch.Tensor] = {}  # item -> start policy's probs
        self._kl: torch.Tensor | None = None
        self._sent_of: dict[int, Any] = {}  # train.credit sentence: item -> sentence per word
        self.count = make_token_counter(tc.token_counter, self.comp.tokenizer)
        self.items = self._load_items(settle_dataset=not resume)
        self.steps_per_epoch = math.ceil(len(self.items) / tc.batch_size)
        self.total_steps = tc.max_steps or tc.epochs * self.steps_per_epoch
        total_updates = max(1, math.ceil(self.total_steps / tc.grad_accum))

        self.opt = build_optimizer(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        warm = tc.warmup_steps

        def lr_lambda(update: int) -> float:
            if warm and update < warm:
                return (update + 1) / warm
            progress = (update - warm) / max(1, total_updates - warm)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda)
        self.gen = torch.Generator(device="cpu").manual_seed(tc.seed * 7919 + self.dist.rank)
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
        self.run_dir = Path(tc.output_dir) / self.run_id
        if self.reuse.stored_per_prompt and self.dist.is_main:
            with self.warehouse.connect() as con:
                self.store = reuse.load(
                    con,
                    self.cfg,
                    teacher_key=key_of(self.cfg.teacher),
                    run_id=self.run_id,
                    upto_step=self.pos.step,
                    prompt_ids=[i.prompt_id for i in self.items],
                    other_runs=self.reuse.from_other_runs,
                )

    def _load_items(self, settle_dataset: bool) -> list[Item]:
        items: list[Item] | UserError | None = None
        if self.dist.is_main:  # rank 0 owns the warehouse; the others get the items from it
            try:
                with self.warehouse.connect() as con:
                    if settle_dataset:  # a resumed run keeps its own dataset and split
                        self.cfg, self.dataset_note = settle(
                            self.cfg, con, where=str(self.warehouse.path)
                        )
                    items = load_items(con, self.cfg, key_of(self.cfg.teacher))
                    # Warmed once: each step's lookups are then served from memory.
                    self.mask_map.warm(
                        con,
                        [i.prompt_id for i in items],
                        warehouse=self.warehouse,
                        metric_names=self.metric_names.values(),
                    )
            except UserError as e:
                items = e
        items = self.dist.broadcast(items)
        if isinstance(items, UserError):
            raise items
        assert items is not None
        return items

    # ------------------------------------------------------------------ data

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

    # ------------------------------------------------------------------ one step

    async def step(self, run: PhaseRun | None) -> StepLog | None:
        """One step; None when the budget stopped it before every answer it needs was sent.

        Such a step is undone (position and RNG states restored, no update, nothing recorded)
        so that the resumed run redoes it: the answers it did pay for are replayed then, and
        no sample is left unscored without saying so.
        """
        t_start = time.perf_counter()
        before = (replace(self.pos), self.gen.get_state(), torch.get_rng_state())
        epoch, batch = self._next_batch()
        mine = batch[self.dist.rank :: self.dist.world_size]  # this rank's shard of the batch
        rollouts, samples = self._rollout(mine)
        everyone = [r for part in self.dist.gather(rollouts) for r in part]
        adv: Advantages | None = None
        replay = ReplayStats()
        unsent = False
        fresh = [r for r in everyone if r.fresh]  # stored samples carry their reward
        if self.dist.is_main:
            self._length_gate(fresh)
            if run is not None:
                run.caller.step = self.pos.step + 1  # the ledger rows of this step say so
            replay = await self._replay(fresh, run)
            unsent = bool(run is not None and run.caller.stats.budget_stopped)
        if self.dist.broadcast(unsent):
            self.pos, gen_state, rng_state = before
            self.gen.set_state(gen_state)
            torch.set_rng_state(rng_state)
            return None
        if self.dist.is_main:
            self._score(fresh, replay)
            adv = self._advantages(everyone, batch)
        if self.reuse.active:
            loss, lr = self._update_reusing(rollouts, samples, batch, adv)
        else:
            loss, lr = self._update(rollouts, samples, batch, adv)
        if not self.dist.is_main:
            return StepLog(self.pos.step, epoch, loss, lr)
        log = self._step_log(epoch, loss, lr, everyone, replay, time.perf_counter() - t_start)
        self._record(log, everyone, replay, run)
        return log

    def _rollout(self, mine: list[int]) -> tuple[list[Rollout], list[Any]]:
        """Sampled masks (with gradient) and, for SCST, the greedy mask of each prompt.
        Returns the records and the ``Sample`` objects they came from, aligned."""
        tc = self.cfg.train
        if not mine:
            return [], []
        # Rollouts run in eval mode (dropout off): masks come from the very policy greedy
        # compression uses, the SCST greedy mask is deterministic, and the log-prob that is
        # differentiated (the same forward, grad on) is exactly the behaviour policy's.
        self.policy.eval()
        texts = [self.items[i].text for i in mine]
        fields = [self.items[i].fields for i in mine]
        # train.sampler 'rate': masks keep, in expectation, the budget greedy keeps at evaluation
        rate = self.cfg.compressor.rate if tc.sampler == "rate" else None
        decisions = self.comp.decisions(texts, model=self.policy, fields=fields, rate=rate)
        opts = self.comp.options
        self._kl = self._kl_term(mine, texts, fields, rate, [d.probs for d in decisions])
        # SCST: the greedy mask of the same prompts, at the same budget, is the baseline.
        greedy = (
            self.comp.greedy(texts, model=self.policy, fields=fields, rate=rate)
            if tc.baseline == "scst"
            else []
        )
        self._dropped = 0
        rollouts: list[Rollout] = []
        samples: list[Any] = []
        for k, i in enumerate(mine):
            item = self.items[i]
            d = decisions[k]
            n_orig = self.count(item.text)
            # Stored samples of this prompt join its group in place of fresh draws (no call).
            kept = self._pick_stored(item.prompt_id, d) if self.reuse.stored_per_prompt else []
            n_fresh = max(self.reuse.min_fresh, tc.samples_per_prompt - len(kept))
            kept = kept[: tc.samples_per_prompt - n_fresh]
            chosen: list[int | None] = []
            if tc.credit == "sentence":
                sent_of = credit.sentence_ids(d.layout.words)[d.dec]
                self._sent_of[i] = sent_of
                acts, chosen = credit.draw_group(d.probs, sent_of, n_fresh, self.gen)
                drawn = [d.sample_of(a.cpu().numpy(), opts) for a in acts]
            else:
                drawn = d.draw(n_fresh, self.gen, opts)
            group: list[tuple[int, Any, tuple[reuse.StoredSample, float] | None]] = [
                (j, s, None) for j, s in enumerate(drawn)
            ]
            group += [(n_fresh + j, s, (st, drift)) for j, (st, s, drift) in enumerate(kept)]
            if greedy:
                group.append((GREEDY, greedy[k], None))
            for j, s, origin in group:
                r = Rollout(
                    item=i,
                    prompt_id=item.prompt_id,
                    sample_idx=j,
                    mask_hash=s.mask_hash,
                    text=s.text,
                    n_orig=n_orig,
                    n_comp=self.count(s.text),
                    n_words=s.n_words,
                    n_kept=s.n_kept,
                    entropy=float(s.entropy.detach()) / max(1, s.n_actions),
                    actions=s.actions,
                )
                if chosen and 0 <= j < len(chosen):
                    r.sentence = chosen[j]
                if origin is not None:
                    r.stored, r.drift = origin
                    r.behaviour = r.stored.behaviour
                    r.reward = r.stored.reward
                elif j != GREEDY and s.word_log_probs is not None:
                    r.behaviour = s.word_log_probs.detach().to("cpu", torch.float32)
                rollouts.append(r)
                samples.append(s)
        return rollouts, samples

    def _kl_term(
        self,
        mine: list[int],
        texts: list[str],
        fields: list[Any],
        rate: float | None,
        probs: list[torch.Tensor],
    ) -> torch.Tensor | None:
        """train.kl_coeff: the KL anchor of these prompts (the start policy's probabilities are
        computed once per step, with the same rate shift, and kept for the reuse passes)."""
        if self.start_model is None:
            return None
        with torch.no_grad():
            start = self.comp.decisions(texts, model=self.start_model, fields=fields, rate=rate)
        self._start_probs = {i: d.probs for i, d in zip(mine, start, strict=True)}
        return anchor.kl_penalty(probs, [d.probs for d in start])

    def _pick_stored(self, prompt_id: str, d: Any) -> list[tuple[reuse.StoredSample, Any, float]]:
        """The prompt's stored samples that today's policy may learn from, closest first:
        (stored sample, its ``Sample`` under today's policy with gradient, drift). A sample
        whose mask no longer matches (other compressor options) is skipped; one whose policy
        drifted past ``max_log_ratio`` is dropped and counted."""
        out = []
        opts = self.comp.options
        for st in self.store.of(
            prompt_id, run_id=self.run_id, step=self.pos.step + 1, max_age=self.reuse.max_age_steps
        ):
            if len(st.actions) != len(d.dec):
                continue
            s = d.sample_of(st.actions, opts)
            if s.mask_hash != st.mask_hash:
                continue
            drift = offpolicy.drift(s.word_log_probs, st.behaviour)
            if drift > self.reuse.max_log_ratio:
                self._dropped += 1
                continue
            out.append((st, s, drift))
        out.sort(key=lambda t: (t[2], t[0].run_id, t[0].step, t[0].sample_idx))
        return out[: self.reuse.stored_per_prompt]

    def _length_gate(self, rollouts: list[Rollout]) -> None:
        gates, _ = needs_teacher(
            self.settings, [r.n_orig for r in rollouts], [r.n_comp for r in rollouts]
        )
        for r, g in zip(rollouts, gates, strict=True):
            r.gate = g

    async def _replay(self, rollouts: list[Rollout], run: PhaseRun | None) -> ReplayStats:
        """Answers for the masks the gate left open: replayed, or paid once each.

        Decided in memory (mask map, answers, metric values of the hits) while the map is
        exact; otherwise one warehouse connection for the lookups, closed before any teacher
        call, so readers get the lock during the step. While a reader holds the file it is
        read-only and the journal tail is consulted too.
        """
        asking = [r for r in rollouts if r.needs_teacher]
        wanted = [
            Wanted(r.prompt_id, r.mask_hash, r.text, self.items[r.item].fields) for r in asking
        ]
        found = None

        def render(text: str, fields: Any) -> list[dict[str, str]]:
            return render_messages(self.cfg.teacher, text, fields)

        if run is not None and wanted:
            found = lookup_in_memory(
                wanted,
                teacher_key=run.teacher_key,
                render=render,
                mask_map=self.mask_map,
                warehouse=self.warehouse,
            )
            if found is not None:
                for r, w in zip(asking, wanted, strict=True):
                    if w.request_hash in found.stored:
                        key = self._metric_key(r, w.request_hash)
                        r.known_metrics = self.mask_map.metrics(key, self.metric_names)
        if run is not None and wanted and found is None:
            with self.warehouse.lookup_connection() as (con, overlay):
                found = lookup(
                    con,
                    wanted,
                    teacher_key=run.teacher_key,
                    render=render,
                    mask_map=self.mask_map,
                    tail=self.warehouse.journal_tail() if overlay else None,
                )
                # Metric values of replayed answers are read back, never recomputed.
                keys = [
                    self._metric_key(r, w.request_hash) if w.request_hash in found.stored else None
                    for r, w in zip(asking, wanted, strict=True)
                ]
                if any(keys):
                    cached = metric_cache.load(con, keys, self.metric_names)
                    for r, c in zip(asking, cached, strict=True):
                        r.known_metrics = c
        if found is None:
            return ReplayStats()
        assert run is not None
        stats = await pay(
            found,
            caller=run.caller,
            concurrency=self.cfg.teacher.concurrency,
            mask_map=self.mask_map,
        )
        for r, w in zip(asking, wanted, strict=True):
            r.request_hash, r.answer, r.cache_hit = w.request_hash, w.answer, w.cache_hit
        return stats

    def _metric_key(self, r: Rollout, rh: str | None) -> tuple[str, str] | None:
        ref = self.items[r.item].reference
        return (rh, text_hash(ref)) if rh and ref else None

    def _score(self, rollouts: list[Rollout], replay: ReplayStats) -> None:
        batch = score(
            self.settings,
            [r.n_orig for r in rollouts],
            [r.n_comp for r in rollouts],
            [r.answer for r in rollouts],
            [self.items[r.item].reference for r in rollouts],
            [self.items[r.item].gold for r in rollouts],
            gates=[r.gate for r in rollouts],
            known=[r.known_metrics for r in rollouts],
        )
        for r, reward, m in zip(rollouts, batch.rewards, batch.metrics, strict=True):
            r.reward, r.metrics = reward, m
        keys = [
            self._metric_key(r, r.request_hash) if r.answer is not None else None for r in rollouts
        ]
        replay.metric_rows = metric_cache.new_rows(
            keys, [r.known_metrics for r in rollouts], batch.metrics, self.metric_names
        )

    def _advantages(self, rollouts: list[Rollout], batch: list[int]) -> Advantages:
        """Advantages over the global batch, shaped [prompts, G] in batch order."""
        tc = self.cfg.train
        row_of = {i: n for n, i in enumerate(batch)}
        rewards = torch.full((len(batch), tc.samples_per_prompt), NAN, dtype=torch.float64)
        greedy = torch.full((len(batch),), NAN, dtype=torch.float64)
        for r in rollouts:
            if r.trains:
                rewards[row_of[r.item], r.sample_idx] = r.reward
            else:
                greedy[row_of[r.item]] = r.reward
        adv = compute_advantages(
            rewards,
            tc.baseline,
            greedy_rewards=greedy if tc.baseline == "scst" else None,
            ema=self.pos.ema,
            beta=tc.moving_average_beta,
        )
        self.pos.ema = adv.ema
        return adv

    def _update(
        self,
        rollouts: list[Rollout],
        samples: list[Any],
        batch: list[int],
        adv: Advantages | None,
    ) -> tuple[float, float]:
        """REINFORCE loss on this rank's samples, then (every grad_accum steps) an optimizer
        step. Returns (loss, learning rate)."""
        tc = self.cfg.train
        adv = self.dist.broadcast(adv)
        assert adv is not None
        self.pos.ema = adv.ema
        row_of = {i: n for n, i in enumerate(batch)}
        pairs = [(r, s) for r, s in zip(rollouts, samples, strict=True) if r.trains]
        if pairs and tc.credit == "sentence":
            loss = self._sentence_loss(pairs, len(batch))
        elif pairs:
            lp = torch.stack([s.log_prob for _, s in pairs])
            # per-mask sums, like the log-probs: entropy_coeff weighs them as upstream does
            ent = torch.stack([s.entropy for _, s in pairs])
            n_act = torch.tensor([s.n_actions for _, s in pairs])
            cells = [(row_of[r.item], r.sample_idx) for r, _ in pairs]
            a = torch.tensor([float(adv.values[c]) for c in cells], dtype=lp.dtype)
            valid = torch.tensor([bool(adv.valid[c]) for c in cells])
            loss, _ = policy_loss(lp, a, ent, n_act, tc.entropy_coeff, valid)
            if self._kl is not None:
                loss = loss + tc.kl_coeff * self._kl
            if self.dist.enabled:
                # DDP averages gradients over ranks; rescale so the result is the global mean.
                n_local = int(valid.sum())
                loss = loss * (n_local * self.dist.world_size / max(1, int(adv.valid.sum())))
        else:
            loss = sum(p.sum() * 0.0 for p in self.model.parameters())
        (loss / tc.grad_accum).backward()
        self.pos.step += 1
        if self.pos.step % tc.grad_accum == 0 or self.pos.step == self.total_steps:
            self._optimizer_step()
            self.sched.step()
        lr = self.sched.get_last_lr()[0]
        return float(self.dist.broadcast(float(loss.detach()))), lr

    def _sentence_loss(self, pairs: list[tuple[Rollout, Any]], n_prompts: int) -> torch.Tensor:
        """train.credit sentence: the paired loss of each prompt's group (:mod:`.credit`),
        summed and divided by the global batch's prompts, plus the entropy and KL terms."""
        tc = self.cfg.train
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
                self._sent_of[item],
            )
            if loss is not None:
                total = loss if total is None else total + loss
        firsts = [members[0][1] for members in groups.values()]
        # Every rank's loss is its share of the global mean (DDP averages the gradients).
        scale = self.dist.world_size / max(1, n_prompts)
        ent = torch.stack([s.entropy for s in firsts]).mean()
        loss = -tc.entropy_coeff * ent + (0.0 if total is None else total * scale)
        if self._kl is not None:
            loss = loss + tc.kl_coeff * self._kl
        return loss

    def _optimizer_step(self) -> None:
        """Clip the accumulated gradient (train.grad_clip), step AdamW, clear the gradient."""
        if self.cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def _update_reusing(
        self,
        rollouts: list[Rollout],
        samples: list[Any],
        batch: list[int],
        adv: Advantages | None,
    ) -> tuple[float, float]:
        """``update_epochs`` optimizer steps on the step's group (fresh and stored samples).

        Pass 1 differentiates the rollout's own forward: fresh samples have ratio 1 (weight 1,
        plain REINFORCE), stored ones their truncated ratio. Later passes run the policy again
        on the same prompts and weight every word by its ratio to the behaviour policy: PPO's
        clip for fresh samples, V-trace's truncation for stored ones
        (:mod:`tacorl_offline.offpolicy`). The learning rate schedule advances once per step.
        Returns (pass-1 loss, learning rate)."""
        tc, ru = self.cfg.train, self.reuse
        assert adv is not None  # reuse runs in one process: rank 0 computed it
        self.pos.ema = adv.ema
        row_of = {i: n for n, i in enumerate(batch)}
        pairs = [
            (r, s)
            for r, s in zip(rollouts, samples, strict=True)
            if r.trains and bool(adv.valid[row_of[r.item], r.sample_idx])
        ]
        advs = [float(adv.values[row_of[r.item], r.sample_idx]) for r, _ in pairs]
        kinds: list[offpolicy.Kind] = ["clip" if r.fresh else "truncate" for r, _ in pairs]

        def one_pass(
            word_lps: list[torch.Tensor], ents: list[torch.Tensor], kl: torch.Tensor | None
        ) -> float:
            if not pairs:
                loss = sum(p.sum() * 0.0 for p in self.model.parameters())
            else:
                weights = [
                    offpolicy.word_weights(
                        lp, r.behaviour, a, k, clip_eps=ru.clip_eps, rho_bar=ru.rho_bar
                    )
                    for lp, (r, _), a, k in zip(word_lps, pairs, advs, kinds, strict=True)
                ]
                loss, _ = offpolicy.weighted_policy_loss(
                    word_lps, weights, advs, ents, tc.entropy_coeff
                )
                if kl is not None:
                    loss = loss + tc.kl_coeff * kl
            loss.backward()
            self._optimizer_step()
            return float(loss.detach())

        first = one_pass(
            [s.word_log_probs for _, s in pairs], [s.entropy for _, s in pairs], self._kl
        )
        if pairs and ru.update_epochs > 1:
            items = sorted({r.item for r, _ in pairs}, key=row_of.__getitem__)
            at = {i: k for k, i in enumerate(items)}
            rate = self.cfg.compressor.rate if tc.sampler == "rate" else None
            for _ in range(ru.update_epochs - 1):
                ds = self.comp.decisions(
                    [self.items[i].text for i in items],
                    model=self.policy,
                    fields=[self.items[i].fields for i in items],
                    rate=rate,
                )
                kl = None
                if self.start_model is not None:
                    kl = anchor.kl_penalty(
                        [ds[at[i]].probs for i in items], [self._start_probs[i] for i in items]
                    )
                one_pass(
                    [ds[at[r.item]].word_log_probs(r.actions) for r, _ in pairs],
                    [ds[at[r.item]].entropy for r, _ in pairs],
                    kl,
                )
        self.pos.step += 1
        self.sched.step()
        return first, self.sched.get_last_lr()[0]

    def _step_log(
        self,
        epoch: int,
        loss: float,
        lr: float,
        rollouts: list[Rollout],
        replay: ReplayStats,
        seconds: float,
    ) -> StepLog:
        train = [r for r in rollouts if r.trains and r.fresh]
        finite = [r.reward for r in train if not math.isnan(r.reward)]
        mean, std = _mean_std(finite)
        comp = [r.n_comp / r.n_orig for r in train if r.n_orig > 0]
        return StepLog(
            step=self.pos.step,
            epoch=epoch,
            loss=loss,
            lr=lr,
            reward_mean=mean,
            reward_std=std,
            reward_min=min(finite) if finite else NAN,
            reward_max=max(finite) if finite else NAN,
            compression=sum(comp) / len(comp) if comp else NAN,
            entropy=sum(r.entropy for r in train) / max(1, len(train)),
            n_samples=len(train),
            n_unscorable=sum(1 for r in rollouts if r.fresh and math.isnan(r.reward)),
            short_circuits=sum(1 for r in rollouts if r.fresh and r.gate is not None),
            spend=replay.spend,
            seconds=seconds,
            teacher_seconds=replay.teacher_seconds,
            fresh_samples=len(train),
            replayed_samples=sum(1 for r in rollouts if r.stored is not None),
            replay_dropped=self._dropped,
            update_epochs=self.reuse.update_epochs,
        )

    def _record(
        self, log: StepLog, rollouts: list[Rollout], replay: ReplayStats, run: PhaseRun | None
    ) -> None:
        fresh = [r for r in rollouts if r.fresh]
        sample_rows = [
            {
                "run_id": self.run_id,
                "step": log.step,
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
                **self._behaviour_columns(r),
            }
            for r in fresh
        ]
        replay_rows = [
            {
                "run_id": self.run_id,
                "step": log.step,
                "prompt_id": r.prompt_id,
                "slot": r.sample_idx,
                "source_run": r.stored.run_id,
                "source_step": r.stored.step,
                "source_sample_idx": r.stored.sample_idx,
                "reward": r.reward,
                "drift": r.drift,
            }
            for r in rollouts
            if r.stored is not None
        ]
        step_row = {"run_id": self.run_id, **log.row()}
        try:
            self._write_step(step_row, sample_rows, replay, run, log.step, replay_rows)
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
            self.warehouse.journal(entries)
        if self.reuse.stored_per_prompt:  # this run's samples may join later groups
            for row in sample_rows:
                if row["reward"] is not None and row["sample_idx"] >= 0:
                    self.store.add(
                        reuse.stored(
                            self.run_id,
                            log.step,
                            row["sample_idx"],
                            row["prompt_id"],
                            row["mask_hash"],
                            row["actions"],
                            row["behaviour_logp"],
                            row["reward"],
                        )
                    )
        if self.cfg.train.csv_logs:
            csvlogs.append_step(
                self.run_dir,
                epoch=log.epoch,
                step=log.step,
                loss=log.loss,
                lr=log.lr,
                reward=log.reward_mean,
                kept=log.compression,
            )

    @staticmethod
    def _behaviour_columns(r: Rollout) -> dict[str, Any]:
        """samples.actions / behaviour_logp of a sampled mask (NULL for the greedy one)."""
        if r.behaviour is None or r.actions is None or not r.trains:
            return {"actions": None, "behaviour_logp": None}
        acts, blp = reuse.as_row_lists(r.actions, r.behaviour)
        return {"actions": acts, "behaviour_logp": blp}

    def _write_step(
        self,
        step_row: dict[str, Any],
        sample_rows: list[dict[str, Any]],
        replay: ReplayStats,
        run: PhaseRun | None,
        step: int,
        replay_rows: list[dict[str, Any]] | None = None,
    ) -> None:
        """One transaction for a step's rows. Waits at most a second for the lock."""
        with self.warehouse.transaction(
            lock_timeout_s=min(self.warehouse.lock_timeout_s, 1.0)
        ) as con:
            if run is not None:
                run.record(con, hits=replay.hits_ledger, masks=replay.new_masks, step=step)
            # Calls and cost come from the ledger: a step redone after a kill or a budget stop
            # counts what every execution of it paid for, exactly once.
            calls, cost = con.execute(
                "SELECT count(DISTINCT request_hash), coalesce(sum(cost_usd), 0) FROM api_calls"
                " WHERE run_id = ? AND step = ? AND status <> 'hit'",
                [self.run_id, step],
            ).fetchall()[0]
            step_row["calls"], step_row["cost_usd"] = int(calls), float(cost)
            insert_rows(con, "samples", sample_rows, on_conflict="replace")
            insert_rows(con, "steps", [step_row], on_conflict="replace")
            insert_rows(con, "replays", replay_rows or [], on_conflict="replace")
            # Metric values computed this step: a cache, so a step journaled instead (a reader
            # held the lock) leaves them out and a later replay computes them again.
            insert_rows(con, "metric_values", replay.metric_rows, on_conflict="ignore")
        self.mask_map.add_metrics(replay.metric_rows)  # committed: later hits read them

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

    def save_checkpoint(self) -> Path:
        """Atomic (see :mod:`tacorl_offline.checkpoints`); every rank's sampler state is kept."""
        states = self.dist.gather(self.gen.get_state())
        if not self.dist.is_main:
            return self.run_dir
        return checkpoints.save(
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
                    "ema": NAN if self.pos.ema is None else self.pos.ema,
                },
            },
            config=self.cfg.stored(),
            keep=self.cfg.train.keep_checkpoints,
        )

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
            while self.pos.step < self.total_steps:
                log = await self.step(run)
                if log is None:  # the budget stopped this step midway: it is redone on resume
                    s.budget_stopped = True
                    if run is not None:
                        run.stop_for_budget(
                            f"budget reached ({run.budget.remaining_text()}) during step "
                            f"{self.pos.step + 1}, which a resume redoes; resume with --resume {self.run_id}"
                        )
                    self.save_checkpoint()
                    break
                s.steps += 1
                s.last = log
                if self.dist.is_main:
                    s.spend.add(log.spend)
                    s.short_circuits += log.short_circuits
                    s.unscorable += log.n_unscorable
                    s.rewards.append(log.reward_mean)
                    if self.on_step:
                        self.on_step(log, s)
                # Budgets count this invocation's calls; the last step finishes the run anyway.
                stop = self.dist.broadcast(bool(run and run.budget.reached()))
                if stop and self.pos.step < self.total_steps:
                    s.budget_stopped = True
                    if run is not None:
                        run.stop_for_budget(
                            f"budget reached ({run.budget.remaining_text()}) at step {self.pos.step}; resume with --resume {self.run_id}"
                        )
                    self.save_checkpoint()
                    break
                if self.pos.step % self.cfg.train.checkpoint_every == 0 and (
                    self.pos.step < self.total_steps
                ):
                    self.save_checkpoint()
            else:
                final = self.run_dir / "final"
                if s.steps or not final.is_dir():  # resuming a finished run rewrites nothing
                    self.save_checkpoint()
                    if self.dist.is_main:
                        tmp = self.run_dir / ".final.tmp"
                        if tmp.exists():
                            shutil.rmtree(tmp)
                        self.comp.save_pretrained(tmp)
                        checkpoints.swap_dir(tmp, final)
                s.final_model = final
            self._check_ranks_agree()
        finally:
            s.seconds = time.perf_counter() - t0
        return s

    def _check_ranks_agree(self) -> None:
        digests = self.dist.gather(checkpoints.weights_digest(self.model))
        if self.dist.is_main:
            (self.run_dir / "weights_digest.json").write_text(
                json.dumps({"ranks": digests}), encoding="utf-8"
            )
            if len(set(digests)) != 1:
                raise RuntimeError(f"weights differ across ranks: {digests}")
