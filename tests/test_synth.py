"""Tests of the skin mask and the blemish synthesiser on generated face-like images."""
from __future__ import annotations


import cv2
import numpy as np
import pytest

from engine.errors import ImageError
from engine.skin import skin_mask
from engine.training.synth import BLEMISH_KINDS, SynthConfig, synthesize

SKIN_RGB = (0.86, 0.66, 0.56)


def make_face(size: int = 128, seed: int = 0) -> np.ndarray:
    """A skin-coloured ellipse 'face' with mild texture, dark eyes and reddish lips on a dark background."""
    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), np.float32)
    img[:] = (0.12, 0.12, 0.15)
    face = np.zeros((size, size), np.uint8)
    c = size // 2
    cv2.ellipse(face, (c, c), (int(0.34 * size), int(0.44 * size)), 0, 0, 360, 1, -1)
    img[face > 0] = SKIN_RGB
    noise = cv2.GaussianBlur(rng.normal(0, 0.012, (size, size)).astype(np.float32), (0, 0), 0.8)
    img += (noise * (face > 0))[..., None]
    for ex in (c - int(0.14 * size), c + int(0.14 * size)):
        cv2.ellipse(img, (ex, int(0.4 * size)), (int(0.07 * size), int(0.03 * size)), 0, 0, 360, (0.08, 0.06, 0.05), -1)
    cv2.ellipse(img, (c, int(0.74 * size)), (int(0.1 * size), int(0.03 * size)), 0, 0, 360, (0.75, 0.25, 0.3), -1)
    return np.clip(img, 0, 1)


def eye_boxes(size: int) -> list[tuple[slice, slice]]:
    c = size // 2
    out = []
    for ex in (c - int(0.14 * size), c + int(0.14 * size)):
        out.append((slice(int(0.4 * size) - 2, int(0.4 * size) + 3), slice(ex - int(0.05 * size), ex + int(0.05 * size))))
    return out


# ---------------------------------------------------------------- skin mask


def test_skin_mask_covers_face_not_background_or_eyes() -> None:
    img = make_face(128)
    m = skin_mask(img)
    assert m.dtype == np.float32 and m.shape == (128, 128)
    assert m.min() >= 0.0 and m.max() <= 1.0
    assert m[64, 64] > 0.9 and m[90, 40] > 0.9  # centre and cheek
    assert m[:5].max() == 0.0 and m[:, :5].max() == 0.0  # background
    for sy, sx in eye_boxes(128):
        assert m[sy, sx].max() < 0.5
    assert m[94, 64] < 0.5  # lips


def test_skin_mask_empty_on_non_skin() -> None:
    grey = np.full((64, 64, 3), 0.5, np.float32)
    assert skin_mask(grey).max() == 0.0


def test_skin_mask_rejects_bad_input() -> None:
    with pytest.raises(ImageError):
        skin_mask(np.zeros((32, 32), np.float32))
    with pytest.raises(ImageError):
        skin_mask(np.full((32, 32, 3), np.nan, np.float32))


# ---------------------------------------------------------------- synthesiser


def _many_cfg() -> SynthConfig:
    """Everything switched on, plenty of lesions."""
    return SynthConfig(
        severity_beta=(5.0, 1.0), p_papules=1, p_dark_spots=1, p_scars=1, p_redness=1, p_under_eye=1
    )


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mask_is_exact_blend_weight(seed: int) -> None:
    img = make_face(128, seed)
    skin = skin_mask(img)
    smp = synthesize(img, np.random.default_rng(seed), _many_cfg(), skin=skin)
    assert smp.raw.dtype == np.float32 and smp.mask.dtype == np.float32 and smp.clean.dtype == np.float32
    assert smp.raw.shape == img.shape and smp.mask.shape == img.shape[:2]
    assert np.array_equal(smp.clean, img)
    assert smp.raw.min() >= 0.0 and smp.raw.max() <= 1.0
    assert smp.mask.min() >= 0.0 and smp.mask.max() <= 1.0
    diff = np.abs(smp.raw - smp.clean).max(axis=2)
    # Unmasked pixels are bit-identical; every changed pixel is masked.
    assert np.array_equal(smp.raw[smp.mask == 0], smp.clean[smp.mask == 0])
    assert not ((diff > 1e-4) & (smp.mask <= 0)).any()
    # raw = (1 - m) clean + m * B with B in [0, 1]  =>  |raw - clean| <= m.
    assert (diff <= smp.mask + 1e-5).all()
    # A noticeable mask value means a real change (skin-coloured pixels, so no vanishing gains).
    assert (diff[smp.mask > 0.05] > 1e-3).all()
    # Only on skin.
    assert not ((smp.mask > 0) & (skin <= 0)).any()
    assert smp.mask.max() > 0.5 and sum(smp.counts.values()) > 5


