"""Image-quality and mask metrics for evaluation: PSNR (optionally masked), SSIM, soft IoU.

Images are float arrays (HxW or HxWx3) on a common scale given by ``data_range`` (1.0 for [0, 1]).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from engine.errors import ImageError

__all__ = ["psnr", "ssim", "soft_iou"]


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    if a64.shape != b64.shape:
        raise ImageError(f"Cannot compare images of different shapes {a64.shape} and {b64.shape}.")
    if a64.ndim not in (2, 3) or a64.size == 0:
        raise ImageError(f"Expected an HxW or HxWxC image, got shape {a64.shape}.")
    return a64, b64


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``.

    Args:
        a, b: images of the same shape (HxW or HxWxC).
        mask: optional HxW region (bool, or float weights in [0, 1]); the MSE is then the
            weighted mean over that region (all channels), so pixels outside it do not count.
        data_range: the peak value (1.0 for images in [0, 1], 255 for 8-bit).

    Returns:
        The PSNR; ``inf`` for identical images (or identical within the region). An empty region
        raises :class:`ImageError`.
    """
    a64, b64 = _pair(a, b)
    err = (a64 - b64) ** 2
    if err.ndim == 3:
        err = err.mean(axis=2)
    if mask is None:
        mse = float(err.mean())
    else:
        w = np.asarray(mask, dtype=np.float64)
        if w.shape != err.shape:
            raise ImageError(f"The mask has shape {w.shape}, but the images are {err.shape[1]}x{err.shape[0]}.")
        total = float(w.sum())
        if total <= 0:
            raise ImageError("The PSNR region (mask) is empty.")
        mse = float((err * w).sum() / total)
    if mse <= 0.0:
        return math.inf
    return 10.0 * math.log10(data_range * data_range / mse)


def _ssim_channel(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2

    def blur(z: np.ndarray) -> np.ndarray:
        # 11x11 Gaussian window, sigma 1.5 (Wang et al. 2004); borders reflected.
        return cv2.GaussianBlur(z, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    num = (2.0 * mx * my + c1) * (2.0 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return float((num / den).mean())


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Structural similarity (Wang et al. 2004) with an 11x11 Gaussian window, sigma 1.5.

    For colour images the SSIM is computed per channel and the mean over channels is returned
    (the convention of scikit-image with ``channel_axis``); constants K1 = 0.01, K2 = 0.03.
    """
    a64, b64 = _pair(a, b)
    if a64.ndim == 2:
        return _ssim_channel(a64, b64, data_range)
    return float(np.mean([_ssim_channel(a64[..., c], b64[..., c], data_range) for c in range(a64.shape[2])]))


def soft_iou(pred: np.ndarray, true: np.ndarray) -> float:
    """Soft intersection over union ``sum(min(pred, true)) / sum(max(pred, true))`` of two soft masks
    in [0, 1]; 1.0 when both masks are empty (all zero)."""
    p, t = _pair(pred, true)
    union = float(np.maximum(p, t).sum())
    if union <= 0.0:
        return 1.0
    return float(np.minimum(p, t).sum() / union)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB float in [0, 1] -> CIELAB (D65; L in 0..100) as float64."""
    return cv2.cvtColor(np.clip(np.asarray(rgb, np.float32), 0.0, 1.0), cv2.COLOR_RGB2Lab).astype(np.float64)


def delta_e2000(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel CIEDE2000 colour difference of two sRGB float images in [0, 1] (HxW)."""
    return ciede2000(srgb_to_lab(a), srgb_to_lab(b))


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 (Sharma, Wu and Dalal's formulation) of two (..., 3) CIELAB arrays."""
    L1, a1, b1 = np.moveaxis(np.asarray(lab1, np.float64), -1, 0)
    L2, a2, b2 = np.moveaxis(np.asarray(lab2, np.float64), -1, 0)
    C1, C2 = np.hypot(a1, b1), np.hypot(a2, b2)
    Cm = (C1 + C2) / 2.0
    G = 0.5 * (1.0 - np.sqrt(Cm**7 / (Cm**7 + 25.0**7)))
    a1p, a2p = (1.0 + G) * a1, (1.0 + G) * a2
    C1p, C2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360.0
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360.0
    dLp, dCp = L2 - L1, C2p - C1p
    dh = h2p - h1p
    dh = np.where(dh > 180.0, dh - 360.0, np.where(dh < -180.0, dh + 360.0, dh))
    dh = np.where(C1p * C2p == 0.0, 0.0, dh)
    dHp = 2.0 * np.sqrt(C1p * C2p) * np.sin(np.radians(dh) / 2.0)
    Lm, Cmp = (L1 + L2) / 2.0, (C1p + C2p) / 2.0
    hs = h1p + h2p
    hm = np.where(C1p * C2p == 0.0, hs, np.where(np.abs(h1p - h2p) <= 180.0, hs / 2.0, np.where(hs < 360.0, (hs + 360.0) / 2.0, (hs - 360.0) / 2.0)))
    T = 1.0 - 0.17 * np.cos(np.radians(hm - 30)) + 0.24 * np.cos(np.radians(2 * hm)) + 0.32 * np.cos(np.radians(3 * hm + 6)) - 0.20 * np.cos(np.radians(4 * hm - 63))
    dtheta = 30.0 * np.exp(-(((hm - 275.0) / 25.0) ** 2))
    Rc = 2.0 * np.sqrt(Cmp**7 / (Cmp**7 + 25.0**7))
    Sl = 1.0 + 0.015 * (Lm - 50.0) ** 2 / np.sqrt(20.0 + (Lm - 50.0) ** 2)
    Sc = 1.0 + 0.045 * Cmp
    Sh = 1.0 + 0.015 * Cmp * T
    Rt = -np.sin(np.radians(2.0 * dtheta)) * Rc
    return np.sqrt((dLp / Sl) ** 2 + (dCp / Sc) ** 2 + (dHp / Sh) ** 2 + Rt * (dCp / Sc) * (dHp / Sh))


def mean_delta_e(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean CIEDE2000 difference of ``a`` and ``b`` (over ``mask`` when given, a bool HxW region)."""
    x, y = _pair(a, b)
    d = delta_e2000(x, y)
    if mask is None:
        return float(d.mean())
    region = np.asarray(mask, bool)
    if region.shape != d.shape:
        raise ImageError(f"The mask has shape {region.shape}, but the images are {d.shape[1]}x{d.shape[0]}.")
    if not region.any():
        raise ImageError("The colour-difference region (mask) is empty.")
    return float(d[region].mean())
