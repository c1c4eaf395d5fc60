"""Classical facial-skin segmentation (no network).

:func:`skin_mask` finds facial skin by colour and shape:

1. A permissive skin-colour rule in YCrCb (Chai & Ngan style chroma box) and HSV (hue, saturation
   and brightness bounds) gives candidate pixels.
2. The chroma statistics of the largest candidate component are re-estimated and pixels too far
   from them (Mahalanobis distance in Cr/Cb, or much darker than the skin) are dropped; this
   removes most of the lips, brows, eyes and skin-coloured background.
3. Morphological opening/closing, the largest connected components, filling of small holes (pores,
   highlights, blemishes) while keeping large ones (eyes, mouth, nostrils), a slight erosion and a
   soft edge.

Every size is relative to the image size, so the function works at any resolution. It is used by
the blemish synthesiser and the classical baselines (engine.training); :func:`skin_colour`, the
colour rule alone, is used by the run-time pipeline to leave out regions without skin.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from engine.errors import ImageError

__all__ = ["skin_mask", "skin_colour", "foreign_colour_t", "as_float_rgb", "fill_small_holes", "odd"]

# Chroma box on the 8-bit YCrCb scale (slightly wider than Chai & Ngan's 133-173 / 77-127).
_CR_RANGE = (130.5, 180.0)
_CB_RANGE = (80.0, 130.0)
# HSV bounds (OpenCV float HSV: H in degrees, S and V in [0, 1]).
_HUE_MAX = 50.0  # reddish-orange to yellow; also hues >= 340 (pinkish skin)
_HUE_WRAP = 340.0
_SAT_RANGE = (0.035, 0.75)
_VAL_MIN = 0.22
_MAHALANOBIS_MAX = 3.0
# Colours no skin takes in any light (foreign_colour_t): grey or white (a collar, a shirt, the
# white of an eye, a specular highlight), near black (hair, a deep shadow), green to violet.
_GREY_SAT = 0.07
_BLACK_VAL = 0.12
_FOREIGN_HUE = (75.0, 300.0)
_FOREIGN_SAT = 0.15


def as_float_rgb(img: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate an HxWx3 RGB image and return it as contiguous float32 in [0, 1].

    uint8 input is scaled by 1/255; float input must already be in [0, 1] (it is clipped).
    """
    if not isinstance(img, np.ndarray):
        raise ImageError(f"The {name} must be a NumPy array, not {type(img).__name__}.")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ImageError(f"The {name} must be an RGB image of shape HxWx3, but has shape {img.shape}.")
    if img.shape[0] < 8 or img.shape[1] < 8:
        raise ImageError(f"The {name} is too small ({img.shape[1]}x{img.shape[0]} pixels); it must be at least 8x8.")
    if img.dtype == np.uint8:
        return (img.astype(np.float32) / 255.0).copy()
    if not np.issubdtype(img.dtype, np.floating):
        raise ImageError(f"The {name} must be uint8 or floating point, not {img.dtype}.")
    out = np.ascontiguousarray(img, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ImageError(f"The {name} contains NaN or infinite values.")
    return np.clip(out, 0.0, 1.0)


def odd(n: float) -> int:
    """The nearest odd integer >= 1 (kernel sizes)."""
    k = max(1, int(round(n)))
    return k if k % 2 == 1 else k + 1


def _ellipse(size: float) -> np.ndarray:
    k = odd(size)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))


