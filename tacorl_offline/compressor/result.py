"""Result types: a greedy compression and one sampled (or greedy) mask.

Design decision: :class:`CompressResult` *is* llmlingua's result dict (a ``dict`` subclass), so
``json.dumps(result)``, ``result["ratio"]`` ("3.0x"), ``result["rate"]`` ("33.3%") and
``dict(result)`` behave exactly as with ``PromptCompressor.compress_prompt``. What only this
tool knows (the words, their keep decisions, probabilities and spans, the mask hash) are
attributes; ``ratio_value``/``rate_value`` (also ``.ratio``/``.rate``) give the two ratios as
numbers, where ``result["ratio"]``/``result["rate"]`` are llmlingua's strings.
"""

from __future__ import annotations

from collections.abc import Sequence
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
# llmlingua's separators for ``fn_labeled_original_prompt`` (compress_prompt_llmlingua2)
WORD_SEP, LABEL_SEP = "\t\t|\t\t", " "


def format_ratio(origin_tokens: int, compressed_tokens: int) -> tuple[str, str]:
    """llmlingua's ("3.0x", "33.3%") for a token count pair (1x when nothing is left)."""
    ratio = origin_tokens / compressed_tokens if compressed_tokens else 1.0
    return f"{ratio:.1f}x", f"{1 / ratio * 100:.1f}%"


class CompressResult(dict):
    """One compressed prompt: llmlingua's result dict, plus this tool's word-level view.

    Spans index ``original_text`` ("\\n\\n".join(contexts)). The dict holds exactly
    ``PromptCompressor.compress_prompt``'s keys and formats (and ``fn_labeled_original_prompt``
    after :meth:`add_word_labels`, as llmlingua's ``return_word_label=True``).
    """

    def __init__(
        self,
        *,
        compressed_prompt: str,
        compressed_prompt_list: Sequence[str],
        origin_tokens: int,
        compressed_tokens: int,
        words: list[str],
        keep: list[bool],
        word_spans: list[tuple[int, int]],
        word_probs: list[float],
        original_text: str,
        compat: bool = False,
    ) -> None:
        super().__init__(
            compressed_prompt=compressed_prompt,
            compressed_prompt_list=list(compressed_prompt_list),
            origin_tokens=origin_tokens,
        )
        self.words = words
        self.keep = keep
        self.word_spans = word_spans
        self.word_probs = word_probs
        self.original_text = original_text
        self.compat = compat
        self.compressed_tokens = compressed_tokens  # sets ratio, rate and saving

    # llmlingua's fields as attributes too
    @property
    def compressed_prompt(self) -> str:
        return self["compressed_prompt"]

    @property
    def compressed_prompt_list(self) -> list[str]:
        return self["compressed_prompt_list"]

    @property
    def origin_tokens(self) -> int:
        return self["origin_tokens"]

    @property
    def compressed_tokens(self) -> int:
        return self["compressed_tokens"]

    @compressed_tokens.setter
    def compressed_tokens(self, n: int) -> None:
        origin = self["origin_tokens"]
        ratio, rate = format_ratio(origin, n)
        saving = (origin - n) * 0.06 / 1000
        self.update(
            compressed_tokens=n,
            ratio=ratio,
            rate=rate,
            saving=f", Saving ${saving:.1f} in GPT-4.",
        )

    @property
    def ratio_value(self) -> float:
        """origin / compressed tokens (``self["ratio"]`` is llmlingua's "3.0x")."""
        n = self["compressed_tokens"]
        return self["origin_tokens"] / n if n else 1.0

    @property
    def rate_value(self) -> float:
        """compressed / origin tokens (``self["rate"]`` is llmlingua's "33.3%")."""
        return 1.0 / self.ratio_value

    # numbers under the names earlier versions used (attributes; the dict keys are strings)
    ratio = ratio_value
    rate = rate_value

    @property
    def kept_spans(self) -> list[tuple[int, int]]:
        return [s for s, k in zip(self.word_spans, self.keep, strict=False) if k and s[1] > s[0]]

    @property
    def mask_hash(self) -> str:
        return mask_hash(self.original_text, self.kept_spans)

    def labeled_words(self, word_sep: str = WORD_SEP, label_sep: str = LABEL_SEP) -> str:
        """llmlingua's ``fn_labeled_original_prompt``: ``word<label_sep>0|1`` joined by
        ``word_sep``, every word of the original (a dropped context's words labelled 0)."""
        return word_sep.join(
            f"{w}{label_sep}{int(k)}" for w, k in zip(self.words, self.keep, strict=True)
        )

    def add_word_labels(self, word_sep: str = WORD_SEP, label_sep: str = LABEL_SEP) -> None:
        self["fn_labeled_original_prompt"] = self.labeled_words(word_sep, label_sep)

    def llmlingua(self) -> dict[str, Any]:
        """A plain ``dict`` copy: llmlingua 0.2.2's ``compress_prompt_llmlingua2`` result."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self.items()}

    def to_dict(self, *, labels: bool = False) -> dict[str, Any]:
        """What ``compress --format json`` prints: llmlingua's dict plus ``mask_hash`` (and, with
        ``labels``, the words and their keep decisions)."""
        d = self.llmlingua()
        d["mask_hash"] = self.mask_hash
        if labels:
            d["words"] = self.words
            d["keep"] = self.keep
        return d

    def __repr__(self) -> str:
        return f"CompressResult({dict.__repr__(self)})"

    def __reduce__(self):  # pickle/copy: rebuild through __init__, keep the attributes
        return (_rebuild, (dict(self), self.__dict__.copy()))


def _rebuild(items: dict[str, Any], attrs: dict[str, Any]) -> CompressResult:
    r = CompressResult.__new__(CompressResult)
    dict.update(r, items)
    r.__dict__.update(attrs)
    return r


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
