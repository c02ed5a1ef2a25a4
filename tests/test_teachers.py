"""Teacher backends against real components: the official openai SDK over real HTTP to the
loopback server, the extractive stand-in, and a tiny real GPT-2 for the hf backend."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tacorl_offline.calls import Caller, Job
from tacorl_offline.config import TeacherConfig
from tacorl_offline.errors import UserError
from tacorl_offline.pricing import PriceTable
from tacorl_offline.teachers import (
    Teacher,
    TeacherRequest,
    TeacherResult,
    build_teacher,
    render_messages,
)
from tacorl_offline.teachers.openai_teacher import is_loopback_url
from tacorl_offline.warehouse import Warehouse

if TYPE_CHECKING:
    from tests.loopback import LoopbackServer

# loopback_server comes from tests/conftest.py; the tiny GPT-2 fixtures from here.
pytest_plugins = ["tests.tiny_causal"]

SECRET = "sk-test-DISTINCTIVE-7f3a9c2e"
ENV = {"OPENAI_API_KEY": SECRET}
TEXT = "The board met on Monday. Revenue grew by ten percent! Who signed the deal? Alice did.\nNext steps follow."


def _openai_cfg(server: LoopbackServer, **kw: Any) -> TeacherConfig:
    base: dict[str, Any] = {
        "backend": "openai",
        "model": "gpt-test",
        "base_url": server.base_url,
        "timeout_s": 2.0,
        "max_retries": 1,
    }
    base.update(kw)
    return TeacherConfig(**base)


def _req(cfg: TeacherConfig, text: str, i: int = 0, **fields: Any) -> TeacherRequest:
    return TeacherRequest(f"h{i}", render_messages(cfg, text, fields), text=text, fields=fields)


def _run(teacher: Teacher, *reqs: TeacherRequest) -> list[TeacherResult]:
    async def go() -> list[TeacherResult]:
        try:
            return list(await asyncio.gather(*(teacher.answer(r) for r in reqs)))
        finally:
            await teacher.aclose()

    return asyncio.run(go())


# ------------------------------------------------------------------------ render_messages


def test_render_messages_system_user_and_fields() -> None:
    cfg = TeacherConfig(template="Q: {question}\n{transcript}\nA:")
    msgs = render_messages(cfg, "some {braced} text", {"question": "why {x}?"})
    assert msgs == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Q: why {x}?\nsome {braced} text\nA:"},
    ]
    assert render_messages(TeacherConfig(system_prompt=None), "t", {})[0]["role"] == "user"


def test_render_messages_errors_are_user_errors() -> None:
    with pytest.raises(UserError, match=r"\{question\}"):
        render_messages(TeacherConfig(template="{question} {transcript}"), "t", {})
    # Single-brace JSON is refused with a hint; doubled braces are literal.
    with pytest.raises(UserError, match="literal braces"):
        render_messages(TeacherConfig(template='Reply as {"answer": 1}: {transcript}'), "t", {})
    with pytest.raises(UserError, match="not a plain field name"):
        render_messages(TeacherConfig(template="{transcript.__class__}"), "t", {})
    with pytest.raises(UserError):
        render_messages(TeacherConfig(template="oops } {transcript}"), "t", {})
    ok = render_messages(TeacherConfig(template='Reply as {{"answer": 1}}: {transcript}'), "t", {})
    assert ok[-1]["content"] == 'Reply as {"answer": 1}: t'


# ------------------------------------------------------------------------------ openai


def test_openai_success_with_usage(loopback_server: LoopbackServer) -> None:
    cfg = _openai_cfg(loopback_server, seed=7)
    from tests.loopback import answer_for

    full, short = _run(
        build_teacher(cfg, environ=ENV), _req(cfg, TEXT, 0), _req(cfg, "Revenue grew.", 1)
    )
    assert full.ok and short.ok and full.answer != short.answer
    assert full.answer == answer_for(_req(cfg, TEXT).messages)
    assert full.usage_source == "api" and full.input_tokens > short.input_tokens > 0
    assert full.output_tokens == len(full.answer.split())
    assert [a.status for a in full.attempts] == ["ok"] and full.finish_reason == "stop"
    body = loopback_server.bodies[0]
    assert {k: body[k] for k in ("model", "temperature", "top_p", "max_tokens", "seed")} == {
        "model": "gpt-test",
        "temperature": 0.0,
        "top_p": 1.0,
        "max_tokens": 1500,
        "seed": 7,
    }
    assert loopback_server.auth_headers[0] == f"Bearer {SECRET}"


def test_openai_usage_fallback_counts_tokens(loopback_server: LoopbackServer) -> None:
    loopback_server.set(mode="no_usage")
    cfg = _openai_cfg(loopback_server)
    (r,) = _run(build_teacher(cfg, environ=ENV), _req(cfg, TEXT))
    assert r.ok and r.usage_source == "tokenizer" and r.input_tokens > 0 and r.output_tokens > 0


@pytest.mark.parametrize(("concurrency", "k"), [(6, 6), (3, 8)])
def test_caller_bounds_concurrency(
    tmp_path: Path, loopback_server: LoopbackServer, concurrency: int, k: int
) -> None:
    """Concurrency is enforced in one place, the Caller's workers (not the teacher)."""
    loopback_server.set(latency_s=0.3)
    cfg = _openai_cfg(loopback_server)
    teacher = build_teacher(cfg, environ=ENV)
    caller = Caller(Warehouse(tmp_path / "w.duckdb"), teacher, "tk", PriceTable(), "fill", "run-1")
    jobs = [Job(_req(cfg, f"text {i}", i), "original", f"p{i}") for i in range(k)]

    async def go() -> dict[str, TeacherResult]:
        try:
            return await caller.run(jobs, concurrency=concurrency)
        finally:
            await teacher.aclose()

    results = asyncio.run(go())
    assert len(results) == k and all(r.ok for r in results.values())
    assert loopback_server.calls == k
    assert loopback_server.max_in_flight == concurrency