def _largest_components(mask: np.ndarray, keep_fraction: float = 0.2) -> np.ndarray:
    """Keep the largest 8-connected component and any others at least ``keep_fraction`` of its area."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return np.zeros_like(mask)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= keep_fraction * areas.max()) + 1
    lut = np.zeros(n, np.uint8)
    lut[keep] = 1
    return lut[labels]


def fill_small_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    """Fill background components of ``mask`` that do not touch the border and are smaller than ``max_area``."""
    inv = (mask == 0).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(inv, connectivity=4)
    if n <= 1:
        return mask
    h, w = mask.shape
    x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    bw, bh = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
    touches = (x == 0) | (y == 0) | (x + bw >= w) | (y + bh >= h)
    small = (stats[:, cv2.CC_STAT_AREA] < max_area) & ~touches
    small[0] = False  # label 0 is the skin itself
    lut = small.astype(np.uint8)
    return np.maximum(mask, lut[labels])


def _mouth_region(cr: np.ndarray, cr_mean: float, cr_std: float, core: np.ndarray, scale: float) -> np.ndarray | None:
    """The filled convex hull of the lips (so an open mouth's teeth are excluded too), or None.

    Lips are the widest clearly-redder-than-skin blob in the lower-middle part of the skin region,
    wider than tall; red cheeks or blemish clusters rarely pass all of these checks.
    """
    ys, xs = np.nonzero(core)
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    fh, fw = y1 - y0 + 1, x1 - x0 + 1
    red = (cr > cr_mean + max(1.5 * cr_std, 6.0)).astype(np.uint8)
    red = cv2.morphologyEx(red, cv2.MORPH_OPEN, _ellipse(2 * scale))
    n, labels, stats, cents = cv2.connectedComponentsWithStats(red, connectivity=8)
    fcx = (x0 + x1) / 2.0
    cand = [
        i for i in range(1, n)
        if stats[i, cv2.CC_STAT_AREA] >= 0.0008 * fh * fw
        and stats[i, cv2.CC_STAT_WIDTH] <= 0.7 * fw
        and cents[i, 1] >= y0 + 0.35 * fh and abs(cents[i, 0] - fcx) <= 0.15 * fw
    ]
    if not cand:
        return None
    best = max(cand, key=lambda i: stats[i, cv2.CC_STAT_WIDTH])
    bw, bh = stats[best, cv2.CC_STAT_WIDTH], stats[best, cv2.CC_STAT_HEIGHT]
    if bw < 0.1 * fw or bw < 1.3 * bh:
        return None
    # Upper and lower lip of an open mouth are separate blobs: join those close to the widest.
    group = [
        i for i in cand
        if abs(cents[i, 1] - cents[best, 1]) <= 0.12 * fh and abs(cents[i, 0] - cents[best, 0]) <= 0.5 * bw
    ]
    pts = cv2.findNonZero(np.isin(labels, group).astype(np.uint8))
    hull = cv2.convexHull(pts)
    region = np.zeros_like(core)
    cv2.fillConvexPoly(region, hull, 1)
    region = cv2.dilate(region, _ellipse(3 * scale))
    return region.astype(bool)


def skin_colour(img: np.ndarray) -> np.ndarray:
    """Pixels whose colour could be skin (the permissive YCrCb + HSV rule of :func:`skin_mask`,
    without its face-shaped clean-up): bool HxW. Used to leave out regions of a photo that hold
    no skin at all (sky, clothes, walls) and to keep a predicted mask off them."""
    rgb = as_float_rgb(img)
    ycc = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)
    cr, cb = ycc[..., 1] * 255.0, ycc[..., 2] * 255.0
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    return (
        (cr >= _CR_RANGE[0]) & (cr <= _CR_RANGE[1]) & (cb >= _CB_RANGE[0]) & (cb <= _CB_RANGE[1])
        & ((hue <= _HUE_MAX) | (hue >= _HUE_WRAP))
        & (sat >= _SAT_RANGE[0]) & (sat <= _SAT_RANGE[1]) & (val >= _VAL_MIN)
    )


def foreign_colour_t(x: torch.Tensor) -> torch.Tensor:
    """Pixels of (B, 3, H, W) RGB in [0, 1] whose colour no skin has, however warm, cool, pale or
    dark the light: grey or white, near black, or clearly green, blue or violet. Bool (B, 1, H, W).

    Narrower than :func:`skin_colour` on purpose: a strong colour cast (tungsten, a sunset) takes
    skin out of that rule's chroma box, never into these. HSV as OpenCV's float conversion (hue in
    degrees), written out so that it runs where the tensor is (the model's fill, on a GPU too)."""
    x = x.float()
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    val = torch.maximum(torch.maximum(r, g), b)
    span = val - torch.minimum(torch.minimum(r, g), b)
    sat = span / val.clamp_min(1e-6)
    d = span.clamp_min(1e-6)
    hue = torch.where(val == r, 60.0 * (g - b) / d, torch.where(val == g, 120.0 + 60.0 * (b - r) / d, 240.0 + 60.0 * (r - g) / d))
    hue = torch.remainder(hue, 360.0)
    tinted = (hue > _FOREIGN_HUE[0]) & (hue < _FOREIGN_HUE[1]) & (sat > _FOREIGN_SAT)
    return (sat < _GREY_SAT) | (val < _BLACK_VAL) | tinted


def skin_mask(img: np.ndarray) -> np.ndarray:
    """Soft facial-skin mask of an RGB image.

    Args:
        img: float32 HxWx3 RGB in [0, 1] (uint8 is accepted too).

    Returns:
        float32 HxW in [0, 1]: 1 on facial skin, 0 on background, hair, eyes, brows and (mostly)
        lips, with a soft edge of about 1 % of the image size. All zeros when no skin is found.
    """
    rgb = as_float_rgb(img)
    h, w = rgb.shape[:2]
    scale = min(h, w) / 256.0

    ycc = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)
    y, cr, cb = ycc[..., 0], ycc[..., 1] * 255.0, ycc[..., 2] * 255.0
    cand = skin_colour(rgb).astype(np.uint8)
    cand = cv2.morphologyEx(cand, cv2.MORPH_OPEN, _ellipse(3 * scale))
    core = _largest_components(cand, keep_fraction=1.0)
    if core.sum() < 0.002 * h * w:
        return np.zeros((h, w), np.float32)

    # Adaptive refinement: chroma (and brightness) statistics of the main skin component.
    sel = core.astype(bool)
    feats = np.stack([cr[sel], cb[sel]], axis=1).astype(np.float64)
    mean = feats.mean(axis=0)
    cov = np.cov(feats, rowvar=False) + np.eye(2) * 4.0  # floor: at least 2 levels std
    icov = np.linalg.inv(cov)
    dcr, dcb = cr - mean[0], cb - mean[1]
    d2 = icov[0, 0] * dcr * dcr + 2.0 * icov[0, 1] * dcr * dcb + icov[1, 1] * dcb * dcb
    y_med = float(np.median(y[sel]))
    y_std = float(y[sel].std()) + 0.02
    refined = cand.astype(bool) & (d2 <= _MAHALANOBIS_MAX**2) & (y >= max(y_med - 2.0 * y_std, 0.45 * y_med))
    mask = refined.astype(np.uint8)
    mouth = _mouth_region(cr, mean[0], float(np.sqrt(cov[0, 0])), core, scale)
    if mouth is not None:
        mask[mouth] = 0

    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _ellipse(3 * scale))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _ellipse(3 * scale))
    mask = _largest_components(mask, keep_fraction=0.2)
    mask = fill_small_holes(mask, max_area=0.0008 * h * w)
    mask = cv2.erode(mask, _ellipse(3 * scale))
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigmaX=max(0.6, 1.2 * scale))
    # Keep the soft edge inside the (un-eroded) refined region.
    soft[cv2.dilate(mask, _ellipse(3 * scale)) == 0] = 0.0
    soft[soft < 1.0 / 255.0] = 0.0
    return np.clip(soft, 0.0, 1.0).astype(np.float32)
