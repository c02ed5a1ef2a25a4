"""SFT against a bare forward+backward of the same real tokens, and today's path against the
one before issue 19, side by side in one run.

Design decisions:

- **The QA recipe's SFT** (``configs/qa.yaml``: the question-aware MiniLM, ``sft.batch_size``
  16, ``freeze_layers`` 2, labels from the teacher's answer to the original) on the first
  ``--prompts`` SQuAD paragraphs of ``data/squad/train.jsonl``. The teacher's answers are the
  recipe's extractive stand-in (:meth:`ExtractiveTeacher.extract`, what ``teacher-fill`` stores
  for it), so no warehouse is needed.
- **Three paths, one epoch each, interleaved for ``--rounds`` rounds** (median printed), each
  on its own copy of the model:

  - ``old``: the SFT loop as it was before issue 19 (commit cabd1bb), kept here verbatim:
    random batches each padded to its longest row, the model's own dropout (attention dropout
    on), ``Compressor.token_probs`` per batch (tokenizing every batch again), a per-example
    loss, the default (single-tensor) AdamW, torch's default intra-op threads;
  - ``new``: :func:`tacorl_offline.sft.train_sft` as ``sft`` runs it (``sft.dropout``
    ``hidden``, length-bucketed batches, rows tokenized once, fused AdamW, the free cores);
  - ``bare``: the model alone on the same real tokens: rows sorted by length, 16 a batch, each
    padded to its longest, ``logits.sum().backward()``, no optimizer, the new path's dropout
    and threads.

  ``sft: X x bare`` is bare's time over the new path's for the same real tokens (1.0: SFT
  costs nothing beyond the model).
- **Which SDPA kernel runs** is read from a torch profiler trace of one training forward and
  backward per dropout setting.
- **Padding** is the share of padded positions in the new path's batches; the full train
  split's bucketed share against random batches is printed too.

Run from the repository root::

    python bench/sft_speed.py                       # 64 prompts, 3 rounds
    python bench/sft_speed.py --prompts 128 --rounds 5
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tacorl_offline.compressor import Compressor  # noqa: E402
from tacorl_offline.compressor.dropout import set_dropout  # noqa: E402
from tacorl_offline.compressor.options import CompressOptions  # noqa: E402
from tacorl_offline.config import Config, resolve  # noqa: E402
from tacorl_offline.ingest import read_records  # noqa: E402
from tacorl_offline.sft import (  # noqa: E402
    SftExample,
    bucketed_batches,
    build_examples,
    class_weights,
    example_rows,
    freeze_lower_layers,
    padding_share,
    train_sft,
)
from tacorl_offline.teachers.extractive import ExtractiveTeacher  # noqa: E402
from tacorl_offline.threads import free_cores, intra_op_threads  # noqa: E402


@dataclass
class Item:
    prompt_id: str
    text: str
    fields: dict[str, Any]
    reference: str | None


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def qa_config() -> Config:
    return resolve(ROOT / "configs" / "qa.yaml", environ={})


def qa_items(cfg: Config, n: int | None) -> list[Item]:
    records, errors = read_records(ROOT / str(cfg.data.path), cfg.data)
    assert records and not errors, errors
    teacher = ExtractiveTeacher(cfg.teacher)
    return [
        Item(r.prompt_id, r.text, dict(r.fields), teacher.extract(r.text, r.fields) or None)
        for r in records[:n]
    ]


def fresh_compressor(cfg: Config) -> Compressor:
    torch.manual_seed(cfg.sft.seed)
    comp = Compressor.from_pretrained(
        cfg.compressor.model,
        device=cfg.compressor.device,
        options=CompressOptions.from_config(cfg.compressor),
        condition_on=cfg.compressor.condition_on,
    )
    freeze_lower_layers(comp.model, cfg.sft.freeze_layers)
    return comp


# ----------------------------------------------------------------------------- the old path


def old_train_sft(
    comp: Any,
    train: Sequence[SftExample],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    grad_clip: float | None = 1.0,
) -> None:
    """The SFT loop before issue 19 (sft.py at cabd1bb, evaluation left out)."""
    layouts = {ex.prompt_id: comp.layouts([ex.text], comp.options)[0] for ex in train}
    w0, w1 = class_weights(train, lambda ex: layouts[ex.prompt_id].weights)
    model = comp.model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    total = epochs * math.ceil(len(train) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda u: (
            max(0.0, 1.0 - u / max(1, total))
            if u >= total * 0.06
            else (u + 1) / max(1, total * 0.06)
        ),
    )
    rng = random.Random(seed)
    for _ in range(1, epochs + 1):
        order = list(range(len(train)))
        rng.shuffle(order)
        model.train()
        for k in range(0, len(order), batch_size):
            batch = [train[i] for i in order[k : k + batch_size]]
            lays, tps = comp.token_probs(
                [ex.text for ex in batch], fields=[ex.fields for ex in batch]
            )
            parts = []
            for ex, lay, tp in zip(batch, lays, tps, strict=True):
                wot = torch.as_tensor(lay.word_of_token[: tp.shape[0]])
                ok = wot >= 0
                if ok.any():
                    deciding = ~torch.as_tensor(lay.forced)[wot[ok]]
                    y = torch.as_tensor(ex.labels)[wot[ok]][deciding].to(tp.dtype)
                    p = tp[ok][deciding].clamp(1e-6, 1 - 1e-6)
                    parts.append(-(w1 * y * p.log() + w0 * (1 - y) * (1 - p).log()))
            if not parts:
                continue
            loss = torch.cat(parts).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            sched.step()
    model.eval()


def old_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    """The old path's first epoch of batches (random.Random(seed).shuffle)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[k : k + batch_size] for k in range(0, n, batch_size)]


