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
- On the command line (``strict=True``) a config's dataset is not trusted over the data when
  they disagree: a user who copied ``configs/summarization.yaml``, kept its
  ``data.dataset: sample-summarization`` and ingested ``--dataset mine`` last must not pay for
  the sample. So when the warehouse holds several datasets and the config names one that is
  not the one ingested last, and no ``--dataset`` was given, the phase refuses in one line
  naming both; ``--dataset`` (or a ``data.dataset`` naming the last ingest) settles it. The
  command prints the dataset, split and prompt count it uses before any call.
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
    last: str | None = None,
) -> Choice:
    """``last``: the dataset ingested last; given (strict mode), a config's dataset that is not
    it is refused when the warehouse holds several (see the module docstring)."""
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
    elif last is not None and not dataset_given and len(present) > 1 and dataset != last:
        raise UserError(
            f"which dataset? the config names '{dataset}' but '{last}' was ingested last into "
            f"{where} (it holds {describe(present)}); pass --dataset {last} or --dataset "
            f"{dataset}, or set data.dataset"
        )
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


def last_ingested(con: Any) -> str | None:
    rows = con.execute(
        "SELECT dataset FROM dataset_items GROUP BY 1 ORDER BY max(ingested_at) DESC, 1 LIMIT 1"
    ).fetchall()
    return str(rows[0][0]) if rows else None


def settle(
    cfg: Any,
    con: Any,
    *,
    dataset_given: bool = False,
    split_given: bool = False,
    where: str = "the warehouse",
    strict: bool = False,
) -> tuple[Any, str | None]:
    """``cfg`` with ``data.dataset``/``data.split`` set to what the phase will use, and a note
    when that differs from the config. ``con`` is an open warehouse connection. ``strict``:
    the command line's rule against a copied config's dataset (see the module docstring)."""
    c = choose(
        present_in(con),
        cfg.data.dataset,
        cfg.data.split,
        dataset_given=dataset_given,
        split_given=split_given,
        where=where,
        last=last_ingested(con) if strict else None,
    )
    if (c.dataset, c.split) == (cfg.data.dataset, cfg.data.split):
        return cfg, None
    data = cfg.data.model_copy(update={"dataset": c.dataset, "split": c.split})
    return cfg.model_copy(update={"data": data}), c.note


def using_line(con: Any, cfg: Any) -> str:
    """``dataset 'mine', split 'train': 20 prompts`` (printed before a phase makes any call)."""
    n = con.execute(
        "SELECT count(*) FROM dataset_items WHERE dataset = ? AND split = ?",
        [cfg.data.dataset, cfg.data.split],
    ).fetchone()[0]
    return f"dataset '{cfg.data.dataset}', split '{cfg.data.split}': {n} prompts"
