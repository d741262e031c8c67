"""What every exporter shares (engine.models.export and engine.models.gguf_export import it; neither imports
the other at module level): the refusal type and the GGUF format names."""

from __future__ import annotations

GGUF_FORMATS = ("gguf", "gguf_f16")  # written by engine/models/gguf_export.py


class ExportError(ValueError):
    """The model cannot be written in the requested format; the message says why and what can."""
