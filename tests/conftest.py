"""Shared fixtures: the loopback OpenAI server, small datasets, a warehouse in a temp dir."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from tests.loopback import LoopbackServer, loopback_server  # noqa: F401  (fixture)
from tests.pg_server import pg  # noqa: F401  (fixture: a PostgreSQL for the team tests)

SECRET = "sk-test-DO-NOT-LEAK-0123456789abcdef"


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight BERT token classifier with a WordPiece tokenizer trained here."""
    from tests.tiny_models import build_bert

    return build_bert(tmp_path_factory.mktemp("models") / "tiny-bert-base-multilingual-cased")


@pytest.fixture
def wh_path(tmp_path: Path) -> Path:
    return tmp_path / "wh" / "tacorl.duckdb"


def write_upstream_json(path: Path, n: int, *, with_output: int = 0, words: int = 40) -> Path:
    data = {}
    for i in range(n):
        body = " ".join(f"w{i}_{j}" for j in range(words))
        rec = {"original_prompt": f"Meeting {i}. {body}. Decision {i} was taken."}
        if i < with_output:
            rec["gpt_output"] = f"Summary {i}."
        data[str(i)] = rec
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def openai_config(
    path: Path, server: LoopbackServer, *, concurrency: int = 8, extra: str = ""
) -> Path:
    path.write_text(
        f"""
teacher:
  backend: openai
  model: gpt-4o-mini
  base_url: {server.base_url}
  api_key_env: TACORL_TEST_KEY
  concurrency: {concurrency}
  timeout_s: 2
  max_retries: 1
{extra}
""",
        encoding="utf-8",
    )
    return path


def warehouse_snapshot(path: Path) -> dict[str, list[str]] | None:
    """Every row of every table, for 'the warehouse is unchanged' assertions."""
    if not path.exists():
        return None
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' ORDER BY 1"
        ).fetchall()
        return {
            t: sorted(map(str, con.execute(f'SELECT * FROM "{t}"').fetchall())) for (t,) in tables
        }
    finally:
        con.close()
