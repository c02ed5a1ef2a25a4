"""Evaluate compressors against each other and against heuristic baselines, with intervals.

Design decisions:

- **Same prompts, same rate, same teacher.** Every system (each ``-m`` model and each
  baseline of :mod:`tacorl_offline.heuristics`) compresses the same held-out prompts at the
  same rate (or ``target_token``), in the same token budget; baselines use the first model's
  word segmentation. Teacher answers come through the replay path of training
  (:mod:`tacorl_offline.replay`): read from the warehouse, or paid once and journaled first.
- **Scored twice.** Each answer is scored against the teacher's answer to the original prompt
  (``teacher.*``, the quantity TACO-RL optimises) and, where the data has them, against the
  gold references (``gold.*``, the maximum over several references as SQuAD does). With
  ``--judge`` the teacher also judges each compressed answer against the original's in both
  orders (``judge.win``, :mod:`tacorl_offline.judge`). ``squad_f1`` brings ``exact_match``
  along (weight 0: the weighted ``metric`` is unchanged).
- **Intervals.** Every metric gets its mean and a paired bootstrap interval, and the paired
  difference against a reference system (the first model unless ``eval.reference`` says
  otherwise) with its own interval (:mod:`tacorl_offline.bootstrap`). A NaN is an
  unscorable prompt (failed teacher call, budget stop, no gold answer) and drops out.
- **original** replays the answer every system is scored against (the teacher's stored
  answer to the original prompt, or the imported one): the ceiling, never a paid call, so an
  evaluation cannot add an own answer that would shadow an imported one in training.
- **random** is scored once per seed; its per-prompt value is the mean over the seeds.
- **Cost** per system: calls paid, cache hits, dollars spent and saved (hits at the price
  the original call cost), and the achieved token ratio compressed/original in the reward's
  token counter (``train.token_counter``).
- **Stored.** One ``evaluations`` row per (run, system, seed, prompt), so ``sql`` can compare
  runs later; the run itself is a ``runs`` row of kind ``eval``.
- :func:`compress_prompts` is the only place a model compresses evaluation prompts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tacorl_offline import bootstrap, heuristics, metrics
from tacorl_offline.config import Config
from tacorl_offline.datasets import settle
from tacorl_offline.errors import UserError
from tacorl_offline.hashing import import_request_hash, request_hash
from tacorl_offline.items import Item, load_items
from tacorl_offline.judge import JudgePair, check_judge_backend, judge_pairs
from tacorl_offline.model_ref import resolve_model_ref
from tacorl_offline.replay import Wanted, resolve
from tacorl_offline.runs import PhaseRun, Spend, key_of, phase_run
from tacorl_offline.teachers import render_messages
from tacorl_offline.tokens import make_token_counter
from tacorl_offline.warehouse import Warehouse, insert_rows

Progress = Callable[[str, int, int], None]  # (what is running, stages done, stages in all)


@dataclass
class Compression:
    """One system's compression of one prompt."""

    text: str
    mask_hash: str


@dataclass
class SystemResult:
    """One system: its cost, its achieved ratio and its per-prompt scores."""

    name: str
    kind: str  # 'model' | 'baseline'
    prompts: int = 0
    unscorable: int = 0  # prompts without a usable teacher answer (any seed)
    token_ratio: float = math.nan  # mean compressed / original tokens (reward counter)
    spend: Spend = field(default_factory=Spend)
    scores: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    # flat views, the JSON/CSV field names
    @property
    def calls(self) -> int:
        return self.spend.calls

    @property
    def hits(self) -> int:
        return self.spend.hits

    @property
    def cost_usd(self) -> float:
        return self.spend.cost_usd

    @property
    def saved_usd(self) -> float:
        return self.spend.saved_usd


@dataclass
class MetricRow:
    """One (system, metric) line of the report. Field names are the JSON/CSV columns."""

    system: str
    kind: str
    metric: str  # e.g. 'teacher.squad_f1', 'gold.exact_match', 'judge.win'
    n: int
    mean: float
    ci_low: float
    ci_high: float
    reference: str
    diff: float  # system - reference, paired
    diff_ci_low: float
    diff_ci_high: float
    verdict: str  # vs the reference: 'beats' | 'worse' | 'tie' | 'reference' | 'n/a'


