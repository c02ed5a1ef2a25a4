"""Paired bootstrap intervals: coverage of a known mean, pairing, missing values, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from tacorl_offline.bootstrap import mean_ci, paired_compare, resample_counts


def test_interval_covers_a_known_mean_about_95_percent_of_the_time() -> None:
    # Skewed data (exponential, mean 2): 400 independent datasets of 80 values each.
    rng = np.random.default_rng(123)
    trials, hits = 400, 0
    for t in range(trials):
        x = rng.exponential(2.0, size=80)
        ci = mean_ci(x, resamples=1000, seed=t)
        hits += ci.low <= 2.0 <= ci.high
    coverage = hits / trials
    # Percentile intervals undercover slightly on skewed data; 95% +- 3 binomial SEs (0.011).
    assert 0.90 <= coverage <= 0.985, coverage


def test_bernoulli_interval_matches_the_normal_approximation() -> None:
    x = np.r_[np.ones(300), np.zeros(700)]  # p = 0.3, n = 1000
    ci = mean_ci(x, resamples=4000, seed=1)
    half = 1.96 * np.sqrt(0.3 * 0.7 / 1000)
    assert ci.mean == pytest.approx(0.3)
    assert ci.low == pytest.approx(0.3 - half, abs=0.006)
    assert ci.high == pytest.approx(0.3 + half, abs=0.006)


def test_paired_difference_sees_a_small_consistent_gain() -> None:
    rng = np.random.default_rng(7)
    base = rng.uniform(0, 1, size=100)  # large prompt-to-prompt spread
    better = np.clip(base + 0.03 + rng.normal(0, 0.01, size=100), 0, 2)
    res = paired_compare({"base": base, "better": better}, "base", resamples=2000)
    d = res["better"].diff
    assert d.low > 0 and d.low <= 0.03 <= d.high  # excludes 0, covers the true gain
    assert res["better"].verdict == "beats"
    # The two means' own intervals overlap: only pairing can tell them apart.
    assert res["better"].mean.low < res["base"].mean.high
    assert res["base"].diff.mean == 0.0 and res["base"].verdict == "tie"
    worse = paired_compare({"better": better, "base": base}, "better", resamples=2000)
    assert worse["base"].verdict == "worse"


def test_missing_values_drop_out_and_results_are_seeded() -> None:
    a = np.array([1.0, 0.0, np.nan, 1.0, 1.0, 0.0])
    b = np.array([0.5, np.nan, 0.5, 0.5, 0.5, 0.5])
    r1 = paired_compare({"a": a, "b": b}, "a", resamples=500, seed=4)
    r2 = paired_compare({"a": a, "b": b}, "a", resamples=500, seed=4)
    assert r1 == r2
    assert r1["a"].mean.n == 5 and r1["a"].mean.mean == pytest.approx(0.6)
    assert r1["b"].mean.n == 5 and r1["b"].mean.mean == pytest.approx(0.5)
    assert r1["b"].diff.n == 4  # prompts scored by both
    assert r1["b"].diff.mean == pytest.approx(np.mean([0.5 - 1, 0.5 - 1, 0.5 - 1, 0.5]))
    empty = mean_ci([np.nan, np.nan], resamples=100)
    assert empty.n == 0 and np.isnan(empty.mean)


def test_resample_counts_are_multinomial_rows() -> None:
    c = resample_counts(7, 50, seed=0)
    assert c.shape == (50, 7) and (c.sum(axis=1) == 7).all()
    with pytest.raises(ValueError, match="reference"):
        paired_compare({"a": [1.0]}, "b")