def test_openai_429_retry_after_honoured(loopback_server: LoopbackServer) -> None:
    loopback_server.set(retry_after=1)
    loopback_server.script("429")
    cfg = _openai_cfg(loopback_server, max_retries=2)
    (r,) = _run(build_teacher(cfg, environ=ENV), _req(cfg, TEXT))
    assert r.ok
    assert [a.status for a in r.attempts] == ["http_429", "ok"]
    assert r.attempts[0].error == "HTTP 429 (Retry-After: 1)"
    assert r.latency_s >= 0.9  # waited for Retry-After: 1
    assert loopback_server.calls == 2


def test_openai_500_retried_then_fails(loopback_server: LoopbackServer) -> None:
    loopback_server.set(mode="500")
    cfg = _openai_cfg(loopback_server, max_retries=1)
    (r,) = _run(build_teacher(cfg, environ=ENV), _req(cfg, TEXT))
    assert not r.ok and not r.permanent and r.error_kind == "http"
    assert [a.status for a in r.attempts] == ["http_500", "http_500"]
    assert "500" in r.error and "\n" not in r.error


def test_openai_429_after_retries_is_transient(loopback_server: LoopbackServer) -> None:
    loopback_server.set(mode="429", retry_after=0.1)
    cfg = _openai_cfg(loopback_server, max_retries=1)
    (r,) = _run(build_teacher(cfg, environ=ENV), _req(cfg, TEXT))
    assert not r.ok and not r.permanent and "429" in r.error
    assert [a.status for a in r.attempts] == ["http_429", "http_429"]


def test_openai_hang_times_out(loopback_server: LoopbackServer) -> None:
    loopback_server.set(mode="hang", hang_s=5)
    cfg = _openai_cfg(loopback_server, timeout_s=0.3, max_retries=0)
    (r,) = _run(build_teacher(cfg, environ=ENV), _req(cfg, TEXT))
    # Answered after 5 s had the timeout not fired: a timeout result proves it did.
    assert not r.ok and not r.permanent and r.error_kind == "timeout"
    assert [a.status for a in r.attempts] == ["timeout"]


