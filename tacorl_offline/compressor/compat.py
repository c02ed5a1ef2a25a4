"""llmlingua 0.2.2 compatibility: its word rules, chunking and per-chunk thresholds, exactly.

What upstream really does (and we reproduce, bugs included, so kept words match):

- multi-piece force tokens (e.g. "\\n") are replaced in the text by added special tokens
  ``[NEWi]`` (``i`` = the force token's index); the model gets 100 such tokens with embeddings
  from ``resize_token_embeddings`` right after ``seed_everything(42)`` (see
  :meth:`.Compressor.compat_twin`);
- the text is tokenized, cut into chunks (:func:`.chunking.llmlingua_chunks`), each chunk is
  decoded to a string and tokenized *again*, wrapped in the literal strings ``[CLS]``/``[SEP]``
  (``<unk>`` for XLM-R, issue #181), truncated/padded to 512 with ``[PAD]``;
- tokens in the special-token set are skipped; word boundaries follow the magic name's rule
  (WordPiece ``##``; SentencePiece ``▁`` or any substring of ``string.punctuation``); force
  tokens always start a word and get probability 1; with ``force_reserve_digit`` each *token*
  holding a digit gets probability 1 before the word mean;
- the context-level score of a word uses its first token's raw probability (upstream reuses a
  stale variable).

Character spans of the original text are tracked through replacement and re-tokenization
(:func:`align`), so our compressed text is still rebuilt from the original.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tacorl_offline.errors import UserError
from tacorl_offline.tokens import CachedCounter, TokenCounter

from . import selection
from .chunking import llmlingua_chunks
from .options import CompressOptions
from .result import CompressResult
from .rows import forward_rows
from .text import ReplaceMap, rebuild
from .words import LLMLINGUA_MAGIC, Scheme

if TYPE_CHECKING:
    from .model import Compressor

_DIGIT = re.compile(r"\d")
_LL_WORD = re.compile(r'\b\w+\b|[<>=/!@#$%^&*()?":{}|\\`~;_+-]')


def ll_pure(token: str, scheme: Scheme) -> str:
    return token.lstrip("#") if scheme == "wordpiece" else token.lstrip("▁")


def ll_begins(token: str, scheme: Scheme, force: set[str], mapped: set[str]) -> bool:
    if scheme == "wordpiece":
        if token.lstrip("#") in force or token.lstrip("#") in mapped:
            return True
        return not token.startswith("##")
    if token in string.punctuation or token in force or token in mapped:
        return True
    return token.startswith("▁")


@dataclass
class CompatChunk:
    """One model input row and its words, before probabilities are known."""

    ids: list[int]  # [CLS] + tokens (+ [SEP]) as llmlingua builds them, unpadded
    attn: list[int]
    words: list[str] = field(default_factory=list)  # llmlingua's word strings (before lstrip)
    starts: list[int] = field(default_factory=list)  # first active position of each word
    lengths: list[int] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)
    forced_pos: list[int] = field(default_factory=list)  # active positions forced to prob 1
    text: str = ""  # the chunk string (with [NEWi])


def align(
    slice_tokens: list[str],
    slice_spans: list[tuple[int, int]],
    re_tokens: list[str],
    scheme: Scheme,
) -> list[tuple[int, int] | None]:
    """Spans for re-tokenized tokens: 1:1 when equal, else by matching their pure characters."""
    if re_tokens == slice_tokens:
        return list(slice_spans)
    owner: list[int] = []
    chars: list[str] = []
    for j, t in enumerate(slice_tokens):
        p = ll_pure(t, scheme)
        chars.extend(p)
        owner.extend([j] * len(p))
    out: list[tuple[int, int] | None] = []
    ptr = 0
    for t in re_tokens:
        touched: list[int] = []
        for c in ll_pure(t, scheme):
            if ptr < len(chars) and chars[ptr] == c:
                touched.append(owner[ptr])
                ptr += 1
        if touched:
            out.append(
                (min(slice_spans[j][0] for j in touched), max(slice_spans[j][1] for j in touched))
            )
        else:
            out.append(None)
    return out


@dataclass(frozen=True)
class WordRules:
    """llmlingua's rules for reading words back from a chunk's tokens."""

    scheme: Scheme
    force: set[str]
    mapped: set[str]  # the [NEWi] tokens standing for multi-piece force tokens
    special: set[str]  # token strings skipped
    token_map: dict[str, str]
    force_reserve_digit: bool

    def read(
        self, ch: CompatChunk, raw: list[str], tok_spans: list[tuple[int, int] | None]
    ) -> list[tuple[int, int]]:
        """Fill ``ch``'s words, starts, lengths and forced positions from its raw tokens;
        returns each word's character span in the context ((-1, -1): none seen)."""
        scheme = self.scheme
        # active tokens: where the attention mask is 1 (upstream masks by the "[PAD]" string)
        pos = 0
        cur_spans: list[tuple[int, int]] = []
        for k, tok in enumerate(raw):
            if not ch.attn[k]:
                continue
            a_pos = pos
            pos += 1
            if tok in self.special:
                continue
            if not ch.words or ll_begins(tok, scheme, self.force, self.mapped):
                # upstream crashes (IndexError) on a continuation with no word before it;
                # we open a word instead
                word = tok
                for old, new in self.token_map.items():
                    word = word.replace(new, old)
                ch.words.append(word)
                ch.starts.append(a_pos)
                ch.lengths.append(1)
                cur_spans.append((-1, -1))
                if (
                    ll_pure(tok, scheme) in self.force
                    or ll_pure(tok, scheme) in self.mapped
                    or (self.force_reserve_digit and _DIGIT.search(word))
                ):
                    ch.forced_pos.append(a_pos)
            else:
                ch.words[-1] += ll_pure(tok, scheme)
                ch.lengths[-1] += 1
                if self.force_reserve_digit and _DIGIT.search(tok):
                    ch.forced_pos.append(a_pos)
            sp = tok_spans[k]
            if sp is not None and sp[1] > sp[0]:
                s0, e0 = cur_spans[-1]
                cur_spans[-1] = (sp[0] if s0 < 0 else min(s0, sp[0]), max(e0, sp[1]))
        return cur_spans


