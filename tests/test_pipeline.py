"""Full-resolution pipeline: regions, frequency separation, masks, compositor and the Retoucher API."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from engine import faces as faces_mod
from engine import pipeline as pl
from engine.compositor import Correction, CorrectionBuilder, Patch, blend_weights, composite
from engine.errors import Cancelled, ImageError, RetouchError, WeightsError
from engine.model.checkpoint import save_model
from engine.model.config import ModelConfig
from engine.model.retouchformer import RetouchFormer
from engine.retoucher import Analysis, Retoucher

FACE = (150, 110, 310, 270)  # a 160 px "face" box in a 480x400 photo


def _skin(h: int = 400, w: int = 480, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    """Skin-coloured photo with per-pixel grain (pores) and a few sharp dark spots (blemishes)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([0.78 + 0.05 * np.sin(xx / 60), 0.60 + 0.04 * np.cos(yy / 50), 0.52 * np.ones_like(xx)], -1)
    img = base + rng.normal(0, 0.02, (h, w, 1)).astype(np.float32)
    for cy, cx, r in [(190, 230, 6), (215, 260, 4), (60, 60, 5)]:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] -= 0.25
    top = 255 if dtype == np.uint8 else 65535
    return np.clip(np.rint(np.clip(img, 0, 1) * top), 0, top).astype(dtype)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = RetouchFormer(ModelConfig.preset("tiny"))
    with torch.no_grad():  # a visible correction (the fresh decoder's last layer is zero)
        model.synthesis.out.weight.normal_(0.0, 0.05)
        model.synthesis.out.bias.fill_(0.05)
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_model(model, path)
    return str(path)


@pytest.fixture(scope="module")
def retoucher(weights) -> Retoucher:
    torch.set_num_threads(1)
    return Retoucher.load(weights, device="cpu")


@pytest.fixture
def one_face(monkeypatch):
    monkeypatch.setattr(faces_mod, "detect_faces", lambda image, **kw: [FACE])


@pytest.fixture
def no_face(monkeypatch):
    monkeypatch.setattr(faces_mod, "detect_faces", lambda image, **kw: [])


def _box_mask(shape, box, value=1.0) -> np.ndarray:
    m = np.zeros(shape, np.float32)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = value
    return m


# --------------------------------------------------------------------------------------------
# Retoucher API


def test_load_errors(tmp_path, weights):
    with pytest.raises(WeightsError):
        Retoucher.load(tmp_path / "missing.safetensors", device="cpu")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError):
        Retoucher.load(bad, device="cpu")
    with pytest.raises(RetouchError, match="Unknown device"):
        Retoucher.load(weights, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RetouchError, match="no CUDA GPU"):
            Retoucher.load(weights, device="cuda")


def test_device_label(retoucher):
    assert retoucher.device == "cpu"
    assert retoucher.device_label.startswith("CPU (")
    assert retoucher.config.name == "tiny"


