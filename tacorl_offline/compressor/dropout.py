"""Which dropout the encoder applies while it trains.

Design decision: supervised training (``sft``) runs without attention dropout unless the config
asks for it (``sft.dropout``). With attention dropout on in training mode, PyTorch's
``scaled_dot_product_attention`` cannot take its fused CPU kernel and falls back to the math
path, which materialises the ``[B, H, L, L]`` attention matrix and a Bernoulli mask of the same
size: the profile in issue 19 had the math path at 26% and ``dropout`` at 18% of an SFT step.
Hidden dropout (embeddings, after attention and the feed-forward block, the classifier head)
is ``[B, L, d]`` per site, a few percent, and is what the ``hidden`` setting keeps.

The change is made on the modules (``nn.Dropout.p``), never on ``model.config``: a model saved
after SFT keeps its original dropout configuration, so RL training that starts from it is
unchanged.
"""

from __future__ import annotations

from typing import Literal

import torch

DropoutMode = Literal["none", "hidden", "all"]


def _is_attention(module: torch.nn.Module) -> bool:
    """A self-attention block (BERT, XLM-R, ...): its ``dropout`` is the attention-probability
    dropout that SDPA applies."""
    return all(hasattr(module, n) for n in ("query", "key", "value"))


def set_dropout(model: torch.nn.Module, mode: DropoutMode) -> dict[str, int]:
    """Keep ``all`` dropout, only the ``hidden`` one (no attention dropout), or ``none``.

    Returns how many dropout modules were switched off, by kind (``attention``, ``hidden``).
    """
    if mode not in ("none", "hidden", "all"):
        raise ValueError(f"dropout mode {mode!r}: use none, hidden or all")
    attention_drops = {
        id(m.dropout)
        for m in model.modules()
        if _is_attention(m) and isinstance(getattr(m, "dropout", None), torch.nn.Dropout)
    }
    off = {"attention": 0, "hidden": 0}
    for m in model.modules():
        if not isinstance(m, torch.nn.Dropout) or m.p == 0:
            continue
        kind = "attention" if id(m) in attention_drops else "hidden"
        if mode == "none" or (mode == "hidden" and kind == "attention"):
            m.p = 0.0
            off[kind] += 1
    return off
