"""Build the bundled SQuAD 2.0 split used by the QA recipe and bench/learning.py.

Source: ../shared/data/squad/squad-v2-dev-a.jsonl (10 articles of the official SQuAD 2.0 dev
set, CC BY-SA 4.0). Only answerable questions are kept (the extractive teacher always answers).
The split is by *paragraph*, never by question, so train and held-out never share a context:
a paragraph goes to held-out when the sha256 of "title/paragraph" falls in the lowest quarter.
At most ``PER_PARAGRAPH`` questions are kept per paragraph (the first ones), for diversity at a
small size. Deterministic: rerunning rewrites the same files.

    python data/make_squad_split.py [SOURCE]
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import defaultdict
from pathlib import Path

PER_PARAGRAPH = 3
HELDOUT_SHARE = 0.25
OUT = Path(__file__).resolve().parent / "squad"


def held_out(title: str, paragraph: int) -> bool:
    h = hashlib.sha256(f"{title}/{paragraph}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < HELDOUT_SHARE


def main(source: Path) -> None:
    by_para: dict[tuple[str, int], list[dict]] = defaultdict(list)
    with source.open(encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["is_impossible"] or not r["answers"]:
                continue
            by_para[(r["title"], r["paragraph"])].append(r)
    splits: dict[str, list[dict]] = {"train": [], "heldout": []}
    for (title, para), rows in sorted(by_para.items()):
        split = "heldout" if held_out(title, para) else "train"
        for r in rows[:PER_PARAGRAPH]:
            splits[split].append(
                {
                    "id": r["id"],
                    "title": title,
                    "paragraph": para,
                    "context": r["context"],
                    "question": r["question"],
                    "answers": list(dict.fromkeys(r["answers"])),  # distinct, in order
                }
            )
    OUT.mkdir(exist_ok=True)
    for name, rows in splits.items():
        with (OUT / f"{name}.jsonl").open("w", encoding="utf-8", newline="\n") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        paras = len({(r["title"], r["paragraph"]) for r in rows})
        print(f"{name}: {len(rows)} questions from {paras} paragraphs")


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[2] / "shared/data/squad/squad-v2-dev-a.jsonl"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
