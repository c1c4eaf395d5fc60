"""Step 3 of the run-time path: plan the regions the model runs on, and the scale it works at.

The model was trained with skin at one physical scale, ``ModelConfig.work_px_per_mm`` pixels per
millimetre (a 3 mm papule is about 5 px there). Every region of a photo is brought to that scale
before the model sees it, so a blemish reaches the model at the size training gave it, whether
the photo is a 0.3 MP crop or a 60 MP frame:

* **faces**: one square crop per detected face, :data:`FACE_CONTEXT` face widths a side (forehead
  to chin with some neck and hair), scaled by the face's own ``px_per_mm`` (from the detector's
  landmarks); a large face runs at a higher resolution than a small one;
* **the skin beside the faces**: overlapping square tiles at the *photo's* scale (the sure faces'
  median, or the user's "blemish size", or :data:`NO_FACE_FIELD_MM` across the short side when
  there is no face), leaving out tiles without skin-coloured pixels and tiles that a face crop
  already covers. With faces the detector is sure of, tiles are planned around them (ears, neck,
  shoulders, chest: :data:`NEIGHBOURHOOD`); without one (a close-up of skin, a back, a face the
  detector missed or an unsure detection) over the whole photo, so a false or missed detection
  never leaves the skin out. When the tiles would be more than :data:`MAX_TILES`, they are
  planned at a coarser scale (said in the message); tiles are never upscaled.

Faces are tier 0 and tiles tier 1: where both cover a pixel, the face's result is used
(engine.pipeline weighs tier 1 by what tier 0 leaves).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from engine.compositor import Box, clip_box, coverage, intersect_box
from engine.faces import Face

__all__ = [
    "Region",
    "Plan",
    "plan_regions",
    "extra_regions",
    "photo_scale",
    "TYPICAL_BLEMISH_MM",
    "FACE_CONTEXT",
    "NO_FACE_FIELD_MM",
    "MAX_TILES",
    "TILE_WORK",
    "MIN_WORK",
]

#: Diameter of a typical blemish (mm): the "blemish size" a user sets is this many mm in pixels.
TYPICAL_BLEMISH_MM = 3.0
#: Side of a face crop, in face widths.
FACE_CONTEXT = 1.75
#: Crop centre below the face box's centre, in face widths (negative: up, toward the forehead).
FACE_SHIFT_Y = -0.08
#: Feather ramp of a face crop, as a fraction of its side.
FACE_RAMP = 0.12
#: Tile side at the working scale (px) and overlap (also the feather ramp) as a fraction of it.
TILE_WORK = 384
TILE_OVERLAP = 0.25
#: Most tiles planned for the rest of the photo; beyond it the tiles are planned coarser.
MAX_TILES = 6
#: With sure faces, tiles are planned only this many face-crop sides around each face crop
#: (half again as far downwards: neck, shoulders, chest).
NEIGHBOURHOOD = 0.4
#: Tiles are never upscaled (faces may be, up to MAX_UPSCALE): in a small photo the skin away from
#: the faces runs at the photo's own resolution.
MAX_TILE_UPSCALE = 1.0
#: Without faces (and without a blemish size from the user) the photo's short side is taken to
#: span this many millimetres of skin (a close-up of a cheek, a shoulder, a back).
NO_FACE_FIELD_MM = 150.0
#: Most a region is upscaled to reach the working scale (tiny faces in a group photo).
MAX_UPSCALE = 4.0
#: Smallest working side (px) of a region, and the multiple every working side is rounded to.
MIN_WORK = 64
MULTIPLE = 16
#: The photo's scale comes from faces at least this sure (a lone unsure "face" in a close-up of
#: skin gets its own crop, but does not set the scale of the rest of the photo).
SURE_FACE = 0.8
#: A tile is kept when at least this share of its (low-resolution) pixels has a skin colour.
MIN_SKIN = 0.08


@dataclass(frozen=True)
class Region:
    """A square crop of the photo the model runs on at ``n`` x ``n`` working pixels.

    ``crop`` may extend past the image (the pipeline pads by reflection); ``box`` is its part
    inside. ``tier`` 0 (faces) takes precedence over tier 1 (tiles, brushed extras).
    """

    crop: Box
    box: Box
    n: int
    ramp: float
    kind: str  # "face" | "tile" | "extra"
    tier: int
    face: Face | None = None

    @property
    def side(self) -> int:
        return self.crop[2] - self.crop[0]

    @property
    def scale(self) -> float:
        """Working pixels per photo pixel."""
        return self.n / self.side


@dataclass
class Plan:
    """What :func:`plan_regions` decided, with a sentence for the user."""

    regions: list[Region]
    faces: list[Face]
    px_per_mm: float  # the photo's scale (outside the faces)
    source: str  # "faces" | "user" | "default": where px_per_mm came from
    tile_scale: float  # working pixels per photo pixel of the tiles
    message: str = ""
    extras: list[Region] = field(default_factory=list)

    @property
    def blemish_size(self) -> float:
        """Pixels of the photo across a typical (3 mm) blemish at the photo's scale."""
        return TYPICAL_BLEMISH_MM * self.px_per_mm


