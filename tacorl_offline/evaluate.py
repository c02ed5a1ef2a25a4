"""Evaluate a compressor: greedy-compress a split, ask the teacher, score against the original.

The score is the task metric of teacher(compressed) against teacher(original), the quantity
TACO-RL optimises, together with the compression actually reached. Answers come through the
same replay path as training (:mod:`tacorl_offline.replay`), so evaluating a model twice, or
evaluating masks the trainer already paid for, costs nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from tacorl_offline import metrics
from tacorl_offline.config import Config
from tacorl_offline.datasets import settle
from tacorl_offline.items import load_items
from tacorl_offline.model_ref import resolve_model_ref
from tacorl_offline.replay import Wanted, resolve
from tacorl_offline.runs import Spend, key_of, phase_run
from tacorl_offline.teachers import render_messages
from tacorl_offline.tokens import make_token_counter
from tacorl_offline.warehouse import Warehouse


@dataclass
class EvalSummary:
    run_id: str
    model: str
    prompts: int
    metric: str
    score: float  # mean metric over scorable prompts
    compression: float  # mean compressed / original tokens
    unscorable: int
    spend: Spend
    seconds: float


async def run_eval(
    cfg: Config, *, warehouse: Warehouse, model: str, rate: float | None = None
) -> EvalSummary:
    from tacorl_offline.compressor import Compressor

    t0 = time.perf_counter()
    model = resolve_model_ref(model, warehouse)
    with warehouse.connect() as con:
        cfg, _ = settle(cfg, con, where=str(warehouse.path))
        items = load_items(con, cfg, key_of(cfg.teacher))
    comp = Compressor.from_pretrained(
        model, device=cfg.compressor.device, options=cfg.compressor.options()
    )
    results = comp.compress([i.text for i in items], rate=rate or cfg.compressor.rate)
    count = make_token_counter(cfg.train.token_counter, comp.tokenizer)
    wanted = [
        Wanted(i.prompt_id, r.mask_hash, r.compressed_prompt, i.fields)
        for i, r in zip(items, results, strict=True)
    ]
    async with phase_run(warehouse, cfg, "eval") as run:
        with warehouse.transaction() as con:
            run.begin(
                con, config={**cfg.model_dump(mode="json"), "eval_model": model}, message=model
            )
        st = await resolve(
            wanted,
            warehouse=warehouse,
            caller=run.caller,
            teacher_key=run.teacher_key,
            render=lambda text, fields: render_messages(cfg.teacher, text, fields),
            concurrency=cfg.teacher.concurrency,
        )
        with warehouse.transaction() as con:
            run.record(con, hits=st.hits_ledger, masks=st.new_masks)
    spec = cfg.train.reward.metric if cfg.train.reward.family == "taco" else "rougeL"
    pairs = [
        (w.answer, i.reference)
        for w, i in zip(wanted, items, strict=True)
        if w.answer and i.reference
    ]
    scored = metrics.score_pairs(
        spec,
        [p for p, _ in pairs],
        [r for _, r in pairs],
        bertscore_model=cfg.train.reward.bertscore_model,
        bertscore_layers=cfg.train.reward.bertscore_layers,
    )
    values = [row["metric"] for row in scored]
    ratios = [
        count(r.compressed_prompt) / n
        for r, i in zip(results, items, strict=True)
        if (n := count(i.text)) > 0
    ]
    return EvalSummary(
        run_id=run.run_id,
        model=model,
        prompts=len(items),
        metric=spec,
        score=sum(values) / len(values) if values else math.nan,
        compression=sum(ratios) / len(ratios) if ratios else math.nan,
        unscorable=len(items) - len(values),
        spend=st.spend,
        seconds=time.perf_counter() - t0,
    )
