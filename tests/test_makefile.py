"""`make clean` removes build outputs and caches, never the warehouse, runs or the venv;
`make distclean` also removes the venv. Run on a copy of the Makefile in a temp directory."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_clean_removes_what_it_should(tmp_path: Path) -> None:
    shutil.copy(MAKEFILE, tmp_path / "Makefile")
    gone = [
        ".pytest_cache/v/x",
        ".ruff_cache/x",
        "build/lib/x.py",
        "dist/x.whl",
        "reports/train-x/reward_mean.png",
        "tacorl_offline/__pycache__/x.pyc",
        "tests/__pycache__/y.pyc",
        "tacorl_offline.egg-info/PKG-INFO",
    ]
    kept = [
        "warehouse/tacorl.duckdb",
        "warehouse/tacorl.duckdb.journal",
        "runs/summarization/train-x/final/model.safetensors",
        ".venv/lib/python3/site-packages/__pycache__/z.pyc",
        "tacorl_offline/cli.py",
    ]
    for rel in gone + kept:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    subprocess.run(["make", "-s", "clean"], cwd=tmp_path, check=True, capture_output=True)
    assert [r for r in gone if (tmp_path / r).exists()] == []
    assert [r for r in kept if not (tmp_path / r).exists()] == []
    subprocess.run(["make", "-s", "distclean"], cwd=tmp_path, check=True, capture_output=True)
    assert not (tmp_path / ".venv").exists() and (tmp_path / "warehouse/tacorl.duckdb").exists()
