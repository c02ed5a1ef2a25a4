"""Result types: a greedy compression and one sampled (or greedy) mask."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from tacorl_offline.hashing import mask_hash

LLMLINGUA_KEYS = (
    "compressed_prompt",
    "compressed_prompt_list",
    "origin_tokens",
    "compressed_tokens",
    "ratio",
    "rate",
    "saving",
)


@dataclass
class CompressResult:
    """One compressed prompt. Spans index ``original_text`` ("\\n\\n".join(contexts)).

    It also reads like llmlingua's result dict: ``result["compressed_prompt"]``,
    ``result["ratio"]`` ("3.3x"), ``result["rate"]`` ("30.3%"), ``dict(result)`` and
    ``result.keys()`` give exactly ``PromptCompressor.compress_prompt``'s keys and formats.
    """

    compressed_prompt: str
    compressed_prompt_list: list[str]
    origin_tokens: int
    compressed_tokens: int
    words: list[str]
    keep: list[bool]
    word_spans: list[tuple[int, int]]
    word_probs: list[float]
    original_text: str
    compat: bool = False

    @property
    def kept_spans(self) -> list[tuple[int, int]]:
        return [s for s, k in zip(self.word_spans, self.keep, strict=False) if k and s[1] > s[0]]

    @property
    def mask_hash(self) -> str:
        return mask_hash(self.original_text, self.kept_spans)

    @property
    def ratio(self) -> float:
        """origin / compressed tokens (upstream's "3.3x" as a number)."""
        return self.origin_tokens / self.compressed_tokens if self.compressed_tokens else 1.0

    @property
    def rate(self) -> float:
        """compressed / origin tokens."""
        return self.compressed_tokens / self.origin_tokens if self.origin_tokens else 1.0

    def llmlingua(self) -> dict[str, Any]:
        """llmlingua 0.2.2's ``compress_prompt_llmlingua2`` result, key for key."""
        ratio = self.ratio
        saving = (self.origin_tokens - self.compressed_tokens) * 0.06 / 1000
        return {
            "compressed_prompt": self.compressed_prompt,
            "compressed_prompt_list": list(self.compressed_prompt_list),
            "origin_tokens": self.origin_tokens,
            "compressed_tokens": self.compressed_tokens,
            "ratio": f"{ratio:.1f}x",
            "rate": f"{1 / ratio * 100:.1f}%",
            "saving": f", Saving ${saving:.1f} in GPT-4.",
        }

    def keys(self) -> tuple[str, ...]:
        return LLMLINGUA_KEYS

    def __getitem__(self, key: str) -> Any:
        if key not in LLMLINGUA_KEYS:
            raise KeyError(key)
        return self.llmlingua()[key]

    def to_dict(self, *, labels: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "compressed_prompt": self.compressed_prompt,
            "origin_tokens": self.origin_tokens,
            "compressed_tokens": self.compressed_tokens,
            "ratio": round(self.ratio, 4),
            "rate": round(self.rate, 4),
            "mask_hash": self.mask_hash,
        }
        if labels:
            d["words"] = self.words
            d["keep"] = self.keep
        return d


@dataclass
class Sample:
    """One keep-mask over a prompt's words, with what the policy gradient needs."""

    keep: list[bool]
    text: str
    mask_hash: str
    kept_spans: list[tuple[int, int]]
    log_prob: torch.Tensor  # scalar: sum of log-probs of the deciding words' actions
    entropy: torch.Tensor  # scalar: sum of Bernoulli entropies of the deciding words
    n_actions: int  # deciding words (not forced, not special, not padding)
    n_words: int
    word_spans: list[tuple[int, int]] = field(default_factory=list, repr=False)
    # The deciding words' actions (True: keep), in layout order, and each one's log-prob under
    # the policy that drew it (with gradient): the behaviour policy that off-policy reuse
    # importance-weights against. ``log_prob`` is their sum.
    actions: Any = field(default=None, repr=False)  # np.ndarray[bool], one per deciding word
    word_log_probs: torch.Tensor | None = field(default=None, repr=False)

    @property
    def n_kept(self) -> int:
        return sum(self.keep)
