"""The README's shell and Python blocks, run verbatim against a loopback OpenAI-compatible server.

A new user's walk-through of "Using a real teacher" broke on commands the README printed; this
test is that walk-through. Every ```bash block of README.md runs, in order, in one shell
(``set -euo pipefail``) in a fresh directory, except blocks marked
``<!-- readme-test: skip (...) -->`` (the quick start's ``make`` lines: CI itself runs them).
Then every ```python block runs, in order, in the same directory, each in its own interpreter.
``my.yaml`` is what the README says to write: ``configs/summarization.yaml`` with the README's
YAML block on top; ``my_data.json`` and ``my_heldout.json`` are slices of the bundled sample.
The environment points the ``openai`` teacher at the loopback server (``OPENAI_BASE_URL``), and
``tacorl-offline`` runs this checkout's code. The one thing mocked: tiktoken's cl100k file
cannot be downloaded here, so the Python blocks get the locally built encoding under that name
(a ``sitecustomize`` on their path), as tests/test_compressor_parity.py does.
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


def python_blocks(text: str) -> list[str]:
    blocks = []
    for m in re.finditer(r"```python\n(.*?)```", text, flags=re.S):
        before = text[: m.start()].rstrip().splitlines()
        if before and before[-1].startswith(SKIP):
            continue
        blocks.append(m.group(1))
    return blocks


SITECUSTOMIZE = """
import tiktoken
from tests import tiny_models as _tm

_enc = _tm.cached_encoding()
tiktoken.get_encoding = lambda name: _enc
tiktoken.encoding_for_model = lambda name: _enc
"""


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
    assert any("sft" in b and "--init sft:latest" in b for b in blocks)
    assert len(python_blocks(text)) >= 2
    assert my_yaml(text)["teacher"]["backend"] == "openai"


@pytest.mark.slow
@pytest.mark.timeout(1800)  # sft, train and evaluate twice (shell, then Python) on 2 shared cores
def test_readme_shell_blocks_run_verbatim(tmp_path: Path, loopback_server) -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(my_yaml(text)), encoding="utf-8")
    sample = json.loads((ROOT / "data" / "sample" / "summarization.json").read_text())
    keys = list(sample)
    (tmp_path / "my_data.json").write_text(json.dumps({k: sample[k] for k in keys[:8]}))
    (tmp_path / "my_heldout.json").write_text(json.dumps({k: sample[k] for k in keys[8:14]}))
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
    assert "dataset 'mine', split 'train'" in r.stderr  # said before any call
    assert "model saved to runs/summarization/" in r.stdout
    assert "tacorl-offline evaluate -c" in r.stdout  # the printed next step carries -c
    # The Python blocks, verbatim, after the shell ones (they use its files and models).
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    (tmp_path / "tiktoken-cache").mkdir()
    penv = {**env, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}
    outs = []
    for i, block in enumerate(python_blocks(text)):
        f = tmp_path / f"readme_block_{i}.py"
        f.write_text(block, encoding="utf-8")
        p = subprocess.run(
            [sys.executable, str(f)], cwd=tmp_path, env=penv, capture_output=True, text=True
        )
        assert p.returncode == 0, f"README python block {i} failed:\n{block}\n{p.stderr[-3000:]}"
        outs.append(p.stdout)
    api_out = "".join(outs)
    assert " reference" in api_out and "minilm " in api_out  # the evaluate table, as data
    assert '"compressed_prompt_list"' in api_out  # json.dumps took the result
    assert "'keep'" in api_out or "'drop'" in api_out  # transformers read the labels
