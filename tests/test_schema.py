"""The warehouse schema, in full: a blank warehouse equals the expected schema, and a warehouse
left at the first migration is upgraded to it with its rows kept.

A new migration must update ``EXPECTED`` below: that is the point of this test.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from tacorl_offline.warehouse import Warehouse, migrations

TS = "TIMESTAMP"
EXPECTED: dict[str, list[tuple[str, str]]] = {
    "api_calls": [
        ("call_id", "VARCHAR"),
        ("run_id", "VARCHAR"),
        ("phase", "VARCHAR"),
        ("request_hash", "VARCHAR"),
        ("teacher_key", "VARCHAR"),
        ("backend", "VARCHAR"),
        ("model", "VARCHAR"),
        ("attempt", "INTEGER"),
        ("status", "VARCHAR"),
        ("error", "VARCHAR"),
        ("input_tokens", "INTEGER"),
        ("output_tokens", "INTEGER"),
        ("cost_usd", "DOUBLE"),
        ("saved_usd", "DOUBLE"),
        ("latency_s", "DOUBLE"),
        ("created_at", TS),
        ("step", "INTEGER"),
        ("reserved_usd", "DOUBLE"),
    ],
    "batch_requests": [
        ("submission_id", "VARCHAR"),
        ("request_hash", "VARCHAR"),
        ("kind", "VARCHAR"),
        ("prompt_id", "VARCHAR"),
        ("messages", "JSON"),
    ],
    "batches": [
        ("submission_id", "VARCHAR"),
        ("batch_id", "VARCHAR"),
        ("input_file_id", "VARCHAR"),
        ("run_id", "VARCHAR"),
        ("teacher_key", "VARCHAR"),
        ("model", "VARCHAR"),
        ("status", "VARCHAR"),
        ("n_requests", "INTEGER"),
        ("output_file_id", "VARCHAR"),
        ("error_file_id", "VARCHAR"),
        ("message", "VARCHAR"),
        ("created_at", TS),
        ("collected_at", TS),
    ],
    "calls_in_flight": [
        ("call_id", "VARCHAR"),
        ("run_id", "VARCHAR"),
        ("phase", "VARCHAR"),
        ("step", "INTEGER"),
        ("request_hash", "VARCHAR"),
        ("teacher_key", "VARCHAR"),
        ("backend", "VARCHAR"),
        ("model", "VARCHAR"),
        ("reserved_usd", "DOUBLE"),
        ("pid", "INTEGER"),
        ("host", "VARCHAR"),
        ("sent_at", TS),
    ],
    "dataset_items": [
        ("dataset", "VARCHAR"),
        ("split", "VARCHAR"),
        ("prompt_id", "VARCHAR"),
        ("row_number", "INTEGER"),
        ("source_path", "VARCHAR"),
        ("ingested_at", TS),
    ],
    "evaluations": [  # 002
        ("run_id", "VARCHAR"),
        ("system", "VARCHAR"),
        ("system_kind", "VARCHAR"),
        ("variant", "INTEGER"),
        ("prompt_id", "VARCHAR"),
        ("rate", "DOUBLE"),
        ("mask_hash", "VARCHAR"),
        ("request_hash", "VARCHAR"),
        ("metrics", "JSON"),
        ("n_orig_tokens", "INTEGER"),
        ("n_comp_tokens", "INTEGER"),
        ("ratio", "DOUBLE"),
        ("cache_hit", "BOOLEAN"),
        ("paid", "BOOLEAN"),
        ("unscorable", "BOOLEAN"),
        ("created_at", TS),
    ],
    "masks": [
        ("prompt_id", "VARCHAR"),
        ("mask_hash", "VARCHAR"),
        ("teacher_key", "VARCHAR"),
        ("request_hash", "VARCHAR"),
        ("created_at", TS),
    ],
    "metric_values": [
        ("request_hash", "VARCHAR"),
        ("reference_hash", "VARCHAR"),
        ("metric", "VARCHAR"),
        ("value", "DOUBLE"),
        ("created_at", TS),
    ],
    "prompts": [
        ("prompt_id", "VARCHAR"),
        ("text", "VARCHAR"),
        ("fields", "JSON"),
        ("reference", "VARCHAR"),
        ("n_chars", "INTEGER"),
        ("created_at", TS),
        ("gold_references", "JSON"),  # 002
    ],
    "responses": [
        ("request_hash", "VARCHAR"),
        ("teacher_key", "VARCHAR"),
        ("kind", "VARCHAR"),
        ("prompt_id", "VARCHAR"),
        ("mask_hash", "VARCHAR"),
        ("backend", "VARCHAR"),
        ("model", "VARCHAR"),
        ("messages", "JSON"),
        ("answer", "VARCHAR"),
        ("ok", "BOOLEAN"),
        ("error_kind", "VARCHAR"),
        ("finish_reason", "VARCHAR"),
        ("input_tokens", "INTEGER"),
        ("output_tokens", "INTEGER"),
        ("cost_usd", "DOUBLE"),
        ("usage_source", "VARCHAR"),
        ("source", "VARCHAR"),
        ("run_id", "VARCHAR"),
        ("created_at", TS),
    ],
    "runs": [
        ("run_id", "VARCHAR"),
        ("kind", "VARCHAR"),
        ("status", "VARCHAR"),
        ("dataset", "VARCHAR"),
        ("split", "VARCHAR"),
        ("teacher_key", "VARCHAR"),
        ("config", "JSON"),
        ("message", "VARCHAR"),
        ("world_size", "INTEGER"),
        ("started_at", TS),
        ("finished_at", TS),
        ("pid", "INTEGER"),
        ("host", "VARCHAR"),
    ],
    "samples": [
        ("run_id", "VARCHAR"),
        ("step", "INTEGER"),
        ("prompt_id", "VARCHAR"),
        ("sample_idx", "INTEGER"),
        ("mask_hash", "VARCHAR"),
        ("request_hash", "VARCHAR"),
        ("reward", "DOUBLE"),
        ("metrics", "JSON"),
        ("n_orig_tokens", "INTEGER"),
        ("n_comp_tokens", "INTEGER"),
        ("n_words", "INTEGER"),
        ("n_kept", "INTEGER"),
        ("cache_hit", "BOOLEAN"),
        ("short_circuit", "BOOLEAN"),
        ("unscorable", "BOOLEAN"),
        ("created_at", TS),
        ("actions", "BOOLEAN[]"),
        ("behaviour_logp", "FLOAT[]"),
    ],
    "replays": [
        ("run_id", "VARCHAR"),
        ("step", "INTEGER"),
        ("prompt_id", "VARCHAR"),
        ("slot", "INTEGER"),
        ("source_run", "VARCHAR"),
        ("source_step", "INTEGER"),
        ("source_sample_idx", "INTEGER"),
        ("reward", "DOUBLE"),
        ("drift", "DOUBLE"),
        ("created_at", TS),
    ],
    "schema_migrations": [("name", "VARCHAR"), ("applied_at", TS)],
    "steps": [
        ("run_id", "VARCHAR"),
        ("step", "INTEGER"),
        ("epoch", "INTEGER"),
        ("loss", "DOUBLE"),
        ("reward_mean", "DOUBLE"),
        ("reward_std", "DOUBLE"),
        ("reward_min", "DOUBLE"),
        ("reward_max", "DOUBLE"),
        ("compression", "DOUBLE"),
        ("entropy", "DOUBLE"),
        ("lr", "DOUBLE"),
        ("n_samples", "INTEGER"),
        ("n_unscorable", "INTEGER"),
        ("calls", "INTEGER"),
        ("hits", "INTEGER"),
        ("short_circuits", "INTEGER"),
        ("cost_usd", "DOUBLE"),
        ("saved_usd", "DOUBLE"),
        ("seconds", "DOUBLE"),
        ("teacher_seconds", "DOUBLE"),
        ("created_at", TS),
        ("fresh_samples", "INTEGER"),
        ("replayed_samples", "INTEGER"),
        ("replay_dropped", "INTEGER"),
        ("update_epochs", "INTEGER"),
    ],
    # a view over responses (kind = 'original')
    "teacher_outputs": [
        ("prompt_id", "VARCHAR"),
        ("teacher_key", "VARCHAR"),
        ("request_hash", "VARCHAR"),
        ("answer", "VARCHAR"),
        ("ok", "BOOLEAN"),
        ("source", "VARCHAR"),
        ("backend", "VARCHAR"),
        ("model", "VARCHAR"),
        ("input_tokens", "INTEGER"),
        ("output_tokens", "INTEGER"),
        ("cost_usd", "DOUBLE"),
        ("created_at", TS),
    ],
    "sft_labels": [
        ("run_id", "VARCHAR"),
        ("prompt_id", "VARCHAR"),
        ("source", "VARCHAR"),
        ("heldout", "BOOLEAN"),
        ("n_words", "INTEGER"),
        ("n_kept", "INTEGER"),
        ("keep", "BOOLEAN[]"),
        ("kept_text", "VARCHAR"),
    ],
    "writer_leases": [
        ("run_id", "VARCHAR"),
        ("phase", "VARCHAR"),
        ("pid", "INTEGER"),
        ("host", "VARCHAR"),
        ("acquired_at", TS),
        ("expires_at", "DOUBLE"),
    ],
}
EXPECTED_KEYS = {
    "api_calls": ["call_id"],
    "batch_requests": ["submission_id", "request_hash"],
    "batches": ["submission_id"],
    "calls_in_flight": ["call_id"],
    "dataset_items": ["dataset", "split", "prompt_id"],
    "evaluations": ["run_id", "system", "variant", "prompt_id"],
    "masks": ["prompt_id", "mask_hash", "teacher_key"],
    "metric_values": ["request_hash", "reference_hash", "metric"],
    "prompts": ["prompt_id"],
    "replays": ["run_id", "step", "prompt_id", "slot"],
    "responses": ["request_hash"],
    "runs": ["run_id"],
    "samples": ["run_id", "step", "prompt_id", "sample_idx"],
    "schema_migrations": ["name"],
    "sft_labels": ["run_id", "prompt_id"],
    "steps": ["run_id", "step"],
    "writer_leases": ["run_id"],
}
EXPECTED_VIEWS = ["teacher_outputs"]


def schema(path: Path) -> tuple[dict[str, list[tuple[str, str]]], dict[str, list[str]], list[str]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
                "ORDER BY table_name"
            ).fetchall()
        ]
        cols = {
            t: [
                (c, d)
                for c, d in con.execute(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position",
                    [t],
                ).fetchall()
            ]
            for t in tables
        }
        keys = {
            t: list(c)
            for t, c in con.execute(
                "SELECT table_name, constraint_column_names FROM duckdb_constraints() "
                "WHERE constraint_type = 'PRIMARY KEY' ORDER BY table_name"
            ).fetchall()
        }
        views = [
            r[0]
            for r in con.execute(
                "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY view_name"
            ).fetchall()
        ]
    finally:
        con.close()
    return cols, keys, views


def test_blank_warehouse_has_the_expected_schema(tmp_path: Path) -> None:
    w = Warehouse(tmp_path / "w.duckdb")
    w.flush()  # a write open applies every migration
    assert schema(w.path) == (EXPECTED, EXPECTED_KEYS, EXPECTED_VIEWS)


def test_upgrade_from_the_first_migration_keeps_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    (first, sql), *later = migrations()
    con = duckdb.connect(str(path))
    con.execute(
        "CREATE TABLE schema_migrations ("
        " name VARCHAR PRIMARY KEY, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)"
    )
    con.execute(sql)
    con.execute("INSERT INTO schema_migrations (name) VALUES (?)", [first])
    con.execute("INSERT INTO prompts (prompt_id, text, n_chars) VALUES ('p1', 'hello', 5)")
    con.close()

    Warehouse(path).flush()  # applies the later migrations, each once

    assert schema(path) == (EXPECTED, EXPECTED_KEYS, EXPECTED_VIEWS)
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.execute("SELECT name FROM schema_migrations ORDER BY name").fetchall()
        names = [r[0] for r in rows]
        assert names == [first] + [name for name, _ in later]
        assert con.execute("SELECT prompt_id, text FROM prompts").fetchall() == [("p1", "hello")]
    finally:
        con.close()
