"""The prompts of a split, each with the teacher's answer to its original (the reward reference).

Shared by ``train`` and ``evaluate``. Loading refuses to start a phase that would have to pay
for original answers on the side: every prompt must already have one under this teacher key
(from ``teacher-fill``, or imported when ``teacher.use_imported``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tacorl_offline.config import Config
from tacorl_offline.errors import UserError
from tacorl_offline.hashing import import_request_hash, request_hash
from tacorl_offline.teachers import render_messages
from tacorl_offline.warehouse import Warehouse


@dataclass
class Item:
    prompt_id: str
    text: str
    fields: dict[str, Any]
    reference: str | None  # the teacher's answer to the original prompt
    gold: str | None  # the data's reference answer, if any


def load_items(con: Any, cfg: Config, tkey: str, *, require_answers: bool = True) -> list[Item]:
    """The split's items with their teacher answers; ``require_answers=False`` for a phase that
    needs none (SFT on stopword or file labels): a prompt without one keeps ``reference=None``."""
    rows = con.execute(
        """
        SELECT d.prompt_id, p.text, p.fields, p.reference
        FROM dataset_items d JOIN prompts p USING (prompt_id)
        WHERE d.dataset = ? AND d.split = ?
        ORDER BY d.row_number
        """,
        [cfg.data.dataset, cfg.data.split],
    ).fetchall()
    if not rows:
        raise UserError(
            f"no prompts for dataset '{cfg.data.dataset}' split '{cfg.data.split}'; run 'tacorl-offline ingest' first"
        )
    items, originals = [], []
    for pid, text, fields, ref in rows:
        f = json.loads(fields) if fields else {}
        items.append(Item(pid, text, f, None, ref))
        originals.append(request_hash(tkey, render_messages(cfg.teacher, text, f)))
    keys = originals + (
        [import_request_hash(i.prompt_id) for i in items] if cfg.teacher.use_imported else []
    )
    found = Warehouse.lookup_responses(con, keys)
    missing = 0
    for i, item in enumerate(items):
        own = found.get(originals[i])
        imp = found.get(import_request_hash(item.prompt_id)) if cfg.teacher.use_imported else None
        hit = own if own is not None else imp
        if hit is None:
            missing += 1
        elif hit["ok"]:
            item.reference = hit["answer"]
    if missing and require_answers:
        raise UserError(
            f"{missing} of {len(items)} prompts have no teacher answer to the original prompt under this teacher; "
            "run 'tacorl-offline teacher-fill' with the same config first"
        )
    return items
