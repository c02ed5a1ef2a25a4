"""Metrics: real sacrebleu, rouge-score and bert-score (with the packaged MiniLM)."""

from __future__ import annotations

import math

import pytest

from tacorl_offline import metrics
from tacorl_offline.metrics import (
    METRICS,
    exact_match,
    normalize_answer,
    parse_metric_spec,
    score_pairs,
    squad_f1,
)

SENT = "The committee approved the new budget for the city library on Tuesday."
DISJOINT = "Quantum chromodynamics describes gluons binding quarks"

# ---------------------------------------------------------------------------- spec parsing


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("bleu", {"bleu": 1.0}),
        ("rougeL", {"rougeL": 1.0}),
        ("rougel", {"rougeL": 1.0}),
        ("ROUGE1", {"rouge1": 1.0}),
        ("rougeL:0.5+bleu:0.5", {"rougeL": 0.5, "bleu": 0.5}),
        (" squad_f1 : 2 + exact_match:0 ", {"squad_f1": 2.0, "exact_match": 0.0}),
        ("bertscore:0.25+rouge2", {"bertscore": 0.25, "rouge2": 1.0}),
        ({"bleu": 0.3, "rougeL": 0.7}, {"bleu": 0.3, "rougeL": 0.7}),
    ],
)
def test_parse_metric_spec(spec, expected):
    assert parse_metric_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("meteor", "unknown metric 'meteor'"),
        ("rougeL:0.5+f1:0.5", "unknown metric 'f1'"),
        ("", "empty term"),
        ("bleu+", "empty term"),
        ("bleu:abc", "is not a number"),
        ("bleu:0.5+BLEU:0.5", "appears twice"),
        ("bleu:-1", "must be finite and >= 0"),
        ("bleu:nan", "must be finite and >= 0"),
        ({}, "is empty"),
    ],
)
def test_parse_metric_spec_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_metric_spec(spec)


def test_unknown_metric_lists_valid_names():
    with pytest.raises(ValueError) as e:
        parse_metric_spec("meteor")
    for name in METRICS:
        assert name in str(e.value)


# ---------------------------------------------------------------------------- SQuAD


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("The Cat!", "cat"),
        ("  an   apple, a pear ", "apple pear"),
        ("Theatre", "theatre"),  # 'the' only as a whole word
        ("A.B.C.", "abc"),
        ("the", ""),
        ("Paris\n\tFrance", "paris france"),
    ],
)
def test_normalize_answer(text, normalised):
    assert normalize_answer(text) == normalised


@pytest.mark.parametrize(
    ("pred", "ref", "f1", "em"),
    [
        ("The Eiffel Tower", "eiffel tower.", 1.0, 1.0),
        ("the quick brown fox", "quick fox", 0.8, 0.0),  # p = 2/3, r = 1
        ("fox fox", "fox", 2 / 3, 0.0),  # p = 1/2, r = 1
        ("red", "blue", 0.0, 0.0),
        ("the", "a", 1.0, 1.0),  # both normalise to empty: agree (official script)
        ("the", "cat", 0.0, 0.0),
    ],
)
def test_squad_f1_and_em(pred, ref, f1, em):
    assert squad_f1(pred, ref) == pytest.approx(f1)
    assert exact_match(pred, ref) == em


# ---------------------------------------------------------------------------- BLEU / ROUGE


@pytest.mark.parametrize("name", ["bleu", "rouge1", "rouge2", "rougeL", "squad_f1", "exact_match"])
def test_identical_strings_score_one(name):
    row = score_pairs(name, [SENT], [SENT])[0]
    assert row[name] == pytest.approx(1.0)
    assert row["metric"] == pytest.approx(1.0)
    assert 0.0 <= row[name] <= 1.0


@pytest.mark.parametrize("name", ["bleu", "rouge1", "rouge2", "rougeL", "squad_f1", "exact_match"])
def test_disjoint_strings_score_zero(name):
    assert score_pairs(name, [DISJOINT], [SENT])[0][name] == pytest.approx(0.0, abs=1e-9)


def test_bleu_is_smoothed_for_short_partial_matches():
    # No 4-gram matches: unsmoothed corpus BLEU (upstream's HF evaluate) would give 0.
    v = metrics.bleu("the cat sat", "the cat sat down")
    assert 0.5 < v < 1.0


def test_rouge_partial_values():
    r = metrics.rouge("the cat sat", "the cat sat down")
    assert r["rouge1"] == pytest.approx(6 / 7)  # p = 1, r = 3/4
    assert r["rouge2"] == pytest.approx(0.8)  # p = 1, r = 2/3
    assert r["rougeL"] == pytest.approx(6 / 7)


def test_whole_prediction_is_scored_not_first_line():
    pred = "first line\nthe committee approved the budget"
    ref = "the committee approved the budget"
    assert score_pairs("rouge1", [pred], [ref])[0]["rouge1"] > 0.8


