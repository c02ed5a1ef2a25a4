"""The Python API: llmlingua's result dict, drop/keep labels in transformers' pipeline, and
train()/evaluate() returning summaries (real tiny models, a loopback teacher)."""

from __future__ import annotations

import pytest
import tiktoken

from tacorl_offline import api
from tacorl_offline.compressor import Compressor
from tacorl_offline.compressor.result import LLMLINGUA_KEYS
from tests import tiny_models as tm
from tests.helpers import prepare, q


@pytest.fixture(scope="module")
def enc():
    return tm.cached_encoding()


def test_compress_one_text_reads_like_llmlingua_result(tmp_path_factory, enc, monkeypatch):
    from llmlingua import PromptCompressor

    monkeypatch.setattr(tiktoken, "encoding_for_model", lambda name: enc)
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: enc)
    path = tm.cached_model("bert", tmp_path_factory.getbasetemp())
    ll = PromptCompressor(model_name=str(path), use_llmlingua2=True, device_map="cpu")
    ours = api.Compressor.from_pretrained(path, token_counter=enc)
    text = "The council met on 3 May. It approved 2 budgets, and rejected the plan.\nNext: June."
    for kw in ({"rate": 0.5}, {"rate": 0.33, "force_tokens": ["\n", "."]}):
        expected = ll.compress_prompt_llmlingua2([text], **kw)
        got = ours.compress(text, compat=True, **kw)  # one text in, one result out
        d = dict(got)
        assert tuple(got.keys()) == LLMLINGUA_KEYS == tuple(expected)
        assert [type(v) for v in d.values()] == [type(v) for v in expected.values()]
        assert d["origin_tokens"] == expected["origin_tokens"]
        # The kept words are llmlingua's (tests/test_compressor_parity.py); the text is rebuilt
        # from the original's character spans, so the counts follow our own text.
        assert d["compressed_tokens"] == len(enc.encode(d["compressed_prompt"]))
        ratio = d["origin_tokens"] / d["compressed_tokens"]
        assert d["ratio"] == f"{ratio:.1f}x" and d["rate"] == f"{100 / ratio:.1f}%"
        saving = (d["origin_tokens"] - d["compressed_tokens"]) * 0.06 / 1000
        assert d["saving"] == f", Saving ${saving:.1f} in GPT-4."
        assert d["compressed_prompt_list"] == [d["compressed_prompt"]]
        assert ours.compress_prompt(text, compat=True, **kw) == d
    with pytest.raises(KeyError):
        got["no_such_key"]
    # A list still gives a list.
    assert [r["compressed_prompt"] for r in ours.compress([text, text], rate=0.5)] == [
        ours.compress(text, rate=0.5)["compressed_prompt"]
    ] * 2


def test_saved_model_labels_read_drop_keep_in_a_transformers_pipeline(tmp_path, tiny_bert):
    from transformers import pipeline

    out = Compressor.from_pretrained(tiny_bert).save_pretrained(tmp_path / "saved")
    pipe = pipeline("token-classification", model=str(out), device="cpu")
    assert pipe.model.config.id2label == {0: "drop", 1: "keep"}
    labels = {e["entity"] for e in pipe("The council met on Monday and approved the budget.")}
    assert labels and labels <= {"drop", "keep"}


def test_train_and_evaluate_return_summaries(tmp_path, loopback_server, tiny_bert):
    cfg = prepare(tmp_path, loopback_server, tiny_bert)
    cfg = api.load_config(cfg, {"train.max_steps": 2})
    assert cfg.train.max_steps == 2 and cfg.teacher.base_url == loopback_server.base_url
    s = api.train(cfg)
    assert s.steps == 2 and s.final_model is not None and s.final_model.is_dir()
    assert q(cfg, "SELECT count(*) FROM steps WHERE run_id = ?", [s.run_id]) == [(2,)]
    e = api.evaluate(cfg, s.final_model, baselines=["lead"])
    assert [x.name for x in e.systems] == [str(s.final_model), "lead"] and e.prompts == 12
    assert 0 < e.systems[0].token_ratio < 1
    assert e.row("lead", e.primary_metrics[0]).reference == str(s.final_model)
    base = api.evaluate(cfg, baselines=[])  # default: compressor.model
    assert [x.name for x in base.systems] == [str(tiny_bert)] and base.prompts == 12
