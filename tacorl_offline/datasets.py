"""Which dataset and split a phase works on: the one the user means.

Design decisions:
- A ``--dataset``/``--split`` flag is a demand: if the warehouse lacks it, the phase stops
  with one line listing the datasets and splits it does hold.
- The config's ``data.dataset``/``data.split`` is a preference: used when present; when the
  warehouse holds exactly one dataset (or the chosen dataset exactly one split) that one is
  used instead, with a note saying so. That is the user who ingested ``--dataset mine`` with
  a config that still names the sample dataset: the phase follows the data, not the advice.
- Anything else is an error listing what is there, never "run ingest first" when the user
  just did.
- :func:`choose` is pure; :func:`settle` reads the warehouse and returns an updated config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tacorl_offline.errors import UserError

Present = Mapping[str, Mapping[str, int]]  # dataset -> split -> prompts


@dataclass(frozen=True)
class Choice:
    dataset: str
    split: str
    note: str | None = None


def describe(present: Present) -> str:
    """``mine (train: 20, dev: 5), other (train: 3)``."""
    return ", ".join(
        f"{d} ({', '.join(f'{s}: {n}' for s, n in splits.items())})"
        for d, splits in present.items()
    )


def choose(
    present: Present,
    dataset: str,
    split: str,
    *,
    dataset_given: bool = False,
    split_given: bool = False,
    where: str = "the warehouse",
) -> Choice:
    if not present:
        raise UserError(f"{where} holds no prompts yet; run 'tacorl-offline ingest FILE' first")
    holds = f"{where} holds {describe(present)}"
    notes = []
    if dataset not in present:
        if dataset_given or len(present) != 1:
            raise UserError(
                f"no dataset '{dataset}' in {where}; it holds {describe(present)}; "
                "pass --dataset NAME (and --split NAME) or set data.dataset"
            )
        (only,) = present
        notes.append(f"using dataset '{only}', the only one in {where} (config: '{dataset}')")
        dataset = only
    splits = present[dataset]
    if split not in splits:
        if split_given or len(splits) != 1:
            raise UserError(
                f"dataset '{dataset}' has no split '{split}'; {holds}; pass --split NAME "
                "or set data.split"
            )
        (only_split,) = splits
        notes.append(f"using split '{only_split}', the only one of '{dataset}' (config: '{split}')")
        split = only_split
    return Choice(dataset, split, "; ".join(notes) or None)


def present_in(con: Any) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for d, s, n in con.execute(
        "SELECT dataset, split, count(*) FROM dataset_items GROUP BY 1, 2"
        " ORDER BY min(ingested_at), 1, 2"
    ).fetchall():
        out.setdefault(d, {})[s] = int(n)
    return out


def settle(
    cfg: Any,
    con: Any,
    *,
    dataset_given: bool = False,
    split_given: bool = False,
    where: str = "the warehouse",
) -> tuple[Any, str | None]:
    """``cfg`` with ``data.dataset``/``data.split`` set to what the phase will use, and a note
    when that differs from the config. ``con`` is an open warehouse connection."""
    c = choose(
        present_in(con),
        cfg.data.dataset,
        cfg.data.split,
        dataset_given=dataset_given,
        split_given=split_given,
        where=where,
    )
    if (c.dataset, c.split) == (cfg.data.dataset, cfg.data.split):
        return cfg, None
    data = cfg.data.model_copy(update={"dataset": c.dataset, "split": c.split})
    return cfg.model_copy(update={"data": data}), c.note
