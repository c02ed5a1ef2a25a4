"""Greedy compression (the fast path of :meth:`.model.Compressor.compress`).

One batched forward over the same rows as sampling (:func:`token_probs_np`), word
probabilities, one keep budget per prompt over its kept contexts, and the text rebuilt
(:func:`compress_normal`, :func:`assemble`). See :mod:`.model` for what makes it fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tacorl_offline.tokens import THREAD_SAFE, ModelTokenCounter, TokenCounter

from . import selection
from .layout import Layout
from .options import CompressOptions
from .result import CompressResult
from .rows import build_rows, mask_arg, pad_id
from .text import rebuild

if TYPE_CHECKING:
    from .model import Compressor


def token_probs_np(
    comp: Compressor,
    layouts: Sequence[Layout],
    model: torch.nn.Module,
    batch_size: int,
    max_seq_len: int,
    prefixes: Sequence[Sequence[int]] | None = None,
) -> list[np.ndarray]:
    """Greedy forward over the same rows as sampling (:func:`.rows.build_rows`), built in
    numpy. With ``comp.length_bucketing`` (default) rows are sorted by length (longest
    first) and each batch is padded to its longest row; without it, rows go in input order
    padded to ``max_seq_len`` as llmlingua does. The attention mask makes both equal up to
    float noise (kept words identical in the tests and the benchmark).
    Returns float32 keep-probabilities per layout token."""
    rows = build_rows(layouts, comp.tokenizer, prefixes, comp._two_types)
    out = [np.zeros(len(lay.ids), dtype=np.float32) for lay in layouts]
    lens = [len(r) for r in rows.ids]
    if comp.length_bucketing:
        order = sorted(range(len(lens)), key=lambda i: -lens[i])
    else:
        order = list(range(len(lens)))
    pid = pad_id(comp.tokenizer)
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        width = max(lens[i] for i in idx)
        if not comp.length_bucketing:
            width = max(width, max_seq_len)
        ids = np.full((len(idx), width), pid, dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        tts = np.zeros((len(idx), width), dtype=np.int64) if rows.types else None
        for r, i in enumerate(idx):
            ids[r, : lens[i]] = rows.ids[i]
            mask[r, : lens[i]] = 1
            if tts is not None and rows.types is not None:
                tts[r, : lens[i]] = rows.types[i]
        extra = {"token_type_ids": torch.from_numpy(tts).to(comp.device)} if tts is not None else {}
        logits = model(
            input_ids=torch.from_numpy(ids).to(comp.device),
            attention_mask=mask_arg(model, torch.from_numpy(mask).to(comp.device)),
            **extra,
        ).logits
        probs = torch.softmax(logits.float(), dim=-1)[..., 1].cpu().numpy()
        for r, i in enumerate(idx):
            li, a, b = rows.where[i]
            lead = rows.leads[i]
            out[li][a:b] = probs[r, lead : lead + b - a]
    return out


def compress_normal(
    comp: Compressor,
    prompts: list[list[str]],
    opts: CompressOptions,
    counter: TokenCounter,
    model: torch.nn.Module,
    prefixes: Sequence[Sequence[int]] | None = None,
) -> list[CompressResult]:
    flat = [c for p in prompts for c in p]
    flat_pre = (
        [pre for p, pre in zip(prompts, prefixes, strict=True) for _ in p] if prefixes else None
    )
    own = isinstance(counter, ModelTokenCounter) and counter.backend is comp.backend
    pending = None
    if not own and isinstance(counter, THREAD_SAFE) and len(flat) > 1:
        # count the originals (Rust, GIL released) while the model runs
        pool = ThreadPoolExecutor(max_workers=1)
        pending = pool.submit(lambda: [counter(c) for c in flat])
        pool.shutdown(wait=False)
    lays = comp.layouts(flat, opts)
    tps = token_probs_np(comp, lays, model, opts.batch_size, opts.max_seq_len, flat_pre)
    if own:  # the model tokenizer counts: reuse the ids we have (exact for plain layouts)
        counts = [len(lay.ids) if lay.plain else counter(lay.text) for lay in lays]
    elif pending is not None:
        counts = pending.result()
    else:
        counts = [counter(c) for c in flat]
    results = []
    k = 0
    for ctxs in prompts:
        ls, ts = lays[k : k + len(ctxs)], tps[k : k + len(ctxs)]
        c_counts = counts[k : k + len(ctxs)]
        k += len(ctxs)
        origin = sum(c_counts)
        probs = []
        for lay, tp in zip(ls, ts, strict=True):
            tpn = tp.astype(np.float64)
            if opts.token_to_word == "first":
                wp = selection.segment_first(tpn, lay.word_of_token, lay.n_words)
            else:
                wp = selection.segment_mean(tpn, lay.word_of_token, lay.n_words)
            probs.append(np.where(lay.forced, 1.0, wp))
        ctx_keep = np.ones(len(ctxs), dtype=bool)
        rate = opts.rate
        if opts.use_context_level_filter and len(ctxs) > 1:
            c_rate = opts.context_level_rate
            if c_rate >= 1.0 and opts.target_token < 0 and rate < 1.0:
                c_rate = (rate + 1.0) / 2
            if opts.target_token > 0 and c_rate >= 1.0:
                c_rate = min(2 * opts.target_token / max(origin, 1), 1.0)
            scores = [float(np.mean(p)) if len(p) else 0.0 for p in probs]
            ctx_keep = selection.llmlingua_context_keep(scores, c_rate)
        if opts.target_token > 0:
            kept_origin = sum(n for n, k_ in zip(c_counts, ctx_keep, strict=True) if k_)
            rate = min(opts.target_token / max(kept_origin, 1), 1.0)
        keep_all = keep_per_context(ls, probs, ctx_keep, rate, opts)
        results.append(assemble(ctxs, ls, probs, ctx_keep, keep_all, opts, origin))
    outs = [r.compressed_prompt for r in results]
    n_out = counter.many(outs) if own else [counter(t) if t else 0 for t in outs]
    for r, n in zip(results, n_out, strict=True):
        r.compressed_tokens = n if r.compressed_prompt else 0
    return results


def assemble(ctxs, ls, probs, ctx_keep, keep_all, opts, origin) -> CompressResult:
    """One prompt's result; ``compressed_tokens`` is filled in by the caller."""
    words: list[str] = []
    keep: list[bool] = []
    spans: list[tuple[int, int]] = []
    wps: list[float] = []
    texts = []
    off, j = 0, 0
    for c, lay, p, ck in zip(ctxs, ls, probs, ctx_keep, strict=True):
        if ck:
            kk = keep_all[j : j + lay.n_words]
            j += lay.n_words
            if opts.drop_consecutive:
                kk = selection.drop_consecutive(kk, lay.words, lay.is_force)
            texts.append(rebuild(c, lay.spans, kk))
        else:
            kk = np.zeros(lay.n_words, dtype=bool)
        words.extend(lay.words)
        keep.extend(np.asarray(kk, dtype=bool).tolist())
        if off:
            sp = np.asarray(lay.spans, dtype=np.int64).reshape(-1, 2) + off
            spans.extend(zip(sp[:, 0].tolist(), sp[:, 1].tolist(), strict=True))
        else:
            spans.extend(lay.spans)
        wps.extend(np.asarray(p, dtype=np.float64).tolist())
        off += len(c) + 2
    return CompressResult(
        compressed_prompt="\n\n".join(texts),
        compressed_prompt_list=texts,
        origin_tokens=origin,
        compressed_tokens=0,
        words=words,
        keep=keep,
        word_spans=spans,
        word_probs=wps,
        original_text="\n\n".join(ctxs),
    )


def keep_per_context(
    ls: Sequence[Any], probs: Sequence[np.ndarray], ctx_keep: np.ndarray, rate: float, opts: Any
) -> np.ndarray:
    """The kept contexts' keep decisions, concatenated. Each kept context keeps its own share
    of the budget, as llmlingua's per-chunk threshold does: a context of low-probability words
    is shortened, never emptied (a budget under one word keeps its most probable word)."""
    parts = []
    for lay, p, kept in zip(ls, probs, ctx_keep, strict=True):
        if not kept:
            continue
        if opts.threshold is not None:
            parts.append(selection.keep_by_threshold(p, opts.threshold, lay.forced))
            continue
        kk = selection.keep_by_rate(p, lay.weights, rate, lay.forced)
        if len(kk) and not kk.any():
            kk[int(np.argmax(p))] = True
        parts.append(kk)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)
