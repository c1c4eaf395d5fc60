"""Steps 4 and 5 of the run-time path: a region in and out of the model's working scale, and the
full-resolution result assembled from the regions (no torch here).

* :func:`extract_crop` cuts a region's square crop out of the photo (reflection padding at the
  borders) and :func:`to_work` brings it to the working size ``n``; :func:`mask_to_work` does
  the same for a full-resolution mask, max-pooling so thin brush strokes survive;
* :func:`detail_gain` measures the crop's detail above the working resolution (what the model
  never sees) and how much of it inside a blemish exceeds the grain of the surrounding skin;
* :func:`full_res_delta` turns a working-resolution correction back into a full-resolution one
  without blurring skin, by frequency separation: the model's correction is upsampled (the
  *delta*, never the image), and inside the mask the photo's own detail is attenuated toward the
  local skin grain, so the blemish's sharp outline goes while pores and grain stay;
* :func:`assemble_mask` and :func:`assemble_correction` combine the regions' results into one
  full-resolution mask and one :class:`~engine.compositor.Correction` (feathered where regions
  overlap; tier-1 regions, the skin tiles, only fill what the face crops leave).

Every full-resolution float buffer is confined to one region's box.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from engine.compositor import Correction, CorrectionBuilder, blend_weights, coverage, dtype_max
from engine.errors import ImageError
from engine.imageio import to_float
from engine.regions import Region

__all__ = [
    "MIN_SIDE",
    "MASK_FLOOR",
    "check_image",
    "extract_crop",
    "to_work",
    "resize",
    "detail_gain",
    "full_res_delta",
    "region_weights",
    "assemble_mask",
    "assemble_correction",
    "mask_to_work",
    "crop_window",
]

#: Smallest photo side the pipeline accepts.
MIN_SIDE = 64
#: Predicted mask values below this (half an 8-bit step) are set to exactly 0.
MASK_FLOOR = 0.5 / 255.0
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


def to_work(crop: np.ndarray, n: int) -> np.ndarray:
    """``n x n x 3`` float32 in [0, 1] model input from a full-resolution crop."""
    return to_float(resize(crop, (n, n)))


def _luma(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def detail_gain(crop: np.ndarray, x_n: np.ndarray, mask_n: np.ndarray) -> np.ndarray:
    """Working-resolution gain in [0, 1] for the crop's high-frequency band inside the mask.

    ``hp`` = crop − upsampled working crop (the detail the model never sees). Its local energy per
    working pixel is compared with the energy of the surrounding skin (a wide average that leaves
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

    low band: the working-scale correction ``delta_n`` upsampled; high band: ``(gain - 1) * hp`` where
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


def region_weights(regions: Sequence[Region], shape: tuple[int, int], index: int) -> np.ndarray:
    """Feathered blending weight (h, w) of ``regions[index]`` over its box.

    Regions of the same tier share overlaps by a normalised weighted average; a tier-1 region
    (a skin tile) only takes the share that the tier-0 regions (the face crops) leave.
    """
    me = regions[index]
    same = [r for r in regions if r.tier == me.tier]
    _, wgt = blend_weights([r.crop for r in same], [r.ramp for r in same], shape, same.index(me))
    above = [r for r in regions if r.tier < me.tier]
    if above:
        wgt *= 1.0 - np.minimum(coverage([r.crop for r in above], [r.ramp for r in above], shape, me.box), 1.0)
    return wgt


def assemble_mask(shape: tuple[int, int], regions: Sequence[Region], masks_n: Sequence[np.ndarray]) -> np.ndarray:
    """Full-resolution float32 mask (H x W) from each region's working-scale mask, feather-blended."""
    h, w = int(shape[0]), int(shape[1])
    out = np.zeros((h, w), np.float32)
    for i, (region, m_n) in enumerate(zip(regions, masks_n)):
        wgt = region_weights(regions, (h, w), i)
        ys, xs = crop_window(region)
        up = resize(np.ascontiguousarray(m_n, dtype=np.float32), (region.side, region.side))[ys, xs]
        x0, y0, x1, y1 = region.box
        out[y0:y1, x0:x1] += up * wgt
    for region in regions:  # everything outside the boxes is already exactly 0
        x0, y0, x1, y1 = region.box
        part = out[y0:y1, x0:x1]
        part[part < MASK_FLOOR] = 0.0
        np.minimum(part, 1.0, out=part)
    return out


def assemble_correction(
    image: np.ndarray,
    mask: np.ndarray,
    regions: Sequence[Region],
    results: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray] | None],
    only: Sequence[np.ndarray | None] | None = None,
) -> Correction:
    """The full-resolution :class:`Correction` of ``image`` for ``mask`` (H x W in [0, 1]).

    ``results[i]`` is region i's ``(x_n, delta_n, gain_n)`` (working input, the model's
    correction and the detail gain), or None when the region has nothing to add. The correction
    is ``mask x weight x full_res_delta`` summed over the regions; ``only[i]`` (a bool map over
    region i's box, or None) restricts region i to those pixels (a brushed extra region
    corrects only the edited pixels).
    """
    shape = (int(image.shape[0]), int(image.shape[1]))
    top = np.float32(dtype_max(image.dtype))
    builder = CorrectionBuilder(shape, image.dtype, [r.box for r in regions])
    for i, (region, res) in enumerate(zip(regions, results)):
        if res is None:
            continue
        x0, y0, x1, y1 = region.box
        weight = mask[y0:y1, x0:x1]
        if only is not None and only[i] is not None:
            weight = weight * only[i]
        if not weight.any():
            continue
        x_n, delta_n, gain_n = res
        d = full_res_delta(image, region, x_n, delta_n, gain_n)
        wgt = region_weights(regions, shape, i)
        wgt *= weight
        wgt *= top
        d *= wgt[..., None]
        builder.add(region.box, d)
        del d, wgt
    return builder.build([r.box for r in regions])


def mask_to_work(mask_box: np.ndarray, region: Region, fill: np.ndarray | None = None) -> np.ndarray:
    """A full-resolution mask cut to ``region.box`` (``mask[y0:y1, x0:x1]``), max-pooled to the
    region's ``n x n`` working grid.

    Outside the image (padding) the crop takes ``fill`` (working grid, e.g. the predicted mask)
    or 0. Max-pooling keeps a one-pixel brush stroke at full strength on the working grid.
    """
    s, n = region.side, region.n
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
