"""Issue 16's learning settings end to end on a tiny real BERT and the loopback teacher:
sentence-level credit groups, the KL anchor, frozen lower layers, and their config checks."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tacorl_offline.config import resolve
from tests.helpers import prepare, q, train


def test_sentence_credit_with_kl_anchor_trains_every_parameter(
    tmp_path, loopback_server, tiny_bert
) -> None:
    cfg = prepare(
        tmp_path,
        loopback_server,
        tiny_bert,
        rate=0.5,
        credit="sentence",
        samples_per_prompt=3,
        baseline="none",
        kl_coeff=0.1,
        entropy_coeff=0.0,
    )
    before = load_file(str(tiny_bert / "model.safetensors"))
    s = train(cfg)
    assert s.steps == 4 and s.final_model is not None
    after = load_file(str(s.final_model / "model.safetensors"))
    assert [k for k in before if torch.equal(before[k], after[k])] == []
    # Each prompt's group: a base mask and 2 variants, each scored like any sample.
    assert q(cfg, "SELECT count(*) FROM samples WHERE run_id = ?", [s.run_id]) == [(4 * 4 * 3,)]
    # A variant differs from its base inside one sentence only.
    rows = q(
        cfg,
        "SELECT step, prompt_id, sample_idx, actions FROM samples WHERE run_id = ? "
        "ORDER BY step, prompt_id, sample_idx",
        [s.run_id],
    )
    groups: dict = {}
    for step, pid, idx, acts in rows:
        groups.setdefault((step, pid), {})[idx] = acts
    changed_any = False
    for g in groups.values():
        assert set(g) == {0, 1, 2}
        for j in (1, 2):
            diff = [k for k, (a, b) in enumerate(zip(g[0], g[j], strict=True)) if a != b]
            changed_any |= bool(diff)
            # the tiny data's sentences hold 9 words (+ "."): a variant's changes fit in one
            assert not diff or diff[-1] - diff[0] < 10
    assert changed_any


def test_freeze_layers_keeps_the_embeddings_and_lower_layers_fixed(
    tmp_path, loopback_server, tiny_bert
) -> None:
    cfg = prepare(
        tmp_path, loopback_server, tiny_bert, rate=0.5, samples_per_prompt=2, freeze_layers=1
    )
    before = load_file(str(tiny_bert / "model.safetensors"))
    s = train(cfg)
    after = load_file(str(s.final_model / "model.safetensors"))
    same = {k for k in before if torch.equal(before[k], after[k])}
    frozen = {k for k in before if ".embeddings." in k or ".encoder.layer.0." in k}
    assert frozen and same == frozen  # the rest all moved: layer 1 and the head


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.credit": "sentence", "train.samples_per_prompt": 1}, "samples_per_prompt >= 2"),
        (
            {
                "train.credit": "sentence",
                "train.samples_per_prompt": 2,
                "train.reuse": {"update_epochs": 2},
            },
            "does not combine with train.reuse",
        ),
        (
            {"train.credit": "sentence", "train.samples_per_prompt": 2, "train.baseline": "scst"},
            "baseline: none",
        ),
        ({"train.kl_coeff": -0.1}, "kl_coeff"),
        ({"train.freeze_layers": -1}, "freeze_layers"),
        ({"train.credit": "token"}, "credit"),
        ({"train.validation.split": "train"}, "is the split the run trains on"),
        ({"train.validation.every": 0}, "train.validation.every"),
        ({"train.validation.keep_best": "sometimes"}, "keep_best"),
    ],
)
def test_learning_settings_are_checked(overrides: dict, message: str) -> None:
    from tacorl_offline.errors import UserError

    with pytest.raises(UserError, match=message):
        resolve(None, environ={}, overrides=overrides)
