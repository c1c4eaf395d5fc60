"""The project's one compositor: a full-resolution correction stored per box, applied at any strength.

A :class:`Correction` holds *disjoint* boxes, each with the correction (``delta``) to add to the
photo inside it, in the photo's own integer units (0..255 or 0..65535), already weighted by the
mask and by the feathered blending weights of overlapping regions. Outside the boxes, and
wherever ``delta`` is exactly 0, :func:`composite` returns the input pixels bit-identically.

Overlapping regions (several faces, overlapping tiles) are combined by
:class:`CorrectionBuilder`: it cuts the union of the regions' boxes into disjoint cells and sums
each region's (pre-weighted) delta into the cells it covers, so every photo pixel is written
once and no full-frame float array is ever needed. The blending weights themselves come from
:func:`feather` / :func:`blend_weights` (smooth ramps toward each region's interior borders,
normalised where regions overlap), so no seams appear.

The storage dtype is ``float16`` for 8-bit photos (plenty of precision for steps of 1/255) and
``float32`` for 16-bit photos (no precision loss).

A brush stroke changes a small part of the photo: the engine can render a correction for a
rectangle only (``Correction.rect``), :meth:`Correction.update` puts it in place of that rectangle
of the previous correction (sharing, not copying, the rest), and :func:`composite` can composite a
rectangle only. Compositing is pointwise, so the rectangle is exactly what a full composite gives.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import cv2
import numpy as np

from engine.errors import ImageError, RetouchError

__all__ = [
    "Box",
    "Patch",
    "Correction",
    "CorrectionBuilder",
    "composite",
    "delta_dtype",
    "dtype_max",
    "feather",
    "blend_weights",
    "coverage",
    "clip_box",
    "intersect_box",
]

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive ends), inside the image


def dtype_max(dtype: np.dtype | type) -> float:
    """Largest pixel value of an 8- or 16-bit image dtype."""
    dt = np.dtype(dtype)
    if dt == np.uint8:
        return 255.0
    if dt == np.uint16:
        return 65535.0
    raise ImageError(f"Images must be 8-bit or 16-bit (uint8/uint16), not {dt}.")


def delta_dtype(dtype: np.dtype | type) -> np.dtype:
    """Storage dtype of a correction for images of ``dtype``."""
    return np.dtype(np.float16) if np.dtype(dtype) == np.uint8 else np.dtype(np.float32)


@dataclass
class Patch:
    """One box of a correction: ``delta`` (h, w, 3) in the photo's integer units."""

    box: Box
    delta: np.ndarray


@dataclass
class Correction:
    """A full-resolution correction for an ``HxW`` photo of ``dtype``, as disjoint patches.

    ``rect`` is None for a correction of the whole photo; a *partial* correction (rendered for
    a brush stroke) describes only the pixels of ``rect`` (zero there outside its patches) and is
    merged into the previous correction with :meth:`update`. ``work`` is the engine's
    working-scale record of the mask it was rendered from, which lets the next stroke be
    rendered incrementally (opaque here).
    """

    shape: tuple[int, int]
    dtype: np.dtype
    patches: list[Patch] = field(default_factory=list)
    regions: list[Box] = field(default_factory=list)  # the model regions it came from (informative)
    rect: Box | None = None
    work: Any = field(default=None, repr=False, compare=False)

    @property
    def nbytes(self) -> int:
        return sum(p.delta.nbytes for p in self.patches)

    def is_empty(self) -> bool:
        return not self.patches

    def update(self, partial: "Correction") -> "Correction":
        """This correction with ``partial.rect`` replaced by ``partial`` (a new Correction; this one
        is left as it is). The patches outside the rectangle are shared as views, not copied, so
        the cost and the memory are those of the rectangle. A partial without ``rect`` (a full
        correction) is returned as it is."""
        if partial.rect is None:
            return partial
        if tuple(partial.shape) != tuple(self.shape) or np.dtype(partial.dtype) != np.dtype(self.dtype):
            raise ImageError("The two corrections were computed for different images.")
        rx0, ry0, rx1, ry1 = partial.rect
        kept: list[Patch] = []
        for p in self.patches:
            px0, py0, px1, py1 = p.box
            if px1 <= rx0 or px0 >= rx1 or py1 <= ry0 or py0 >= ry1:
                kept.append(p)
                continue
            my0, my1 = max(py0, ry0), min(py1, ry1)  # the rows beside the rectangle
            for bx0, by0, bx1, by1 in ((px0, py0, px1, my0), (px0, my1, px1, py1), (px0, my0, min(px1, rx0), my1),
                                       (max(px0, rx1), my0, px1, my1)):
                if bx1 > bx0 and by1 > by0:
                    kept.append(Patch((bx0, by0, bx1, by1), p.delta[by0 - py0 : by1 - py0, bx0 - px0 : bx1 - px0]))
        regions = partial.regions or self.regions
        return Correction(self.shape, self.dtype, kept + list(partial.patches), list(regions), None, partial.work)


