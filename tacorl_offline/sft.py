"""Supervised warm start of the compressor (LLMLingua-2 style), before any RL.

Upstream TACO-RL starts its REINFORCE from LLMLingua-2's pretrained compressor; we have no
such model offline, so a fresh keep/drop head would start RL from coin flips (per-word entropy
~ln 2, the policy barely moves in 100 steps). ``sft`` trains the head and the encoder as a
plain token classifier on word labels, like LLMLingua-2 itself was trained.

Word labels come from one of three sources (``sft.source``):

- ``teacher``: the teacher's answer to the *original* prompt, already in the warehouse. A word
  of the original is labelled keep when it aligns to the answer (:mod:`.alignment`), at most
  ``compressor.rate`` of the prompt. The labels say "what the teacher used to answer", the
  thing the compressed prompt must keep for the answers to agree.
- ``file``: an LLMLingua-2 word-label file: JSON or JSONL records ``{"words": [...],
  "labels": [...]}`` (LLMLingua-2's ``label_word.py`` output, a mapping of such records, is
  read too), matched to the dataset's prompts by their original text ``"origin"`` or, in order,
  by position.
- ``stopword``: stopwords and punctuation dropped, the rest kept (no teacher needed).

The loss is token-level cross-entropy with class weights ``n / (2 n_c)`` (class-balanced), every
token of a word carrying its word's label; padding, special tokens, question tokens and forced
words carry none. A share of the prompts (``sft.eval_share``, chosen by prompt-id hash) is held
out for the label F1 reported after each epoch. The result is a normal compressor directory
(`save_pretrained`), which ``train`` starts from (``compressor.model: <dir>``). The labels are
stored in the warehouse table ``sft_labels`` so they can be queried.

Design decision (speed, issue 19): SFT runs at the model's own speed. Each example is tokenized
into its model rows once (:func:`example_rows`); an epoch's batches are length-bucketed, seeded
and reproducible (:func:`bucketed_batches`), so little of a batch is padding; the loss of a batch
is computed on the padded tensors at once (equal to the per-example loss it replaced,
tests/test_sft_speed.py); AdamW is the trainer's fused one; no attention dropout unless
``sft.dropout`` asks (:mod:`.compressor.dropout`), so attention takes the fused SDPA kernel;
intra-op threads are the free cores (:mod:`.threads`). bench/sft_speed.py measures it.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tacorl_offline.alignment import align_text, labels_for_spans, trim_to_rate
from tacorl_offline.errors import UserError
from tacorl_offline.heuristics import is_droppable
from tacorl_offline.runs import exit_status, finish_run_surely
from tacorl_offline.training.optim import freeze_lower_layers

# ----------------------------------------------------------------------------- labels (pure)


def stopword_labels(words: Sequence[str]) -> np.ndarray:
    """Keep every word the ``stopword`` baseline would keep first (not a stopword, not
    punctuation): the same list as the baseline, so the two can be compared."""
    return np.array([not is_droppable(w) for w in words], dtype=bool)


def teacher_labels(
    text: str,
    answer: str,
    word_spans: Sequence[tuple[int, int]],
    weights: np.ndarray,
    rate: float,
) -> np.ndarray:
    """Compressor words aligned to the teacher's answer, at most ``rate`` of the weight."""
    al, spans = align_text(text, answer)
    kept = [s for s, k in zip(spans, al.labels, strict=True) if k]
    labels = labels_for_spans(kept, word_spans)
    return trim_to_rate(labels, weights, rate)


