"""Local transformers causal-LM teacher: greedy, batched, fully offline.

Design decisions:
- Concurrent ``answer`` calls are gathered by a small async micro-batcher: the first call
  starts a worker that waits ``gather_s`` (a few ms) for more callers, then runs one
  ``generate`` of up to ``hf_batch_size`` prompts in a thread (``asyncio.to_thread``) so the
  event loop stays free. Batches run one at a time (one model, one device).
- Greedy decoding (``do_sample=False``) with left padding; ``max_new_tokens`` is
  ``teacher.max_tokens``. The prompt is the tokenizer's chat template when it has one (with
  the generation prompt), else ``system + "\\n\\n" + user`` plain text.
- Token counts come from the tokenizer (``usage_source="tokenizer"``): non-padding prompt
  tokens in, generated tokens up to and including the first EOS out.
- ``teacher.model`` is a local directory (tested) or a hub id (accepted, needs network).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from tacorl_offline.errors import UserError
from tacorl_offline.teachers.base import Attempt, TeacherRequest, TeacherResult


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not name.startswith((".", "~"))


class HFTeacher:
    """Greedy batched generation with a local ``AutoModelForCausalLM``."""

    backend = "hf"

    def __init__(self, cfg: Any, *, gather_s: float = 0.005) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._cfg = cfg
        self.model: str = cfg.model
        self.batch_size: int = cfg.hf_batch_size
        self.gather_s = gather_s
        path = os.path.expanduser(cfg.model)
        if not os.path.isdir(path) and not _looks_like_hub_id(cfg.model):
            raise UserError(
                f"teacher.model '{cfg.model}': not a local model directory; for backend hf point it "
                "at a directory saved with save_pretrained"
            )
        src = path if os.path.isdir(path) else cfg.model
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(src)
            self.lm = AutoModelForCausalLM.from_pretrained(src)
        except OSError as e:
            raise UserError(
                f"teacher.model '{cfg.model}': cannot load a causal LM ({str(e).splitlines()[0]})"
            ) from None
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token is None:
                raise UserError(
                    f"teacher.model '{cfg.model}': tokenizer has neither a pad nor an eos token"
                )
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lm.to(cfg.hf_device)
        self.lm.eval()
        self._pending: list[tuple[TeacherRequest, asyncio.Future[TeacherResult]]] = []
        self._worker: asyncio.Task[None] | None = None
        self.batches_run = 0  # observable: how many generate() calls served the answers
        self.batch_sizes: list[int] = []

    def __repr__(self) -> str:
        return f"HFTeacher(model={self.model!r}, batch_size={self.batch_size})"

    def key_settings(self) -> dict[str, Any]:
        return self._cfg.key_settings()

    # ------------------------------------------------------------------ prompt
    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            out = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            return out if isinstance(out, str) else str(out)
        system = "\n\n".join(m["content"] for m in messages if m.get("role") == "system")
        user = "\n\n".join(m["content"] for m in messages if m.get("role") != "system")
        return f"{system}\n\n{user}" if system else user

    # --------------------------------------------------------------- generation
    def generate_batch(self, requests: list[TeacherRequest]) -> list[TeacherResult]:
        """Synchronous: one greedy ``generate`` over ``requests`` (len <= batch size)."""
        import torch

        t0 = time.perf_counter()
        tok = self.tokenizer
        prompts = [self.prompt_text(r.messages) for r in requests]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(self.lm.device) for k, v in enc.items()}
        eos = tok.eos_token_id
        with torch.inference_mode():
            out = self.lm.generate(
                **enc,
                do_sample=False,
                max_new_tokens=self._cfg.max_tokens,
                pad_token_id=tok.pad_token_id,
                eos_token_id=eos,
            )
        latency = time.perf_counter() - t0
        width = enc["input_ids"].shape[1]
        in_counts = enc["attention_mask"].sum(dim=1).tolist()
        results: list[TeacherResult] = []
        for i, req in enumerate(requests):
            gen = out[i, width:].tolist()
            n = len(gen)
            finish = "length"
            if eos is not None and eos in gen:
                n = gen.index(eos) + 1
                finish = "stop"
            text = tok.decode(gen[:n], skip_special_tokens=True).strip()
            common: dict[str, Any] = {
                "request_hash": req.request_hash,
                "input_tokens": int(in_counts[i]),
                "output_tokens": n,
                "finish_reason": finish,
                "latency_s": latency,
                "model": self.model,
                "usage_source": "tokenizer",
            }
            if not text:
                results.append(
                    TeacherResult(
                        ok=False,
                        answer=None,
                        error="local model generated no text",
                        error_kind="empty",
                        permanent=True,
                        attempts=[Attempt("empty", latency, "no text")],
                        **common,
                    )
                )
            else:
                results.append(
                    TeacherResult(ok=True, answer=text, attempts=[Attempt("ok", latency)], **common)
                )
        self.batches_run += 1
        self.batch_sizes.append(len(requests))
        return results

    async def _run(self) -> None:
        while self._pending:
            if len(self._pending) < self.batch_size:
                await asyncio.sleep(self.gather_s)  # let concurrent callers join this batch
            batch, self._pending = (
                self._pending[: self.batch_size],
                self._pending[self.batch_size :],
            )
            reqs = [r for r, _ in batch]
            try:
                results = await asyncio.to_thread(self.generate_batch, reqs)
            except Exception as e:  # a model error fails this batch, not the caller's loop
                msg = " ".join(f"{type(e).__name__}: {e}".split())[:300]
                results = [
                    TeacherResult(
                        request_hash=r.request_hash,
                        ok=False,
                        answer=None,
                        error=f"local generation failed: {msg}",
                        error_kind="local",
                        model=self.model,
                        usage_source="tokenizer",
                    )
                    for r in reqs
                ]
            for (_, fut), res in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(res)

    async def answer(self, request: TeacherRequest) -> TeacherResult:
        fut: asyncio.Future[TeacherResult] = asyncio.get_running_loop().create_future()
        self._pending.append((request, fut))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run())
        t0 = time.perf_counter()
        result = await fut
        result.latency_s = max(result.latency_s, time.perf_counter() - t0)
        return result

    async def aclose(self) -> None:
        if self._worker is not None and not self._worker.done():
            await self._worker
        self._worker = None
