"""PNG curves of a training run against step (matplotlib, headless).

Design decision: the ``Agg`` backend is selected explicitly, before pyplot is imported, so
plots are written the same on a server, in CI and on a laptop, and never open a window.
One file per curve (``reward_mean.png`` ...), so each can be dropped into a note as is.
"""

from __future__ import annotations

import math
from pathlib import Path

from tacorl_offline.run_report import CURVES, RunReport


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
    for column, label in CURVES.items():
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
            ax.set_xlabel("step")
            ax.set_ylabel(label.split(" (")[0])
            ax.set_title(f"{label}\nrun {report.run_id}", fontsize=9)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            path = out / f"{column}.png"
            fig.savefig(path)
            written.append(path)
        finally:
            plt.close(fig)
    return written