def read_label_file(path: str | Path) -> list[dict[str, Any]]:
    """Records ``{"words", "labels", "origin"?}`` from JSON (list or mapping) or JSONL."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: label file not found; pass an existing file with --labels")
    raw = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".jsonl":
            recs: Any = [json.loads(line) for line in raw.splitlines() if line.strip()]
        else:
            recs = json.loads(raw)
    except json.JSONDecodeError as e:
        raise UserError(f"{p}: not valid JSON ({e.msg} at line {e.lineno}); fix the file") from None
    if isinstance(recs, dict):
        recs = list(recs.values())
    if not isinstance(recs, list):
        raise UserError(f"{p}: expected a list or mapping of label records")
    out = []
    for i, r in enumerate(recs):
        if not isinstance(r, dict) or not isinstance(r.get("words"), list):
            raise UserError(
                f"{p}: record {i} has no 'words' list; each record needs words and labels"
            )
        labels = r.get("labels")
        if not isinstance(labels, list) or len(labels) != len(r["words"]):
            raise UserError(
                f"{p}: record {i}: 'labels' must be a list as long as 'words' ({len(r['words'])})"
            )
        out.append(
            {
                "words": [str(w) for w in r["words"]],
                "labels": [bool(x) for x in labels],
                "origin": r.get("origin"),
            }
        )
    return out


def file_labels(
    text: str, record: dict[str, Any], word_spans: Sequence[tuple[int, int]]
) -> np.ndarray:
    """Map a label record's words onto the text (in order) and then onto compressor words."""
    kept: list[tuple[int, int]] = []
    pos = 0
    for w, keep in zip(record["words"], record["labels"], strict=True):
        at = text.find(w, pos)
        if at < 0:
            continue  # a word the text does not hold (variation): no label
        if keep:
            kept.append((at, at + len(w)))
        pos = at + len(w)
    return labels_for_spans(kept, word_spans)


# ----------------------------------------------------------------------------- training


@dataclass
class SftExample:
    prompt_id: str
    text: str
    fields: dict[str, Any]
    labels: np.ndarray  # bool per compressor word


@dataclass
class LabelScores:
    precision: float
    recall: float
    f1: float


def label_f1(pred: Sequence[np.ndarray], gold: Sequence[np.ndarray]) -> LabelScores:
    tp = sum(int((p & g).sum()) for p, g in zip(pred, gold, strict=True))
    npred = sum(int(p.sum()) for p in pred)
    ngold = sum(int(g.sum()) for g in gold)
    prec = tp / npred if npred else 0.0
    rec = tp / ngold if ngold else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return LabelScores(prec, rec, f1)