def _trimmed(ctx: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Word spans without surrounding whitespace; (0, 0) for a word with no characters."""
    out = []
    for s, e in spans:
        while 0 <= s < e and ctx[s].isspace():
            s += 1
        while e > s >= 0 and ctx[e - 1].isspace():
            e -= 1
        out.append((s, e) if 0 <= s < e else (0, 0))
    return out


def _chunk_slices(
    tokenizer: Any,
    contexts: Sequence[str],
    token_map: dict[str, str],
    ends: set[str],
    max_len: int,
) -> tuple[list[tuple[int, list[str], list[tuple[int, int]]]], list[str]]:
    """Every context's chunks as llmlingua cuts them: (context index, tokens, their spans in
    the original context) and the decoded chunk strings."""
    maps = [ReplaceMap(c, list(token_map.items())) for c in contexts]
    encs = tokenizer(
        [m.text for m in maps],
        add_special_tokens=False,
        return_offsets_mapping=True,
        verbose=False,
    ).encodings
    pending: list[tuple[int, list[str], list[tuple[int, int]]]] = []
    chunk_texts: list[str] = []
    for ci, (m, enc) in enumerate(zip(maps, encs, strict=False)):
        toks = enc.tokens
        offsets = enc.offsets  # a property that rebuilds the whole list: read it once
        is_end = np.fromiter((t in ends for t in toks), dtype=bool, count=len(toks))
        for a, b in llmlingua_chunks(is_end, max_len):
            sl = toks[a:b]
            chunk_texts.append(tokenizer.convert_tokens_to_string(sl))
            pending.append((ci, sl, [m.span(*offsets[k]) for k in range(a, b)]))
    return pending, chunk_texts


class CompatPlan:
    """Tokenizer-side plan of llmlingua's pipeline for one call (a list of contexts)."""

    def __init__(
        self,
        tokenizer,
        scheme: Scheme,
        contexts: Sequence[str],
        force_tokens: Sequence[str],
        token_map: dict[str, str],
        chunk_end_tokens: Sequence[str],
        special: set[str],
        force_reserve_digit: bool,
        max_seq_len: int = 512,
    ) -> None:
        self.scheme = scheme
        self.contexts = list(contexts)
        self.token_map = token_map
        rules = WordRules(
            scheme,
            set(force_tokens),
            set(token_map.values()),
            special,
            token_map,
            force_reserve_digit,
        )
        ends = set(chunk_end_tokens) | {token_map[c] for c in chunk_end_tokens if c in token_map}
        cls_id = tokenizer.convert_tokens_to_ids("[CLS]")
        sep_id = tokenizer.convert_tokens_to_ids("[SEP]")
        cls_rt, sep_rt = tokenizer.convert_ids_to_tokens([cls_id, sep_id])
        pending, chunk_texts = _chunk_slices(
            tokenizer, self.contexts, token_map, ends, max_seq_len - 2
        )
        re_encs = (
            tokenizer(chunk_texts, add_special_tokens=False, verbose=False).encodings
            if chunk_texts
            else []
        )
        self.chunks: list[list[CompatChunk]] = [[] for _ in self.contexts]
        for (ci, sl, sl_spans), ctext, renc in zip(pending, chunk_texts, re_encs, strict=False):
            rtoks = list(renc.tokens)
            spans = align(sl, sl_spans, rtoks, scheme)
            literal = ["[CLS]", *rtoks, "[SEP]"][:max_seq_len]
            raw = [cls_rt, *rtoks, sep_rt][:max_seq_len]
            ids = [cls_id, *renc.ids, sep_id][:max_seq_len]
            tok_spans: list[tuple[int, int] | None] = [None, *spans, None][:max_seq_len]
            attn = [0 if t == "[PAD]" else 1 for t in literal]
            ch = CompatChunk(ids=ids, attn=attn, text=ctext)
            ch.spans = _trimmed(self.contexts[ci], rules.read(ch, raw, tok_spans))
            self.chunks[ci].append(ch)

    def regex_words(self, ci: int) -> tuple[list[str], list[tuple[int, int]]]:
        """llmlingua's words when it skips the model (rate >= 1), located in the original."""
        ctx = self.contexts[ci]
        words: list[str] = []
        spans: list[tuple[int, int]] = []
        cur = 0
        for ch in self.chunks[ci]:
            t = ch.text
            for old, new in self.token_map.items():
                t = t.replace(new, old)
            for w in _LL_WORD.findall(t):
                k = ctx.find(w, cur)
                if k < 0:
                    spans.append((cur, cur))
                else:
                    spans.append((k, k + len(w)))
                    cur = k + len(w)
                words.append(w)
        return words, spans