def test_face_path_bit_identical_outside_mask(retoucher, one_face):
    img = _skin()
    a = retoucher.analyze(img)
    assert isinstance(a, Analysis)
    assert not a.used_tiles and a.message == "1 face found" and len(a.regions) == 1
    assert a.mask.shape == img.shape[:2] and a.mask.dtype == np.float32
    x0, y0, x1, y1 = a.regions[0]
    assert x0 <= FACE[0] and y0 <= FACE[1] and x1 >= FACE[2] and y1 >= FACE[3]
    # The predicted mask is exactly 0 outside the face crop; the output is bit-identical there.
    outside = np.ones(img.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert (a.mask[outside] == 0).all()
    out = retoucher.composite(img, retoucher.render(a), 1.0)
    assert out.dtype == img.dtype and out.shape == img.shape
    assert np.array_equal(out[outside], img[outside])
    # A user mask: only the masked pixels may change, and they do.
    user = _box_mask(img.shape[:2], (200, 160, 280, 240))
    out = retoucher.composite(img, retoucher.render(a, user), 1.0)
    zero = user == 0
    assert np.array_equal(out[zero], img[zero])
    assert (out[~zero] != img[~zero]).any()


def test_strength_zero_identity_and_monotonic(retoucher, one_face):
    img = _skin()
    a = retoucher.analyze(img)
    c = retoucher.render(a, _box_mask(img.shape[:2], (190, 150, 290, 250)))
    out0 = retoucher.composite(img, c, 0.0)
    assert np.array_equal(out0, img) and out0 is not img
    prev = np.zeros(img.shape, np.int32)
    outs = [retoucher.composite(img, c, s).astype(np.int32) for s in (0.25, 0.5, 0.75, 1.0)]
    full = outs[-1] - img
    assert np.abs(full).max() >= 3
    for o in outs:
        d = o - img
        # same direction as the full correction, growing in magnitude
        assert (d * np.sign(full) >= 0).all()
        assert (np.abs(d) >= prev).all()
        prev = np.abs(d)
    with pytest.raises(RetouchError):
        retoucher.composite(img, c, 1.5)


def test_uint16_precision(retoucher, one_face):
    img16 = _skin(dtype=np.uint16)
    mask = _box_mask(img16.shape[:2], (190, 150, 290, 250), 0.8)
    a = retoucher.analyze(img16)
    c = retoucher.render(a, mask)
    assert all(p.delta.dtype == np.float32 for p in c.patches)
    full = retoucher.composite(img16, c, 1.0)
    half = retoucher.composite(img16, c, 0.5)
    assert full.dtype == np.uint16 and full.shape == img16.shape
    changed = full != img16
    assert changed.any()
    # 16-bit results are not 8-bit values in disguise ...
    assert (full[changed] % 257 != 0).mean() > 0.9
    # ... and the correction is kept to 16-bit precision (an 8-bit path would be off by ~128).
    d_full = full.astype(np.int64) - img16
    d_half = half.astype(np.int64) - img16
    inside = (full > 0) & (full < 65535)  # not clipped at the range ends
    assert inside.mean() > 0.95
    assert np.abs(2 * d_half - d_full)[inside].max() <= 2
    assert np.abs(d_full).max() > 257 * 3


def test_tiles_when_no_face(retoucher, no_face):
    img = _skin(300, 420)
    a = retoucher.analyze(img)
    assert a.used_tiles
    assert a.message.startswith("No face found: processed the whole image in") and "overlapping tiles" in a.message
    assert len(a.regions) > 1
    cover = np.zeros(img.shape[:2], bool)
    for x0, y0, x1, y1 in a.regions:
        cover[y0:y1, x0:x1] = True
    assert cover.all()
    # Overlapping tiles: the blending weights form a partition of unity (no seams).
    regions = pl.tile_regions(img.shape[:2])
    total = np.zeros(img.shape[:2], np.float32)
    for i in range(len(regions)):
        (x0, y0, x1, y1), w = blend_weights([r.crop for r in regions], [r.ramp for r in regions], img.shape[:2], i)
        total[y0:y1, x0:x1] += w
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
    out = retoucher.composite(img, retoucher.render(a, np.ones(img.shape[:2], np.float32)), 1.0)
    assert (out != img).any()


def test_wrong_mask_size_message(retoucher, one_face):
    img = _skin()
    a = retoucher.analyze(img)
    with pytest.raises(ImageError, match=r"mask is 100x50 but the photo is 480x400"):
        retoucher.render(a, np.zeros((50, 100), np.float32))
    with pytest.raises(ImageError):
        retoucher.render(a, np.zeros((400, 480, 3), np.float32))


def test_bad_images(retoucher):
    with pytest.raises(ImageError, match="at least 64"):
        retoucher.analyze(np.zeros((40, 300, 3), np.uint8))
    with pytest.raises(ImageError, match="8-bit or 16-bit"):
        retoucher.analyze(np.zeros((100, 100, 3), np.float32))
    with pytest.raises(ImageError, match="HxWx3"):
        retoucher.analyze(np.zeros((100, 100), np.uint8))


def test_edited_mask_changes_only_near_the_edit(retoucher, one_face):
    img = _skin()
    a = retoucher.analyze(img)
    pred = retoucher.composite(img, retoucher.render(a), 1.0)
    # Re-rendering the unchanged prediction gives exactly the same result.
    assert np.array_equal(retoucher.composite(img, retoucher.render(a, a.mask.copy()), 1.0), pred)
    edited = a.mask.copy()
    edited[185:200, 220:245] = 1.0  # a brush stroke
    edited[240:250, 160:175] = 0.0  # an eraser stroke
    out = retoucher.composite(img, retoucher.render(a, edited), 1.0)
    diff = (out != pred).any(axis=2)
    assert diff.any()
    changed = (np.abs(edited - a.mask) > 1 / 255).astype(np.uint8)
    crop_side = a.regions[0][2] - a.regions[0][0]
    margin = 6 * int(np.ceil(crop_side / retoucher.config.image_size))
    near = cv2.dilate(changed, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)).astype(bool)
    assert not diff[~near].any()
    # erased pixels are untouched
    assert np.array_equal(out[240:250, 160:175], img[240:250, 160:175])


