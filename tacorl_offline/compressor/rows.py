"""Model input rows and the batched forward over them.

Design decision: a layout chunk becomes a model row in ONE place, :func:`build_rows`
(``[CLS] chunk [SEP]``), used by the greedy path (:meth:`.Compressor.compress`) and the
sampling path (:mod:`.policy`) alike, so the two always feed the model the same rows. A
question-aware compressor (``condition_on``) reads a never-compressed prefix first:
``[CLS] question [SEP] chunk [SEP]``, the chunk in token type 1 where the model has two
types (BERT), as a cross-encoder reads a sentence pair. The llmlingua compat path builds
llmlingua's own rows (:mod:`.compat`) and shares only the forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .layout import Layout


def special_ids(tokenizer: Any) -> tuple[int | None, int | None]:
    """The row's opening and closing special token ids ([CLS]/[SEP], or <s>/</s>)."""
    cls_id = (
        tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    )
    sep_id = (
        tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    )
    return cls_id, sep_id


def pad_id(tokenizer: Any) -> int:
    pid = tokenizer.pad_token_id
    return int(pid) if pid is not None else 0


@dataclass(frozen=True)
class Rows:
    ids: list[np.ndarray]  # per row: int64 token ids, specials included
    where: list[tuple[int, int, int]]  # per row: (layout index, token start, token stop)
    leads: list[int]  # per row: tokens before the chunk's first token
    types: list[np.ndarray] | None = None  # per row: token type ids (None: all 0)

    @property
    def lead(self) -> int:
        """The common lead of rows without a prefix (1 with an opening special)."""
        return self.leads[0] if self.leads else 0


def build_rows(
    layouts: Sequence[Layout],
    tokenizer: Any,
    prefixes: Sequence[Sequence[int]] | None = None,
    two_types: bool = False,
) -> Rows:
    """One row per chunk of every layout, in layout then chunk order. ``prefixes[i]``: the
    never-compressed token ids read before layout i's chunks (empty: none). ``two_types``:
    the chunk and closing special get token type 1 after a prefix."""
    cls_id, sep_id = special_ids(tokenizer)
    open_ = [cls_id] if cls_id is not None else []
    close = np.asarray([sep_id] if sep_id is not None else [], dtype=np.int64)
    ids, where, leads, types = [], [], [], []
    typed = False
    for li, lay in enumerate(layouts):
        pre = list(prefixes[li]) if prefixes else []
        head = np.asarray(open_ + (pre + close.tolist() if pre else []), dtype=np.int64)
        for a, b in lay.chunks:
            row = np.concatenate([head, np.asarray(lay.ids[a:b], dtype=np.int64), close])
            ids.append(row)
            where.append((li, a, b))
            leads.append(len(head))
            tt = np.zeros(len(row), dtype=np.int64)
            if pre and two_types:
                tt[len(head) :] = 1
                typed = True
            types.append(tt)
    return Rows(ids, where, leads, types if typed else None)


def mask_arg(model: torch.nn.Module, mask: torch.Tensor) -> torch.Tensor:
    """The attention mask to pass: for SDPA models, the padding mask as a broadcastable 4D bool
    mask ``[B, 1, 1, L]``, which transformers passes through untouched instead of building a
    ``[B, 1, L, L]`` mask per batch (tens of ms per batch on CPU). SDPA computes the very same
    numbers (bitwise: tests/test_compressor_speed.py checks it); other attention kernels get the
    2D mask.
    """
    cfg = getattr(model, "config", None)
    if getattr(cfg, "_attn_implementation", None) == "sdpa" and mask.dim() == 2:
        return mask.bool()[:, None, None, :]
    return mask


def forward_rows(
    model: torch.nn.Module,
    rows: Sequence[Sequence[int] | np.ndarray],
    *,
    device: torch.device,
    pad: int,
    sort: bool = True,
    pad_to: int | None = None,
    attn: list[list[int]] | None = None,
    types: Sequence[np.ndarray] | None = None,
    batch_size: int = 50,
) -> list[torch.Tensor]:
    """Keep-probabilities per row (float32, length of the row). Grad follows the caller's mode.
    ``sort``: longest rows first, each batch padded to its longest (else input order)."""
    order = (
        sorted(range(len(rows)), key=lambda i: -len(rows[i])) if sort else list(range(len(rows)))
    )
    out: list[torch.Tensor | None] = [None] * len(rows)
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        width = pad_to or max(len(rows[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        tt = torch.zeros((len(idx), width), dtype=torch.long) if types is not None else None
        for r, i in enumerate(idx):
            ids[r, : len(rows[i])] = torch.as_tensor(rows[i])
            mask[r, : len(rows[i])] = torch.as_tensor(attn[i]) if attn is not None else 1
            if tt is not None and types is not None:
                tt[r, : len(rows[i])] = torch.as_tensor(types[i])
        mask = mask.to(device)
        if not torch.is_grad_enabled():  # inference (compat mode): the cheap SDPA mask
            mask = mask_arg(model, mask)
        extra = {"token_type_ids": tt.to(device)} if tt is not None else {}
        logits = model(input_ids=ids.to(device), attention_mask=mask, **extra).logits
        probs = torch.softmax(logits.float(), dim=-1)[..., 1]
        for r, i in enumerate(idx):
            out[i] = probs[r, : len(rows[i])]
    return out  # type: ignore[return-value]