def held_out(prompt_id: str, share: float) -> bool:
    h = hashlib.sha256(prompt_id.encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < share


def class_weights(
    examples: Sequence[SftExample], weights_of: Callable[[SftExample], np.ndarray]
) -> tuple[float, float]:
    """``n / (2 n_c)`` over tokens (a word's label counts once per token)."""
    pos = neg = 0.0
    for ex in examples:
        w = weights_of(ex)
        pos += float(w[ex.labels].sum())
        neg += float(w[~ex.labels].sum())
    n = pos + neg
    if pos == 0 or neg == 0:
        raise UserError("SFT labels are all keep or all drop; check sft.source and compressor.rate")
    return n / (2 * neg), n / (2 * pos)


@dataclass
class EpochLog:
    epoch: int
    loss: float
    label_f1: float
    label_precision: float
    label_recall: float
    seconds: float

    @property
    def held_out(self) -> bool:
        """Whether a label F1 was measured (sft.eval_share > 0 held some prompts out)."""
        return not math.isnan(self.label_f1)

    @property
    def label_text(self) -> str:
        """``held-out label F1 ...`` for a log line; ``none held out`` when sft.eval_share is 0."""
        if not self.held_out:
            return "held-out label F1 - (sft.eval_share 0: none held out)"
        return (
            f"held-out label F1 {self.label_f1:.3f} "
            f"(precision {self.label_precision:.3f}, recall {self.label_recall:.3f})"
        )


@dataclass
class SftResult:
    epochs: list[EpochLog] = field(default_factory=list)
    n_train: int = 0
    n_eval: int = 0
    keep_share: float = 0.0


# ----------------------------------------------------------------------------- batching (pure)


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, pool: int = 64
) -> list[list[int]]:
    """One epoch's batches: every index once, similar lengths together, in a seeded order.

    The indices are shuffled (seeded by ``seed`` and ``epoch``), cut into pools of
    ``pool * batch_size``, each pool sorted by length and cut into batches, and the batches
    shuffled again: a batch holds prompts of one length band (little padding), while which
    prompts meet, and the order of the bands, change from epoch to epoch. Reproducible: the
    same arguments give the same batches.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    rng = random.Random(f"sft-batches:{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = max(1, pool) * batch_size
    batches: list[list[int]] = []
    for k in range(0, len(order), span):
        chunk = sorted(order[k : k + span], key=lambda i: lengths[i])
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def padding_share(row_lengths: Sequence[Sequence[int]], batches: Sequence[Sequence[int]]) -> float:
    """The share of padded positions when each batch's rows are padded to its longest row
    (``row_lengths[i]``: the lengths of example i's model rows)."""
    real = padded = 0
    for b in batches:
        rows = [n for i in b for n in row_lengths[i]]
        if rows:
            real += sum(rows)
            padded += max(rows) * len(rows)
    return 1.0 - real / padded if padded else 0.0


# ----------------------------------------------------------------------------- training


@dataclass
class SftRows:
    """One example's model rows, built once (the same rows greedy compression reads,
    :func:`~tacorl_offline.compressor.rows.build_rows`), with the label of each token and
    whether it counts in the loss (a token of a deciding word; not padding, specials, the
    question, or forced words)."""

    ids: list[np.ndarray]
    types: list[np.ndarray] | None
    y: list[np.ndarray]  # float32 per row token (0 where it does not count)
    counted: list[np.ndarray]  # bool per row token

    @property
    def lengths(self) -> list[int]:
        return [len(r) for r in self.ids]


def example_rows(
    comp: Any, examples: Sequence[SftExample], lays: Sequence[Any] | None = None
) -> list[SftRows]:
    """Model rows and token targets of every example, tokenized once (``lays``: their
    layouts, if already made)."""
    from tacorl_offline.compressor.rows import build_rows

    if lays is None:
        lays = comp.layouts([ex.text for ex in examples], comp.options)
    pre = comp.prefixes([ex.fields for ex in examples], len(lays))
    rows = build_rows(lays, comp.tokenizer, pre, comp._two_types)
    out = [SftRows([], [] if rows.types is not None else None, [], []) for _ in examples]
    for r, (li, a, b) in enumerate(rows.where):
        ex, lay, lead = examples[li], lays[li], rows.leads[r]
        ids = rows.ids[r]
        wot = np.asarray(lay.word_of_token[a:b])
        ok = wot >= 0
        counted = np.zeros(len(ids), dtype=bool)
        y = np.zeros(len(ids), dtype=np.float32)
        w = np.where(ok, wot, 0)
        dec = ok & ~np.asarray(lay.forced)[w]
        counted[lead : lead + (b - a)] = dec
        y[lead : lead + (b - a)] = np.where(dec, np.asarray(ex.labels)[w], 0)
        o = out[li]
        o.ids.append(ids)
        o.y.append(y)
        o.counted.append(counted)
        if o.types is not None and rows.types is not None:
            o.types.append(rows.types[r])
    return out


def _batch_loss(
    model: torch.nn.Module,
    rows: Sequence[tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]],
    *,
    device: torch.device,
    pad: int,
    group: int,
    w0: float,
    w1: float,
) -> float:
    """Forward and backward over one batch's rows (``(ids, types, y, counted)``), longest
    first, ``group`` rows per forward, each padded to its longest; the gradient is that of the
    mean token loss over the batch. Returns that mean."""
    from tacorl_offline.compressor.rows import mask_arg

    n = sum(int(c.sum()) for _, _, _, c in rows)
    if n == 0:
        return math.nan
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    total = 0.0
    for k in range(0, len(order), group):
        idx = order[k : k + group]
        width = len(rows[idx[0]][0])
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        y = torch.zeros((len(idx), width))
        counted = torch.zeros((len(idx), width), dtype=torch.bool)
        typed = rows[idx[0]][1] is not None
        tt = torch.zeros((len(idx), width), dtype=torch.long) if typed else None
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for j, i in enumerate(idx):
            r_ids, r_types, r_y, r_c = rows[i]
            m = len(r_ids)
            ids[j, :m] = torch.from_numpy(r_ids)
            y[j, :m] = torch.from_numpy(r_y)
            counted[j, :m] = torch.from_numpy(r_c)
            mask[j, :m] = 1
            if tt is not None and r_types is not None:
                tt[j, :m] = torch.from_numpy(r_types)
        kw: dict[str, Any] = {"input_ids": ids.to(device)}
        if tt is not None:
            kw["token_type_ids"] = tt.to(device)
        if not bool(mask.all()):  # no padding in the group: no mask at all
            kw["attention_mask"] = mask_arg(model, mask.to(device))
        logits = model(**kw).logits
        p = torch.softmax(logits.float(), dim=-1)[..., 1].clamp(1e-6, 1 - 1e-6)
        y, counted = y.to(device), counted.to(device)
        tok = -(w1 * y * p.log() + w0 * (1 - y) * (1 - p).log())
        part = tok[counted].sum()
        (part / n).backward()
        total += float(part.detach())
    return total / n