def test_cancel(retoucher, one_face, no_face):
    img = _skin()
    with pytest.raises(Cancelled):
        retoucher.analyze(img, cancel=lambda: True)
    a = retoucher.analyze(img)
    calls = []

    def cancel_second():
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(Cancelled):
        retoucher.render(a, cancel=cancel_second)
    seen = []
    retoucher.analyze(img, progress=lambda f, m: seen.append((f, m)))
    assert seen[0][0] == 0.0 and seen[-1][0] == 1.0 and all(isinstance(m, str) for _, m in seen)


def test_correction_is_stored_per_box(retoucher, one_face):
    img = _skin(800, 1000)
    a = retoucher.analyze(img)
    c = retoucher.render(a)
    assert isinstance(c, Correction) and c.patches
    x0, y0, x1, y1 = a.regions[0]
    for p in c.patches:
        assert p.delta.dtype == np.float16
        px0, py0, px1, py1 = p.box
        assert x0 <= px0 < px1 <= x1 and y0 <= py0 < py1 <= y1
    assert c.nbytes < img.size * 2


def test_detail_survives_and_blemish_rim_goes(retoucher, one_face):
    """Frequency separation: inside the mask, skin grain (pores) is kept, a blemish's sharp rim is not."""
    img = _skin()
    a = retoucher.analyze(img)
    mask = _box_mask(img.shape[:2], (180, 150, 300, 260))
    out = retoucher.composite(img, retoucher.render(a, mask), 1.0)

    def highpass(x):
        g = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).astype(np.float32)
        return g - cv2.GaussianBlur(g, (0, 0), 2.0)

    hp_in, hp_out = highpass(img), highpass(out)
    grain = (slice(160, 180), slice(180, 210))  # masked, no blemish
    rim = (slice(180, 200), slice(220, 240))  # the 6-px spot at (190, 230)
    assert hp_out[grain].std() > 0.6 * hp_in[grain].std()
    assert hp_out[rim].std() < 0.8 * hp_in[rim].std()


