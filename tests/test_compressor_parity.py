"""Compatibility mode against llmlingua 0.2.2 itself: identical kept-word labels.

llmlingua's constructor asks tiktoken for cl100k, which cannot be downloaded here, so both
sides count with the same locally built ``tiktoken.Encoding`` (tests/tiny_models.py).
"""

from __future__ import annotations

import random

import pytest
import tiktoken

from tacorl_offline.compressor import Compressor
from tests import tiny_models as tm

SEP, LSEP = "\x00|\x00", "\x01"


@pytest.fixture(scope="module")
def enc():
    return tm.cached_encoding()


@pytest.fixture(scope="module")
def patched_tiktoken(enc):
    mp = pytest.MonkeyPatch()
    mp.setattr(tiktoken, "encoding_for_model", lambda name: enc)
    mp.setattr(tiktoken, "get_encoding", lambda name: enc)
    yield
    mp.undo()


@pytest.fixture(scope="module", params=["bert", "xlmr"])
def pair(request, tmp_path_factory, enc, patched_tiktoken):
    from llmlingua import PromptCompressor

    path = tm.cached_model(request.param, tmp_path_factory.getbasetemp())
    ll = PromptCompressor(model_name=str(path), use_llmlingua2=True, device_map="cpu")
    ours = Compressor.from_pretrained(path, token_counter=enc)
    return ll, ours


def ll_labels(res: dict) -> list[tuple[str, int]]:
    out = []
    for item in res["fn_labeled_original_prompt"].split(SEP):
        w, lab = item.rsplit(LSEP, 1)
        out.append((w, int(lab)))
    return out


def _cases() -> list[tuple[str, dict]]:
    rng = random.Random(7)
    opts = [
        {"rate": 0.5},
        {"rate": 0.33, "force_tokens": ["\n", "."]},
        {"rate": 0.6, "force_tokens": ["\n", ",", "?", "\n\n"], "drop_consecutive": True},
        {"rate": 0.4, "force_reserve_digit": True},
        {"rate": 1.0},
        {"target_token": 40},
        {"rate": 0.5, "token_to_word": "first"},
        {
            "rate": 0.25,
            "force_tokens": ["!", "\n"],
            "force_reserve_digit": True,
            "drop_consecutive": True,
        },
    ]
    sizes = [1, 4, 30, 120, 450, 1000]
    cases = []
    for i in range(22):
        text = tm.random_text(rng, sizes[i % len(sizes)], digits=i % 3 != 0, newlines=i % 4 != 1)
        cases.append((text, opts[i % len(opts)]))
    cases.append(
        (
            "Budget 2024: 1,250 items.\nVote 7-2 at 9.30pm.",
            {"rate": 0.5, "force_reserve_digit": True},
        )
    )
    cases.append(("Hello.", {"rate": 0.5, "force_tokens": ["\n"]}))
    return cases


CASES = _cases()


@pytest.mark.parametrize("case", range(len(CASES)))
def test_kept_words_match_llmlingua(pair, case):
    ll, ours = pair
    text, kw = CASES[case]
    expected = ll_labels(
        ll.compress_prompt_llmlingua2(
            [text], return_word_label=True, word_sep=SEP, label_sep=LSEP, **kw
        )
    )
    got = ours.compress([text], compat=True, **kw)[0]
    assert list(zip(got.words, [int(k) for k in got.keep], strict=False)) == expected
    assert got.origin_tokens == ll.get_token_length(text, use_oai_tokenizer=True)


def test_cases_are_varied():
    texts = [t for t, _ in CASES]
    assert sum(len(t.split()) > 700 for t in texts) >= 3  # several chunks
    assert any("\n" in t for t in texts) and any(any(c.isdigit() for c in t) for t in texts)
    assert any(kw.get("rate") == 1.0 for _, kw in CASES) and any(len(t.split()) <= 2 for t in texts)


def test_context_level_filter_matches_llmlingua(pair):
    ll, ours = pair
    rng = random.Random(11)
    contexts = [tm.random_text(rng, rng.randint(20, 90)) for _ in range(5)]
    for kw in (
        {"rate": 0.5},
        {"target_token": 60},
        {"rate": 0.4, "context_level_rate": 0.5, "force_tokens": ["\n"]},
    ):
        res = ll.compress_prompt_llmlingua2(
            contexts,
            use_context_level_filter=True,
            return_word_label=True,
            word_sep=SEP,
            label_sep=LSEP,
            **kw,
        )
        got = ours.compress([contexts], compat=True, use_context_level_filter=True, **kw)[0]
        assert list(zip(got.words, [int(k) for k in got.keep], strict=False)) == ll_labels(res)
        assert len(got.compressed_prompt_list) == len(res["compressed_prompt_list"])


def test_batched_compat_equals_one_by_one(pair):
    _, ours = pair
    texts = [t for t, kw in CASES[:8] if kw == {"rate": 0.5}] + [CASES[6][0], CASES[12][0]]
    together = ours.compress(texts, compat=True, rate=0.5, batch_size=3)
    alone = [ours.compress([t], compat=True, rate=0.5)[0] for t in texts]
    assert [r.keep for r in together] == [r.keep for r in alone]
