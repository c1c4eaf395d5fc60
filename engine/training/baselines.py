"""Classical retouching baselines a photographer could use without the network.

* :func:`bilateral_smooth`: "skin softening": an edge-preserving bilateral filter applied on
  skin only (blended through the soft skin mask, so non-skin pixels are untouched).
* :func:`spot_heal`: automatic spot healing: small dark spots (morphological black-hat on
  luminance) and small red spots (top-hat on the Cr chroma channel) are detected on skin with
  thresholds relative to the image's own skin texture (median + k * MAD), size- and
  shape-filtered, grown a little into the weaker response, dilated, and filled by Telea inpainting with a feathered blend.

Both work at any image size: every size is relative to a 256-pixel face image.
"""
from __future__ import annotations

import cv2
import numpy as np

from engine.errors import ImageError
from engine.skin import as_float_rgb, fill_small_holes, odd, skin_mask

__all__ = ["bilateral_smooth", "spot_heal", "telea_heal", "median_blend", "anchor_heal", "frequency_separation_heal"]


def _scale(img: np.ndarray) -> float:
    return min(img.shape[:2]) / 256.0


def _skin_or_detect(rgb: np.ndarray, skin: np.ndarray | None) -> np.ndarray:
    if skin is None:
        return skin_mask(rgb)
    s = np.asarray(skin, dtype=np.float32)
    if s.shape != rgb.shape[:2]:
        raise ImageError(f"The skin mask has shape {s.shape}, but the image is {rgb.shape[1]}x{rgb.shape[0]}.")
    return np.clip(s, 0.0, 1.0)


def bilateral_smooth(
    img: np.ndarray,
    skin: np.ndarray | None = None,
    strength: float = 0.85,
    sigma_color: float = 0.1,
    sigma_space: float = 4.0,
) -> np.ndarray:
    """Edge-preserving skin softening.

    Args:
        img: float32 HxWx3 RGB in [0, 1].
        skin: soft skin mask HxW in [0, 1]; detected with :func:`engine.skin.skin_mask` if None.
        strength: how much of the filtered image replaces the original on full skin (0..1).
        sigma_color: bilateral range sigma in [0, 1] intensity units.
        sigma_space: bilateral spatial sigma in pixels at 256 px (scaled with the image size).

    Returns:
        float32 HxWx3: ``img + strength * skin * (bilateral(img) - img)``; pixels with skin == 0
        are returned unchanged.
    """
    rgb = as_float_rgb(img)
    weight = _skin_or_detect(rgb, skin) * float(np.clip(strength, 0.0, 1.0))
    ss = max(0.5, sigma_space * _scale(rgb))
    d = odd(2 * round(1.5 * ss) + 1)
    smooth = cv2.bilateralFilter(rgb, d, float(sigma_color), ss)
    return (rgb + weight[..., None] * (smooth - rgb)).astype(np.float32)


def _robust_threshold(resp: np.ndarray, region: np.ndarray, k: float, floor: float, top: float) -> float:
    """max(floor, median + k * MAD, the (1 - top) quantile) of the response on skin: spots must stand
    out from the image's own skin texture, and at most about ``top`` of the skin is flagged."""
    vals = resp[region]
    if vals.size == 0:
        return float("inf")
    med = float(np.median(vals))
    mad = float(np.median(np.abs(vals - med))) * 1.4826
    return max(floor, med + k * mad, float(np.quantile(vals, 1.0 - top)))


def _detect(resp: np.ndarray, thr: float, region: np.ndarray, min_area: float, max_area: float, grow: int) -> np.ndarray:
    """Spot cores above ``thr`` (size- and shape-filtered), grown by up to ``grow`` pixels into the
    pixels above ``thr / 2`` so that each spot's soft rim is covered too."""
    strong = _size_filter((resp > thr) & region, min_area, max_area)
    if not strong.any():
        return strong
    near = cv2.dilate(strong.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1,) * 2)) > 0
    return strong | (near & (resp > 0.5 * thr) & region)


