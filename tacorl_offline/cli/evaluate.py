"""Evaluation commands: ``evaluate`` models and baselines, ``compress`` text with a compressor.

``compress`` resolves the config like every other command (defaults < ``-c`` file <
environment < flags; its defaults are the ``compressor`` section), builds ``CompressOptions``
from it and calls ``Compressor.compress`` once for the whole batch."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tacorl_offline.cli.common import (
    check_format,
    check_numbers,
    config_of,
    settle_flags,
    user_errors,
)
from tacorl_offline.cli.options import ConfigOpt, DatasetOpt, ProgressBarOpt, SplitOpt, WarehouseOpt
from tacorl_offline.config import Config, resolve
from tacorl_offline.display import err, evaluate_with_progress, print_eval_report
from tacorl_offline.errors import UserError
from tacorl_offline.ingest import check_text_limit


def _split_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    if value.strip().lower() in ("", "none"):
        return []
    return [v.strip() for v in value.split(",") if v.strip()]


@user_errors
def evaluate(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Compressor to evaluate (repeatable): a directory, 'minilm', 'run:<id>' "
            "(a training or sft run's final model), 'latest' (the latest training run's) or "
            "'sft:latest'. Without -m: compressor.model.",
        ),
    ] = None,
    config: ConfigOpt = None,
    dataset: DatasetOpt = None,
    split: SplitOpt = None,
    rate: Annotated[
        float | None,
        typer.Option(help="Keep rate in (0, 1] for every system (default: compressor.rate)."),
    ] = None,
    target_token: Annotated[
        int | None,
        typer.Option(help="Keep this many tokens per prompt instead of a rate (>= 1)."),
    ] = None,
    baselines: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated baselines: original,random,stopword,lead, or 'none' (default: all)."
        ),
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(help="System the differences are taken against (default: the first -m)."),
    ] = None,
    judge: Annotated[
        bool | None,
        typer.Option(
            "--judge/--no-judge",
            help="Also have the teacher judge compressed vs original answers, in both orders.",
        ),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, json or csv.")] = "table",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the json/csv output here.")
    ] = None,
    progress: ProgressBarOpt = True,
    warehouse: WarehouseOpt = None,
) -> None:
    """Score models and baselines on the same prompts at the same rate, with paired 95% CIs."""

    check_format(fmt)
    check_numbers(target_token=(target_token, 1))
    if rate is not None and target_token is not None:
        raise UserError("pass either --rate or --target-token, not both")
    cfg = config_of(
        config,
        **{
            "warehouse": warehouse,
            "data.split": split,
            "data.dataset": dataset,
            "compressor.rate": rate,
            "compressor.target_token": target_token,
            "eval.baselines": _split_list(baselines),
            "eval.reference": reference,
            "eval.judge": judge,
        },
    )
    cfg = settle_flags(cfg, dataset, split)
    report = evaluate_with_progress(cfg, progress=progress, models=model or None)
    _write_report(report, fmt, output)
    if report.budget_stopped:
        err.print(
            "budget reached: rerun evaluate to resume (answers paid so far are kept)", markup=False
        )
        raise typer.Exit(3)


def _write_report(report: Any, fmt: str, output: Path | None) -> None:
    """The report as a table, or as json/csv on stdout or in ``output``."""
    from tacorl_offline import eval_output

    if fmt == "table":
        if output is not None:
            raise UserError("--output writes json or csv; add --format json or --format csv")
        print_eval_report(report)
    else:
        text = eval_output.to_json(report) if fmt == "json" else eval_output.to_csv(report)
        if output is not None:
            try:
                output.write_text(text, encoding="utf-8", newline="")
            except OSError as e:
                raise UserError(f"cannot write {output}: {e.strerror}; check the path") from None
            err.print(f"wrote {fmt} for {len(report.systems)} systems to {output}", markup=False)
        else:
            sys.stdout.write(text)


# The compress command's own options.
_FileOpt = Annotated[
    str, typer.Argument(help="Input text file, or - for stdin (JSONL with --jsonl).")
]
_ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config; its compressor section is used."),
]
_ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Model: a directory, 'minilm', 'latest', 'run:<id>', 'sft:latest' or a cached "
        "hub id (default: compressor.model).",
    ),
]
_RateOpt = Annotated[
    float | None,
    typer.Option(help="Fraction of tokens to keep (default: compressor.rate)."),
]
_TargetTokenOpt = Annotated[
    int | None, typer.Option(help="Target number of tokens (overrides rate).")
]
_ThresholdOpt = Annotated[
    float | None, typer.Option(help="Keep words whose keep-probability is >= this.")
]
_ForceTokensOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--force-tokens",
        help="Always keep this string (repeatable; '\\n' allowed; default: compressor.force_tokens).",
    ),
]
_ForceReserveDigitOpt = Annotated[
    bool | None,
    typer.Option(
        help="Always keep words holding a digit (default: compressor.force_reserve_digit)."
    ),
]
_DropConsecutiveOpt = Annotated[
    bool | None,
    typer.Option(
        help="Drop repeated force tokens with nothing kept between "
        "(default: compressor.drop_consecutive)."
    ),
]
_DeviceOpt = Annotated[
    str | None,
    typer.Option(help="torch device: cpu, cuda, cuda:1 ... (default: compressor.device)."),
]
_BatchSizeOpt = Annotated[
    int | None,
    typer.Option(help="Chunks per forward pass (default: compressor.batch_size)."),
]
_CompatOpt = Annotated[bool, typer.Option(help="Reproduce llmlingua 0.2.2's kept words exactly.")]
_TiktokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        help="Count tokens as llmlingua does, with this cl100k_base.tiktoken file "
        "(default with --compat: tiktoken's cached copy under TIKTOKEN_CACHE_DIR, if any).",
    ),
]
_FormatOpt = Annotated[
    str,
    typer.Option(
        "--format",
        "-f",
        help="text (the compressed prompt) or json (llmlingua's result dict: token counts, "
        "ratio '3.0x', rate '33.3%', and mask_hash).",
    ),
]
_AsJsonOpt = Annotated[bool, typer.Option("--json", hidden=True, help="Same as --format json.")]
_MaxCharsOpt = Annotated[
    int | None, typer.Option(help="Longest text accepted (default: ingest's, 1,000,000).")
]
_JsonlOpt = Annotated[
    bool,
    typer.Option(
        help="Input and output are JSONL: {'text': ..., <field>: ...} per line; the other "
        "fields are kept, and a question-aware model reads the ones it needs (e.g. 'question')."
    ),
]


def _unescape(tok: str) -> str:
    """Let users type "\\n" or "\\t" for force tokens on a shell command line."""
    return tok.encode("utf-8").decode("unicode_escape") if "\\" in tok else tok


def _read(file: str) -> str:
    if file == "-":
        return sys.stdin.read()
    p = Path(file)
    if not p.is_file():
        raise UserError(f"input file {file} does not exist; pass a readable file or - for stdin")
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {file} as UTF-8 text: {e}") from e


def _jsonl_records(raw: str, file: str) -> list[dict]:
    out = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(
                f"{file}:{n}: not valid JSON ({e.msg}); each line must be an object with 'text' or 'prompt'"
            ) from e
        if not isinstance(rec, dict) or not isinstance(rec.get("text", rec.get("prompt")), str):
            raise UserError(
                f"{file}:{n}: each line must be a JSON object with a string 'text' or 'prompt'"
            )
        out.append(rec)
    return out


def compress(
    file: _FileOpt = "-",
    config: _ConfigOpt = None,
    model: _ModelOpt = None,
    rate: _RateOpt = None,
    target_token: _TargetTokenOpt = None,
    threshold: _ThresholdOpt = None,
    force_tokens: _ForceTokensOpt = None,
    force_reserve_digit: _ForceReserveDigitOpt = None,
    drop_consecutive: _DropConsecutiveOpt = None,
    device: _DeviceOpt = None,
    batch_size: _BatchSizeOpt = None,
    compat: _CompatOpt = False,
    tiktoken_file: _TiktokenFileOpt = None,
    fmt: _FormatOpt = "text",
    as_json: _AsJsonOpt = False,
    jsonl: _JsonlOpt = False,
    max_chars: _MaxCharsOpt = None,
) -> None:
    """Compress a prompt and print the compressed text."""
    from transformers.utils import logging as hf_logging

    from tacorl_offline.compressor import CompressOptions

    hf_logging.disable_progress_bar()

    if fmt not in ("text", "json"):
        raise UserError(f"--format must be text or json, not '{fmt}'")
    as_json = as_json or fmt == "json"
    given = [
        n
        for n, v in (("--rate", rate), ("--target-token", target_token), ("--threshold", threshold))
        if v is not None
    ]
    if len(given) > 1:
        raise UserError(f"{' and '.join(given)} are mutually exclusive; pass only one")
    cfg = _compress_config(
        config, model, rate, target_token, threshold, force_tokens, force_reserve_digit,
        drop_consecutive, device, batch_size,
    )  # fmt: skip
    opts = CompressOptions.from_config(cfg.compressor).replace(threshold=threshold, compat=compat)
    raw = _read(file)
    if not raw.strip():
        raise UserError(
            f"{'stdin' if file == '-' else file} is empty: nothing to compress; pass a text file "
            "(or JSONL with --jsonl)"
        )
    records = _jsonl_records(raw, file) if jsonl else [{"text": raw}]
    check_text_limit([r.get("text", r.get("prompt")) for r in records], file, max_chars=max_chars)
    from tacorl_offline.tokens import llmlingua_encoding

    encoding = llmlingua_encoding(tiktoken_file) if (compat or tiktoken_file) else None
    if compat and encoding is None:
        typer.echo(
            "note: --compat counts tokens with the model tokenizer, so --rate keeps different words "
            "than llmlingua (which counts with tiktoken cl100k); pass --tiktoken-file "
            "cl100k_base.tiktoken or set TIKTOKEN_CACHE_DIR to a cache holding it",
            err=True,
        )
    comp = _load_compressor(cfg, opts, encoding, jsonl=jsonl)
    texts = [r.get("text", r.get("prompt")) for r in records]
    results = comp.compress(texts, fields=records if comp.condition_on else None)
    _print_results(records, results, jsonl=jsonl, as_json=as_json)


def _load_compressor(cfg: Config, opts: Any, encoding: Any, *, jsonl: bool) -> Any:
    """The compressor ``-m``/``compressor.model`` names (any model name, see
    :mod:`tacorl_offline.model_ref`); a question-aware one needs JSONL records with its fields."""
    from tacorl_offline.compressor import Compressor
    from tacorl_offline.model_ref import resolve_model_ref
    from tacorl_offline.warehouse import Warehouse

    name = resolve_model_ref(
        cfg.compressor.model, Warehouse(cfg.warehouse), hub_download=cfg.compressor.hub_download
    )
    comp = Compressor.from_pretrained(
        name, device=cfg.compressor.device, options=opts, token_counter=encoding
    )
    if comp.condition_on and not jsonl:
        raise UserError(
            f"this compressor reads {', '.join(comp.condition_on)} with the text; pass JSONL "
            f'records with --jsonl, e.g. {{"text": ..., "{comp.condition_on[0]}": ...}}'
        )
    return comp


def _compress_config(
    config: Path | None,
    model: str | None,
    rate: float | None,
    target_token: int | None,
    threshold: float | None,
    force_tokens: list[str] | None,
    force_reserve_digit: bool | None,
    drop_consecutive: bool | None,
    device: str | None,
    batch_size: int | None,
) -> Config:
    """The config with the command's flags over its ``compressor`` section."""
    return resolve(
        config,
        overrides={
            "compressor.model": model,
            "compressor.rate": rate,
            # A rate or threshold on the command line wins over a target_token in the config.
            "compressor.target_token": -1
            if rate is not None or threshold is not None
            else target_token,
            "compressor.force_tokens": [_unescape(t) for t in force_tokens]
            if force_tokens
            else None,
            "compressor.force_reserve_digit": force_reserve_digit,
            "compressor.drop_consecutive": drop_consecutive,
            "compressor.device": device,
            "compressor.batch_size": batch_size,
        },
    )


def _print_results(records: list[dict], results: list[Any], *, jsonl: bool, as_json: bool) -> None:
    """One line per input: the compressed text, its JSON result, or the JSONL record."""
    for rec, res in zip(records, results, strict=False):
        if jsonl:
            out = {**rec, "compressed_prompt": res.compressed_prompt}
            out.update(ratio=res["ratio"], rate=res["rate"])  # llmlingua's formats, as the API
            if as_json:
                out.update(
                    origin_tokens=res.origin_tokens,
                    compressed_tokens=res.compressed_tokens,
                    mask_hash=res.mask_hash,
                )
            typer.echo(json.dumps(out, ensure_ascii=False))
        elif as_json:
            typer.echo(json.dumps(res.to_dict(), ensure_ascii=False))
        else:
            typer.echo(res.compressed_prompt)