def warmup_linear(total: int, warmup: float = 0.06) -> Callable[[int], float]:
    """The learning-rate factor at update ``u``: a linear warm-up over the first ``warmup``
    share of ``total`` updates, then a linear decay to 0."""

    def factor(u: int) -> float:
        if u >= total * warmup:
            return max(0.0, 1.0 - u / max(1, total))
        return (u + 1) / max(1, total * warmup)

    return factor


def _epoch_losses(
    comp: Any,
    rows: Sequence[SftRows],
    batches: Sequence[Sequence[int]],
    opt: torch.optim.Optimizer,
    step: Callable[[], None],
    *,
    w0: float,
    w1: float,
) -> list[float]:
    """One epoch: for each batch, the gradient of its mean token loss (``opt``'s gradients
    zeroed first), then ``step()`` (clip, optimizer, schedule). Returns the batches' losses;
    a batch with no counted token is skipped."""
    from tacorl_offline.compressor.rows import pad_id

    pad = pad_id(comp.tokenizer)
    group = max(1, int(comp.options.batch_size))
    losses = []
    for batch in batches:
        flat = [
            (r.ids[j], r.types[j] if r.types is not None else None, r.y[j], r.counted[j])
            for r in (rows[i] for i in batch)
            for j in range(len(r.ids))
        ]
        opt.zero_grad(set_to_none=True)
        loss = _batch_loss(comp.model, flat, device=comp.device, pad=pad, group=group, w0=w0, w1=w1)
        if math.isnan(loss):
            continue
        step()
        losses.append(loss)
    return losses


