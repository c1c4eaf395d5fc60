"""Full-resolution plumbing around the native-resolution model (no torch here).

The model runs on square crops at its native size ``n`` (256 px for ``small``). This module

* plans the regions: one framed crop per face (:func:`face_regions`) or, without faces,
  overlapping tiles at a plausible face scale (:func:`tile_regions`);
* cuts a crop out of the photo with reflection padding at the borders (:func:`extract_crop`) and
  brings it to the model's size (:func:`to_native`);
* measures the crop's native-resolution detail (:func:`detail_gain`): the high-pass the model
  never sees, and how much of it inside a blemish exceeds the grain of the surrounding skin;
* turns a native-resolution correction back into a full-resolution one without blurring skin
  (:func:`full_res_delta`), by frequency separation: the model's low-frequency correction is
  upsampled (the *delta*, never the image), and inside the mask the photo's own high-frequency
  band is attenuated toward the local skin grain, so the blemish's sharp outline goes while pores
  and grain stay;
* assembles full-resolution masks from per-region native masks (:func:`assemble_mask`) and
  brings a full-resolution user mask down to a crop's native grid with max-pooling so thin
  brush strokes survive (:func:`mask_to_native`).

Every full-resolution float buffer is confined to one region's box.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from engine.compositor import Box, blend_weights, clip_box
from engine.errors import ImageError
from engine.faces import face_crop
from engine.imageio import to_float

__all__ = [
    "Region",
    "MIN_SIDE",
    "MASK_FLOOR",
    "FACE_RAMP",
    "TILE_OVERLAP",
    "check_image",
    "face_regions",
    "tile_regions",
    "extract_crop",
    "to_native",
    "resize",
    "detail_gain",
    "full_res_delta",
    "assemble_mask",
    "mask_to_native",
    "crop_window",
]

#: Smallest photo side the pipeline accepts.
MIN_SIDE = 64
#: Predicted mask values below this (half an 8-bit step) are set to exactly 0.
MASK_FLOOR = 0.5 / 255.0
#: Feather ramp of a face crop, as a fraction of its side (the face fills the central ~62 %).
FACE_RAMP = 0.15
#: Tile overlap (and feather ramp) as a fraction of the tile side.
TILE_OVERLAP = 0.25


@dataclass(frozen=True)
class Region:
    """A square crop the model runs on. ``crop`` may extend past the image; ``box`` is its part inside."""

    crop: Box
    box: Box
    ramp: float
    kind: str  # "face" | "tile"
    face: Box | None = None

    @property
    def side(self) -> int:
        return self.crop[2] - self.crop[0]


def check_image(image: object, name: str = "image") -> np.ndarray:
    """Validate an ``HxWx3`` RGB ``uint8``/``uint16`` photo of at least :data:`MIN_SIDE` px a side."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"The {name} must be a NumPy array, not {type(image).__name__}.")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"The {name} must be an RGB image of shape HxWx3, but has shape {image.shape}.")
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"The {name} must be 8-bit or 16-bit (uint8/uint16), not {image.dtype}.")
    h, w = image.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageError(f"The {name} is only {w}x{h} pixels; photos must be at least {MIN_SIDE} pixels on each side.")
    return image


def face_regions(shape: tuple[int, int], faces: Sequence[Box]) -> list[Region]:
    """One framed square crop per face box."""
    out = []
    for face in faces:
        crop = face_crop(face)
        box = clip_box(crop, shape)
        if box is not None:
            out.append(Region(crop, box, FACE_RAMP * (crop[2] - crop[0]), "face", tuple(face)))  # type: ignore[arg-type]
    return out


def _positions(length: int, tile: int, overlap: float) -> list[int]:
    if tile >= length:
        return [0]
    stride = tile * (1.0 - overlap)
    n = int(np.ceil((length - tile) / stride)) + 1
    return [int(round(i * (length - tile) / (n - 1))) for i in range(n)]


