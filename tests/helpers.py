"""Helpers shared by several test modules (test modules never import each other).

- ``MALFORMED_CASES``: each entry is ``(name, file_suffix, content_bytes, data_cfg_overrides)``;
  ``content_bytes`` None means "do not create the file". Every case must make ingest fail with
  a one-line :class:`UserError`; ``MALFORMED_EXPECT[name]`` is a substring of that message.
- ``write_data`` / ``make_cfg`` / ``prepare`` / ``train`` / ``q``: a tiny training setup
  (a dataset, a config against the loopback teacher, ingest + teacher-fill) and a read-only
  query of its warehouse.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import duckdb

from tacorl_offline.config import Config, resolve
from tacorl_offline.fill import run_fill
from tacorl_offline.ingest import read_records
from tacorl_offline.ingest_store import store_records
from tacorl_offline.trainer import Trainer
from tacorl_offline.warehouse import Warehouse
from tests.loopback import LoopbackServer
from tests.tiny_models import WORDS


def _j(obj: Any) -> bytes:
    return json.dumps(obj).encode("utf-8")


def _jl(*rows: Any) -> bytes:
    return b"".join(_j(r) + b"\n" for r in rows)


QA = {"text_field": "context", "fields": ["question"], "reference_field": "answer"}

MALFORMED_CASES: list[tuple[str, str, bytes | None, dict[str, Any]]] = [
    ("missing_file", ".json", None, {}),
    ("bad_extension", ".txt", _j({"0": {"original_prompt": "hi"}}), {}),
    ("malformed_json", ".json", b'{"0": {"original_prompt": "hi"}\n', {}),
    ("json_top_level_string", ".json", b'"just a string"', {}),
    (
        "json_lines_in_json_file",
        ".json",
        _jl({"original_prompt": "a"}, {"original_prompt": "b"}),
        {},
    ),
    ("jsonl_bad_line", ".jsonl", b'{"text": "fine"}\n{oops}\n', {}),
    ("row_missing_text", ".json", _j({"0": {"gpt_output": "x"}}), {}),
    ("text_not_string", ".json", _j({"0": {"original_prompt": 42}}), {}),
    ("text_null", ".jsonl", _jl({"text": None}), {}),
    ("empty_text", ".jsonl", _jl({"original_prompt": "   "}), {}),
    ("row_not_object", ".json", _j([{"original_prompt": "ok"}, ["not", "an", "object"]]), {}),
    ("field_missing", ".jsonl", _jl({"context": "c", "answer": "a"}), QA),
    ("field_not_string", ".jsonl", _jl({"context": "c", "question": ["q"], "answer": "a"}), QA),
    ("reference_not_string", ".jsonl", _jl({"context": "c", "question": "q", "answer": 7}), QA),
    ("import_not_string", ".json", _j({"0": {"original_prompt": "t", "gpt_output": {"a": 1}}}), {}),
    (
        "non_integer_key",
        ".json",
        _j({"0": {"original_prompt": "a"}, "first": {"original_prompt": "b"}}),
        {},
    ),
    ("negative_key", ".json", _j({"-1": {"original_prompt": "a"}}), {}),
    (
        "duplicate_key",
        ".json",
        b'{"0": {"original_prompt": "a"}, "0": {"original_prompt": "b"}}',
        {},
    ),
    ("duplicate_field", ".jsonl", b'{"text": "a", "text": "b"}\n', {}),
    ("csv_missing_text_column", ".csv", b"title,body\nx,y\n", {}),
    ("csv_missing_field_column", ".csv", b"context,answer\nc,a\n", QA),
    ("csv_no_header", ".csv", b",,\nx,y,z\n", {}),
    ("csv_header_only", ".csv", b"text,label\n", {}),
    ("csv_extra_cells", ".csv", b"text\nhello,world\n", {}),
    ("empty_file", ".jsonl", b"", {}),
    ("whitespace_file", ".json", b"  \n\n ", {}),
    ("empty_json_object", ".json", b"{}", {}),
    ("parquet_garbage", ".parquet", b"PAR1 this is not really parquet", {}),
    ("nul_in_text", ".jsonl", b'{"text": "a\\u0000b"}\n', {}),
    ("invalid_utf8", ".csv", b"text\nok\n\xff\xfe broken\n", {}),
]

MALFORMED_EXPECT: dict[str, str] = {
    "missing_file": "file not found",
    "bad_extension": "unknown file extension '.txt'",
    "malformed_json": "malformed JSON at line 2",
    "json_top_level_string": "top level must be an object",
    "json_lines_in_json_file": "--format jsonl",
    "jsonl_bad_line": "malformed JSONL at line 2",
    "row_missing_text": "row 0: missing 'original_prompt'",
    "text_not_string": "'original_prompt' must be a string, got int",
    "text_null": "row 1: missing 'original_prompt' (also tried 'text', 'prompt')",
    "empty_text": "'original_prompt' is empty",
    "row_not_object": "row 2: not an object (got list)",
    "field_missing": "missing field 'question'",
    "field_not_string": "'question' must be a string, got list",
    "reference_not_string": "reference 'answer' must be a string",
    "import_not_string": "imported answer 'gpt_output' must be a string",
    "non_integer_key": "key 'first' (entry 2) is not a non-negative integer",
    "negative_key": "key '-1' (entry 1) is not a non-negative integer",
    "duplicate_key": "key '0' appears more than once",
    "duplicate_field": "field 'text' appears more than once",
    "csv_missing_text_column": "CSV has no text column 'original_prompt'",
    "csv_missing_field_column": "no column 'question'",
    "csv_no_header": "CSV has no header row",
    "csv_header_only": "contains no rows",
    "csv_extra_cells": "2 cells but the header has 1",
    "empty_file": "file is empty",
    "whitespace_file": "file is empty",
    "empty_json_object": "contains no rows",
    "parquet_garbage": "not a readable Parquet file",
    "nul_in_text": "contains a NUL character",
    "invalid_utf8": "invalid UTF-8 at byte 8 (line 3)",
}


def write_data(path: Path, n: int = 12, words: int = 40, seed: int = 0) -> Path:
    rng = random.Random(seed)
    data = {}
    for i in range(n):
        sents = []
        for _ in range(words // 10):
            sents.append(" ".join(rng.choice(WORDS) for _ in range(9)).capitalize() + ".")
        data[str(i)] = {"original_prompt": f"Item {i}. " + " ".join(sents)}
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def make_cfg(
    tmp: Path, server: LoopbackServer, model: Path, rate: float | None = None, **train
) -> Config:
    """A training config; ``rate`` is compressor.rate (also the reward's c), ``train`` keys
    are train.* settings."""
    overrides = {
        "warehouse": str(tmp / "wh.duckdb"),
        "teacher.backend": "openai",
        "teacher.model": "gpt-4o-mini",
        "teacher.base_url": server.base_url,
        "teacher.concurrency": 8,
        "teacher.timeout_s": 5,
        "teacher.max_retries": 1,
        "compressor.model": str(model),
        "train.batch_size": 4,
        "train.samples_per_prompt": 2,
        "train.baseline": "rloo",
        "train.lr": 1e-3,
        "train.max_steps": 4,
        "train.checkpoint_every": 2,
        "train.output_dir": str(tmp / "runs"),
        "train.tolerance_tokens": 8,
        "train.reward.metric": "rougeL",
        "train.seed": 3,
    }
    overrides.update({f"train.{k}": v for k, v in train.items()})
    if rate is not None:
        overrides["compressor.rate"] = rate
    return resolve(None, environ={}, overrides=overrides)


def ingest_file(cfg: Config, data: Path) -> Warehouse:
    """Ingest ``data`` into the config's warehouse, dataset and split."""
    records, _ = read_records(data, cfg.data)
    w = Warehouse(cfg.warehouse)
    store_records(w, records, dataset=cfg.data.dataset, split=cfg.data.split, source_path=data)
    return w


def openai_setup(tmp_path: Path, server: LoopbackServer, n: int, **kw: Any) -> tuple:
    """n prompts ingested (``with_output`` of them with an imported answer) and a config
    against the loopback teacher (``openai_config`` keywords)."""
    from tests.conftest import openai_config, write_upstream_json

    data = write_upstream_json(tmp_path / "d.json", n, with_output=kw.pop("with_output", 0))
    cfg_path = openai_config(tmp_path / "c.yaml", server, **kw)
    cfg = resolve(cfg_path, environ={}, overrides={"warehouse": str(tmp_path / "wh.duckdb")})
    return cfg, ingest_file(cfg, data)


def rows(w: Warehouse, q: str, params: list[Any] | None = None) -> list[tuple]:
    """A read-only query's rows."""
    with w.connect(read_only=True) as con:
        return con.execute(q, params or []).fetchall()


def train_command(cfg: Config, tmp_path: Path) -> list[str]:
    """The config written to ``tmp_path/c.yaml`` and a ``train`` command line for a subprocess."""
    import sys

    import yaml

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")), encoding="utf-8")
    return [
        sys.executable,
        "-m",
        "tacorl_offline.cli",
        "train",
        "-c",
        str(cfg_path),
        "--no-progress",
    ]


def prepare(
    tmp: Path, server: LoopbackServer, model: Path, rate: float | None = None, **train
) -> Config:
    cfg = make_cfg(tmp, server, model, rate, **train)
    w = ingest_file(cfg, write_data(tmp / "d.json"))
    asyncio.run(run_fill(cfg, warehouse=w))
    return cfg


def train(cfg: Config, **kw):
    return asyncio.run(Trainer(cfg, warehouse=Warehouse(cfg.warehouse), **kw).run())


class Crash(Exception):
    """Raised out of a training run from its step callback: a process dying mid-run."""


def train_killed_after(cfg: Config, step: int) -> str:
    """Train until step ``step`` is recorded, then die (the run is left 'failed' with its
    checkpoints); returns the run id."""

    def crash(log, _s) -> None:
        if log.step == step:
            raise Crash

    trainer = Trainer(cfg, warehouse=Warehouse(cfg.warehouse), on_step=crash)
    try:
        asyncio.run(trainer.run())
    except Crash:
        return trainer.run_id
    raise AssertionError(f"the run finished before step {step}")


def q(cfg: Config, sql: str, params=None):
    con = duckdb.connect(cfg.warehouse, read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def error_lines(text: str) -> list[str]:
    """The non-blank lines of a command's stderr, less the informational line every phase prints
    before its first call ("using dataset 'x', split 'y': N prompts", issue 21): a failure
    after that point still says what is wrong in one line."""
    return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("using dataset ")]
