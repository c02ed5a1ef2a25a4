"""Serialising an :class:`~tacorl_offline.evaluate.EvalReport`: JSON, CSV, verdict lines.

The rich table is drawn by :func:`tacorl_offline.display.print_eval_report` (the CLI side).

Design decisions:

- **Stable field names** (documented in the README, section "Evaluation output"): CSV has one
  row per (system, metric) with the columns of :data:`ROW_FIELDS`; JSON is an object with
  ``run`` (:data:`RUN_FIELDS`), ``systems`` (one object per system, :data:`SYSTEM_FIELDS`)
  and ``rows`` (the CSV rows). New fields may be added; existing ones keep their names.
- CSV uses ``\\n`` line endings (not the csv module's default ``\\r\\n``); NaN is an empty
  cell in CSV and ``null`` in JSON (strict JSON has no NaN).
- The verdict lines say plainly whether the reference system beats each other system: it
  does when the interval of the paired difference lies entirely on its side of 0.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from tacorl_offline.evaluate import EvalReport

RUN_FIELDS = (
    "run_id",
    "dataset",
    "split",
    "prompts",
    "rate",
    "target_token",
    "metric_spec",
    "reference",
    "confidence",
    "resamples",
    "teacher_backend",
    "teacher_model",
    "judge",
    "calls",
    "hits",
    "cost_usd",
    "saved_usd",
    "judge_calls",
    "judge_hits",
    "budget_stopped",
    "seconds",
)
SYSTEM_FIELDS = (
    "system",
    "kind",
    "prompts",
    "unscorable",
    "token_ratio",
    "calls",
    "hits",
    "cost_usd",
    "saved_usd",
)
ROW_FIELDS = (
    "system",
    "kind",
    "metric",
    "n",
    "mean",
    "ci_low",
    "ci_high",
    "reference",
    "diff",
    "diff_ci_low",
    "diff_ci_high",
    "verdict",
    "token_ratio",
    "unscorable",
    "calls",
    "hits",
    "cost_usd",
    "saved_usd",
)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def run_dict(report: EvalReport) -> dict[str, Any]:
    return {f: _clean(getattr(report, f)) for f in RUN_FIELDS}


def system_dicts(report: EvalReport) -> list[dict[str, Any]]:
    out = []
    for s in report.systems:
        d = {f: _clean(getattr(s, f)) for f in SYSTEM_FIELDS if f not in ("system", "kind")}
        out.append({"system": s.name, "kind": s.kind, **d})
    return out


def row_dicts(report: EvalReport) -> list[dict[str, Any]]:
    by_name = {s["system"]: s for s in system_dicts(report)}
    out = []
    for r in report.rows:
        s = by_name[r.system]
        d = {
            "system": r.system,
            "kind": r.kind,
            "metric": r.metric,
            "n": r.n,
            "mean": r.mean,
            "ci_low": r.ci_low,
            "ci_high": r.ci_high,
            "reference": r.reference,
            "diff": r.diff,
            "diff_ci_low": r.diff_ci_low,
            "diff_ci_high": r.diff_ci_high,
            "verdict": r.verdict,
            **{f: s[f] for f in ROW_FIELDS if f in SYSTEM_FIELDS and f not in ("system", "kind")},
        }
        out.append({f: _clean(d[f]) for f in ROW_FIELDS})
    return out


def to_json(report: EvalReport) -> str:
    doc = {"run": run_dict(report), "systems": system_dicts(report), "rows": row_dicts(report)}
    return json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def to_csv(report: EvalReport) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(ROW_FIELDS), lineterminator="\n")
    w.writeheader()
    for d in row_dicts(report):
        w.writerow({k: "" if v is None else v for k, v in d.items()})
    return buf.getvalue()


def fmt_num(x: float, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    x += 0.0  # -0.0 (a negated exact tie) prints as +0.000
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def label(system: str) -> str:
    """A short display name: a model path shows its last two parts (``<run>/final``)."""
    parts = [p for p in system.replace("\\", "/").split("/") if p]
    return "/".join(parts[-2:]) if len(parts) > 2 else system


def verdict_lines(report: EvalReport) -> list[str]:
    """One plain line per (primary metric, other system): does the reference beat it?"""
    ref = label(report.reference)
    pct = f"{report.confidence:.0%}"
    lines = []
    for metric in report.primary_metrics:
        for r in report.rows:
            if r.metric != metric or r.system == report.reference:
                continue
            # r.diff is other - reference; the reference's advantage is its negation.
            d, lo, hi = -r.diff, -r.diff_ci_high, -r.diff_ci_low
            span = f"{fmt_num(d, True)} [{fmt_num(lo, True)}, {fmt_num(hi, True)}]"
            other = label(r.system)
            if r.verdict == "worse":
                say = f"{ref} BEATS {other}"
            elif r.verdict == "beats":
                say = f"{ref} does NOT beat {other} (it is worse: the interval lies below 0)"
            elif r.verdict == "tie":
                say = f"{ref} does NOT beat {other} (the interval includes 0)"
            else:
                say = f"{ref} vs {other}: no paired prompts to compare"
            lines.append(f"{metric}: {say}; difference {span}, {pct} paired bootstrap")
    return lines