def _size_filter(
    mask: np.ndarray, min_area: float, max_area: float, max_elong: float = 2.5, min_fill: float = 0.4
) -> np.ndarray:
    """Keep blob-like components with min_area <= area <= max_area, not elongated and filling their
    bounding box reasonably (drops wrinkles, brows and other facial features)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    area = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    bw = stats[:, cv2.CC_STAT_WIDTH].astype(np.float64)
    bh = stats[:, cv2.CC_STAT_HEIGHT].astype(np.float64)
    elong = np.maximum(bw, bh) / np.maximum(1.0, np.minimum(bw, bh))
    fill = area / np.maximum(1.0, bw * bh)
    keep = (area >= min_area) & (area <= max_area) & (elong <= max_elong) & (fill >= min_fill)
    keep[0] = False
    return keep[labels]


def spot_heal(
    img: np.ndarray,
    skin: np.ndarray | None = None,
    max_radius: float = 6.0,
    sensitivity: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Detect small dark and red spots on skin and remove them by inpainting.

    Args:
        img: float32 HxWx3 RGB in [0, 1].
        skin: optional soft skin mask (detected if None).
        max_radius: largest spot radius to heal, in pixels at 256 px (scaled with the image).
        sensitivity: >1 detects fainter spots, <1 only stronger ones.

    Returns:
        (healed float32 HxWx3, spot mask float32 HxW in [0, 1]); the mask is the feathered blend
        weight of the inpainted content, 0 wherever the image is unchanged.
    """
    rgb = as_float_rgb(img)
    h, w = rgb.shape[:2]
    s = _scale(rgb)
    skin_f = _skin_or_detect(rgb, skin)
    # Stay clear of the skin boundary (lashes, brows, nostrils, lip edges respond like spots).
    # Large spots are not skin-coloured and may be holes in the skin mask: fill holes up to spot size
    # (eyes, nostrils and mouth are kept out by the dark-feature guard below).
    max_area = np.pi * (1.5 * max_radius * s) ** 2
    base = fill_small_holes((skin_f > 0.5).astype(np.uint8), max_area=max_area)
    region = cv2.erode(base, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (odd(7 * s),) * 2)) > 0
    if region.sum() < 16:
        return rgb.copy(), np.zeros((h, w), np.float32)

    ycc = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)
    lum, cr = ycc[..., 0], ycc[..., 1]
    # Guard facial features: spots are never very dark, pupils, lashes and nostrils are.
    very_dark = (lum < 0.45 * float(np.median(lum[region]))).astype(np.uint8)
    region &= cv2.dilate(very_dark, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (odd(13 * s),) * 2)) == 0
    if region.sum() < 16:
        return rgb.copy(), np.zeros((h, w), np.float32)
    # Neutral fill off skin so that the skin boundary (hair, eyes, lips) does not respond.
    lum_f = np.where(region, lum, np.float32(np.median(lum[region])))
    cr_f = np.where(region, cr, np.float32(np.median(cr[region])))
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (odd(2 * max_radius * s + 1),) * 2)
    dark = cv2.morphologyEx(lum_f, cv2.MORPH_BLACKHAT, k)
    red = cv2.morphologyEx(cr_f, cv2.MORPH_TOPHAT, k)
    # Light denoising of the responses (pores, JPEG noise).
    sig = max(0.5, 0.6 * s)
    dark = cv2.GaussianBlur(dark, (0, 0), sig)
    red = cv2.GaussianBlur(red, (0, 0), sig)

    kk = 6.0 / max(0.2, sensitivity)
    t_dark = _robust_threshold(dark, region, kk, 0.05 / sensitivity, 0.02 * sensitivity)
    t_red = _robust_threshold(red, region, kk, 0.025 / sensitivity, 0.03 * sensitivity)
    min_area = max(2.0, 2.0 * s * s)
    grow = max(1, int(round(2 * s)))
    spots = _detect(dark, t_dark, region, min_area, max_area, grow) | _detect(red, t_red, region, min_area, max_area, grow)
    if not spots.any():
        return rgb.copy(), np.zeros((h, w), np.float32)

    hard = cv2.dilate(spots.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (odd(3 * s),) * 2))
    feather = max(0.6, 0.8 * s)
    soft = cv2.GaussianBlur(hard.astype(np.float32), (0, 0), feather)
    soft = np.maximum(soft, hard.astype(np.float32))  # full weight on the detected spot itself
    soft[soft < 1.0 / 255.0] = 0.0
    fill = (soft > 0).astype(np.uint8)
    radius = max(2.0, 3.0 * s)
    # Per-channel 16-bit Telea (OpenCV's float path overshoots; 8-bit would quantise).
    rgb16 = np.round(rgb * 65535.0).astype(np.uint16)
    inpainted = np.stack(
        [cv2.inpaint(np.ascontiguousarray(rgb16[..., c]), fill, radius, cv2.INPAINT_TELEA) for c in range(3)], axis=2
    ).astype(np.float32) / 65535.0
    healed = rgb + soft[..., None] * (inpainted - rgb)
    return np.clip(healed, 0.0, 1.0).astype(np.float32), soft.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Classical healing handed a mask (what a photographer does with a brushed selection). Each
