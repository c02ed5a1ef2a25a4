"""Pairwise LLM judge (PCRL-style): is the answer from the compressed prompt as good?

Design decisions:

- The teacher is shown the task (its own user message for the *original* prompt, so it sees
  the question and the full context), answer A and answer B, and says ``A``, ``B`` or
  ``tie``. Each pair is judged in **both orders** (original first, then compressed first)
  to cancel position bias.
- Score per prompt, for the compressed system: a win counts 1, a tie 0.5, a loss 0,
  averaged over the two orders (a verdict that cannot be parsed is left out; both
  unparsable: NaN). 0.5 means "as good as the original"; the reported metric is ``win``.
- Two identical answers (after whitespace normalisation) are a tie without a call: there is
  nothing to judge, and nothing is paid.
- Judgements go through the same :class:`~tacorl_offline.calls.Caller` as every teacher
  answer: each is journaled before use, stored in ``responses`` with ``kind='judge'`` under
  its own request hash (teacher key + the judge messages), and ledgered in ``api_calls``;
  a rerun replays them at $0 with the saving recorded. They never enter the mask index.
- The extractive stand-in cannot judge (it copies sentences); ``--judge`` needs an LLM
  teacher (openai, azure or hf).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from tacorl_offline.calls import Caller, Job
from tacorl_offline.errors import UserError
from tacorl_offline.hashing import request_hash
from tacorl_offline.runs import Spend
from tacorl_offline.teachers.base import TeacherRequest
from tacorl_offline.warehouse import Warehouse

JUDGE_SYSTEM = (
    "You are a strict, impartial judge. You compare two answers to the same task and say "
    "which one is better, or that they are equally good."
)
JUDGE_TEMPLATE = (
    "[Task]\n{task}\n\n[Answer A]\n{a}\n\n[Answer B]\n{b}\n\n"
    "Which answer is better for the task? Reply with exactly one word: A, B or tie."
)
# Upper-case A/B only (the article "a" is no verdict); "tie" in any case.
_VERDICT = re.compile(r"\b(A|B|(?i:tie))\b")


def judge_messages(task: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {"role": "user", "content": JUDGE_TEMPLATE.format(task=task, a=answer_a, b=answer_b)},
    ]


def parse_verdict(text: str | None) -> str | None:
    """'A', 'B' or 'tie' from the judge's reply, else None.

    A reply that is just the verdict (any case, punctuation around it ignored) is read as
    is; otherwise the first upper-case ``A``/``B`` or ``tie`` word is taken.
    """
    if not text:
        return None
    bare = text.strip().strip(".!*\"'`()[] ").lower()
    if bare in ("a", "b", "tie"):
        return "tie" if bare == "tie" else bare.upper()
    m = _VERDICT.search(text)
    if m is None:
        return None
    w = m.group(1)
    return "tie" if w.lower() == "tie" else w


def pair_score(original_first: str | None, compressed_first: str | None) -> float:
    """The compressed answer's score over both orders: win 1, tie 0.5, loss 0; NaN if none."""
    points = []
    if original_first is not None:  # A = original, B = compressed
        points.append({"B": 1.0, "tie": 0.5, "A": 0.0}[original_first])
    if compressed_first is not None:  # A = compressed, B = original
        points.append({"A": 1.0, "tie": 0.5, "B": 0.0}[compressed_first])
    return sum(points) / len(points) if points else math.nan


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def check_judge_backend(backend: str) -> None:
    if backend == "extractive":
        raise UserError(
            "--judge needs an LLM teacher; the extractive stand-in copies sentences and cannot "
            "judge. Set teacher.backend to openai, azure or hf, or drop --judge"
        )


@dataclass
class JudgePair:
    prompt_id: str
    task: str  # what the judge is told the task is
    original: str  # teacher's answer to the original prompt
    compressed: str  # teacher's answer to the compressed prompt
    # Filled in by judge_pairs():
    verdicts: tuple[str | None, str | None] = (None, None)
    score: float = math.nan
    skipped: bool = False  # identical answers: a tie without a call


@dataclass
class JudgeStats:
    spend: Spend = field(default_factory=Spend)
    skipped: int = 0  # identical answers: ties without a call
    unparsed: int = 0  # verdicts that could not be read (left out of the score)
    hits: list[tuple[str, float]] = field(default_factory=list)  # (request hash, its cost)


async def judge_pairs(
    pairs: Sequence[JudgePair],
    *,
    warehouse: Warehouse,
    caller: Caller,
    teacher_key: str,
    concurrency: int,
) -> JudgeStats:
    """Judge every pair in both orders, replaying stored judgements and paying for the rest.

    The hits are returned as (request hash, original cost) in ``JudgeStats.hits`` for the
    caller to record with the run's other rows.
    """
    st = JudgeStats()
    wanted: list[tuple[int, int, str, list[dict[str, str]]]] = []  # (pair, order, hash, msgs)
    for i, p in enumerate(pairs):
        if _same(p.original, p.compressed):
            p.verdicts, p.score, p.skipped = ("tie", "tie"), 0.5, True
            st.skipped += 1
            continue
        for order, (a, b) in enumerate(((p.original, p.compressed), (p.compressed, p.original))):
            msgs = judge_messages(p.task, a, b)
            wanted.append((i, order, request_hash(teacher_key, msgs), msgs))
    with warehouse.connect() as con:  # a write open replays a crashed run's journal first
        stored = Warehouse.lookup_responses(con, [h for _, _, h, _ in wanted])
    jobs: dict[str, Job] = {}
    hits: list[tuple[str, float]] = []
    seen_hits: set[str] = set()
    for i, _order, h, msgs in wanted:
        if h in stored:
            if h not in seen_hits:
                seen_hits.add(h)
                hits.append((h, stored[h]["cost_usd"] or 0.0))
        elif h not in jobs:
            jobs[h] = Job(TeacherRequest(h, msgs), "judge", pairs[i].prompt_id, None)
    cost_before = caller.stats.cost_usd
    results = await caller.run(list(jobs.values()), concurrency=concurrency) if jobs else {}
    st.spend = Spend(
        calls=len(results),
        hits=len(hits),
        cost_usd=caller.stats.cost_usd - cost_before,
        saved_usd=sum(c for _, c in hits),
    )
    st.hits = hits
    replies: dict[tuple[int, int], str | None] = {}
    for i, order, h, _ in wanted:
        if h in stored:
            replies[(i, order)] = stored[h]["answer"] if stored[h]["ok"] else None
        elif h in results:
            replies[(i, order)] = results[h].answer if results[h].ok else None
        else:
            replies[(i, order)] = None  # not started: the budget ran out
    for i, p in enumerate(pairs):
        if p.skipped:
            continue
        v = (parse_verdict(replies.get((i, 0))), parse_verdict(replies.get((i, 1))))
        st.unparsed += sum(1 for x in v if x is None)
        p.verdicts = v
        p.score = pair_score(*v)
    return st
