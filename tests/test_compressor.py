"""Compressor with real tiny models: properties, save/load (also into llmlingua), minilm."""

from __future__ import annotations

import json
import random

import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tacorl_offline.compressor import CompressOptions, Compressor
from tacorl_offline.errors import UserError
from tacorl_offline.hashing import mask_hash
from tests import tiny_models as tm


@pytest.fixture(scope="module", params=["bert", "xlmr"])
def comp(request, tmp_path_factory):
    return Compressor.from_pretrained(
        tm.cached_model(request.param, tmp_path_factory.getbasetemp())
    )


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return Compressor.from_pretrained(tm.cached_model("bert", tmp_path_factory.getbasetemp()))


TEXTS = [tm.random_text(random.Random(i), n) for i, n in enumerate([5, 40, 200, 900])]


def test_scheme_comes_from_the_tokenizer(comp):
    assert comp.scheme in ("wordpiece", "sentencepiece")
    assert comp.llmlingua_name.endswith(
        "bert-base-multilingual-cased" if comp.scheme == "wordpiece" else "xlm-roberta-large"
    )


def test_rate_one_keeps_the_original_text(comp):
    for r in comp.compress(TEXTS, rate=1.0):
        assert all(r.keep)
        assert r.compressed_prompt == r.original_text
        assert r.compressed_tokens == r.origin_tokens


def test_force_tokens_are_always_kept(comp):
    text = TEXTS[3]
    r = comp.compress([text], rate=0.2, force_tokens=["\n", ".", ","])[0]
    forced = [k for w, k in zip(r.words, r.keep, strict=False) if w in ("\n", ".", ",")]
    assert len(forced) >= text.count(".") and all(forced)
    assert r.compressed_prompt.count("\n") == text.count("\n")
    assert r.compressed_prompt.count(".") == text.count(".")


def test_force_reserve_digit_keeps_numbers(comp):
    text = "The budget of 2024 was 1500 dollars and the vote was 7 to 2 in the council meeting."
    r = comp.compress([text], rate=0.1, force_reserve_digit=True)[0]
    for num in ("2024", "1500", "7", "2"):
        assert num in r.compressed_prompt.split()


def test_drop_consecutive_collapses_runs_of_force_tokens(bert):
    text = "alpha\n\n\n\nbeta gamma delta\n\n\nepsilon"
    plain = bert.compress([text], rate=0.3, force_tokens=["\n"])[0]
    dropped = bert.compress([text], rate=0.3, force_tokens=["\n"], drop_consecutive=True)[0]
    assert plain.compressed_prompt.count("\n") == 7
    assert "\n\n" not in dropped.compressed_prompt and dropped.compressed_prompt.count("\n") >= 1


def _is_subsequence(small: list[str], big: list[str]) -> bool:
    it = iter(big)
    return all(any(x == y for y in it) for x in small)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 300), rate=st.floats(0.05, 1.0))
def test_output_is_a_subsequence_of_original_words(bert, seed, n, rate):
    text = tm.random_text(random.Random(seed), n)
    r = bert.compress([text], rate=rate)[0]
    kept = [w for w, k in zip(r.words, r.keep, strict=False) if k]
    assert _is_subsequence(kept, r.words)
    assert [r.original_text[a:b] for a, b in r.kept_spans] == kept
    # every kept word appears, in order, in the compressed text
    pos = 0
    for w in kept:
        pos = r.compressed_prompt.index(w, pos) + len(w)
    assert r.compressed_tokens <= r.origin_tokens


def test_rate_controls_size_and_threshold_mode(bert):
    text = TEXTS[3]
    sizes = [bert.compress([text], rate=r)[0].compressed_tokens for r in (0.2, 0.5, 0.8)]
    assert sizes[0] < sizes[1] < sizes[2]
    r = bert.compress([text], rate=0.5)[0]
    assert 0.3 < r.rate < 0.7
    t = bert.compress([text], threshold=0.6)[0]
    assert all((p >= 0.6) == k for p, k in zip(t.word_probs, t.keep, strict=False))
    tt = bert.compress([text], target_token=50)[0]
    assert tt.compressed_tokens <= 60


