"""User-facing errors raised by the engine.

Every error the engine raises on bad input derives from :class:`RetouchError`. Its ``str()`` is
a complete, human-readable sentence that the CLI prints and the GUI shows in a dialog; callers
never need to show a traceback for one of these.
"""
from __future__ import annotations


class RetouchError(Exception):
    """Base class of every expected, user-facing failure."""


class ImageError(RetouchError):
    """An image or mask could not be read, decoded, written, or has the wrong size/depth."""


class WeightsError(RetouchError):
    """Model weights are missing, unreadable, or do not match the model configuration."""


class NoFaceFound(RetouchError):
    """Raised only where a caller explicitly requires faces; the pipeline itself falls back to tiles."""


class Cancelled(RetouchError):
    """A long job was cancelled by the user; nothing was written."""

    def __init__(self, message: str = "Cancelled by the user; nothing was written.") -> None:
        super().__init__(message)
