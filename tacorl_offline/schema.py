"""The warehouse schema: ordered SQL migrations, recorded in ``schema_migrations``.

Design decision: **the schema comes from migrations.** ``warehouse/migrations/NNN_name.sql``
(shipped in the wheel) are applied in name order on a write open, each in one transaction
with its row in ``schema_migrations``, so an upgrade runs each file once and a failed one
leaves the file as it was.
"""

from __future__ import annotations

import duckdb

from tacorl_offline.resources import resource_dir


def migrations() -> list[tuple[str, str]]:
    """(name, sql) sorted by name, e.g. ('001_core', 'CREATE TABLE ...')."""
    d = resource_dir("warehouse/migrations")
    return [(p.stem, p.read_text(encoding="utf-8")) for p in sorted(d.glob("*.sql"))]


def migrate(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply the migrations not yet recorded; returns their names."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " name VARCHAR PRIMARY KEY, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)"
    )
    done = {r[0] for r in con.execute("SELECT name FROM schema_migrations").fetchall()}
    applied = []
    for name, sql in migrations():
        if name in done:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(sql)
            con.execute("INSERT INTO schema_migrations (name) VALUES (?)", [name])
        except Exception:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        applied.append(name)
    return applied


def table_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [
        r[0]
        for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' ORDER BY table_name"
        ).fetchall()
    ]