def test_weighted_sum_and_components():
    rows = score_pairs(
        "rougeL:0.5+exact_match:0.25", ["the cat", "a dog barked"], ["cat", "a dog sat"]
    )
    assert rows[0] == pytest.approx(
        {"rougeL": 2 / 3, "exact_match": 1.0, "metric": 0.5 * 2 / 3 + 0.25}
    )
    # rougeL: lcs 2 ("a dog"), p = r = 2/3
    assert rows[1] == pytest.approx({"rougeL": 2 / 3, "exact_match": 0.0, "metric": 1 / 3})


@pytest.mark.parametrize(("pred", "ref"), [("", SENT), ("   \n", SENT), (SENT, "")])
def test_empty_text_scores_zero_everywhere(pred, ref):
    row = score_pairs("bleu+rouge1+rouge2+rougeL+squad_f1+exact_match", [pred], [ref])[0]
    assert all(v == 0.0 for v in row.values())


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        score_pairs("bleu", ["a", "b"], ["a"])


def test_rouge_scorer_is_cached():
    assert metrics._rouge_scorer() is metrics._rouge_scorer()


# ---------------------------------------------------------------------------- BERTScore


def test_bertscore_empty_skips_the_model():
    # Both empty: no model needed (and no model loaded for this call).
    assert metrics.bertscore(["", " "], ["x", ""], model="/nonexistent/dir") == [0.0, 0.0]


def test_bertscore_missing_model_dir_is_a_user_error():
    from tacorl_offline.errors import UserError

    with pytest.raises(UserError, match="bertscore model directory not found"):
        metrics.bertscore(["a"], ["a"], model="/nonexistent/dir")


def test_bertscore_with_packaged_minilm():
    preds = [SENT, DISJOINT, "", "The committee passed the library budget on Tuesday."]
    refs = [SENT, SENT, SENT, SENT]
    rows = score_pairs("bertscore:0.5+rougeL:0.5", preds, refs)
    bs = [r["bertscore"] for r in rows]
    assert bs[0] == pytest.approx(1.0, abs=1e-4)
    assert bs[2] == 0.0
    assert bs[1] < 0.3 < bs[3] < bs[0]
    assert all(math.isfinite(v) for v in bs)
    assert rows[0]["metric"] == pytest.approx(1.0, abs=1e-4)
    # Loaded once per (path, layers).
    path = metrics.default_bertscore_model()
    assert metrics._bert_scorer(path, 6) is metrics._bert_scorer(path, 6)


# ---------------------------------------------------------------------------- several references

# SQuAD-style cases: (prediction, gold answers, F1 = max over refs, EM = max over refs)
MULTI_REF_CASES = [
    ("Denver Broncos", ["Denver Broncos", "The Denver Broncos", "Broncos"], 1.0, 1.0),
    # "the Broncos team" -> [broncos, team]: vs "Broncos" P=1/2 R=1 F1=2/3; vs "Denver Broncos" 1/2
    ("the Broncos team", ["Denver Broncos", "Broncos"], 2 / 3, 0.0),
    # [in, 1066]: vs "1066" 2/3, vs "the year 1066" 1/2, vs "in 1066 AD" P=1 R=2/3 -> 0.8
    ("in 1066", ["1066", "the year 1066", "in 1066 AD"], 0.8, 0.0),
    ("Normandy, France", ["France", "Normandy"], 2 / 3, 0.0),
    ("London", ["Paris", "Lyon"], 0.0, 0.0),
    ("The Paris", ["Paris", "Lyon"], 1.0, 1.0),  # articles are normalised away
]


@pytest.mark.parametrize(("pred", "refs", "f1", "em"), MULTI_REF_CASES)
def test_multi_reference_f1_em_is_the_max_over_references(pred, refs, f1, em) -> None:
    assert metrics.squad_f1_multi(pred, refs) == pytest.approx(f1)
    assert metrics.exact_match_multi(pred, refs) == em
    assert metrics.squad_f1_multi(pred, refs) == max(metrics.squad_f1(pred, r) for r in refs)
    row = metrics.score_multi("squad_f1+exact_match", [pred], [refs])[0]
    assert row["squad_f1"] == pytest.approx(f1) and row["exact_match"] == em
    assert row["metric"] == pytest.approx(f1 + em)


def test_score_multi_without_references_is_nan_and_blends_take_maxima_per_metric() -> None:
    rows = metrics.score_multi("squad_f1:0.5+exact_match:0.5", ["a cat", "x"], [["the cat"], []])
    assert rows[0]["metric"] == pytest.approx(1.0)
    assert all(math.isnan(v) for v in rows[1].values())
    # The weighted sum is formed from the per-metric maxima.
    r = metrics.score_multi("squad_f1:1+exact_match:1", ["b c"], [["x y", "b c d e f"]])[0]
    assert r["exact_match"] == 0.0 and r["squad_f1"] == pytest.approx(2 * (1 * 0.4) / 1.4)
    assert r["metric"] == pytest.approx(r["squad_f1"])
    with pytest.raises(ValueError):
        metrics.squad_f1_multi("x", [])
