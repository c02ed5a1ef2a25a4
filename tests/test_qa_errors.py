"""bench/qa_errors.py's classification of a compressed QA prompt's loss against the
extractive stand-in (which answers with the sentence overlapping the question most)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from qa_errors import classify

CONTEXT = (
    "The river floods every spring near the old mill. "
    "Engineers built a dam in 1950 to stop the floods. "
    "Tourists visit the mill in summer."
)
QUESTION = "When did engineers build the dam?"


def test_whole_answer_sentence_kept_is_ok() -> None:
    compressed = "Engineers built a dam in 1950 to stop the floods. Tourists visit."
    assert classify(CONTEXT, QUESTION, compressed, 0.5) == ("ok", 0.0)


def test_answer_sentence_partly_kept_within_budget() -> None:
    kind, lost = classify(CONTEXT, QUESTION, "river. Engineers built dam 1950. mill.", 0.5)
    assert kind == "partial (fits)" and 0 < lost < 1


def test_another_sentence_wins_the_overlap() -> None:
    # the answer sentence lost its overlapping words; the first sentence keeps "engineers"
    compressed = "engineers build river floods spring mill. a in to the. Tourists."
    kind, lost = classify(CONTEXT, QUESTION, compressed, 0.5)
    assert kind == "wrong sentence" and 0.5 < lost < 1


def test_answer_sentence_longer_than_the_budget() -> None:
    long_context = "Engineers built a large concrete dam across the river in 1950. Short one."
    kind, _ = classify(long_context, QUESTION, "Engineers built dam 1950. Short one.", 0.5)
    assert kind == "partial (over budget)"
