"""The README's shell blocks, run verbatim against a loopback OpenAI-compatible server.

A new user's walk-through of "Using a real teacher" broke on commands the README printed; this
test is that walk-through. Every ```bash block of README.md runs, in order, in one shell
(``set -euo pipefail``) in a fresh directory, except blocks marked
``<!-- readme-test: skip (...) -->`` (the quick start's ``make`` lines: CI itself runs them).
``my.yaml`` is what the README says to write: ``configs/summarization.yaml`` with the README's
YAML block on top; ``my_data.json`` is a slice of the bundled sample. The environment points
the ``openai`` teacher at the loopback server (``OPENAI_BASE_URL``), and ``tacorl-offline``
runs this checkout's code.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tacorl_offline.config import _deep_merge

ROOT = Path(__file__).resolve().parents[1]
SKIP = "<!-- readme-test: skip"


def shell_blocks(text: str) -> list[str]:
    blocks = []
    for m in re.finditer(r"```bash\n(.*?)```", text, flags=re.S):
        before = text[: m.start()].rstrip().splitlines()
        if before and before[-1].startswith(SKIP):
            continue
        blocks.append(m.group(1))
    return blocks


def my_yaml(text: str) -> dict:
    (block,) = [
        b for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S) if b.startswith("# my.yaml")
    ]
    base = yaml.safe_load((ROOT / "configs" / "summarization.yaml").read_text(encoding="utf-8"))
    return _deep_merge(base, yaml.safe_load(block))


def test_blocks_are_found() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = shell_blocks(text)
    assert blocks and not any("make demo" in b for b in blocks)
    assert any("tacorl-offline evaluate" in b for b in blocks)
    assert my_yaml(text)["teacher"]["backend"] == "openai"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_readme_shell_blocks_run_verbatim(tmp_path: Path, loopback_server) -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(my_yaml(text)), encoding="utf-8")
    sample = json.loads((ROOT / "data" / "sample" / "summarization.json").read_text())
    (tmp_path / "my_data.json").write_text(json.dumps({k: sample[k] for k in list(sample)[:8]}))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "tacorl-offline"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tacorl_offline.cli "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TACORL_", "OPENAI_"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
        OPENAI_BASE_URL=loopback_server.base_url,
        COLUMNS="80",
    )
    script = "set -euo pipefail\nset -x\n" + "\n".join(shell_blocks(text))
    r = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, f"a README command failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    # What the walk-through should have produced.
    assert loopback_server.calls > 0  # the teacher really was the (loopback) API
    finals = list((tmp_path / "runs" / "summarization").glob("train-*/final/model.safetensors"))
    assert len(finals) == 1
    assert len(list(finals[0].parents[1].glob("plots/*.png"))) == 6
    assert "using dataset 'mine'" in r.stderr  # the config still names the sample dataset
    assert "model saved to runs/summarization/" in r.stdout