@dataclass
class EvalReport:
    run_id: str
    dataset: str
    split: str
    prompts: int
    rate: float | None
    target_token: int | None
    metric_spec: str
    reference: str
    confidence: float
    resamples: int
    teacher_backend: str
    teacher_model: str
    systems: list[SystemResult]
    rows: list[MetricRow]
    spend: Spend = field(default_factory=Spend)  # every system and the judge
    judge: bool = False
    judge_spend: Spend = field(default_factory=Spend)
    budget_stopped: bool = False
    seconds: float = 0.0

    # flat views, the JSON field names
    @property
    def calls(self) -> int:
        return self.spend.calls

    @property
    def hits(self) -> int:
        return self.spend.hits

    @property
    def cost_usd(self) -> float:
        return self.spend.cost_usd

    @property
    def saved_usd(self) -> float:
        return self.spend.saved_usd

    @property
    def judge_calls(self) -> int:
        return self.judge_spend.calls

    @property
    def judge_hits(self) -> int:
        return self.judge_spend.hits

    def row(self, system: str, metric: str) -> MetricRow:
        for r in self.rows:
            if r.system == system and r.metric == metric:
                return r
        raise KeyError((system, metric))

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(r.metric for r in self.rows))

    @property
    def primary_metrics(self) -> list[str]:
        """The metrics the verdict lines speak about: the teacher's and the gold's main one."""
        out = []
        for against in ("teacher", "gold", "judge"):
            names = [m for m in self.metrics if m.startswith(against + ".")]
            if names:
                main = f"{against}.metric" if f"{against}.metric" in names else names[0]
                out.append(main)
        return out


# ----------------------------------------------------------------------------- pieces


def compress_prompts(comp: Any, items: Sequence[Item], *, rate: float, target_token: int):
    """The one place evaluation compresses prompts with a model (fields go here when a
    question-aware compressor needs them)."""
    results = comp.compress(
        [i.text for i in items],
        rate=rate,
        target_token=target_token if target_token > 0 else -1,
        fields=[i.fields for i in items],
    )
    return [Compression(r.compressed_prompt, r.mask_hash) for r in results]


def baseline_compressions(
    comp: Any,
    items: Sequence[Item],
    name: str,
    *,
    rate: float,
    target_token: int,
    seed: int | None = None,
) -> list[Compression]:
    """Baseline ``name`` on ``comp``'s word segmentation, in its token budget."""
    opts = comp.options.replace(rate=rate, target_token=target_token)
    lays = comp.layouts([i.text for i in items], opts)
    count = comp._counter()  # the compressor's own counter: the same budget as compress()
    out = []
    for lay in lays:
        r = rate
        if target_token > 0:
            r = min(target_token / max(count(lay.text), 1), 1.0)
        h = heuristics.compress_layout(
            lay, name, r, seed=seed, drop_consecutive=opts.drop_consecutive
        )
        out.append(Compression(h.text, h.mask_hash))
    return out


def load_gold(warehouse: Warehouse, items: Sequence[Item]) -> dict[str, list[str]]:
    """prompt id -> every gold reference (``prompts.gold_references``, else ``reference``)."""
    import json

    import pyarrow as pa

    if not items:
        return {}
    with warehouse.connect() as con:
        con.register("_eval_ids", pa.table({"prompt_id": [i.prompt_id for i in items]}))
        try:
            rows = con.execute(
                "SELECT p.prompt_id, p.reference, p.gold_references FROM prompts p"
                " JOIN _eval_ids k USING (prompt_id)"
            ).fetchall()
        finally:
            con.unregister("_eval_ids")
    out: dict[str, list[str]] = {}
    for pid, ref, golds in rows:
        refs = json.loads(golds) if golds else ([ref] if ref else [])
        out[pid] = [r for r in refs if isinstance(r, str)]
    return out


def metric_weights(spec: str) -> dict[str, float]:
    w = metrics.parse_metric_spec(spec)
    if "squad_f1" in w and "exact_match" not in w:
        w["exact_match"] = 0.0  # reported beside F1, as SQuAD does; not in the weighted sum
    return w