# ----------------------------------------------------------------------------- bare model


def bare_epoch(comp: Compressor, row_ids: list[np.ndarray], batch_size: int) -> None:
    """Forward and backward of the model alone over the rows, sorted by length, each batch
    padded to its longest (the real tokens, next to no padding)."""
    from tacorl_offline.compressor.rows import mask_arg, pad_id

    model = comp.model
    model.train()
    pad = pad_id(comp.tokenizer)
    order = sorted(range(len(row_ids)), key=lambda i: -len(row_ids[i]))
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        width = len(row_ids[idx[0]])
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for j, i in enumerate(idx):
            ids[j, : len(row_ids[i])] = torch.from_numpy(row_ids[i])
            mask[j, : len(row_ids[i])] = 1
        kw: dict[str, Any] = {"input_ids": ids}
        if not bool(mask.all()):
            kw["attention_mask"] = mask_arg(model, mask)
        model(**kw).logits.float().sum().backward()
        model.zero_grad(set_to_none=True)


def sdpa_kernels(comp: Compressor, row_ids: list[np.ndarray]) -> list[str]:
    """The scaled-dot-product-attention ops one training forward+backward runs."""
    from torch.profiler import ProfilerActivity, profile

    model = comp.model
    model.train()
    rows = sorted(row_ids, key=len)[-8:]
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, : len(r)] = torch.from_numpy(r)
        mask[j, : len(r)] = 1
    from tacorl_offline.compressor.rows import mask_arg

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(input_ids=ids, attention_mask=mask_arg(model, mask)).logits.sum().backward()
    model.zero_grad(set_to_none=True)
    names = {
        e.key
        for e in prof.key_averages()
        if "scaled_dot_product" in e.key and e.key != "aten::scaled_dot_product_attention"
    }
    return sorted(names)


