"""Reward families, as pure functions of token counts and metric values.

A reward is a float; ``NaN`` means *unscorable* (the teacher failed, or the original
prompt's answer is missing). An unscorable sample never earns a reward: the advantage code
keeps it out of every baseline and out of the gradient.

Families:

- **taco** (TACO-RL): ``over_reward`` (-0.4) when ``n_comp <= over_ratio * n_orig``;
  ``outside_reward`` (-0.1) when ``|n_comp - rate * n_orig| > tolerance_tokens``; otherwise
  the task metric of teacher(compressed) against teacher(original). Both length checks are
  decided *before* any teacher call (:func:`needs_teacher`); upstream paid for the call and
  then threw the answer away when the tolerance check failed. A failed teacher call is NaN,
  never upstream's +0.4, which paid the policy for triggering content filters.
- **pcrl** (PCRL): ``1 - (n_comp - n_fixed) / (n_orig - n_fixed)`` when ROUGE-L of the two
  answers is ``>= tau`` (upstream used ``>``), else ``lam``. No length gate: every sample
  needs the teacher.
- **grpo** (RL-Prompt-Compression style): ``w_c * correct + w_s * similarity +
  w_k * compression`` with correct = the maximum SQuAD F1 over the gold answers (or
  against the teacher's answer to the original when there is no gold), similarity = ROUGE-L
  against the teacher's answer to the original, compression = ``1 - n_comp / n_orig``. No
  gate. Upstream (RL-Prompt-Compression) scores correctness as a GSM8K numeric match; exact
  match, our first port of it, is 0 for any sentence-style answer, even the original
  prompt's, so F1 is the closest term that still grades an answer against the gold.

The trainer calls :func:`needs_teacher` first (which samples need a teacher call at all),
then :func:`score` once the answers are in. Token counts include only the compressible
text (never-compressed fields are not counted), so ``n_fixed`` is 0 in the batch API.
An original prompt with no tokens (``n_orig <= 0``) is unscorable in every family.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tacorl_offline import metrics
from tacorl_offline.config import RewardConfig

if TYPE_CHECKING:
    from tacorl_offline.config import Config

NAN = float("nan")
# Token counts are integers; this slack only absorbs float rounding in ``rate * n_orig``
# (0.3 * 100 == 30.000000000000004), so the boundaries are inclusive as documented.
_SLACK = 1e-9
# The grpo terms and default weights are written once, in the config model; read from there.
DEFAULT_GRPO_WEIGHTS: Mapping[str, float] = RewardConfig().grpo_weights
GRPO_KEYS = tuple(DEFAULT_GRPO_WEIGHTS)


# ---------------------------------------------------------------------------- scalar rewards


def taco_length_gate(
    n_orig: int,
    n_comp: int,
    *,
    rate: float,
    tolerance_tokens: float,
    over_ratio: float = 0.1,
    over_reward: float = -0.4,
    outside_reward: float = -0.1,
) -> float | None:
    """The reward decided by length alone, or ``None`` when the teacher must be asked.

    Over-compression is checked first (as upstream): ``n_comp <= over_ratio * n_orig``
    (inclusive) gives ``over_reward``. Then ``|n_comp - rate * n_orig| > tolerance_tokens``
    gives ``outside_reward``; exactly at the tolerance edge is inside. ``n_orig <= 0`` is
    unscorable (NaN, no call).
    """
    if n_comp < 0:
        raise ValueError(f"n_comp must be >= 0, got {n_comp}")
    if n_orig <= 0:
        return NAN
    if n_comp <= over_ratio * n_orig + _SLACK:
        return float(over_reward)
    if abs(n_comp - rate * n_orig) > tolerance_tokens + _SLACK:
        return float(outside_reward)
    return None


def taco_reward(gate: float | None, metric_value: float) -> float:
    """The gate's reward if it decided, else the metric. A NaN metric (teacher failure) is NaN."""
    if gate is not None:
        return float(gate)
    return float(metric_value)


def compression_ratio(n_orig: int, n_comp: int, n_fixed: int = 0) -> float:
    """Share of the compressible tokens removed: ``1 - (n_comp - n_fixed) / (n_orig - n_fixed)``.

    0 when nothing is compressible (``n_orig <= n_fixed``); negative if the compressed text
    came out longer (a re-tokenisation artefact), which the reward then penalises.
    """
    denom = n_orig - n_fixed
    if denom <= 0:
        return 0.0
    return 1.0 - (n_comp - n_fixed) / denom


