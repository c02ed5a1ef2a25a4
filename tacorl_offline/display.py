"""Rendering for the command line: tables, progress bars and the training display.

Kept out of :mod:`tacorl_offline.cli` (which only parses options and calls one function) and
out of the library (which reports through return values and callbacks, never prints).
Output goes to ``out`` (stdout: results) and ``err`` (stderr: progress, notes).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tacorl_offline.config import Config
from tacorl_offline.distributed import Dist

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def render(columns: list[str], rows: list[tuple], fmt: str, title: str | None = None) -> None:
    if fmt == "json":
        out.print(
            json.dumps([dict(zip(columns, r, strict=True)) for r in rows], default=str, indent=2),
            markup=False,
        )
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")  # "\r\n" would leave a \r in `tail -1`
        w.writerow(columns)
        w.writerows(rows)
        sys.stdout.write(buf.getvalue())
    else:
        t = Table(title=title)
        for c in columns:
            t.add_column(c, overflow="fold")
        for r in rows:
            t.add_row(*["" if v is None else str(v) for v in r])
        out.print(t)


def print_json(obj: Any) -> None:
    """Plain JSON on stdout (no rich markup or wrapping), for scripts."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def print_run_report(r: Any) -> None:
    def num(v: float | None, f: str = ".4f") -> str:
        return "-" if v is None else format(v, f)

    t = Table(title=f"{r.kind} run {r.run_id}")
    t.add_column("what")
    t.add_column("value", justify="right", overflow="fold")
    r0, r1 = r.first_last("reward_mean")
    c0, c1 = r.first_last("compression")
    e0, e1 = r.first_last("entropy")
    seen = r.calls + r.hits
    rows = [
        ("status", r.status + (f": {r.message}" if r.message else "")),
        ("dataset / split", f"{r.dataset} / {r.split}"),
        ("teacher model", r.teacher_model or "-"),
        ("started / finished", f"{r.started_at or '-'} / {r.finished_at or '-'}"),
        ("steps", str(r.n_steps)),
        ("mean reward, first -> last step", f"{num(r0)} -> {num(r1)}"),
        ("compression, first -> last step", f"{num(c0, '.3f')} -> {num(c1, '.3f')}"),
        ("entropy, first -> last step", f"{num(e0)} -> {num(e1)}"),
        ("paid teacher calls", str(r.calls)),
        ("cache hits (replayed, $0)", f"{r.hits} ({r.hits / seen:.0%})" if seen else "0"),
        ("spent / saved", f"${r.spent_usd:.6f} / ${r.saved_usd:.6f}"),
    ]
    if r.run_dir:
        rows.append(("run directory", r.run_dir))
    for k, v in rows:
        t.add_row(k, v)
    out.print(t)


def spent_text(cost: float, backend: str | None = None) -> str:
    """Dollars spent, saying why it is $0 when the teacher is a free stand-in or local model."""
    from tacorl_offline.pricing import FREE_BACKENDS

    if backend in FREE_BACKENDS and not cost:
        why = "offline stand-in" if backend == "extractive" else "local model"
        return f"$0 ({backend} teacher: {why}, no API, free)"
    return f"${cost:.6f}"


def print_fill_summary(s: Any, backend: str | None = None) -> None:
    t = Table(title=f"teacher-fill {s.dataset}/{s.split} ({s.run_id})")
    t.add_column("what")
    t.add_column("value", justify="right")
    rows = [
        ("prompts in split", s.prompts),
        ("already answered (replayed, $0)", s.already),
        ("answered by imported data", s.imported),
        ("to fill", s.todo),
        ("filled now", s.filled),
        ("permanent failures (empty/filtered)", s.permanent_failures),
        ("transient failures (retry on rerun)", s.transient_failures),
        ("HTTP attempts", s.attempts),
        ("tokens in / out", f"{s.input_tokens} / {s.output_tokens}"),
        ("spent", spent_text(s.spend.cost_usd, backend)),
        ("saved by the cache", f"${s.spend.saved_usd:.6f}"),
        ("seconds", f"{s.seconds:.2f}"),
        ("answers / s", f"{s.answers_per_s:.1f}"),
    ]
    for k, v in rows:
        t.add_row(k, str(v))
    out.print(t)
    for n in s.notes:
        err.print(f"note: {n}", markup=False)


def fill_progress(progress: bool) -> tuple[Progress, Callable[[Any, int], None]]:
    """A live bar for teacher-fill and the ``on_progress`` callback that drives it."""
    bar = Progress(
        TextColumn("[bold]teacher-fill"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "calls {task.fields[calls]}  ${task.fields[usd]:.4f}  {task.fields[rate]:.1f}/s"
        ),
        TimeElapsedColumn(),
        console=err,
        disable=not progress,
        transient=True,
    )
    task = None

    def on_progress(s: Any, done: int) -> None:
        nonlocal task
        if task is None:
            task = bar.add_task("fill", total=s.todo, calls=0, usd=0.0, rate=0.0)
        bar.update(task, completed=done, calls=done, usd=s.spend.cost_usd, rate=s.answers_per_s)

    return bar, on_progress


