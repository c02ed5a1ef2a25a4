"""``warehouse merge``: fold another warehouse (a DuckDB file or a ``warehouse export``
directory of Parquet) into this one. The offline path for a team without a shared server.

Design decisions:

- **Rows are matched by primary key, never by content.** Every table has one (the ledger's is
  the ``call_id`` each attempt got when it was made), so a row already here is never added
  again: merging twice adds nothing, and ledgers merged along any path (A into B, B into C,
  A into C again) count each paid attempt once.
- **One answer per request hash: the earliest usable one.** When both sides hold an answer
  for the same request hash, the kept one is the first by (usable first, then ``created_at``,
  then ``run_id``, then the answer text), so merging A into B and B into A end with the same
  answer. A replaced answer takes its cached metric values with it (``metric_values`` rows
  of that request hash are dropped, then the source's are added), so no score outlives the
  text it was computed on.
- **All or nothing, checked first.** The source is checked (readable, a tacorl warehouse, no
  migration this version does not know, no unflushed journal) before the warehouse is opened
  for writing, and everything is written in one transaction: bad input is one line and the
  warehouse is unchanged.
- **DuckDB does the work.** A DuckDB source is attached read-only; a Parquet export is read
  with ``read_parquet`` (hive partitions, union by name); rows go in with ``INSERT ... BY
  NAME`` so a source from an older schema (fewer columns) gets the defaults. Nothing is
  pulled through Python, so a source of a million answers merges in memory DuckDB manages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from tacorl_offline.errors import UserError
from tacorl_offline.warehouse import Warehouse, migrations, table_names

# Not merged: the target's own schema history.
SKIP_TABLES = frozenset({"schema_migrations"})
# Tables a source must hold to be taken for a tacorl warehouse.
REQUIRED_TABLES = ("responses", "api_calls", "schema_migrations")
SRC = "merge_src"


@dataclass
class MergeResult:
    """Rows added per table (every table of the target, 0 included) and answers replaced."""

    source: str
    added: dict[str, int] = field(default_factory=dict)
    replaced_answers: int = 0

    @property
    def total(self) -> int:
        return sum(self.added.values()) + self.replaced_answers


def _lit(s: str) -> str:
    """A SQL string literal (ATTACH and read_parquet take no parameters in a view)."""
    return "'" + s.replace("'", "''") + "'"


def _one_line(e: BaseException) -> str:
    return (" ".join(str(e).split()) or type(e).__name__)[:200]


def _known_migrations() -> set[str]:
    return {name for name, _ in migrations()}


def _check_migrations(names: set[str], src: Path) -> None:
    unknown = sorted(names - _known_migrations())
    if unknown:
        raise UserError(
            f"cannot merge {src}: it was written by a newer tacorl-offline (migration "
            f"{unknown[0]} is unknown here); upgrade tacorl-offline, then merge again"
        )


def _parquet_tables(src: Path) -> dict[str, str]:
    """table -> glob of its Parquet files in an export directory."""
    out = {}
    for d in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if any(d.rglob("*.parquet")):
            out[d.name] = str(d / "**" / "*.parquet")
    return out


def _check_source(src: Path, target: Path) -> str:
    """'duckdb' or 'parquet'; a one-line UserError for anything else."""
    if not src.exists():
        raise UserError(
            f"cannot merge {src}: no such file or directory; pass a warehouse file or a 'warehouse export' directory"
        )
    if src.resolve() == target.resolve():
        raise UserError(f"cannot merge {src} into itself; pass another warehouse")
    if src.is_dir():
        tables = _parquet_tables(src)
        missing = [t for t in REQUIRED_TABLES if t not in tables]
        if missing:
            raise UserError(
                f"cannot merge {src}: not a 'warehouse export' directory (no {missing[0]}/ "
                "Parquet files); pass a warehouse file or a directory written by "
                "'tacorl-offline warehouse export'"
            )
        try:
            con = duckdb.connect()
            names = {
                r[0]
                for r in con.execute(
                    f"SELECT name FROM read_parquet({_lit(tables['schema_migrations'])})"
                ).fetchall()
            }
            con.close()
        except duckdb.Error as e:
            raise UserError(
                f"cannot merge {src}: its Parquet files cannot be read ({_one_line(e)})"
            ) from None
        _check_migrations(names, src)
        return "parquet"
    journal = src.with_name(src.name + ".journal")
    if journal.exists() and journal.stat().st_size > 0:
        raise UserError(
            f"cannot merge {src}: its journal {journal.name} holds answers not yet in the file; "
            f"run 'tacorl-offline warehouse migrate -w {src}' first (it flushes them)"
        )
    try:
        con = duckdb.connect(str(src), read_only=True)
    except duckdb.Error as e:
        raise UserError(
            f"cannot merge {src}: not a readable DuckDB warehouse ({_one_line(e)}); pass a "
            "warehouse file or a 'warehouse export' directory"
        ) from None
    try:
        tables = set(table_names(con))
        missing = [t for t in REQUIRED_TABLES if t not in tables]
        if missing:
            raise UserError(
                f"cannot merge {src}: not a tacorl-offline warehouse (no {missing[0]} table)"
            )
        names = {r[0] for r in con.execute("SELECT name FROM schema_migrations").fetchall()}
    except duckdb.Error as e:
        raise UserError(f"cannot merge {src}: it cannot be read ({_one_line(e)})") from None
    finally:
        con.close()
    _check_migrations(names, src)
    return "duckdb"


def _base_tables(con: duckdb.DuckDBPyConnection, database: str) -> list[str]:
    """The tables (not views) of an open or attached database, by name."""
    return [
        r[0]
        for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = ?"
            " AND schema_name = 'main' ORDER BY table_name",
            [database],
        ).fetchall()
    ]


def _primary_keys(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    rows = con.execute(
        "SELECT table_name, constraint_column_names FROM duckdb_constraints()"
        " WHERE constraint_type = 'PRIMARY KEY' AND database_name = current_database()"
        " AND schema_name = 'main'"
    ).fetchall()
    return {t: list(cols) for t, cols in rows}


def _columns(con: duckdb.DuckDBPyConnection, relation: str) -> list[str]:
    return [d[0] for d in con.execute(f"SELECT * FROM {relation} LIMIT 0").description]


def _source_relations(con: duckdb.DuckDBPyConnection, src: Path, kind: str) -> dict[str, str]:
    """Attach or view the source; table -> relation name usable in FROM."""
    if kind == "duckdb":
        con.execute(f"ATTACH {_lit(str(src))} AS {SRC} (READ_ONLY)")
        names = _base_tables(con, SRC)
        return {t: f'{SRC}.main."{t}"' for t in names}
    out = {}
    for table, glob in _parquet_tables(src).items():
        view = f"_merge_src_{table}"
        con.execute(
            f'CREATE TEMP VIEW "{view}" AS SELECT * FROM read_parquet({_lit(glob)},'
            " hive_partitioning = true, union_by_name = true)"
        )
        out[table] = f'"{view}"'
    return out


def _merge_responses(
    con: duckdb.DuckDBPyConnection, rel: str, cols: list[str], res: MergeResult
) -> None:
    """Add unknown request hashes; replace an answer here by an earlier usable one there."""
    col_list = ", ".join(f'"{c}"' for c in cols)
    # The source's own best row per request hash (an export could hold two).
    con.execute(
        f"CREATE TEMP TABLE _merge_resp AS SELECT {col_list} FROM {rel}"
        " QUALIFY row_number() OVER (PARTITION BY request_hash"
        " ORDER BY ok DESC, created_at, run_id NULLS LAST, answer NULLS LAST) = 1"
    )
    tie = "coalesce({a}.run_id, '') || chr(0) || coalesce({a}.answer, '')"
    replaced = [
        r[0]
        for r in con.execute(
            "SELECT s.request_hash FROM _merge_resp s JOIN responses t USING (request_hash)"
            " WHERE (s.ok AND NOT t.ok) OR (s.ok = t.ok AND (s.created_at < t.created_at"
            f" OR (s.created_at = t.created_at AND {tie.format(a='s')} < {tie.format(a='t')})))"
        ).fetchall()
    ]
    if replaced:
        con.execute("CREATE TEMP TABLE _merge_replaced (request_hash VARCHAR)")
        con.executemany("INSERT INTO _merge_replaced VALUES (?)", [[h] for h in replaced])
        con.execute(
            "DELETE FROM metric_values WHERE request_hash IN (SELECT request_hash FROM _merge_replaced)"
        )
        con.execute(
            "DELETE FROM responses WHERE request_hash IN (SELECT request_hash FROM _merge_replaced)"
        )
        con.execute(
            f"INSERT INTO responses BY NAME SELECT {col_list} FROM _merge_resp"
            " WHERE request_hash IN (SELECT request_hash FROM _merge_replaced)"
        )
        con.execute("DROP TABLE _merge_replaced")
    n = con.execute(
        f"INSERT INTO responses BY NAME SELECT {col_list} FROM _merge_resp s"
        " ANTI JOIN responses t USING (request_hash)"
    ).fetchone()
    res.added["responses"] = int(n[0]) if n else 0
    res.replaced_answers = len(replaced)
    con.execute("DROP TABLE _merge_resp")


def merge_warehouse(warehouse: Warehouse, source: str | os.PathLike[str]) -> MergeResult:
    """Merge ``source`` into ``warehouse`` in one transaction; returns what was added."""
    src = Path(source)
    kind = _check_source(src, warehouse.path)
    res = MergeResult(source=str(src))
    try:
        with warehouse.connect() as con:
            rels = _source_relations(con, src, kind)
            targets = [
                t
                for t in _base_tables(con, con.execute("SELECT current_database()").fetchone()[0])
                if t not in SKIP_TABLES
            ]
            keys = _primary_keys(con)
            views = {
                r[0]
                for r in con.execute(
                    "SELECT view_name FROM duckdb_views() WHERE NOT internal"
                ).fetchall()
            }  # an export holds views too (teacher_outputs): derived, never merged
            extra = sorted(set(rels) - set(targets) - SKIP_TABLES - views)
            if extra:
                raise UserError(
                    f"cannot merge {src}: its table {extra[0]} is unknown to this warehouse; "
                    "upgrade tacorl-offline, then merge again"
                )
            con.execute("BEGIN TRANSACTION")
            try:
                for table in targets:
                    if table not in rels:
                        res.added[table] = 0
                        continue
                    mine = _columns(con, f'"{table}"')
                    theirs = set(_columns(con, rels[table]))
                    cols = [c for c in mine if c in theirs]
                    pk = keys.get(table)
                    if not pk or any(c not in theirs for c in pk):
                        raise UserError(
                            f"cannot merge {src}: table {table} lacks its key columns; pass "
                            "a warehouse or export written by tacorl-offline"
                        )
                    if table == "responses":
                        _merge_responses(con, rels[table], cols, res)
                        continue
                    col_list = ", ".join(f'"{c}"' for c in cols)
                    using = ", ".join(f'"{c}"' for c in pk)
                    # DISTINCT ON the key: an export is not held to the key, a table is.
                    n = con.execute(
                        f'INSERT INTO "{table}" BY NAME SELECT {col_list} FROM'
                        f" (SELECT DISTINCT ON ({using}) {col_list} FROM {rels[table]}) s"
                        f' ANTI JOIN "{table}" t USING ({using})'
                    ).fetchone()
                    res.added[table] = int(n[0]) if n else 0
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
    except duckdb.Error as e:
        raise UserError(f"cannot merge {src}: {_one_line(e)}; the warehouse is unchanged") from None
    return res