def pcrl_reward(
    n_orig: int,
    n_comp: int,
    rouge_l: float,
    *,
    tau: float = 0.9,
    lam: float = -0.01,
    n_fixed: int = 0,
) -> float:
    """PCRL: the compression ratio if ROUGE-L >= tau, else ``lam``. NaN ROUGE-L is NaN."""
    if math.isnan(rouge_l):
        return NAN
    if rouge_l >= tau:
        return compression_ratio(n_orig, n_comp, n_fixed)
    return float(lam)


def grpo_reward(
    correct: float,
    similarity: float,
    compression: float,
    weights: Mapping[str, float] | None = None,
) -> float:
    """Weighted composite. Missing weight keys count 0; unknown keys raise. NaN propagates."""
    w = dict(DEFAULT_GRPO_WEIGHTS if weights is None else weights)
    unknown = set(w) - set(GRPO_KEYS)
    if unknown:
        raise ValueError(
            f"unknown grpo weight(s) {sorted(unknown)}; valid keys: {', '.join(GRPO_KEYS)}"
        )
    parts = {"correct": correct, "similarity": similarity, "compression": compression}
    return float(sum(w.get(k, 0.0) * float(v) for k, v in parts.items()))


# ---------------------------------------------------------------------------- batch API


@dataclass(frozen=True)
class RewardSettings:
    """What the reward reads: the ``train.reward`` config section as it is, the target keep
    rate c (``compressor.rate``, the one rate setting; see ``Config.reward_rate``) and the
    tolerance L (``train.tolerance_tokens``). The section is validated by the config model."""

    reward: RewardConfig
    rate: float
    tolerance_tokens: int

    @classmethod
    def from_config(cls, cfg: Config) -> RewardSettings:
        return cls(cfg.train.reward, cfg.reward_rate, cfg.train.tolerance_tokens)


@dataclass(frozen=True)
class RewardBatch:
    rewards: list[float]  # NaN = unscorable
    metrics: list[dict[str, float]]  # per-sample components; {} when short-circuited or unscorable
    short_circuited: list[bool]  # decided without a teacher answer
    kept_ratio: list[
        float
    ]  # n_comp / n_orig (upstream's "Comp Ratio" log column); NaN if n_orig <= 0

    @property
    def unscorable(self) -> list[bool]:
        return [math.isnan(r) for r in self.rewards]

    @property
    def n_unscorable(self) -> int:
        return sum(self.unscorable)


def needs_teacher(
    settings: RewardSettings, n_orig: Sequence[int], n_comp: Sequence[int]
) -> tuple[list[float | None], list[bool]]:
    """Per sample: the reward decided without a teacher (or None), and whether to call one.

    Only taco has a length gate; pcrl and grpo ask the teacher for every sample with a
    non-empty original.
    """
    if len(n_orig) != len(n_comp):
        raise ValueError(f"{len(n_orig)} original counts but {len(n_comp)} compressed counts")
    r = settings.reward
    gates: list[float | None] = []
    for no, nc in zip(n_orig, n_comp, strict=True):
        if r.family == "taco":
            gates.append(
                taco_length_gate(
                    no,
                    nc,
                    rate=settings.rate,
                    tolerance_tokens=settings.tolerance_tokens,
                    over_ratio=r.over_compression_ratio,
                    over_reward=r.over_compression_reward,
                    outside_reward=r.outside_tolerance_reward,
                )
            )
        else:
            if nc < 0:
                raise ValueError(f"n_comp must be >= 0, got {nc}")
            gates.append(NAN if no <= 0 else None)
    return gates, [g is None for g in gates]


def _usable(text: str | None) -> bool:
    # An empty answer is a failed call (teachers report it ok=False, permanent); never 0 or +0.4.
    return text is not None and bool(text.strip())


def _as_list(gold: Any) -> list[str]:
    """Gold answers as a list: one string, a list of strings, or a JSON list in a string."""
    if gold is None:
        return []
    if isinstance(gold, (list, tuple)):
        return [str(g) for g in gold]
    text = str(gold)
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError:
            return [text]
        if isinstance(parsed, list):
            return [str(g) for g in parsed]
    return [text]


