"""Qt-free mask editing: soft brush strokes and a patch-based undo/redo history.

The editable mask is a full-resolution ``float32`` array in [0, 1]. A stroke touches the mask in
fixed-size tiles; for each touched tile it keeps the pre-stroke values, so an undo record holds
only the bounding-box patches a stroke changed (never a copy of the whole mask).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

TILE = 256

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), photo pixels


@dataclass(frozen=True)
class Brush:
    """Brush settings. ``size`` is the diameter in photo pixels; ``hardness`` and ``opacity`` in [0, 1]."""

    size: float = 40.0
    hardness: float = 0.5
    opacity: float = 1.0
    erase: bool = False


def brush_profile(radius: float, hardness: float, cx: float, cy: float, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Coverage in [0, 1] of a round brush centred at (cx, cy) over the pixel window (x0, y0, w, h).

    Fully opaque inside ``radius * hardness``; a smooth (cosine) fall-off to 0 at ``radius``.
    """
    ys = np.arange(y0, y0 + h, dtype=np.float32) + 0.5 - cy
    xs = np.arange(x0, x0 + w, dtype=np.float32) + 0.5 - cx
    d = np.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2)
    r = max(float(radius), 0.5)
    inner = r * float(np.clip(hardness, 0.0, 1.0))
    if r - inner < 1e-3:
        return (d <= r).astype(np.float32)
    t = np.clip((d - inner) / (r - inner), 0.0, 1.0)
    return (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)


def paint(under: np.ndarray, coverage: np.ndarray, erase: bool = False, opacity: float = 1.0) -> np.ndarray:
    """A stroke's result over the mask ``under`` it was painted on: each pixel moves toward 1 (or 0
    when erasing) by ``opacity`` times the stroke's ``coverage`` there (0 leaves it as it was)."""
    target = 0.0 if erase else 1.0
    return (under + (target - under) * (float(np.clip(opacity, 0.0, 1.0)) * coverage)).astype(np.float32, copy=False)


@dataclass
class Patch:
    """One changed rectangle of the mask: values before and after an edit."""

    rect: Rect
    before: np.ndarray
    after: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.before.nbytes + self.after.nbytes)


@dataclass
class Edit:
    """One undoable edit (a brush stroke or a reset), stored as patches."""

    label: str
    patches: list[Patch] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.patches)

    def bounds(self) -> Rect | None:
        return union_rects(p.rect for p in self.patches)


def union_rects(rects: Iterable[Rect]) -> Rect | None:
    rects = list(rects)
    if not rects:
        return None
    return (min(r[0] for r in rects), min(r[1] for r in rects), max(r[2] for r in rects), max(r[3] for r in rects))