def test_mask_hash_is_stable_and_span_based(bert):
    a = bert.compress(TEXTS[:3], rate=0.4)
    b = bert.compress(TEXTS[:3], rate=0.4, batch_size=1)
    assert [x.mask_hash for x in a] == [y.mask_hash for y in b]
    assert a[0].mask_hash == mask_hash(TEXTS[0], a[0].kept_spans)
    assert a[1].mask_hash != bert.compress([TEXTS[1]], rate=0.9)[0].mask_hash


def test_batching_across_prompts_does_not_change_results(comp):
    together = comp.compress(TEXTS, rate=0.4, batch_size=2)
    alone = [comp.compress([t], rate=0.4, batch_size=50)[0] for t in TEXTS]
    assert [r.keep for r in together] == [r.keep for r in alone]


def test_contexts_and_context_level_filter(bert):
    ctx = [tm.random_text(random.Random(k), 30) for k in range(4)]
    r = bert.compress([ctx], rate=0.5, use_context_level_filter=True)[0]
    assert 1 <= len(r.compressed_prompt_list) < 4
    assert r.original_text == "\n\n".join(ctx)
    assert [r.original_text[a:b] for a, b in r.word_spans] == r.words


def test_token_counter_accepts_an_encoding(bert):
    enc = tm.cached_encoding()
    r = bert.compress([TEXTS[2]], rate=0.5, token_counter=enc)[0]
    assert r.origin_tokens == len(enc.encode(TEXTS[2]))
    r2 = bert.compress([TEXTS[2]], rate=0.5, token_counter=lambda s: len(s.split()))[0]
    assert r2.origin_tokens == len(TEXTS[2].split())


def test_save_and_load_round_trip_and_llmlingua_loads_it(bert, tmp_path, monkeypatch):
    opts = CompressOptions(rate=0.3, force_tokens=["\n"])
    c = Compressor(bert.model, bert.tokenizer, opts)
    out = c.save_pretrained(tmp_path / "saved")
    meta = json.loads((out / "tacorl_compressor.json").read_text())
    assert meta["options"]["rate"] == 0.3 and meta["scheme"] == "wordpiece"
    back = Compressor.from_pretrained(out)
    assert back.options == opts
    assert back.compress([TEXTS[2]])[0].keep == c.compress([TEXTS[2]])[0].keep
    # llmlingua accepts the view whose name carries its magic substring, and agrees with us
    enc = tm.cached_encoding()
    monkeypatch.setattr(tiktoken, "encoding_for_model", lambda name: enc)
    from llmlingua import PromptCompressor

    view = out / meta["llmlingua_path"]
    ll = PromptCompressor(model_name=str(view), use_llmlingua2=True, device_map="cpu")
    res = ll.compress_prompt_llmlingua2(
        [TEXTS[2]], rate=0.3, return_word_label=True, word_sep="\x00", label_sep="\x01"
    )
    labels = [int(x.rsplit("\x01", 1)[1]) for x in res["fn_labeled_original_prompt"].split("\x00")]
    ours = back.compress([TEXTS[2]], compat=True, rate=0.3, token_counter=enc, force_tokens=[])[0]
    assert [int(k) for k in ours.keep] == labels


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        Compressor.from_pretrained(tmp_path / "nope" / "model")
    with pytest.raises(UserError):
        CompressOptions(rate=0)
    with pytest.raises(UserError, match="threshold"):
        CompressOptions(threshold=0.5, compat=True)


def test_builtin_minilm_is_deterministic():
    a = Compressor.from_pretrained("minilm")
    b = Compressor.from_pretrained("minilm")
    assert a.scheme == "wordpiece" and a.model.config.num_labels == 2
    text = TEXTS[1]
    ra, rb = a.compress([text], rate=0.5)[0], b.compress([text], rate=0.5)[0]
    assert ra.keep == rb.keep and ra.word_probs == rb.word_probs
    assert ra.compressed_prompt.lower() != ra.compressed_prompt or any(
        c.isupper() for c in ra.compressed_prompt
    )
