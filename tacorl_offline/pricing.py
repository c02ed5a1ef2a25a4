"""Cost arithmetic (pure).

Prices are USD per 1M input / output tokens. The defaults below are list prices for common
OpenAI models at the time of writing; they change, so override them in config
(``prices: {my-model: {input: 0.15, output: 0.6}}``). A model is matched by its exact name,
then by the longest known prefix (``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``). Local
backends (extractive, hf) cost 0. An unknown API model also costs 0, and the fill/train
summaries say so loudly rather than inventing a price; a dollar cap on an unknown model is
refused (it could not be enforced).

A call's worst-case cost bounds what it can be billed before it is sent: one token per UTF-8
byte of every message (byte-level BPE never makes a token shorter than a byte) plus a per-message
overhead, and ``max_tokens`` of output. Reserving it is what keeps a dollar cap exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tacorl_offline.config import Config


@dataclass(frozen=True)
class ModelPrice:
    input: float  # USD per 1M input tokens
    output: float  # USD per 1M output tokens
    batch_discount: float = 0.5  # multiplier for Batch API calls


DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-4o-mini": ModelPrice(0.15, 0.60),
    "gpt-4o": ModelPrice(2.50, 10.00),
    "gpt-4.1-nano": ModelPrice(0.10, 0.40),
    "gpt-4.1-mini": ModelPrice(0.40, 1.60),
    "gpt-4.1": ModelPrice(2.00, 8.00),
    "gpt-4-turbo": ModelPrice(10.00, 30.00),
    "gpt-4": ModelPrice(30.00, 60.00),
    "gpt-3.5-turbo": ModelPrice(0.50, 1.50),
    "gpt-35-turbo": ModelPrice(0.50, 1.50),  # Azure deployment naming
    "o3-mini": ModelPrice(1.10, 4.40),
    "o4-mini": ModelPrice(1.10, 4.40),
    "gpt-5-nano": ModelPrice(0.05, 0.40),
    "gpt-5-mini": ModelPrice(0.25, 2.00),
    "gpt-5": ModelPrice(1.25, 10.00),
}

FREE_BACKENDS = frozenset({"extractive", "hf"})


class PriceTable:
    def __init__(
        self, overrides: Mapping[str, ModelPrice | Mapping[str, float]] | None = None
    ) -> None:
        self.prices: dict[str, ModelPrice] = dict(DEFAULT_PRICES)
        for name, p in (overrides or {}).items():
            self.prices[name] = p if isinstance(p, ModelPrice) else ModelPrice(**dict(p))

    def lookup(self, model: str) -> ModelPrice | None:
        if model in self.prices:
            return self.prices[model]
        best = max((k for k in self.prices if model.startswith(k)), key=len, default=None)
        return self.prices[best] if best else None

    def known(self, backend: str, model: str) -> bool:
        return backend in FREE_BACKENDS or self.lookup(model) is not None

    def cost(
        self,
        backend: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        *,
        batch: bool = False,
    ) -> float:
        if backend in FREE_BACKENDS:
            return 0.0
        p = self.lookup(model)
        if p is None:
            return 0.0
        usd = (input_tokens * p.input + output_tokens * p.output) / 1_000_000
        return usd * p.batch_discount if batch else usd


def prices_from_config(cfg: Config) -> PriceTable:
    """The price table with the config's ``prices`` overrides."""
    return PriceTable({k: v.model_dump() for k, v in cfg.prices.items()})


# Chat formatting adds a few tokens per message (role, separators) and a few to prime the reply.
MESSAGE_OVERHEAD_TOKENS = 8
REPLY_OVERHEAD_TOKENS = 8


def worst_case_input_tokens(messages: Iterable[Mapping[str, object]]) -> int:
    """An upper bound on the input tokens a chat request can be billed for."""
    n = REPLY_OVERHEAD_TOKENS
    for m in messages:
        n += MESSAGE_OVERHEAD_TOKENS
        n += sum(len(str(v).encode("utf-8")) for v in m.values() if v is not None)
    return n
