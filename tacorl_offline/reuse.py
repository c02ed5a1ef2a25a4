"""The replay store: scored samples of the run's prompts, read from the warehouse once.

Every sampled mask is stored with its deciding words' actions and behaviour log-probs
(``samples.actions``, ``samples.behaviour_logp``) and its reward. A training run with
``train.reuse.stored_per_prompt > 0`` loads, once at its start, the stored samples of its
prompts that it may learn from again:

- its own, from steps it has completed (a resumed run reloads exactly the steps before its
  checkpoint, so a killed-and-resumed run sees what an uninterrupted one saw);
- those of *finished* runs (other seeds, earlier sweeps, ``train --rescore`` runs) that ended
  before this run began and share its :func:`signature`: the same teacher, reward settings,
  rate and sampler, so their stored rewards are the rewards this run would have paid for.

New samples of this run are added in memory as each step is recorded, so a step reads no
extra table. Which stored samples join a group is decided by the trainer against today's
policy (:mod:`tacorl_offline.offpolicy`); this module only keeps them.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import torch

from tacorl_offline.config import Config


@dataclass(frozen=True)
class StoredSample:
    run_id: str
    step: int
    sample_idx: int
    prompt_id: str
    mask_hash: str
    actions: np.ndarray  # bool, one per deciding word
    behaviour: torch.Tensor  # float32 per-word log-probs under the policy that drew it
    reward: float


def signature(cfg: Config, teacher_key: str) -> str:
    """What makes a stored reward valid for this run: the teacher (its key covers the model,
    prompts and decoding), the reward settings and rate, the sampler, the length gate's
    token counter and the reference field."""
    d = {
        "teacher_key": teacher_key,
        "reward": cfg.train.reward.model_dump(mode="json"),
        "rate": cfg.reward_rate,
        "sampler": cfg.train.sampler,
        "tolerance_tokens": cfg.train.tolerance_tokens,
        "token_counter": cfg.train.token_counter,
        "reference_field": cfg.data.reference_field,
    }
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


class ReplayStore:
    """Stored samples by prompt, in a fixed order (run, step, sample index)."""

    def __init__(self) -> None:
        self._by_prompt: dict[str, list[StoredSample]] = defaultdict(list)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_prompt.values())

    def add(self, s: StoredSample) -> None:
        self._by_prompt[s.prompt_id].append(s)

    def of(
        self, prompt_id: str, *, run_id: str, step: int, max_age: int | None
    ) -> list[StoredSample]:
        """The prompt's stored samples usable at ``step`` of run ``run_id``: its own earlier
        steps (no older than ``max_age`` steps when set) and every other run's."""
        out = []
        for s in self._by_prompt.get(prompt_id, ()):
            if s.run_id == run_id and (s.step >= step or (max_age and step - s.step > max_age)):
                continue
            out.append(s)
        return out


def _runs_like(
    con: duckdb.DuckDBPyConnection, cfg: Config, teacher_key: str, run_id: str
) -> list[str]:
    """Finished runs that ended before this run began, with this run's signature."""
    mine = con.execute("SELECT started_at FROM runs WHERE run_id = ?", [run_id]).fetchall()
    since = mine[0][0] if mine else None
    rows = con.execute(
        "SELECT run_id, config FROM runs WHERE kind IN ('train', 'rescore') AND status = 'finished'"
        " AND run_id <> ? AND teacher_key = ? AND finished_at < coalesce(?, current_timestamp)"
        " ORDER BY run_id",
        [run_id, teacher_key, since],
    ).fetchall()
    want = signature(cfg, teacher_key)
    out = []
    for rid, raw in rows:
        try:
            other = Config.model_validate(json.loads(raw))
        except Exception:  # a run stored by an older version: not reused
            continue
        if signature(other, teacher_key) == want:
            out.append(rid)
    return out


def load(
    con: duckdb.DuckDBPyConnection,
    cfg: Config,
    *,
    teacher_key: str,
    run_id: str,
    upto_step: int,
    prompt_ids: Sequence[str],
    other_runs: bool = True,
) -> ReplayStore:
    """The store for a run starting (or resuming) after ``upto_step`` completed steps."""
    store = ReplayStore()
    runs = _runs_like(con, cfg, teacher_key, run_id) if other_runs else []
    if not prompt_ids:
        return store
    rows = con.execute(
        "SELECT run_id, step, sample_idx, prompt_id, mask_hash, actions, behaviour_logp, reward"
        " FROM samples WHERE prompt_id IN (SELECT unnest(?::VARCHAR[]))"
        " AND actions IS NOT NULL AND behaviour_logp IS NOT NULL AND reward IS NOT NULL"
        " AND sample_idx >= 0"
        " AND ((run_id = ? AND step <= ?) OR run_id IN (SELECT unnest(?::VARCHAR[])))"
        " ORDER BY run_id, step, prompt_id, sample_idx",
        [list(prompt_ids), run_id, upto_step, runs],
    ).fetchall()
    for rid, step, idx, pid, mh, acts, blp, reward in rows:
        store.add(stored(rid, step, idx, pid, mh, acts, blp, reward))
    return store


def stored(
    run_id: str,
    step: int,
    sample_idx: int,
    prompt_id: str,
    mask_hash: str,
    actions: Any,
    behaviour: Any,
    reward: float,
) -> StoredSample:
    """A StoredSample, with the behaviour log-probs as float32 (what the warehouse holds), so a
    sample added in memory and the same sample reloaded on resume are bit-identical."""
    return StoredSample(
        run_id=run_id,
        step=int(step),
        sample_idx=int(sample_idx),
        prompt_id=prompt_id,
        mask_hash=mask_hash,
        actions=np.asarray(actions, dtype=bool),
        behaviour=torch.as_tensor(np.asarray(behaviour, dtype=np.float32)),
        reward=float(reward),
    )


def as_row_lists(actions: np.ndarray, behaviour: torch.Tensor) -> tuple[list[bool], list[float]]:
    """The list-column values of a sample (float32 values, as Python floats)."""
    b = behaviour.detach().to("cpu", torch.float32).numpy()
    return [bool(x) for x in actions], [float(x) for x in b]