def py_float_words(ch: CompatChunk, mode: str) -> np.ndarray:
    """Words whose upstream probability is a Python float: all tokens forced ("first": the first)."""
    starts = np.asarray(ch.starts, dtype=np.int64)
    lengths = np.asarray(ch.lengths, dtype=np.int64)
    forced = np.zeros(int(starts[-1] + lengths[-1]) if len(starts) else 0, dtype=bool)
    if ch.forced_pos:
        forced[np.asarray(ch.forced_pos)] = True
    if mode == "first":
        return forced[starts] if len(starts) else np.zeros(0, dtype=bool)
    cum = np.concatenate([[0], np.cumsum(forced)])
    return (cum[starts + lengths] - cum[starts]) == lengths


def chunk_word_probs(
    ch: CompatChunk, active_probs: np.ndarray, mode: str, *, no_force: bool = False
) -> np.ndarray:
    """llmlingua's float32 word probabilities for one chunk (active_probs: float32 per active token)."""
    from .selection import seq_mean_f32

    p = np.asarray(active_probs, dtype=np.float32).copy()
    starts = np.asarray(ch.starts, dtype=np.int64)
    lengths = np.asarray(ch.lengths, dtype=np.int64)
    if no_force:  # upstream's "no force" list repeats the first token's probability
        rep = np.repeat(p[starts], lengths)
        idx = (
            np.repeat(starts, lengths) + np.concatenate([np.arange(n) for n in lengths])
            if len(lengths)
            else starts
        )
        p = p.copy()
        p[idx] = rep
    elif ch.forced_pos:
        p[np.asarray(ch.forced_pos)] = np.float32(1.0)
    if mode == "first":
        return p[starts]
    return seq_mean_f32(p, starts, lengths)


