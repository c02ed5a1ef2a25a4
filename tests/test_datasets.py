"""Dataset selection follows the user: one dataset in the warehouse is used; otherwise the
error lists what is there (never 'run ingest first' right after an ingest)."""

from __future__ import annotations

import asyncio

import pytest

from tacorl_offline.config import resolve
from tacorl_offline.datasets import choose
from tacorl_offline.errors import UserError
from tacorl_offline.fill import run_fill
from tacorl_offline.ingest import read_records
from tacorl_offline.ingest_store import store_records
from tacorl_offline.warehouse import Warehouse
from tests.conftest import write_upstream_json

ONE = {"mine": {"train": 20}}
TWO = {"mine": {"train": 20, "dev": 5}, "other": {"train": 3}}

CASES = [
    # (present, dataset, split, given flags, expected (dataset, split) or error substring)
    (ONE, "mine", "train", {}, ("mine", "train")),
    (ONE, "sample-summarization", "train", {}, ("mine", "train")),  # the user
    (ONE, "sample-summarization", "test", {}, ("mine", "train")),  # only split, too
    (TWO, "mine", "dev", {}, ("mine", "dev")),
    (TWO, "other", "dev", {}, ("other", "train")),
    (
        ONE,
        "x",
        "train",
        {"dataset_given": True},
        "no dataset 'x' in W; it holds mine (train: 20); pass --dataset",
    ),
    (
        TWO,
        "sample",
        "train",
        {},
        "no dataset 'sample' in W; it holds mine (train: 20, dev: 5), other (train: 3);",
    ),
    (
        TWO,
        "mine",
        "test",
        {},
        "dataset 'mine' has no split 'test'; W holds mine (train: 20, dev: 5)",
    ),
    (ONE, "mine", "dev", {"split_given": True}, "dataset 'mine' has no split 'dev'"),
    ({}, "mine", "train", {}, "W holds no prompts yet; run 'tacorl-offline ingest FILE' first"),
]


@pytest.mark.parametrize(("present", "dataset", "split", "given", "expected"), CASES)
def test_choose(present, dataset, split, given, expected) -> None:
    if isinstance(expected, tuple):
        c = choose(present, dataset, split, where="W", **given)
        assert (c.dataset, c.split) == expected
        assert (c.note is None) == ((dataset, split) == expected)
    else:
        with pytest.raises(UserError) as ei:
            choose(present, dataset, split, where="W", **given)
        assert expected in str(ei.value) and "\n" not in str(ei.value)


def _ingest(w: Warehouse, path, dataset: str, split: str = "train") -> None:
    cfg = resolve(None, environ={})
    records, _ = read_records(path, cfg.data)
    store_records(w, records, dataset=dataset, split=split, source_path=path)


def test_fill_after_ingest_under_another_name_uses_it(tmp_path) -> None:
    w = Warehouse(tmp_path / "w.duckdb")
    _ingest(w, write_upstream_json(tmp_path / "d.json", 6), "mine")
    cfg = resolve(
        None,
        environ={},
        overrides={"warehouse": str(w.path), "data.dataset": "sample-summarization"},
    )
    s = asyncio.run(run_fill(cfg, warehouse=w))
    assert (s.dataset, s.split, s.filled) == ("mine", "train", 6)
    assert any("using dataset 'mine'" in n for n in s.notes)

    _ingest(w, write_upstream_json(tmp_path / "e.json", 3, words=10), "other", "dev")
    with pytest.raises(UserError) as ei:
        asyncio.run(run_fill(cfg, warehouse=w))
    msg = str(ei.value)
    assert "mine (train: 6), other (dev: 3)" in msg and "run 'tacorl-offline ingest'" not in msg
