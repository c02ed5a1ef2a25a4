"""Compression options: one documented dataclass, validated up front.

The same dataclass is saved next to a model (``tacorl_compressor.json``) so a saved
compressor reloads with the options it was trained or evaluated with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from tacorl_offline.config import CompressorConfig
from tacorl_offline.errors import UserError

# The defaults are written once, in the config model; the library reads them from there.
_CFG = CompressorConfig()

TokenToWord = Literal["mean", "first"]


@dataclass
class CompressOptions:
    """Options of greedy compression and sampling. Every field has a default."""

    rate: float = _CFG.rate
    """Target fraction of tokens to keep (1.0 keeps everything)."""
    target_token: int = _CFG.target_token
    """If > 0, overrides ``rate`` with ``target_token / origin_tokens``."""
    threshold: float | None = None
    """Threshold mode: keep a word iff its keep-probability is >= threshold (ignores rate)."""
    force_tokens: list[str] = field(default_factory=list)
    """Strings always kept (e.g. "\\n", "."); strings of several pieces are handled too."""
    force_reserve_digit: bool = _CFG.force_reserve_digit
    """Always keep words holding a digit."""
    drop_consecutive: bool = False
    """Drop a repeated force token when no kept word lies between the two. Off here, as in
    llmlingua's ``compress_prompt`` (this is the llmlingua-compatible library API); the tool's
    config (``compressor.drop_consecutive``) turns it on."""
    token_to_word: TokenToWord = _CFG.word_prob
    """Word probability: the mean of its tokens' keep-probabilities, or the first token's."""
    chunk_end_tokens: list[str] = field(default_factory=lambda: list(_CFG.chunk_end_tokens))
    """Chunks (<= max_seq_len tokens) are cut after the last of these tokens in the window."""
    max_seq_len: int = _CFG.max_seq_len
    """Model input length, special tokens included."""
    batch_size: int = _CFG.batch_size
    """Chunks per forward pass."""
    use_context_level_filter: bool = False
    """With several contexts, drop whole contexts ranked by their mean word probability."""
    context_level_rate: float = 1.0
    """Fraction of contexts kept by the context-level filter (1.0: derived from rate, as upstream)."""
    compat: bool = False
    """Reproduce llmlingua 0.2.2 ``compress_prompt_llmlingua2`` kept-word decisions exactly."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not (0 < self.rate <= 1):
            raise UserError(
                f"rate (--rate) is the fraction of tokens kept and must lie in (0, 1] "
                f"(got {self.rate}); 1.0 keeps everything"
            )
        if self.target_token != -1 and not self.target_token > 0:
            raise UserError(
                f"target_token (--target-token) must be a positive number of tokens, or -1 for "
                f"none (got {self.target_token})"
            )
        if not (0 < self.context_level_rate <= 1):
            raise UserError(
                f"context_level_rate must lie in (0, 1] (got {self.context_level_rate})"
            )
        if self.threshold is not None and not (0.0 <= self.threshold <= 1.0):
            raise UserError(f"threshold must lie in [0, 1] (got {self.threshold})")
        if self.token_to_word not in ("mean", "first"):
            raise UserError(f"token_to_word must be 'mean' or 'first' (got {self.token_to_word!r})")
        if self.max_seq_len < 8:
            raise UserError(f"max_seq_len must be >= 8 (got {self.max_seq_len})")
        if self.batch_size < 1:
            raise UserError(f"batch_size must be >= 1 (got {self.batch_size})")
        if len(self.force_tokens) > 100:
            raise UserError("at most 100 force tokens are supported (llmlingua's limit)")
        if self.compat and self.threshold is not None:
            raise UserError(
                "threshold mode has no llmlingua equivalent; drop --compat or --threshold"
            )

    def replace(self, **changes: Any) -> CompressOptions:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, cc: CompressorConfig) -> CompressOptions:
        """The options for the ``compressor`` config section (the tool's settings)."""
        return cls(
            rate=cc.rate,
            target_token=cc.target_token,
            force_tokens=list(cc.force_tokens),
            force_reserve_digit=cc.force_reserve_digit,
            drop_consecutive=cc.drop_consecutive,
            token_to_word=cc.word_prob,
            chunk_end_tokens=list(cc.chunk_end_tokens),
            max_seq_len=cc.max_seq_len,
            batch_size=cc.batch_size,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressOptions:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
