"""LLMLingua-2-style prompt compressor: greedy, llmlingua-compatible and sampling modes.

See :mod:`.model` for the API and the save layout; pure logic lives in :mod:`.words`,
:mod:`.chunking`, :mod:`.selection`, :mod:`.sampling`, :mod:`.text` and :mod:`.compat`.
"""

from .model import Compressor
from .options import CompressOptions
from .result import CompressResult, Sample

__all__ = ["CompressOptions", "CompressResult", "Compressor", "Sample"]
