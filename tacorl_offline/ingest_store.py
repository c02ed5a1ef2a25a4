"""Writing ingested records into the warehouse, all or nothing.

Reading and validating files is :mod:`tacorl_offline.ingest` (pure). This module only
stores what it returns, in one transaction: prompts (deduplicated by content hash), the
dataset/split membership, and imported teacher answers (``source='import'``, one per
prompt, never overwritten). Re-ingesting the same file changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tacorl_offline.hashing import import_request_hash
from tacorl_offline.ingest import Record
from tacorl_offline.warehouse import Warehouse, insert_rows

IMPORT_TEACHER_KEY = "import"


@dataclass
class IngestSummary:
    records: int
    new_prompts: int
    new_items: int
    imported_answers: int


def store_records(
    warehouse: Warehouse,
    records: Sequence[Record],
    *,
    dataset: str,
    split: str,
    source_path: str | Path,
) -> IngestSummary:
    prompts = [
        {
            "prompt_id": r.prompt_id,
            "text": r.text,
            "fields": dict(r.fields),
            "reference": r.reference,
            "gold_references": list(r.references) or None,
            "n_chars": len(r.text),
        }
        for r in records
    ]
    items = [
        {
            "dataset": dataset,
            "split": split,
            "prompt_id": r.prompt_id,
            "row_number": r.row,
            "source_path": str(source_path),
        }
        for r in records
    ]
    imports = [
        {
            "request_hash": import_request_hash(r.prompt_id),
            "teacher_key": IMPORT_TEACHER_KEY,
            "kind": "original",
            "prompt_id": r.prompt_id,
            "backend": "import",
            "model": "import",
            "answer": r.imported_answer,
            "ok": True,
            "source": "import",
            "usage_source": "none",
        }
        for r in records
        if r.imported_answer
    ]
    with warehouse.transaction() as con:

        def count(table: str) -> int:
            return con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]

        before = (count("prompts"), count("dataset_items"), count("responses"))
        insert_rows(con, "prompts", prompts, on_conflict="ignore")
        insert_rows(con, "dataset_items", items, on_conflict="ignore")
        insert_rows(con, "responses", imports, on_conflict="ignore")
        after = (count("prompts"), count("dataset_items"), count("responses"))
    return IngestSummary(
        records=len(records),
        new_prompts=after[0] - before[0],
        new_items=after[1] - before[1],
        imported_answers=after[2] - before[2],
    )
