"""The recipes' held-out split: deterministic by prompt, disjoint, the share asked for."""

from __future__ import annotations

import random
from pathlib import Path

from pipelines import RECIPES
from tacorl_offline.chain import recipe_config, split_by_prompt
from tacorl_offline.ingest import read_records
from tacorl_offline.resources import resource_dir


def _sample():
    quick = RECIPES["summarization"]
    records, errors = read_records(
        Path(resource_dir("data")) / quick.data, recipe_config(quick).data
    )
    assert records and not errors
    return quick, records


def test_split_by_prompt_is_deterministic_disjoint_and_order_free() -> None:
    quick, records = _sample()
    kept, held = split_by_prompt(records, quick.heldout_share)
    assert (len(kept), len(held)) == (60, 20)  # the quick start: 60 train, 20 held out
    ids = lambda rs: [r.prompt_id for r in rs]  # noqa: E731
    assert not set(ids(kept)) & set(ids(held))
    assert sorted(ids(kept) + ids(held)) == sorted(ids(records))
    # kept keeps the file's order; the split does not depend on it
    assert ids(kept) == [r.prompt_id for r in records if r.prompt_id not in set(ids(held))]
    shuffled = list(records)
    random.Random(0).shuffle(shuffled)
    assert set(ids(split_by_prompt(shuffled, quick.heldout_share)[1])) == set(ids(held))
    # another salt carves another part; share 0 holds nothing out
    _, other = split_by_prompt(records, quick.heldout_share, salt="validation")
    assert len(other) == 20 and set(ids(other)) != set(ids(held))
    assert split_by_prompt(records, 0.0) == (records, [])


def test_qa_recipe_carves_validation_by_paragraph() -> None:
    """The qa recipe's 'val' split: a fifth of the training paragraphs, every question of a
    paragraph on one side, and the run validates on it."""
    from tacorl_offline.chain import _recipe_records

    qa = RECIPES["qa"]
    cfg = recipe_config(qa)
    files, records_of = _recipe_records(qa, cfg)
    train, val = records_of[cfg.data.split], records_of["val"]
    all_train = read_records(Path(resource_dir("data")) / qa.data, cfg.data)[0]
    assert len(train) + len(val) == len(all_train)
    texts = lambda rs: {r.text for r in rs}  # noqa: E731
    assert not texts(train) & texts(val)
    share = len(texts(val)) / len(texts(all_train))
    assert abs(share - qa.val_share) < 0.01
    assert files["val"] == files[cfg.data.split] and "heldout" in records_of
    # by text: two records with the same text never straddle the carve
    kept, out = split_by_prompt(all_train, 0.5, salt="val", group=lambda r: r.text)
    assert not texts(kept) & texts(out)