def sft_with_progress(cfg: Config, *, warehouse: Any, progress: bool) -> Any:
    """Run the sft phase with a progress bar over its batches and a line per epoch."""
    from tacorl_offline.sft import sft_phase

    def epoch(log: Any) -> None:
        out.print(
            f"epoch {log.epoch}: loss {log.loss:.4f}, {log.label_text}, {log.seconds:.0f}s",
            markup=False,
        )

    if not progress:
        return sft_phase(cfg, warehouse=warehouse, on_epoch=epoch)
    bar = Progress(
        TextColumn("sft"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
    )
    with bar:
        task = bar.add_task("sft", total=None)
        return sft_phase(
            cfg,
            warehouse=warehouse,
            on_epoch=epoch,
            on_batch=lambda done, total: bar.update(task, completed=done, total=total),
        )


def config_flag(config: Any) -> str:
    """`` -c PATH`` for a printed next step (quoted for a shell), or '' without a config file."""
    import shlex

    return f" -c {shlex.quote(str(config))}" if config else ""


def print_sft_summary(s: Any, config: Any = None) -> None:
    t = Table(title=f"sft {s.run_id} ({s.source} labels)")
    t.add_column("")
    t.add_column("value")
    last = s.result.epochs[-1] if s.result.epochs else None
    for k, v in [
        ("prompts labelled", str(s.prompts)),
        ("train / held-out", f"{s.result.n_train} / {s.result.n_eval}"),
        ("labelled keep share", f"{s.result.keep_share:.3f}"),
        ("final loss", f"{last.loss:.4f}" if last else "-"),
        (
            "held-out label F1",
            f"{last.label_f1:.3f}" if last and last.held_out else "-",
        ),
        ("seconds", f"{s.seconds:.0f}"),
        ("model", str(s.output)),
    ]:
        t.add_row(k, v)
    out.print(t)
    out.print(
        f"next: start RL from it: tacorl-offline train{config_flag(config)} --init sft:latest"
        f" (this run: --init run:{s.run_id})",
        markup=False,
    )


def print_train_summary(s: Any, backend: str | None = None) -> None:
    t = Table(
        title=f"train {s.run_id}"
        + (f" (resumed at step {s.resumed_from})" if s.resumed_from else "")
    )
    t.add_column("what")
    t.add_column("value", justify="right")
    last = s.last
    rows = [
        ("world size", s.world_size),
        ("steps run", s.steps),
        ("paid teacher calls", s.spend.calls),
        ("cache hits (replayed, $0)", s.spend.hits),
        ("short-circuited (length only, no call)", s.short_circuits),
        ("unscorable samples", s.unscorable),
        ("spent", spent_text(s.spend.cost_usd, backend)),
        ("saved by the cache", f"${s.spend.saved_usd:.6f}"),
        (
            "first / last step mean reward",
            f"{s.rewards[0]:.4f} / {s.rewards[-1]:.4f}" if s.rewards else "-",
        ),
        ("last step compression", f"{last.compression:.3f}" if last else "-"),
        ("seconds", f"{s.seconds:.1f}"),
        ("final model", str(s.final_model) if s.final_model else "(not yet: resume to finish)"),
    ]
    if s.validation:
        rows[-1:-1] = [
            (
                "validation score by step",
                ", ".join(f"{p.step}: {p.score:.4f}" for p in s.validation),
            ),
            (
                "validation calls paid / replayed",
                f"{s.spend_validation.calls} / {s.spend_validation.hits}",
            ),
            ("final model is step", "-" if s.best_step is None else s.best_step),
        ]
        if s.stopped_early is not None:
            rows[-1:-1] = [
                (
                    "stopped early",
                    f"at step {s.stopped_early}: no new best validation point "
                    "(train.validation.patience)",
                )
            ]
    for k, v in rows:
        t.add_row(k, str(v))
    out.print(t)


def train_with_progress(cfg: Config, *, resume: str | None, progress: bool) -> tuple[Any, Dist]:
    """Run training with a live display on rank 0 (used by `train` and the pipelines)."""
    from tacorl_offline.distributed import session
    from tacorl_offline.trainer import Trainer
    from tacorl_offline.warehouse import Warehouse

    with session(cfg.compressor.device) as d:
        if d.enabled and d.is_main:
            err.print(f"distributed training: world size {d.world_size}", markup=False)
        bar = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "reward {task.fields[reward]:+.3f}  comp {task.fields[comp]:.2f}  "
                "hits {task.fields[hit]:.0%}  ${task.fields[usd]:.4f}"
            ),
            TimeElapsedColumn(),
            console=err,
            disable=not progress or not d.is_main,
            transient=True,
        )
        trainer = Trainer(cfg, warehouse=Warehouse(cfg.warehouse), resume=resume, dist=d)
        task = bar.add_task(
            "train",
            total=trainer.total_steps,
            completed=trainer.pos.step,
            reward=0.0,
            comp=0.0,
            hit=0.0,
            usd=0.0,
        )

        def on_step(log: Any, s: Any) -> None:
            bar.update(
                task,
                completed=log.step,
                reward=log.reward_mean if log.reward_mean == log.reward_mean else 0.0,
                comp=log.compression if log.compression == log.compression else 0.0,
                hit=s.spend.hit_rate,
                usd=s.spend.cost_usd,
            )

        trainer.on_step = on_step
        with bar:
            return asyncio.run(trainer.run()), d


