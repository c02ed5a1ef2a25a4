"""The MaskMap holds what a lookup needs in compact arrays and reads answer text on demand
(issue 19): every lookup answers as the stored rows say, at about 100 bytes an answer."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from tacorl_offline.hashing import hash_obj
from tacorl_offline.replay import MaskMap
from tacorl_offline.warehouse import Warehouse, insert_rows

TKEY = "v1:teacher"


def _rh(i: int | str) -> str:
    return hash_obj({"kind": "request", "i": i})  # the real v1:<64 hex> form


def _response(rh: str, answer: str | None, prompt: str, *, ok: bool = True, cost=0.25) -> dict:
    return {
        "request_hash": rh,
        "teacher_key": TKEY,
        "kind": "compressed",
        "prompt_id": prompt,
        "backend": "openai",
        "model": "m",
        "ok": ok,
        "source": "api",
        "answer": answer,
        "cost_usd": cost,
    }


def test_warmed_map_answers_like_the_stored_rows(wh_path: Path) -> None:
    w = Warehouse(wh_path)
    n = 300
    answers = {i: f"answer {i} é ✓ " * (i % 4) for i in range(n)}  # "" for i % 4 == 0
    with w.connect() as con:
        rows = [_response(_rh(i), answers[i], f"p{i % 7}", cost=0.001 * i) for i in range(n)]
        rows.append(_response(_rh("failed"), None, "p0", ok=False, cost=0.0))
        rows.append(_response(_rh("theirs"), "another prompt's answer", "q"))
        rows.append(_response(_rh("unrelated"), "not ours", "q"))
        rows.append(_response("v1:short", "an old-form hash", "p1"))  # kept in a dict
        insert_rows(con, "responses", rows)
        masks = [
            {"prompt_id": f"p{i % 7}", "mask_hash": f"m{i}", "teacher_key": TKEY}
            | {"request_hash": _rh(i)}
            for i in range(0, n, 2)  # half the answers have a mask row
        ]
        masks += [
            {"prompt_id": "p0", "mask_hash": "m-failed", "teacher_key": TKEY}
            | {"request_hash": _rh("failed")},
            # a mask of the run that leads to another prompt's answer
            {"prompt_id": "p3", "mask_hash": "m-theirs", "teacher_key": TKEY}
            | {"request_hash": _rh("theirs")},
            {"prompt_id": "p1", "mask_hash": "m-short", "teacher_key": TKEY}
            | {"request_hash": "v1:short"},
            {"prompt_id": "q", "mask_hash": "m-q", "teacher_key": TKEY}  # not the run's
            | {"request_hash": _rh("unrelated")},
        ]
        insert_rows(con, "masks", masks)
        metric_rows = [
            {"request_hash": _rh(i), "reference_hash": "v1:ref", "metric": m, "value": i / 10}
            for i in range(0, n, 3)
            for m in ("bleu", "rougeL")
        ]
        insert_rows(con, "metric_values", metric_rows)
        mm = MaskMap(TKEY)
        prompts = [f"p{k}" for k in range(7)]
        assert mm.warm(con, prompts, metric_names=["bleu", "rougeL"]) == n // 2 + 3
    assert len(mm) == n // 2 + 3 and mm.answers == n + 3
    for i in range(n):
        row = mm.answer(_rh(i))
        assert row == {
            "request_hash": _rh(i),
            "answer": answers[i],
            "ok": True,
            "cost_usd": 0.001 * i,
        }
        assert mm.get(f"p{i % 7}", f"m{i}") == (_rh(i) if i % 2 == 0 else None)
        want = {"bleu": i / 10, "rougeL": i / 10} if i % 3 == 0 else None
        assert mm.metrics((_rh(i), "v1:ref"), {"bleu": "bleu", "rougeL": "rougeL"}) == want
    assert mm.answer(_rh("failed")) == {
        "request_hash": _rh("failed"),
        "answer": None,
        "ok": False,
        "cost_usd": 0.0,
    }
    assert mm.get("p3", "m-theirs") == _rh("theirs")
    assert mm.answer(_rh("theirs"))["answer"] == "another prompt's answer"  # type: ignore[index]
    assert not mm.elsewhere(_rh("theirs")) and mm.elsewhere(_rh("unrelated"))
    assert mm.get("p1", "m-short") == "v1:short"
    assert mm.answer("v1:short")["answer"] == "an old-form hash"  # type: ignore[index]
    assert mm.get("q", "m-q") is None and mm.answer(_rh("unrelated")) is None
    assert mm.metrics((_rh(0), "v1:other-ref"), {"bleu": "bleu"}) is None
    # Later entries go beside the arrays; a known pair is not held twice.
    mm.add("p0", "m0", _rh(0))
    assert len(mm) == n // 2 + 3
    mm.add("p0", "m-new", _rh(1))
    mm.absorb([("responses", _response(_rh("new"), "fresh", "p0"))])
    mm.add_metrics(
        [{"request_hash": _rh(0), "reference_hash": "v1:ref", "metric": "f1", "value": 1}]
    )
    assert len(mm) == n // 2 + 4 and mm.get("p0", "m-new") == _rh(1)
    assert mm.answer(_rh("new"))["answer"] == "fresh"  # type: ignore[index]
    assert mm.metrics((_rh(0), "v1:ref"), {"b": "bleu", "f": "f1"}) == {"b": 0.0, "f": 1.0}
    # What the arrays hold: ~100 bytes an answer (48 a mask, 53 an answer, 25 a metric value).
    assert mm.held_bytes() < 150 * (n + 3)


def test_raw_hashes_reads_each_string_as_raw_hash_does() -> None:
    import pyarrow as pa

    from tacorl_offline.replay import _raw_hash, raw_hashes

    good = _rh(1)
    cases = [
        good,
        "v1:" + good[3:].upper(),  # fromhex reads either case
        "v1:short",
        None,
        "v2:" + good[3:],
        good[:-1] + "g",  # not hex
        "v1:" + "é" * 32 + good[35:],  # 67 characters, more bytes
        "v1:" + "ab " * 21 + "a",  # fromhex skips spaces: fewer than 32 bytes
        "",
        good + "0",
    ]
    arr = pa.array(["x", *cases], type=pa.string()).slice(1)  # an offset, as batches have
    words, ok = raw_hashes(arr)
    for i, h in enumerate(cases):
        raw = None if h is None else _raw_hash(h)
        assert bool(ok[i]) == (raw is not None), h
        assert words[i].tobytes() == (raw or bytes(32)), h
    words, ok = raw_hashes(pa.array([good] * 3, type=pa.large_string()))  # one block
    assert ok.all() and {w.tobytes() for w in words} == {_raw_hash(good)}


def test_warm_keeps_metric_values_of_hashes_beside_the_arrays(wh_path: Path) -> None:
    """Metric values are kept for the answers the map holds however it holds them (sorted
    arrays, the dict of other-form hashes, a mask whose answer is not stored), and for no
    other answer."""
    w = Warehouse(wh_path)
    with w.connect() as con:
        insert_rows(
            con,
            "responses",
            [
                _response(_rh(1), "one", "p"),
                _response("v1:short", "old form", "p"),
                _response(_rh("unrelated"), "not ours", "q"),
            ],
        )
        insert_rows(
            con,
            "masks",
            [
                {"prompt_id": "p", "mask_hash": "m1", "teacher_key": TKEY, "request_hash": _rh(1)},
                {"prompt_id": "p", "mask_hash": "m-gone", "teacher_key": TKEY}
                | {"request_hash": _rh("gone")},  # its answer is not stored
            ],
        )
        hashes = [_rh(1), "v1:short", _rh("gone"), _rh("unrelated")]
        insert_rows(
            con,
            "metric_values",
            [
                {"request_hash": h, "reference_hash": "v1:ref", "metric": "bleu", "value": i}
                for i, h in enumerate(hashes)
            ],
        )
        mm = MaskMap(TKEY)
        assert mm.warm(con, ["p"], metric_names=["bleu"]) == 2
    assert mm.get("p", "m-gone") == _rh("gone") and mm.answer(_rh("gone")) is None
    for i, h in enumerate(hashes):
        want = {"bleu": float(i)} if h != _rh("unrelated") else None
        assert mm.metrics((h, "v1:ref"), {"bleu": "bleu"}) == want, h


def test_warm_starts_over_without_the_limit_for_a_value_larger_than_it(
    wh_path: Path, monkeypatch
) -> None:
    """DuckDB cannot read a value larger than the warm-up's memory limit; the warm-up then
    runs again under DuckDB's default limit, and the map holds exactly what is stored."""
    import tacorl_offline.replay as replay

    monkeypatch.setattr(replay, "_WARM_MEMORY", 1 << 20)
    big = "long answer " * 400_000  # 4.8 MB
    w = Warehouse(wh_path)
    with w.connect() as con:
        insert_rows(
            con,
            "responses",
            [_response(_rh(i), big if i == 5 else f"a{i}", f"p{i % 3}") for i in range(10)],
        )
        insert_rows(
            con,
            "masks",
            [
                {"prompt_id": f"p{i % 3}", "mask_hash": f"m{i}", "teacher_key": TKEY}
                | {"request_hash": _rh(i)}
                for i in range(10)
            ],
        )
    with w.connect() as con:  # the rows on disk, read back through the buffer pool
        with con.cursor() as probe:  # under the warm-up's limit alone it cannot be read
            for k, v in replay._warm_settings(probe).items():
                probe.execute(f"SET {k} = '{v}'")
            with pytest.raises(duckdb.OutOfMemoryException):
                probe.execute("SELECT answer FROM responses").fetchall()
            probe.execute("RESET memory_limit")
            probe.execute("RESET threads")
        default_limit = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
        mm = MaskMap(TKEY)
        assert mm.warm(con, ["p0", "p1", "p2"]) == 10
        memory_limit = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    assert len(mm) == 10 and mm.answers == 10
    for i in range(10):
        assert mm.get(f"p{i % 3}", f"m{i}") == _rh(i)
        assert mm.answer(_rh(i))["answer"] == (big if i == 5 else f"a{i}")  # type: ignore[index]
    assert memory_limit == default_limit
