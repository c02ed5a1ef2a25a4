"""LLMLingua-2-style alignment labels against hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from tacorl_offline.alignment import (
    align,
    align_text,
    labels_for_spans,
    normalise,
    trim_to_rate,
    words_with_spans,
)


@pytest.mark.parametrize(
    ("word", "norm"),
    [
        ("Kings,", "king"),
        ("studies", "study"),
        ("walked", "walk"),
        ("The", "the"),
        ("(1066)", "1066"),
        ("is", "is"),
    ],
)
def test_normalise(word: str, norm: str) -> None:
    assert normalise(word) == norm


def test_exact_alignment_of_an_extractive_answer() -> None:
    original = [
        "The",
        "Normans",
        "gave",
        "their",
        "name",
        "to",
        "Normandy",
        ",",
        "a",
        "region",
        "in",
        "France",
        ".",
    ]
    answer = ["gave", "their", "name", "to", "Normandy"]
    al = align(original, answer)
    assert al.labels.tolist() == [False, False, True, True, True, True, True] + [False] * 6
    assert al.matched == 5 and al.variation_rate == 0.0


def test_repeated_word_aligns_in_order_not_to_first_occurrence() -> None:
    original = ["the", "cat", "saw", "the", "dog", "near", "the", "house"]
    answer = ["the", "dog"]
    # "the" matches the first "the" (pointer 0), then "dog" is found after it.
    assert align(original, answer).labels.tolist() == [
        True,
        False,
        False,
        False,
        True,
        False,
        False,
        False,
    ]
    # with an order that forces the later one: "dog ... the house"
    al = align(original, ["dog", "the", "house"])
    assert al.labels.tolist() == [False, False, False, False, True, False, True, True]


def test_normalised_match_when_no_exact_one_and_unmatched_words_count() -> None:
    original = ["Kings", "ruled", "the", "lands,", "then", "studied", "law."]
    answer = ["king", "ruled", "land", "study", "dragons"]
    al = align(original, answer)
    assert al.labels.tolist() == [True, True, False, True, False, True, False]
    assert al.matched == 4
    assert al.variation_rate == pytest.approx(0.2)


def test_window_limits_the_search() -> None:
    original = ["a"] * 10 + ["target"]
    assert not align(original, ["target"], window=5).labels.any()
    assert align(original, ["target"], window=20).labels[-1]


def test_labels_map_onto_subword_spans() -> None:
    text = "Rollo's raiders, from Denmark."
    words, _spans = words_with_spans(text)
    assert words == ["Rollo's", "raiders,", "from", "Denmark."]
    al, sp = align_text(text, "raiders, from Denmark.")
    kept = [s for s, k in zip(sp, al.labels, strict=True) if k]
    # a compressor segmentation: "Rollo", "'", "s", "raiders", ",", "from", "Denmark", "."
    comp = [(0, 5), (5, 6), (6, 7), (8, 15), (15, 16), (17, 21), (22, 29), (29, 30)]
    assert labels_for_spans(kept, comp).tolist() == [
        False,
        False,
        False,
        True,
        True,
        True,
        True,
        True,
    ]


def test_trim_to_rate_keeps_earliest_aligned_words() -> None:
    labels = np.array([True, True, False, True, True])
    weights = np.array([1, 2, 1, 1, 1])
    assert trim_to_rate(labels, weights, 0.6).tolist() == [True, True, False, False, False]
    assert trim_to_rate(labels, weights, 1.0).tolist() == labels.tolist()
