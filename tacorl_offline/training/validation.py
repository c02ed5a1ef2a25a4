"""Validation inside ``train`` (``train.validation``): score the policy on a held-apart split
while it learns, and keep the best point, the start model included.

At step 0 (the start model), every ``every`` steps and at the last step, the policy compresses
the split's prompts greedily at the recipe's rate, exactly as ``evaluate`` does
(:func:`tacorl_offline.evaluate.compress_prompts`). The teacher's answers come through the
replay path: stored ones are replayed, misses are paid once, journaled first, and counted in
the run's spend and budget. The score is the mean of the reward's metric against the teacher's
answer to the original prompt, the quantity RL optimises and ``evaluate`` reports as
``teacher.*``.

Design decisions:

- **Step 0 is a candidate.** With ``keep_best`` the final model is the best point, so a run
  whose steps do not beat its start on validation ends with its start: RL on top of a warm
  start cannot make the result worse than the start on the validation split.
- **Only complete points compete.** A point with an unscored prompt (a failed call, a budget
  stop) is reported and never chosen.
- **A step must beat the start clearly** (``select: significant``, the default): a later point
  competes only when its paired 95% bootstrap interval of gain over step 0, on the same
  prompts, lies above 0. With a few hundred validation prompts the highest mean alone is
  often a step that won by noise (bench/README.md: at 655 training questions the highest
  point led step 0 by 0.007 on validation and trailed it by 0.005 on held-out).
- **The earliest wins a tie**, the start model first.
- **Patience stops a run that is not helping** (``patience: N``): once N complete points after
  the best one have not replaced it, the run ends there, its final model the best point, and
  pays for no more steps. From the SFT tuned on validation no step ever beat the start
  (bench/README.md), so RL's calls past the first point bought nothing. A killed run resumes
  with its points and stops at the same step.
- **On disk:** ``<run>/validation.json`` holds every point; ``<run>/best/`` holds the best
  point's model (written new, then swapped in, before the point is written) and
  ``<run>/best/point.json`` its step. A point is scored after the step's checkpoint, so a
  resumed run keeps the points up to the step it resumes from and redoes a missing one
  (its masks are then replayed, not paid again).
- Pure rules (:func:`due`, :func:`best_point`) are kept apart from the I/O.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tacorl_offline import bootstrap, metrics
from tacorl_offline.checkpoints import swap_dir
from tacorl_offline.config import Config
from tacorl_offline.distributed import Dist
from tacorl_offline.errors import UserError
from tacorl_offline.items import Item, load_items
from tacorl_offline.replay import Wanted, resolve
from tacorl_offline.runs import PhaseRun, Spend, key_of
from tacorl_offline.teachers import render_messages
from tacorl_offline.warehouse import Warehouse

if TYPE_CHECKING:
    from tacorl_offline.trainer import Trainer
    from tacorl_offline.training.records import TrainSummary

POINTS_FILE = "validation.json"
BEST_DIR = "best"


@dataclass(frozen=True)
class ValPoint:
    step: int
    score: float  # mean metric over the scored prompts; NaN if none was scored
    scored: int
    prompts: int
    paid: int  # teacher calls this point paid
    hits: int  # answers it replayed
    # paired 95% bootstrap interval of score - step 0's score over the same prompts (0 at
    # step 0; NaN when step 0 has no complete point)
    gain_low: float = math.nan
    gain_high: float = math.nan
    scores: tuple[float, ...] = ()  # per prompt, in the split's order (NaN: unscored)

    @property
    def complete(self) -> bool:
        return self.scored == self.prompts and not math.isnan(self.score)


def due(step: int, every: int, total_steps: int) -> bool:
    """Whether step ``step`` (0: the start model) is validated."""
    return step == 0 or step % every == 0 or step == total_steps


def best_point(points: Sequence[ValPoint], select: str = "significant") -> ValPoint | None:
    """The highest-scoring complete point, the earliest step winning a tie; None if none.

    ``select: significant`` admits a later point only when its paired gain over step 0 has an
    interval above 0 (``gain_low > 0``), so the start model stays unless a step beats it
    clearly; ``best`` admits every complete point."""
    best: ValPoint | None = None
    for p in sorted(points, key=lambda p: p.step):
        if not p.complete:
            continue
        if select == "significant" and p.step != 0 and not p.gain_low > 0:
            continue
        if best is None or p.score > best.score:
            best = p
    return best


def stale(points: Sequence[ValPoint], select: str, patience: int | None) -> bool:
    """Whether ``patience`` complete points after the best one have not replaced it (never
    with ``patience`` None or no best point yet)."""
    b = best_point(points, select)
    if patience is None or b is None:
        return False
    return sum(1 for p in points if p.complete and p.step > b.step) >= patience


def gain_interval(scores: Sequence[float], start: Sequence[float]) -> tuple[float, float]:
    """Paired 95% bootstrap interval of mean(scores - start) (:mod:`tacorl_offline.bootstrap`)."""
    c = bootstrap.paired_compare({"point": list(scores), "start": list(start)}, "start")
    return c["point"].diff.low, c["point"].diff.high


def mean_score(values: Sequence[float]) -> tuple[float, int]:
    """(mean of the finite values, how many there were); NaN for none."""
    finite = [v for v in values if not math.isnan(v)]
    return (sum(finite) / len(finite) if finite else math.nan), len(finite)


def read_points(run_dir: Path, upto_step: int | None) -> list[ValPoint]:
    """The run's stored points up to ``upto_step`` (None: none at all, a fresh run)."""
    path = run_dir / POINTS_FILE
    if upto_step is None or not path.is_file():
        return []
    rows = json.loads(path.read_text(encoding="utf-8"))["points"]
    return [
        ValPoint(**{**r, "scores": tuple(r.get("scores", ()))})
        for r in rows
        if int(r["step"]) <= upto_step
    ]


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1), encoding="utf-8")
    tmp.replace(path)