def test_openai_malformed_json(loopback_server: LoopbackServer) -> None:
    loopback_server.set(mode="malformed")
    cfg = _openai_cfg(loopback_server, max_retries=0)
    (r,) = _run(build_teacher(cfg, environ=ENV), _req(cfg, TEXT))
    assert not r.ok and not r.permanent and r.error_kind == "malformed"
    assert [a.status for a in r.attempts] == ["malformed"]


@pytest.mark.parametrize("mode", ["empty", "content_filter"])
def test_openai_unusable_answers_are_permanent_failures(
    loopback_server: LoopbackServer, mode: str
) -> None:
    loopback_server.set(mode=mode)
    cfg = _openai_cfg(loopback_server)
    (r,) = _run(build_teacher(cfg, environ=ENV), _req(cfg, TEXT))
    assert not r.ok and r.permanent and r.error_kind == mode
    assert not r.answer and r.input_tokens > 0  # still paid for: usage kept
    assert loopback_server.calls == 1  # not retried


def test_openai_connection_refused_is_distinguishable(loopback_server: LoopbackServer) -> None:
    url = loopback_server.base_url
    loopback_server.stop()  # nothing listens on the port any more
    cfg = TeacherConfig(backend="openai", model="m", base_url=url, timeout_s=1, max_retries=0)
    results = _run(build_teacher(cfg, environ={}), *(_req(cfg, f"t{i}", i) for i in range(3)))
    assert all(r.error_kind == "connection" and not r.permanent for r in results)
    assert all(url in (r.error or "") and "unreachable" in (r.error or "") for r in results)


def test_openai_key_never_leaks(loopback_server: LoopbackServer) -> None:
    cfg = _openai_cfg(loopback_server, max_retries=0, timeout_s=0.3)
    teacher = build_teacher(cfg, environ=ENV)

    async def go() -> list[TeacherResult]:
        out = []
        for mode in ("ok", "500", "malformed", "empty", "content_filter", "hang"):
            loopback_server.set(mode=mode, hang_s=2)
            out.append(await teacher.answer(_req(cfg, TEXT)))
        await teacher.aclose()
        return out

    results = asyncio.run(go())
    assert len(results) == 6 and results[0].ok
    assert SECRET not in repr(results) and SECRET not in repr(teacher)
    assert SECRET not in repr(teacher.key_settings())


def test_openai_key_required_unless_loopback() -> None:
    remote = TeacherConfig(backend="openai", model="m", base_url="https://api.example.com/v1")
    with pytest.raises(UserError, match=r"set OPENAI_API_KEY or teacher\.api_key_env"):
        build_teacher(remote, environ={})
    with pytest.raises(UserError, match="MY_KEY"):
        build_teacher(remote.model_copy(update={"api_key_env": "MY_KEY"}), environ={})
    with pytest.raises(UserError, match="OPENAI_API_KEY"):
        build_teacher(TeacherConfig(backend="openai", model="m"), environ={})
    assert is_loopback_url("http://localhost:8000/v1") and is_loopback_url("http://[::1]:1/v1")
    assert not is_loopback_url("http://10.0.0.1/v1")


def test_azure_deployment_path(loopback_server: LoopbackServer) -> None:
    cfg = TeacherConfig(
        backend="azure",
        model="my-deploy",
        azure_endpoint=loopback_server.endpoint,
        max_retries=0,
        timeout_s=2,
    )
    (r,) = _run(build_teacher(cfg, environ={"OPENAI_API_KEY": SECRET}), _req(cfg, TEXT))
    assert r.ok and r.usage_source == "api"
    assert loopback_server.auth_headers == [SECRET]  # Azure sends the key as api-key
    with pytest.raises(UserError, match="azure_endpoint"):
        build_teacher(TeacherConfig(backend="azure", model="d"), environ=ENV)


def test_loopback_cli_subprocess() -> None:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.loopback", "--port", "0", "--latency", "0.05"],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        cfg = TeacherConfig(backend="openai", model="m", base_url=url, max_retries=0, timeout_s=5)
        (r,) = _run(build_teacher(cfg, environ={}), _req(cfg, TEXT))
        assert r.ok and r.answer
    finally:
        proc.terminate()
        proc.wait(timeout=5)


