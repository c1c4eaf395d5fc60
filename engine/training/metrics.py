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
