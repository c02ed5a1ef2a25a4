"""LLMLingua-2-style prompt compressor: greedy, llmlingua-compatible and sampling modes.

See :mod:`.model` for the API, the save layout and greedy compression; :mod:`.rows` builds
the model rows for every path; :mod:`.policy` is the RL side (sampling, the greedy ``Sample``);
:mod:`.compat` reproduces llmlingua. Pure logic lives in :mod:`.words`, :mod:`.chunking`,
:mod:`.selection`, :mod:`.sampling` and :mod:`.text`.
"""

from .model import Compressor
from .options import CompressOptions
from .result import CompressResult, Sample

__all__ = ["CompressOptions", "CompressResult", "Compressor", "Sample"]