def test_overlapping_faces_blend_without_seams(tmp_path, monkeypatch):
    """A model whose correction is a constant +0.12, on a flat photo: two overlapping face crops."""
    model = RetouchFormer(ModelConfig.preset("tiny"))
    with torch.no_grad():
        model.synthesis.out.bias.fill_(0.12)  # weight stays 0: synthesis = x + 0.12
    save_model(model, tmp_path / "const.safetensors")
    r = Retoucher.load(tmp_path / "const.safetensors", device="cpu")
    monkeypatch.setattr(faces_mod, "detect_faces", lambda image, **kw: [(100, 120, 220, 240), (190, 120, 310, 240)])
    img = np.full((400, 480, 3), 100, np.uint8)
    a = r.analyze(img)
    assert a.message == "2 faces found" and len(a.regions) == 2
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a.regions
    assert ax1 > bx0  # the crops overlap
    # The predicted mask: wherever it is 0 (outside the crops) nothing changes.
    pred = r.composite(img, r.render(a), 1.0)
    assert np.array_equal(pred[a.mask == 0], img[a.mask == 0])
    # A mask painted over both crops: exactly +0.12 everywhere inside them, also across the
    # overlap (weights normalised: no seam, no double correction) and up to the crop borders
    # (where the face crops fade out, a region added for the edited pixels takes over).
    union = np.minimum(_box_mask(img.shape[:2], a.regions[0]) + _box_mask(img.shape[:2], a.regions[1]), 1.0)
    d = r.retouch(img, union, 1.0).astype(np.int32) - 100
    assert (d[union > 0] == round(0.12 * 255)).all()
    assert (d[union == 0] == 0).all()
    # A mask painted over the whole photo: the strokes outside the face crops get regions of
    # their own, which take over exactly where the face crops fade out: still no seam anywhere.
    a = r.analyze(img)
    full = r.composite(img, r.render(a, np.ones(img.shape[:2], np.float32)), 1.0).astype(np.int32) - 100
    assert len(a.extras) >= 1
    assert (full == round(0.12 * 255)).all()


def test_stroke_outside_faces_is_corrected_locally(retoucher, one_face):
    img = _skin()
    a = retoucher.analyze(img)
    x0, y0, x1, y1 = a.regions[0]
    user = a.mask.copy()
    user[50:70, 40:80] = 1.0  # a stroke on the spot at (60, 60), far outside the face crop
    assert y0 > 70 or x0 > 80  # the stroke is outside the crop
    pred = retoucher.composite(img, retoucher.render(a), 1.0)
    out = retoucher.composite(img, retoucher.render(a, user), 1.0)
    diff = (out != pred).any(axis=2)
    assert diff[50:70, 40:80].any()
    outside = np.ones_like(diff)
    outside[50:70, 40:80] = False
    assert not diff[outside].any()
    n_extras = len(a.extras)
    assert n_extras == 1
    retoucher.render(a, user)
    assert len(a.extras) == n_extras  # analysed once, then reused


# --------------------------------------------------------------------------------------------
# Pieces


def test_compositor_overlapping_boxes():
    shape = (50, 60)
    b = CorrectionBuilder(shape, np.uint8, [(0, 0, 40, 30), (20, 10, 60, 50)])
    b.add((0, 0, 40, 30), np.full((30, 40, 3), 10.0, np.float32))
    b.add((20, 10, 60, 50), np.full((40, 40, 3), -4.0, np.float32))
    c = b.build()
    boxes = [p.box for p in c.patches]
    area = np.zeros(shape, int)
    for x0, y0, x1, y1 in boxes:
        area[y0:y1, x0:x1] += 1
    assert area.max() == 1  # disjoint
    img = np.full((50, 60, 3), 100, np.uint8)
    out = composite(img, c, 1.0)
    assert out[5, 5, 0] == 110 and out[20, 30, 0] == 106 and out[45, 50, 0] == 96 and out[45, 5, 0] == 100
    assert composite(img, c, 0.5)[5, 5, 0] == 105
    # clipping to the dtype range
    c2 = Correction(shape, np.dtype(np.uint8), [Patch((0, 0, 2, 2), np.full((2, 2, 3), 500, np.float16))])
    assert composite(img, c2, 1.0)[0, 0, 0] == 255
    with pytest.raises(ImageError):
        composite(np.zeros((10, 10, 3), np.uint8), c, 1.0)


