"""Sentence-level credit: groups whose masks differ in one sentence, and their paired loss (pure).

With one reward per mask, plain REINFORCE credits that reward to all ~100 word decisions of the
mask, and most of them did not decide it: gradients from two disjoint halves of a batch point
in unrelated directions (cosine +0.015, issue 16). The reward of a compressed prompt is mostly
decided per sentence (which sentence the teacher reads its answer from, and how much of it
survives), so ``train.credit: sentence`` draws each prompt's group as:

- a **base** mask ``m_0``, drawn from the policy as usual;
- ``G - 1`` **variants**: each copies ``m_0`` and re-draws the words of one sentence ``s_j``
  (sentences picked without replacement, uniformly; cycled in a random order when a prompt has
  fewer sentences than variants).

A variant and the base differ only inside ``s_j``, so their reward difference is that
sentence's doing, and the estimator for its words is the two-sample one

    g_j = (R_j - R_0) / 2 * (grad log pi(m_j[s_j]) - grad log pi(m_0[s_j])),

whose expectation, given the rest of the mask, is ``E[R grad log pi(a_{s_j})]`` (the policy is a
product over words, so the rest of the mask is independent of ``s_j``'s words). Summed over the
chosen sentences and scaled by ``k / (G - 1)`` (``k`` sentences, each chosen with probability
``(G - 1) / k``), it is an unbiased estimate of the whole gradient of ``E[R]``, the same quantity
REINFORCE estimates, without the noise of the ~90 words outside the sentence. The rate shift
is differentiated as everywhere else (:func:`tacorl_offline.compressor.sampling.shifted_probs`).
Each variant costs one teacher call, like a sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

SENTENCE_ENDS = (".", "!", "?", "\n")


def sentence_ids(words: Sequence[str]) -> np.ndarray:
    """Sentence index per word: a new sentence starts after a word ending in ``. ! ?`` or a
    newline."""
    out = np.zeros(len(words), dtype=np.int64)
    s = 0
    for i, w in enumerate(words):
        out[i] = s
        if (w.strip() and w.rstrip(" ").endswith(SENTENCE_ENDS)) or w == "\n":
            s += 1
    return out


def choose_sentences(sentences: np.ndarray, n: int, generator: torch.Generator | None) -> list[int]:
    """``n`` sentence ids among ``sentences`` (distinct ids with at least one deciding word):
    without replacement, cycling through a random order when ``n`` exceeds their number, so
    each is chosen ``n / k`` times in expectation."""
    if len(sentences) == 0 or n < 1:
        return []
    order = torch.randperm(len(sentences), generator=generator).tolist()
    return [int(sentences[order[j % len(order)]]) for j in range(n)]


def draw_group(
    probs: Tensor,
    sent_of_word: np.ndarray,
    n: int,
    generator: torch.Generator | None,
) -> tuple[Tensor, list[int | None]]:
    """Actions ``[n, len(probs)]`` (bool): row 0 the base draw, row j >= 1 the base with the
    words of one sentence re-drawn; and the re-drawn sentence per row (None for the base)."""
    from tacorl_offline.compressor.sampling import draw

    if n < 1:
        return torch.zeros((0, probs.shape[0]), dtype=torch.bool), []
    base = draw(probs, 1, generator)[0]
    acts = [base]
    chosen: list[int | None] = [None]
    present = np.unique(sent_of_word)
    for s in choose_sentences(present, n - 1, generator):
        fresh = draw(probs, 1, generator)[0]
        where = torch.as_tensor(sent_of_word == s, device=base.device)
        acts.append(torch.where(where, fresh, base))
        chosen.append(s)
    return torch.stack(acts), chosen


def paired_loss(
    word_log_probs: Sequence[Tensor],
    rewards: Sequence[float],
    chosen: Sequence[int | None],
    sent_of_word: np.ndarray,
) -> tuple[Tensor | None, int]:
    """One prompt's surrogate loss (minus the estimate of ``grad E[R]``'s surrogate), and how
    many variant pairs entered it. ``word_log_probs[j]``: per-word log-probs [n] of row j's
    actions (with gradient); row 0 is the base. A pair with an unscorable (NaN) reward is
    left out. None when no pair entered (the loss is then 0 for this prompt)."""
    if len(word_log_probs) != len(rewards) or len(rewards) != len(chosen):
        raise ValueError("word_log_probs, rewards and chosen must align")
    if not rewards or chosen[0] is not None:
        raise ValueError("row 0 must be the base mask")
    r0 = rewards[0]
    k = len(np.unique(sent_of_word))
    variants = len(rewards) - 1
    if variants < 1 or math.isnan(r0) or k == 0:
        return None, 0
    scale = k / variants
    terms = []
    for lp, r, s in zip(word_log_probs[1:], rewards[1:], chosen[1:], strict=True):
        if s is None or math.isnan(r):
            continue
        m = torch.as_tensor(sent_of_word == s, device=lp.device)
        diff = 0.5 * (r - r0)
        terms.append(diff * (lp[m].sum() - word_log_probs[0][m].sum()))
    if not terms:
        return None, 0
    return -scale * torch.stack(terms).sum(), len(terms)