def evaluate_with_progress(cfg: Config, *, progress: bool, **kw: Any) -> Any:
    """Run an evaluation with a live stage bar on stderr (used by `evaluate` and the pipelines)."""
    from tacorl_offline.evaluate import run_evaluation
    from tacorl_offline.warehouse import Warehouse

    bar = Progress(
        TextColumn("[bold]evaluate"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[what]}"),
        TimeElapsedColumn(),
        console=err,
        disable=not progress,
        transient=True,
    )
    task = bar.add_task("evaluate", total=None, what="")

    def on_progress(what: str, done: int, total: int) -> None:
        bar.update(task, completed=done, total=total, what=what)

    kw.setdefault("warehouse", Warehouse(cfg.warehouse))
    with bar:
        return asyncio.run(run_evaluation(cfg, progress=on_progress, **kw))


def print_eval_report(report: Any) -> None:
    """An evaluation as rich tables (one per metric, then cost), then the verdict lines."""
    from tacorl_offline.eval_output import fmt_num, label, verdict_lines

    console = out
    where = (
        f"rate {report.rate}" if report.rate is not None else f"target {report.target_token} tokens"
    )
    pct = f"{report.confidence:.0%}"
    console.print(
        f"evaluation {report.run_id}: {report.dataset}/{report.split}, {report.prompts} prompts,"
        f" {where}, teacher {report.teacher_model}; {pct} paired bootstrap intervals"
        f" ({report.resamples} resamples); differences against {label(report.reference)}",
        markup=False,
    )
    for metric in report.metrics:
        t = Table(title=metric, title_justify="left")
        t.add_column("system", overflow="fold")
        t.add_column("n", justify="right")
        t.add_column(f"mean [{pct} CI]", no_wrap=True)
        t.add_column(f"diff [{pct} CI]", no_wrap=True)
        t.add_column("vs ref")
        for r in report.rows:
            if r.metric != metric:
                continue
            is_ref = r.system == report.reference
            t.add_row(
                label(r.system),
                str(r.n),
                f"{fmt_num(r.mean)} [{fmt_num(r.ci_low)}, {fmt_num(r.ci_high)}]",
                "(reference)"
                if is_ref
                else f"{fmt_num(r.diff, True)} [{fmt_num(r.diff_ci_low, True)}, {fmt_num(r.diff_ci_high, True)}]",
                "" if is_ref else r.verdict,
            )
        console.print(t)
    c = Table(
        title="cost and compression (ratio = compressed / original tokens)", title_justify="left"
    )
    c.add_column("system", overflow="fold")
    for col in ("kind", "ratio", "unscorable", "calls", "hits", "spent $", "saved $"):
        c.add_column(col, no_wrap=True)
    for s in report.systems:
        c.add_row(
            label(s.name),
            s.kind,
            fmt_num(s.token_ratio),
            str(s.unscorable),
            str(s.calls),
            str(s.hits),
            f"{s.cost_usd:.4f}",
            f"{s.saved_usd:.4f}",
        )
    console.print(c)
    total = (
        f"teacher calls paid: {report.calls} (judge {report.judge_calls}), hits: {report.hits},"
        f" spent ${report.cost_usd:.6f}, saved ${report.saved_usd:.6f}"
    )
    console.print(total, markup=False)
    if report.teacher_backend == "extractive":
        console.print(
            "note: the extractive teacher is a deterministic stand-in for an LLM, not a real model",
            markup=False,
        )
    for line in verdict_lines(report):
        console.print(line, markup=False)
    if report.budget_stopped:
        console.print(
            "budget reached: unanswered prompts are unscorable; rerun to resume", markup=False
        )


def show_stage(stage: str, result: Any, backend: str | None = None) -> None:
    if stage == "ingest":
        out.print(
            f"      {result.records} records: {result.new_prompts} new prompts, {result.imported_answers} imported answers",
            markup=False,
        )
    elif stage == "fill":
        print_fill_summary(result, backend=backend)
    elif stage == "train":
        print_train_summary(result, backend=backend)
    elif stage == "eval":
        print_eval_report(result)
    elif stage == "cost":
        from tacorl_offline.reports import for_table

        res = for_table(result, "phase")
        render(res.columns, res.rows, "table", title="cost by phase (report cost --by run)")