# -------------------------------------------------------------------------- extractive


def test_extractive_summary_and_qa() -> None:
    summ = TeacherConfig(backend="extractive", extractive_sentences=2)
    t = build_teacher(summ)
    assert t.backend == "extractive" and t.model.startswith("extractive")
    assert t.key_settings()["backend"] == "extractive"
    (a,) = _run(t, _req(summ, TEXT))
    assert a.ok and a.answer == "The board met on Monday. Revenue grew by ten percent!"
    assert a.usage_source == "tokenizer" and a.output_tokens == 10 and a.input_tokens > 0

    auto = TeacherConfig(backend="extractive", template="{question}\n{transcript}")
    (q,) = _run(build_teacher(auto), _req(auto, TEXT, question="Who signed the deal?"))
    assert q.ok and q.answer == "Who signed the deal?"
    (q2,) = _run(build_teacher(auto), _req(auto, TEXT, question="How much did revenue grow?"))
    assert q2.answer == "Revenue grew by ten percent!"
    (e,) = _run(build_teacher(summ), _req(summ, "   "))
    assert not e.ok and e.permanent and e.error_kind == "empty"


def test_extractive_deterministic_and_honest() -> None:
    cfg = TeacherConfig(backend="extractive", model="gpt-4o")  # stale model name
    t = build_teacher(cfg)
    assert t.model.startswith("extractive") and "stand_in=True" in repr(t)
    reqs = [_req(cfg, f"{TEXT} Item {i}.", i) for i in range(3000)]
    first = _run(t, *reqs)
    second = _run(t, *reqs)
    assert [r.answer for r in first] == [r.answer for r in second]


def test_centroid_picks_the_rows_closest_to_the_mean() -> None:
    from tacorl_offline.teachers.extractive import centroid_picks

    # Unit vectors at 0, 10, 20 and 90 degrees (scaled: only the direction counts): the
    # normalised mean lies near 27 degrees, so rows 1 and 2 are closest, then 0, then 3.
    rows = [[2.0, 0.0], [0.985, 0.174], [0.94, 0.342], [0.0, 5.0]]
    assert centroid_picks(rows, 2) == [1, 2]
    assert centroid_picks(rows, 3) == [0, 1, 2]
    # equal similarities go to the earlier row; the picks come back in document order
    assert centroid_picks([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], 2) == [0, 1]
    assert centroid_picks([[0.0, 1.0], [1.0, 0.2], [1.0, 0.1], [1.0, 0.0]], 2) == [1, 2]


CENTROID_DOC = (
    "The quarterly budget review opened at nine.\n"
    "Marketing spend rose because of the spring campaign.\n"
    "My cat prefers to sleep on the warm windowsill.\n"
    "Finance asked each team to cut travel costs next quarter.\n"
    "The volcano on the island erupted in 1883.\n"
    "The budget shortfall will be covered by deferring two hires."
)