def validator_for(
    cfg: Config, warehouse: Warehouse, dist: Dist, run_dir: Path, resumed_from: int | None
) -> Validator | None:
    """The run's validator (None: ``train.validation.split`` is null)."""
    if cfg.train.validation.split is None:
        return None
    if dist.enabled:
        raise UserError(
            "train.validation runs in one process; set train.validation.split: null for a "
            "multi-process (torchrun) run and evaluate its checkpoints instead"
        )
    return Validator(cfg, warehouse, run_dir, resumed_from)


class Validator:
    """Scores the trainer's policy on ``train.validation.split``; keeps the best model."""

    def __init__(
        self, cfg: Config, warehouse: Warehouse, run_dir: Path, resumed_from: int | None
    ) -> None:
        self.cfg = cfg
        self.vc = cfg.train.validation
        assert self.vc.split is not None
        self.warehouse = warehouse
        self.run_dir = run_dir
        self.teacher_key = key_of(cfg.teacher)
        self.items = self._load_items()
        self.points = read_points(run_dir, resumed_from)

    def _load_items(self) -> list[Item]:
        c = self.cfg.model_copy(deep=True)
        c.data.split = self.vc.split
        fill = f"tacorl-offline teacher-fill --split {self.vc.split}"
        try:
            with self.warehouse.connect() as con:
                items = load_items(con, c, self.teacher_key)
        except UserError as e:
            raise UserError(
                f"train.validation.split '{self.vc.split}': {e}; ingest it with --split "
                f"{self.vc.split} and run '{fill}' first, or set train.validation.split: null"
            ) from None
        return items

    @property
    def best(self) -> ValPoint | None:
        return best_point(self.points, self.vc.select)

    @property
    def stale(self) -> bool:
        """Patience ran out: the run should stop at this point (see :func:`stale`)."""
        return stale(self.points, self.vc.select, self.vc.patience)

    async def score_due(self, trainer: Trainer, run: PhaseRun, s: TrainSummary) -> None:
        """Score the point due at the trainer's step, once; the summary gets every point,
        their spend (added to the run's), the step of the final model, and the step at which
        patience ran out (the trainer ends the run there)."""
        step = trainer.pos.step
        if due(step, self.vc.every, trainer.total_steps) and all(
            p.step != step for p in self.points
        ):
            trainer.deferred.flush()  # the steps before this point are in the warehouse
            _, spend = await self.validate(trainer, run, step)
            s.spend.add(spend)
            s.spend_validation.add(spend)
        s.validation = list(self.points)
        b = self.best
        s.best_step = b.step if b is not None and self.vc.keep_best else None
        s.stopped_early = step if self.stale and step < trainer.total_steps else None

    async def validate(self, trainer: Trainer, run: PhaseRun, step: int) -> tuple[ValPoint, Spend]:
        """Score the policy as it is after ``step`` steps; keep its model if it is the best.
        Returns the point and what its answers cost."""
        from tacorl_offline.evaluate import compress_prompts

        cc = self.cfg.compressor
        comps = compress_prompts(
            trainer.comp, self.items, rate=cc.rate, target_token=cc.target_token
        )
        wanted = [
            Wanted(i.prompt_id, c.mask_hash, c.text, i.fields)
            for i, c in zip(self.items, comps, strict=True)
        ]
        st = await resolve(
            wanted,
            warehouse=self.warehouse,
            caller=run.caller,
            teacher_key=self.teacher_key,
            render=lambda text, fields: render_messages(self.cfg.teacher, text, fields),
            concurrency=self.cfg.teacher.concurrency,
            mask_map=trainer.mask_map,
        )
        with self.warehouse.transaction() as con:
            run.record(con, hits=st.hits_ledger, masks=st.new_masks, step=step)
        rc = self.cfg.train.reward
        rows = metrics.score_multi(
            rc.metric,
            [w.answer if w.answer is not None else "" for w in wanted],
            [
                [i.reference] if w.answer is not None and i.reference is not None else []
                for i, w in zip(self.items, wanted, strict=True)
            ],
            bertscore_model=rc.bertscore_model,
            bertscore_layers=rc.bertscore_layers,
        )
        values = [float(r["metric"]) for r in rows]
        score, scored = mean_score(values)
        start = next((p for p in self.points if p.step == 0 and p.complete), None)
        low, high = (0.0, 0.0) if step == 0 else (math.nan, math.nan)
        if start is not None and step != 0 and scored:
            low, high = gain_interval(values, start.scores)
        point = ValPoint(
            step,
            score,
            scored,
            len(wanted),
            st.spend.calls,
            st.spend.hits,
            low,
            high,
            tuple(values),
        )
        self.points = [p for p in self.points if p.step != step] + [point]
        if self.vc.keep_best and self.best is point:
            self._keep(trainer, point)  # before the points: a kill in between redoes this one
        _write_json(
            self.run_dir / POINTS_FILE,
            {"split": self.vc.split, "points": [asdict(p) for p in self.points]},
        )
        return point, st.spend

    def _keep(self, trainer: Trainer, point: ValPoint) -> None:
        """``<run>/best``: this point's model, written new and then swapped in."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_dir / f".{BEST_DIR}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        trainer.comp.save_pretrained(tmp / "model")
        _write_json(tmp / "point.json", asdict(point))
        swap_dir(tmp, self.run_dir / BEST_DIR)

    def best_model(self) -> Path | None:
        """The best point's model directory, if ``keep_best`` and it is on disk."""
        b = self.best
        d = self.run_dir / BEST_DIR
        if not self.vc.keep_best or b is None or not (d / "point.json").is_file():
            return None
        kept = json.loads((d / "point.json").read_text(encoding="utf-8"))
        return d / "model" if int(kept["step"]) == b.step else None
