"""The compressor as an RL policy: keep-masks sampled with gradient, and the greedy mask.

The pure Bernoulli math (draw, log-prob, entropy) is :mod:`.sampling`; this module is the
model-facing side: one forward pass with gradient over the same rows as greedy compression
(:func:`.rows.build_rows`), word probabilities from token probabilities, and a
:class:`~.result.Sample` per mask. :meth:`.Compressor.sample` and :meth:`.Compressor.greedy`
call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tacorl_offline.hashing import mask_hash

from . import sampling, selection
from .layout import Layout
from .options import CompressOptions
from .result import Sample
from .rows import build_rows, forward_rows, pad_id
from .text import rebuild

if TYPE_CHECKING:
    from .model import Compressor


def token_probs(
    comp: Compressor,
    layouts: Sequence[Layout],
    model: torch.nn.Module,
    batch_size: int,
    prefixes: Sequence[Sequence[int]] | None = None,
) -> list[torch.Tensor]:
    """Per layout, a keep-probability per model token (differentiable if grad is on)."""
    rows = build_rows(layouts, comp.tokenizer, prefixes, comp._two_types)
    probs = forward_rows(
        model,
        rows.ids,
        device=comp.device,
        pad=pad_id(comp.tokenizer),
        types=rows.types,
        batch_size=batch_size,
    )
    parts: list[list[torch.Tensor]] = [[] for _ in layouts]
    for p, (li, a, b), lead in zip(probs, rows.where, rows.leads, strict=False):
        parts[li].append(p[lead : lead + (b - a)])
    return [torch.cat(ps) if ps else torch.zeros(0, device=comp.device) for ps in parts]


def word_probs(lay: Layout, tp: torch.Tensor, mode: str) -> torch.Tensor:
    """A word's keep-probability from its tokens': their mean, or the first token's."""
    n = lay.n_words
    w = torch.as_tensor(lay.word_of_token, device=tp.device)
    m = w >= 0
    if mode == "first":
        idx = torch.as_tensor(np.flatnonzero(lay.word_of_token >= 0), device=tp.device)
        wi = w[idx]
        first = torch.ones_like(wi, dtype=torch.bool)
        first[1:] = wi[1:] != wi[:-1]
        out = torch.zeros(n, device=tp.device, dtype=tp.dtype)
        return out.index_copy(0, wi[first], tp[idx[first]])
    sums = torch.zeros(n, device=tp.device, dtype=tp.dtype).index_add(0, w[m], tp[m])
    counts = torch.bincount(w[m], minlength=n).clamp(min=1).to(tp.dtype)
    return sums / counts


def forward(
    comp: Compressor,
    texts: Sequence[str],
    model: torch.nn.Module | None,
    opts: CompressOptions,
    fields: Sequence[Any] | None = None,
) -> tuple[list[Layout], list[torch.Tensor]]:
    """Layouts and word keep-probabilities (with gradient when grad is on)."""
    lays = comp.layouts(list(texts), opts)
    pre = comp.prefixes(fields, len(lays))
    tps = token_probs(comp, lays, model or comp.model, opts.batch_size, pre)
    return lays, [
        word_probs(lay, tp, opts.token_to_word) for lay, tp in zip(lays, tps, strict=False)
    ]


def _make_sample(
    lay: Layout,
    dec: np.ndarray,
    act: torch.Tensor,
    lp: Any,
    ent: Any,
    opts: CompressOptions,
    word_lp: torch.Tensor | None = None,
) -> Sample:
    keep = lay.forced.copy()
    actions = act.cpu().numpy().astype(bool)
    keep[dec] = actions
    if opts.drop_consecutive:
        keep = selection.drop_consecutive(keep, lay.words, lay.is_force)
    kept = [s for s, k in zip(lay.spans, keep, strict=False) if k]
    return Sample(
        keep=[bool(x) for x in keep],
        text=rebuild(lay.text, lay.spans, keep),
        mask_hash=mask_hash(lay.text, kept),
        kept_spans=kept,
        log_prob=lp,
        entropy=ent,
        n_actions=len(dec),
        n_words=lay.n_words,
        word_spans=lay.spans,
        actions=actions,
        word_log_probs=word_lp,
    )