def score_answers(
    cfg: Config,
    spec: dict[str, float],
    answers: Sequence[str | None],
    refs: Sequence[Sequence[str]],
    prefix: str,
) -> dict[str, np.ndarray]:
    """Per-prompt scores (NaN: no answer or nothing to score against) under ``prefix.``."""
    preds = [a if a is not None else "" for a in answers]
    lists = [list(r) if a is not None else [] for a, r in zip(answers, refs, strict=True)]
    rows = metrics.score_multi(
        spec,
        preds,
        lists,
        bertscore_model=cfg.train.reward.bertscore_model,
        bertscore_layers=cfg.train.reward.bertscore_layers,
    )
    names = [m for m in spec if spec[m] > 0 or m == "exact_match"]
    if sum(1 for w in spec.values() if w > 0) > 1:
        names.append("metric")
    return {f"{prefix}.{m}": np.array([r[m] for r in rows], dtype=np.float64) for m in names}


def _rows_for(
    systems: Sequence[SystemResult],
    reference: str,
    *,
    resamples: int,
    confidence: float,
    seed: int,
) -> list[MetricRow]:
    keys = list(dict.fromkeys(k for s in systems for k in s.scores))
    kinds = {s.name: s.kind for s in systems}
    rows: list[MetricRow] = []
    for key in keys:
        have = {s.name: s.scores[key] for s in systems if key in s.scores}
        if reference not in have or all(np.isnan(v).all() for v in have.values()):
            continue
        cmp = bootstrap.paired_compare(
            have, reference, resamples=resamples, confidence=confidence, seed=seed
        )
        for name, c in cmp.items():
            rows.append(
                MetricRow(
                    system=name,
                    kind=kinds[name],
                    metric=key,
                    n=c.mean.n,
                    mean=c.mean.mean,
                    ci_low=c.mean.low,
                    ci_high=c.mean.high,
                    reference=reference,
                    diff=c.diff.mean,
                    diff_ci_low=c.diff.low,
                    diff_ci_high=c.diff.high,
                    verdict="reference" if name == reference else c.verdict,
                )
            )
    return rows


# ----------------------------------------------------------------------------- the run


@dataclass
class _Systems:
    """What one evaluation compares, settled from the arguments and the config."""

    models: list[str]
    baselines: list[str]
    rate: float
    target_token: int  # -1: none (rate applies)
    judge: bool
    reference: str

    @property
    def names(self) -> list[str]:
        return [*self.models, *self.baselines]


def select_systems(
    cfg: Config,
    wh: Warehouse,
    *,
    models: Sequence[str] | None,
    baselines: Sequence[str] | None,
    rate: float | None,
    target_token: int | None,
    judge: bool | None,
    reference: str | None,
) -> _Systems:
    """The systems, the rate and the reference; one line for each setting that cannot work."""
    # run:<id> / latest name a training run's final model
    models = [
        resolve_model_ref(m, wh, hub_download=cfg.compressor.hub_download)
        for m in (models or [cfg.compressor.model])
    ]
    names = [*models]
    base_names = heuristics.check_baselines(
        list(cfg.eval.baselines if baselines is None else baselines)
    )
    clash = set(models) & set(base_names)
    if clash or len(set(models)) != len(models):
        raise UserError(
            f"system names must be unique: {sorted(clash) or models}; pass each model once"
        )
    names += base_names
    rate = cfg.compressor.rate if rate is None else rate
    if not (0.0 < rate <= 1.0):
        raise UserError(f"rate must lie in (0, 1] (got {rate}); it is the fraction of tokens kept")
    tt = cfg.compressor.target_token if target_token is None else target_token
    tt = tt if tt and tt > 0 else -1
    judge = cfg.eval.judge if judge is None else judge
    reference = reference or cfg.eval.reference or models[0]
    if reference not in names:
        raise UserError(
            f"reference system '{reference}' is not evaluated; choose one of: {', '.join(names)}"
        )
    if judge:
        check_judge_backend(cfg.teacher.backend)
    return _Systems(models, base_names, rate, tt, bool(judge), reference)


def select_prompts(
    cfg: Config, wh: Warehouse, tkey: str
) -> tuple[Config, list[Item], dict[str, list[str]]]:
    """The dataset/split settled, its prompts and their gold references."""
    with wh.connect() as con:
        cfg, _ = settle(cfg, con, where=str(wh.path))
        items = load_items(con, cfg, tkey)
    return cfg, items, load_gold(wh, items)


