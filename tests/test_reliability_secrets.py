"""Issue 10 item 10: a password in a teacher URL is never stored, exported or printed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from typer.testing import CliRunner

from tacorl_offline.cli import app
from tacorl_offline.fill import run_fill
from tacorl_offline.ingest import read_records
from tacorl_offline.ingest_store import store_records
from tacorl_offline.redaction import redact_url_credentials
from tacorl_offline.trainer import Trainer
from tacorl_offline.warehouse import Warehouse
from tests.helpers import make_cfg, q, write_data

PW = "hunter2-URL-PASSWORD"


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_redact_url_credentials_table() -> None:
    cases = {
        "http://user:PW@host:8000/v1": "http://***@host:8000/v1",
        "https://TOKEN@host/v1": "https://***@host/v1",
        "http://host/v1?api-key=PW&x=1": "http://host/v1?api-key=***&x=***",
        "http://127.0.0.1:8000/v1": "http://127.0.0.1:8000/v1",
        None: None,
    }
    for url, want in cases.items():
        assert redact_url_credentials(url) == want, url


def _files_with(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_url_password_never_reaches_runs_checkpoints_exports_or_output(
    tmp_path, loopback_server, tiny_bert
) -> None:
    url = loopback_server.base_url.replace("http://", f"http://user:{PW}@")
    cfg = make_cfg(tmp_path, loopback_server, tiny_bert, max_steps=2, checkpoint_every=1)
    cfg.teacher.base_url = url
    data = write_data(tmp_path / "d.json")
    records, _ = read_records(data, cfg.data)
    w = Warehouse(cfg.warehouse)
    store_records(w, records, dataset=cfg.data.dataset, split=cfg.data.split, source_path=data)
    asyncio.run(run_fill(cfg, warehouse=w))
    cfg.budget.max_calls = 2  # stops with a checkpoint, so the run can be resumed below
    loopback_server.reset()
    s = asyncio.run(Trainer(cfg, warehouse=Warehouse(cfg.warehouse)).run())
    assert s.budget_stopped and loopback_server.calls > 0  # the URL with credentials was used
    for (config,) in q(cfg, "SELECT config FROM runs"):
        assert PW not in config and "***@127.0.0.1" in config
    assert _files_with(tmp_path / "runs", PW.encode()) == []
    out_dir = tmp_path / "export"
    r = invoke("warehouse", "export", str(out_dir), "-w", cfg.warehouse)
    assert r.exit_code == 0, r.output
    assert _files_with(out_dir, PW.encode()) == []
    yml = tmp_path / "c.yaml"
    yml.write_text(f"teacher:\n  backend: openai\n  base_url: {url}\n", encoding="utf-8")
    r = invoke("config", "-c", str(yml))
    assert r.exit_code == 0 and PW not in r.output and "***@127.0.0.1" in r.output
    # Resuming takes the usable URL from the current config, not the masked stored one.
    resumed = Trainer(cfg, warehouse=Warehouse(cfg.warehouse), resume=s.run_id)
    assert resumed.cfg.teacher.base_url == url