@dataclass
class Decisions:
    """One prompt's deciding words under the policy: the layout, the indices of the words that
    are not forced, and their keep-probabilities (shifted to the rate budget when sampling is
    rate-consistent; with gradient when grad is on). Drawing masks, and scoring the actions of
    a stored mask under today's policy (off-policy reuse), both start from it."""

    layout: Layout
    dec: np.ndarray
    probs: torch.Tensor

    @property
    def entropy(self) -> torch.Tensor:
        return sampling.entropy(self.probs)

    def draw(
        self, n: int, generator: torch.Generator | None, opts: CompressOptions
    ) -> list[Sample]:
        """``n`` sampled masks (``n`` may be 0)."""
        if n < 1:
            return []
        acts = sampling.draw(self.probs, n, generator)
        wlp = sampling.word_log_probs(self.probs, acts)
        lps = wlp.sum(dim=1)
        ent = self.entropy
        return [
            _make_sample(self.layout, self.dec, acts[g], lps[g], ent, opts, wlp[g])
            for g in range(n)
        ]

    def word_log_probs(self, actions: Any) -> torch.Tensor:
        """Per-word log-probs [n] of given actions (a bool array, one per deciding word)."""
        a = torch.as_tensor(np.asarray(actions, dtype=bool), device=self.probs.device)
        return sampling.word_log_probs(self.probs, a.unsqueeze(0))[0]

    def sample_of(self, actions: Any, opts: CompressOptions) -> Sample:
        """The ``Sample`` (mask, text, hash, log-probs under this policy) of given actions."""
        wlp = self.word_log_probs(actions)
        a = torch.as_tensor(np.asarray(actions, dtype=bool))
        return _make_sample(self.layout, self.dec, a, wlp.sum(), self.entropy, opts, wlp)


def decisions(
    comp: Compressor,
    texts: Sequence[str],
    opts: CompressOptions,
    *,
    model: torch.nn.Module | None = None,
    fields: Sequence[Any] | None = None,
    rate: float | None = None,
) -> list[Decisions]:
    """Per prompt, the deciding words and their keep-probabilities, from one forward pass.

    ``rate=None``: the word probability itself (upstream TACO-RL; the rate is enforced only by
    the reward). ``rate=c`` (rate-consistent): the prompt's word probabilities are shifted in
    logit space so the expected kept weight (model tokens, forced words included) equals the
    budget greedy compression keeps at rate c (:func:`.sampling.shifted_probs`). The shift is
    monotone, so the ranking greedy uses is unchanged, and the log-prob and entropy are those
    of the shifted Bernoullis, exactly. The shift is a function of the prompt's logits and is
    differentiated with them (:func:`.sampling.shifted_probs`); the log-prob of a stored mask
    under a later policy is recomputed with that policy's shift."""
    lays, wps = forward(comp, texts, model, opts, fields)
    out = []
    for lay, p in zip(lays, wps, strict=False):
        dec = np.flatnonzero(~lay.forced)
        pd = p[torch.as_tensor(dec, device=p.device)]
        if rate is not None and rate < 1.0:
            w = torch.as_tensor(lay.weights, dtype=torch.float64)
            budget = rate * float(w.sum()) - float(w[torch.as_tensor(lay.forced)].sum())
            pd = sampling.shifted_probs(pd, w[torch.as_tensor(dec)].to(pd.device), budget)
        out.append(Decisions(lay, dec, pd))
    return out


def sample(
    comp: Compressor,
    texts: Sequence[str],
    num_samples: int,
    opts: CompressOptions,
    *,
    generator: torch.Generator | None = None,
    model: torch.nn.Module | None = None,
    fields: Sequence[Any] | None = None,
    rate: float | None = None,
) -> list[list[Sample]]:
    """``num_samples`` masks per prompt from one forward pass, with gradient: a Bernoulli per
    word that is not forced, on the probabilities of :func:`decisions` (see there for
    ``rate``)."""
    if num_samples < 1:
        raise ValueError("num_samples must be >= 1")
    ds = decisions(comp, texts, opts, model=model, fields=fields, rate=rate)
    return [d.draw(num_samples, generator, opts) for d in ds]


def greedy(
    comp: Compressor,
    texts: Sequence[str],
    opts: CompressOptions,
    *,
    rate: float | None = None,
    model: torch.nn.Module | None = None,
    fields: Sequence[Any] | None = None,
) -> list[Sample]:
    """The greedy mask as a ``Sample`` (no gradient): keep iff p > 0.5, or the rate budget."""
    with torch.no_grad():
        lays, wps = forward(comp, texts, model or comp.model, opts, fields)
    out = []
    for lay, p in zip(lays, wps, strict=False):
        dec = np.flatnonzero(~lay.forced)
        pd = p[torch.as_tensor(dec, device=p.device)]
        if rate is None:
            act = pd > 0.5
        else:
            pn = np.where(lay.forced, 1.0, p.cpu().numpy())
            act = torch.as_tensor(
                selection.keep_by_rate(pn, lay.weights, rate, lay.forced)[dec], device=p.device
            )
        out.append(
            _make_sample(
                lay,
                dec,
                act,
                sampling.log_prob(pd, act.unsqueeze(0))[0],
                sampling.entropy(pd),
                opts,
            )
        )
    return out
