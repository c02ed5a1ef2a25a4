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
