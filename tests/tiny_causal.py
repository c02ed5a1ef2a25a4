"""A tiny real GPT-2 (2 layers, 64 wide) with a byte-level BPE tokenizer trained on the fly.

Built once per session into a tmp dir with ``save_pretrained`` and loaded back by the code
under test with ``from_pretrained``; no hub access. Weights come from a fixed torch seed and
the BPE trainer is deterministic, so generations are reproducible within a session.
``tiny_causal_dir`` carries a simple chat template; ``tiny_causal_plain_dir`` has none (the
plain "system\\n\\nuser" prompt path).
"""

from __future__ import annotations

from pathlib import Path

import pytest

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A teacher model answers the compressed prompt and the answer is cached.",
    "Summarize the provided text. Summary: the meeting moved to Tuesday.",
    "Question: who wrote the report? Answer: the finance team wrote it.",
    "You are a helpful assistant. Please answer briefly and clearly.",
    "Prompt compression keeps the words that matter and drops the rest.",
    "Numbers like 42, 1500 and 2024 appear in meeting transcripts too.",
]
EOS = "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tiny_causal(out_dir: str | Path, *, chat_template: bool = True, seed: int = 0) -> Path:
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 4, vocab_size=400, min_frequency=1, special_tokens=[EOS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, pad_token=EOS, unk_token=EOS
    )
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=512,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    GPT2LMHeadModel(cfg).eval().save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_causal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal(tmp_path_factory.mktemp("tiny_causal"), chat_template=True)


@pytest.fixture(scope="session")
def tiny_causal_plain_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal(tmp_path_factory.mktemp("tiny_causal_plain"), chat_template=False)
