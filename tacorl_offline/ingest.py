"""Read and validate prompt datasets. Pure reading: no database code (the caller stores records).

Decisions:

- Formats, chosen by ``fmt`` or else by extension: upstream JSON (``.json``:
  ``{"0": {"original_prompt": ..., "gpt_output": ...}, "1": ...}``; a JSON list of objects is
  accepted too), JSONL (``.jsonl``/``.ndjson``), Parquet (``.parquet``/``.pq``, via pyarrow)
  and CSV (``.csv``, stdlib ``csv``, header row required). Text files must be UTF-8 (a BOM is
  accepted).
- Upstream keys must be unique non-negative integers written as strings; unlike upstream they
  need not be contiguous. A bad or repeated key is a row error.
- Row numbers (``Record.row``, ``RowError.row``): the upstream key for a JSON object; the
  1-based position for a JSON list; the 1-based physical line for JSONL; the 1-based data row
  for CSV (header not counted) and Parquet. For a bad upstream key the row is its 1-based
  position in the object.
- Field mapping from :class:`DataConfig`: text from ``text_field``; never-compressed fields
  from ``fields``; reference from ``reference_field`` (missing or null -> None; a string or
  a list of strings, every gold answer, duplicates dropped, the first also as ``reference``); imported
  teacher answer from ``import_field`` (missing, null or blank -> None). For JSONL, CSV and
  Parquet, when ``text_field`` is the default ``original_prompt`` and absent, the columns
  ``text`` and then ``prompt`` are used instead (the upstream JSON layout gets no alias).
- Text is stored exactly as read (no stripping): the prompt id hashes the content.
- Row errors: not an object; text missing, null, non-string, empty/blank or over
  :data:`MAX_TEXT_CHARS`; a configured field missing, non-string or too long; a non-string
  reference or imported answer; a NUL character in any used value; extra CSV cells. By
  default any row error aborts the whole file (nothing is written); ``skip_invalid`` returns
  the good rows together with the errors.
- File errors (missing/unreadable file, unknown format, invalid UTF-8, malformed JSON with
  line and column, a malformed JSONL line, unreadable Parquet, a CSV without header or text
  column, a columnar file missing a configured field column, an empty file or no rows) raise
  :class:`UserError` naming the file and what to do, in one line.
- Duplicate rows are not errors: rows are deduplicated by prompt id (text + fields), keeping
  the first; :class:`ReadResult` reports how many were dropped.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tacorl_offline.config import DataConfig
from tacorl_offline.errors import UserError
from tacorl_offline.hashing import prompt_id

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 1_000_000
DEFAULT_TEXT_FIELD = "original_prompt"
TEXT_ALIASES = ("text", "prompt")
FORMATS = ("json", "jsonl", "parquet", "csv")
_EXTENSIONS = {
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
}
_UPSTREAM_KEY = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class Record:
    prompt_id: str
    text: str
    fields: dict[str, str]
    reference: str | None
    imported_answer: str | None
    row: int
    references: tuple[str, ...] = ()  # every gold answer; ``reference`` is the first


@dataclass
class RowError:
    row: int
    reason: str
    missing_text: bool = False  # the text field itself is absent: a --text-field problem

    def __str__(self) -> str:
        return f"row {self.row}: {self.reason}"


@dataclass
class ReadResult:
    """Everything :func:`read_dataset` learned about a file."""

    path: str
    fmt: str
    records: list[Record] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    duplicates: int = 0
    rows_read: int = 0


# ---------------------------------------------------------------------------- public API


def detect_format(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """``fmt`` if given (validated), else the format implied by the file extension."""
    if fmt is not None:
        f = fmt.lower().lstrip(".")
        if f == "ndjson":
            f = "jsonl"
        if f not in FORMATS:
            raise UserError(f"{path}: unknown format '{fmt}'; use one of {', '.join(FORMATS)}")
        return f
    ext = Path(path).suffix.lower()
    if ext not in _EXTENSIONS:
        raise UserError(
            f"{path}: unknown file extension '{ext or '(none)'}'; use .json, .jsonl, .parquet or "
            f".csv, or pass --format"
        )
    return _EXTENSIONS[ext]


def read_dataset(
    path: str | os.PathLike[str],
    data_cfg: DataConfig,
    *,
    fmt: str | None = None,
    skip_invalid: bool = False,
) -> ReadResult:
    """Read, validate and dedupe ``path``. Raises :class:`UserError` on file errors, and on row
    errors unless ``skip_invalid``."""
    name = str(path)
    f = detect_format(path, fmt)
    p = Path(path)
    if not p.exists():
        raise UserError(f"{name}: file not found; check the path")
    if p.is_dir():
        raise UserError(f"{name}: is a directory; pass a data file")
    if f == "parquet":
        rows = _parquet_rows(p, name, data_cfg)
        aliases = True
    else:
        text = _read_text(p, name)
        if f == "json":
            rows = _json_rows(text, name)
            aliases = False
        elif f == "jsonl":
            rows = _jsonl_rows(text, name)
            aliases = True
        else:
            rows = _csv_rows(text, name, data_cfg)
            aliases = True

    result = ReadResult(path=name, fmt=f)
    seen: set[str] = set()
    for row, obj in rows:
        result.rows_read += 1
        if isinstance(obj, RowError):
            result.errors.append(obj)
            continue
        rec = _to_record(row, obj, data_cfg, aliases)
        if isinstance(rec, RowError):
            result.errors.append(rec)
        elif rec.prompt_id in seen:
            result.duplicates += 1
        else:
            seen.add(rec.prompt_id)
            result.records.append(rec)

    if result.rows_read == 0:
        raise UserError(f"{name}: contains no rows; add at least one record")
    n = len(result.errors)
    text_hint = "pass --text-field KEY (data.text_field) naming the field that holds the text"
    if result.errors and not result.records:
        fix = text_hint if result.errors[0].missing_text else "fix the file"
        raise UserError(
            f"{name}: {n} invalid row{'s' if n != 1 else ''}; first: {result.errors[0]}. "
            f"Nothing to load: {fix}"
        )
    if result.errors and not skip_invalid:
        raise UserError(
            f"{name}: {n} invalid row{'s' if n != 1 else ''}; first: {result.errors[0]}. "
            "Fix them, or pass --skip-invalid to load only the valid rows"
        )
    if result.duplicates:
        log.info("%s: dropped %d duplicate rows (same text and fields)", name, result.duplicates)
    return result


def read_records(
    path: str | os.PathLike[str],
    data_cfg: DataConfig,
    *,
    fmt: str | None = None,
    skip_invalid: bool = False,
) -> tuple[list[Record], list[RowError]]:
    """Valid, deduplicated records and (with ``skip_invalid``) the row errors. See
    :func:`read_dataset` for the duplicate count."""
    res = read_dataset(path, data_cfg, fmt=fmt, skip_invalid=skip_invalid)
    return res.records, res.errors


# ---------------------------------------------------------------------------- row -> record


def _short(value: Any, limit: int = 40) -> str:
    s = repr(value)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def check_text_limit(
    texts: Sequence[str],
    where: str,
    *,
    max_chars: int | None = None,
    flag: str = "--max-chars",
) -> None:
    """Refuse, in one line, a text longer than ``max_chars`` (None: ingest's limit), e.g. the
    input of ``compress``, before any model work is done on it."""
    max_chars = MAX_TEXT_CHARS if max_chars is None else max_chars
    for i, text in enumerate(texts, 1):
        if len(text) > max_chars:
            which = f"record {i}" if len(texts) > 1 else "the text"
            raise UserError(
                f"{where}: {which} is {len(text):,} characters, over the limit of "
                f"{max_chars:,} (the same as ingest's); split it, or pass {flag} N to raise "
                "the limit"
            )


def _check_str(name: str, value: Any, *, max_chars: int | None = MAX_TEXT_CHARS) -> str | None:
    """Reason ``value`` is not acceptable as a string field, or None."""
    if not isinstance(value, str):
        return f"'{name}' must be a string, got {type(value).__name__}"
    if "\x00" in value:
        return f"'{name}' contains a NUL character"
    if max_chars is not None and len(value) > max_chars:
        return f"'{name}' is too long ({len(value)} chars, limit {max_chars})"
    return None


def _to_record(row: int, obj: Any, cfg: DataConfig, aliases: bool) -> Record | RowError:
    if not isinstance(obj, Mapping):
        return RowError(row, f"not an object (got {type(obj).__name__})")
    text_key = cfg.text_field
    if text_key not in obj and aliases and text_key == DEFAULT_TEXT_FIELD:
        text_key = next((a for a in TEXT_ALIASES if a in obj), text_key)
    if text_key not in obj or obj[text_key] is None:
        tried = (
            f" (also tried {', '.join(repr(a) for a in TEXT_ALIASES)})"
            if aliases and cfg.text_field == DEFAULT_TEXT_FIELD
            else ""
        )
        keys = ", ".join(repr(str(k)) for k in list(obj)[:8]) + (", ..." if len(obj) > 8 else "")
        return RowError(
            row,
            f"missing '{cfg.text_field}'{tried}; the record's keys are {keys or '(none)'}",
            missing_text=True,
        )
    text = obj[text_key]
    if (why := _check_str(text_key, text)) is not None:
        return RowError(row, why)
    if not text.strip():
        return RowError(row, f"'{text_key}' is empty")

    fields: dict[str, str] = {}
    for name in cfg.fields:
        if name not in obj or obj[name] is None:
            return RowError(row, f"missing field '{name}'")
        if (why := _check_str(name, obj[name])) is not None:
            return RowError(row, why)
        fields[name] = obj[name]

    references: list[str] = []
    if cfg.reference_field is not None and obj.get(cfg.reference_field) is not None:
        value = obj[cfg.reference_field]
        # A list holds several gold answers (SQuAD): scored as the best match over them.
        for i, ref in enumerate(value if isinstance(value, list) else [value]):
            name = f"{cfg.reference_field}[{i}]" if isinstance(value, list) else cfg.reference_field
            if (why := _check_str(name, ref)) is not None:
                return RowError(row, f"reference {why}")
            if ref not in references:
                references.append(ref)

    imported: str | None = None
    if cfg.import_field is not None and obj.get(cfg.import_field) is not None:
        value = obj[cfg.import_field]
        if (why := _check_str(cfg.import_field, value, max_chars=None)) is not None:
            return RowError(row, f"imported answer {why}")
        imported = value if value.strip() else None

    return Record(
        prompt_id=prompt_id(text, fields),
        text=text,
        fields=fields,
        reference=references[0] if references else None,
        imported_answer=imported,
        row=row,
        references=tuple(references),
    )


# ---------------------------------------------------------------------------- readers

_Rows = Iterator[tuple[int, Any]]


def _read_text(p: Path, name: str) -> str:
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UserError(
            f"{name}: cannot read file ({e.strerror or e}); check permissions"
        ) from None
    if not data.strip():
        raise UserError(f"{name}: file is empty; add at least one record")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(
            f"{name}: invalid UTF-8 at byte {e.start} (line {line}); re-save the file as UTF-8"
        ) from None


class _Obj(dict):  # type: ignore[type-arg]
    """A JSON object that remembers keys seen more than once (json keeps only the last)."""

    dupes: list[str]


def _pairs_hook(pairs: list[tuple[str, Any]]) -> _Obj:
    obj = _Obj()
    obj.dupes = []
    for k, v in pairs:
        if k in obj:
            obj.dupes.append(k)
        obj[k] = v
    return obj


def _loads(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_pairs_hook)


def _row_dupes(row: int, obj: Any) -> RowError | None:
    if isinstance(obj, _Obj) and obj.dupes:
        return RowError(row, f"field {_short(obj.dupes[0])} appears more than once")
    return None


def _json_rows(text: str, name: str) -> _Rows:
    try:
        top = _loads(text)
    except json.JSONDecodeError as e:
        hint = "; fix the syntax"
        if e.msg == "Extra data":
            hint = "; if this is one object per line, rename it to .jsonl or pass --format jsonl"
        raise UserError(
            f"{name}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}{hint}"
        ) from None
    except RecursionError:
        raise UserError(f"{name}: JSON nested too deeply; check the file") from None
    if isinstance(top, dict):
        return _upstream_rows(top)
    if isinstance(top, list):
        return ((i, _row_dupes(i, x) or x) for i, x in enumerate(top, start=1))
    raise UserError(
        f'{name}: JSON top level must be an object of rows keyed "0", "1", ... or a list of '
        f"objects, got {type(top).__name__}"
    )


def _upstream_rows(top: _Obj) -> _Rows:
    seen: set[int] = set()
    for pos, (key, obj) in enumerate(top.items(), start=1):
        if not _UPSTREAM_KEY.fullmatch(key):
            yield (
                pos,
                RowError(
                    pos, f"key {_short(key)} (entry {pos}) is not a non-negative integer string"
                ),
            )
            continue
        row = int(key)
        if row in seen or key in top.dupes:
            yield row, RowError(row, f"key {_short(key)} appears more than once")
            continue
        seen.add(row)
        yield row, _row_dupes(row, obj) or obj


def _jsonl_rows(text: str, name: str) -> _Rows:
    # split on "\n" only: str.splitlines() would also break on U+2028 etc. inside JSON strings
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = _loads(line)
        except json.JSONDecodeError as e:
            raise UserError(
                f"{name}: malformed JSONL at line {lineno}, column {e.colno}: {e.msg}; each line "
                f"must be one JSON object"
            ) from None
        except RecursionError:
            raise UserError(f"{name}: JSONL line {lineno} nested too deeply") from None
        yield lineno, _row_dupes(lineno, obj) or obj


def _resolve_text_column(columns: list[str], cfg: DataConfig, name: str, kind: str) -> None:
    if cfg.text_field in columns:
        return
    if cfg.text_field == DEFAULT_TEXT_FIELD and any(a in columns for a in TEXT_ALIASES):
        return
    alias = " (or 'text'/'prompt')" if cfg.text_field == DEFAULT_TEXT_FIELD else ""
    raise UserError(
        f"{name}: {kind} has no text column '{cfg.text_field}'{alias}; columns are "
        f"{_short(columns, 80)}; set data.text_field (--text-field)"
    )


def _check_field_columns(columns: list[str], cfg: DataConfig, name: str, kind: str) -> None:
    missing = [c for c in cfg.fields if c not in columns]
    if missing:
        raise UserError(
            f"{name}: {kind} has no column '{missing[0]}' listed in data.fields; fix data.fields "
            f"or the file"
        )


def _csv_rows(text: str, name: str, cfg: DataConfig) -> _Rows:
    old_limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # size is validated per row, with a clearer message
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise UserError(
                    f"{name}: CSV has no header row; the first line must name the columns"
                )
            header = [h.strip() for h in header]
            dup = next((h for i, h in enumerate(header) if h in header[:i]), None)
            if dup is not None:
                raise UserError(f"{name}: CSV header names column {_short(dup)} twice; rename one")
            _resolve_text_column(header, cfg, name, "CSV")
            _check_field_columns(header, cfg, name, "CSV")
            rows: list[tuple[int, Any]] = []
            for i, cells in enumerate(reader, start=1):
                if not cells:
                    continue  # blank line
                if len(cells) > len(header):
                    rows.append(
                        (i, RowError(i, f"{len(cells)} cells but the header has {len(header)}"))
                    )
                    continue
                rows.append(
                    (i, dict(zip(header, cells, strict=False)))
                )  # short rows: trailing cols missing
        except csv.Error as e:
            raise UserError(f"{name}: malformed CSV near line {reader.line_num}: {e}") from None
    finally:
        csv.field_size_limit(old_limit)
    return iter(rows)


def _parquet_rows(p: Path, name: str, cfg: DataConfig) -> _Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)
        columns = list(pf.schema_arrow.names)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise UserError(
            f"{name}: not a readable Parquet file ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
            f"check the file or pass the right --format"
        ) from None
    _resolve_text_column(columns, cfg, name, "Parquet file")
    _check_field_columns(columns, cfg, name, "Parquet file")
    wanted = [cfg.text_field, *TEXT_ALIASES, *cfg.fields, cfg.reference_field, cfg.import_field]
    use = [c for c in dict.fromkeys(w for w in wanted if w) if c in columns]
    return _parquet_iter(pf, use, name)


def _parquet_iter(pf: Any, use: list[str], name: str) -> _Rows:
    import pyarrow as pa

    row = 0
    try:
        for batch in pf.iter_batches(columns=use, batch_size=4096):
            for obj in batch.to_pylist():
                row += 1
                yield row, obj
    except (pa.ArrowException, OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise UserError(
            f"{name}: Parquet file is corrupt after row {row} ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
            f"re-export it"
        ) from None