def compress_systems(
    cfg: Config, sy: _Systems, items: Sequence[Item], tick: Callable[[str], None]
) -> tuple[dict[str, list[list[Compression]]], Callable[[str], int]]:
    """Every model's compressions, then every baseline's on the first model's words
    (system -> variants -> per prompt), and the reward's token counter."""
    from tacorl_offline.compressor import CompressOptions, Compressor

    comps: dict[str, list[list[Compression]]] = {}
    first = None
    count = None
    for m in sy.models:
        tick(f"compress with {m}")
        comp = Compressor.from_pretrained(
            m,
            device=cfg.compressor.device,
            options=CompressOptions.from_config(cfg.compressor),
            condition_on=cfg.compressor.condition_on,
        )
        if first is None:
            first = comp
            count = make_token_counter(cfg.train.token_counter, comp.tokenizer)
        comps[m] = [compress_prompts(comp, items, rate=sy.rate, target_token=sy.target_token)]
    assert first is not None and count is not None
    for b in sy.baselines:
        variants = list(cfg.eval.random_seeds) if b == "random" else [None]
        comps[b] = [
            baseline_compressions(
                first, items, b, rate=sy.rate, target_token=sy.target_token, seed=s
            )
            for s in variants
        ]
    return comps, count


async def answer_systems(
    cfg: Config,
    wh: Warehouse,
    run: PhaseRun,
    tkey: str,
    sy: _Systems,
    items: Sequence[Item],
    comps: dict[str, list[list[Compression]]],
    tick: Callable[[str], None],
) -> tuple[dict[str, list[list[Wanted]]], dict[str, SystemResult]]:
    """Each system's teacher answers through the replay path: hits replayed, misses paid
    once and journaled; ``original`` only replays."""
    wanted: dict[str, list[list[Wanted]]] = {}
    systems: dict[str, SystemResult] = {}
    for name in sy.names:
        tick(f"teacher answers for {name}")
        if name == "original":
            wanted[name], systems[name], hits = _original_answers(cfg, wh, tkey, items, comps)
            with wh.transaction() as con:
                run.record(con, hits=hits)
            continue
        ws = [
            [
                Wanted(i.prompt_id, c.mask_hash, c.text, i.fields)
                for i, c in zip(items, variant, strict=True)
            ]
            for variant in comps[name]
        ]
        st = await resolve(
            [w for v in ws for w in v],
            warehouse=wh,
            caller=run.caller,
            teacher_key=tkey,
            render=lambda text, fields: render_messages(cfg.teacher, text, fields),
            concurrency=cfg.teacher.concurrency,
        )
        with wh.transaction() as con:
            run.record(con, hits=st.hits_ledger, masks=st.new_masks)
        wanted[name] = ws
        systems[name] = SystemResult(
            name=name,
            kind="model" if name in sy.models else "baseline",
            prompts=len(items),
            spend=st.spend,
        )
    return wanted, systems


async def judge_answers(
    cfg: Config,
    wh: Warehouse,
    run: PhaseRun,
    tkey: str,
    names: Sequence[str],
    items: Sequence[Item],
    wanted: dict[str, list[list[Wanted]]],
) -> tuple[dict[tuple[str, int], list[JudgePair | None]], Spend]:
    """The teacher judges each compressed answer against the original's, both orders."""
    judged: dict[tuple[str, int], list[JudgePair | None]] = {}
    pairs: list[JudgePair] = []
    for name in names:
        for v, ws in enumerate(wanted[name]):
            js: list[JudgePair | None] = [
                JudgePair(
                    i.prompt_id,
                    render_messages(cfg.teacher, i.text, i.fields)[-1]["content"],
                    i.reference,
                    w.answer,
                )
                if (w.answer is not None and i.reference is not None)
                else None
                for i, w in zip(items, ws, strict=True)
            ]
            judged[(name, v)] = js
            pairs += [p for p in js if p is not None]
    jst = await judge_pairs(
        pairs,
        warehouse=wh,
        caller=run.caller,
        teacher_key=tkey,
        concurrency=cfg.teacher.concurrency,
    )
    with wh.transaction() as con:
        run.record(con, hits=jst.hits)
    return judged, jst.spend