# ---------------------------------------------------------------------------- the compat path


def compat_special(tokenizer: Any, model: torch.nn.Module) -> set[str]:
    """The token strings llmlingua skips when it reads probabilities back."""
    stm = tokenizer.special_tokens_map
    special = {
        v
        for k, v in stm.items()
        if k not in ("additional_special_tokens", "pad_token") and isinstance(v, str)
    }
    cfg_pad = getattr(model.config, "pad_token_id", None)
    pad = tokenizer.convert_ids_to_tokens(cfg_pad) if cfg_pad else tokenizer.eos_token
    if pad:
        special.add(pad)
    return special


def compress_compat(
    comp: Compressor,
    prompts: list[list[str]],
    opts: CompressOptions,
    counter: TokenCounter,
    model: torch.nn.Module,
) -> list[CompressResult]:
    """llmlingua 0.2.2's compression of each prompt, kept words exactly (``compat=True``)."""
    if comp.scheme not in LLMLINGUA_MAGIC:
        raise UserError(
            f"compat mode needs a WordPiece or SentencePiece tokenizer; this one is {comp.scheme}"
        )
    token_map = {
        t: f"[NEW{i}]"
        for i, t in enumerate(opts.force_tokens)
        if len(comp.tokenizer.tokenize(t)) != 1
    }
    tok, mdl = comp.compat_twin() if token_map else (comp.tokenizer, model)
    special = compat_special(comp.tokenizer, comp.model)
    plans = [
        CompatPlan(
            tok,
            comp.scheme,
            ctxs,
            opts.force_tokens,
            token_map,
            opts.chunk_end_tokens,
            special,
            opts.force_reserve_digit,
            opts.max_seq_len,
        )
        for ctxs in prompts
    ]
    wcount = CachedCounter(counter)
    # one forward over every chunk, in order, padded to max_seq_len like upstream
    chunks = [ch for pl in plans for cl in pl.chunks for ch in cl]
    probs = (
        forward_rows(
            mdl,
            [c.ids for c in chunks],
            device=comp.device,
            pad=tok.convert_tokens_to_ids("[PAD]"),
            sort=False,
            pad_to=opts.max_seq_len,
            attn=[c.attn for c in chunks],
            batch_size=opts.batch_size,
        )
        if chunks
        else []
    )
    active = {
        id(c): p[torch.as_tensor(c.attn, dtype=torch.bool, device=p.device)].cpu().numpy()
        for c, p in zip(chunks, probs, strict=False)
    }
    return [_compat_one(comp.scheme, pl, opts, wcount, counter, active) for pl in plans]


