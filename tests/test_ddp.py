"""Two CPU processes on gloo through torchrun: rank 0 owns the warehouse and the teacher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import prepare, q


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("freeze_layers", [0, 1])  # 1: frozen before DDP wraps the model
def test_two_process_ddp_keeps_ranks_identical_and_logs_every_sample(
    tmp_path, loopback_server, tiny_bert, freeze_layers
) -> None:
    cfg = prepare(
        tmp_path,
        loopback_server,
        tiny_bert,
        max_steps=3,
        batch_size=4,
        samples_per_prompt=2,
        freeze_layers=freeze_layers,
    )
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")), encoding="utf-8")
    loopback_server.reset()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "tacorl_offline.cli",
        "train",
        "-c",
        str(cfg_path),
        "--no-progress",
    ]
    r = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "world size 2" in r.stderr
    run_id, world = q(cfg, "SELECT run_id, world_size FROM runs WHERE kind = 'train'")[0]
    assert world == 2
    digests = json.loads((Path(cfg.train.output_dir) / run_id / "weights_digest.json").read_text())[
        "ranks"
    ]
    assert len(digests) == 2 and digests[0] == digests[1]
    # Every sample of both ranks reached the warehouse, once.
    assert q(
        cfg,
        "SELECT count(*), count(DISTINCT (step, prompt_id, sample_idx)) FROM samples WHERE run_id = ?",
        [run_id],
    ) == [(3 * 4 * 2, 3 * 4 * 2)]
    paid = q(
        cfg,
        "SELECT count(DISTINCT request_hash) FROM samples WHERE run_id = ? AND NOT short_circuit",
        [run_id],
    )[0][0]
    assert loopback_server.calls == paid