async def run_evaluation(
    cfg: Config,
    *,
    models: Sequence[str] | None = None,
    baselines: Sequence[str] | None = None,
    rate: float | None = None,
    target_token: int | None = None,
    judge: bool | None = None,
    reference: str | None = None,
    warehouse: Warehouse | None = None,
    progress: Progress | None = None,
) -> EvalReport:
    """Evaluate ``models`` (default: ``compressor.model``) and ``baselines`` (default:
    ``eval.baselines``) on ``cfg.data``'s dataset/split. Importable: benchmarks call it with
    a config whose data section points at a held-out split.

    The stages: select the systems and the prompts, compress per system, replay or pay the
    answers, judge (optional), score and store, bootstrap into the report."""
    t0 = time.perf_counter()
    wh = warehouse or Warehouse(cfg.warehouse)
    sy = select_systems(
        cfg, wh, models=models, baselines=baselines, rate=rate, target_token=target_token,
        judge=judge, reference=reference,
    )  # fmt: skip
    names = sy.names
    tkey = key_of(cfg.teacher)
    cfg, items, gold = select_prompts(cfg, wh, tkey)

    stages = len(sy.models) + len(names) + 1 + (1 if sy.judge else 0)
    done = 0

    def tick(what: str) -> None:
        nonlocal done
        if progress is not None:
            progress(what, done, stages)
        done += 1

    comps, count = compress_systems(cfg, sy, items, tick)
    n_orig = [count(i.text) for i in items]
    spec_str = cfg.train.reward.metric if cfg.train.reward.family == "taco" else "rougeL"
    spec = metric_weights(spec_str)
    judged: dict[tuple[str, int], list[JudgePair | None]] = {}
    judge_spend = Spend()
    async with phase_run(wh, cfg, "eval") as run:
        with wh.transaction() as con:
            run.begin(
                con,
                config={
                    **cfg.stored(),
                    "eval_models": sy.models,
                    "eval_baselines": sy.baselines,
                    "eval_rate": sy.rate,
                    "eval_target_token": sy.target_token,
                },
                message=", ".join(names),
            )
        wanted, systems = await answer_systems(cfg, wh, run, tkey, sy, items, comps, tick)
        if sy.judge:
            tick("judge")
            judged, judge_spend = await judge_answers(cfg, wh, run, tkey, names, items, wanted)
        if run.caller.stats.budget_stopped:
            run.stop_for_budget("budget reached: unanswered prompts are unscorable")

        # score, per variant, then average the random seeds per prompt; store the rows
        tick("score")
        eval_rows = _score_systems(
            cfg, spec, items, gold, names, wanted, systems, judged, count,
            n_orig, sy.rate, sy.target_token, run.run_id, sy.judge,
        )  # fmt: skip
        with wh.transaction() as con:
            insert_rows(con, "evaluations", eval_rows)
        run_id, status = run.run_id, run.status
        backend, model = run.teacher.backend, run.teacher.model

    report = _report(cfg, sy, items, systems, judge_spend, spec_str, run_id, (backend, model))
    report.budget_stopped = status == "budget"
    report.seconds = time.perf_counter() - t0
    if progress is not None:
        progress("done", stages, stages)
    return report


def _report(
    cfg: Config,
    sy: _Systems,
    items: Sequence[Item],
    systems: dict[str, SystemResult],
    judge_spend: Spend,
    spec_str: str,
    run_id: str,
    teacher: tuple[str, str],
) -> EvalReport:
    """The bootstrap intervals and the report (its budget stop and time set by the caller)."""
    total = Spend()
    for sr in systems.values():
        total.add(sr.spend)
    total.add(judge_spend)
    rows = _rows_for(
        list(systems.values()),
        sy.reference,
        resamples=cfg.eval.bootstrap_resamples,
        confidence=cfg.eval.confidence,
        seed=cfg.eval.bootstrap_seed,
    )
    tt = sy.target_token
    return EvalReport(
        run_id=run_id,
        dataset=cfg.data.dataset,
        split=cfg.data.split,
        prompts=len(items),
        rate=sy.rate if tt <= 0 else None,
        target_token=tt if tt > 0 else None,
        metric_spec=spec_str,
        reference=sy.reference,
        confidence=cfg.eval.confidence,
        resamples=cfg.eval.bootstrap_resamples,
        teacher_backend=teacher[0],
        teacher_model=teacher[1],
        systems=list(systems.values()),
        rows=rows,
        spend=total,
        judge=sy.judge,
        judge_spend=judge_spend,
    )


