"""Table tests of the compressor's pure logic: words, chunks, selection, text, sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tacorl_offline.compressor import chunking, sampling, selection, text
from tacorl_offline.compressor.compat import align, ll_begins
from tacorl_offline.compressor.words import detect_scheme, group_words, starts_word


@pytest.mark.parametrize(
    ("tokens", "prev", "scheme", "force", "expected"),
    [
        ("##ing", "play", "wordpiece", set(), False),
        ("play", "the", "wordpiece", set(), True),
        ("##.", "a", "wordpiece", {"."}, True),
        ("▁world", "▁hello", "sentencepiece", set(), True),
        ("llo", "▁he", "sentencepiece", set(), False),
        (",", "▁he", "sentencepiece", set(), True),
        ("Ġworld", "Ġhello", "bytelevel", set(), True),
        ("ing", "Ġplay", "bytelevel", set(), False),
        ("Ċ", "Ġplay", "bytelevel", set(), True),
        ("x", None, "wordpiece", set(), True),
    ],
)
def test_starts_word(tokens, prev, scheme, force, expected):
    assert starts_word(tokens, prev, scheme, force) is expected


@pytest.mark.parametrize(
    ("token", "scheme", "expected"),
    [
        ("##a", "wordpiece", False),
        ("a", "wordpiece", True),
        ("()", "sentencepiece", True),
        ("ab", "sentencepiece", False),
    ],
)
def test_llmlingua_word_rule(token, scheme, expected):
    # upstream checks `token in string.punctuation`, a substring test: "()" counts as punctuation
    assert ll_begins(token, scheme, set(), set()) is expected


def test_group_words_wordpiece_spans_survive_case_and_spacing():
    t = "Hello,  WORLD playing"
    toks = ["Hello", ",", "WORLD", "play", "##ing"]
    offs = [(0, 5), (5, 6), (8, 13), (14, 18), (18, 21)]
    g = group_words(toks, offs, t, "wordpiece")
    assert [t[a:b] for a, b in g.spans] == ["Hello", ",", "WORLD", "playing"]
    assert g.word_of_token.tolist() == [0, 1, 2, 3, 3]


def test_group_words_drops_whitespace_only_words():
    t = "a  b"
    g = group_words(["▁a", "▁", "▁b"], [(0, 1), (1, 2), (2, 4)], t, "sentencepiece")
    assert [t[a:b] for a, b in g.spans] == ["a", "b"]
    assert g.word_of_token.tolist() == [0, -1, 1]


def test_detect_scheme_from_tokenizer_json():
    assert detect_scheme({"model": {"type": "WordPiece"}}) == "wordpiece"
    assert (
        detect_scheme({"model": {"type": "Unigram"}, "pre_tokenizer": {"type": "Metaspace"}})
        == "sentencepiece"
    )
    assert (
        detect_scheme({"model": {"type": "BPE"}, "pre_tokenizer": {"type": "ByteLevel"}})
        == "bytelevel"
    )
    assert detect_scheme({"model": {"type": "BPE"}}, {"▁a": 0, "▁b": 1, "c": 2}) == "sentencepiece"


@pytest.mark.parametrize(
    ("ends", "n", "max_len", "expected"),
    [
        ([], 5, 510, [(0, 5)]),
        ([3], 10, 5, [(0, 4), (4, 10)]),  # no end token: max_len + 1 tokens (upstream quirk)
        ([], 12, 5, [(0, 6), (6, 12)]),
    ],
)
def test_llmlingua_chunks(ends, n, max_len, expected):
    is_end = np.zeros(n, dtype=bool)
    is_end[ends] = True
    assert chunking.llmlingua_chunks(is_end, max_len) == expected


@given(st.lists(st.booleans(), max_size=60), st.integers(2, 12))
def test_chunks_cover_stream_within_window(flags, max_len):
    got = chunking.chunks(np.asarray(flags, dtype=bool), max_len)
    assert [a for a, _ in got] == ([0] + [b for _, b in got[:-1]] if got else [])
    assert (got[-1][1] if got else 0) == len(flags)
    assert all(0 < b - a <= max_len for a, b in got)


def test_seq_mean_f32_is_left_to_right_float32():
    p = np.array([0.1, 0.7, 0.3, 0.9, 0.2], dtype=np.float32)
    got = selection.seq_mean_f32(p, np.array([0, 3]), np.array([3, 2]))
    w0 = (np.float32(0) + p[0] + p[1] + p[2]) / np.float32(3)
    assert got.dtype == np.float32 and got[0] == w0 and got[1] == (p[3] + p[4]) / np.float32(2)


@pytest.mark.parametrize(
    ("probs", "weights", "rate", "forced", "expected"),
    [
        ([0.9, 0.1, 0.5, 0.7], [1, 1, 1, 1], 0.5, [0, 0, 0, 0], [1, 0, 0, 1]),
        ([0.9, 0.1, 0.5, 0.7], [1, 1, 1, 1], 0.5, [0, 1, 0, 0], [1, 1, 0, 0]),
        ([0.9, 0.1, 0.5, 0.7], [3, 1, 1, 1], 0.5, [0, 0, 0, 0], [1, 0, 0, 0]),
        ([0.2, 0.2, 0.2], [1, 1, 1], 0.34, [0, 0, 0], [1, 0, 0]),
        ([0.2, 0.1], [1, 1], 1.0, [0, 0], [1, 1]),
    ],
)
def test_keep_by_rate(probs, weights, rate, forced, expected):
    got = selection.keep_by_rate(
        np.array(probs), np.array(weights), rate, np.array(forced, dtype=bool)
    )
    assert got.astype(int).tolist() == expected


def test_keep_by_threshold_is_inclusive():
    got = selection.keep_by_threshold(
        np.array([0.5, 0.49, 0.8]), 0.5, np.array([0, 1, 0], dtype=bool)
    )
    assert got.tolist() == [True, True, True]
    assert selection.keep_by_threshold(np.array([0.49]), 0.5, np.zeros(1, bool)).tolist() == [False]


def test_drop_consecutive_keeps_first_of_a_run():
    words = ["a", "\n", "\n", "b", "\n", "c", "\n"]
    is_force = np.array([w == "\n" for w in words])
    keep = np.array([1, 1, 1, 0, 1, 1, 1], dtype=bool)
    assert selection.drop_consecutive(keep, words, is_force).astype(int).tolist() == [
        1,
        1,
        0,
        0,
        0,
        1,
        1,
    ]


def test_llmlingua_chunk_keep_percentile_and_weights():
    words = ["a", "b", "c", "d"]
    p = np.array([0.1, 0.9, 0.5, 0.7], dtype=np.float32)
    # reduce 0.5 -> percentile 51 of [0.1, 0.5, 0.7, 0.9] = 0.5 + 0.53*0.2 (0.606): keep 0.7 and 0.9
    keep = selection.llmlingua_chunk_keep(words, p, np.ones(4, dtype=np.int64), 0.5, [], False)
    assert keep.tolist() == [False, True, False, True]
    # "c" repeated 5 times by the counter pulls the percentile down to 0.5: still strict ">"
    keep = selection.llmlingua_chunk_keep(words, p, np.array([1, 1, 5, 1]), 0.5, [], False)
    assert keep.tolist() == [False, True, False, True]
    # forced 1.0 at the threshold is kept (upstream's "threshold == 1.0" clause)
    ones = np.ones(4, dtype=np.float32)
    assert selection.llmlingua_chunk_keep(
        words, ones, np.ones(4, dtype=np.int64), 0.5, [], False
    ).all()


def test_rebuild_preserves_original_text():
    t = "  Hello, World!\n\nBye now. "
    spans = [(2, 7), (7, 8), (9, 14), (14, 15), (17, 20), (21, 24), (24, 25)]
    assert text.rebuild(t, spans, [True] * 7) == t
    assert text.rebuild(t, spans, [1, 0, 1, 0, 1, 0, 1]) == "  Hello World\n\nBye. "
    assert text.rebuild(t, spans, [0, 1, 0, 1, 0, 1, 0]) == ",! now"
    assert text.rebuild(t, spans, [0] * 7) == ""


def test_replace_map_tracks_original_positions():
    rm = text.ReplaceMap("a\nb\n\nc", [("\n", "[NEW0]")])
    assert rm.text == "a[NEW0]b[NEW0][NEW0]c"
    assert rm.span(1, 7) == (1, 2)
    assert rm.span(7, 8) == (2, 3)
    assert rm.span(20, 21) == (5, 6)


def test_align_recovers_spans_after_retokenization():
    # a chunk starting mid-word: "##ing" decodes to the literal "##ing", re-tokenized as #, #, ing
    got = align(["##ing"], [(10, 13)], ["#", "#", "ing"], "wordpiece")
    assert got == [None, None, (10, 13)]
    assert align(["a", "b"], [(0, 1), (2, 3)], ["a", "b"], "wordpiece") == [(0, 1), (2, 3)]


def test_split_at_prefers_longest_needle():
    assert text.split_at("a\n\nb\nc", ["\n", "\n\n"]) == [
        (0, 1, False),
        (1, 3, True),
        (3, 4, False),
        (4, 5, True),
        (5, 6, False),
    ]


def test_bernoulli_log_prob_and_entropy_by_hand():
    p = torch.tensor([0.8, 0.25], requires_grad=True)
    acts = torch.tensor([[True, False], [False, True]])
    lp = sampling.log_prob(p, acts)
    assert torch.allclose(lp, torch.log(torch.tensor([0.8 * 0.75, 0.2 * 0.25])))
    ent = sampling.entropy(p)
    h = lambda q: -(q * np.log(q) + (1 - q) * np.log(1 - q))  # noqa: E731
    assert ent.item() == pytest.approx(h(0.8) + h(0.25), rel=1e-5)
    lp.sum().backward()
    assert p.grad is not None and torch.all(p.grad != 0)


def test_draw_is_reproducible_and_follows_p():
    p = torch.tensor([0.0, 1.0, 0.5] * 200)
    a = sampling.draw(p, 4, torch.Generator().manual_seed(3))
    b = sampling.draw(p, 4, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not a[:, 0::3].any() and a[:, 1::3].all() and 0.35 < a[:, 2::3].float().mean() < 0.65