def _round_work(v: float) -> int:
    return max(MIN_WORK, int(math.ceil(v / MULTIPLE)) * MULTIPLE)


def photo_scale(shape: tuple[int, int], faces: Sequence[Face], blemish_size: float | None = None) -> tuple[float, str]:
    """The photo's scale in px/mm and where it came from: the user's blemish size (px across a
    :data:`TYPICAL_BLEMISH_MM` blemish), else the median of the faces at least :data:`SURE_FACE`
    sure (or the surest of several), else the no-face default."""
    if blemish_size is not None:
        if not (math.isfinite(blemish_size) and blemish_size > 0):
            raise ValueError(f"The blemish size must be a positive number of pixels, not {blemish_size}.")
        return float(blemish_size) / TYPICAL_BLEMISH_MM, "user"
    sure = [f for f in faces if f.score >= SURE_FACE] or ([max(faces, key=lambda f: f.score)] if len(faces) > 1 else [])
    if sure:
        return float(np.median([f.px_per_mm for f in sure])), "faces"
    return min(int(shape[0]), int(shape[1])) / NO_FACE_FIELD_MM, "default"


def _face_region(face: Face, shape: tuple[int, int], scale: float) -> Region | None:
    w = face.width
    side = max(16, int(round(FACE_CONTEXT * w)))
    cx = (face.box[0] + face.box[2]) / 2.0
    cy = (face.box[1] + face.box[3]) / 2.0 + FACE_SHIFT_Y * w
    x0, y0 = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    crop = (x0, y0, x0 + side, y0 + side)
    box = clip_box(crop, shape)
    if box is None:
        return None
    return Region(crop, box, _round_work(side * scale), FACE_RAMP * side, "face", 0, face)


