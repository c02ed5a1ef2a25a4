"""Sampling mode (RL): one forward with gradient, Bernoulli per deciding word."""

from __future__ import annotations

import random

import pytest
import torch

from tacorl_offline.compressor import CompressOptions, Compressor
from tacorl_offline.hashing import mask_hash
from tests import tiny_models as tm


@pytest.fixture(scope="module")
def comp(tmp_path_factory):
    path = tm.cached_model("bert", tmp_path_factory.getbasetemp())
    return Compressor.from_pretrained(
        path, options=CompressOptions(force_tokens=["\n", "."], force_reserve_digit=True)
    )


TEXTS = [tm.random_text(random.Random(50 + i), n) for i, n in enumerate([12, 80, 700])]


def test_shapes_and_fields(comp):
    out = comp.sample(TEXTS, num_samples=3, generator=torch.Generator().manual_seed(0))
    assert [len(s) for s in out] == [3, 3, 3]
    for text, samples in zip(TEXTS, out, strict=False):
        for s in samples:
            assert len(s.keep) == s.n_words and s.log_prob.dim() == 0 and s.entropy.dim() == 0
            assert s.mask_hash == mask_hash(text, s.kept_spans)
            assert [text[a:b] for a, b in s.kept_spans] == [
                text[a:b] for (a, b), k in zip(s.word_spans, s.keep, strict=False) if k
            ]
            assert 0 < s.n_actions <= s.n_words
    assert all(s.n_actions < s.n_words for s in out[2])  # the long prompt has forced words


def test_gradient_flows_only_through_deciding_words(comp):
    comp.model.zero_grad()
    out = comp.sample(TEXTS[:2], num_samples=2, generator=torch.Generator().manual_seed(1))
    s = out[1][0]
    assert s.log_prob.requires_grad and s.entropy.requires_grad
    # forced words (".", "\n", digits) are always kept and are not actions
    words = [TEXTS[1][a:b] for a, b in s.word_spans]
    forced = [i for i, w in enumerate(words) if w in (".", "\n") or any(c.isdigit() for c in w)]
    assert forced and all(s.keep[i] for i in forced)
    assert s.n_actions == s.n_words - len(forced)
    (s.log_prob + 0.01 * s.entropy).backward()
    grads = [p.grad for p in comp.model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_log_prob_matches_word_probabilities(comp):
    s = comp.sample([TEXTS[0]], num_samples=1, generator=torch.Generator().manual_seed(2))[0][0]
    g = comp.greedy([TEXTS[0]])[0]
    r = comp.compress([TEXTS[0]], rate=1.0)[0]
    words = [TEXTS[0][a:b] for a, b in s.word_spans]
    dec = [i for i, w in enumerate(words) if not (w in (".", "\n") or any(c.isdigit() for c in w))]
    p = torch.tensor([r.word_probs[i] for i in dec], dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
    a = torch.tensor([s.keep[i] for i in dec], dtype=torch.float64)
    expect = (a * p.log() + (1 - a) * (1 - p).log()).sum()
    assert s.log_prob.item() == pytest.approx(expect.item(), rel=1e-4)
    # greedy keeps exactly the deciding words with p > 0.5
    assert [g.keep[i] for i in dec] == [bool(x > 0.5) for x in p]
    assert not g.log_prob.requires_grad


def test_fixed_seed_gives_identical_masks_and_different_seeds_differ(comp):
    a = comp.sample(TEXTS, num_samples=4, generator=torch.Generator().manual_seed(7))
    b = comp.sample(TEXTS, num_samples=4, generator=torch.Generator().manual_seed(7))
    c = comp.sample(TEXTS, num_samples=4, generator=torch.Generator().manual_seed(8))
    key = lambda out: [[s.mask_hash for s in ss] for ss in out]  # noqa: E731
    assert key(a) == key(b) and key(a) != key(c)
    assert len({s.mask_hash for s in a[2]}) == 4  # G distinct samples of a long prompt


def test_model_argument_is_used_for_the_forward(comp):
    calls = []

    class Wrapper(torch.nn.Module):  # stands in for DistributedDataParallel
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, **kw):
            calls.append(kw["input_ids"].shape)
            return self.module(**kw)

    out = comp.sample(
        TEXTS[:1],
        num_samples=2,
        generator=torch.Generator().manual_seed(0),
        model=Wrapper(comp.model),
    )
    assert calls and len(out[0]) == 2


def test_greedy_rate_variant(comp):
    g = comp.greedy([TEXTS[2]], rate=0.3)[0]
    full = comp.greedy([TEXTS[2]], rate=1.0)[0]
    assert all(full.keep) and sum(g.keep) < sum(full.keep)
