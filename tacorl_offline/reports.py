"""Read-only access for users: ``sql``, named queries, the cost report, Parquet export.

User SQL runs on a read-only connection with external access disabled, after a statement
type check, so it can neither write the warehouse nor read or write other files. Named
queries are ``.sql`` files under ``warehouse/queries`` shipped with the package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.dataset as pads

from tacorl_offline.errors import UserError
from tacorl_offline.resources import resource_dir
from tacorl_offline.warehouse import Warehouse, table_names

_ALLOWED = {"SELECT", "EXPLAIN"}

# Partition columns for `warehouse export`; tables not listed are written unpartitioned.
EXPORT_PARTITIONS: dict[str, list[str]] = {
    "dataset_items": ["dataset"],
    "responses": ["kind"],
    "api_calls": ["phase"],
    "steps": ["run_id"],
    "samples": ["run_id"],
}


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


def named_queries() -> dict[str, Path]:
    return {p.stem: p for p in sorted(resource_dir("warehouse/queries").glob("*.sql"))}


def load_named_query(name: str) -> str:
    q = named_queries()
    if name not in q:
        raise UserError(f"no named query '{name}'; available: {', '.join(q) or '(none)'}")
    return q[name].read_text(encoding="utf-8")


def check_read_only(query: str) -> None:
    try:
        stmts = duckdb.extract_statements(query)
    except duckdb.Error as e:
        raise UserError(f"SQL does not parse: {str(e).splitlines()[0]}") from None
    if not stmts:
        raise UserError("empty SQL; pass a SELECT statement")
    for s in stmts:
        kind = str(s.type).rsplit(".", 1)[-1].upper()
        if kind not in _ALLOWED:
            raise UserError(
                f"refused: '{kind}' statements are not allowed; 'sql' is read-only (SELECT only)"
            )


def run_query(warehouse: Warehouse, query: str, params: list[Any] | None = None) -> QueryResult:
    check_read_only(query)
    with warehouse.connect(read_only=True, safe=True) as con:
        try:
            cur = con.execute(query, params or [])
        except duckdb.Error as e:
            raise UserError(f"query failed: {str(e).splitlines()[0]}") from None
        cols = [d[0] for d in cur.description] if cur.description else []
        return QueryResult(cols, cur.fetchall())


_CALLS = "FROM api_calls c"


def _filtered(sql: str, dataset: str | None, teacher: str | None) -> tuple[str, list[Any]]:
    """A named cost query over the ledger rows of ``dataset`` (by the run's dataset) and
    ``teacher`` (a model name or a backend), parameterised."""
    if dataset is None and teacher is None:
        return sql, []
    where, params = [], []
    if dataset is not None:
        where.append("r.dataset = ?")
        params.append(dataset)
    if teacher is not None:
        where.append("(a.model = ? OR a.backend = ?)")
        params += [teacher, teacher]
    sub = (
        "FROM (SELECT a.* FROM api_calls a LEFT JOIN runs r ON r.run_id = a.run_id"
        f" WHERE {' AND '.join(where)}) c"
    )
    assert sql.count(_CALLS) == 1
    return sql.replace(_CALLS, sub), params


def cost_report(
    warehouse: Warehouse,
    run: str | None = None,
    by: str = "run",
    *,
    dataset: str | None = None,
    teacher: str | None = None,
) -> QueryResult:
    """Calls, hits, tokens, dollars spent and saved: ``by='phase'`` (one row per phase, the
    default of ``report cost``) or ``by='run'`` (one row per phase and run; ``run`` filters);
    ``dataset`` and ``teacher`` (a model or backend name) keep only those calls."""
    if by not in ("phase", "run"):
        raise UserError(f"--by must be phase or run, not '{by}'")
    if by == "phase" and run is None:
        sql, params = _filtered(
            load_named_query("cost_by_phase").strip().rstrip(";"), dataset, teacher
        )
        return run_query(warehouse, sql, params)
    base, params = _filtered(load_named_query("cost_by_run").strip().rstrip(";"), dataset, teacher)
    if run is None:
        return run_query(warehouse, base, params)
    if not run_query(warehouse, "SELECT 1 FROM runs WHERE run_id = ?", [run]).rows:
        raise UserError(
            f"no run '{run}' in {warehouse.path}; list the runs with: tacorl-offline sql -q runs"
        )
    return run_query(warehouse, f"SELECT * FROM ({base}) WHERE run_id = ?", [*params, run])


def free_calls_note(
    warehouse: Warehouse, *, dataset: str | None = None, teacher: str | None = None
) -> str | None:
    """Why some calls cost $0: they went to a free stand-in (the extractive teacher) or a local
    model, not to a paid API. None when there were none."""
    from tacorl_offline.pricing import FREE_BACKENDS

    sql, params = _filtered(
        "SELECT c.backend, count(*) " + _CALLS + " WHERE c.status <> 'hit' GROUP BY 1 ORDER BY 1",
        dataset,
        teacher,
    )
    rows = run_query(warehouse, sql, params).rows
    free = [(b, n) for b, n in rows if b in FREE_BACKENDS and n]
    if not free:
        return None
    parts = ", ".join(
        f"{n} calls to the {b} teacher ({'offline stand-in' if b == 'extractive' else 'local model'})"
        for b, n in free
    )
    return f"note: {parts}: $0 each, no API"


# The columns a terminal table shows (at 80 columns); csv and json keep every column.
COST_TABLE_COLUMNS = {
    "phase": ["phase", "runs", "calls", "hits", "hit_rate", "spent_usd", "saved_usd"],
    "run": ["run_id", "phase", "calls", "hits", "spent_usd", "saved_usd"],
}


def for_table(res: QueryResult, by: str) -> QueryResult:
    """``res`` narrowed to the columns readable at 80 columns, with a total row."""
    cols = [c for c in COST_TABLE_COLUMNS[by] if c in res.columns]
    if "in_flight_at_crash" in res.columns:  # shown when a process died with calls in flight
        j = res.columns.index("in_flight_at_crash")
        if any(r[j] for r in res.rows):
            cols += ["in_flight_at_crash", "in_flight_reserved_usd"]
    idx = [res.columns.index(c) for c in cols]
    rows = [tuple(r[i] for i in idx) for r in res.rows]
    if len(rows) > 1:
        total: list[Any] = []
        for j, c in enumerate(cols):
            if j == 0:
                total.append("total")
            elif c == "hit_rate":
                calls, hits = cols.index("calls"), cols.index("hits")
                n_c = sum(r[calls] for r in rows)
                n_h = sum(r[hits] for r in rows)
                total.append(round(n_h / (n_c + n_h), 3) if n_c + n_h else None)
            elif c == "phase" and j > 0:
                total.append("")
            else:
                total.append(round(sum(r[j] or 0 for r in rows), 6))
        rows.append(tuple(total))

    def show(c: str, v: Any) -> Any:
        if v is None or v == "" or v == "total":
            return v
        if c.endswith("_usd"):
            return f"${v:.4f}"
        return f"{v:.0%}" if c == "hit_rate" else v

    names = {
        "spent_usd": "spent",
        "saved_usd": "saved",
        "hit_rate": "hit rate",
        "run_id": "run",
        "in_flight_reserved_usd": "reserved",
    }
    return QueryResult(
        [names.get(c, c) for c in cols],
        [tuple(show(c, v) for c, v in zip(cols, r, strict=True)) for r in rows],
    )


def export_parquet(warehouse: Warehouse, out_dir: str | Path) -> dict[str, int]:
    """Every table as Parquet under out_dir/<table>/, hive-partitioned where it helps."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(
            f"export target {out} is a file; pass a directory (it is created if missing)"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".tacorl-write-test"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise UserError(
            f"cannot write the export to {out}: {e.strerror or type(e).__name__}; "
            "pass a writable directory"
        ) from None
    counts: dict[str, int] = {}
    with warehouse.connect(read_only=True) as con:
        for table in table_names(con):
            tbl = con.sql(f'SELECT * FROM "{table}"').to_arrow_table()
            counts[table] = tbl.num_rows
            parts = [c for c in EXPORT_PARTITIONS.get(table, []) if c in tbl.column_names]
            pads.write_dataset(
                tbl,
                out / table,
                format="parquet",
                partitioning=parts or None,
                partitioning_flavor="hive" if parts else None,
                existing_data_behavior="delete_matching",
                basename_template="part-{i}.parquet",
            )
    return counts