# returns ``img + mask * (fill - img)``: the same soft composite the model uses, so that the
# methods differ only in the fill.


def _blend(rgb: np.ndarray, mask: np.ndarray, fill: np.ndarray) -> np.ndarray:
    m = np.clip(np.asarray(mask, np.float32), 0.0, 1.0)[..., None]
    return np.clip(rgb + m * (fill - rgb), 0.0, 1.0).astype(np.float32)


def _hard(mask: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    return (np.asarray(mask) > threshold).astype(np.uint8)


def _telea(rgb: np.ndarray, hard: np.ndarray, radius: float) -> np.ndarray:
    """Per-channel 16-bit Telea inpainting of ``hard`` (OpenCV's float path overshoots)."""
    if not hard.any():
        return rgb.copy()
    rgb16 = np.round(np.clip(rgb, 0, 1) * 65535.0).astype(np.uint16)
    out = [cv2.inpaint(np.ascontiguousarray(rgb16[..., c]), hard, radius, cv2.INPAINT_TELEA) for c in range(3)]
    return np.stack(out, axis=2).astype(np.float32) / 65535.0


def telea_heal(img: np.ndarray, mask: np.ndarray, px_per_mm: float = 1.6) -> np.ndarray:
    """OpenCV's Telea inpainting of the masked pixels (mask > 0.02), blended in through the mask."""
    rgb = as_float_rgb(img)
    return _blend(rgb, mask, _telea(rgb, _hard(mask), max(2.0, 2.0 * px_per_mm)))


def median_blend(img: np.ndarray, mask: np.ndarray, px_per_mm: float = 1.6) -> np.ndarray:
    """Blend toward the surrounding skin: a median filter about 6 mm wide (wider than most spots,
    so their colour loses the vote), blended in through the mask."""
    rgb = as_float_rgb(img)
    k = min(odd(6.0 * px_per_mm), 255)
    u8 = k > 5  # OpenCV's median takes float input only up to 5x5
    src = np.round(rgb * 255.0).astype(np.uint8) if u8 else rgb
    med = cv2.medianBlur(src, k)
    med = med.astype(np.float32) / 255.0 if u8 else med
    return _blend(rgb, mask, med)


def anchor_heal(img: np.ndarray, mask: np.ndarray, px_per_mm: float = 1.6) -> np.ndarray:
    """The classical fill the model is anchored on (engine.model.fill: push-pull colour from the
    surrounding skin, texture kept at the skin's grain), blended in through the mask."""
    from engine.model.fill import TEXTURE_MM, anchor_fill_np

    rgb = as_float_rgb(img)
    return _blend(rgb, mask, anchor_fill_np(rgb, mask, sigma=TEXTURE_MM * px_per_mm))


def frequency_separation_heal(img: np.ndarray, mask: np.ndarray, px_per_mm: float = 1.6) -> np.ndarray:
    """Frequency-separation retouching: the low band (Gaussian, about 1.5 mm) is healed by Telea
    inpainting under the mask, the high band (texture) is kept as it is."""
    rgb = as_float_rgb(img)
    sigma = max(0.8, 1.5 * px_per_mm)
    low = cv2.GaussianBlur(rgb, (0, 0), sigma)
    healed_low = _telea(low, _hard(mask), max(2.0, 2.0 * px_per_mm))
    return _blend(rgb, mask, healed_low + (rgb - low))