def tile_regions(shape: tuple[int, int]) -> list[Region]:
    """Overlapping square tiles of about half the short side (a plausible head-and-shoulders
    scale), overlapping by at least :data:`TILE_OVERLAP`, covering the whole image."""
    h, w = int(shape[0]), int(shape[1])
    side = max(MIN_SIDE, min(h, w) // 2)
    side = min(side, h, w)
    ramp = TILE_OVERLAP * side
    out = []
    for y in _positions(h, side, TILE_OVERLAP):
        for x in _positions(w, side, TILE_OVERLAP):
            crop = (x, y, x + side, y + side)
            out.append(Region(crop, crop, ramp, "tile"))
    return out


def crop_window(region: Region) -> tuple[slice, slice]:
    """Slices of the crop (S x S) that correspond to ``region.box`` in the image."""
    cx0, cy0 = region.crop[0], region.crop[1]
    x0, y0, x1, y1 = region.box
    return slice(y0 - cy0, y1 - cy0), slice(x0 - cx0, x1 - cx0)


def extract_crop(image: np.ndarray, region: Region) -> np.ndarray:
    """The region's square crop (same dtype), padded by reflection where it leaves the image."""
    x0, y0, x1, y1 = region.box
    cx0, cy0, cx1, cy1 = region.crop
    part = image[y0:y1, x0:x1]
    top, left, bottom, right = y0 - cy0, x0 - cx0, cy1 - y1, cx1 - x1
    if top == left == bottom == right == 0:
        return part
    # Reflect101 needs more than one pixel; very large pads reflect repeatedly.
    mode = cv2.BORDER_REFLECT_101 if min(part.shape[:2]) > 1 else cv2.BORDER_REPLICATE
    return cv2.copyMakeBorder(np.ascontiguousarray(part), top, bottom, left, right, mode)


def resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to ``size`` = (width, height): area averaging down, bilinear up."""
    h, w = arr.shape[:2]
    if (w, h) == tuple(size):
        return arr
    interp = cv2.INTER_AREA if size[0] <= w and size[1] <= h else cv2.INTER_LINEAR
    return cv2.resize(arr, tuple(size), interpolation=interp)


def to_native(crop: np.ndarray, n: int) -> np.ndarray:
    """``n x n x 3`` float32 in [0, 1] model input from a full-resolution crop."""
    return to_float(resize(crop, (n, n)))


def _luma(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def detail_gain(crop: np.ndarray, x_n: np.ndarray, mask_n: np.ndarray) -> np.ndarray:
    """Native-resolution gain in [0, 1] for the crop's high-frequency band inside the mask.

    ``hp`` = crop − upsampled native crop (the detail the model never sees). Its local energy per
    native pixel is compared with the energy of the surrounding skin (a wide average that leaves
    out the predicted imperfections); where the local detail is stronger (a blemish's rim, a
    scar's edge) the gain scales it down to the skin's grain, elsewhere it is 1 (grain is kept).
    """
    n = mask_n.shape[0]
    s = crop.shape[0]
    if s <= n:  # the model sees every pixel: nothing to attenuate
        return np.ones((n, n), np.float32)
    lum = _luma(to_float(crop))
    hp = lum - resize(_luma(x_n), (s, s))
    del lum
    np.multiply(hp, hp, out=hp)
    energy = resize(hp, (n, n))
    del hp
    skin = np.clip(1.0 - mask_n, 0.0, 1.0).astype(np.float32)
    sigma = max(2.0, n / 32.0)
    num = cv2.GaussianBlur(energy * skin, (0, 0), sigma)
    den = cv2.GaussianBlur(skin, (0, 0), sigma)
    wide = cv2.GaussianBlur(energy, (0, 0), sigma)
    ref = np.where(den > 0.05, num / np.maximum(den, 1e-6), wide)
    eps = np.float32((0.5 / 255.0) ** 2)
    gain = np.sqrt((ref + eps) / (energy + eps))
    return np.clip(gain, 0.0, 1.0).astype(np.float32)


def full_res_delta(
    image: np.ndarray, region: Region, x_n: np.ndarray, delta_n: np.ndarray, gain_n: np.ndarray
) -> np.ndarray:
    """Full-resolution correction (float32, [0, 1] units, unmasked) over ``region.box``.

    low band: the native correction ``delta_n`` upsampled; high band: ``(gain - 1) * hp`` where
    ``hp`` is the photo's detail above the model's resolution (pores kept where gain is 1).
    """
    s = region.side
    ys, xs = crop_window(region)
    x0, y0, x1, y1 = region.box
    out = resize(delta_n, (s, s))[ys, xs]
    out = np.ascontiguousarray(out, dtype=np.float32)
    gain = resize(gain_n, (s, s))[ys, xs]
    if s > x_n.shape[0] and float(gain.min()) < 1.0:
        hp = to_float(image[y0:y1, x0:x1])
        hp -= resize(x_n, (s, s))[ys, xs]
        gain = gain - np.float32(1.0)
        hp *= gain[..., None]
        out += hp
    return out


def assemble_mask(shape: tuple[int, int], regions: Sequence[Region], masks_n: Sequence[np.ndarray]) -> np.ndarray:
    """Full-resolution float32 mask (H x W) from each region's native mask, feather-blended."""
    h, w = int(shape[0]), int(shape[1])
    out = np.zeros((h, w), np.float32)
    crops = [r.crop for r in regions]
    ramps = [r.ramp for r in regions]
    for i, (region, m_n) in enumerate(zip(regions, masks_n)):
        box, wgt = blend_weights(crops, ramps, (h, w), i)
        ys, xs = crop_window(region)
        up = resize(np.ascontiguousarray(m_n, dtype=np.float32), (region.side, region.side))[ys, xs]
        x0, y0, x1, y1 = box
        out[y0:y1, x0:x1] += up * wgt
    for region in regions:  # everything outside the boxes is already exactly 0
        x0, y0, x1, y1 = region.box
        part = out[y0:y1, x0:x1]
        part[part < MASK_FLOOR] = 0.0
        np.minimum(part, 1.0, out=part)
    return out


def mask_to_native(mask_box: np.ndarray, region: Region, n: int, fill: np.ndarray | None = None) -> np.ndarray:
    """A full-resolution mask cut to ``region.box`` (``mask[y0:y1, x0:x1]``), max-pooled to the
    crop's ``n x n`` native grid.

    Outside the image (padding) the crop takes ``fill`` (native, e.g. the predicted mask) or 0.
    Max-pooling keeps a one-pixel brush stroke at full strength on the native grid.
    """
    s = region.side
    ys, xs = crop_window(region)
    canvas = np.zeros((s, s), np.float32)
    canvas[ys, xs] = mask_box
    if s <= n:
        out = resize(canvas, (n, n))
    else:
        k = int(np.ceil(s / n))
        grown = cv2.dilate(canvas, np.ones((k, k), np.uint8)) if k > 1 else canvas
        out = cv2.resize(grown, (n, n), interpolation=cv2.INTER_NEAREST)
    if fill is not None and (ys.start > 0 or xs.start > 0 or ys.stop < s or xs.stop < s):
        inside = np.zeros((s, s), np.uint8)
        inside[ys, xs] = 1
        inside_n = cv2.resize(inside, (n, n), interpolation=cv2.INTER_NEAREST).astype(bool)
        out = np.where(inside_n, out, fill).astype(np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