def _positions(length: int, tile: int, overlap: float) -> list[int]:
    if tile >= length:
        return [(length - tile) // 2]
    stride = tile * (1.0 - overlap)
    n = int(math.ceil((length - tile) / stride)) + 1
    return [int(round(i * (length - tile) / (n - 1))) for i in range(n)]


def _near(box: Box, areas: list[Box] | None) -> bool:
    return areas is None or any(intersect_box(box, a) is not None for a in areas)


def _tiles(shape: tuple[int, int], scale: float, faces: list[Region], skin: np.ndarray | None, areas: list[Box] | None = None) -> list[Region]:
    h, w = int(shape[0]), int(shape[1])
    side = max(16, int(round(TILE_WORK / scale)))
    if max(h, w) <= 1.25 * side:  # one tile, a little larger, covers the whole photo
        side = max(h, w)
    n = _round_work(side * scale)
    ramp = TILE_OVERLAP * side
    out = []
    for y in _positions(h, side, TILE_OVERLAP):
        for x in _positions(w, side, TILE_OVERLAP):
            crop = (x, y, x + side, y + side)
            box = clip_box(crop, shape)
            if box is not None and _near(box, areas) and _uncovered_skin(box, shape, faces, skin) >= MIN_SKIN:
                out.append(Region(crop, box, n, ramp, "tile", 1))
    return out


def _uncovered_skin(box: Box, shape: tuple[int, int], faces: list[Region], skin: np.ndarray | None) -> float:
    """Share of ``box`` that is skin-coloured and not already covered by a face crop (sampled on a
    grid of about 32 x 32 points)."""
    x0, y0, x1, y1 = box
    step = max(1, min(x1 - x0, y1 - y0) // 32)
    ys = np.arange(y0 + step // 2, y1, step)
    xs = np.arange(x0 + step // 2, x1, step)
    share = np.ones((ys.size, xs.size), np.float32)
    if skin is not None:
        sy = np.minimum((ys * skin.shape[0]) // shape[0], skin.shape[0] - 1)
        sx = np.minimum((xs * skin.shape[1]) // shape[1], skin.shape[1] - 1)
        share *= skin[np.ix_(sy, sx)]
    if faces:
        cover = coverage([f.crop for f in faces], [f.ramp for f in faces], shape, box, step)
        share *= 1.0 - np.minimum(cover[: ys.size, : xs.size], 1.0)
    return float(share.mean()) if share.size else 0.0


def plan_regions(
    shape: tuple[int, int],
    faces: Sequence[Face],
    work_px_per_mm: float,
    blemish_size: float | None = None,
    skin: np.ndarray | None = None,
) -> Plan:
    """Plan the face crops and the skin tiles of a photo of ``shape`` (H, W).

    ``skin`` is an optional low-resolution bool map of skin-coloured pixels (any size; it is
    mapped onto the photo) used to leave out tiles without skin. ``blemish_size`` (px) overrides
    the scale taken from the faces, for the faces too.
    """
    faces = list(faces)
    px_per_mm, source = photo_scale(shape, faces, blemish_size)
    face_regions = []
    for f in faces:
        s = work_px_per_mm / (px_per_mm if source == "user" else f.px_per_mm)
        r = _face_region(f, shape, min(MAX_UPSCALE, s))
        if r is not None:
            face_regions.append(r)
    tile_scale = min(MAX_TILE_UPSCALE, work_px_per_mm / px_per_mm)
    # With faces YuNet is sure of, tiles cover the skin around them (ears, neck, shoulders, chest);
    # without, the whole photo (a close-up of skin, a shoulder, a face the detector missed).
    areas = None
    if any(f.score >= SURE_FACE for f in faces):
        areas = []
        for r, f in zip(face_regions, faces):
            g = NEIGHBOURHOOD * r.side
            areas.append((int(r.crop[0] - g), int(r.crop[1] - g), int(r.crop[2] + g), int(r.crop[3] + 1.5 * g)))
    coarser = False
    while True:
        tiles = _tiles(shape, tile_scale, face_regions, skin, areas)
        if len(tiles) <= MAX_TILES:
            break
        tile_scale *= 0.8
        coarser = True
    plan = Plan(face_regions + tiles, faces, px_per_mm, source, tile_scale)
    plan.message = _message(plan, len(tiles), coarser, work_px_per_mm)
    return plan


def _message(plan: Plan, n_tiles: int, coarser: bool, work_px_per_mm: float) -> str:
    n = len(plan.faces)
    faces = "No face found" if n == 0 else f"{n} face{'s' if n != 1 else ''} found"
    where = {"faces": "from the faces", "user": "as set", "default": "assumed: no face"}[plan.source]
    size = f"blemish size {plan.blemish_size:.0f} px ({where})"
    parts = [faces, size]
    if n_tiles:
        parts.append(f"{n_tiles} skin tile{'s' if n_tiles != 1 else ''} beside the faces" if n else f"{n_tiles} skin tile{'s' if n_tiles != 1 else ''}")
        if coarser:
            parts.append(f"tiles at {plan.tile_scale * plan.px_per_mm / work_px_per_mm:.0%} of the working scale (a very large photo)")
    elif not plan.regions:
        parts.append("no skin found to retouch")
    return "; ".join(parts)


def extra_regions(changed: np.ndarray, step: int, known: Sequence[Region], shape: tuple[int, int], scale: float) -> list[Region]:
    """Regions for brushed pixels that no planned region fully covers.

    ``changed`` is a bool map of edited pixels on a grid ``step`` times coarser than the photo.
    Each uncovered group of edited cells gets a tile-sized crop at ``scale`` working px per
    photo px (tier 1: they only fill what the planned regions leave).
    """
    import cv2

    h, w = int(shape[0]), int(shape[1])
    padded = (0, 0, w + (-w % step), h + (-h % step))
    cover = coverage([r.crop for r in known], [r.ramp for r in known], (h, w), padded, step)
    cover = cover[: changed.shape[0], : changed.shape[1]]
    # a cell is sampled at its centre: grow the not-fully-covered area by one cell
    uncovered = cv2.dilate((cover < 0.999).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    need = (changed[: uncovered.shape[0], : uncovered.shape[1]] & uncovered).astype(np.uint8)
    if not need.any():
        return []
    base = max(16, int(round(TILE_WORK / scale)))
    _, _, stats, _ = cv2.connectedComponentsWithStats(need, connectivity=8)
    out: list[Region] = []
    for k in np.argsort(-stats[1:, cv2.CC_STAT_AREA]) + 1:
        x, y, bw, bh = (int(v) * step for v in stats[k, :4])
        if any(r.crop[0] + r.ramp <= x and x + bw <= r.crop[2] - r.ramp and r.crop[1] + r.ramp <= y and y + bh <= r.crop[3] - r.ramp for r in out):
            continue  # inside the interior of an extra already planned
        side = int(max(base, max(bw, bh) / (1.0 - 2 * TILE_OVERLAP) + 2))
        cx, cy = x + bw / 2, y + bh / 2
        crop = (int(cx - side / 2), int(cy - side / 2), int(cx - side / 2) + side, int(cy - side / 2) + side)
        box = clip_box(crop, (h, w))
        if box is not None:
            out.append(Region(crop, box, _round_work(side * scale), TILE_OVERLAP * side, "extra", 1))
    return out