def train_sft(
    comp: Any,
    train: Sequence[SftExample],
    evals: Sequence[SftExample],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    on_epoch: Callable[[EpochLog], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> SftResult:
    """Class-balanced token cross-entropy on word labels; label F1 on ``evals`` per epoch.

    Built for the model's own speed: every example is tokenized into its model rows once;
    each epoch's batches are length-bucketed (:func:`bucketed_batches`, seeded by ``seed``),
    so a batch is padded little; the loss is computed on the padded batch at once; AdamW is
    the fused one the trainer uses. The caller picks the dropout
    (:func:`~tacorl_offline.compressor.dropout.set_dropout`) and the threads.
    """
    from tacorl_offline.trainer import build_optimizer

    if not train:
        raise UserError("no SFT training examples (every prompt was held out or unlabelled)")
    lays = comp.layouts([ex.text for ex in train], comp.options)
    weights = {id(ex): lay.weights for ex, lay in zip(train, lays, strict=True)}
    w0, w1 = class_weights(train, lambda ex: weights[id(ex)])
    rows = example_rows(comp, train, lays)
    lengths = [max(r.lengths, default=0) for r in rows]
    params = [p for p in comp.model.parameters() if p.requires_grad]
    opt = build_optimizer(params, lr=lr, weight_decay=weight_decay)
    total = epochs * math.ceil(len(train) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_linear(total))
    res = SftResult(n_train=len(train), n_eval=len(evals))
    res.keep_share = float(np.mean([ex.labels.mean() for ex in train if len(ex.labels)]))
    done = 0

    def step() -> None:
        nonlocal done
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        sched.step()
        done += 1
        if on_batch:
            on_batch(done, total)

    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        comp.model.train()
        batches = bucketed_batches(lengths, batch_size, seed, epoch)
        losses = _epoch_losses(comp, rows, batches, opt, step, w0=w0, w1=w1)
        scores = (
            evaluate_labels(comp, evals) if evals else LabelScores(math.nan, math.nan, math.nan)
        )
        log = EpochLog(
            epoch,
            float(np.mean(losses)) if losses else math.nan,
            scores.f1,
            scores.precision,
            scores.recall,
            time.perf_counter() - t0,
        )
        res.epochs.append(log)
        if on_epoch:
            on_epoch(log)
    comp.model.eval()
    return res


def evaluate_labels(comp: Any, examples: Sequence[SftExample], batch_size: int = 32) -> LabelScores:
    """Label F1 of ``p > 0.5`` per deciding word against the labels."""
    preds, golds = [], []
    was = comp.model.training
    comp.model.eval()
    try:
        with torch.inference_mode():
            for k in range(0, len(examples), batch_size):
                batch = examples[k : k + batch_size]
                lays, wps = comp.word_probs(
                    [ex.text for ex in batch], fields=[ex.fields for ex in batch]
                )
                for ex, lay, p in zip(batch, lays, wps, strict=True):
                    dec = ~lay.forced
                    preds.append((p.cpu().numpy() > 0.5)[dec])
                    golds.append(ex.labels[dec])
    finally:
        comp.model.train(was)
    return label_f1(preds, golds)


def new_run_id() -> str:
    return "sft-" + uuid.uuid4().hex[:12]


# ----------------------------------------------------------------------------- the phase (I/O)


@dataclass
class SftSummary:
    run_id: str
    source: str
    output: Path
    prompts: int
    result: SftResult
    seconds: float


def build_examples(
    comp: Any, items: Sequence[Any], source: str, rate: float, labels_path: str | None
) -> list[SftExample]:
    """Word labels for every item (``items`` carry ``text``, ``fields`` and, for the teacher
    source, ``reference``: the teacher's answer to the original)."""
    if source == "file" and not labels_path:
        raise UserError("sft.source 'file' needs sft.labels_path (or --labels FILE)")
    records = read_label_file(labels_path) if source == "file" and labels_path else []
    by_origin = {r["origin"]: r for r in records if r.get("origin")}
    lays = comp.layouts([it.text for it in items], comp.options)
    out = []
    for k, (it, lay) in enumerate(zip(items, lays, strict=True)):
        if source == "teacher":
            if not it.reference:
                continue  # the teacher failed on this prompt: nothing to align to
            labels = teacher_labels(it.text, it.reference, lay.spans, lay.weights, rate)
        elif source == "stopword":
            labels = stopword_labels(lay.words)
        else:
            rec = by_origin.get(it.text) or (
                records[k] if k < len(records) and not by_origin else None
            )
            if rec is None:
                continue
            labels = file_labels(it.text, rec, lay.spans)
        out.append(SftExample(it.prompt_id, it.text, dict(it.fields or {}), labels | lay.forced))
    return out


def sft_phase(
    cfg: Any,
    *,
    warehouse: Any,
    on_epoch: Callable[[EpochLog], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> SftSummary:
    """The ``sft`` command: the split's prompts from the warehouse, then :func:`run_sft`."""
    from tacorl_offline.items import load_items
    from tacorl_offline.runs import key_of

    tkey = key_of(cfg.teacher)
    with warehouse.connect() as con:
        items = load_items(con, cfg, tkey, require_answers=cfg.sft.source == "teacher")
    return run_sft(
        cfg,
        warehouse=warehouse,
        items=items,
        teacher_key=tkey,
        on_epoch=on_epoch,
        on_batch=on_batch,
    )


def _load_compressor(cfg: Any, warehouse: Any) -> Any:
    """The compressor SFT starts from (``compressor.model``, a run reference resolved)."""
    from tacorl_offline.compressor import CompressOptions, Compressor
    from tacorl_offline.model_ref import resolve_model_ref

    return Compressor.from_pretrained(
        resolve_model_ref(
            cfg.compressor.model, warehouse, hub_download=cfg.compressor.hub_download
        ),
        device=cfg.compressor.device,
        options=CompressOptions.from_config(cfg.compressor),
        condition_on=cfg.compressor.condition_on,
    )


def label_rows(
    comp: Any, examples: Sequence[SftExample], *, run_id: str, source: str, heldout: set[str]
) -> list[dict[str, Any]]:
    """The ``sft_labels`` rows of a run: each prompt's labels and the text they keep."""
    from tacorl_offline.compressor.text import rebuild

    lays = comp.layouts([ex.text for ex in examples], comp.options)
    return [
        {
            "run_id": run_id,
            "prompt_id": ex.prompt_id,
            "source": source,
            "heldout": ex.prompt_id in heldout,
            "n_words": len(ex.labels),
            "n_kept": int(ex.labels.sum()),
            "keep": [bool(x) for x in ex.labels],
            "kept_text": rebuild(ex.text, lay.spans, ex.labels),
        }
        for ex, lay in zip(examples, lays, strict=True)
    ]


def _train_and_save(
    cfg: Any,
    comp: Any,
    train: Sequence[SftExample],
    evals: Sequence[SftExample],
    out_dir: Path,
    on_epoch: Callable[[EpochLog], None] | None,
    on_batch: Callable[[int, int], None] | None,
) -> tuple[Path, SftResult]:
    """Train (the last epoch's checkpoint kept under ``checkpoints/``), then save ``final``."""
    from tacorl_offline.compressor.dropout import set_dropout
    from tacorl_offline.threads import intra_op_threads

    sc = cfg.sft

    def epoch_done(log: EpochLog) -> None:
        comp.save_pretrained(out_dir / "checkpoints" / f"epoch-{log.epoch}")
        old = out_dir / "checkpoints" / f"epoch-{log.epoch - 1}"
        if old.exists():
            import shutil

            shutil.rmtree(old)
        if on_epoch:
            on_epoch(log)

    set_dropout(comp.model, sc.dropout)
    with intra_op_threads(sc.threads):
        result = train_sft(
            comp,
            train,
            evals,
            epochs=sc.epochs,
            lr=sc.lr,
            batch_size=sc.batch_size,
            seed=sc.seed,
            on_epoch=epoch_done,
            on_batch=on_batch,
        )
    return comp.save_pretrained(out_dir / "final"), result


def run_sft(
    cfg: Any,
    *,
    warehouse: Any,
    items: Sequence[Any],
    teacher_key: str,
    on_epoch: Callable[[EpochLog], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> SftSummary:
    """Label, store the labels, train, save. ``items`` come from the warehouse (see items.py)."""
    from tacorl_offline.warehouse import Warehouse, insert_rows

    sc = cfg.sft
    t0 = time.perf_counter()
    torch.manual_seed(sc.seed)
    comp = _load_compressor(cfg, warehouse)
    examples = build_examples(comp, items, sc.source, cfg.compressor.rate, sc.labels_path)
    freeze_lower_layers(comp.model, sc.freeze_layers)
    if not examples:
        raise UserError(
            f"no prompt could be labelled from source '{sc.source}'; check the teacher answers or the label file"
        )
    run_id = new_run_id()
    evals = [ex for ex in examples if held_out(ex.prompt_id, sc.eval_share)]
    train = [ex for ex in examples if not held_out(ex.prompt_id, sc.eval_share)]
    heldout = {ex.prompt_id for ex in evals}
    rows = label_rows(comp, examples, run_id=run_id, source=sc.source, heldout=heldout)
    with warehouse.transaction() as con:
        Warehouse.start_run(
            con,
            {
                "run_id": run_id,
                "kind": "sft",
                "dataset": cfg.data.dataset,
                "split": cfg.data.split,
                "teacher_key": teacher_key,
                "config": cfg.model_dump(mode="json"),
            },
        )
        insert_rows(con, "sft_labels", rows)
    status, message = "failed", None
    try:
        out_dir = Path(sc.output_dir) / run_id
        final, result = _train_and_save(cfg, comp, train, evals, out_dir, on_epoch, on_batch)
        last = result.epochs[-1] if result.epochs else None
        status = "finished"
        message = last.label_text if last else None
    except BaseException as e:
        status, message = exit_status(e)
        raise
    finally:
        finish_run_surely(warehouse, run_id, status, message)
    return SftSummary(run_id, sc.source, final, len(examples), result, time.perf_counter() - t0)
