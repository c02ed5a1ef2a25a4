"""Heuristic baselines: hand-worked golden outputs, and the compressor's own budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tacorl_offline.compressor import Compressor
from tacorl_offline.compressor.layout import Layout
from tacorl_offline.hashing import mask_hash
from tacorl_offline.heuristics import (
    baseline_keep,
    compress_layout,
    is_droppable,
    is_punctuation,
)

TEXT = "The cat sat on the mat, and the dog barked loudly."
WORDS = ["The", "cat", "sat", "on", "the", "mat", ",", "and", "the", "dog", "barked", "loudly", "."]
# model tokens per word: "barked" and "loudly" are two pieces each; 15 tokens in all
WEIGHTS = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 1]


def _layout(forced: list[int] = ()) -> Layout:
    spans, pos = [], 0
    for w in WORDS:
        pos = TEXT.index(w, pos)
        spans.append((pos, pos + len(w)))
        pos += len(w)
    f = np.zeros(len(WORDS), dtype=bool)
    f[list(forced)] = True
    return Layout(
        text=TEXT,
        ids=np.zeros(15, dtype=np.int64),
        chunks=[(0, 15)],
        word_of_token=np.repeat(np.arange(len(WORDS)), WEIGHTS),
        spans=spans,
        words=list(WORDS),
        forced=f,
        is_force=np.zeros(len(WORDS), dtype=bool),
        weights=np.asarray(WEIGHTS, dtype=np.int64),
    )


# Hand-worked (see the module docstring of tacorl_offline.heuristics):
# rate 0.5 -> budget 7.5 tokens; rate 0.8 -> budget 12 tokens.
# lead keeps words in order while they fit.
# stopword ranks content words (cat sat mat dog barked loudly) first, in order, then the
# stopwords and punctuation (The on the , and the .) in order, and keeps the longest prefix
# of that ranking that fits: at 0.5 cat+sat+mat+dog+barked = 6 tokens (loudly would make 8);
# at 0.8 all content (8 tokens) + The, on, the, "," = 12 tokens.
GOLDEN = {
    ("lead", 0.5): "The cat sat on the mat,",
    ("lead", 0.8): "The cat sat on the mat, and the dog barked",
    ("stopword", 0.5): "cat sat mat dog barked",
    ("stopword", 0.8): "The cat sat on the mat, dog barked loudly",
}


@pytest.mark.parametrize(("name", "rate"), sorted(GOLDEN))
def test_stopword_and_lead_match_hand_worked_outputs(name: str, rate: float) -> None:
    h = compress_layout(_layout(), name, rate)
    assert h.text == GOLDEN[(name, rate)]
    kept = set(h.kept_spans)
    kept_tokens = sum(w for w, sp in zip(WEIGHTS, _layout().spans, strict=True) if sp in kept)
    assert kept_tokens <= rate * sum(WEIGHTS)
    assert h.mask_hash == mask_hash(TEXT, h.kept_spans)


def test_forced_words_are_kept_first_by_every_baseline() -> None:
    lay = _layout(forced=[12])  # the final "." is forced (e.g. force_tokens=["."])
    for name in ("lead", "stopword", "random"):
        keep = baseline_keep(name, lay.words, lay.weights, lay.forced, 0.5, seed=1)
        assert keep[12]
    assert compress_layout(lay, "lead", 0.5).text == "The cat sat on the mat."


def test_original_keeps_the_text_and_random_is_seeded() -> None:
    lay = _layout()
    orig = compress_layout(lay, "original", 0.3)
    assert orig.text == TEXT and orig.n_kept == len(WORDS)
    a = compress_layout(lay, "random", 0.5, seed=0)
    b = compress_layout(lay, "random", 0.5, seed=0)
    assert a == b
    texts = {compress_layout(lay, "random", 0.5, seed=s).text for s in range(6)}
    assert len(texts) > 1  # different seeds drop different words


def test_word_classes() -> None:
    assert is_punctuation(",") and is_punctuation("...") and is_punctuation("—")
    assert not is_punctuation("a,b") and not is_punctuation("")
    assert is_droppable("The") and is_droppable("won't") and is_droppable(";")
    assert not is_droppable("cat") and not is_droppable("1975")


def test_baselines_spend_the_same_budget_as_greedy_compression(tiny_bert: Path) -> None:
    comp = Compressor.from_pretrained(tiny_bert)
    text = " ".join(["the river runs past the old mill, and the miller sleeps."] * 4)
    opts = comp.options.replace(rate=0.5)
    (lay,) = comp.layouts([text], opts)
    total = float(lay.weights.sum())
    greedy = np.asarray(comp.compress([text], rate=0.5)[0].keep)
    for name in ("lead", "stopword", "random"):
        h = compress_layout(lay, name, 0.5, seed=3)
        keep = np.array([s in set(h.kept_spans) for s in lay.spans])
        used = float(lay.weights[keep].sum())
        assert used <= 0.5 * total + 1e-9
        # the same rule as the compressor: the budget is filled up to the first word that
        # does not fit
        assert used > 0.5 * total - lay.weights.max()
    # the model's greedy mask fills the very same budget under the same rule
    used = float(lay.weights[greedy].sum())
    assert 0.5 * total - lay.weights.max() < used <= 0.5 * total + 1e-9
