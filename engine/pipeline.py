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
  overlap; tier-1 regions, the skin tiles, only fill what the face crops leave);
* :func:`edit_clusters` and :func:`edit_blend` say where a brushed edit is synthesised: each
  group of edited working pixels on a crop of its own (the edit and :data:`EDIT_MARGIN` working
  pixels around it), its synthesis used only within :data:`EDIT_FEATHER` pixels of the edit.

Every function that maps between the photo and the working grid is *pointwise*: a value at a
photo pixel (or a working pixel) depends on that pixel's position and the inputs, never on which
part is being computed. So a brush stroke's result can be computed for a rectangle only
(``window`` / ``sub`` / ``rect`` arguments) and equals the same rectangle of a full computation
exactly; :func:`work_window` and :func:`photo_reach` give the rectangles that correspond.

Every full-resolution float buffer is confined to one region's box (or the requested rectangle).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import cv2
import numpy as np

from engine.compositor import Box, Correction, CorrectionBuilder, blend_weights, coverage, dtype_max, intersect_box
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
    "edit_maps",
    "crop_window",
    "work_window",
    "photo_reach",
    "grow",
    "union_box",
    "intersect_box",
    "EditCluster",
    "edit_clusters",
    "edit_blend",
    "EDIT_MARGIN",
    "EDIT_JOIN",
    "EDIT_FEATHER",
]

#: Smallest photo side the pipeline accepts.
MIN_SIDE = 64
#: Predicted mask values below this (half an 8-bit step) are set to exactly 0.
MASK_FLOOR = 0.5 / 255.0
#: A brushed edit's synthesis is used this many working pixels around the edited pixels
#: (:func:`edit_blend`: a 3x3 dilation, then a 5x5 Gaussian).
EDIT_FEATHER = 3
#: Edited working pixels closer than 2 * EDIT_JOIN + 2 px (34 px, about 2 cm of skin) are
#: synthesised together, as one cluster.
EDIT_JOIN = 16
#: Context (working px, 2 cm of skin) around a cluster of edits that the model sees. Measured on
#: 40 held-out synthetic pairs with every blemish brushed over the predicted mask: PSNR inside the
#: blemishes 28.71 dB with clusters on crops of margin 32, against 28.47 dB for one run over the
#: whole image (28.63 with margin 48, 28.73 with 24; the model was trained on 128-px crops).
EDIT_MARGIN = 32
#: Crops start and end on the token grid (the transformer's tokens are 8x8 working pixels).
EDIT_ALIGN = 8
#: Rows of photo pixels processed at once where a large box is resampled (bounds the memory).
_STRIP = 256
#: Side of the tiles in which the working grid is resampled to the photo (see _upsample); a
#: correction is assembled in bands of these rows, each only where the mask is not 0.
_TILE = 128


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


def grow(box: Box, d: int) -> Box:
    """``box`` grown by ``d`` on every side (not clipped)."""
    x0, y0, x1, y1 = box
    return (x0 - d, y0 - d, x1 + d, y1 + d)


def union_box(boxes: Sequence[Box | None]) -> Box | None:
    """The bounding box of the boxes that are not None (None when there are none)."""
    bs = [b for b in boxes if b is not None]
    if not bs:
        return None
    return (min(b[0] for b in bs), min(b[1] for b in bs), max(b[2] for b in bs), max(b[3] for b in bs))


def work_window(region: Region, box: Box) -> Box | None:
    """The working pixels of ``region`` whose pooled mask value (:func:`mask_to_work`) reads any
    photo pixel of ``box`` (image coordinates), as a box on the ``n x n`` grid (a safe superset)."""
    b = intersect_box(box, region.box)
    if b is None:
        return None
    s, n = region.side, region.n
    cx0, cy0 = region.crop[0], region.crop[1]
    pad = 2 + int(np.ceil(n / s))  # the pooling window (or the bilinear taps) and rounding

    def axis(lo: int, hi: int) -> tuple[int, int]:
        return max(0, int(np.floor(lo * n / s)) - pad), min(n, int(np.ceil(hi * n / s)) + pad)

    wx0, wx1 = axis(b[0] - cx0, b[2] - cx0)
    wy0, wy1 = axis(b[1] - cy0, b[3] - cy0)
    return (wx0, wy0, wx1, wy1) if wx1 > wx0 and wy1 > wy0 else None