class CorrectionBuilder:
    """Accumulate possibly overlapping per-region deltas into a :class:`Correction` of disjoint cells."""

    def __init__(self, shape: tuple[int, int], dtype: np.dtype | type, boxes: Sequence[Box]) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        dtype_max(self.dtype)  # validates
        self.store = delta_dtype(self.dtype)
        self.boxes = [b for b in (_clip_box(b, self.shape) for b in boxes) if b is not None]
        xs = sorted({v for b in self.boxes for v in (b[0], b[2])})
        ys = sorted({v for b in self.boxes for v in (b[1], b[3])})
        self.cells: list[Box] = []
        for y0, y1 in zip(ys[:-1], ys[1:]):
            for x0, x1 in zip(xs[:-1], xs[1:]):
                if any(b[0] <= x0 and x1 <= b[2] and b[1] <= y0 and y1 <= b[3] for b in self.boxes):
                    self.cells.append((x0, y0, x1, y1))
        self._buf: dict[Box, np.ndarray] = {}

    def add(self, box: Box, delta: np.ndarray) -> None:
        """Add ``delta`` ((y1-y0, x1-x0, 3), photo units, any float dtype) over ``box`` (any box
        inside the boxes given at construction: a region's box or a part of it)."""
        bx0, by0, bx1, by1 = box
        if delta.shape != (by1 - by0, bx1 - bx0, 3):
            raise ValueError(f"delta of shape {delta.shape} does not fit box {box}")
        for cell in self.cells:
            inter = intersect_box(cell, box)
            if inter is None:
                continue
            x0, y0, x1, y1 = inter
            part = delta[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
            buf = self._buf.get(cell)
            if buf is None:
                if inter == cell:
                    self._buf[cell] = part.astype(self.store, copy=True)
                    continue
                buf = self._buf[cell] = np.zeros((cell[3] - cell[1], cell[2] - cell[0], 3), self.store)
            target = buf[y0 - cell[1] : y1 - cell[1], x0 - cell[0] : x1 - cell[0]]
            bits = target.view(np.uint16 if target.dtype == np.float16 else np.uint32)
            if not bits.any():  # nothing there yet: 0 + part is part (the cast is the same)
                target[...] = part
            else:  # summed in float32 (NumPy's own float16 arithmetic is slow), stored rounded
                acc = target.astype(np.float32)
                acc += part
                target[...] = acc

    def build(self, regions: Sequence[Box] = ()) -> Correction:
        """The finished correction; each cell is trimmed to the rows/columns where it is non-zero."""
        patches: list[Patch] = []
        for (x0, y0, x1, y1), buf in self._buf.items():
            bits = buf.view(np.uint16 if buf.dtype == np.float16 else np.uint32)  # fast exact != 0
            nz = (bits[..., 0] | bits[..., 1] | bits[..., 2]) != 0
            rows = np.flatnonzero(nz.any(axis=1))
            if rows.size == 0:
                continue
            cols = np.flatnonzero(nz.any(axis=0))
            r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            delta = buf if (r0, r1, c0, c1) == (0, buf.shape[0], 0, buf.shape[1]) else buf[r0:r1, c0:c1].copy()
            patches.append(Patch((x0 + c0, y0 + r0, x0 + c1, y0 + r1), delta))
        self._buf = {}
        return Correction(self.shape, self.dtype, patches, list(regions))


def composite(image: np.ndarray, correction: Correction, strength: float = 1.0, rect: Box | None = None) -> np.ndarray:
    """``image + strength * delta`` inside the correction's boxes (rounded, clipped), the input elsewhere.

    Returns a new array of the same shape and dtype; ``strength`` 0 returns an exact copy.
    The image is copied once and only the boxes are touched, so a re-composite of a 24-MP photo
    costs one memory copy plus the work on the retouched areas. With ``rect`` only that part of
    the photo is composited and returned (``image[y0:y1, x0:x1]`` with the correction applied).
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"The image must be an HxWx3 RGB array, got shape {getattr(image, 'shape', None)}.")
    top = dtype_max(image.dtype)
    if image.shape[:2] != tuple(correction.shape) or np.dtype(image.dtype) != np.dtype(correction.dtype):
        raise ImageError(
            f"This correction was computed for a {correction.shape[1]}x{correction.shape[0]} {np.dtype(correction.dtype)} "
            f"image, not this {image.shape[1]}x{image.shape[0]} {image.dtype} one; analyse the image again."
        )
    s = float(strength)
    if not np.isfinite(s) or not 0.0 <= s <= 1.0:
        raise RetouchError(f"Strength must be between 0 and 1, not {strength}.")
    if rect is None:
        ax0, ay0, ax1, ay1 = 0, 0, image.shape[1], image.shape[0]
    else:
        clipped = _clip_box(rect, image.shape[:2])
        if clipped is None:
            raise RetouchError(f"The rectangle {rect} lies outside the {image.shape[1]}x{image.shape[0]} image.")
        ax0, ay0, ax1, ay1 = clipped
    out = image[ay0:ay1, ax0:ax1].copy()
    if s == 0.0:
        return out
    for patch in correction.patches:
        box = intersect_box(patch.box, (ax0, ay0, ax1, ay1))
        if box is None:
            continue
        x0, y0, x1, y1 = box
        px0, py0 = patch.box[0], patch.box[1]
        f = patch.delta[y0 - py0 : y1 - py0, x0 - px0 : x1 - px0].astype(np.float32)  # one float buffer the size of the box
        if s != 1.0:
            f *= np.float32(s)
        f += image[y0:y1, x0:x1]
        np.rint(f, out=f)
        np.clip(f, 0.0, top, out=f)
        out[y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0] = f
    return out


def mix(before: np.ndarray, after: np.ndarray, strength: float) -> np.ndarray:
    """``before + strength * (after - before)`` for two already-composited uint8 views.

    The same linear rule as :func:`composite`, used by the GUI to preview a strength on the
    display-sized before/after images without touching the full-resolution photo.
    """
    if strength >= 1.0:
        return after
    if strength <= 0.0:
        return before
    return cv2.addWeighted(before, 1.0 - float(strength), after, float(strength), 0.0)


# --------------------------------------------------------------------------------------------
# Feathered blending weights


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def feather(start: int, size: int, length: int, ramp: float, lo: int, hi: int) -> np.ndarray:
    """1-D weight of a region spanning ``[start, start+size)`` on an axis of ``length`` pixels,
    evaluated on ``[lo, hi)``: 1 inside, a smooth ramp of ``ramp`` pixels toward each end that
    lies inside the image (ends at or beyond the image border are not feathered)."""
    p = np.arange(lo, hi, dtype=np.float32) + 0.5
    w = np.ones(hi - lo, dtype=np.float32)
    if ramp <= 0:
        return w
    if start > 0:
        w *= _smoothstep((p - start) / ramp)
    if start + size < length:
        w *= _smoothstep((start + size - p) / ramp)
    return w


def _weight(crop: Box, ramp: float, shape: tuple[int, int], sub: Box) -> np.ndarray:
    """2-D feather weight (h, w) of a region with square ``crop`` over the image box ``sub``."""
    cx0, cy0, cx1, cy1 = crop
    x0, y0, x1, y1 = sub
    wy = feather(cy0, cy1 - cy0, shape[0], ramp, y0, y1)
    wx = feather(cx0, cx1 - cx0, shape[1], ramp, x0, x1)
    return wy[:, None] * wx[None, :]


def blend_weights(crops: Sequence[Box], ramps: Sequence[float], shape: tuple[int, int], index: int,
                  sub: Box | None = None) -> tuple[Box, np.ndarray]:
    """Normalised blending weight of region ``index`` over its (clipped) box, or over the part
    ``sub`` of it (the same values: every pixel's weight depends only on its position).

    Weight = w_i / max(1, sum_j w_j): a weighted average where regions overlap (their ramps sum to
    at least 1 there when overlaps are at least one ramp wide, as with the tiles), and a smooth
    fade to 0 at a lone region's interior border. Returns (box, weights (h, w) float32).
    """
    box = _clip_box(crops[index], shape)
    if sub is not None:
        box = intersect_box(box, sub)
    if box is None:
        raise ValueError("region lies outside the image (or the requested part)")
    own = _weight(crops[index], ramps[index], shape, box)
    total = own.copy()
    for j, crop in enumerate(crops):
        if j == index:
            continue
        inter = intersect_box(box, _clip_box(crop, shape))
        if inter is None:
            continue
        x0, y0, x1, y1 = inter
        total[y0 - box[1] : y1 - box[1], x0 - box[0] : x1 - box[0]] += _weight(crop, ramps[j], shape, inter)
    np.maximum(total, 1.0, out=total)
    own /= total
    return box, own


def coverage(crops: Sequence[Box], ramps: Sequence[float], shape: tuple[int, int], sub: Box, step: int = 1) -> np.ndarray:
    """Sum of the feather weights of all regions over the image box ``sub`` (every ``step``-th
    pixel, starting at ``step // 2``). >= 1 where the regions fully cover a pixel."""
    x0, y0, x1, y1 = sub
    ys = slice(step // 2, None, step)
    out = np.zeros(((y1 - y0 - step // 2 + step - 1) // step, (x1 - x0 - step // 2 + step - 1) // step), np.float32)
    for crop, ramp in zip(crops, ramps):
        inter = intersect_box(sub, _clip_box(crop, shape))
        if inter is None:
            continue
        wy = np.zeros(y1 - y0, np.float32)
        wx = np.zeros(x1 - x0, np.float32)
        wy[inter[1] - y0 : inter[3] - y0] = feather(crop[1], crop[3] - crop[1], shape[0], ramp, inter[1], inter[3])
        wx[inter[0] - x0 : inter[2] - x0] = feather(crop[0], crop[2] - crop[0], shape[1], ramp, inter[0], inter[2])
        out += wy[ys][:, None] * wx[ys][None, :]
    return out


def _clip_box(box: Box | None, shape: tuple[int, int]) -> Box | None:
    if box is None:
        return None
    x0, y0, x1, y1 = box
    x0, y0 = max(0, int(x0)), max(0, int(y0))
    x1, y1 = min(int(shape[1]), int(x1)), min(int(shape[0]), int(y1))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def intersect_box(a: Box | None, b: Box | None) -> Box | None:
    """The intersection of two boxes, or None when they do not overlap (or either is None)."""
    if a is None or b is None:
        return None
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def clip_box(box: Box, shape: tuple[int, int]) -> Box | None:
    """``box`` clipped to an image of ``shape`` (H, W); None when nothing is left."""
    return _clip_box(box, shape)
