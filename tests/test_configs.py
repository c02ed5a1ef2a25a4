"""The shipped configs in ``configs/`` resolve, point at data that ingests, and the
precedence and error rules of :func:`tacorl_offline.config.resolve` hold for them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tacorl_offline.config import Config, resolve
from tacorl_offline.errors import UserError
from tacorl_offline.ingest import read_records
from tacorl_offline.metrics import parse_metric_spec
from tacorl_offline.teachers import render_messages, template_fields

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
ALL = sorted(CONFIGS.glob("*.yaml"))
UPSTREAM = CONFIGS / "upstream_train_reinforce.yaml"
TASKS = ("summarization", "qa", "code")


def _resolve(path: Path, **kw) -> Config:
    kw.setdefault("environ", {})  # never let the caller's environment leak in
    return resolve(path, **kw)


def test_configs_are_shipped() -> None:
    names = {p.name for p in ALL}
    assert {f"{t}.yaml" for t in TASKS} | {UPSTREAM.name} <= names


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_config_resolves_and_is_usable(path: Path, monkeypatch) -> None:
    cfg = _resolve(path)
    # Paths are relative to the repository root (where the CLI runs).
    assert cfg.data.path is not None
    monkeypatch.chdir(ROOT)
    assert Path(cfg.data.path).is_file(), cfg.data.path
    assert cfg.compressor.model == "minilm"
    assert parse_metric_spec(cfg.train.reward.metric)
    # Every placeholder of the template is the text or a never-compressed field.
    names = template_fields(cfg.teacher.template)
    assert "transcript" in names
    assert set(names) - {"transcript"} <= set(cfg.data.fields)
    # The data ingests with these settings and the first record renders.
    records, errors = read_records(cfg.data.path, cfg.data)
    assert records and not errors
    messages = render_messages(cfg.teacher, records[0].text, records[0].fields)
    assert records[0].text in messages[-1]["content"]


@pytest.mark.parametrize("task", TASKS)
def test_task_configs_default_offline(task: str) -> None:
    cfg = _resolve(CONFIGS / f"{task}.yaml")
    assert cfg.teacher.backend == "extractive"
    assert cfg.data.dataset == ("squad" if task == "qa" else f"sample-{task}")
    assert cfg.train.max_steps is not None and cfg.train.max_steps <= 30
    assert cfg.train.batch_size <= 8 and cfg.train.epochs == 1
    # qa: lr and entropy chosen on the validation carve of its train paragraphs (issue 16)
    lr = 1e-4 if task == "qa" else 1e-5
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == pytest.approx(lr)
    if task == "qa":
        assert cfg.train.entropy_coeff == 0.0 and cfg.train.kl_coeff == 0.0
        assert cfg.train.baseline == "group_std" and cfg.train.samples_per_prompt == 4
        # validation (off until a val split exists) stops at the first point not a new best
        assert cfg.train.validation.split is None and cfg.train.validation.patience == 1
    if task == "summarization":
        assert cfg.train.samples_per_prompt == 1 and cfg.train.baseline == "none"
        assert cfg.train.reward.family == "taco"
        assert cfg.compressor.rate == cfg.reward_rate == 0.5
    else:
        assert cfg.train.samples_per_prompt >= 2
        assert cfg.train.baseline in ("rloo", "group_mean", "group_std")


def test_qa_and_code_settings() -> None:
    qa = _resolve(CONFIGS / "qa.yaml")
    assert (qa.data.text_field, qa.data.fields, qa.data.reference_field) == (
        "context",
        ["question"],
        "answers",
    )
    # the shipped QA recipe: question-aware, warm-started, rate-consistent (bench/learning.py)
    assert qa.compressor.condition_on == ["question"] and qa.train.sampler == "rate"
    assert qa.sft.source == "teacher" and qa.compressor.force_tokens == ["."]
    # chosen on the validation carve (bench/README.md "SFT tuned on validation")
    assert (qa.sft.epochs, qa.sft.eval_share, qa.sft.lr) == (10, 0.0, 2e-4)
    assert "{question}" in qa.teacher.template and qa.teacher.extractive_mode == "qa"
    assert "squad_f1" in parse_metric_spec(qa.train.reward.metric)
    code = _resolve(CONFIGS / "code.yaml")
    assert (code.data.text_field, code.data.reference_field) == ("code", "summary")
    assert parse_metric_spec(code.train.reward.metric) == {"rougeL": 1.0}


def test_task_configs_have_distinct_teacher_keys() -> None:
    from tacorl_offline.hashing import teacher_key

    keys = {teacher_key(_resolve(CONFIGS / f"{t}.yaml").teacher.key_settings()) for t in TASKS}
    assert len(keys) == len(TASKS)


# ----------------------------------------------------------------------------- upstream


def test_upstream_layout_maps_onto_ours() -> None:
    cfg = _resolve(UPSTREAM)
    assert cfg.data.path == "data/sample/summarization.json"
    assert cfg.compressor.model == "minilm"
    assert cfg.teacher.template == (
        "Summarize the provided text (which may be compressed).\n{transcript}\nSummary:"
    )
    assert template_fields(cfg.teacher.template) == ["transcript"]
    assert (cfg.teacher.backend, cfg.teacher.model, cfg.teacher.max_tokens) == (
        "openai",
        "gpt-35-turbo",
        1500,
    )
    t = cfg.train
    assert isinstance(t.lr, float) and t.lr == 1e-5  # YAML 1.1 reads "1e-5" as a string
    assert (t.epochs, t.batch_size, t.tolerance_tokens) == (4, 8, 30)
    assert cfg.compressor.rate == cfg.reward_rate == 0.5  # hyperparams.compression_rate
    assert t.entropy_coeff == 0.01
    assert (t.output_dir, t.csv_logs, t.checkpoint_every) == (
        "models/reinforce_trained_model",
        True,
        100,
    )
    c = cfg.compressor
    assert (c.max_seq_len, c.target_token, c.rate) == (512, -1, 0.5)
    assert c.force_tokens == []  # upstream's "" means none
    assert (c.drop_consecutive, c.force_reserve_digit, c.device) == (True, False, "cpu")


def test_upstream_force_tokens_and_cuda(tmp_path: Path) -> None:
    text = UPSTREAM.read_text(encoding="utf-8")
    text = text.replace('force_tokens: ""', 'force_tokens: "\\n,?,."')
    text = text.replace("use_cuda: false", "use_cuda: true")
    p = tmp_path / "up.yaml"
    p.write_text(text, encoding="utf-8")
    cfg = _resolve(p)
    assert cfg.compressor.force_tokens == ["\n", "?", "."]
    assert cfg.compressor.device == "cuda"


def test_upstream_runs_offline_through_env() -> None:
    env = {"TACORL_TEACHER__BACKEND": "extractive", "TACORL_TEACHER__MODEL": "extractive-lead-3"}
    cfg = _resolve(UPSTREAM, environ=env)
    assert (cfg.teacher.backend, cfg.teacher.model) == ("extractive", "extractive-lead-3")
    assert cfg.train.tolerance_tokens == 30  # the rest of the mapping is untouched


# ----------------------------------------------------------------------------- precedence


def test_precedence_defaults_file_env_flags() -> None:
    path = CONFIGS / "qa.yaml"
    assert Config().teacher.model != _resolve(path).teacher.model  # file beats defaults
    assert _resolve(path).teacher.model == "extractive-qa"
    env = {
        "TACORL_TEACHER__MODEL": "from-env",
        "TACORL_TRAIN__REWARD__METRIC": "rougeL:0.5+squad_f1:0.5",
        "TACORL_TRAIN__BATCH_SIZE": "2",
        "UNRELATED": "x",
    }
    cfg = _resolve(path, environ=env)
    assert cfg.teacher.model == "from-env"  # env beats file
    assert cfg.train.reward.metric == "rougeL:0.5+squad_f1:0.5"
    assert cfg.train.batch_size == 2  # YAML-parsed: an int, not "2"
    assert cfg.train.baseline == "group_std"  # untouched fields keep the file's value

    cfg = _resolve(
        path, environ=env, overrides={"teacher.model": "from-flag", "train.batch_size": None}
    )
    assert cfg.teacher.model == "from-flag"  # flags beat env
    assert cfg.train.batch_size == 2  # a None flag (option not given) is skipped


def test_warehouse_env_override() -> None:
    cfg = _resolve(CONFIGS / "code.yaml", environ={"TACORL_WAREHOUSE": "/tmp/x.duckdb"})
    assert cfg.warehouse == "/tmp/x.duckdb"


# ----------------------------------------------------------------------------- errors


def _bad_copy(tmp_path: Path, old: str, new: str, name: str = "bad.yaml") -> Path:
    text = (CONFIGS / "qa.yaml").read_text(encoding="utf-8")
    assert old in text
    p = tmp_path / name
    p.write_text(text.replace(old, new, 1), encoding="utf-8")
    return p


def test_bad_value_names_file_and_field(tmp_path: Path) -> None:
    p = _bad_copy(tmp_path, "  batch_size: 8\n", "  batch_size: 0\n")
    with pytest.raises(UserError) as e:
        _resolve(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: train.batch_size:"), msg
    assert "\n" not in msg


def test_bad_nested_value_names_dotted_field(tmp_path: Path) -> None:
    p = _bad_copy(tmp_path, "over_compression_ratio: 0.1", "over_compression_ratio: 1.5")
    with pytest.raises(UserError, match=r"bad\.yaml: train\.reward\.over_compression_ratio:"):
        _resolve(p)


def test_unknown_field_is_named(tmp_path: Path) -> None:
    p = _bad_copy(tmp_path, "  epochs: 1\n", "  epochs: 1\n  epoch: 2\n")
    with pytest.raises(UserError, match=r"bad\.yaml: train\.epoch: unknown field"):
        _resolve(p)


def test_bad_env_value_says_environment(tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        _resolve(CONFIGS / "qa.yaml", environ={"TACORL_TEACHER__TEMPERATURE": "hot"})
    msg = str(e.value)
    assert "qa.yaml + environment" in msg and "teacher.temperature" in msg


def test_baseline_needs_group(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="samples_per_prompt"):
        _resolve(CONFIGS / "qa.yaml", overrides={"train.samples_per_prompt": 1})


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    p = _bad_copy(tmp_path, "  split: train\n", "  split: [train\n")
    with pytest.raises(UserError, match=r"bad\.yaml: invalid YAML at line \d+"):
        _resolve(p)


def test_one_rate_setting_and_older_configs() -> None:
    """compressor.rate is the rate; the taco reward's c is derived from it. An older
    train.compression_rate is read as compressor.rate, and two different values are refused."""
    cfg = resolve(None, environ={}, overrides={"compressor.rate": 0.3})
    assert cfg.reward_rate == 0.3 and "compression_rate" not in cfg.train.model_dump()
    old = resolve(None, environ={}, overrides={"train.compression_rate": 0.7})
    assert old.compressor.rate == old.reward_rate == 0.7
    with pytest.raises(UserError, match=r"are one setting; set only compressor\.rate"):
        resolve(
            None,
            environ={},
            overrides={"train.compression_rate": 0.7, "compressor.rate": 0.5},
        )