def score(
    settings: RewardSettings,
    n_orig: Sequence[int],
    n_comp: Sequence[int],
    answers: Sequence[str | None],
    references: Sequence[str | None],
    gold: Sequence[str | None] | None = None,
    *,
    gates: Sequence[float | None] | None = None,
    known: Sequence[Mapping[str, float] | None] | None = None,
) -> RewardBatch:
    """Rewards for one step.

    ``answers[i]`` is the teacher's answer to compressed prompt i (None: not asked, or the
    call failed); ``references[i]`` is its answer to the original (None: missing);
    ``gold[i]`` an optional reference answer from the data (used by grpo's correctness).
    Samples the gate decided keep the gate's reward whatever their answer. A sample that
    needed the teacher but has no usable answer or reference is NaN. Metrics run once over
    the scorable samples of the batch. ``gates``: the result of :func:`needs_teacher` for
    these counts when the caller already has it (the length gate is computed once per step).
    ``known[i]``, if given, holds metric values already computed for sample i's (answer,
    reference) pair (the metric cache); only what it lacks is computed.
    """
    n = len(n_orig)
    gold = [None] * n if gold is None else list(gold)
    if not (len(n_comp) == len(answers) == len(references) == len(gold) == n):
        raise ValueError(
            f"batch lengths differ: n_orig={n}, n_comp={len(n_comp)}, answers={len(answers)}, "
            f"references={len(references)}, gold={len(gold)}"
        )
    if gates is None:
        gates, need = needs_teacher(settings, n_orig, n_comp)
    else:
        if len(gates) != n:
            raise ValueError(f"{len(gates)} gates for {n} samples")
        need = [g is None for g in gates]
    rewards: list[float] = [NAN if g is None else g for g in gates]
    rows: list[dict[str, float]] = [{} for _ in range(n)]
    todo = [i for i in range(n) if need[i] and _usable(answers[i]) and _usable(references[i])]
    preds = [str(answers[i]) for i in todo]
    refs = [str(references[i]) for i in todo]
    cached = [known[i] for i in todo] if known is not None else None

    if todo:
        _score_family(
            settings, todo, preds, refs, cached, gates, n_orig, n_comp, gold, rows, rewards
        )

    kept = [nc / no if no > 0 else NAN for no, nc in zip(n_orig, n_comp, strict=True)]
    return RewardBatch(
        rewards=rewards,
        metrics=rows,
        short_circuited=[not m for m in need],
        kept_ratio=kept,
    )


def _score_family(
    settings: RewardSettings,
    todo: list[int],
    preds: list[str],
    refs: list[str],
    cached: list[Mapping[str, float] | None] | None,
    gates: Sequence[float | None],
    n_orig: Sequence[int],
    n_comp: Sequence[int],
    gold: Sequence[str | None],
    rows: list[dict[str, float]],
    rewards: list[float],
) -> None:
    """The reward family's metrics and rewards for the samples ``todo`` (filled in place)."""
    rc = settings.reward
    if rc.family == "taco":
        scored = metrics.score_pairs(
            rc.metric,
            preds,
            refs,
            bertscore_model=rc.bertscore_model,
            bertscore_layers=rc.bertscore_layers,
            known=cached,
        )
        for i, row in zip(todo, scored, strict=True):
            rows[i] = row
            rewards[i] = taco_reward(gates[i], row["metric"])
    elif rc.family == "pcrl":
        scored = metrics.score_pairs("rougeL", preds, refs, known=cached)
        for i, row in zip(todo, scored, strict=True):
            comp = compression_ratio(n_orig[i], n_comp[i])
            rows[i] = {"rougeL": row["rougeL"], "compression": comp}
            rewards[i] = pcrl_reward(
                n_orig[i], n_comp[i], row["rougeL"], tau=rc.pcrl_tau, lam=rc.pcrl_lambda
            )
    elif rc.family == "grpo":
        sims = metrics.score_pairs("rougeL", preds, refs, known=cached)
        for i, pred, ref, sim in zip(todo, preds, refs, sims, strict=True):
            golds = [x for x in _as_list(gold[i]) if x.strip()] or [ref]
            row = {
                "correct": max(metrics.squad_f1(pred, t) for t in golds),
                "similarity": sim["rougeL"],
                "compression": compression_ratio(n_orig[i], n_comp[i]),
            }
            rows[i] = row
            rewards[i] = grpo_reward(
                row["correct"], row["similarity"], row["compression"], rc.grpo_weights
            )