def _score_systems(
    cfg: Config,
    spec: dict[str, float],
    items: Sequence[Item],
    gold: dict[str, list[str]],
    names: Sequence[str],
    wanted: dict[str, list[list[Wanted]]],
    systems: dict[str, SystemResult],
    judged: dict[tuple[str, int], list[JudgePair | None]],
    count: Callable[[str], int],
    n_orig: Sequence[int],
    rate: float,
    tt: int,
    run_id: str,
    judge: bool,
) -> list[dict[str, Any]]:
    """Score every system's answers (filling ``SystemResult.scores``, ``token_ratio`` and
    ``unscorable``; random seeds averaged per prompt) and return the ``evaluations`` rows."""
    teacher_refs = [[i.reference] if i.reference is not None else [] for i in items]
    gold_refs = [gold.get(i.prompt_id, []) for i in items]
    has_gold = any(gold_refs)
    eval_rows: list[dict[str, Any]] = []
    for name in names:
        s = systems[name]
        per_variant: list[dict[str, np.ndarray]] = []
        ratios = []
        for v, ws in enumerate(wanted[name]):
            answers = [w.answer for w in ws]
            sc = score_answers(cfg, spec, answers, teacher_refs, "teacher")
            if has_gold:
                sc.update(score_answers(cfg, spec, answers, gold_refs, "gold"))
            if judge:
                sc["judge.win"] = np.array(
                    [p.score if p is not None else math.nan for p in judged[(name, v)]],
                    dtype=np.float64,
                )
            per_variant.append(sc)
            n_comp = [count(w.text) if w.text else 0 for w in ws]
            r = [c / n if n else math.nan for c, n in zip(n_comp, n_orig, strict=True)]
            ratios.append(r)
            variant_id = cfg.eval.random_seeds[v] if name == "random" else 0
            for k, (i, w) in enumerate(zip(items, ws, strict=True)):
                eval_rows.append(
                    {
                        "run_id": run_id,
                        "system": name,
                        "system_kind": s.kind,
                        "variant": variant_id,
                        "prompt_id": i.prompt_id,
                        "rate": rate if tt <= 0 else None,
                        "mask_hash": w.mask_hash,
                        "request_hash": w.request_hash,
                        "metrics": {
                            key: (None if math.isnan(val[k]) else float(val[k]))
                            for key, val in sc.items()
                        },
                        "n_orig_tokens": n_orig[k],
                        "n_comp_tokens": n_comp[k],
                        "ratio": r[k],
                        "cache_hit": bool(w.cache_hit),
                        "paid": bool(w.paid),
                        "unscorable": w.answer is None,
                    }
                )
        with np.errstate(all="ignore"):
            s.scores = {
                key: _nanmean_rows([pv[key] for pv in per_variant]) for key in per_variant[0]
            }
            s.token_ratio = float(np.nanmean(np.array(ratios))) if items else math.nan
        s.unscorable = sum(
            1 for k in range(len(items)) if any(ws[k].answer is None for ws in wanted[name])
        )
    return eval_rows


def _original_answers(
    cfg: Config,
    wh: Warehouse,
    tkey: str,
    items: Sequence[Item],
    comps: dict[str, list[list[Compression]]],
) -> tuple[list[list[Wanted]], SystemResult, list[tuple[str, float]]]:
    """``original`` replays the very answer every other system is scored against (the
    teacher's stored answer to the original prompt, or the imported one): never a call, so
    an evaluation never adds an own answer that would shadow an imported one in training."""
    own = [request_hash(tkey, render_messages(cfg.teacher, i.text, i.fields)) for i in items]
    imp = [import_request_hash(i.prompt_id) for i in items]
    with wh.connect() as con:
        found = Warehouse.lookup_responses(con, own + imp)
    ws, ledger = [], []
    for i, c, o, m in zip(items, comps["original"][0], own, imp, strict=True):
        rh = o if o in found else (m if cfg.teacher.use_imported and m in found else None)
        w = Wanted(i.prompt_id, c.mask_hash, c.text, i.fields, request_hash=rh)
        w.answer, w.cache_hit = i.reference, rh is not None
        if rh is not None:
            ledger.append((rh, found[rh]["cost_usd"] or 0.0))
        ws.append(w)
    res = SystemResult(
        name="original",
        kind="baseline",
        prompts=len(items),
        spend=Spend(hits=sum(w.cache_hit for w in ws), saved_usd=sum(c for _, c in ledger)),
    )
    return [ws], res, ledger


def _nanmean_rows(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Element-wise mean over variants, NaN where every variant is NaN."""
    stack = np.vstack(arrays)
    ok = np.isfinite(stack)
    total = np.where(ok, stack, 0.0).sum(axis=0)
    n = ok.sum(axis=0)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)