class Stroke:
    """A brush stroke being painted. Coverage accumulates as the max over stamps, so dabbing
    over the same place within one stroke never exceeds the brush opacity."""

    def __init__(self, mask: np.ndarray, brush: Brush) -> None:
        self.mask = mask
        self.brush = brush
        self._orig: dict[tuple[int, int], np.ndarray] = {}
        self._cov: dict[tuple[int, int], np.ndarray] = {}
        self._last: tuple[float, float] | None = None

    def _tile_rect(self, tx: int, ty: int) -> Rect:
        h, w = self.mask.shape
        return tx * TILE, ty * TILE, min((tx + 1) * TILE, w), min((ty + 1) * TILE, h)

    def stamp(self, cx: float, cy: float) -> Rect | None:
        """Apply one dab centred at photo coordinates (cx, cy); returns the changed rectangle."""
        h, w = self.mask.shape
        r = self.brush.size / 2.0
        x0, y0 = max(int(np.floor(cx - r)), 0), max(int(np.floor(cy - r)), 0)
        x1, y1 = min(int(np.ceil(cx + r)) + 1, w), min(int(np.ceil(cy + r)) + 1, h)
        if x0 >= x1 or y0 >= y1:
            return None
        for ty in range(y0 // TILE, (y1 - 1) // TILE + 1):
            for tx in range(x0 // TILE, (x1 - 1) // TILE + 1):
                rx0, ry0, rx1, ry1 = self._tile_rect(tx, ty)
                key = (tx, ty)
                if key not in self._orig:
                    self._orig[key] = self.mask[ry0:ry1, rx0:rx1].copy()
                    self._cov[key] = np.zeros((ry1 - ry0, rx1 - rx0), np.float32)
                sx0, sy0, sx1, sy1 = max(x0, rx0), max(y0, ry0), min(x1, rx1), min(y1, ry1)
                prof = brush_profile(r, self.brush.hardness, cx, cy, sx0, sy0, sx1 - sx0, sy1 - sy0)
                cov = self._cov[key][sy0 - ry0:sy1 - ry0, sx0 - rx0:sx1 - rx0]
                np.maximum(cov, prof, out=cov)
                orig = self._orig[key][sy0 - ry0:sy1 - ry0, sx0 - rx0:sx1 - rx0]
                self.mask[sy0:sy1, sx0:sx1] = paint(orig, cov, self.brush.erase, self.brush.opacity)
        return x0, y0, x1, y1

    def line_to(self, cx: float, cy: float) -> Rect | None:
        """Stamp along the segment from the previous point to (cx, cy) with spacing ~15 % of the size."""
        if self._last is None:
            self._last = (cx, cy)
            return self.stamp(cx, cy)
        lx, ly = self._last
        dist = float(np.hypot(cx - lx, cy - ly))
        step = max(self.brush.size * 0.15, 0.75)
        n = max(int(np.ceil(dist / step)), 1)
        rects = []
        for i in range(1, n + 1):
            t = i / n
            rc = self.stamp(lx + (cx - lx) * t, ly + (cy - ly) * t)
            if rc is not None:
                rects.append(rc)
        self._last = (cx, cy)
        return union_rects(rects)

    def finish(self, label: str = "Brush stroke") -> Edit | None:
        """Close the stroke and return its undo record (None if it changed nothing)."""
        patches = []
        for (tx, ty), before in sorted(self._orig.items()):
            x0, y0, x1, y1 = self._tile_rect(tx, ty)
            after = self.mask[y0:y1, x0:x1]
            changed = np.nonzero(np.any(before != after, axis=1))[0]
            if changed.size == 0:
                continue
            cols = np.nonzero(np.any(before != after, axis=0))[0]
            a, b = int(changed[0]), int(changed[-1]) + 1
            c, d = int(cols[0]), int(cols[-1]) + 1
            patches.append(Patch((x0 + c, y0 + a, x0 + d, y0 + b), before[a:b, c:d].copy(), after[a:b, c:d].copy()))
        self._orig.clear()
        self._cov.clear()
        return Edit(label, patches) if patches else None


def diff_edit(old: np.ndarray, new: np.ndarray, label: str) -> Edit | None:
    """Undo record turning ``old`` into ``new`` (tile-wise bounding boxes of the differences)."""
    if old.shape != new.shape:
        raise ValueError("masks differ in size")
    h, w = old.shape
    patches = []
    for y0 in range(0, h, TILE):
        for x0 in range(0, w, TILE):
            a, b = old[y0:y0 + TILE, x0:x0 + TILE], new[y0:y0 + TILE, x0:x0 + TILE]
            diff = a != b
            if not diff.any():
                continue
            rows, cols = np.nonzero(diff.any(axis=1))[0], np.nonzero(diff.any(axis=0))[0]
            r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            patches.append(Patch((x0 + c0, y0 + r0, x0 + c1, y0 + r1), a[r0:r1, c0:c1].copy(), b[r0:r1, c0:c1].copy()))
    return Edit(label, patches) if patches else None


class History:
    """Undo/redo stack of :class:`Edit` records with a memory cap (oldest records are dropped)."""

    def __init__(self, max_bytes: int = 512 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._undo: list[Edit] = []
        self._redo: list[Edit] = []

    def push(self, edit: Edit) -> None:
        self._undo.append(edit)
        self._redo.clear()
        while len(self._undo) > 1 and self.nbytes > self.max_bytes:
            self._undo.pop(0)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._undo) + sum(e.nbytes for e in self._redo)

    def can_undo(self) -> bool:
        return bool(self._undo)

    def can_redo(self) -> bool:
        return bool(self._redo)

    def undo(self, mask: np.ndarray) -> Edit | None:
        if not self._undo:
            return None
        edit = self._undo.pop()
        for p in reversed(edit.patches):
            x0, y0, x1, y1 = p.rect
            mask[y0:y1, x0:x1] = p.before
        self._redo.append(edit)
        return edit

    def redo(self, mask: np.ndarray) -> Edit | None:
        if not self._redo:
            return None
        edit = self._redo.pop()
        for p in edit.patches:
            x0, y0, x1, y1 = p.rect
            mask[y0:y1, x0:x1] = p.after
        self._undo.append(edit)
        return edit

    def clear(self) -> None:
        self._undo.clear()
        self._redo.clear()
