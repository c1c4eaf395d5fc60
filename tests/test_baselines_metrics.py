"""Tests of the evaluation metrics and the classical baselines on generated images."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from engine.training.baselines import bilateral_smooth, spot_heal
from engine.errors import ImageError
from engine.training.metrics import psnr, soft_iou, ssim
from engine.skin import skin_mask
from tests.test_synth import SKIN_RGB, make_face

# ---------------------------------------------------------------- metrics


def test_psnr_identical_is_inf_and_known_mse() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((16, 16, 3)).astype(np.float32)
    assert psnr(a, a) == math.inf
    b = a.copy()
    b[:8] += 0.1  # half of the pixels off by 0.1 => MSE 0.005
    assert psnr(a, b) == pytest.approx(10 * math.log10(1 / 0.005), abs=1e-4)
    assert psnr(a * 255, b * 255, data_range=255.0) == pytest.approx(psnr(a, b), abs=1e-3)


def test_masked_psnr_uses_only_region() -> None:
    a = np.zeros((10, 10, 3), np.float32)
    b = a.copy()
    b[:5] = 0.2  # error only in the top half
    top = np.zeros((10, 10), bool)
    top[:5] = True
    assert psnr(a, b, mask=~top) == math.inf
    assert psnr(a, b, mask=top) == pytest.approx(10 * math.log10(1 / 0.04), abs=1e-4)
    assert psnr(a, b) == pytest.approx(10 * math.log10(1 / 0.02), abs=1e-4)
    w = top.astype(np.float32) * 0.5  # float weights: same region, same mean
    assert psnr(a, b, mask=w) == pytest.approx(psnr(a, b, mask=top), abs=1e-6)
    with pytest.raises(ImageError):
        psnr(a, b, mask=np.zeros((10, 10), bool))
    with pytest.raises(ImageError):
        psnr(a, b[:5])


def test_ssim_identity_and_noise() -> None:
    img = make_face(64)
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-9)
    rng = np.random.default_rng(0)
    s1 = ssim(img, np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1))
    s2 = ssim(img, np.clip(img + rng.normal(0, 0.1, img.shape), 0, 1))
    assert 1.0 > s1 > s2 > 0.0
    grey = img.mean(axis=2)
    assert ssim(grey, grey) == pytest.approx(1.0, abs=1e-9)


def test_soft_iou_known_values() -> None:
    z = np.zeros((4, 4), np.float32)
    assert soft_iou(z, z) == 1.0
    a = z.copy()
    a[:2] = 1.0
    assert soft_iou(a, a) == pytest.approx(1.0)
    assert soft_iou(a, z) == 0.0
    b = z.copy()
    b[1:3] = 1.0
    assert soft_iou(a, b) == pytest.approx(4 / 12)
    assert soft_iou(a * 0.5, a) == pytest.approx(0.5)


# ---------------------------------------------------------------- baselines


def _spotted(size: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clean smooth skin image, image with dark and red spots, boolean spot map)."""
    clean = make_face(size, seed=1)
    raw = clean.copy()
    spots = np.zeros((size, size), np.uint8)
    s = size / 128
    pts = [(40, 75, (0.55, 0.40, 0.32)), (88, 70, (0.55, 0.40, 0.32)), (64, 66, (0.85, 0.40, 0.40)), (68, 33, (0.85, 0.42, 0.42)), (80, 100, (0.8, 0.38, 0.38))]
    for x, y, col in pts:
        c = (int(x * s), int(y * s))
        r = max(2, int(round(2.5 * s)))
        cv2.circle(raw, c, r, col, -1)
        cv2.circle(spots, c, r, 1, -1)
    raw = cv2.GaussianBlur(raw, (0, 0), 0.7 * s)
    raw = np.where((cv2.dilate(spots, np.ones((5, 5), np.uint8)) > 0)[..., None], raw, clean).astype(np.float32)
    return clean, raw, spots.astype(bool)


@pytest.mark.parametrize("size", [128, 200])
def test_spot_heal_finds_spots_and_improves_psnr(size: int) -> None:
    clean, raw, spots = _spotted(size)
    healed, mask = spot_heal(raw)
    assert healed.shape == raw.shape and healed.dtype == np.float32
    assert mask.shape == raw.shape[:2] and mask.dtype == np.float32
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    # Every spot is found (its pixels are mostly covered) ...
    n, labels = cv2.connectedComponents(spots.astype(np.uint8))
    for i in range(1, n):
        assert (mask[labels == i] > 0.5).mean() > 0.8
    # ... without flagging much else ...
    assert (mask > 0).sum() < 6 * spots.sum()
    # ... and healing brings the image closer to the clean one; unmasked pixels are untouched.
    assert psnr(healed, clean) > psnr(raw, clean) + 3.0
    assert np.array_equal(healed[mask == 0], raw[mask == 0])


def test_spot_heal_leaves_clean_skin_alone() -> None:
    clean = make_face(128, seed=2)
    healed, mask = spot_heal(clean)
    assert (mask > 0).mean() < 0.01
    assert psnr(healed, clean) > 45.0


def test_bilateral_smooth_reduces_noise_only_on_skin() -> None:
    rng = np.random.default_rng(0)
    img = make_face(128)
    skin = skin_mask(img)
    noisy = np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1).astype(np.float32)
    out = bilateral_smooth(noisy, skin)
    assert out.shape == noisy.shape and out.dtype == np.float32
    inner = skin > 0.99
    assert psnr(out, img, mask=inner) > psnr(noisy, img, mask=inner) + 3.0
    assert np.array_equal(out[skin == 0], noisy[skin == 0])
    # Without a mask the skin is detected automatically.
    auto = bilateral_smooth(noisy)
    assert psnr(auto, img, mask=inner) > psnr(noisy, img, mask=inner) + 3.0


def test_bilateral_smooth_any_size_and_bad_mask() -> None:
    img = np.full((37, 53, 3), SKIN_RGB, np.float32)
    assert bilateral_smooth(img).shape == (37, 53, 3)
    with pytest.raises(ImageError):
        bilateral_smooth(img, np.ones((10, 10), np.float32))
