"""Facial features a predicted mask must leave alone: eyes, brows, nostrils, lips.

A photographer never wants the eyes, brows, nostrils or lips "healed", and those are exactly
where a mask net trained on a few thousand portraits is least sure (dark, sharp, red). The face
detector's five landmarks (eye centres, nose tip, mouth corners) place each feature; this module
draws soft ellipses over them, sized by the eye distance and turned with the eye axis (a rolled
head), which :mod:`engine.retoucher` uses to keep the *predicted* mask off them. A mask the user
brushes is never changed: brushing over a lip border still retouches it.

Proportions, in eye distances ``d`` (measured on frontal portraits; on a turned head, where the eye
distance is foreshortened, ``d`` is at least the face's width / 2.2): eyes 0.30 x 0.15 around each
eye centre (lids and lashes included); brows 0.34 x 0.13, 0.36 d above each eye; nostrils and
the nose's lower rim 0.30 x 0.16 around a point 0.10 d below the nose tip; lips 0.62 x 0.34
mouth widths around the mouth corners' midpoint, 0.05 d below it.

:func:`under_eyes` draws the skin just below each eye the same way (:data:`UNDER_EYES`), where
:func:`engine.model.fill.hold_tone` leaves a brush's fill as it comes: a brush there is meant to
take a dark circle's tone away.
"""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from engine.faces import Face

__all__ = ["protection", "under_eyes", "FEATURES", "UNDER_EYES"]

#: name -> (anchor, offset along the eye axis, offset across it (down), semi-axis along, semi-axis across), in eye distances
FEATURES = {
    "right eye": ("eye0", 0.0, 0.0, 0.30, 0.15),
    "left eye": ("eye1", 0.0, 0.0, 0.30, 0.15),
    "right brow": ("eye0", 0.0, -0.36, 0.34, 0.13),
    "left brow": ("eye1", 0.0, -0.36, 0.34, 0.13),
    "nostrils": ("nose", 0.0, 0.10, 0.30, 0.16),
}
#: the skin just below each eye, from the lower lid down (same units): where a dark circle is
#: darkest. Held small: on real acne photos a larger zone (0.38 x 0.18 d, 0.24 d below) took the
#: hold off acne on the upper cheek (the twelve photos of tests/bench/brush_lightness.py: 0.27
#: against 0.22 L* mean absolute shift; model card, "The tone hold off below the eyes").
UNDER_EYES = {
    "right under-eye": ("eye0", 0.0, 0.15, 0.28, 0.10),
    "left under-eye": ("eye1", 0.0, 0.15, 0.28, 0.10),
}
_SOFT = 0.06  # edge softness, in eye distances


def _ellipse(canvas: np.ndarray, centre: tuple[float, float], axes: tuple[float, float], angle: float) -> None:
    s = 16  # sub-pixel precision for cv2.ellipse
    c = (int(round(centre[0] * s)), int(round(centre[1] * s)))
    a = (max(1, int(round(axes[0] * s))), max(1, int(round(axes[1] * s))))
    cv2.ellipse(canvas, c, a, math.degrees(angle), 0, 360, 1.0, -1, cv2.LINE_AA, shift=4)


def _geometry(face: Face) -> tuple[float, float, tuple[float, float], tuple[float, float]] | None:
    """(eye distance ``d``, roll angle, unit vector along the eye axis, unit vector down) of a
    face, or None when its eye landmarks coincide."""
    (rx, ry), (lx, ly) = face.landmarks[0], face.landmarks[1]
    if math.hypot(lx - rx, ly - ry) < 1.0:
        return None
    # a turned head foreshortens the eye distance; the face's width does not shrink as much
    d = max(math.hypot(lx - rx, ly - ry), face.width / 2.2)
    angle = math.atan2(ly - ry, lx - rx)
    return d, angle, (math.cos(angle), math.sin(angle)), (-math.sin(angle), math.cos(angle))


def _draw(faces: Sequence[Face], crop: tuple[int, int, int, int], n: int, table: dict, lips: bool) -> np.ndarray | None:
    """The ellipses of ``table`` (as :data:`FEATURES`; and the lips when ``lips``) of every face,
    drawn soft over a square ``crop`` (photo pixels) at ``n`` x ``n``; None when none falls inside."""
    x0, y0, x1, _ = crop
    scale = n / float(x1 - x0)
    canvas = np.zeros((n, n), np.float32)
    soft = 0.0
    for face in faces:
        g = _geometry(face)
        if g is None:
            continue
        d, angle, along, down = g
        (rx, ry), (lx, ly), (nx, ny), (mrx, mry), (mlx, mly) = face.landmarks[:5]
        points = {"eye0": (rx, ry), "eye1": (lx, ly), "nose": (nx, ny)}
        shapes = []
        for anchor, da, dd, sa, sd in table.values():
            px, py = points[anchor]
            shapes.append(((px + (da * along[0] + dd * down[0]) * d, py + (da * along[1] + dd * down[1]) * d), (sa * d, sd * d)))
        if lips:
            mw = math.hypot(mlx - mrx, mly - mry)
            mx, my = (mrx + mlx) / 2 + 0.05 * d * down[0], (mry + mly) / 2 + 0.05 * d * down[1]
            shapes.append(((mx, my), (0.62 * mw + 0.05 * d, 0.34 * mw + 0.05 * d)))
        for (cx, cy), (a, b) in shapes:
            _ellipse(canvas, ((cx - x0) * scale, (cy - y0) * scale), (a * scale, b * scale), angle)
        soft = max(soft, _SOFT * d * scale)
    if not canvas.any():
        return None
    if soft > 0.5:
        canvas = np.maximum(canvas, cv2.GaussianBlur(cv2.dilate(canvas, None), (0, 0), soft))
    return np.clip(canvas, 0.0, 1.0)


def protection(faces: Sequence[Face], crop: tuple[int, int, int, int], n: int) -> np.ndarray | None:
    """The protected area (float32 n x n in [0, 1], 1 = leave alone) of a square ``crop`` (photo
    pixels) drawn at ``n`` x ``n``, or None when no face's features fall inside it."""
    return _draw(faces, crop, n, FEATURES, lips=True)


def under_eyes(faces: Sequence[Face], crop: tuple[int, int, int, int], n: int) -> np.ndarray | None:
    """The skin below each eye (:data:`UNDER_EYES`; float32 n x n in [0, 1]) of a square ``crop``
    drawn at ``n`` x ``n``, or None when it falls outside."""
    return _draw(faces, crop, n, UNDER_EYES, lips=False)
