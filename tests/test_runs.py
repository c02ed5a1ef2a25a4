"""The run lifecycle (runs.phase_run) on a real warehouse: the run row, the ledger rows it
records, and the final status derived from how the block exited."""

from __future__ import annotations

import asyncio
from pathlib import Path

import duckdb
import pytest

from tacorl_offline.config import Config, resolve
from tacorl_offline.errors import UserError
from tacorl_offline.runs import Spend, phase_run
from tacorl_offline.warehouse import Warehouse


def cfg_for(tmp: Path) -> Config:
    return resolve(None, environ={}, overrides={"warehouse": str(tmp / "w.duckdb")})


def rows(cfg: Config, sql: str) -> list[tuple]:
    con = duckdb.connect(cfg.warehouse, read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


async def _run(cfg: Config, body, *, begin: bool = True, **kw) -> str:
    async with phase_run(Warehouse(cfg.warehouse), cfg, "eval", **kw) as run:
        if begin:
            with run.warehouse.transaction() as con:
                run.begin(con, message="m")
        await body(run)
    return run.run_id


def test_finished_run_records_hits_and_masks(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)

    async def body(run) -> None:
        with run.warehouse.transaction() as con:
            mask = {"prompt_id": "p", "mask_hash": "m1", "teacher_key": run.teacher_key}
            run.record(con, hits=[("rh1", 0.25)], masks=[{**mask, "request_hash": "rh1"}])

    run_id = asyncio.run(_run(cfg, body))
    assert rows(cfg, "SELECT run_id, kind, status, message FROM runs") == [
        (run_id, "eval", "finished", "m")
    ]
    assert rows(cfg, "SELECT run_id, status, cost_usd, saved_usd FROM api_calls") == [
        (run_id, "hit", 0.0, 0.25)
    ]
    assert rows(cfg, "SELECT mask_hash, request_hash FROM masks") == [("m1", "rh1")]


def test_budget_stop_is_the_final_status(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)

    async def body(run) -> None:
        run.stop_for_budget("budget reached; rerun to resume")

    asyncio.run(_run(cfg, body))
    assert rows(cfg, "SELECT status, message FROM runs") == [
        ("budget", "budget reached; rerun to resume")
    ]


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (UserError("bad input; fix it"), "failed", "bad input; fix it"),
        (RuntimeError("secret detail"), "failed", "RuntimeError"),
        (KeyboardInterrupt(), "interrupted", "KeyboardInterrupt"),
    ],
)
def test_exit_by_exception_sets_the_status_and_reraises(
    tmp_path: Path, error: BaseException, status: str, message: str
) -> None:
    cfg = cfg_for(tmp_path)

    async def body(run) -> None:
        raise error

    with pytest.raises(type(error)):
        asyncio.run(_run(cfg, body))
    error.__traceback__ = None  # the parametrized instance outlives the test: drop its frames
    assert rows(cfg, "SELECT status, message FROM runs") == [(status, message)]


def test_unbegun_run_writes_nothing(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    Warehouse(cfg.warehouse).flush()

    async def body(run) -> None:
        raise UserError("template error")

    with pytest.raises(UserError):
        asyncio.run(_run(cfg, body, begin=False))
    assert rows(cfg, "SELECT count(*) FROM runs") == [(0,)]


def test_unpaid_failure_can_be_forgotten(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)

    async def body(run) -> None:
        with run.warehouse.transaction() as con:
            run.record(con, hits=[("rh1", 0.1)])
        raise UserError("teacher unreachable")

    with pytest.raises(UserError):
        asyncio.run(_run(cfg, body, forget_unpaid_failure=True))
    assert rows(cfg, "SELECT count(*) FROM runs") == [(0,)]
    assert rows(cfg, "SELECT count(*) FROM api_calls") == [(0,)]


def test_resume_marks_the_run_running_then_finished(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)

    async def fail(run) -> None:
        raise UserError("stop")

    with pytest.raises(UserError):
        asyncio.run(_run(cfg, fail))
    (run_id,) = rows(cfg, "SELECT run_id FROM runs")[0]

    async def go() -> None:
        async with phase_run(Warehouse(cfg.warehouse), cfg, "eval", run_id=run_id) as run:
            with run.warehouse.transaction() as con:
                run.begin(con, resume=True)
                assert con.execute("SELECT status FROM runs").fetchall() == [("running",)]

    asyncio.run(go())
    assert rows(cfg, "SELECT run_id, status FROM runs") == [(run_id, "finished")]


def test_spend_adds_up() -> None:
    total = Spend()
    total.add(Spend(calls=2, hits=1, cost_usd=0.5, saved_usd=0.25))
    total.add(Spend(calls=1, hits=3, cost_usd=0.25, saved_usd=0.5))
    assert total == Spend(calls=3, hits=4, cost_usd=0.75, saved_usd=0.75)
    assert total.hit_rate == pytest.approx(4 / 7) and Spend().hit_rate == 0.0