def photo_reach(region: Region, wbox: Box) -> Box | None:
    """The photo pixels of ``region.box`` whose upsampled value (:func:`full_res_delta`) reads any
    working pixel of ``wbox``, in image coordinates (a safe superset)."""
    s, n = region.side, region.n
    cx0, cy0 = region.crop[0], region.crop[1]
    pad = 2 + int(np.ceil(s / n))

    def axis(lo: int, hi: int, c0: int) -> tuple[int, int]:
        return c0 + int(np.floor(lo * s / n)) - pad, c0 + int(np.ceil(hi * s / n)) + pad

    x0, x1 = axis(wbox[0], wbox[2], cx0)
    y0, y1 = axis(wbox[1], wbox[3], cy0)
    return intersect_box((x0, y0, x1, y1), region.box)


def _upsample(arr_n: np.ndarray, region: Region, sub: Box) -> np.ndarray:
    """``arr_n`` (the region's ``n x n`` grid, float32, 1-4 channels) resampled to the crop's
    ``side x side`` pixels, evaluated at the photo pixels of ``sub`` (inside ``region.box``).

    Bilinear with pixel centres aligned (as ``cv2.resize``), evaluated by ``cv2.remap`` on
    coordinates computed from each pixel's position, in fixed :data:`_TILE` x :data:`_TILE` tiles
    of the crop (the same calls whatever ``sub`` is: OpenCV's vectorised loops may round a pixel
    differently depending on where it falls in a call), so any sub-rectangle equals the same part
    of the whole exactly. Downsampling (a region upscaled to reach the working scale) is done
    whole: such regions are smaller than the working grid.
    """
    s, n = region.side, region.n
    cx0, cy0 = region.crop[0], region.crop[1]
    x0, y0, x1, y1 = sub
    if s <= n:
        return np.ascontiguousarray(resize(arr_n, (s, s))[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0], dtype=np.float32)
    f = n / s
    t = _TILE
    X0, Y0, X1, Y1 = x0 - cx0, y0 - cy0, x1 - cx0, y1 - cy0  # crop coordinates
    tx0, ty0 = X0 // t * t, Y0 // t * t
    tx1, ty1 = -(-X1 // t) * t, -(-Y1 // t) * t
    px = ((np.arange(tx0, tx1, dtype=np.float64) + 0.5) * f - 0.5).astype(np.float32)
    py = ((np.arange(ty0, ty1, dtype=np.float64) + 0.5) * f - 0.5).astype(np.float32)
    src = np.ascontiguousarray(arr_n, dtype=np.float32)
    out = np.empty((Y1 - Y0, X1 - X0) + src.shape[2:], np.float32)
    for ty in range(ty0, ty1, t):
        my = np.broadcast_to(py[ty - ty0 : ty - ty0 + t, None], (t, t)).copy()
        r0, r1 = max(Y0, ty), min(Y1, ty + t)
        for tx in range(tx0, tx1, t):
            mx = np.broadcast_to(px[tx - tx0 : tx - tx0 + t], (t, t)).copy()
            tile = cv2.remap(src, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            c0, c1 = max(X0, tx), min(X1, tx + t)
            out[r0 - Y0 : r1 - Y0, c0 - X0 : c1 - X0] = tile[r0 - ty : r1 - ty, c0 - tx : c1 - tx]
    return out


def full_res_delta(
    image: np.ndarray, region: Region, x_n: np.ndarray, delta_n: np.ndarray, gain_n: np.ndarray, sub: Box | None = None
) -> np.ndarray:
    """Full-resolution correction (float32, [0, 1] units, unmasked) over ``sub`` (default: ``region.box``).

    low band: the working-scale correction ``delta_n`` upsampled; high band: ``(gain - 1) * hp`` where
    ``hp`` is the photo's detail above the model's resolution (pores kept where gain is 1).
    Pointwise: the value at a pixel does not depend on ``sub``.
    """
    x0, y0, x1, y1 = sub if sub is not None else region.box
    sub = (x0, y0, x1, y1)
    out = _upsample(delta_n, region, sub)
    if region.side > x_n.shape[0]:
        gain = _upsample(gain_n, region, sub)
        if float(gain.min()) < 1.0:
            hp = to_float(image[y0:y1, x0:x1])
            hp -= _upsample(x_n, region, sub)
            gain -= np.float32(1.0)
            hp *= gain[..., None]
            out += hp
    return out


def region_weights(regions: Sequence[Region], shape: tuple[int, int], index: int, sub: Box | None = None) -> np.ndarray:
    """Feathered blending weight (h, w) of ``regions[index]`` over its box (or over ``sub``, a
    box inside it: the same values).

    Regions of the same tier share overlaps by a normalised weighted average; a tier-1 region
    (a skin tile) only takes the share that the tier-0 regions (the face crops) leave.
    """
    me = regions[index]
    same = [r for r in regions if r.tier == me.tier]
    box, wgt = blend_weights([r.crop for r in same], [r.ramp for r in same], shape, same.index(me), sub)
    above = [r for r in regions if r.tier < me.tier]
    if above:
        wgt *= 1.0 - np.minimum(coverage([r.crop for r in above], [r.ramp for r in above], shape, box), 1.0)
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
    rect: Box | None = None,
) -> Correction:
    """The full-resolution :class:`Correction` of ``image`` for ``mask`` (H x W in [0, 1]).

    ``results[i]`` is region i's ``(x_n, delta_n, gain_n)`` (working input, the model's
    correction and the detail gain), or None when the region has nothing to add. The correction
    is ``mask x weight x full_res_delta`` summed over the regions; ``only[i]`` (a bool map over
    region i's box, or None) restricts region i to those pixels (a brushed extra region
    corrects only the edited pixels).

    With ``rect`` the correction is computed for that part of the photo only (``Correction.rect``):
    ``mask`` then holds the mask over ``rect`` and ``only[i]`` covers region i's box inside
    ``rect``. Each pixel gets exactly the value a computation of the whole photo gives it.
    """
    shape = (int(image.shape[0]), int(image.shape[1]))
    area = (0, 0, shape[1], shape[0]) if rect is None else rect
    ax0, ay0 = area[0], area[1]
    if mask.shape != (area[3] - area[1], area[2] - area[0]):
        raise ValueError(f"mask of shape {mask.shape} does not cover {area}")
    top = np.float32(dtype_max(image.dtype))
    subs = [intersect_box(r.box, area) for r in regions]
    builder = CorrectionBuilder(shape, image.dtype, [b for b in subs if b is not None])
    for i, (region, res, sub) in enumerate(zip(regions, results, subs)):
        if res is None or sub is None:
            continue
        x0, y0, x1, y1 = sub
        weight = mask[y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0]
        if only is not None and only[i] is not None:
            weight = weight * only[i]
        if not weight.any():
            continue
        x_n, delta_n, gain_n = res
        # Computed in bands of rows, each over the columns where the mask is not 0 (a predicted
        # mask is mostly 0): pixels left out are exactly 0, as they would be computed.
        rows = weight.any(axis=1)
        first = (region.crop[1] - y0) % _TILE  # bands on the resampling tiles' rows
        for b0, b1 in zip([0] + list(range(first or _TILE, y1 - y0, _TILE)), list(range(first or _TILE, y1 - y0, _TILE)) + [y1 - y0]):
            band = np.flatnonzero(rows[b0:b1])
            if band.size == 0:
                continue
            r0, r1 = b0 + int(band[0]), b0 + int(band[-1]) + 1
            cols = np.flatnonzero(weight[r0:r1].any(axis=0))
            c0, c1 = int(cols[0]), int(cols[-1]) + 1
            part = (x0 + c0, y0 + r0, x0 + c1, y0 + r1)
            wgt = region_weights(regions, shape, i, part)
            wgt *= weight[r0:r1, c0:c1]
            wgt *= top
            dp = full_res_delta(image, region, x_n, delta_n, gain_n, part)
            dp *= wgt[..., None]
            builder.add(part, dp)
    c = builder.build([r.box for r in regions])
    c.rect = None if rect is None else tuple(int(v) for v in rect)
    return c


def _pool(get, region: Region, window: Box | None, channels: int) -> np.ndarray:
    """Max-pool a box-shaped source to the working grid (see :func:`mask_to_work`), over ``window``.

    ``get(y0, y1, x0, x1)`` returns the source over those rows/columns of ``region.box``
    (box coordinates), ``(h, w)`` or ``(h, w, channels)`` float32 >= 0. Returns
    ``(wh, ww, channels)`` float32 (raw pooled values: not clipped, no fill).
    """
    s, n = region.side, region.n
    wx0, wy0, wx1, wy1 = window if window is not None else (0, 0, n, n)
    ys, xs = crop_window(region)
    if s <= n:  # an upscaled region (smaller than the grid): bilinear, computed whole
        canvas = np.zeros((s, s, channels), np.float32)
        canvas[ys, xs] = get(0, ys.stop - ys.start, 0, xs.stop - xs.start).reshape(ys.stop - ys.start, xs.stop - xs.start, channels)
        out = cv2.resize(canvas, (n, n), interpolation=cv2.INTER_LINEAR).reshape(n, n, channels)
        return out[wy0:wy1, wx0:wx1]
    k = int(np.ceil(s / n))
    h = k // 2  # cv2.dilate's anchor: the window of sample p is [p - h, p - h + k)
    ry = (np.arange(wy0, wy1, dtype=np.int64) * s) // n  # sample rows/cols in crop coordinates
    rx = (np.arange(wx0, wx1, dtype=np.int64) * s) // n
    out = np.zeros((wy1 - wy0, wx1 - wx0, channels), np.float32)
    cx0, cx1 = int(rx[0]) - h, int(rx[-1]) - h + k
    band = max(1, (_STRIP * 4) // k)  # working rows per strip
    kernel = np.ones((k, k), np.uint8)
    for j0 in range(0, wy1 - wy0, band):
        j1 = min(wy1 - wy0, j0 + band)
        cy0, cy1 = int(ry[j0]) - h, int(ry[j1 - 1]) - h + k
        canvas = np.zeros((cy1 - cy0, cx1 - cx0, channels), np.float32)  # zero outside the image
        py0, py1 = max(cy0, ys.start), min(cy1, ys.stop)
        px0, px1 = max(cx0, xs.start), min(cx1, xs.stop)
        if py1 > py0 and px1 > px0:
            part = get(py0 - ys.start, py1 - ys.start, px0 - xs.start, px1 - xs.start)
            canvas[py0 - cy0 : py1 - cy0, px0 - cx0 : px1 - cx0] = part.reshape(py1 - py0, px1 - px0, channels)
        grown = cv2.dilate(canvas, kernel).reshape(canvas.shape)
        out[j0:j1] = grown[np.ix_(ry[j0:j1] - cy0, rx - cx0)]
    return out


def _inside(region: Region, window: Box | None) -> np.ndarray | None:
    """Bool map over ``window`` of the working pixels whose sample lies inside the image (None:
    all of them)."""
    s, n = region.side, region.n
    ys, xs = crop_window(region)
    if ys.start == 0 and xs.start == 0 and ys.stop == s and xs.stop == s:
        return None
    wx0, wy0, wx1, wy1 = window if window is not None else (0, 0, n, n)
    if s <= n:
        inside = np.zeros((s, s), np.uint8)
        inside[ys, xs] = 1
        return cv2.resize(inside, (n, n), interpolation=cv2.INTER_NEAREST).astype(bool)[wy0:wy1, wx0:wx1]
    ry = (np.arange(wy0, wy1, dtype=np.int64) * s) // n
    rx = (np.arange(wx0, wx1, dtype=np.int64) * s) // n
    return ((ry >= ys.start) & (ry < ys.stop))[:, None] & ((rx >= xs.start) & (rx < xs.stop))[None, :]


def mask_to_work(mask_box: np.ndarray, region: Region, fill: np.ndarray | None = None, window: Box | None = None) -> np.ndarray:
    """A full-resolution mask cut to ``region.box`` (``mask[y0:y1, x0:x1]``), max-pooled to the
    region's ``n x n`` working grid (or to the part ``window`` of it, a box on that grid).

    Outside the image (padding) the crop takes ``fill`` (working grid, e.g. the predicted mask)
    or 0. Max-pooling keeps a one-pixel brush stroke at full strength on the working grid:
    working pixel ``j`` takes the largest value among the ``k = ceil(side / n)`` photo pixels
    around ``j * side // n`` (in each direction). Only the photo pixels that ``window`` needs are
    read, in strips, so a small window of a large region costs little.
    """
    out = _pool(lambda y0, y1, x0, x1: mask_box[y0:y1, x0:x1], region, window, 1)[..., 0]
    inside = _inside(region, window) if fill is not None else None
    if inside is not None:
        wx0, wy0, wx1, wy1 = window if window is not None else (0, 0, region.n, region.n)
        out = np.where(inside, out, fill[wy0:wy1, wx0:wx1])
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def edit_maps(
    mask_box: np.ndarray, pred_box: np.ndarray, region: Region, window: Box | None = None, tolerance: float = 1.0 / 255.0
) -> tuple[np.ndarray, np.ndarray]:
    """Where a mask differs from the prediction, on the working grid: ``(changed, user)`` over
    ``window`` (default: the whole ``n x n`` grid), both max-pooled like :func:`mask_to_work`.

    ``changed`` (bool): a working pixel with any photo pixel of its pooling window where
    ``|mask - pred| > tolerance``; ``user`` (float32): the mask itself (0 outside the image).
    """

    def get(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        m = mask_box[y0:y1, x0:x1]
        out = np.empty(m.shape + (2,), np.float32)
        out[..., 0] = m
        diff = cv2.absdiff(np.ascontiguousarray(m, np.float32), np.ascontiguousarray(pred_box[y0:y1, x0:x1], np.float32))
        out[..., 1] = diff > tolerance
        return out

    both = _pool(get, region, window, 2)
    return both[..., 1] > 0, np.clip(both[..., 0], 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Where a brushed edit is synthesised


class EditCluster(NamedTuple):
    """A group of edited working pixels synthesised together.

    ``label``: its number in the label map of :func:`edit_clusters`; ``box``: where its
    synthesis is used (the edited pixels grown by :data:`EDIT_FEATHER`); ``crop``: what the
    model sees (``box`` grown by :data:`EDIT_MARGIN`, on the token grid, inside the region).
    """

    label: int
    box: Box
    crop: Box


def edit_clusters(changed_n: np.ndarray) -> tuple[np.ndarray, list[EditCluster]]:
    """Group the edited working pixels (``changed_n``, bool n x n) into clusters: pixels closer
    than ``2 * EDIT_JOIN + 2`` belong together. Returns the label map (int32; each cluster's
    label covers its pixels grown by EDIT_JOIN, so also every pixel its synthesis is used for)
    and the clusters."""
    h, w = changed_n.shape
    if not changed_n.any():
        return np.zeros((h, w), np.int32), []
    joined = cv2.dilate(changed_n.astype(np.uint8), np.ones((2 * EDIT_JOIN + 1,) * 2, np.uint8))
    count, labels = cv2.connectedComponents(joined, connectivity=8, ltype=cv2.CV_32S)
    ys, xs = np.nonzero(changed_n)
    lab = labels[ys, xs]
    out = []
    for k in range(1, count):
        sel = lab == k
        if not sel.any():
            continue
        kx, ky = xs[sel], ys[sel]
        box = (max(0, int(kx.min()) - EDIT_FEATHER), max(0, int(ky.min()) - EDIT_FEATHER),
               min(w, int(kx.max()) + 1 + EDIT_FEATHER), min(h, int(ky.max()) + 1 + EDIT_FEATHER))
        a = EDIT_ALIGN
        crop = (max(0, (box[0] - EDIT_MARGIN) // a * a), max(0, (box[1] - EDIT_MARGIN) // a * a),
                min(w, -(-(box[2] + EDIT_MARGIN) // a) * a), min(h, -(-(box[3] + EDIT_MARGIN) // a) * a))
        out.append(EditCluster(k, box, crop))
    return labels, out


def edit_blend(changed_n: np.ndarray) -> np.ndarray:
    """Weight (n x n float32 in [0, 1]) of an edit's synthesis against the prediction's: 1 on
    the edited pixels, fading to 0 within :data:`EDIT_FEATHER` pixels around them."""
    changed = changed_n.astype(np.float32)
    c = cv2.dilate(changed, np.ones((3, 3), np.uint8))
    return np.maximum(cv2.GaussianBlur(c, (5, 5), 1.0), changed)
