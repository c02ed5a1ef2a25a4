"""Teacher backends behind one interface (see :mod:`tacorl_offline.teachers.base`).

``build_teacher(cfg)`` picks the backend from ``cfg.backend``; heavy imports (openai,
transformers) happen only for the backend that is built. ``render_messages`` turns a record
into the chat messages every backend is sent (and that go into the request hash).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tacorl_offline.errors import UserError
from tacorl_offline.teachers.base import Attempt, Teacher, TeacherRequest, TeacherResult
from tacorl_offline.teachers.prompting import render_messages, template_fields

if TYPE_CHECKING:
    from tacorl_offline.config import TeacherConfig

__all__ = [
    "Attempt",
    "Teacher",
    "TeacherRequest",
    "TeacherResult",
    "build_teacher",
    "render_messages",
    "template_fields",
]


def build_teacher(cfg: TeacherConfig, *, environ: Mapping[str, str] = os.environ) -> Teacher:
    """Construct the configured teacher. Raises :class:`UserError` for unusable settings
    (missing API key, missing Azure endpoint, missing local model directory)."""
    if cfg.backend == "extractive":
        from tacorl_offline.teachers.extractive import ExtractiveTeacher

        return ExtractiveTeacher(cfg)
    if cfg.backend in ("openai", "azure"):
        from tacorl_offline.teachers.openai_teacher import OpenAITeacher

        return OpenAITeacher(cfg, environ=environ)
    if cfg.backend == "openai_batch":
        from tacorl_offline.teachers.openai_batch import OpenAIBatchTeacher

        return OpenAIBatchTeacher(cfg, environ=environ)
    if cfg.backend == "hf":
        from tacorl_offline.teachers.hf import HFTeacher

        return HFTeacher(cfg)
    raise UserError(
        f"teacher.backend '{cfg.backend}' is not supported; use extractive, openai, openai_batch, azure or hf"
    )
