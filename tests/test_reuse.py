"""Off-policy reuse of paid answers (issue 9): the weights and loss by hand, and the trainer
with reuse on against a real warehouse, the real openai client and a tiny BERT."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from tacorl_offline.advantages import policy_loss
from tacorl_offline.config import ReuseConfig
from tacorl_offline.offpolicy import drift, weighted_policy_loss, word_weights
from tests.helpers import prepare, q, train, train_killed_after

# ----------------------------------------------------------------------------- pure


def _logs(ratios: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi now, log mu) with the given per-word ratios; mu(a) = 0.5 for every word."""
    mu = torch.full((len(ratios),), math.log(0.5))
    return mu + torch.log(torch.tensor(ratios)), mu


def test_clip_weights_follow_ppo_by_hand() -> None:
    now, mu = _logs([0.5, 0.9, 1.0, 1.1, 1.3])
    # A > 0: a word whose ratio rose past 1 + eps stops pushing; below 1 - eps it still pushes.
    w = word_weights(now, mu, 2.0, "clip", clip_eps=0.2)
    assert torch.allclose(w, torch.tensor([0.5, 0.9, 1.0, 1.1, 0.0]), atol=1e-6)
    # A < 0: the mirror image.
    w = word_weights(now, mu, -1.0, "clip", clip_eps=0.2)
    assert torch.allclose(w, torch.tensor([0.0, 0.9, 1.0, 1.1, 1.3]), atol=1e-6)
    # A = 0: weights are irrelevant to the gradient and left as the ratios.
    w = word_weights(now, mu, 0.0, "clip", clip_eps=0.2)
    assert torch.allclose(w, torch.tensor([0.5, 0.9, 1.0, 1.1, 1.3]), atol=1e-6)


def test_truncated_weights_cap_the_ratio_and_never_zero_it() -> None:
    now, mu = _logs([0.25, 1.0, 1.5, 4.0])
    w = word_weights(now, mu, 1.0, "truncate", rho_bar=1.0)
    assert torch.allclose(w, torch.tensor([0.25, 1.0, 1.0, 1.0]), atol=1e-6)
    w = word_weights(now, mu, -1.0, "truncate", rho_bar=2.0)
    assert torch.allclose(w, torch.tensor([0.25, 1.0, 1.5, 2.0]), atol=1e-6)
    assert drift(now, mu) == pytest.approx(
        (math.log(4) + 0 + math.log(1.5) + math.log(4)) / 4, rel=1e-6
    )
    with pytest.raises(ValueError, match="clip or truncate"):
        word_weights(now, mu, 1.0, "nope")  # type: ignore[arg-type]


def test_weighted_loss_by_hand() -> None:
    # Two samples: per-word log-probs, weights, advantages, entropies.
    lp = [torch.tensor([-0.5, -1.0], requires_grad=True), torch.tensor([-2.0], requires_grad=True)]
    w = [torch.tensor([1.0, 0.0]), torch.tensor([0.5])]
    ent = [torch.tensor(0.6), torch.tensor(0.4)]
    loss, stats = weighted_policy_loss(lp, w, [2.0, -1.0], ent, 0.1)
    # -(2*(1*-0.5 + 0*-1) + -1*(0.5*-2)) / 2 - 0.1 * (0.6 + 0.4) / 2 = -(-1 + 1)/2 - 0.05
    assert float(loss.detach()) == pytest.approx(-0.05)
    loss.backward()
    assert torch.allclose(lp[0].grad, torch.tensor([-1.0, 0.0]))  # -A w / n
    assert torch.allclose(lp[1].grad, torch.tensor([0.25]))
    assert stats["zero_weight_share"] == pytest.approx(1 / 3)


