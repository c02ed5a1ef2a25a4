"""SFT at the model's speed, with unchanged results: seeded length-bucketed batches that cover
every example once per epoch, the batched loss equal to the per-example one it replaced, the
dropout and thread settings (issue 19). The speed itself is measured by bench/sft_speed.py."""

from __future__ import annotations

import random

import pytest
import torch

from tacorl_offline.compressor import CompressOptions, Compressor
from tacorl_offline.compressor.dropout import set_dropout
from tacorl_offline.config import resolve
from tacorl_offline.errors import UserError
from tacorl_offline.sft import (
    SftExample,
    _batch_loss,
    bucketed_batches,
    example_rows,
    padding_share,
    stopword_labels,
)
from tacorl_offline.threads import free_cores, intra_op_threads
from tests import tiny_models as tm


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tm.cached_model("bert", tmp_path_factory.getbasetemp())


# ----------------------------------------------------------------------------- batches


SKEWED = [random.Random(7).choice([20, 40, 60, 120, 200, 400, 512]) for _ in range(700)]


@pytest.mark.parametrize("n, batch_size", [(0, 4), (1, 4), (7, 3), (700, 16), (33, 50)])
def test_every_example_once_per_epoch(n: int, batch_size: int) -> None:
    lengths = SKEWED[:n]
    for epoch in (1, 2, 3):
        batches = bucketed_batches(lengths, batch_size, seed=0, epoch=epoch)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(n))
        assert all(1 <= len(b) <= batch_size for b in batches)
        assert len(batches) >= -(-n // batch_size)


def test_batches_are_seeded_and_reproducible() -> None:
    a = bucketed_batches(SKEWED, 16, seed=3, epoch=1)
    assert a == bucketed_batches(SKEWED, 16, seed=3, epoch=1)
    assert a != bucketed_batches(SKEWED, 16, seed=3, epoch=2)  # a new order each epoch
    assert a != bucketed_batches(SKEWED, 16, seed=4, epoch=1)


def test_bucketing_cuts_padding_below_15_percent() -> None:
    rng = random.Random(1)
    lengths = [rng.randint(60, 300) for _ in range(800)]
    rows = [[n] for n in lengths]
    bucketed = padding_share(rows, bucketed_batches(lengths, 16, seed=0, epoch=1))
    order = list(range(len(lengths)))
    rng.shuffle(order)
    shuffled = padding_share(rows, [order[k : k + 16] for k in range(0, len(order), 16)])
    assert bucketed <= 0.15 < shuffled
    assert padding_share([[5, 3]], [[0]]) == pytest.approx(0.2)


# ----------------------------------------------------------------------------- the loss


def _examples(comp: Compressor, n: int, question: bool) -> list[SftExample]:
    texts = [tm.random_text(random.Random(40 + i), 15 + 9 * i) for i in range(n)]
    lays = comp.layouts(texts, comp.options)
    return [
        SftExample(
            f"p{i}",
            t,
            {"question": tm.random_text(random.Random(90 + i), 5)} if question else {},
            stopword_labels(lay.words) | lay.forced,
        )
        for i, (t, lay) in enumerate(zip(texts, lays, strict=True))
    ]


def _old_loss(comp: Compressor, batch: list[SftExample], w0: float, w1: float) -> torch.Tensor:
    """The per-example loss SFT computed before issue 19 (from Compressor.token_probs)."""
    lays, tps = comp.token_probs([ex.text for ex in batch], fields=[ex.fields for ex in batch])
    parts = []
    for ex, lay, tp in zip(batch, lays, tps, strict=True):
        wot = torch.as_tensor(lay.word_of_token[: tp.shape[0]])
        ok = wot >= 0
        deciding = ~torch.as_tensor(lay.forced)[wot[ok]]
        y = torch.as_tensor(ex.labels)[wot[ok]][deciding].to(tp.dtype)
        p = tp[ok][deciding].clamp(1e-6, 1 - 1e-6)
        parts.append(-(w1 * y * p.log() + w0 * (1 - y) * (1 - p).log()))
    return torch.cat(parts).mean()


@pytest.mark.parametrize("question", [False, True], ids=["plain", "question-aware"])
def test_batched_loss_and_gradient_equal_the_per_example_ones(model_dir, question) -> None:
    torch.manual_seed(0)
    comp = Compressor.from_pretrained(
        model_dir,
        # 65 row positions go to the question segment (QUESTION_MAX_TOKENS + [SEP])
        options=CompressOptions(max_seq_len=48 + (65 if question else 0), batch_size=3),
        condition_on=["question"] if question else None,
    )
    comp.model.eval()  # no dropout: both paths see the same model
    batch = _examples(comp, 6, question)
    rows = example_rows(comp, batch)
    assert any(len(r.ids) > 1 for r in rows)  # some examples span several chunks (rows)
    flat = [
        (r.ids[j], r.types[j] if r.types is not None else None, r.y[j], r.counted[j])
        for r in rows
        for j in range(len(r.ids))
    ]
    params = [p for p in comp.model.parameters() if p.requires_grad]
    new = _batch_loss(comp.model, flat, device=comp.device, pad=0, group=3, w0=0.7, w1=1.9)
    g_new = [p.grad.clone() for p in params]
    comp.model.zero_grad(set_to_none=True)
    old = _old_loss(comp, batch, 0.7, 1.9)
    old.backward()
    assert new == pytest.approx(float(old.detach()), rel=1e-5)
    for a, p in zip(g_new, params, strict=True):
        assert torch.allclose(a, p.grad, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- dropout, threads


@pytest.mark.parametrize(
    "mode, attention_p, hidden_p", [("all", 0.1, 0.1), ("hidden", 0.0, 0.1), ("none", 0.0, 0.0)]
)
def test_dropout_modes(model_dir, mode: str, attention_p: float, hidden_p: float) -> None:
    comp = Compressor.from_pretrained(model_dir, options=CompressOptions())
    cfg = comp.model.config
    before = (cfg.attention_probs_dropout_prob, cfg.hidden_dropout_prob)
    assert before == (0.1, 0.1)  # the tiny model's configured dropout
    set_dropout(comp.model, mode)  # type: ignore[arg-type]
    attention = [m.dropout.p for m in comp.model.modules() if hasattr(m, "query")]
    hidden = [
        m.p
        for name, m in comp.model.named_modules()
        if isinstance(m, torch.nn.Dropout) and not name.endswith("attention.self.dropout")
    ]
    assert attention and hidden
    assert set(attention) == {attention_p} and set(hidden) == {hidden_p}
    # the configuration a saved model carries is untouched
    assert (cfg.attention_probs_dropout_prob, cfg.hidden_dropout_prob) == before
    if mode == "none":  # training mode is now deterministic
        comp.model.train()
        ids = torch.tensor([[2, 50, 51, 52, 3]])
        assert torch.equal(comp.model(input_ids=ids).logits, comp.model(input_ids=ids).logits)


@pytest.mark.parametrize(
    "setting, value, ok",
    [
        ("sft.dropout", "hidden", True),
        ("sft.dropout", "all", True),
        ("sft.dropout", "none", True),
        ("sft.dropout", "attention", False),
        ("sft.threads", 1, True),
        ("sft.threads", 0, False),
        ("sft.threads", None, True),
    ],
)
def test_sft_speed_settings(setting: str, value: object, ok: bool) -> None:
    if ok:
        cfg = resolve(None, environ={}, overrides={setting: value})
        section, name = setting.split(".")
        assert getattr(getattr(cfg, section), name) == value
    else:
        with pytest.raises(UserError, match=setting.split(".")[1]):
            resolve(None, environ={}, overrides={setting: value})


def test_sft_defaults_drop_attention_dropout_only() -> None:
    cfg = resolve(None, environ={})
    assert cfg.sft.dropout == "hidden" and cfg.sft.threads is None


@pytest.mark.parametrize(
    "load, cores, want",
    [(0.0, 2, 2), (1.0, 2, 2), (1.4, 2, 2), (2.0, 2, 1), (5.0, 2, 1), (3.0, 8, 6), (0.5, 1, 1)],
)
def test_free_cores(load: float, cores: int, want: int) -> None:
    assert free_cores(load, cores) == want


def test_intra_op_threads_restores() -> None:
    before = torch.get_num_threads()
    with intra_op_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
