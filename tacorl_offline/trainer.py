"""Phase two: REINFORCE on the compressor, replaying cached teacher answers.

One step reads top to bottom (:meth:`Trainer.step`):

1. sample G word keep-masks per prompt (one forward pass, with gradient);
2. decide the length-only rewards (over-compressed, outside the tolerance band) with no call;
3. look the rest up by mask hash, then by request hash: a hit replays the stored answer;
4. send the misses (deduplicated within the step) concurrently; each answer is journaled
   before it is scored (:mod:`tacorl_offline.calls`);
5. rewards -> advantages (baseline) -> loss -> optimizer step;
6. log the step and its samples to the warehouse.

Determinism is what makes ``--resume`` exact: the data order is a seeded permutation per
epoch, mask sampling uses its own ``torch.Generator``, and every checkpoint stores the
optimizer, scheduler, both RNG states, the moving-average baseline and the position in the
data. Against a warm warehouse a killed-and-resumed run ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tacorl_offline.advantages import compute_advantages, policy_loss, validate_baseline
from tacorl_offline.calls import Budget, Caller, hit_ledger_rows
from tacorl_offline.config import Config
from tacorl_offline.distributed import Dist
from tacorl_offline.errors import UserError
from tacorl_offline.hashing import teacher_key
from tacorl_offline.items import Item, load_items
from tacorl_offline.pricing import prices_from_config
from tacorl_offline.replay import ReplayStats, Wanted, resolve
from tacorl_offline.rewards import RewardSettings, needs_teacher, score
from tacorl_offline.teachers import build_teacher, render_messages
from tacorl_offline.tokens import make_token_counter
from tacorl_offline.warehouse import Warehouse, insert_rows

STATE_FILE = "trainer_state.pt"
CONFIG_FILE = "config.json"


@dataclass
class Position:
    step: int = 0  # steps completed
    epoch: int = 0
    index: int = 0  # next index into this epoch's permutation
    ema: float | None = None  # moving-average baseline


@dataclass
class StepLog:
    step: int
    epoch: int
    loss: float
    reward_mean: float
    reward_std: float
    reward_min: float
    reward_max: float
    compression: float
    entropy: float
    lr: float
    n_samples: int
    n_unscorable: int
    calls: int
    hits: int
    short_circuits: int
    cost_usd: float
    saved_usd: float
    seconds: float
    teacher_seconds: float


@dataclass
class TrainSummary:
    run_id: str
    run_dir: Path
    steps: int = 0
    calls: int = 0
    hits: int = 0
    short_circuits: int = 0
    unscorable: int = 0
    cost_usd: float = 0.0
    saved_usd: float = 0.0
    seconds: float = 0.0
    final_model: Path | None = None
    budget_stopped: bool = False
    resumed_from: int | None = None
    world_size: int = 1
    last: StepLog | None = None
    rewards: list[float] = field(default_factory=list)


# ----------------------------------------------------------------------------- helpers


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def find_checkpoint(output_dir: Path, run: str, warehouse: Warehouse) -> Path:
    if run == "latest":
        with warehouse.connect(read_only=True) as con:
            found = con.execute(
                "SELECT run_id FROM runs WHERE kind = 'train' ORDER BY started_at DESC LIMIT 1"
            ).fetchall()
        if not found:
            raise UserError(
                "--resume latest: no training run in the warehouse; start one without --resume"
            )
        run = found[0][0]
    pointer = output_dir / run / "checkpoints" / "latest"
    if not pointer.exists():
        raise UserError(
            f"--resume {run}: no checkpoint under {output_dir / run / 'checkpoints'}; check train.output_dir or the run id"
        )
    return output_dir / run / "checkpoints" / pointer.read_text().strip()


# ----------------------------------------------------------------------------- trainer


class Trainer:
    def __init__(
        self,
        cfg: Config,
        *,
        warehouse: Warehouse,
        resume: str | None = None,
        budget: Budget | None = None,
        dist: Dist | None = None,
        on_step: Callable[[StepLog, TrainSummary], None] | None = None,
    ) -> None:
        from tacorl_offline.compressor import Compressor

        self.dist = dist or Dist()
        self.warehouse = warehouse
        self.on_step = on_step
        ckpt: Path | None = None
        if resume:
            ckpt = find_checkpoint(Path(cfg.train.output_dir), resume, warehouse)
            saved = json.loads((ckpt / CONFIG_FILE).read_text(encoding="utf-8"))
            # The run continues with its own resolved config; only budget/output location may change.
            saved["budget"] = cfg.budget.model_dump()
            saved["warehouse"] = cfg.warehouse
            cfg = Config.model_validate(saved)
        self.cfg = cfg
        tc = cfg.train
        try:
            validate_baseline(tc.baseline, tc.samples_per_prompt, tc.moving_average_beta)
            self.settings = RewardSettings.from_config(tc)
        except ValueError as e:
            raise UserError(f"config: {e}") from None
        self.tkey = teacher_key(cfg.teacher.key_settings())
        self.prices = prices_from_config(cfg)
        self.budget = budget or Budget(cfg.budget.max_cost_usd, cfg.budget.max_calls)

        cc = cfg.compressor
        options = cc.options()
        device = cc.device
        if self.dist.enabled and device.startswith("cuda"):
            device = f"cuda:{self.dist.local_rank}"
        self.device = device
        torch.manual_seed(tc.seed)  # the fresh head of a base encoder is seeded too
        self.comp = Compressor.from_pretrained(
            str(ckpt / "model") if ckpt else cc.model, device=device, options=options
        )
        self.model = self.comp.model
        self.policy: torch.nn.Module = self.model
        if self.dist.enabled:
            self.policy = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.dist.local_rank] if device.startswith("cuda") else None
            )
        self.count = make_token_counter(tc.token_counter, self.comp.tokenizer)

        items: list[Item] | UserError | None = None
        if self.dist.is_main:  # rank 0 owns the warehouse; the others get the items from it
            try:
                with warehouse.connect() as con:
                    items = load_items(con, cfg, self.tkey)
            except UserError as e:
                items = e
        items = self.dist.broadcast(items)
        if isinstance(items, UserError):
            raise items
        assert items is not None
        self.items = items
        b = tc.batch_size
        self.steps_per_epoch = math.ceil(len(self.items) / b)
        self.total_steps = tc.max_steps or tc.epochs * self.steps_per_epoch
        total_updates = max(1, math.ceil(self.total_steps / tc.grad_accum))

        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay
        )
        warm = tc.warmup_steps

        def lr_lambda(update: int) -> float:
            if warm and update < warm:
                return (update + 1) / warm
            progress = (update - warm) / max(1, total_updates - warm)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda)
        self.gen = torch.Generator(device="cpu").manual_seed(tc.seed * 7919 + self.dist.rank)
        self.pos = Position()

        if ckpt:
            self.run_id = json.loads((ckpt / "run.json").read_text())["run_id"]
            # weights_only=True: a checkpoint is data, never code.
            state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            self.gen.set_state(state["sampler_rng"][self.dist.rank])
            p = state["position"]
            self.pos = Position(int(p["step"]), int(p["epoch"]), int(p["index"]), p.get("ema"))
            self.pos.ema = (
                None if self.pos.ema is None or math.isnan(self.pos.ema) else float(self.pos.ema)
            )
            self.resumed_from: int | None = self.pos.step
        else:
            self.run_id = "train-" + uuid.uuid4().hex[:12]
            self.resumed_from = None
        if self.dist.enabled:
            self.run_id = self.dist.broadcast(self.run_id)
        self.run_dir = Path(tc.output_dir) / self.run_id
        self.teacher = build_teacher(cfg.teacher) if self.dist.is_main else None

    # ------------------------------------------------------------------ data

    def _next_batch(self) -> tuple[int, list[int]]:
        """(epoch, indices into self.items) for the next step; advances the position."""
        b = self.cfg.train.batch_size
        if self.pos.index >= len(self.items):
            self.pos.epoch += 1
            self.pos.index = 0
        order = epoch_order(len(self.items), self.cfg.train.seed, self.pos.epoch)
        idx = order[self.pos.index : self.pos.index + b]
        self.pos.index += b
        return self.pos.epoch, idx

    # ------------------------------------------------------------------ teacher side (rank 0)

    # ------------------------------------------------------------------ one step

    async def step(self, caller: Caller | None) -> StepLog:
        t_start = time.perf_counter()
        tc = self.cfg.train
        epoch, idx = self._next_batch()
        # This rank's shard of the batch (the whole batch when not distributed).
        mine = idx[self.dist.rank :: self.dist.world_size]
        self.policy.train()
        texts = [self.items[i].text for i in mine]
        samples = (
            self.comp.sample(
                texts, num_samples=tc.samples_per_prompt, generator=self.gen, model=self.policy
            )
            if mine
            else []
        )
        # SCST: the greedy mask of the same prompts is the baseline (no gradient).
        greedy = (
            self.comp.greedy(texts, model=self.policy) if tc.baseline == "scst" and mine else []
        )
        records: list[dict[str, Any]] = []
        flat: list[Any] = []  # this rank's Sample objects, aligned with its records
        for k, i in enumerate(mine):
            item = self.items[i]
            n_orig = self.count(item.text)
            groups = [(j, s) for j, s in enumerate(samples[k])] + (
                [(-1, greedy[k])] if greedy else []
            )
            for j, s in groups:
                records.append(
                    {
                        "item": i,
                        "prompt_id": item.prompt_id,
                        "sample_idx": j,
                        "mask_hash": s.mask_hash,
                        "text": s.text,
                        "n_orig": n_orig,
                        "n_comp": self.count(s.text),
                        "n_words": s.n_words,
                        "n_kept": s.n_kept,
                        "entropy": float(s.entropy.detach()) / max(1, s.n_actions),
                    }
                )
                flat.append(s)
        all_records = [r for part in self.dist.gather(records) for r in part]

        # ---- rewards on rank 0 ------------------------------------------------
        if self.dist.is_main:
            _, need = needs_teacher(
                self.settings,
                [r["n_orig"] for r in all_records],
                [r["n_comp"] for r in all_records],
            )
            for r, n in zip(all_records, need, strict=True):
                r["needs_teacher"] = n
                r["cache_hit"] = False
                r["answer"] = None
            need_recs = [r for r in all_records if r["needs_teacher"]]
            wanted = [
                Wanted(r["prompt_id"], r["mask_hash"], r["text"], self.items[r["item"]].fields)
                for r in need_recs
            ]
            stats = ReplayStats()
            if caller is not None and wanted:
                stats = await resolve(
                    wanted,
                    warehouse=self.warehouse,
                    caller=caller,
                    teacher_key=self.tkey,
                    render=lambda text, fields: render_messages(self.cfg.teacher, text, fields),
                    concurrency=self.cfg.teacher.concurrency,
                )
            for r, w in zip(need_recs, wanted, strict=True):
                r["request_hash"], r["answer"], r["cache_hit"] = (
                    w.request_hash,
                    w.answer,
                    w.cache_hit,
                )
            batch = score(
                self.settings,
                [r["n_orig"] for r in all_records],
                [r["n_comp"] for r in all_records],
                [r["answer"] for r in all_records],
                [self.items[r["item"]].reference for r in all_records],
                [self.items[r["item"]].gold for r in all_records],
            )
            for r, rew, m, sc in zip(
                all_records, batch.rewards, batch.metrics, batch.short_circuited, strict=True
            ):
                r["reward"], r["metrics"], r["short_circuit"] = rew, m, sc
            # Advantages over the global batch, shaped [prompts, G] in batch order.
            g = tc.samples_per_prompt
            pos_of = {i: n for n, i in enumerate(idx)}
            rewards = torch.full((len(idx), g), float("nan"), dtype=torch.float64)
            greedy_r = torch.full((len(idx),), float("nan"), dtype=torch.float64)
            for r in all_records:
                if r["sample_idx"] >= 0:
                    rewards[pos_of[r["item"]], r["sample_idx"]] = r["reward"]
                else:
                    greedy_r[pos_of[r["item"]]] = r["reward"]
            adv = compute_advantages(
                rewards,
                tc.baseline,
                greedy_rewards=greedy_r if tc.baseline == "scst" else None,
                ema=self.pos.ema,
                beta=tc.moving_average_beta,
            )
            self.pos.ema = adv.ema
            adv_map = {
                (r["item"], r["sample_idx"]): (
                    float(adv.values[pos_of[r["item"]], r["sample_idx"]]),
                    bool(adv.valid[pos_of[r["item"]], r["sample_idx"]]),
                )
                for r in all_records
                if r["sample_idx"] >= 0
            }
            n_valid_global = int(adv.valid.sum())
            payload = (adv_map, n_valid_global, self.pos.ema)
        else:
            payload = None
        adv_map, n_valid_global, ema = self.dist.broadcast(payload)
        self.pos.ema = ema

        # ---- loss and update (every rank) -------------------------------------
        train_pairs = [(r, s) for r, s in zip(records, flat, strict=True) if r["sample_idx"] >= 0]
        if train_pairs:
            lp = torch.stack([s.log_prob for _, s in train_pairs])
            ent = torch.stack([s.entropy / max(1, s.n_actions) for _, s in train_pairs])
            n_act = torch.tensor([s.n_actions for _, s in train_pairs])
            a = torch.tensor(
                [adv_map[(r["item"], r["sample_idx"])][0] for r, _ in train_pairs], dtype=lp.dtype
            )
            valid = torch.tensor([adv_map[(r["item"], r["sample_idx"])][1] for r, _ in train_pairs])
            loss, _ = policy_loss(lp, a, ent, n_act, tc.entropy_coeff, valid)
            if self.dist.enabled:
                # DDP averages gradients over ranks; rescale so the result is the global mean.
                n_local = int(valid.sum())
                loss = loss * (n_local * self.dist.world_size / max(1, n_valid_global))
        else:
            loss = sum(p.sum() * 0.0 for p in self.model.parameters())
        (loss / tc.grad_accum).backward()
        self.pos.step += 1
        if self.pos.step % tc.grad_accum == 0 or self.pos.step == self.total_steps:
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
        lr = self.sched.get_last_lr()[0]
        loss_value = float(self.dist.broadcast(float(loss.detach())))

        # ---- log (rank 0) ------------------------------------------------------
        if not self.dist.is_main:
            return StepLog(
                self.pos.step, epoch, loss_value, 0, 0, 0, 0, 0, 0, lr, 0, 0, 0, 0, 0, 0, 0, 0, 0
            )
        train_recs = [r for r in all_records if r["sample_idx"] >= 0]
        finite = [r["reward"] for r in train_recs if not math.isnan(r["reward"])]
        mean = sum(finite) / len(finite) if finite else float("nan")
        std = (
            math.sqrt(sum((x - mean) ** 2 for x in finite) / len(finite))
            if finite
            else float("nan")
        )
        comp = [r["n_comp"] / r["n_orig"] for r in train_recs if r["n_orig"] > 0]
        log = StepLog(
            step=self.pos.step,
            epoch=epoch,
            loss=loss_value,
            reward_mean=mean,
            reward_std=std,
            reward_min=min(finite) if finite else float("nan"),
            reward_max=max(finite) if finite else float("nan"),
            compression=sum(comp) / len(comp) if comp else float("nan"),
            entropy=sum(r["entropy"] for r in train_recs) / max(1, len(train_recs)),
            lr=lr,
            n_samples=len(train_recs),
            n_unscorable=sum(1 for r in all_records if math.isnan(r["reward"])),
            calls=stats.calls,
            hits=stats.hits,
            short_circuits=sum(1 for r in all_records if r["short_circuit"]),
            cost_usd=stats.cost_usd,
            saved_usd=stats.saved_usd,
            seconds=time.perf_counter() - t_start,
            teacher_seconds=stats.teacher_seconds,
        )
        self._write_step(log, all_records, stats, caller)
        return log

    def _write_step(
        self,
        log: StepLog,
        records: list[dict[str, Any]],
        stats: ReplayStats,
        caller: Caller | None,
    ) -> None:
        def nan_none(x: float) -> float | None:
            return None if isinstance(x, float) and math.isnan(x) else x

        sample_rows = [
            {
                "run_id": self.run_id,
                "step": log.step,
                "prompt_id": r["prompt_id"],
                "sample_idx": r["sample_idx"],
                "mask_hash": r["mask_hash"],
                "request_hash": r.get("request_hash") if r["needs_teacher"] else None,
                "reward": nan_none(r["reward"]),
                "metrics": r["metrics"] or None,
                "n_orig_tokens": r["n_orig"],
                "n_comp_tokens": r["n_comp"],
                "n_words": r["n_words"],
                "n_kept": r["n_kept"],
                "cache_hit": bool(r.get("cache_hit")),
                "short_circuit": bool(r["short_circuit"]),
                "unscorable": math.isnan(r["reward"]),
            }
            for r in records
        ]
        step_row = {"run_id": self.run_id, **{k: nan_none(v) for k, v in log.__dict__.items()}}
        with self.warehouse.transaction() as con:
            # A step replayed after a resume keeps the calls its first execution paid for.
            prev = con.execute(
                "SELECT calls, cost_usd FROM steps WHERE run_id = ? AND step = ?",
                [self.run_id, log.step],
            ).fetchall()
            if prev:
                step_row["calls"] = (step_row["calls"] or 0) + (prev[0][0] or 0)
                step_row["cost_usd"] = (step_row["cost_usd"] or 0.0) + (prev[0][1] or 0.0)
            insert_rows(con, "samples", sample_rows, on_conflict="replace")
            insert_rows(con, "steps", [step_row], on_conflict="replace")
            insert_rows(con, "masks", stats.new_masks, on_conflict="ignore")
            insert_rows(
                con,
                "api_calls",
                hit_ledger_rows(
                    run_id=self.run_id,
                    phase="train",
                    teacher_key=self.tkey,
                    backend=self.cfg.teacher.backend,
                    model=self.cfg.teacher.model,
                    hits=stats.hits_ledger,
                ),
            )
            if caller is not None:
                caller.write_pending_ledger(con)
        if self.cfg.train.csv_logs:
            self._write_csv(log)

    def _write_csv(self, log: StepLog) -> None:
        """Upstream-compatible logs: reinforce_logs_updated.csv and rewards_logs_updated.csv."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        files = {
            "reinforce_logs_updated.csv": (
                ["Train/Val", "Epoch", "Step", "Policy Loss", "LR"],
                ["Train", log.epoch, log.step, log.loss, log.lr],
            ),
            "rewards_logs_updated.csv": (
                ["Train/Val", "Epoch", "Step", "Rewards", "Comp Ratio"],
                [
                    "Train",
                    log.epoch,
                    log.step,
                    log.reward_mean,
                    (1 / log.compression) if log.compression else "",
                ],
            ),
        }
        for name, (header, row) in files.items():
            p = self.run_dir / name
            new = not p.exists()
            with open(p, "a", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                if new:
                    w.writerow(header)
                w.writerow(row)

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        """Atomic: written to a temp dir, then renamed; 'latest' is updated last."""
        states = self.dist.gather(self.gen.get_state())
        if not self.dist.is_main:
            return self.run_dir
        ck_root = self.run_dir / "checkpoints"
        name = f"step-{self.pos.step:07d}"
        tmp = ck_root / f".{name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        self.comp.save_pretrained(tmp / "model")
        torch.save(
            {
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "sampler_rng": states,
                "position": {
                    "step": self.pos.step,
                    "epoch": self.pos.epoch,
                    "index": self.pos.index,
                    "ema": float("nan") if self.pos.ema is None else self.pos.ema,
                },
            },
            tmp / STATE_FILE,
        )
        (tmp / CONFIG_FILE).write_text(
            json.dumps(self.cfg.model_dump(mode="json"), indent=2), encoding="utf-8"
        )
        (tmp / "run.json").write_text(
            json.dumps({"run_id": self.run_id, "step": self.pos.step}), encoding="utf-8"
        )
        final = ck_root / name
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        (ck_root / "latest.tmp").write_text(name)
        (ck_root / "latest.tmp").replace(ck_root / "latest")
        return final

    # ------------------------------------------------------------------ the loop

    async def run(self) -> TrainSummary:
        cfg, tc = self.cfg, self.cfg.train
        s = TrainSummary(
            run_id=self.run_id,
            run_dir=self.run_dir,
            resumed_from=self.resumed_from,
            world_size=self.dist.world_size,
        )
        caller = None
        if self.dist.is_main:
            assert self.teacher is not None
            caller = Caller(
                self.warehouse,
                self.teacher,
                self.tkey,
                self.prices,
                "train",
                self.run_id,
                self.budget,
            )
            with self.warehouse.transaction() as con:
                if self.resumed_from is None:
                    Warehouse.start_run(
                        con,
                        {
                            "run_id": self.run_id,
                            "kind": "train",
                            "dataset": cfg.data.dataset,
                            "split": cfg.data.split,
                            "teacher_key": self.tkey,
                            "config": cfg.model_dump(mode="json"),
                            "world_size": self.dist.world_size,
                        },
                    )
                else:
                    con.execute(
                        "UPDATE runs SET status = 'running', finished_at = NULL WHERE run_id = ?",
                        [self.run_id],
                    )
        t0 = time.perf_counter()
        status, message = "finished", None
        try:
            while self.pos.step < self.total_steps:
                log = await self.step(caller)
                s.steps += 1
                s.last = log
                if self.dist.is_main:
                    s.calls += log.calls
                    s.hits += log.hits
                    s.short_circuits += log.short_circuits
                    s.unscorable += log.n_unscorable
                    s.cost_usd += log.cost_usd
                    s.saved_usd += log.saved_usd
                    s.rewards.append(log.reward_mean)
                    if self.on_step:
                        self.on_step(log, s)
                # Budgets count this invocation's calls; the last step finishes the run anyway.
                stop = self.dist.broadcast(bool(caller and caller.budget.reached()))
                if stop and self.pos.step < self.total_steps:
                    s.budget_stopped = True
                    status, message = (
                        "budget",
                        f"budget reached ({self.budget.remaining_text()}) at step {self.pos.step}; resume with --resume {self.run_id}",
                    )
                    self.save_checkpoint()
                    break
                if self.pos.step % tc.checkpoint_every == 0 and self.pos.step < self.total_steps:
                    self.save_checkpoint()
            else:
                self.save_checkpoint()
                if self.dist.is_main:
                    final = self.run_dir / "final"
                    if final.exists():
                        shutil.rmtree(final)
                    self.comp.save_pretrained(final)
                    s.final_model = final
            digests = self.dist.gather(weights_digest(self.model))
            if self.dist.is_main:
                (self.run_dir / "weights_digest.json").write_text(
                    json.dumps({"ranks": digests}), encoding="utf-8"
                )
                if len(set(digests)) != 1:
                    raise RuntimeError(f"weights differ across ranks: {digests}")
        except UserError as e:
            status, message = "failed", str(e)
            raise
        except BaseException as e:
            status, message = (
                "interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                type(e).__name__,
            )
            raise
        finally:
            s.seconds = time.perf_counter() - t0
            if self.dist.is_main:
                if self.teacher is not None:
                    await self.teacher.aclose()
                with self.warehouse.transaction() as con:
                    if caller is not None:
                        caller.write_pending_ledger(con)
                    Warehouse.finish_run(con, self.run_id, status, message)
        return s


async def run_training(cfg: Config, **kw: Any) -> TrainSummary:
    return await Trainer(cfg, **kw).run()