def test_at_ratio_one_the_loss_and_gradient_are_plain_reinforce() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, generator=g, requires_grad=True)
    p = torch.sigmoid(logits)
    acts = torch.rand(3, 7, generator=g) < 0.5
    wlp = torch.where(acts, p.log(), (1 - p).log())  # per-word log-probs [3, 7]
    ent = -(p * p.log() + (1 - p) * (1 - p).log()).sum(dim=1)
    adv = torch.tensor([0.7, -0.2, 0.1])

    ref, _ = policy_loss(
        wlp.sum(dim=1), adv, ent, torch.full((3,), 7), 0.05, torch.ones(3, dtype=torch.bool)
    )
    (g_ref,) = torch.autograd.grad(ref, logits, retain_graph=True)
    rows = list(wlp.unbind(0))
    weights = [
        word_weights(r, r.detach(), float(a), "clip") for r, a in zip(rows, adv, strict=True)
    ]
    assert all(torch.equal(w, torch.ones(7)) for w in weights)
    ours, _ = weighted_policy_loss(
        rows, weights, [float(a) for a in adv], list(ent.unbind(0)), 0.05
    )
    (g_ours,) = torch.autograd.grad(ours, logits)
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    assert torch.allclose(g_ours, g_ref, atol=1e-7)


def test_reuse_settings_are_checked_in_one_place() -> None:
    from pydantic import ValidationError

    from tacorl_offline.config import TrainConfig

    assert not ReuseConfig().active
    with pytest.raises(ValidationError, match="min_fresh"):
        TrainConfig(samples_per_prompt=2, baseline="rloo", reuse={"min_fresh": 3})
    with pytest.raises(ValidationError, match="grad_accum"):
        TrainConfig(grad_accum=2, reuse={"update_epochs": 2})
    with pytest.raises(ValidationError, match="scst"):
        TrainConfig(samples_per_prompt=2, baseline="scst", reuse={"stored_per_prompt": 1})


# ----------------------------------------------------------------------------- the trainer


def _weights(summary) -> dict[str, torch.Tensor]:
    return load_file(str(summary.final_model / "model.safetensors"))


def test_every_sample_stores_its_behaviour_log_probs(tmp_path, loopback_server, tiny_bert) -> None:
    from tacorl_offline.compressor import Compressor
    from tacorl_offline.trainer import Trainer
    from tacorl_offline.warehouse import Warehouse

    cfg = prepare(tmp_path, loopback_server, tiny_bert, max_steps=1)
    # The policy at step 1 is the initial model: rebuild it exactly as the trainer does.
    fresh = Trainer(cfg, warehouse=Warehouse(cfg.warehouse))
    s = train(cfg)
    rows = q(
        cfg,
        "SELECT s.prompt_id, s.actions, s.behaviour_logp, p.text FROM samples s "
        "JOIN prompts p USING (prompt_id) WHERE s.run_id = ? ORDER BY s.prompt_id, s.sample_idx",
        [s.run_id],
    )
    assert rows and all(r[1] is not None and len(r[1]) == len(r[2]) > 0 for r in rows)
    comp: Compressor = fresh.comp
    for pid, acts, blp, _ in rows:
        item = next(i for i in fresh.items if i.prompt_id == pid)
        with torch.no_grad():
            d = comp.decisions([item.text], fields=[item.fields], rate=cfg.compressor.rate)[0]
        now = d.word_log_probs(acts)
        assert torch.allclose(now, torch.tensor(blp), atol=1e-5)


