"""Render a teacher prompt (messages) from the template and a record.

Design decision: the template is a :meth:`str.format_map` template, as upstream TACO-RL's
``task.prompt.format(transcript=...)``. ``{transcript}`` is the (possibly compressed) text,
any other ``{name}`` is a never-compressed field of the record. The text field's own name
(``data.text_field``, e.g. ``{context}``) is accepted for ``{transcript}``: the config rewrites
it to ``{transcript}`` when it loads, so both spellings make the same requests and cache keys. Placeholders must be plain
names: attribute/index access (``{x.y}``, ``{x[0]}``) is refused, so a template cannot reach
into Python objects. Literal braces are written doubled (``{{`` / ``}}``), e.g. a JSON
example in a template is ``{{"answer": "..."}}``. A single-brace JSON snippet such as
``{"answer": 1}`` is rejected up front with a one-line :class:`UserError` that names the
offending placeholder and says to double the braces; it is never silently sent. Substituted
values are inserted verbatim (braces inside a transcript or field are never re-interpreted).
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from tacorl_offline.errors import UserError

TRANSCRIPT = "transcript"


class _Fields(dict):
    """format_map mapping that names the missing placeholder instead of raising KeyError."""

    def __missing__(self, key: str) -> Any:
        known = ", ".join(sorted(self)) or "none"
        raise UserError(
            f"teacher.template: placeholder {{{key}}} has no value (available: {known}); "
            "add the field to data.fields or write literal braces as {{ and }}"
        )


def template_fields(template: str) -> list[str]:
    """The placeholder names of ``template`` in order (duplicates kept once).

    Raises :class:`UserError` for a malformed template or a non-plain placeholder.
    """
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise UserError(f"teacher.template: {e}; write literal braces as {{{{ and }}}}") from None
    for _literal, name, _spec, _conv in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            shown = name if len(name) <= 40 else name[:37] + "..."
            raise UserError(
                f"teacher.template: placeholder {{{shown}}} is not a plain field name; "
                "write literal braces (e.g. JSON) as {{ and }}"
            )
        if name not in names:
            names.append(name)
    return names


def rename_placeholder(template: str, old: str, new: str) -> str:
    """``template`` with every ``{old}`` written ``{new}`` (literal text and other placeholders,
    doubled braces included, unchanged)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        return template  # malformed: rendered later with its own message
    out = []
    for literal, name, spec, conv in parsed:
        out.append(literal.replace("{", "{{").replace("}", "}}"))
        if name is None:
            continue
        inner = new if name == old else name
        if conv:
            inner += f"!{conv}"
        if spec:
            inner += f":{spec}"
        out.append("{" + inner + "}")
    return "".join(out)


def render_user(template: str, text: str, fields: Mapping[str, Any]) -> str:
    template_fields(template)  # validates placeholders with a clear message
    values = _Fields({k: v for k, v in fields.items() if k != TRANSCRIPT})
    values[TRANSCRIPT] = text
    try:
        return template.format_map(values)
    except (ValueError, IndexError) as e:  # bad format spec / positional {} placeholder
        raise UserError(f"teacher.template: {e}; write literal braces as {{{{ and }}}}") from None


def render_messages(cfg: Any, text: str, fields: Mapping[str, Any]) -> list[dict[str, str]]:
    """System message (if ``cfg.system_prompt``) then the user message from ``cfg.template``.

    ``cfg`` is a :class:`~tacorl_offline.config.TeacherConfig` (typed loosely to avoid an
    import cycle). A field literally named ``transcript`` is ignored: ``{transcript}`` is
    always the text.
    """
    messages: list[dict[str, str]] = []
    if cfg.system_prompt:
        messages.append({"role": "system", "content": cfg.system_prompt})
    messages.append({"role": "user", "content": render_user(cfg.template, text, fields)})
    return messages
