"""Qt-free image pyramids for display: built once per image, patched in place after mask edits.

Level k is the photo downsampled by 2**k (each level from the previous one, padded to an even
size and area-averaged), so painting at any zoom reads a level at most 2x larger than the screen.
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

Rect = tuple[int, int, int, int]


def to_display_u8(pixels: np.ndarray) -> np.ndarray:
    """Any engine image (HxWx3 uint8/uint16, or float in [0,1]) as contiguous HxWx3 uint8 for display."""
    if pixels.dtype == np.uint8:
        out = pixels
    elif pixels.dtype == np.uint16:
        out = (pixels >> 8).astype(np.uint8)
    else:
        out = (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    return np.ascontiguousarray(out[:, :, :3])


def mask_to_u8(mask: np.ndarray) -> np.ndarray:
    return (np.clip(mask, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _half(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    if h % 2 or w % 2:
        pad = ((0, h % 2), (0, w % 2)) + (((0, 0),) if img.ndim == 3 else ())
        img = np.pad(img, pad, mode="edge")
    return cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2), interpolation=cv2.INTER_AREA)


def build_pyramid(img: np.ndarray, min_side: int = 256) -> list[np.ndarray]:
    """[img, img/2, img/4, ...] down to a level whose longer side is below ``min_side``."""
    levels = [img]
    while max(levels[-1].shape[:2]) > min_side:
        levels.append(_half(levels[-1]))
    return levels


def update_pyramid(levels: list[np.ndarray], rect: Rect) -> None:
    """Recompute the coarser levels of ``levels`` inside ``rect`` (level-0 coordinates) after level 0 changed."""
    x0, y0, x1, y1 = rect
    for k in range(1, len(levels)):
        prev, cur = levels[k - 1], levels[k]
        x0, y0 = x0 // 2, y0 // 2
        x1, y1 = min((x1 + 1) // 2, cur.shape[1]), min((y1 + 1) // 2, cur.shape[0])
        if x0 >= x1 or y0 >= y1:
            return
        src = prev[2 * y0:2 * y1, 2 * x0:2 * x1]
        want = (y1 - y0, x1 - x0)
        if src.shape[:2] != (2 * want[0], 2 * want[1]):
            pad = ((0, 2 * want[0] - src.shape[0]), (0, 2 * want[1] - src.shape[1])) + (((0, 0),) if src.ndim == 3 else ())
            src = np.pad(src, pad, mode="edge")
        cur[y0:y1, x0:x1] = cv2.resize(src, (want[1], want[0]), interpolation=cv2.INTER_AREA)


def level_for_scale(scale: float, n_levels: int) -> int:
    """Coarsest level whose resolution is still >= ``scale`` device pixels per photo pixel."""
    if scale <= 0:
        return n_levels - 1
    k = int(np.floor(np.log2(1.0 / scale))) if scale < 1.0 else 0
    return int(np.clip(k, 0, n_levels - 1))


def overlay(base: np.ndarray, mask_u8: np.ndarray, color: tuple[int, int, int], opacity: float) -> np.ndarray:
    """Tint ``base`` (HxWx3 uint8) with ``color`` weighted by ``mask_u8 / 255 * opacity``."""
    w2 = mask_u8.astype(np.float32)
    w2 *= np.float32(opacity / 255.0)
    w1 = 1.0 - w2
    tint = np.empty_like(base)
    tint[:] = np.asarray(color, np.uint8)
    return cv2.blendLinear(np.ascontiguousarray(base), tint, w1, w2)


def changed_rect(a: np.ndarray, b: np.ndarray) -> Rect | None:
    """Bounding box (x0, y0, x1, y1) of the pixels where two same-shaped images differ, or None."""
    diff_rows = np.any((a != b).reshape(a.shape[0], -1), axis=1)
    rows = np.flatnonzero(diff_rows)
    if rows.size == 0:
        return None
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    band = a[y0:y1] != b[y0:y1]
    cols = np.flatnonzero(np.any(band.reshape(y1 - y0, a.shape[1], -1), axis=(0, 2)))
    return int(cols[0]), y0, int(cols[-1]) + 1, y1


def after_pyramid(before_levels: list[np.ndarray], image: np.ndarray, after: np.ndarray,
                  boxes: list[Rect] | None = None,
                  to_display: Callable[[np.ndarray], np.ndarray] | None = None) -> list[np.ndarray]:
    """Display pyramid of ``after`` built from the ``before`` pyramid, recomputing only the box
    where ``after`` differs from ``image`` (a face correction touches a small part of a 24 MP photo).
    ``boxes``: where the two may differ, if known (saves comparing the whole photo).
    ``to_display``: the photo's colour conversion for the screen (None: the photo is sRGB)."""
    if boxes is not None:
        rect = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                max(b[3] for b in boxes)) if boxes else None
    else:
        rect = changed_rect(image, after)
    if rect is None:
        return list(before_levels)
    x0, y0, x1, y1 = rect
    if to_display is None and after.dtype == np.uint8 and after.ndim == 3 and after.shape[2] == 3:
        level0 = np.ascontiguousarray(after)
    else:
        level0 = before_levels[0].copy()
        level0[y0:y1, x0:x1] = (to_display or to_display_u8)(after[y0:y1, x0:x1])
    levels = [level0] + [lv.copy() for lv in before_levels[1:]]
    update_pyramid(levels, rect)
    return levels