def test_deterministic_and_seed_dependent() -> None:
    img = make_face(128)
    a = synthesize(img, np.random.default_rng(7), _many_cfg())
    b = synthesize(img, np.random.default_rng(7), _many_cfg())
    c = synthesize(img, np.random.default_rng(8), _many_cfg())
    assert np.array_equal(a.raw, b.raw) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.mask, c.mask)


@pytest.mark.parametrize("kind", BLEMISH_KINDS)
def test_each_kind_can_be_produced_alone(kind: str) -> None:
    img = make_face(128)
    smp = synthesize(img, np.random.default_rng(3), SynthConfig.only(kind))
    assert smp.counts[kind] > 0
    assert all(v == 0 for k, v in smp.counts.items() if k != kind)
    assert smp.mask.max() > 0.2
    m = smp.mask > 0.2
    lum = lambda x: (x * np.array([0.299, 0.587, 0.114], np.float32)).sum(axis=2)  # noqa: E731
    red = lambda x: x[..., 0] - x[..., 1]  # noqa: E731
    if kind in ("papules", "redness"):
        assert red(smp.raw)[m].mean() > red(smp.clean)[m].mean() + 0.02
    if kind in ("dark_spots", "under_eye"):
        assert lum(smp.raw)[m].mean() < lum(smp.clean)[m].mean() - 0.02
    if kind == "scars":
        assert np.abs(lum(smp.raw) - lum(smp.clean))[m].mean() > 0.01
    if kind == "under_eye":
        ys = np.nonzero(smp.mask > 0.05)[0]
        assert ys.min() > 0.35 * 128 and ys.max() < 0.62 * 128  # just below the eyes at 0.4


def test_no_kind_enabled_means_no_change() -> None:
    img = make_face(96)
    cfg = SynthConfig(p_papules=0, p_dark_spots=0, p_scars=0, p_redness=0, p_under_eye=0)
    smp = synthesize(img, np.random.default_rng(0), cfg)
    assert smp.mask.max() == 0.0 and np.array_equal(smp.raw, img)


def test_sizes_scale_with_image_size() -> None:
    cfg = SynthConfig.only("dark_spots", dark_spots_count=(6, 6), cluster_fraction=0.0)
    areas = {}
    for size in (128, 256):
        img = make_face(size)
        skin = skin_mask(img)
        areas[size] = np.mean([
            float((synthesize(img, np.random.default_rng(s), cfg, skin=skin).mask > 0.3).sum()) for s in range(6)
        ])
    ratio = areas[256] / areas[128]
    assert 2.5 < ratio < 6.0  # 4x the pixels for the same-looking spots


def test_count_varies_between_images() -> None:
    img = make_face(96)
    skin = skin_mask(img)
    counts = [synthesize(img, np.random.default_rng(s), SynthConfig.only("papules"), skin=skin).counts["papules"] for s in range(20)]
    assert min(counts) <= 10 and max(counts) >= 25


def test_bad_inputs() -> None:
    img = make_face(64)
    with pytest.raises(ImageError):
        synthesize(img, np.random.default_rng(0), skin=np.ones((10, 10), np.float32))
    with pytest.raises(ImageError):
        synthesize(img[..., :2], np.random.default_rng(0))
    with pytest.raises(ValueError):
        SynthConfig.only("freckles")


def test_lesions_are_sized_in_millimetres() -> None:
    """Dark spots are 2-6 mm across: at 4 px/mm each spot's core (alpha > 0.3) fits in a 6 mm
    circle and the spots are 4x the area of those at 2 px/mm on the same face."""
    cfg = SynthConfig.only("dark_spots", dark_spots_count=(1, 1), cluster_fraction=0.0)
    img = make_face(256)
    skin = skin_mask(img)
    areas = {}
    for ppm in (2.0, 4.0):
        sizes = []
        for s in range(8):
            core = (synthesize(img, np.random.default_rng(s), cfg, skin=skin, px_per_mm=ppm).mask > 0.3).astype(np.uint8)
            n, _, stats, _ = cv2.connectedComponentsWithStats(core)
            if n > 1:
                big = stats[1:, cv2.CC_STAT_AREA].argmax() + 1
                sizes.append(stats[big, cv2.CC_STAT_AREA])
                assert max(stats[big, cv2.CC_STAT_WIDTH], stats[big, cv2.CC_STAT_HEIGHT]) <= 7.5 * ppm  # 6 mm + irregular outline
        areas[ppm] = np.mean(sizes)
    assert 2.8 < areas[4.0] / areas[2.0] < 5.5
    with pytest.raises(ImageError):
        synthesize(img, np.random.default_rng(0), cfg, skin=skin, px_per_mm=0.0)