# ----------------------------------------------------------------------------- main


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=64, help="SQuAD train paragraphs used")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-old", action="store_true", help="skip the pre-issue-19 path")
    args = ap.parse_args(argv)
    print(f"load average before: {load_avg()}", flush=True)
    cfg = qa_config()
    sc = cfg.sft
    default_threads = torch.get_num_threads()
    threads = free_cores() if sc.threads is None else sc.threads

    comps = {"new": fresh_compressor(cfg), "bare": fresh_compressor(cfg)}
    if not args.no_old:
        comps["old"] = fresh_compressor(cfg)
    items = qa_items(cfg, args.prompts)
    train = build_examples(comps["new"], items, "teacher", cfg.compressor.rate, None)
    rows = example_rows(comps["new"], train)
    row_ids = [r for ex in rows for r in ex.ids]
    real_tokens = sum(len(r) for r in row_ids)
    lengths = [max(ex.lengths) for ex in rows]
    row_lengths = [ex.lengths for ex in rows]
    pad_new = padding_share(row_lengths, bucketed_batches(lengths, sc.batch_size, sc.seed, 1))
    pad_old = padding_share(row_lengths, old_batches(len(train), sc.batch_size, sc.seed))

    # The fused kernel: which SDPA op a training forward+backward takes, per dropout setting.
    kernels = {}
    for mode in ("all", "hidden"):
        probe = fresh_compressor(cfg)
        set_dropout(probe.model, mode)  # type: ignore[arg-type]
        with intra_op_threads(threads):
            kernels[mode] = sdpa_kernels(probe, row_ids)
        del probe
    for mode, names in kernels.items():
        print(f"SDPA ops with dropout '{mode}': {', '.join(names) or '(none)'}", flush=True)

    set_dropout(comps["new"].model, sc.dropout)
    set_dropout(comps["bare"].model, sc.dropout)

    def run_new() -> None:
        with intra_op_threads(threads):
            train_sft(
                comps["new"],
                train,
                [],
                epochs=1,
                lr=sc.lr,
                batch_size=sc.batch_size,
                seed=sc.seed,
            )

    def run_bare() -> None:
        with intra_op_threads(threads):
            bare_epoch(comps["bare"], row_ids, sc.batch_size)

    def run_old() -> None:
        with intra_op_threads(default_threads):
            old_train_sft(
                comps["old"], train, epochs=1, lr=sc.lr, batch_size=sc.batch_size, seed=sc.seed
            )

    paths: dict[str, Callable[[], None]] = {"bare": run_bare, "new": run_new}
    if not args.no_old:
        paths["old"] = run_old
    run_bare()  # warm-up (one-time allocations, lazy imports); the old path is the slow one
    run_new()
    times: dict[str, list[float]] = {k: [] for k in paths}
    for r in range(args.rounds):
        for name, fn in paths.items():
            times[name].append(timed(fn))
        line = ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items())
        print(f"round {r + 1}: {line} (load {load_avg()})", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    la = load_avg()

    # Padding across the whole train split (the recipe's epoch), bucketed vs random batches.
    all_items = qa_items(cfg, None)
    all_train = build_examples(comps["new"], all_items, "teacher", cfg.compressor.rate, None)
    all_rows = [ex.lengths for ex in example_rows(comps["new"], all_train)]
    all_len = [max(x) for x in all_rows]
    full_new = padding_share(all_rows, bucketed_batches(all_len, sc.batch_size, sc.seed, 1))
    full_old = padding_share(all_rows, old_batches(len(all_train), sc.batch_size, sc.seed))

    print(
        f"\n{len(train)} prompts, {real_tokens:,} real tokens an epoch; median of {args.rounds}"
        f" interleaved rounds; intra-op threads: new and bare {threads}, old {default_threads};"
        f" load average after: {la}\n"
    )
    print("| path | s / epoch | real tokens/s | vs bare | vs old | padding |")
    print("|---|---|---|---|---|---|")
    pads = {"old": pad_old, "new": pad_new, "bare": None}
    for name in ("old", "new", "bare"):
        if name not in med:
            continue
        vs_old = f"{med['old'] / med[name]:.2f}x" if "old" in med else "-"
        pad = f"{100 * pads[name]:.1f}%" if pads[name] is not None else "sorted"
        print(
            f"| {name} | {med[name]:.1f} | {real_tokens / med[name]:.0f}"
            f" | {med['bare'] / med[name]:.2f}x | {vs_old} | {pad} |"
        )
    print(
        f"\nwhole train split ({len(all_train)} prompts): padding {100 * full_new:.1f}% bucketed,"
        f" {100 * full_old:.1f}% in random batches"
    )
    if "old" in med:
        print(f"new vs old: {med['old'] / med['new']:.2f}x faster")
    print(f"sft: {med['bare'] / med['new']:.2f} x bare, padding {100 * pad_new:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
