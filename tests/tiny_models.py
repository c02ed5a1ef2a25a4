"""Tiny real token-classification models for tests, built offline.

Each builder trains a tokenizer on the fly with the ``tokenizers`` library (WordPiece for
BERT, Unigram/Metaspace for XLM-R), wraps it as a transformers fast tokenizer, creates a
model from a config with random weights (seeded), and saves both with ``save_pretrained``.
The folder name contains llmlingua's magic substring (``bert-base-multilingual-cased`` or
``xlm-roberta-large``) so that ``llmlingua.PromptCompressor`` accepts it too.

The Unigram trainer is not deterministic: build these once per test session.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import tiktoken
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers as tk_trainers

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "his",
    "her",
    "it",
    "an",
    "were",
    "are",
    "which",
    "this",
    "be",
    "or",
    "has",
    "had",
    "not",
    "but",
    "also",
    "have",
    "their",
    "one",
    "first",
    "after",
    "new",
    "two",
    "its",
    "who",
    "they",
    "been",
    "more",
    "meeting",
    "budget",
    "council",
    "city",
    "project",
    "report",
    "member",
    "motion",
    "vote",
    "public",
    "plan",
    "water",
    "road",
    "school",
    "park",
    "library",
    "police",
    "fire",
    "service",
    "review",
    "approve",
    "agenda",
    "item",
    "minutes",
    "discussion",
    "question",
    "answer",
    "summary",
    "proposal",
    "committee",
    "resolution",
    "contract",
    "amendment",
    "schedule",
    "Monday",
    "Tuesday",
    "January",
    "February",
    "Smith",
    "Johnson",
    "Garcia",
    "Seattle",
    "Boston",
    "quickly",
    "carefully",
    "transformation",
    "internationalization",
    "compression",
    "reinforcement",
    "tokenization",
    "learning",
]
PUNCT = [".", ",", "?", "!", ";", ":", "(", ")", "-", "'", '"']


def random_text(
    rng: random.Random, n_words: int, *, digits: bool = True, newlines: bool = True
) -> str:
    """A pseudo-English text with punctuation, digits, case and (optionally) newlines."""
    out: list[str] = []
    for i in range(n_words):
        w = rng.choice(WORDS)
        if i == 0 or out[-1].endswith((".", "\n")) or rng.random() < 0.05:
            w = w.capitalize()
        if digits and rng.random() < 0.06:
            w = rng.choice(
                [
                    str(rng.randint(0, 2025)),
                    f"{rng.randint(1, 99)}.{rng.randint(0, 9)}",
                    f"v{rng.randint(1, 9)}",
                ]
            )
        r = rng.random()
        if r < 0.08:
            w += "."
        elif r < 0.13:
            w += ","
        elif r < 0.15:
            w += rng.choice(["?", "!", ";", ":"])
        elif r < 0.16:
            w = f"({w})"
        out.append(w)
        if newlines and rng.random() < 0.03:
            out.append("\n\n" if rng.random() < 0.5 else "\n")
    text = ""
    for w in out:
        if w.startswith("\n"):
            text = text.rstrip(" ") + w
        else:
            text += ("" if not text or text.endswith("\n") else " ") + w
    return text


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = [random_text(rng, rng.randint(5, 60)) for _ in range(n)]
    texts.append(" ".join(WORDS) + " " + " ".join(PUNCT) + " 0 1 2 3 4 5 6 7 8 9")
    return texts


def _bert_tokenizer(vocab_size: int, texts: list[str]):
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        lowercase=False, strip_accents=False, clean_text=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = tk_trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=special, min_frequency=1
    )
    tok.train_from_iterator(texts, trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )


def _xlmr_tokenizer(vocab_size: int, texts: list[str]):
    from transformers import PreTrainedTokenizerFast

    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("\n", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = tk_trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=special, unk_token="<unk>"
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bos), ("</s>", eos)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=512,
    )


def build_bert(
    out_dir: Path,
    *,
    vocab_size: int = 600,
    hidden: int = 32,
    layers: int = 2,
    seed: int = 0,
    texts: list[str] | None = None,
) -> Path:
    """A random-weight BertForTokenClassification with a WordPiece tokenizer, saved to out_dir."""
    from transformers import BertConfig, BertForTokenClassification

    tokenizer = _bert_tokenizer(vocab_size, texts or corpus())
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=512,
        num_labels=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = BertForTokenClassification(config)
    _spread_head(model.classifier, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_xlmr(
    out_dir: Path, *, vocab_size: int = 500, hidden: int = 32, layers: int = 2, seed: int = 0
) -> Path:
    """A random-weight XLMRobertaForTokenClassification with a Unigram/Metaspace tokenizer."""
    from transformers import XLMRobertaConfig, XLMRobertaForTokenClassification

    tokenizer = _xlmr_tokenizer(vocab_size, corpus())
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=514,
        num_labels=2,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = XLMRobertaForTokenClassification(config)
    _spread_head(model.classifier, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _spread_head(linear: torch.nn.Module, seed: int) -> None:
    """Widen the random head so keep-probabilities spread over (0, 1) instead of sitting at 0.5."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=g) * 3.0)
        linear.bias.zero_()


def local_encoding(texts: list[str] | None = None, n_merges: int = 300) -> tiktoken.Encoding:
    """A real ``tiktoken.Encoding`` from locally made ranks: the 256 bytes plus BPE merges.

    Stands in for cl100k (which cannot be downloaded here) on both sides of parity tests.
    """
    ranks: dict[bytes, int] = {bytes([i]): i for i in range(256)}
    seqs = [[bytes([b]) for b in w.encode()] for t in (texts or corpus(100)) for w in t.split()]
    for _ in range(n_merges):
        counts: dict[tuple[bytes, bytes], int] = {}
        for s in seqs:
            for a, b in itertools.pairwise(s):
                counts[(a, b)] = counts.get((a, b), 0) + 1
        if not counts:
            break
        (a, b), c = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
        if c < 2:
            break
        merged = a + b
        if merged in ranks:
            break
        ranks[merged] = len(ranks)
        new_seqs = []
        for s in seqs:
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            new_seqs.append(out)
        seqs = new_seqs
    pat = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
    return tiktoken.Encoding(
        name="local_test_bpe", pat_str=pat, mergeable_ranks=ranks, special_tokens={}
    )


_CACHE: dict[str, object] = {}


def cached_model(kind: str, base: Path) -> Path:
    """Build each tiny model once per process (the Unigram trainer is nondeterministic)."""
    key = f"model:{kind}"
    if key not in _CACHE:
        if kind == "bert":
            _CACHE[key] = build_bert(base / "tiny-bert-base-multilingual-cased")
        elif kind == "xlmr":
            _CACHE[key] = build_xlmr(base / "tiny-xlm-roberta-large")
        else:
            raise ValueError(kind)
    return _CACHE[key]  # type: ignore[return-value]


def cached_encoding() -> tiktoken.Encoding:
    if "enc" not in _CACHE:
        _CACHE["enc"] = local_encoding()
    return _CACHE["enc"]  # type: ignore[return-value]
