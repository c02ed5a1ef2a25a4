"""Learning machinery: SFT warm start, question-aware encoder input, rate-consistent rollouts,
eval-mode determinism, and the entropy term's normalisation."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from tacorl_offline.advantages import policy_loss
from tacorl_offline.compressor import CompressOptions, Compressor
from tacorl_offline.sft import (
    SftExample,
    evaluate_labels,
    stopword_labels,
    teacher_labels,
    train_sft,
)
from tests import tiny_models as tm


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tm.cached_model("bert", tmp_path_factory.getbasetemp())


def _comp(path, **kw) -> Compressor:
    torch.manual_seed(0)
    return Compressor.from_pretrained(path, options=CompressOptions(), **kw)


TEXTS = [tm.random_text(random.Random(300 + i), 40) for i in range(24)]
QUESTIONS = [tm.random_text(random.Random(900 + i), 6) for i in range(24)]


def test_sft_lowers_its_loss_and_raises_label_f1(model_dir) -> None:
    comp = _comp(model_dir)
    # A learnable rule: keep words that are not stopwords/punctuation.
    lays = comp.layouts(TEXTS, comp.options)
    examples = [
        SftExample(f"p{i}", t, {}, stopword_labels(lay.words))
        for i, (t, lay) in enumerate(zip(TEXTS, lays, strict=True))
    ]
    before = evaluate_labels(comp, examples[18:])
    res = train_sft(comp, examples[:18], examples[18:], epochs=6, lr=3e-3, batch_size=6, seed=0)
    losses = [e.loss for e in res.epochs]
    assert losses[-1] < losses[0]
    assert res.epochs[-1].label_f1 > before.f1 + 0.05
    assert res.n_train == 18 and res.n_eval == 6


def test_teacher_labels_follow_the_answer_and_the_rate(model_dir) -> None:
    comp = _comp(model_dir)
    text = "alpha beta gamma . delta epsilon zeta eta . theta iota"
    lay = comp.layouts([text], comp.options)[0]
    labels = teacher_labels(text, "delta epsilon zeta eta .", lay.spans, lay.weights, rate=1.0)
    kept = " ".join(w for w, k in zip(lay.words, labels, strict=True) if k)
    assert kept == "delta epsilon zeta eta ."
    # a low rate trims the labels to the budget, earliest aligned words first
    few = teacher_labels(text, "delta epsilon zeta eta .", lay.spans, lay.weights, rate=0.2)
    assert 0 < few.sum() < labels.sum() and few[labels].sum() == few.sum()


def test_question_aware_rows_and_saved_flag(model_dir, tmp_path) -> None:
    comp = _comp(model_dir, condition_on=["question"])
    assert comp.condition_on == ["question"]
    fields = [{"question": q} for q in QUESTIONS[:3]]
    out = comp.compress(TEXTS[:3], rate=0.5, fields=fields)
    assert all(r.compressed_prompt for r in out)
    # the question changes the keep-probabilities (it is in the model's input) ...
    other = comp.compress(TEXTS[:3], rate=0.5, fields=[{"question": q} for q in QUESTIONS[3:6]])
    assert any(a.word_probs != b.word_probs for a, b in zip(out, other, strict=True))
    # ... and greedy and the sampling path see the same input (same word probabilities)
    _lays, wps = comp.word_probs(TEXTS[:3], fields=fields)
    for r, p in zip(out, wps, strict=True):
        assert np.allclose(r.word_probs, p.detach().numpy(), atol=1e-5)
    # a prompt without its question is a user error, not a silent plain compression
    from tacorl_offline.errors import UserError

    with pytest.raises(UserError, match="question"):
        comp.compress(TEXTS[:1], rate=0.5)
    saved = comp.save_pretrained(tmp_path / "qa-model")
    again = Compressor.from_pretrained(saved)
    assert again.condition_on == ["question"]
    assert again.compress(TEXTS[:3], rate=0.5, fields=fields)[0].keep == out[0].keep
    with pytest.raises(UserError, match="compat"):
        again.compress(TEXTS[:1], rate=0.5, fields=fields[:1], compat=True)


def test_plain_model_ignores_fields(model_dir) -> None:
    comp = _comp(model_dir)
    a = comp.compress(TEXTS[:2], rate=0.5)
    b = comp.compress(TEXTS[:2], rate=0.5, fields=[{"question": "x"}, {"question": "y"}])
    assert [r.keep for r in a] == [r.keep for r in b]


def test_eval_mode_rollouts_are_deterministic_for_greedy(model_dir) -> None:
    comp = _comp(model_dir)
    comp.model.eval()
    g1 = comp.greedy(TEXTS[:8], rate=0.5)
    g2 = comp.greedy(TEXTS[:8], rate=0.5)
    assert [s.mask_hash for s in g1] == [s.mask_hash for s in g2]


def test_rate_consistent_sampling_keeps_the_greedy_budget(model_dir) -> None:
    comp = _comp(model_dir)
    comp.model.eval()
    gen = torch.Generator().manual_seed(0)
    samples = comp.sample(TEXTS, num_samples=16, generator=gen, rate=0.3)
    lays = comp.layouts(TEXTS, comp.options)
    kept = []
    for lay, ss in zip(lays, samples, strict=True):
        for s in ss:
            kept.append(float(lay.weights[np.asarray(s.keep)].sum() / lay.weights.sum()))
    assert abs(np.mean(kept) - 0.3) < 0.03
    plain = comp.sample(TEXTS, num_samples=16, generator=torch.Generator().manual_seed(0))
    plain_kept = [
        float(lay.weights[np.asarray(s.keep)].sum() / lay.weights.sum())
        for lay, ss in zip(lays, plain, strict=True)
        for s in ss
    ]
    assert abs(np.mean(plain_kept) - 0.3) > 0.05  # the upstream Bernoulli ignores the rate


@pytest.mark.parametrize(
    ("n_words", "logp_per_word", "adv", "h_per_word", "coeff"),
    [(10, -0.5, 1.0, 0.6, 0.01), (100, -0.69, -0.3, 0.69, 0.01), (40, -0.2, 0.5, 0.3, 0.1)],
)
def test_entropy_term_scales_like_the_policy_term(n_words, logp_per_word, adv, h_per_word, coeff):
    """Ours (per-mask sums) = n_words x upstream's (per-position means) for equal-length masks:
    the ratio of the two terms, hence what entropy_coeff means, is upstream's."""
    lp = torch.tensor([logp_per_word * n_words] * 2, dtype=torch.float64)
    ent = torch.tensor([h_per_word * n_words] * 2, dtype=torch.float64)
    a = torch.tensor([adv, adv], dtype=torch.float64)
    loss, _ = policy_loss(
        lp, a, ent, torch.tensor([n_words, n_words]), coeff, torch.ones(2, dtype=torch.bool)
    )
    upstream = -(adv * logp_per_word) - coeff * h_per_word
    assert float(loss) == pytest.approx(n_words * upstream)


def test_freeze_lower_layers_leaves_the_top_and_the_head_trainable(model_dir) -> None:
    from tacorl_offline.sft import freeze_lower_layers

    comp = _comp(model_dir)
    assert freeze_lower_layers(comp.model, 1) > 0
    frozen = {n for n, p in comp.model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("bert.embeddings") for n in frozen)
    assert any(".layer.0." in n for n in frozen)
    assert not any(".layer.1." in n or n.startswith("classifier") for n in frozen)