def _context_filter(
    pl: CompatPlan,
    opts: CompressOptions,
    counter: TokenCounter,
    active: dict[int, np.ndarray],
    n_orig: int,
) -> tuple[np.ndarray, float]:
    """Which contexts llmlingua keeps, and the word-level rate that follows."""
    rate = opts.rate
    ctx_keep = np.ones(len(pl.contexts), dtype=bool)
    if opts.use_context_level_filter and len(pl.contexts) > 1:
        c_rate, c_tt = opts.context_level_rate, -1
        if c_rate >= 1.0:
            if opts.target_token < 0 and rate < 1.0:
                c_rate = (rate + 1.0) / 2
            if opts.target_token >= 0:
                c_tt = opts.target_token * 2
        if c_tt >= 0:
            c_rate = min(c_tt / n_orig, 1.0)
        scores = []
        for cl in pl.chunks:
            ps: list[np.ndarray] = [
                chunk_word_probs(ch, active[id(ch)], opts.token_to_word, no_force=True) for ch in cl
            ]
            allp = [x for p in ps for x in p]
            acc = 0
            for x in allp:
                acc = acc + x
            scores.append(acc / len(allp))
        ctx_keep = selection.llmlingua_context_keep(scores, c_rate)
        n_res = sum(
            counter(ch.text) for cl, k in zip(pl.chunks, ctx_keep, strict=False) if k for ch in cl
        )
        if opts.target_token >= 0:
            rate = min(opts.target_token / n_res, 1.0)
    elif opts.target_token > 0:
        rate = min(opts.target_token / n_orig, 1.0)
    return ctx_keep, rate


def _chunk_words(
    scheme: Scheme,
    cl: list[CompatChunk],
    kept: bool,
    reduce_rate: float,
    opts: CompressOptions,
    wcount: CachedCounter,
    active: dict[int, np.ndarray],
) -> tuple[list[str], list[tuple[int, int]], list[bool], list[float]]:
    """(words, spans, keep, probabilities) of one context's chunks; a context the filter
    dropped keeps no word."""
    ws, ss, kk, pp = [], [], [], []
    for ch in cl:
        p = chunk_word_probs(ch, active[id(ch)], opts.token_to_word)
        if kept:
            n_tok = np.fromiter((wcount(w) for w in ch.words), dtype=np.int64, count=len(ch.words))
            lab = selection.llmlingua_chunk_keep(
                ch.words,
                p,
                n_tok,
                reduce_rate,
                opts.force_tokens,
                opts.drop_consecutive,
                py_float_words(ch, opts.token_to_word),
            )
        else:
            lab = np.zeros(len(ch.words), dtype=bool)
        ws.extend(w.lstrip("▁") if scheme == "sentencepiece" else w for w in ch.words)
        ss.extend(ch.spans)
        kk.extend(bool(x) for x in lab)
        pp.extend(float(x) for x in p)
    return ws, ss, kk, pp


def _compat_one(
    scheme: Scheme,
    pl: CompatPlan,
    opts: CompressOptions,
    wcount: CachedCounter,
    counter: TokenCounter,
    active: dict[int, np.ndarray],
) -> CompressResult:
    ctxs = pl.contexts
    n_orig = sum(counter(c) for c in ctxs)
    ctx_keep, rate = _context_filter(pl, opts, counter, active, n_orig)
    reduce_rate = max(0.0, 1.0 - rate)
    words, keep, spans, wps, texts = [], [], [], [], []
    off = 0
    for ci, (c, cl) in enumerate(zip(ctxs, pl.chunks, strict=False)):
        if ctx_keep[ci] and reduce_rate <= 0:
            ws, ss = pl.regex_words(ci)
            kk = [True] * len(ws)
            pp = [1.0] * len(ws)
            texts.append(c)
        else:
            ws, ss, kk, pp = _chunk_words(
                scheme, cl, bool(ctx_keep[ci]), reduce_rate, opts, wcount, active
            )
            if ctx_keep[ci]:
                texts.append(rebuild(c, ss, kk))
        words.extend(ws)
        keep.extend(kk)
        spans.extend((a + off, b + off) if b > a else (off, off) for a, b in ss)
        wps.extend(pp)
        off += len(c) + 2
    out = "\n\n".join(texts)
    return CompressResult(
        compressed_prompt=out,
        compressed_prompt_list=texts,
        origin_tokens=n_orig,
        compressed_tokens=sum(counter(t) for t in texts if t),  # llmlingua: per context
        words=words,
        keep=keep,
        word_spans=spans,
        word_probs=wps,
        original_text="\n\n".join(ctxs),
        compat=True,
    )
