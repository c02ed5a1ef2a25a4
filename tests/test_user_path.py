"""Issue 21, the user's path: results read like llmlingua's, model names resolve the same way
everywhere, a copied config never picks the dataset silently, templates name the text by its
field, checkpoints are small and readable, plots do not magnify noise."""

from __future__ import annotations

import json
import os
import pickle
import random
import stat
from pathlib import Path

import pytest
import torch

from tacorl_offline.compressor import Compressor
from tacorl_offline.config import resolve
from tacorl_offline.datasets import choose
from tacorl_offline.errors import UserError
from tacorl_offline.model_ref import resolve_model_ref
from tacorl_offline.warehouse import Warehouse
from tests import tiny_models as tm

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return Compressor.from_pretrained(tm.cached_model("bert", tmp_path_factory.getbasetemp()))


# ----------------------------------------------------------------------------- results


def test_compress_returns_a_dict_json_takes(bert):
    text = tm.random_text(random.Random(3), 60)
    r = bert.compress(text, rate=0.33)
    assert isinstance(r, dict)
    back = json.loads(json.dumps(r))
    assert set(back) == {
        "compressed_prompt",
        "compressed_prompt_list",
        "origin_tokens",
        "compressed_tokens",
        "ratio",
        "rate",
        "saving",
    }
    assert back["ratio"].endswith("x") and back["rate"].endswith("%")
    assert r.compressed_prompt == back["compressed_prompt"] == r["compressed_prompt"]
    assert abs(r.ratio_value * r.rate_value - 1) < 1e-9
    assert f"{r.ratio_value:.1f}x" == r["ratio"]
    # the word-level view survives a copy and a pickle
    again = pickle.loads(pickle.dumps(r))
    assert again == r and again.keep == r.keep and again.mask_hash == r.mask_hash


def test_return_word_label_in_default_mode(bert):
    contexts = [tm.random_text(random.Random(i), n) for i, n in ((1, 20), (2, 35))]
    res = bert.compress_prompt(contexts, rate=0.5, return_word_label=True)
    items = res["fn_labeled_original_prompt"].split("\t\t|\t\t")
    assert len(items) == len(res.words)
    labels = [int(x.rsplit(" ", 1)[1]) for x in items]
    assert labels == [int(k) for k in res.keep] and 0 < sum(labels) < len(labels)
    custom = bert.compress_prompt(
        contexts, rate=0.5, return_word_label=True, word_sep="|", label_sep=":"
    )
    assert custom["fn_labeled_original_prompt"].count("|") == len(res.words) - 1
    assert "fn_labeled_original_prompt" not in bert.compress_prompt(contexts, rate=0.5)


def test_no_context_vanishes_in_default_mode(bert):
    res = bert.compress([["context 1", "context 2"]], rate=0.33)[0]
    assert len(res["compressed_prompt_list"]) == 2
    assert all(c.strip() for c in res["compressed_prompt_list"])
    # each context keeps about its own share
    long = [tm.random_text(random.Random(i), 80) for i in range(3)]
    res = bert.compress_prompt(long, rate=0.4, use_context_level_filter=False)
    for ctx, out in zip(long, res["compressed_prompt_list"], strict=True):
        assert 0.2 < len(out.split()) / len(ctx.split()) < 0.6


# ----------------------------------------------------------------------------- model names


def _wh_with_runs(tmp: Path) -> Warehouse:
    """A warehouse with one sft and one train run whose final directories exist."""
    from tacorl_offline.warehouse import Warehouse

    wh = Warehouse(tmp / "wh.duckdb")
    with wh.transaction() as con:
        for kind, rid, section in (
            ("sft", "sft-aaaaaaaa", "sft"),
            ("train", "train-bbbbbbbb", "train"),
        ):
            out = tmp / "runs" / kind
            (out / rid / "final").mkdir(parents=True)
            Warehouse.start_run(
                con,
                {
                    "run_id": rid,
                    "kind": kind,
                    "dataset": "d",
                    "split": "train",
                    "teacher_key": "k",
                    "config": {section: {"output_dir": str(out)}},
                },
            )
    return wh