def test_reuse_passes_log_fresh_and_replayed_and_replays_never_call(
    tmp_path, loopback_server, tiny_bert
) -> None:
    # 12 prompts, 4 per step: epoch 2 (steps 4-6) meets the prompts of epoch 1 again.
    cfg = prepare(tmp_path, loopback_server, tiny_bert, max_steps=6, samples_per_prompt=3)
    cfg.train.reuse = ReuseConfig(update_epochs=2, stored_per_prompt=2, max_log_ratio=5.0)
    cfg.teacher.timeout_s = 60  # a timeout on a loaded machine would leave a sample unscored
    loopback_server.reset()
    s = train(cfg)
    steps = q(
        cfg,
        "SELECT step, fresh_samples, replayed_samples, update_epochs FROM steps "
        "WHERE run_id = ? ORDER BY step",
        [s.run_id],
    )
    assert [r[3] for r in steps] == [2] * 6
    assert all(r[1] == 12 and r[2] == 0 for r in steps[:3])  # nothing stored yet
    assert all(r[1] == 4 and r[2] == 8 for r in steps[3:])  # min_fresh 1 + 2 stored per prompt
    replays = q(
        cfg,
        "SELECT r.step, r.source_step, r.reward, s.reward, r.drift FROM replays r JOIN samples s "
        "ON s.run_id = r.source_run AND s.step = r.source_step AND s.prompt_id = r.prompt_id "
        "AND s.sample_idx = r.source_sample_idx WHERE r.run_id = ?",
        [s.run_id],
    )
    assert len(replays) == 24
    assert all(src < step and r == stored and d >= 0 for step, src, r, stored, d in replays)
    # Only fresh samples are paid for: every call is a distinct request of a fresh sample.
    paid = q(
        cfg,
        "SELECT count(DISTINCT request_hash) FROM api_calls WHERE run_id = ? AND status <> 'hit'",
        [s.run_id],
    )[0][0]
    fresh_requests = q(
        cfg,
        "SELECT count(DISTINCT request_hash) FROM samples WHERE run_id = ? AND NOT short_circuit",
        [s.run_id],
    )[0][0]
    assert 0 < loopback_server.calls == paid <= fresh_requests
    assert q(cfg, "SELECT count(*) FROM samples WHERE run_id = ?", [s.run_id])[0][0] == 48


def test_with_one_pass_and_no_store_reuse_changes_nothing(
    tmp_path, loopback_server, tiny_bert
) -> None:
    cfg = prepare(tmp_path, loopback_server, tiny_bert, max_steps=3)
    plain = _weights(train(cfg))
    cfg.train.reuse = ReuseConfig(update_epochs=1, stored_per_prompt=0)
    same = _weights(train(cfg))
    cfg.train.reuse = ReuseConfig(update_epochs=2)
    other = _weights(train(cfg))
    assert all(torch.equal(plain[k], same[k]) for k in plain)
    assert any(not torch.equal(plain[k], other[k]) for k in plain)


def test_killed_and_resumed_run_with_reuse_ends_with_same_weights(
    tmp_path, loopback_server, tiny_bert
) -> None:
    cfg = prepare(
        tmp_path, loopback_server, tiny_bert, max_steps=6, checkpoint_every=2, samples_per_prompt=3
    )
    # Own-run replay only: the reference run, once finished, is not a source for the other.
    cfg.train.reuse = ReuseConfig(
        update_epochs=2, stored_per_prompt=2, max_log_ratio=5.0, from_other_runs=False
    )
    ref = train(cfg)  # uninterrupted; also warms the warehouse
    loopback_server.reset()

    run_id = train_killed_after(cfg, 5)
    # The killed run wrote step 5 (and its samples) past its step-4 checkpoint: the resumed run
    # must not replay them into step 5 again.
    resumed = train(cfg, resume=run_id)
    assert resumed.resumed_from == 4
    assert loopback_server.calls == 0
    a, b = _weights(ref), _weights(resumed)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert q(cfg, "SELECT sum(replayed_samples) FROM steps WHERE run_id = ?", [run_id]) == q(
        cfg, "SELECT sum(replayed_samples) FROM steps WHERE run_id = ?", [ref.run_id]
    )


