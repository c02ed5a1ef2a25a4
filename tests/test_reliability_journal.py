"""Issue 18 items 1-3: a torn journal tail, the write-ahead ledger, a full disk."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tacorl_offline.errors import UserError
from tacorl_offline.fill import run_fill
from tacorl_offline.reports import cost_report
from tacorl_offline.warehouse import JournalWriteError, Warehouse
from tests.conftest import SECRET, openai_config, write_upstream_json
from tests.helpers import error_lines, openai_setup, rows
from tests.loopback import LoopbackServer


def _ledger_row(call_id: str) -> dict:
    return {
        "call_id": call_id,
        "run_id": "r",
        "phase": "fill",
        "request_hash": f"h-{call_id}",
        "teacher_key": "k",
        "backend": "openai",
        "model": "m",
        "attempt": 1,
        "status": "ok",
        "input_tokens": 1,
        "output_tokens": 1,
        "cost_usd": 0.0,
        "saved_usd": 0.0,
        "latency_s": 0.1,
    }


def _line(call_id: str) -> bytes:
    return json.dumps({"t": "api_calls", "r": _ledger_row(call_id)}).encode() + b"\n"


# ---------------------------------------------------------------- item 2: a torn last line


def test_a_torn_last_line_at_every_offset_never_swallows_the_next_entry(tmp_path) -> None:
    w = Warehouse(tmp_path / "w.duckdb")
    w.flush()
    first, last = _line("a"), _line("b")
    quarantine = w.journal_path.with_name(w.journal_path.name + ".quarantine")
    for k in range(len(last) + 1):
        w.journal_path.write_bytes(first + last[:k])
        quarantine.unlink(missing_ok=True)
        w.journal([("api_calls", _ledger_row(f"new{k}"))])
        ids = [r["call_id"] for _, r in w.pending_journal()]
        whole = k >= len(last) - 1  # only the newline (or nothing) was lost
        assert ids == ["a", *(["b"] if whole else []), f"new{k}"], k
        raw = w.journal_path.read_bytes()
        assert raw.endswith(b"\n") and raw.count(b"\n") == len(ids), k
        torn = 0 < k < len(last) - 1
        assert quarantine.exists() == torn, k
        if torn:
            assert quarantine.read_bytes() == last[:k] + b"\n"
    # And the journal still loads: every good entry, nothing merged.
    w.journal_path.write_bytes(first + last[: len(last) // 2])
    w.journal([("api_calls", _ledger_row("after"))])
    w.flush()
    assert rows(w, "SELECT call_id FROM api_calls ORDER BY 1") == [("a",), ("after",)]


# ---------------------------------------------------------------- item 3: write-ahead ledger


def test_calls_in_flight_at_an_interrupt_are_in_the_ledger_with_their_reservation(
    tmp_path, loopback_server, monkeypatch
) -> None:
    monkeypatch.setenv("TACORL_TEST_KEY", SECRET)
    cfg, w = openai_setup(tmp_path, loopback_server, 12, concurrency=4)
    loopback_server.set(mode="hang", hang_s=30)

    async def fill_then_cancel() -> None:
        task = asyncio.create_task(run_fill(cfg, warehouse=w))
        deadline = time.monotonic() + 30
        while loopback_server.in_flight < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(fill_then_cancel())
    loopback_server.set(mode="ok")
    assert loopback_server.calls == 4
    ((status,),) = rows(w, "SELECT status FROM runs")
    assert status == "interrupted"
    inflight = rows(
        w,
        "SELECT status, reserved_usd, error FROM api_calls WHERE status <> 'hit' ORDER BY 1",
    )
    assert len(inflight) == loopback_server.calls
    assert {s for s, _, _ in inflight} == {"in_flight_at_crash"}
    assert all(r > 0 for _, r, _ in inflight)  # the worst case, at gpt-4o-mini's price
    assert "may have billed" in inflight[0][2]
    assert rows(w, "SELECT count(*) FROM calls_in_flight") == [(0,)]
    res = cost_report(w, by="phase")
    row = dict(zip(res.columns, res.rows[0], strict=True))
    assert row["in_flight_at_crash"] == 4 and row["in_flight_reserved_usd"] > 0
    # The rerun pays for the 12 prompts; the ledger counts 16 requests, as the server did.
    loopback_server.set(hang_s=0)
    asyncio.run(run_fill(cfg, warehouse=w))
    (n,) = rows(w, "SELECT count(*) FROM api_calls WHERE status <> 'hit'")[0]
    assert n == loopback_server.calls == 16


def _fill_cmd(cfg: Path, wh: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tacorl_offline.cli",
        "teacher-fill",
        "-c",
        str(cfg),
        "-w",
        str(wh),
        "--no-progress",
    ]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ledger_matches_the_servers_request_count_after_sigkills(tmp_path: Path) -> None:
    """Fills SIGKILLed with their requests in flight, then a fill to the end: every request
    the server saw is one ledger row (answered, or in_flight_at_crash)."""
    from typer.testing import CliRunner

    from tacorl_offline.cli import app

    n_prompts, kills, concurrency = 40, 4, 4
    with LoopbackServer(latency_s=0.4) as server:
        data = write_upstream_json(tmp_path / "d.json", n_prompts)
        wh = tmp_path / "w.duckdb"
        cfg = openai_config(tmp_path / "c.yaml", server, concurrency=concurrency)
        assert CliRunner().invoke(app, ["ingest", str(data), "-w", str(wh)]).exit_code == 0
        env = {**os.environ, "TACORL_TEST_KEY": SECRET}
        for _ in range(kills):
            before = server.calls
            child = subprocess.Popen(
                _fill_cmd(cfg, wh), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            deadline = time.monotonic() + 60
            # Killed with every worker waiting on the server, after some answers came back.
            while time.monotonic() < deadline and not (
                server.calls >= before + concurrency + 2 and server.in_flight == concurrency
            ):
                time.sleep(0.005)
            child.send_signal(signal.SIGKILL)
            child.wait()
        done = subprocess.run(_fill_cmd(cfg, wh), env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        w = Warehouse(wh)
        w.flush()
        ledger = rows(w, "SELECT status, count(*) FROM api_calls GROUP BY 1 ORDER BY 1")
        counts = dict(ledger)
        assert counts.get("in_flight_at_crash", 0) >= kills  # at least one per kill
        assert sum(c for s, c in ledger if s != "hit") == server.calls, (ledger, server.calls)
        answered = rows(w, "SELECT count(*) FROM responses WHERE kind = 'original' AND ok")[0][0]
        assert answered == n_prompts
        assert counts["ok"] == answered  # each answer paid for once ledger-wise
        assert rows(w, "SELECT count(*) FROM calls_in_flight") == [(0,)]


# ---------------------------------------------------------------- item 1: a full disk


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e}): the full-disk test needs a small filesystem")
    if r.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}): the full-disk "
            "test needs a small filesystem (run as root, or where mount is permitted)"
        )


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.fixture
def small_fs(tmp_path: Path):
    mnt = tmp_path / "small"
    _mount_tmpfs(mnt, "64m")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=20)


def _fill_disk(mnt: Path) -> Path:
    """Another process fills the filesystem: a file written until ENOSPC."""
    filler = mnt / "filler"
    with contextlib.suppress(OSError), open(filler, "wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


@pytest.mark.timeout(240)
def test_a_full_disk_is_one_line_and_a_rerun_pays_nothing_twice(small_fs: Path) -> None:
    """teacher-fill on a real (tmpfs) filesystem that another writer fills mid-run: one line,
    no traceback; the answers received when the disk filled, which neither the journal nor
    DuckDB can take, go to the rescue file reserved at the start; after the disk is freed the
    rerun loads them and pays only for the prompts never answered."""
    from typer.testing import CliRunner

    from tacorl_offline.cli import app

    n_prompts = 60
    tmp = small_fs.parent
    with LoopbackServer(latency_s=0.05) as server:
        data = write_upstream_json(tmp / "d.json", n_prompts, words=120)
        wh = small_fs / "w.duckdb"
        cfg = openai_config(tmp / "c.yaml", server, concurrency=4)
        assert CliRunner().invoke(app, ["ingest", str(data), "-w", str(wh)]).exit_code == 0
        env = {**os.environ, "TACORL_TEST_KEY": SECRET}
        child = subprocess.Popen(
            _fill_cmd(cfg, wh),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.calls < 10 and child.poll() is None:
            time.sleep(0.005)
        filler = _fill_disk(small_fs)
        _, err = child.communicate(timeout=120)
        assert child.returncode == 2, err
        err = "\n".join(error_lines(err))
        assert "No space left on device" in err, err
        assert "\n" not in err and "Traceback" not in err, err
        paid_first = server.calls
        assert 10 <= paid_first < n_prompts
        filler.unlink()
        second = subprocess.run(_fill_cmd(cfg, wh), env=env, capture_output=True, text=True)
        assert second.returncode == 0, second.stderr
        w = Warehouse(wh)
        answered = rows(w, "SELECT count(*) FROM responses WHERE kind = 'original' AND ok")[0][0]
        assert answered == n_prompts
        # Nothing paid twice: one request per prompt over both runs.
        assert server.calls == n_prompts, (paid_first, server.calls)
        assert max(server.calls_by_hash.values()) == 1
        (ledger,) = rows(w, "SELECT count(*) FROM api_calls WHERE status <> 'hit'")[0]
        assert ledger == server.calls
        assert not (small_fs / "w.duckdb.rescue").exists()


def test_answers_neither_the_journal_nor_duckdb_take_go_to_the_rescue_file(
    tmp_path, loopback_server, monkeypatch, caplog
) -> None:
    """The fallback chain on its own (the tmpfs test above is the real disk): the journal
    takes the small write-ahead rows but refuses the answers after the third, DuckDB refuses
    them too; the answers received go to the reserved rescue file, the next open loads them,
    and the rerun pays for none of them again."""
    monkeypatch.setenv("TACORL_TEST_KEY", SECRET)
    cfg, w = openai_setup(tmp_path, loopback_server, 10, concurrency=2)
    real_journal, real_write = Warehouse.journal, Warehouse.write_entries
    answers = []

    def journal(self, entries, *, sync=True):
        entries = list(entries)
        if sync and any(t == "responses" for t, _ in entries):
            answers.append(entries)
            if len(answers) > 3:
                raise JournalWriteError(
                    f"cannot append to the warehouse journal {self.journal_path}: "
                    "No space left on device"
                )
        return real_journal(self, entries, sync=sync)

    def duckdb_full(self, entries):
        raise UserError(f"cannot write warehouse {self.path} (no space left on device)")

    monkeypatch.setattr(Warehouse, "journal", journal)
    monkeypatch.setattr(Warehouse, "write_entries", duckdb_full)
    with caplog.at_level(logging.WARNING, logger="tacorl_offline"), pytest.raises(UserError) as e:
        asyncio.run(run_fill(cfg, warehouse=w))
    msg = str(e.value)
    assert "rescue file" in msg and "No space left" in msg and "\n" not in msg, msg
    paid = loopback_server.calls
    assert 3 < paid < 10
    # The run's own last write (DuckDB took that one) loaded the rescue file already.
    assert any("rescue file" in r.getMessage() for r in caplog.records)
    assert not w.path.with_name(w.path.name + ".rescue").exists()
    monkeypatch.setattr(Warehouse, "journal", real_journal)
    monkeypatch.setattr(Warehouse, "write_entries", real_write)
    answered = rows(w, "SELECT count(*) FROM responses WHERE kind = 'original' AND ok")[0][0]
    assert answered == paid
    assert rows(w, "SELECT count(*) FROM calls_in_flight") == [(0,)]
    s = asyncio.run(run_fill(cfg, warehouse=w))
    assert s.filled == 10 - paid and loopback_server.calls == 10
    assert max(loopback_server.calls_by_hash.values()) == 1


def test_a_rescue_user_path_is_used_and_loaded(tmp_path, monkeypatch) -> None:
    other = tmp_path / "elsewhere" / "rescue.jsonl"
    monkeypatch.setenv("TACORL_RESCUE_PATH", str(other))
    w = Warehouse(tmp_path / "w.duckdb")
    w.flush()
    assert w.reserve_rescue() == other and other.stat().st_size >= 512 * 1024
    call = str(uuid.uuid4())
    path, saved = w.rescue([[("api_calls", _ledger_row(call))]])
    assert (path, saved) == (other, 1)
    w.flush()
    assert rows(w, "SELECT call_id FROM api_calls") == [(call,)]
    assert not other.exists()


def test_rescue_space_is_released_when_unused(tmp_path, loopback_server, monkeypatch) -> None:
    monkeypatch.setenv("TACORL_TEST_KEY", SECRET)
    cfg, w = openai_setup(tmp_path, loopback_server, 3)
    asyncio.run(run_fill(cfg, warehouse=w))
    assert not w.path.with_name(w.path.name + ".rescue").exists()