def test_lone_region_feathers_toward_interior_borders():
    shape = (300, 400)
    crop = (100, -50, 300, 150)  # leaves the image at the top
    (x0, y0, x1, y1), w = blend_weights([crop], [30.0], shape, 0)
    assert (x0, y0, x1, y1) == (100, 0, 300, 150)
    row, col = w[75], w[:, 100]
    assert row[0] < 0.01 and row[-1] < 0.01 and (row[30:-30] == 1).all()
    assert (np.diff(row[:30]) > 0).all() and np.abs(np.diff(row)).max() < 0.06
    assert col[0] == 1.0  # no fade at the image border
    assert col[-1] < 0.01


def test_face_crop_and_merge():
    x0, y0, x1, y1 = faces_mod.face_crop((100, 100, 200, 200))
    side = x1 - x0
    assert side == y1 - y0 and 0.55 <= 100 / side <= 0.7
    assert abs((x0 + x1) / 2 - 150) <= 1
    merged = faces_mod.merge_boxes([(100, 100, 200, 200), (105, 98, 205, 202), (400, 400, 450, 450)])
    assert len(merged) == 2
    assert faces_mod.detect_faces(np.full((300, 400, 3), 128, np.uint8)) == []


def _drawn_face(size: int = 400) -> np.ndarray:
    """A cartoon face (skin ellipse, dark eyes and brows, mouth, nose shadow) that the Haar cascade finds."""
    img = np.full((size, size, 3), (60, 90, 120), np.uint8)
    c, s = size // 2, size / 400

    def ell(dx, dy, ax, ay, colour):
        cv2.ellipse(img, (c + int(dx * s), c + int(dy * s)), (int(ax * s), int(ay * s)), 0, 0, 360, colour, -1)

    ell(0, 0, 110, 145, (225, 185, 160))
    for dx in (-45, 45):
        ell(dx, -35, 24, 11, (40, 30, 30))
        ell(dx, -62, 30, 7, (70, 50, 40))
    ell(0, 65, 38, 10, (150, 70, 70))
    ell(0, 25, 14, 8, (180, 140, 120))
    return cv2.GaussianBlur(img, (0, 0), 3 * s)


def test_real_detection_of_a_drawn_face(retoucher):
    photo = np.full((1200, 1600, 3), 50, np.uint8)
    photo[400:800, 500:900] = _drawn_face(400)
    found = faces_mod.detect_faces(photo)
    assert len(found) == 1
    x0, y0, x1, y1 = found[0]
    assert 500 <= x0 < 640 and 760 < x1 <= 900 and 400 <= y0 < 540 and 660 < y1 <= 800
    a = retoucher.analyze(photo)
    assert a.message == "1 face found" and not a.used_tiles
    cx0, cy0, cx1, cy1 = a.regions[0]
    assert cx0 < x0 and cy0 < y0 and cx1 > x1 and cy1 > y1  # the crop has a margin around the face


def test_missing_cascade_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path) + "/")
    faces_mod._cascade.cache_clear()
    try:
        with pytest.raises(RetouchError, match="face detector data"):
            faces_mod.detect_faces(np.full((300, 400, 3), 128, np.uint8))
    finally:
        monkeypatch.undo()
        faces_mod._cascade.cache_clear()


def test_crop_padding_and_mask_pooling():
    img = _skin(200, 200)
    region = pl.Region((-50, -50, 150, 150), (0, 0, 150, 150), 30.0, "face")
    crop = pl.extract_crop(img, region)
    assert crop.shape == (200, 200, 3)
    assert np.array_equal(crop[50:, 50:], img[:150, :150])
    assert np.array_equal(crop[49, 50:], img[1, :150])  # reflected
    stroke = np.zeros((150, 150), np.float32)
    stroke[80, 10:140] = 1.0  # one pixel wide
    native = pl.mask_to_native(stroke, region, 64)
    assert native.max() == 1.0  # a thin stroke survives downsampling
