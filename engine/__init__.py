"""RetouchFormer Studio engine: models, training, inference, image I/O and the command line.

This package never imports Qt (a test enforces it).
"""
from __future__ import annotations

__version__ = "0.1.0"

from engine.errors import Cancelled, ImageError, NoFaceFound, RetouchError, WeightsError

__all__ = ["Cancelled", "ImageError", "NoFaceFound", "RetouchError", "WeightsError", "Retoucher", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import engine` stays cheap (no torch import) for tools that only need I/O.
    if name == "Retoucher":
        from engine.retoucher import Retoucher

        return Retoucher
    raise AttributeError(name)
