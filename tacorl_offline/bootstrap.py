"""Paired bootstrap confidence intervals: pure numpy, seeded, vectorised.

Design decisions:

- **Paired.** Every system is scored on the same prompts, so one resampling of the prompts
  is drawn and shared by every system: the interval of a difference then reflects the
  per-prompt differences, not two independent noises (Koehn 2004; Dror et al. 2018).
- **Vectorised.** A resample is a row of multinomial counts over the n prompts
  (``rng.multinomial(n, 1/n)``); a resampled mean is ``counts @ values / counts @ present``,
  so B resamples of every system are one matrix product, never a Python loop.
- **Missing values** (NaN: an unscorable prompt, e.g. a failed teacher call) drop out of the
  mean they would enter. A difference uses only the prompts where both systems are scored.
- **Percentile intervals** at 95% by default, B = 10,000 resamples, seed 0: the same inputs
  always give the same interval.
- A system whose difference interval lies entirely above 0 *beats* the reference; entirely
  below, it is *worse*; otherwise the data cannot tell them apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 10_000
DEFAULT_CONFIDENCE = 0.95
_BLOCK = 2_000  # resamples per matrix product (bounds memory at B x n)


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int  # values that entered the mean

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class Comparison:
    """A system's mean and its paired difference against the reference system."""

    system: str
    reference: str
    mean: Interval
    diff: Interval  # system - reference, over prompts where both are scored

    @property
    def verdict(self) -> str:
        """'beats', 'worse' or 'tie' (the difference interval contains 0)."""
        if self.diff.n == 0 or np.isnan(self.diff.mean):
            return "n/a"
        if self.diff.low > 0:
            return "beats"
        if self.diff.high < 0:
            return "worse"
        return "tie"


def resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """``resamples`` x ``n`` multinomial counts: row b says how often prompt i is drawn."""
    rng = np.random.default_rng(seed)
    if n == 0:
        return np.zeros((resamples, 0), dtype=np.float64)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def _resampled_means(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Resampled means of the columns of ``values`` ([n, k], NaN = missing): [B, k]."""
    present = np.isfinite(values)
    filled = np.where(present, values, 0.0)
    out = np.empty((counts.shape[0], values.shape[1]), dtype=np.float64)
    for a in range(0, counts.shape[0], _BLOCK):
        c = counts[a : a + _BLOCK]
        num = c @ filled
        den = c @ present.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[a : a + _BLOCK] = np.where(den > 0, num / np.maximum(den, 1e-300), np.nan)
    return out


def _interval(point: float, samples: np.ndarray, n: int, confidence: float) -> Interval:
    s = samples[np.isfinite(samples)]
    if n == 0 or len(s) == 0:
        return Interval(float("nan"), float("nan"), float("nan"), n)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(s, [alpha, 1.0 - alpha])
    return Interval(float(point), float(lo), float(hi), n)


def mean_ci(
    values: Sequence[float] | np.ndarray,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """The mean of ``values`` (NaN ignored) with its percentile bootstrap interval."""
    v = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    counts = resample_counts(len(v), resamples, seed)
    ok = np.isfinite(v[:, 0])
    point = float(v[ok, 0].mean()) if ok.any() else float("nan")
    return _interval(point, _resampled_means(v, counts)[:, 0], int(ok.sum()), confidence)


def paired_compare(
    scores: Mapping[str, Sequence[float] | np.ndarray],
    reference: str,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> dict[str, Comparison]:
    """Mean CI of every system and its paired difference CI against ``reference``.

    ``scores[system]`` holds one value per prompt, in the same prompt order for every system.
    """
    if reference not in scores:
        raise ValueError(f"reference system {reference!r} is not among {sorted(scores)}")
    names = list(scores)
    mat = np.column_stack([np.asarray(scores[s], dtype=np.float64) for s in names])
    if mat.ndim != 2 or any(len(scores[s]) != mat.shape[0] for s in names):
        raise ValueError("every system needs one score per prompt, in the same order")
    n = mat.shape[0]
    ref = mat[:, names.index(reference)]
    diffs = mat - ref[:, None]  # NaN where either side is missing
    counts = resample_counts(n, resamples, seed)
    boot = _resampled_means(np.concatenate([mat, diffs], axis=1), counts)
    k = len(names)
    out: dict[str, Comparison] = {}
    for j, s in enumerate(names):
        ok, okd = np.isfinite(mat[:, j]), np.isfinite(diffs[:, j])
        m = _interval(
            float(mat[ok, j].mean()) if ok.any() else float("nan"),
            boot[:, j],
            int(ok.sum()),
            confidence,
        )
        d = _interval(
            float(diffs[okd, j].mean()) if okd.any() else float("nan"),
            boot[:, k + j],
            int(okd.sum()),
            confidence,
        )
        out[s] = Comparison(system=s, reference=reference, mean=m, diff=d)
    return out
