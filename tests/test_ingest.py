"""Ingest readers: every format, field mapping, dedup, malformed inputs, bundled samples.

The malformed-input table (``MALFORMED_CASES``, ``MALFORMED_EXPECT``) lives in
:mod:`tests.helpers`, shared with the CLI tests.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tacorl_offline.config import DataConfig
from tacorl_offline.errors import UserError
from tacorl_offline.hashing import prompt_id
from tacorl_offline.ingest import (
    MAX_TEXT_CHARS,
    Record,
    RowError,
    detect_format,
    read_dataset,
    read_records,
)
from tests.helpers import MALFORMED_CASES, MALFORMED_EXPECT, _j, _jl

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data" / "sample"


def _write(tmp_path: Path, name: str, suffix: str, content: bytes | None) -> Path:
    p = tmp_path / f"{name}{suffix}"
    if content is not None:
        p.write_bytes(content)
    return p


@pytest.mark.parametrize(
    ("name", "suffix", "content", "overrides"), MALFORMED_CASES, ids=[c[0] for c in MALFORMED_CASES]
)
def test_malformed_inputs_raise_one_line_user_error(
    tmp_path: Path, name: str, suffix: str, content: bytes | None, overrides: dict[str, Any]
) -> None:
    path = _write(tmp_path, name, suffix, content)
    with pytest.raises(UserError) as ei:
        read_records(path, DataConfig(**overrides))
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: "), msg
    assert MALFORMED_EXPECT[name] in msg, msg


def test_cases_table_is_complete() -> None:
    names = [c[0] for c in MALFORMED_CASES]
    assert len(names) == len(set(names)) >= 12
    assert set(names) == set(MALFORMED_EXPECT)


def test_row_errors_abort_with_count_and_first(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_bytes(_jl({"text": "ok"}, {"nope": 1}, {"text": ""}, {"text": "fine"}, {"text": 3}))
    with pytest.raises(UserError) as ei:
        read_records(p, DataConfig())
    assert str(ei.value) == (
        f"{p}: 3 invalid rows; first: row 2: missing 'original_prompt' (also tried 'text', "
        "'prompt'); the record's keys are 'nope'. Fix them, or pass --skip-invalid to load only "
        "the valid rows"
    )


def test_skip_invalid_returns_good_rows_and_errors(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_bytes(
        _jl({"text": "ok"}, {"nope": 1}, "a string", {"text": "fine"})
        + b"\n"
        + _jl({"text": "a\x00"})
    )
    records, errors = read_records(p, DataConfig(), skip_invalid=True)
    assert [r.text for r in records] == ["ok", "fine"]
    assert [r.row for r in records] == [1, 4]
    assert [e.row for e in errors] == [2, 3, 6]  # physical lines; the blank line 5 is skipped
    assert all(isinstance(e, RowError) for e in errors)
    assert "not an object (got str)" in errors[1].reason
    assert "NUL" in errors[2].reason
    assert str(errors[0]).startswith("row 2: missing")


def test_skip_invalid_upstream_rows(tmp_path: Path) -> None:
    p = tmp_path / "d.json"
    p.write_bytes(
        _j(
            {
                "0": {"original_prompt": "a"},
                "x": {"original_prompt": "b"},
                "7": {"original_prompt": ""},
            }
        )
    )
    records, errors = read_records(p, DataConfig(), skip_invalid=True)
    assert [(r.row, r.text) for r in records] == [(0, "a")]
    assert [(e.row, e.reason.split(" ")[0]) for e in errors] == [
        (2, "key"),
        (7, "'original_prompt'"),
    ]


def test_text_size_limit(tmp_path: Path) -> None:
    p = tmp_path / "big.jsonl"
    p.write_bytes(_jl({"text": "x" * (MAX_TEXT_CHARS + 1)}, {"text": "small"}))
    records, errors = read_records(p, DataConfig(), skip_invalid=True)
    assert [r.text for r in records] == ["small"]
    assert "too long" in errors[0].reason and errors[0].row == 1


# ---------------------------------------------------------------------------- formats

ROWS = [
    {"original_prompt": "Alice: hello.\nBob: hi, 3 items.", "gpt_output": "They greeted."},
    {"original_prompt": "Second transcript — naïve café ✓", "gpt_output": ""},
    {"original_prompt": "Third one", "gpt_output": None},
]


def _check_rows(records: list[Record], rows_expected: list[int]) -> None:
    assert [r.text for r in records] == [r["original_prompt"] for r in ROWS]
    assert [r.imported_answer for r in records] == ["They greeted.", None, None]
    assert [r.row for r in records] == rows_expected
    for r in records:
        assert r.prompt_id == prompt_id(r.text, {}) and r.fields == {} and r.reference is None


def test_upstream_json_non_contiguous_keys(tmp_path: Path) -> None:
    p = tmp_path / "up.json"
    p.write_text(
        json.dumps({"0": ROWS[0], "5": ROWS[1], "12": ROWS[2]}, ensure_ascii=False),
        encoding="utf-8",
    )
    records, errors = read_records(p, DataConfig())
    assert errors == []
    _check_rows(records, [0, 5, 12])


def test_json_list(tmp_path: Path) -> None:
    p = tmp_path / "list.json"
    p.write_text(json.dumps(ROWS), encoding="utf-8")
    _check_rows(read_records(p, DataConfig())[0], [1, 2, 3])


def test_jsonl_with_bom_and_blank_lines(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + _jl(ROWS[0]) + b"\n" + _jl(*ROWS[1:]))
    _check_rows(read_records(p, DataConfig())[0], [1, 3, 4])


def test_jsonl_crlf_and_unicode_line_separators(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    text = "one\u2028two\u0085three\x1cfour"
    p.write_bytes(
        json.dumps({"text": text}, ensure_ascii=False).encode() + b"\r\n" + _jl({"text": "b"})
    )
    records, _ = read_records(p, DataConfig())
    assert [r.text for r in records] == [text, "b"]


def test_parquet(tmp_path: Path) -> None:
    p = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{**r, "extra": 1} for r in ROWS]), p)
    _check_rows(read_records(p, DataConfig())[0], [1, 2, 3])


def test_parquet_non_string_column_is_row_error(tmp_path: Path) -> None:
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), p)
    with pytest.raises(
        UserError, match="2 invalid rows; first: row 1: 'text' must be a string, got int"
    ):
        read_records(p, DataConfig())


def test_parquet_missing_text_column(tmp_path: Path) -> None:
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"body": ["x"]}), p)
    with pytest.raises(UserError, match="Parquet file has no text column 'original_prompt'"):
        read_records(p, DataConfig())


def test_csv_quoted_multiline_and_bom(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    body = (
        "\ufefforiginal_prompt,gpt_output\n"
        '"Alice: hello.\nBob: hi, 3 items.",They greeted.\n'
        "Second transcript — naïve café ✓,\n"
        "Third one\n"  # short row: gpt_output missing
    )
    p.write_text(body, encoding="utf-8", newline="")
    _check_rows(read_records(p, DataConfig())[0], [1, 2, 3])


def test_csv_large_cell(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("text\n" + "y" * 200_000 + "\n", encoding="utf-8")
    assert len(read_records(p, DataConfig())[0][0].text) == 200_000


@pytest.mark.parametrize("alias", ["text", "prompt"])
def test_text_aliases(tmp_path: Path, alias: str) -> None:
    p = tmp_path / "d.jsonl"
    p.write_bytes(_jl({alias: "hello", "other": 1}))
    (rec,), _ = read_records(p, DataConfig())
    assert rec.text == "hello"
    c = tmp_path / "d.csv"
    c.write_text(f"{alias}\nhi\n", encoding="utf-8")
    assert read_records(c, DataConfig())[0][0].text == "hi"


def test_no_alias_for_upstream_json_or_custom_text_field(tmp_path: Path) -> None:
    p = tmp_path / "d.json"
    p.write_bytes(_j({"0": {"text": "hello"}}))
    with pytest.raises(UserError, match=r"row 0: missing 'original_prompt'; the record's keys"):
        read_records(p, DataConfig())
    q = tmp_path / "d.jsonl"
    q.write_bytes(_jl({"text": "hello"}))
    with pytest.raises(UserError, match=r"missing 'body'; the record's keys are 'text'\. Noth"):
        read_records(q, DataConfig(text_field="body"))


def test_wrong_text_field_names_the_flag_and_the_keys_and_skip_invalid_cannot_hide_it(
    tmp_path: Path,
) -> None:
    p = tmp_path / "d.jsonl"
    p.write_bytes(_jl({"body": "hello", "id": 1}, {"body": "bye", "id": 2}))
    for skip in (False, True):  # following the old advice (--skip-invalid) loaded 0 rows, exit 0
        with pytest.raises(UserError) as ei:
            read_records(p, DataConfig(), skip_invalid=skip)
        assert str(ei.value) == (
            f"{p}: 2 invalid rows; first: row 1: missing 'original_prompt' (also tried 'text', "
            "'prompt'); the record's keys are 'body', 'id'. Nothing to load: pass --text-field "
            "KEY (data.text_field) naming the field that holds the text"
        )
    (rec, _), _ = read_records(p, DataConfig(text_field="body"))
    assert rec.text == "hello"


def test_fmt_override_and_detection(tmp_path: Path) -> None:
    p = tmp_path / "data.txt"
    p.write_bytes(_jl({"text": "a"}))
    assert read_records(p, DataConfig(), fmt="jsonl")[0][0].text == "a"
    assert detect_format("x.NDJSON") == "jsonl"
    assert detect_format("x.pq") == "parquet"
    assert detect_format("x.json", "csv") == "csv"
    with pytest.raises(UserError, match="unknown format 'xml'"):
        read_records(p, DataConfig(), fmt="xml")


def test_directory_is_user_error(tmp_path: Path) -> None:
    d = tmp_path / "dir.json"
    d.mkdir()
    with pytest.raises(UserError, match="is a directory"):
        read_records(d, DataConfig())


# ---------------------------------------------------------------------------- mapping and dedup


def test_fields_reference_import_mapping(tmp_path: Path) -> None:
    cfg = DataConfig(
        text_field="context", fields=["question"], reference_field="answer", import_field="teacher"
    )
    p = tmp_path / "qa.jsonl"
    p.write_bytes(
        _jl(
            {
                "context": "Paris is in France.",
                "question": "Where is Paris?",
                "answer": "France",
                "teacher": "In France.",
            },
            {
                "context": "Paris is in France.",
                "question": "What is in France?",
                "answer": None,
                "teacher": "  ",
            },
            {"context": "Oslo is in Norway.", "question": "", "unused": 1},
        )
    )
    recs, errs = read_records(p, cfg)
    assert errs == []
    assert [r.fields for r in recs] == [
        {"question": "Where is Paris?"},
        {"question": "What is in France?"},
        {"question": ""},
    ]
    assert [r.reference for r in recs] == ["France", None, None]
    assert [r.imported_answer for r in recs] == ["In France.", None, None]
    assert recs[0].prompt_id == prompt_id("Paris is in France.", {"question": "Where is Paris?"})
    assert recs[0].prompt_id != recs[1].prompt_id  # same text, different never-compressed field


def test_import_field_disabled(tmp_path: Path) -> None:
    p = tmp_path / "d.json"
    p.write_bytes(_j({"0": {"original_prompt": "t", "gpt_output": 5}}))
    (rec,), _ = read_records(p, DataConfig(import_field=None))
    assert rec.imported_answer is None


def test_dedup_keeps_first_and_counts(tmp_path: Path) -> None:
    p = tmp_path / "d.json"
    p.write_bytes(
        _j(
            {
                "0": {"original_prompt": "same", "gpt_output": "first"},
                "1": {"original_prompt": "other"},
                "2": {"original_prompt": "same", "gpt_output": "second"},
                "3": {"original_prompt": "same"},
                "4": {"original_prompt": "same "},  # different content -> different prompt
            }
        )
    )
    res = read_dataset(p, DataConfig())
    assert res.duplicates == 2 and res.rows_read == 5 and res.fmt == "json"
    assert [(r.row, r.text, r.imported_answer) for r in res.records] == [
        (0, "same", "first"),
        (1, "other", None),
        (4, "same ", None),
    ]
    records, errors = read_records(p, DataConfig())
    assert records == res.records and errors == []


@settings(max_examples=40, deadline=None)
@given(
    text=st.text(
        st.characters(exclude_characters="\x00", exclude_categories=("Cs",)),
        min_size=1,
        max_size=200,
    ).filter(str.strip)
)
def test_jsonl_round_trips_text_exactly(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    p = tmp_path_factory.mktemp("rt") / "d.jsonl"
    p.write_bytes(_jl({"text": text, "q": text[:3]}))
    (rec,), _ = read_records(p, DataConfig(fields=["q"]))
    assert rec.text == text and rec.fields == {"q": text[:3]}


# ---------------------------------------------------------------------------- bundled samples


def test_sample_summarization() -> None:
    res = read_dataset(SAMPLES / "summarization.json", DataConfig())
    assert (len(res.records), res.duplicates, res.errors) == (80, 0, [])
    assert sum(r.imported_answer is not None for r in res.records) == 40
    words = [len(r.text.split()) for r in res.records]
    assert min(words) >= 120 and max(words) <= 250
    assert all(r.text.count("\n") >= 4 for r in res.records)  # one speaker turn per line
    assert [r.row for r in res.records] == list(range(80))


def test_sample_qa() -> None:
    cfg = DataConfig(text_field="context", fields=["question"], reference_field="answer")
    recs, errs = read_records(SAMPLES / "qa.jsonl", cfg)
    assert (len(recs), errs) == (40, [])
    assert all(
        r.reference and r.reference in r.text and r.fields["question"].endswith("?") for r in recs
    )


def test_sample_code() -> None:
    recs, errs = read_records(
        SAMPLES / "code.jsonl", DataConfig(text_field="code", reference_field="summary")
    )
    assert (len(recs), errs) == (30, [])
    for r in recs:
        compile(r.text, "<sample>", "exec")
        assert r.reference and "\n" not in r.reference


def test_samples_are_reproducible_and_small() -> None:
    spec = importlib.util.spec_from_file_location("make_samples", ROOT / "data" / "make_samples.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--check"]) == 0
    assert sum(f.stat().st_size for f in SAMPLES.iterdir()) < 1_000_000
