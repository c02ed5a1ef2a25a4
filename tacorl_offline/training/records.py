"""The records a training step passes from stage to stage, and what every stage reads.

A step's data lives in one :class:`StepData`, created by the loop and filled by the stages in
order (rollout, gate/replay, score, advantages, update); nothing a step computes is kept on the
trainer. :class:`StageContext` holds the run's parts the stages read but never replace.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tacorl_offline import reuse
from tacorl_offline.advantages import Advantages
from tacorl_offline.config import Config
from tacorl_offline.distributed import Dist
from tacorl_offline.items import Item
from tacorl_offline.replay import MaskMap, ReplayStats
from tacorl_offline.rewards import RewardSettings
from tacorl_offline.runs import Spend
from tacorl_offline.warehouse import Warehouse

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
class StepData:
    """One step's data, filled stage by stage. Rank 0 alone fills ``everyone`` onwards
    (except ``adv``, which every rank receives before the update)."""

    epoch: int
    batch: list[int]  # the global batch: indices into the items, in data order
    started: float  # time.perf_counter() at the step's start
    # 1. rollout (this rank's shard), aligned with the ``Sample`` objects they came from:
    rollouts: list[Rollout] = field(default_factory=list)
    samples: list[Any] = field(default_factory=list)
    dropped: int = 0  # stored samples left out: their policy drifted too far
    # train.kl_coeff: the KL anchor of this rank's prompts (with gradient) and the start
    # policy's probabilities by item (kept for the reuse passes); train.credit sentence:
    # the sentence of each deciding word, by item.
    kl: torch.Tensor | None = None
    start_probs: dict[int, torch.Tensor] = field(default_factory=dict)
    sent_of: dict[int, Any] = field(default_factory=dict)
    probs: dict[int, torch.Tensor] = field(default_factory=dict)  # today's keep-probs by item
    everyone: list[Rollout] = field(default_factory=list)  # every rank's rollouts
    # 3. replay (and pay), 4. score (adds metric rows), 5. advantages, 6. update:
    replay: ReplayStats = field(default_factory=ReplayStats)
    adv: Advantages | None = None
    loss: float = NAN
    lr: float = NAN

    @property
    def fresh(self) -> list[Rollout]:
        """Every rank's fresh rollouts: stored samples carry their reward and skip 2-4."""
        return [r for r in self.everyone if r.fresh]

    def trained_pairs(self) -> list[tuple[Rollout, Any]]:
        """(rollout, sample) of this rank's sampled (not greedy) masks."""
        return [(r, s) for r, s in zip(self.rollouts, self.samples, strict=True) if r.trains]


@dataclass(frozen=True)
class StageContext:
    """The run's parts every stage reads and none replaces."""

    cfg: Config
    comp: Any  # the Compressor
    policy: torch.nn.Module  # the model, or its DDP wrapper
    start_model: torch.nn.Module | None  # train.kl_coeff: the frozen start policy
    items: list[Item]
    count: Callable[[str], int]  # the reward's token counter
    settings: RewardSettings
    metric_names: dict[str, str]
    mask_map: MaskMap
    warehouse: Warehouse
    dist: Dist
    run_id: str
    run_dir: Path
    store: reuse.ReplayStore  # samples stored for reuse; record adds this run's

    @property
    def model(self) -> torch.nn.Module:
        return self.comp.model


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
    # train.validation: every point so far (step 0 = the start model), their spend (also in
    # ``spend``), and the step whose model is the final one (None: the last step's)
    validation: list[Any] = field(default_factory=list)
    spend_validation: Spend = field(default_factory=Spend)
    best_step: int | None = None
    stopped_early: int | None = None  # the step at which train.validation.patience ran out


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    if not xs:
        return NAN, NAN
    mean = sum(xs) / len(xs)
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))
