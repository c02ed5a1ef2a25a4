"""``report run RUN``: one run's summary and its per-step curves, read from the warehouse.

Design decisions:
- Everything comes from the warehouse (``runs``, ``steps``, ``api_calls``), never from the
  run directory, so a report works on any machine that has the DuckDB file, during a run too
  (read-only connection).
- ``RUN`` is a run id, a unique prefix of one, or ``latest`` (the latest training run).
- The curves are the ones a user asks about first: mean reward, compression ratio, entropy,
  cache hit rate, paid calls per step and cumulative dollars. Plotting is
  :mod:`tacorl_offline.plots`; this module has no matplotlib in it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tacorl_offline.errors import UserError
from tacorl_offline.warehouse import Warehouse

# (column in the series, axis label) for every curve the report draws.
# ``mean reward`` is named by the run's reward in the plot (``reward_label``).
CURVES: dict[str, str] = {
    "reward_mean": "mean reward",
    "compression": "compression ratio (compressed / original tokens)",
    "entropy": "policy entropy (nats per deciding word)",
    "hit_rate": "cache hit rate (hits / (hits + paid calls))",
    "calls": "paid teacher calls per step",
    "cumulative_usd": "cumulative spend (USD)",
}
# Curves whose values are counts (integer ticks) and the smallest y span each axis shows, so
# that noise in the 4th decimal is not drawn as a trend (a rate is shown on [0, 1]).
COUNT_CURVES = frozenset({"calls"})
MIN_SPAN: dict[str, float] = {
    "reward_mean": 0.1,
    "compression": 0.1,
    "entropy": 0.1,
    "hit_rate": 1.0,
    "calls": 4.0,
    "cumulative_usd": 0.01,
}
FIXED_RANGE: dict[str, tuple[float, float]] = {"hit_rate": (0.0, 1.0)}


def reward_label(cfg: dict[str, Any]) -> str | None:
    """``taco reward (bleu)`` from a stored config's reward section."""
    r = cfg.get("reward") or {}
    if not r.get("family"):
        return None
    return f"{r['family']} reward ({r['metric']})" if r.get("metric") else f"{r['family']} reward"


@dataclass
class RunReport:
    run_id: str
    kind: str
    status: str
    dataset: str | None
    split: str | None
    teacher_model: str | None
    started_at: str | None
    finished_at: str | None
    message: str | None
    run_dir: str | None
    calls: int = 0
    hits: int = 0
    spent_usd: float = 0.0
    saved_usd: float = 0.0
    steps: dict[str, list[float | None]] = field(default_factory=dict)  # column -> values
    plots: list[str] = field(default_factory=list)
    reward: str | None = None  # e.g. "taco reward (bleu)"

    def label(self, column: str) -> str:
        if column == "reward_mean" and self.reward:
            return f"mean {self.reward}"
        return CURVES[column]

    @property
    def n_steps(self) -> int:
        return len(self.steps.get("step", []))

    def first_last(self, column: str) -> tuple[float | None, float | None]:
        vals = [v for v in self.steps.get(column, []) if v is not None and not math.isnan(v)]
        return (vals[0], vals[-1]) if vals else (None, None)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_steps"] = self.n_steps
        d["hit_rate"] = self.hits / (self.hits + self.calls) if self.hits + self.calls else None
        return d


def resolve_run_id(con: Any, run: str) -> str:
    if run == "latest":
        rows = con.execute(
            "SELECT run_id FROM runs WHERE kind = 'train' ORDER BY started_at DESC LIMIT 1"
        ).fetchall()
        if not rows:
            raise UserError("no training run in the warehouse yet; run 'tacorl-offline train'")
        return str(rows[0][0])
    rows = con.execute(
        "SELECT run_id FROM runs WHERE starts_with(run_id, ?) ORDER BY started_at", [run]
    ).fetchall()
    exact = [r[0] for r in rows if r[0] == run]
    if exact:
        return str(exact[0])
    if len(rows) == 1:
        return str(rows[0][0])
    recent = [
        r[0]
        for r in con.execute("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 5").fetchall()
    ]
    if not rows:
        raise UserError(
            f"no run '{run}' in the warehouse; recent runs: {', '.join(recent) or '(none)'}"
            " (or pass 'latest')"
        )
    raise UserError(
        f"run '{run}' is ambiguous ({len(rows)} runs start with it); pass more of the id"
    )


def load_run_report(warehouse: Warehouse, run: str) -> RunReport:
    with warehouse.connect(read_only=True) as con:
        run_id = resolve_run_id(con, run)
        kind, status, dataset, split, config, message, started, finished = con.execute(
            "SELECT kind, status, dataset, split, config, message, started_at, finished_at"
            " FROM runs WHERE run_id = ?",
            [run_id],
        ).fetchall()[0]
        cfg = json.loads(config) if isinstance(config, str) else (config or {})
        calls, hits, spent, saved = con.execute(
            "SELECT count(*) FILTER (WHERE status <> 'hit' AND attempt <= 1),"
            " count(*) FILTER (WHERE status = 'hit'),"
            " coalesce(sum(cost_usd), 0), coalesce(sum(saved_usd), 0)"
            " FROM api_calls WHERE run_id = ?",
            [run_id],
        ).fetchall()[0]
        cur = con.execute(
            "SELECT step, reward_mean, reward_std, compression, entropy, loss,"
            " hits / nullif(hits + calls, 0) AS hit_rate, calls, hits, short_circuits,"
            " cost_usd, sum(coalesce(cost_usd, 0)) OVER (ORDER BY step) AS cumulative_usd"
            " FROM steps WHERE run_id = ? ORDER BY step",
            [run_id],
        )
        cols = [d[0] for d in cur.description]
        rows = cur.fetchall()
    steps = {
        c: [None if v is None else float(v) for v in col]
        for c, col in zip(cols, zip(*rows, strict=True), strict=True)
    }
    if not rows:
        steps = {c: [] for c in cols}
    out_dir = (cfg.get("train") or {}).get("output_dir")
    return RunReport(
        run_id=run_id,
        kind=kind,
        status=status,
        dataset=dataset,
        split=split,
        teacher_model=(cfg.get("teacher") or {}).get("model"),
        started_at=str(started)[:19] if started else None,  # to the second
        finished_at=str(finished)[:19] if finished else None,
        message=message,
        run_dir=str(Path(out_dir) / run_id) if out_dir and kind == "train" else None,
        calls=int(calls),
        hits=int(hits),
        spent_usd=float(spent),
        saved_usd=float(saved),
        steps=steps,
        reward=reward_label(cfg) if kind == "train" else None,
    )


def default_plot_dir(report: RunReport) -> Path:
    """Beside the run's checkpoints when that directory is here, else reports/<run>."""
    if report.run_dir and Path(report.run_dir).is_dir():
        return Path(report.run_dir) / "plots"
    return Path("reports") / report.run_id
