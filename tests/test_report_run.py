"""`report run RUN`: the summary, --format json and the PNG curves, after a real tiny run."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tacorl_offline.cli import app
from tacorl_offline.run_report import CURVES
from tests.helpers import prepare, q, train

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert):
    from tests.loopback import LoopbackServer

    tmp = tmp_path_factory.mktemp("report")
    with LoopbackServer() as server:
        cfg = prepare(tmp, server, tiny_bert)
        s = train(cfg)
    return cfg, s, tmp


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_run_writes_valid_pngs_and_prints_their_paths(trained) -> None:
    cfg, s, tmp = trained
    out_dir = tmp / "plots"
    r = runner.invoke(app, ["report", "run", "latest", "-w", cfg.warehouse, "--out", str(out_dir)])
    assert r.exit_code == 0, r.output
    assert s.run_id in r.output and "paid teacher calls" in r.output
    for name in CURVES:
        png = out_dir / f"{name}.png"
        assert f"plot: {png}" in r.output
        w, h = _png_size(png)
        assert (w, h) == (640, 360)
    # The image really holds a drawing: the saved bytes decode to a non-uniform image.
    import matplotlib.image

    img = matplotlib.image.imread(out_dir / "reward_mean.png")
    assert img.shape[:2] == (360, 640) and float(img.std()) > 0.01


def test_report_run_json_matches_the_warehouse(trained) -> None:
    cfg, s, _ = trained
    r = runner.invoke(
        app, ["report", "run", s.run_id[:12], "-w", cfg.warehouse, "--format", "json", "--no-plots"]
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["run_id"] == s.run_id and d["kind"] == "train" and d["n_steps"] == s.steps
    assert d["calls"] == s.spend.calls and d["plots"] == []
    rewards = [
        x
        for (x,) in q(
            cfg, "SELECT reward_mean FROM steps WHERE run_id = ? ORDER BY step", [s.run_id]
        )
    ]
    assert d["steps"]["reward_mean"] == pytest.approx(rewards)
    costs = [
        x
        for (x,) in q(cfg, "SELECT cost_usd FROM steps WHERE run_id = ? ORDER BY step", [s.run_id])
    ]
    cum = [sum(costs[: i + 1]) for i in range(len(costs))]
    assert d["steps"]["cumulative_usd"] == pytest.approx(cum)
    assert d["run_dir"] == str(s.run_dir)


def test_report_run_of_unknown_run_lists_recent_ones(trained) -> None:
    cfg, s, _ = trained
    r = runner.invoke(app, ["report", "run", "nope", "-w", cfg.warehouse])
    assert r.exit_code == 2
    assert "no run 'nope'" in r.output and s.run_id in r.output
    assert len(r.output.strip().splitlines()) == 1
