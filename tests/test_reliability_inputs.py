"""Issue 10 item 11: bad inputs are one-line errors (exit 2, no traceback), never accepted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tacorl_offline.cli import app
from tests.conftest import warehouse_snapshot
from tests.helpers import error_lines


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    """A warehouse with the bundled sample ingested and filled by the extractive teacher."""
    wh = tmp_path / "w.duckdb"
    sample = Path(__file__).resolve().parents[1] / "data" / "sample" / "summarization.json"
    assert invoke("ingest", str(sample), "-w", str(wh)).exit_code == 0
    assert invoke("teacher-fill", "-w", str(wh), "--no-progress").exit_code == 0
    return wh


def one_line_error(r, *needles: str) -> str:
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def test_non_utf8_yaml(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_bytes(b'teacher:\n  model: "\xff\xfe"\n')
    one_line_error(invoke("config", "-c", str(p)), str(p), "UTF-8")


def test_corrupt_safetensors(tmp_path: Path, tiny_bert: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_bert, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (tmp_path / "t.txt").write_text("Some words to compress here.", encoding="utf-8")
    one_line_error(invoke("compress", str(tmp_path / "t.txt"), "-m", str(model)), str(model))


def test_unknown_device(tmp_path: Path, tiny_bert: Path) -> None:
    (tmp_path / "t.txt").write_text("Some words.", encoding="utf-8")
    r = invoke("compress", str(tmp_path / "t.txt"), "-m", str(tiny_bert), "--device", "tpu9")
    one_line_error(r, "tpu9")


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--rate", "2.0"], "rate"), (["--target-token", "-7"], "target"), (["--rate", "0"], "rate")],
)
def test_compress_rejects_out_of_range(tmp_path: Path, tiny_bert: Path, args, needle) -> None:
    (tmp_path / "t.txt").write_text("Some words.", encoding="utf-8")
    r = invoke("compress", str(tmp_path / "t.txt"), "-m", str(tiny_bert), *args)
    one_line_error(r, needle)


def test_evaluate_rejects_rate_5(filled: Path, tiny_bert: Path) -> None:
    before = warehouse_snapshot(filled)
    one_line_error(
        invoke("evaluate", "-m", str(tiny_bert), "--rate", "5", "-w", str(filled)), "rate"
    )
    assert warehouse_snapshot(filled) == before


def test_truncated_warehouse(filled: Path, tmp_path: Path) -> None:
    bad = tmp_path / "half.duckdb"
    data = filled.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    one_line_error(invoke("teacher-fill", "-w", str(bad), "--no-progress"), str(bad))
    one_line_error(invoke("report", "cost", "-w", str(bad)), str(bad))


def test_journal_path_is_a_directory(filled: Path) -> None:
    journal = filled.parent / (filled.name + ".journal")
    journal.unlink(missing_ok=True)  # empty after the fill
    journal.mkdir()
    one_line_error(invoke("teacher-fill", "-w", str(filled), "--no-progress"), "journal")


def test_export_to_a_file_or_an_unwritable_place(filled: Path, tmp_path: Path) -> None:
    target = tmp_path / "afile"
    target.write_text("x")
    one_line_error(invoke("warehouse", "export", str(target), "-w", str(filled)), "afile")
    # /proc takes no new directories: as root, a chmod would not stop the write.
    one_line_error(invoke("warehouse", "export", "/proc/tacorl-export", "-w", str(filled)), "/proc")


def test_warehouse_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    r = invoke("warehouse", "migrate", "-w", str(tmp_path / "afile" / "w.duckdb"))
    one_line_error(r, "is a file")


def test_report_cost_for_an_unknown_run(filled: Path) -> None:
    one_line_error(invoke("report", "cost", "--run", "nope", "-w", str(filled)), "nope")


# ---------------------------------------------------------------- issue 18 items 6 and 7


def test_compress_refuses_a_text_over_ingests_limit_in_one_line(tmp_path, tiny_bert) -> None:
    """Before: a 50 MB file ran for minutes at 6.8 GB RSS. Now: ingest's limit, in one line,
    before the model is loaded; --max-chars raises it."""
    from tacorl_offline.ingest import MAX_TEXT_CHARS

    big = tmp_path / "big.txt"
    big.write_text("word " * (MAX_TEXT_CHARS // 5 + 10), encoding="utf-8")
    r = invoke("compress", "-m", str(tiny_bert), "--rate", "0.5", str(big))
    one_line_error(r, "over the limit of 1,000,000", "the same as ingest's", "--max-chars")
    lines = tmp_path / "big.jsonl"
    lines.write_text('{"text": "short"}\n{"text": "' + "x" * 2000 + '"}\n', encoding="utf-8")
    r = invoke("compress", "-m", str(tiny_bert), "--jsonl", "--max-chars", "1000", str(lines))
    one_line_error(r, "record 2 is 2,000 characters, over the limit of 1,000")
    small = tmp_path / "small.txt"
    small.write_text("word " * 300, encoding="utf-8")
    r = invoke("compress", "-m", str(tiny_bert), "--rate", "0.5", "--max-chars", "2000", str(small))
    assert r.exit_code == 0, r.output
    r = invoke("compress", "-m", str(tiny_bert), "--rate", "0.5", "--max-chars", "1000", str(small))
    one_line_error(r, "1,500 characters, over the limit of 1,000")


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"options": 3}', "\udcff"])
def test_a_corrupt_compressor_record_is_one_line(tmp_path, tiny_bert, content) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    raw = content.encode("utf-8", "surrogateescape")
    (model / "tacorl_compressor.json").write_bytes(raw)
    text = tmp_path / "in.txt"
    text.write_text("Some words to compress, so that the model is loaded.", encoding="utf-8")
    r = invoke("compress", "-m", str(model), "--rate", "0.5", str(text))
    one_line_error(r, "tacorl_compressor.json", "restore it")