def test_aliases_resolve_and_unknown_names_fail_at_once(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty offline cache
    wh = _wh_with_runs(tmp_path)
    assert resolve_model_ref("sft:latest", wh).endswith("sft/sft-aaaaaaaa/final")
    assert resolve_model_ref("latest", wh).endswith("train/train-bbbbbbbb/final")
    assert resolve_model_ref("run:sft-aaa", wh).endswith("sft-aaaaaaaa/final")
    assert resolve_model_ref("minilm", wh) == "minilm"
    assert resolve_model_ref(str(tmp_path), wh) == str(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(UserError) as e:
        resolve_model_ref("minilmx", wh)
    assert time.perf_counter() - t0 < 5  # no hub retries
    msg = str(e.value)
    assert "\n" not in msg and "minilm" in msg and "sft:latest (sft-aaaaaaaa)" in msg
    assert "run:train-bbbbbbbb" in msg and "hub_download" in msg
    # a hub id is taken as is only when downloads are allowed
    assert resolve_model_ref("someorg/some-model", wh, hub_download=True) == "someorg/some-model"


def test_train_takes_the_same_names(tmp_path, monkeypatch):
    """`train` (compressor.model / --init) resolves through the same resolver: a typo fails
    before any model loads or call is made."""
    from tacorl_offline.trainer import Trainer

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    wh = _wh_with_runs(tmp_path)
    cfg = resolve(
        None,
        environ={},
        overrides={"warehouse": str(wh.path), "compressor.model": "nosuchmodel"},
    )
    with pytest.raises(UserError, match="not a directory, an alias"):
        Trainer(cfg, warehouse=wh)


# ----------------------------------------------------------------------------- datasets


def test_a_copied_config_never_picks_the_dataset_silently():
    present = {"sample-summarization": {"train": 80}, "mine": {"train": 20}}
    with pytest.raises(UserError) as e:
        choose(present, "sample-summarization", "train", last="mine")
    msg = str(e.value)
    assert "\n" not in msg and "--dataset mine" in msg and "'mine' was ingested last" in msg
    # the flag, or a config naming the last ingest, settles it
    assert choose(
        present, "sample-summarization", "train", dataset_given=True, last="mine"
    ).dataset == ("sample-summarization")
    assert choose(present, "mine", "train", last="mine").dataset == "mine"
    # one dataset: followed, with a note; the library (no `last`) keeps its old rule
    c = choose({"mine": {"train": 20}}, "sample-summarization", "train", last="mine")
    assert c.dataset == "mine" and "only one" in (c.note or "")
    assert choose(present, "sample-summarization", "train").dataset == "sample-summarization"


# ----------------------------------------------------------------------------- templates


def test_template_may_name_the_text_by_its_field():
    cfg = resolve(
        None,
        environ={},
        overrides={
            "data.text_field": "context",
            "teacher.template": 'Q: {question}\nContext: {context}\nJSON: {{"a": 1}}',
            "data.fields": ["question"],
        },
    )
    assert cfg.teacher.template == 'Q: {question}\nContext: {transcript}\nJSON: {{"a": 1}}'
    from tacorl_offline.teachers.prompting import render_user

    assert render_user(cfg.teacher.template, "TEXT", {"question": "why"}) == (
        'Q: why\nContext: TEXT\nJSON: {"a": 1}'
    )
    with pytest.raises(Exception, match=r"data.text_field"):
        resolve(None, environ={}, overrides={"teacher.template": "no text here {question}"})


# ----------------------------------------------------------------------------- checkpoints


def test_optimizer_state_packs_exactly():
    from tacorl_offline.checkpoints import pack_state, unpack_state

    emb = torch.nn.Embedding(1000, 16)
    lin = torch.nn.Linear(16, 2)
    opt = torch.optim.AdamW([*emb.parameters(), *lin.parameters()], lr=1e-2)
    for ids in ([1, 5, 9], [5, 700]):
        lin(emb(torch.tensor(ids))).sum().backward()
        opt.step()
        opt.zero_grad()
    sd = opt.state_dict()
    packed = pack_state({"optimizer": sd, "position": {"step": 2}})
    assert packed["optimizer"]["state"][0]["exp_avg"].shape[0] == 4  # rows 1, 5, 9, 700
    full = unpack_state(packed)["optimizer"]["state"]
    for k, st in sd["state"].items():
        for n, t in st.items():
            assert torch.equal(full[k][n], t), (k, n)


def test_checkpoint_files_are_small_linked_and_readable(tmp_path, tiny_bert):
    """A short run: each checkpoint's trainer state is at most ~1.2x the model, the final model
    shares the last checkpoint's files, and every file is 0644."""
    from tests.helpers import prepare, train
    from tests.loopback import LoopbackServer

    with LoopbackServer() as server:
        cfg = prepare(tmp_path, server, tiny_bert)
        s = train(cfg)
    final = s.final_model / "model.safetensors"
    assert stat.S_IMODE(final.stat().st_mode) == 0o644 & ~_umask()
    ckpts = sorted((s.run_dir / "checkpoints").glob("step-*"))
    last = ckpts[-1]
    assert os.path.samefile(last / "model" / "model.safetensors", final)
    model_bytes = final.stat().st_size
    state_bytes = (last / "trainer_state.pt").stat().st_size
    assert state_bytes <= 1.2 * model_bytes, (state_bytes, model_bytes)
    if len(ckpts) > 1:  # unchanged files of consecutive checkpoints are one file
        a, b = ckpts[-2] / "model" / "tokenizer.json", last / "model" / "tokenizer.json"
        assert os.path.samefile(a, b)
    for p in s.run_dir.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert stat.S_IMODE(p.stat().st_mode) & 0o044 == 0o044 & ~_umask(), p


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


# ----------------------------------------------------------------------------- plots


def test_plot_axes_do_not_magnify_noise():
    from tacorl_offline.plots import y_limits

    lo, hi = y_limits("entropy", [0.6903, 0.6910, 0.6905])
    assert hi - lo >= 0.1
    lo, hi = y_limits("hit_rate", [0.0, 0.0])
    assert lo <= 0 and hi >= 1
    lo, hi = y_limits("calls", [3, 3, 3])
    assert lo >= -0.5 and hi - lo >= 4
    lo, hi = y_limits("reward_mean", [0.1, 0.9])
    assert lo < 0.1 and hi > 0.9 and hi - lo < 1.0


# ----------------------------------------------------------------------------- report cost


def test_cost_report_filters_by_dataset_and_teacher_and_says_why_free(tmp_path):
    from tacorl_offline.reports import cost_report, free_calls_note
    from tacorl_offline.warehouse import insert_rows

    wh = Warehouse(tmp_path / "wh.duckdb")
    with wh.transaction() as con:
        for rid, ds in (("fill-a", "sample"), ("fill-b", "mine")):
            Warehouse.start_run(
                con,
                {"run_id": rid, "kind": "fill", "dataset": ds, "split": "train",
                 "teacher_key": "k", "config": {}},
            )  # fmt: skip
        calls = []
        for i in range(5):  # 5 free stand-in calls on the sample, 2 paid on mine
            calls.append(("fill-a", "extractive", "extractive-lead-3", 0.0, i))
        for i in range(2):
            calls.append(("fill-b", "openai", "gpt-4o-mini", 0.01, 10 + i))
        insert_rows(
            con,
            "api_calls",
            [
                {"call_id": f"c{n}", "run_id": r, "phase": "fill", "request_hash": f"h{n}",
                 "teacher_key": "k", "backend": b, "model": m, "attempt": 1, "status": "ok",
                 "cost_usd": c}
                for r, b, m, c, n in calls
            ],
        )  # fmt: skip
    every = cost_report(wh, by="phase")
    assert every.rows[0][every.columns.index("calls")] == 7
    mine = cost_report(wh, by="phase", dataset="mine")
    assert mine.rows[0][mine.columns.index("calls")] == 2
    assert mine.rows[0][mine.columns.index("spent_usd")] == pytest.approx(0.02)
    paid = cost_report(wh, by="run", teacher="gpt-4o-mini")
    assert [r[paid.columns.index("run_id")] for r in paid.rows] == ["fill-b"]
    assert cost_report(wh, by="phase", teacher="nobody").rows == []
    note = free_calls_note(wh)
    assert (
        note and "5 calls to the extractive teacher (offline stand-in)" in note and "\n" not in note
    )
    assert free_calls_note(wh, teacher="gpt-4o-mini") is None


def test_config_yaml_writes_force_tokens_on_one_line():
    import yaml

    cfg = resolve(ROOT / "configs" / "summarization.yaml", environ={})
    text = cfg.to_yaml()
    assert '  - "\\n"' in text.splitlines()  # force_tokens: ["\n"], one clean line
    assert yaml.safe_load(text) == cfg.stored()
