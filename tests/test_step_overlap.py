"""A step that overlaps the teacher (issue 19): each prompt's calls start as soon as its masks
are drawn, while the policy samples the next prompts, and nothing about the result changes."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from tacorl_offline.calls import Caller, Job
from tacorl_offline.config import resolve as resolve_config
from tacorl_offline.hashing import request_hash, teacher_key
from tacorl_offline.pricing import prices_from_config
from tacorl_offline.teachers import build_teacher, render_messages
from tacorl_offline.teachers.base import TeacherRequest
from tacorl_offline.trainer import Trainer
from tacorl_offline.warehouse import Warehouse
from tests.conftest import SECRET, openai_config
from tests.helpers import prepare, q
from tests.loopback import LoopbackServer

SAMPLES = (
    "SELECT step, prompt_id, sample_idx, mask_hash, request_hash, reward, cache_hit,"
    " short_circuit FROM samples WHERE run_id = ? ORDER BY step, prompt_id, sample_idx"
)


def _train(cfg, *, overlap: bool, **kw):
    trainer = Trainer(cfg, warehouse=Warehouse(cfg.warehouse), **kw)
    trainer.overlap = overlap
    return trainer, asyncio.run(trainer.run())


def test_overlapped_steps_draw_the_same_masks_and_pay_the_same_calls(
    tmp_path, loopback_server, tiny_bert
) -> None:
    # 4 samples a prompt from a nearly saturated head: masks repeat within a step, so the
    # in-step duplicates (paid once, shared) are exercised too.
    kw = {"samples_per_prompt": 4, "sampler": "bernoulli"}
    (tmp_path / "seq").mkdir()
    (tmp_path / "ovl").mkdir()
    seq = prepare(tmp_path / "seq", loopback_server, tiny_bert, **kw)
    ovl = prepare(tmp_path / "ovl", loopback_server, tiny_bert, **kw)
    loopback_server.reset()
    _, s_seq = _train(seq, overlap=False)
    calls_seq = loopback_server.calls
    loopback_server.reset()
    _, s_ovl = _train(ovl, overlap=True)
    assert loopback_server.calls == calls_seq == s_ovl.spend.calls == s_seq.spend.calls > 0
    a = q(seq, SAMPLES, [s_seq.run_id])
    b = q(ovl, SAMPLES, [s_ovl.run_id])
    assert [r[:5] + r[6:] for r in a] == [r[:5] + r[6:] for r in b]  # masks, hashes, hits
    assert [r[5] for r in a] == pytest.approx([r[5] for r in b], rel=1e-4, nan_ok=True)
    assert s_ovl.spend.hits == s_seq.spend.hits and s_ovl.short_circuits == s_seq.short_circuits
    steps = "SELECT step, loss, reward_mean, calls, hits FROM steps WHERE run_id = ? ORDER BY step"
    for x, y in zip(q(seq, steps, [s_seq.run_id]), q(ovl, steps, [s_ovl.run_id]), strict=True):
        assert x[0] == y[0] and x[3:] == y[3:]
        # One forward per prompt instead of one padded batch: the same numbers up to float
        # rounding. The loss is a sum of advantage x log-prob terms of order 1 that nearly
        # cancel (here about -0.008), so its rounding is absolute, not relative to the sum:
        # 1.5e-6 was seen once on busy cores (thread timing changes the reduction order).
        assert x[1] == pytest.approx(y[1], abs=2e-5)
        assert x[2] == pytest.approx(y[2], rel=1e-4, abs=1e-6)  # reward_mean
    ledger = (
        "SELECT status, count(*), count(DISTINCT request_hash) FROM api_calls"
        " WHERE run_id = ? GROUP BY status ORDER BY status"
    )
    assert q(seq, ledger, [s_seq.run_id]) == q(ovl, ledger, [s_ovl.run_id])
    # Every write-ahead row was closed by its answer.
    assert q(ovl, "SELECT count(*) FROM calls_in_flight") == [(0,)]


def test_a_steps_record_waits_for_the_next_steps_teacher_wait_and_survives_a_crash(
    tmp_path, loopback_server, tiny_bert
) -> None:
    """Overlapped, step k's rows are written during step k+1's wait: when step k is done only
    steps before it are in the warehouse; a checkpoint, the end of the run and a crash each
    write what is held."""
    from tests.helpers import Crash

    cfg = prepare(tmp_path, loopback_server, tiny_bert, max_steps=4, checkpoint_every=3)
    seen: list[tuple[int, list[int]]] = []

    def watch(log, _s) -> None:
        got = q(cfg, "SELECT step FROM steps WHERE run_id = ? ORDER BY step", [trainer.run_id])
        seen.append((log.step, [r[0] for r in got]))
        if log.step == 4:
            raise Crash

    trainer = Trainer(cfg, warehouse=Warehouse(cfg.warehouse), on_step=watch)
    with pytest.raises(Crash):
        asyncio.run(trainer.run())
    # step 3's rows went in with its checkpoint; step 4's were held when it crashed
    assert seen == [(1, []), (2, [1]), (3, [1, 2]), (4, [1, 2, 3])]
    # ... and written on the way out: every step's rows and samples are there
    assert q(cfg, "SELECT count(*) FROM steps WHERE run_id = ?", [trainer.run_id]) == [(4,)]
    assert q(
        cfg, "SELECT count(DISTINCT step) FROM samples WHERE run_id = ?", [trainer.run_id]
    ) == [(4,)]
    # sequential steps write their own rows at once
    seen.clear()
    trainer = Trainer(cfg, warehouse=Warehouse(cfg.warehouse), on_step=watch)
    trainer.overlap = False
    with pytest.raises(Crash):
        asyncio.run(trainer.run())
    assert seen == [(1, [1]), (2, [1, 2]), (3, [1, 2, 3]), (4, [1, 2, 3, 4])]


def test_the_first_prompts_calls_are_made_while_the_last_prompt_is_sampled(
    tmp_path, loopback_server, tiny_bert, monkeypatch
) -> None:
    import tacorl_offline.training.rollout as rollout_mod

    cfg = prepare(tmp_path, loopback_server, tiny_bert, max_steps=1, sampler="bernoulli")
    asked = threading.Event()
    loopback_server.reset()
    loopback_server.responder = lambda messages: (asked.set(), "an answer")[1]
    trainer = Trainer(cfg, warehouse=Warehouse(cfg.warehouse))
    draw = rollout_mod._group
    seen: list[bool] = []

    def slow_last_prompt(*a, **kw):
        # Drawn prompt by prompt: the last prompt's masks wait (up to 30 s) for the server to
        # see a request, which only an overlapped step can have sent by then.
        if len(seen) == cfg.train.batch_size - 1:
            seen.append(asked.wait(30))
        else:
            seen.append(asked.is_set())
        return draw(*a, **kw)

    monkeypatch.setattr(rollout_mod, "_group", slow_last_prompt)
    s = asyncio.run(trainer.run())
    assert s.steps == 1 and s.spend.calls == loopback_server.calls > 0
    assert len(seen) == cfg.train.batch_size  # one draw per prompt
    assert seen[-1] is True


def test_an_error_while_sampling_stops_the_step_and_its_calls(
    tmp_path, loopback_server, tiny_bert, monkeypatch
) -> None:
    import tacorl_offline.training.rollout as rollout_mod

    cfg = prepare(tmp_path, loopback_server, tiny_bert, max_steps=1)
    loopback_server.reset()
    asked = threading.Event()
    loopback_server.responder = lambda messages: (asked.set(), "an answer")[1]
    trainer = Trainer(cfg, warehouse=Warehouse(cfg.warehouse))
    draw = rollout_mod._group
    n = [0]

    def failing(*a, **kw):
        n[0] += 1
        if n[0] == 3:  # once the first prompts' calls are out (up to 30 s), the policy fails
            asked.wait(30)
            raise RuntimeError("the policy broke mid-step")
        return draw(*a, **kw)

    monkeypatch.setattr(rollout_mod, "_group", failing)
    with pytest.raises(RuntimeError, match="broke mid-step"):
        asyncio.run(trainer.run())
    assert q(cfg, "SELECT count(*) FROM steps") == [(0,)]
    assert loopback_server.calls > 0  # the first prompts' calls were made before the error
    Warehouse(cfg.warehouse).flush()
    # Every request sent is accounted for: answered, or (cut off) kept by its write-ahead
    # row, still in flight or already counted as possibly billed.
    ledger = dict(q(cfg, "SELECT status, count(*) FROM api_calls WHERE phase = 'train' GROUP BY 1"))
    ok, cut = ledger.get("ok", 0), ledger.get("in_flight_at_crash", 0)
    assert set(ledger) <= {"ok", "in_flight_at_crash"}
    ahead = q(cfg, "SELECT count(*) FROM calls_in_flight")[0][0]
    assert ok <= loopback_server.calls <= ok + cut + ahead


def test_a_stream_takes_jobs_as_they_come_and_sends_each_request_once(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("TACORL_TEST_KEY", SECRET)
    with LoopbackServer(latency_s=0.05) as server:
        cfg = resolve_config(
            openai_config(tmp_path / "c.yaml", server, concurrency=4),
            environ={},
            overrides={"warehouse": str(tmp_path / "wh.duckdb")},
        )
        w = Warehouse(cfg.warehouse)
        teacher = build_teacher(cfg.teacher, environ={"TACORL_TEST_KEY": SECRET})
        tkey = teacher_key(cfg.teacher.key_settings())
        caller = Caller(w, teacher, tkey, prices_from_config(cfg), "fill", "run-stream")

        def job(i: int) -> Job:
            messages = render_messages(cfg.teacher, f"prompt number {i}", {})
            return Job(TeacherRequest(request_hash(tkey, messages), messages), "original", f"p{i}")

        async def go():
            try:
                stream = caller.stream(concurrency=4)
                stream.submit([job(i) for i in range(6)])
                await asyncio.sleep(0.02)  # some in flight, some queued
                stream.submit([job(i) for i in range(3, 10)])  # 3..5 again: not resent
                return await stream.finish()
            finally:
                await teacher.aclose()

        results = asyncio.run(go())
        assert server.calls == 10 and server.max_in_flight <= 4
    assert len(results) == 10 and all(r.ok for r in results.values())
    lines = [json.loads(x) for x in w.journal_path.read_text(encoding="utf-8").splitlines()]
    ahead = [x for x in lines if x["t"] == "calls_in_flight"]
    done = [x for x in lines if x["t"] == "calls_done"]
    # Each request left after its write-ahead row, and each answer closed its own.
    assert len(ahead) == len(done) == 10
    assert {x["r"]["call_id"] for x in ahead} == {x["r"]["call_id"] for x in done}