def test_centroid_teacher_real_minilm_deterministic_and_on_topic() -> None:
    """The real bundled MiniLM: the two budget sentences nearest the centroid are chosen (never
    the cat or the volcano), in document order, the same on every call and at another thread
    count; the answer is not the lead summary."""
    import torch

    from tacorl_offline.teachers.extractive import centroid_summary, minilm_embedder

    cfg = TeacherConfig(
        backend="extractive",
        model="gpt-4o",  # a stale real name: never claimed
        extractive_mode="centroid",
        extractive_sentences=2,
    )
    t = build_teacher(cfg)
    assert t.model == "extractive-centroid-2" and "stand_in=True" in repr(t)
    (a,) = _run(t, _req(cfg, CENTROID_DOC))
    sentences = CENTROID_DOC.split("\n")
    chosen = [s for s in sentences if s in a.answer]
    assert len(chosen) == 2 and a.answer == " ".join(chosen)  # two whole sentences, in order
    assert not {"cat", "volcano"} & set(a.answer.lower().replace(".", "").split())
    # exactly the two with the largest cosine to the mean embedding
    e = minilm_embedder()(sentences)
    sims = (e @ torch.nn.functional.normalize(e.mean(0), dim=0)).tolist()
    top = sorted(sorted(range(len(sims)), key=lambda i: -sims[i])[:2])
    assert a.answer == " ".join(sentences[i] for i in top)
    assert a.ok and a.input_tokens > 0 and a.output_tokens == len(a.answer.split())
    assert a.answer != " ".join(sentences[:2])
    again = [r.answer for r in _run(t, *[_req(cfg, CENTROID_DOC)] * 3)]
    threads = torch.get_num_threads()
    torch.set_num_threads(2 if threads == 1 else 1)
    try:
        other_threads = centroid_summary(CENTROID_DOC, 2)
        assert torch.get_num_threads() == (2 if threads == 1 else 1)  # restored after embedding
    finally:
        torch.set_num_threads(threads)
    assert again == [a.answer] * 3 and other_threads == a.answer
    # at most n sentences: the text itself, without loading anything
    assert centroid_summary("One. Two.", 2, embed=None) == "One. Two."


def test_centroid_teacher_differs_from_lead_on_the_sample_and_has_its_own_key() -> None:
    from tacorl_offline.config import DataConfig
    from tacorl_offline.hashing import teacher_key
    from tacorl_offline.ingest import read_records
    from tacorl_offline.resources import resource_dir
    from tacorl_offline.teachers.extractive import centroid_summary, lead_summary

    records, _ = read_records(
        Path(resource_dir("data")) / "sample" / "summarization.json", DataConfig()
    )
    texts = [r.text for r in records]
    differ = sum(centroid_summary(t, 3) != lead_summary(t, 3) for t in texts)
    # lead is not the answer: most transcripts' central sentences are not their first three
    assert len(texts) == 80 and differ >= 70, differ
    keys = {
        mode: teacher_key(
            build_teacher(TeacherConfig(backend="extractive", extractive_mode=mode)).key_settings()
        )
        for mode in ("summary", "centroid", "qa", "auto")
    }
    assert len(set(keys.values())) == 4


# ---------------------------------------------------------------------------------- hf


def _hf_cfg(path: Path, **kw: Any) -> TeacherConfig:
    return TeacherConfig(
        **{"backend": "hf", "model": str(path), "max_tokens": 6, "hf_batch_size": 4, **kw}
    )


def test_hf_greedy_deterministic_and_batched(tiny_causal_dir: Path) -> None:
    cfg = _hf_cfg(tiny_causal_dir)
    t = build_teacher(cfg)
    reqs = [_req(cfg, f"meeting notes number {i} about revenue", i) for i in range(10)]
    first = _run(t, *reqs)
    assert t.batch_sizes == [4, 4, 2]  # concurrent calls gathered into batches
    second = _run(t, *reqs)  # same batches again: greedy decoding is deterministic
    assert [r.answer for r in first] == [r.answer for r in second]
    for r, req in zip(first, reqs, strict=True):
        assert r.request_hash == req.request_hash and r.usage_source == "tokenizer"
        assert r.input_tokens > 0 and 0 < r.output_tokens <= 6
        assert r.ok == bool(r.answer)
    # The chat template was applied.
    assert t.prompt_text(reqs[0].messages).startswith("<|system|>")


def test_hf_plain_prompt_without_chat_template(tiny_causal_plain_dir: Path) -> None:
    cfg = _hf_cfg(tiny_causal_plain_dir, hf_batch_size=2)
    t = build_teacher(cfg)
    msgs = _req(cfg, "hello").messages
    assert t.prompt_text(msgs) == f"{msgs[0]['content']}\n\n{msgs[1]['content']}"
    (r,) = _run(t, _req(cfg, "hello"))
    assert r.input_tokens > 0 and r.output_tokens > 0


def test_hf_missing_dir_is_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a local model directory"):
        build_teacher(TeacherConfig(backend="hf", model=str(tmp_path / "nope" / "deeper" / "x")))
