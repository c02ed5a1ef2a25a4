"""PNG curves of a training run against step (matplotlib, headless).

Design decision: the ``Agg`` backend is selected explicitly, before pyplot is imported, so
plots are written the same on a server, in CI and on a laptop, and never open a window.
One file per curve (``reward_mean.png`` ...), so each can be dropped into a note as is.
Readable axes (issue 21): steps and counts get integer ticks; each curve has a minimum y span
(``run_report.MIN_SPAN``) so a flat curve is drawn flat, not as magnified noise; a rate is drawn
on [0, 1]; the y label names the reward and metric, or the unit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tacorl_offline.run_report import COUNT_CURVES, CURVES, FIXED_RANGE, MIN_SPAN, RunReport


def write_plots(report: RunReport, out_dir: str | Path) -> list[Path]:
    """Write one PNG per curve that has data; returns their paths (empty for a run without steps)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    steps = report.steps.get("step", [])
    if not steps:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    from matplotlib.ticker import MaxNLocator

    for column in CURVES:
        label = report.label(column)
        pairs = [
            (s, v)
            for s, v in zip(steps, report.steps.get(column, []), strict=True)
            if v is not None and not math.isnan(v)
        ]
        if not pairs:
            continue
        xs, ys = zip(*pairs, strict=True)
        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
        try:
            ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, linewidth=1.5)
            if column == "reward_mean":
                std = report.steps.get("reward_std", [])
                band = [
                    (s, m, d)
                    for s, m, d in zip(steps, report.steps.get(column, []), std, strict=True)
                    if m is not None and d is not None and not (math.isnan(m) or math.isnan(d))
                ]
                if band:
                    bs, bm, bd = zip(*band, strict=True)
                    ax.fill_between(
                        bs,
                        [m - d for m, d in zip(bm, bd, strict=True)],
                        [m + d for m, d in zip(bm, bd, strict=True)],
                        alpha=0.2,
                        label="± 1 std over samples",
                    )
                    ax.legend(loc="best", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if column in COUNT_CURVES:
                ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            _set_span(ax, column, ys)
            ax.set_xlabel("step")
            ax.set_ylabel(_axis_label(label), fontsize=9)
            ax.set_title(f"{label}\nrun {report.run_id}", fontsize=9)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            path = out / f"{column}.png"
            fig.savefig(path)
            written.append(path)
        finally:
            plt.close(fig)
    return written


def _axis_label(label: str) -> str:
    """The y label: the curve's name with its unit, shortened where the title says more."""
    short = {
        "compression ratio (compressed / original tokens)": "kept / original tokens",
        "cache hit rate (hits / (hits + paid calls))": "hit rate (fraction)",
        "policy entropy (nats per deciding word)": "entropy (nats / word)",
        "paid teacher calls per step": "calls per step",
        "cumulative spend (USD)": "spend (USD)",
    }
    return short.get(label, label)


def y_limits(column: str, ys: Sequence[float]) -> tuple[float, float]:
    """The y range drawn: the data's, widened to the curve's minimum span around its middle
    (never below 0 for a quantity that cannot be negative), or the curve's fixed range."""
    if column in FIXED_RANGE:
        lo, hi = FIXED_RANGE[column]
        pad = (hi - lo) * 0.04
        return lo - pad, hi + pad
    lo, hi = float(min(ys)), float(max(ys))
    span = MIN_SPAN.get(column, 0.0)
    if hi - lo < span:
        mid = (lo + hi) / 2
        lo, hi = mid - span / 2, mid + span / 2
        if column != "reward_mean" and lo < 0 <= min(ys):
            lo, hi = 0.0, span
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def _set_span(ax: Any, column: str, ys: Sequence[float]) -> None:
    ax.set_ylim(*y_limits(column, ys))
