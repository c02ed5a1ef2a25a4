"""The greedy fast path keeps results: SDPA mask shortcut, length bucketing, token reuse."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from tacorl_offline.compressor import Compressor
from tacorl_offline.compressor.policy import token_probs
from tacorl_offline.compressor.rows import build_rows, mask_arg, pad_id
from tacorl_offline.compressor.words import group_words, group_words_arrays, space_mask
from tests import tiny_models as tm

TEXTS = [tm.random_text(random.Random(i), n) for i, n in enumerate([3, 60, 700, 1500, 1200])]


@pytest.fixture(scope="module", params=["bert", "xlmr"])
def comp(request, tmp_path_factory):
    return Compressor.from_pretrained(
        tm.cached_model(request.param, tmp_path_factory.getbasetemp())
    )


def test_sdpa_4d_mask_gives_bitwise_equal_probs(comp):
    lays = comp.layouts(TEXTS, comp.options)
    rows = build_rows(lays, comp.tokenizer).ids
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id(comp.tokenizer), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.as_tensor(row)
        mask[r, : len(row)] = 1
    assert comp.model.config._attn_implementation == "sdpa"
    assert mask_arg(comp.model, mask).shape == (len(rows), 1, 1, width)
    with torch.inference_mode():
        a = comp.model(input_ids=ids, attention_mask=mask).logits
        b = comp.model(input_ids=ids, attention_mask=mask_arg(comp.model, mask)).logits
    m = mask.bool()
    assert torch.equal(a[m], b[m])


def test_length_bucketing_keeps_the_same_words(comp):
    for opts in ({"rate": 0.5}, {"rate": 0.3, "force_tokens": ["\n", "."]}, {"threshold": 0.5}):
        fast = comp.compress(TEXTS, **opts, batch_size=3)
        comp.length_bucketing = False
        try:
            slow = comp.compress(TEXTS, **opts, batch_size=3)
        finally:
            comp.length_bucketing = True
        for f, s in zip(fast, slow, strict=True):
            assert f.keep == s.keep
            assert f.compressed_prompt == s.compressed_prompt
            np.testing.assert_allclose(f.word_probs, s.word_probs, atol=1e-5)


def test_greedy_numpy_path_matches_the_torch_path(comp):
    lays = comp.layouts(TEXTS, comp.options)
    with torch.inference_mode():
        t = token_probs(comp, lays, comp.model, 4)
        n = comp._token_probs_np(lays, comp.model, 4, 512)
    for a, b in zip(t, n, strict=True):
        assert np.array_equal(a.numpy(), b)


def test_model_token_count_reuses_ids_and_ignores_saved_truncation(tmp_path, comp):
    comp.save_pretrained(tmp_path / "m")
    tj = tmp_path / "m" / "tokenizer.json"
    d = json.loads(tj.read_text())  # like MiniLM's tokenizer.json: pad/truncate to 16
    d["truncation"] = {"max_length": 16, "strategy": "LongestFirst", "stride": 0}
    d["padding"] = {
        "strategy": {"Fixed": 16},
        "direction": "Right",
        "pad_to_multiple_of": None,
        "pad_id": 0,
        "pad_type_id": 0,
        "pad_token": "[PAD]",
    }
    tj.write_text(json.dumps(d))
    c2 = Compressor.from_pretrained(tmp_path / "m")
    res = c2.compress(TEXTS, rate=0.5)
    plain = comp.tokenizer.backend_tokenizer
    for text, r in zip(TEXTS, res, strict=True):
        assert r.origin_tokens == len(plain.encode(text, add_special_tokens=False).ids)
        assert r.compressed_tokens == len(
            plain.encode(r.compressed_prompt, add_special_tokens=False).ids
        )
    assert [r.keep for r in res] == [r.keep for r in comp.compress(TEXTS, rate=0.5)]


def test_vocab_features_match_string_features(comp):
    for text in [*TEXTS[:3], "Hello,  WORLD\u00a0playing\n\n x"]:
        enc = comp.backend.encode(text, add_special_tokens=False)
        force = frozenset({".", "\n"})
        table = comp._vocab_features(sorted(force), [".", "\n"])
        ids = np.asarray(enc.ids)
        g = group_words(enc.tokens, enc.offsets, text, comp.scheme, force)
        w, s, e = group_words_arrays(
            table.take(ids), np.asarray(enc.offsets).reshape(-1, 2), text, comp.scheme
        )
        assert np.array_equal(w, g.word_of_token)
        assert list(zip(s.tolist(), e.tolist(), strict=True)) == g.spans


def test_space_mask_is_str_isspace():
    t = "a b\tc\n\u00a0\u3000\u2029\u200bé\x1c"
    assert space_mask(t).tolist() == [c.isspace() for c in t]