def test_rescore_with_another_metric_makes_no_call_and_writes_new_rewards(
    tmp_path, loopback_server, tiny_bert
) -> None:
    import subprocess

    import duckdb

    from tacorl_offline.reuse import load as load_store
    from tacorl_offline.runs import key_of
    from tests.helpers import train_command

    cfg = prepare(tmp_path, loopback_server, tiny_bert, max_steps=2)
    s = train(cfg)
    loopback_server.reset()
    cfg.train.reward.metric = "bleu"
    cmd = train_command(cfg, tmp_path)
    r = subprocess.run([*cmd, "--rescore", s.run_id], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "0 teacher calls" in r.stdout
    assert loopback_server.calls == 0
    [(rid, status)] = q(cfg, "SELECT run_id, status FROM runs WHERE kind = 'rescore'")
    assert status == "finished"
    pairs = q(
        cfg,
        "SELECT a.reward, b.reward, b.metrics FROM samples a JOIN samples b USING "
        "(step, prompt_id, sample_idx) WHERE a.run_id = ? AND b.run_id = ? AND NOT a.short_circuit",
        [s.run_id, rid],
    )
    assert pairs and any(a != b for a, b, _ in pairs)
    assert all("bleu" in m for _, _, m in pairs if m)
    # A later run with the new metric may learn from the rescored samples (same signature).
    con = duckdb.connect(cfg.warehouse, read_only=True)
    try:
        store = load_store(
            con,
            cfg,
            teacher_key=key_of(cfg.teacher),
            run_id="train-new",
            upto_step=0,
            prompt_ids=[p for (p,) in q(cfg, "SELECT prompt_id FROM prompts")],
        )
    finally:
        con.close()
    scored = q(cfg, "SELECT count(*) FROM samples WHERE run_id = ? AND reward IS NOT NULL", [rid])
    assert len(store) == scored[0][0] > 0
    # Bad input: one line, exit 2, the warehouse unchanged.
    bad = subprocess.run([*cmd, "--rescore", "train-nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "no run 'train-nope'" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert q(cfg, "SELECT count(*) FROM runs WHERE kind = 'rescore'") == [(1,)]


def test_baseline_correction_makes_a_truncated_baseline_unbiased() -> None:
    """E_mu[c (R - b) grad log pi] + correction == E_mu[c R grad log pi] for any b, by
    enumeration over both actions of each word (issue 16's example: mu 0.3, pi 0.5)."""
    import itertools

    from tacorl_offline.offpolicy import baseline_correction

    mu = torch.tensor([0.3, 0.8, 0.5], dtype=torch.float64)
    pi0 = torch.tensor([0.5, 0.6, 0.5], dtype=torch.float64)
    reward = {m: 0.2 + 0.5 * m[0] - 0.3 * m[1] * m[2] for m in itertools.product([0, 1], repeat=3)}

    def grad_of(b: float, correct: bool) -> torch.Tensor:
        total = torch.zeros(3, dtype=torch.float64)
        for m, r in reward.items():
            a = torch.tensor(m, dtype=torch.bool)
            pi = pi0.clone().requires_grad_(True)
            p_mu = math.prod(float(mu[i]) if m[i] else 1 - float(mu[i]) for i in range(3))
            lp = torch.where(a, pi.log(), (1 - pi).log())
            c = (lp.detach().exp() / torch.where(a, mu, 1 - mu)).clamp(max=1.0)
            loss = -(r - b) * (c * lp).sum()
            if correct:
                loss = loss + baseline_correction(pi, mu, b)
            (g,) = torch.autograd.grad(loss, pi)
            total += p_mu * g
        return total

    target = grad_of(0.0, correct=False)
    assert (grad_of(0.7, correct=False) - target).norm() > 1e-3  # the bias is real
    for b in (0.7, -0.4):
        assert torch.allclose(grad_of(b, correct=True), target, atol=1e-12)
    # Where nothing truncates (pi == mu) the correction is exactly zero.
    same = mu.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(baseline_correction(same, mu, 0.9), same)
    assert torch.allclose(g, torch.zeros(3, dtype=torch.float64), atol=1e-12)
