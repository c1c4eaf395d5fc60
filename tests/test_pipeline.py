"""Full-resolution pipeline: regions, frequency separation, masks, compositor and the Retoucher API."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from engine import faces as faces_mod
from engine import pipeline as pl
from engine import regions as rg
from engine.compositor import Correction, CorrectionBuilder, Patch, blend_weights, composite
from engine.faces import Face
from engine.imageio import to_float
from engine.errors import Cancelled, ImageError, RetouchError, WeightsError
from engine.model.checkpoint import save_model
from engine.model.config import ModelConfig
from engine.model.retouchformer import RetouchFormer
from engine.retoucher import Analysis, Retoucher
from engine.training.metrics import srgb_to_lab

FACE = (150, 110, 310, 270)  # a 160 px "face" box in a 480x400 photo


def fake_face(box, score: float = 0.95) -> Face:
    """A detection with a frontal face's landmarks inside ``box``."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    pts = ((0.3, 0.4), (0.7, 0.4), (0.5, 0.6), (0.35, 0.8), (0.65, 0.8))
    return Face(tuple(box), tuple((x0 + a * w, y0 + b * h) for a, b in pts), score)


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
    monkeypatch.setattr(faces_mod, "detect", lambda image, **kw: [fake_face(FACE)])


@pytest.fixture
def no_face(monkeypatch):
    monkeypatch.setattr(faces_mod, "detect", lambda image, **kw: [])


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
    img[:, :60] = (40, 60, 140)  # a blue band: no skin, left out by the skin tiles' mask
    a = retoucher.analyze(img)
    assert isinstance(a, Analysis)
    assert a.message.startswith("1 face found; blemish size") and a.plan.regions[0].kind == "face"
    assert a.mask.shape == img.shape[:2] and a.mask.dtype == np.float32
    x0, y0, x1, y1 = a.regions[0]
    assert x0 <= FACE[0] and y0 <= FACE[1] and x1 >= FACE[2] and y1 >= FACE[3]
    # The predicted mask is exactly 0 off skin; the output is bit-identical wherever it is 0.
    assert (a.mask[:, :50] == 0).all()
    outside = a.mask == 0
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
    assert a.message.startswith("No face found; blemish size") and "(assumed: no face)" in a.message
    assert a.plan.source == "default" and all(r.kind == "tile" for r in a.plan.regions)
    cover = np.zeros(img.shape[:2], bool)
    for x0, y0, x1, y1 in a.regions:
        cover[y0:y1, x0:x1] = True
    assert cover.all()
    out = retoucher.composite(img, retoucher.render(a, np.ones(img.shape[:2], np.float32)), 1.0)
    assert (out != img).any()
    # A user's blemish size sets the scale: a smaller size means a finer scale, more working pixels.
    fine = retoucher.analyze(img, blemish_size=a.blemish_size / 3)
    assert fine.plan.source == "user" and fine.blemish_size == pytest.approx(a.blemish_size / 3)
    assert sum(r.n ** 2 for r in fine.plan.regions) > 4 * sum(r.n ** 2 for r in a.plan.regions)
    with pytest.raises(RetouchError, match="blemish size"):
        retoucher.analyze(img, blemish_size=-1)


def test_overlapping_tiles_form_a_partition_of_unity():
    shape = (900, 1300)
    plan = rg.plan_regions(shape, [], 1.6, blemish_size=6.0)  # 2 px/mm: tiles of 240 px
    tiles = plan.regions
    assert len(tiles) > 4 and all(r.kind == "tile" for r in tiles)
    total = np.zeros(shape, np.float32)
    for i, r in enumerate(tiles):
        x0, y0, x1, y1 = r.box
        total[y0:y1, x0:x1] += pl.region_weights(tiles, shape, i)
    np.testing.assert_allclose(total, 1.0, atol=1e-5)


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
    margin = 6 * int(np.ceil(max(r.side / r.n for r in a.plan.regions)))
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
    for p in c.patches:
        assert p.delta.dtype == np.float16
        px0, py0, px1, py1 = p.box
        assert any(x0 <= px0 < px1 <= x1 and y0 <= py0 < py1 <= y1 for x0, y0, x1, y1 in a.regions)
    area = np.zeros(img.shape[:2], np.int32)
    for p in c.patches:
        x0, y0, x1, y1 = p.box
        area[y0:y1, x0:x1] += 1
    assert area.max() == 1  # disjoint boxes: every pixel stored at most once
    assert c.nbytes <= img.size * 2


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
    model = RetouchFormer(ModelConfig.preset("tiny", colour_lock_mm=0.0))  # a uniform correction passes
    with torch.no_grad():
        model.synthesis.out.bias.fill_(0.12)  # weight stays 0: synthesis = fill + 0.12
    save_model(model, tmp_path / "const.safetensors")
    r = Retoucher.load(tmp_path / "const.safetensors", device="cpu")
    monkeypatch.setattr(faces_mod, "detect", lambda image, **kw: [fake_face((100, 120, 220, 240)), fake_face((190, 120, 310, 240))])
    # a constant correction is what this test follows through the blending; the tone hold would
    # (rightly) take it back off skin the mask net calls clean
    r.tone_sigma = 0.0
    img = np.full((400, 480, 3), 100, np.uint8)  # grey: no skin colour, so no skin tiles
    a = r.analyze(img)
    assert a.message.startswith("2 faces found") and len(a.regions) == 2
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
    img[:, :120] = (40, 60, 140)  # no skin there: no tile is planned over it
    img[50:70, 40:80] = (200, 150, 130)  # ... except a skin-coloured patch a user brushes
    a = retoucher.analyze(img)
    user = a.mask.copy()
    user[50:70, 40:80] = 1.0  # a stroke far outside the face crop
    pred = retoucher.composite(img, retoucher.render(a), 1.0)
    out = retoucher.composite(img, retoucher.render(a, user), 1.0)
    diff = (out != pred).any(axis=2)
    assert diff[50:70, 40:80].any()
    margin = 6 * int(np.ceil(max(r.side / r.n for r in a.plan.regions + [e.region for e in a.extras])))
    outside = np.ones_like(diff)
    outside[50 - margin : 70 + margin, 40 - margin : 80 + margin] = False
    assert not diff[outside].any()
    n_extras = len(a.extras)
    retoucher.render(a, user)
    assert len(a.extras) == n_extras  # analysed once, then reused


def test_false_detection_does_not_leave_the_rest_out(retoucher, monkeypatch):
    """A small unsure 'face' on a photo of skin: the whole photo is still planned (at the default
    scale, not the detection's), and every skin pixel lies in some region."""
    monkeypatch.setattr(faces_mod, "detect", lambda image, **kw: [fake_face((300, 200, 340, 240), score=0.65)])
    img = _skin(600, 900)
    a = retoucher.analyze(img)
    kinds = [r.kind for r in a.plan.regions]
    assert kinds[0] == "face" and "tile" in kinds
    cover = np.zeros(img.shape[:2], bool)
    for x0, y0, x1, y1 in a.regions:
        cover[y0:y1, x0:x1] = True
    assert cover.all()


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


def test_crop_padding_and_mask_pooling():
    img = _skin(200, 200)
    region = rg.Region((-50, -50, 150, 150), (0, 0, 150, 150), 64, 30.0, "face", 0)
    crop = pl.extract_crop(img, region)
    assert crop.shape == (200, 200, 3)
    assert np.array_equal(crop[50:, 50:], img[:150, :150])
    assert np.array_equal(crop[49, 50:], img[1, :150])  # reflected
    stroke = np.zeros((150, 150), np.float32)
    stroke[80, 10:140] = 1.0  # one pixel wide
    work = pl.mask_to_work(stroke, region)
    assert work.shape == (64, 64) and work.max() == 1.0  # a thin stroke survives downsampling


# --------------------------------------------------------------------------------------------
# Brush strokes: partial renders


def _dense(c: Correction) -> np.ndarray:
    out = np.zeros(tuple(c.shape) + (3,), np.float32)
    for p in c.patches:
        x0, y0, x1, y1 = p.box
        out[y0:y1, x0:x1] += p.delta.astype(np.float32)
    return out


def _brush(mask: np.ndarray, cx: float, cy: float, radius: float, value: float) -> tuple[int, int, int, int]:
    h, w = mask.shape
    x0, y0 = max(0, int(cx - radius - 1)), max(0, int(cy - radius - 1))
    x1, y1 = min(w, int(cx + radius + 2)), min(h, int(cy + radius + 2))
    yy, xx = np.mgrid[y0:y1, x0:x1]
    d = np.sqrt((xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2)
    cov = np.clip(radius - d + 0.5, 0.0, 1.0).astype(np.float32)
    part = mask[y0:y1, x0:x1]
    part[...] = part + (value - part) * cov
    return x0, y0, x1, y1


def test_partial_renders_equal_a_full_render(app_retoucher, make_portrait):
    """Strokes rendered one by one with render(since=, rect=) and merged give exactly the full
    render of the final mask, and each full render differs from the previous one only inside the
    rectangle the partial render covers."""
    r = app_retoucher
    img, spots = make_portrait(1600, 1200, seed=2)
    a = r.analyze(img)
    assert a.plan.regions[0].kind == "face" and a.plan.regions[0].side > a.plan.regions[0].n  # the face works downscaled
    mask = a.mask.copy()
    c = r.render(a)
    prev_full = c
    (x1, y1, _), (x2, y2, _), (x3, y3, _) = spots[:3]
    strokes = [
        ("add", x1, y1, 9, 1.0),
        ("add", x2, y2, 7, 1.0),
        ("near the second: joins its cluster", x2 + 25, y2 + 10, 6, 1.0),
        ("erase across the first", x1 + 6, y1, 8, 0.0),
        ("add", x3, y3, 10, 0.8),
        ("outside every region", 40, 40, 12, 1.0),
    ]
    saved = None
    moved = []
    for name, cx, cy, rad, value in strokes:
        if name == "add" and saved is None:
            saved = mask.copy()
        rect = _brush(mask, cx, cy, rad, value)
        part = r.render(a, mask, since=c, rect=rect)
        assert part.rect is not None, name
        px0, py0, px1, py1 = part.rect
        assert px0 <= rect[0] and py0 <= rect[1] and px1 >= rect[2] and py1 >= rect[3], name
        quick = r.render(a, mask, since=c, rect=rect, fill=True)  # the preview: inside the same rectangle
        qx0, qy0, qx1, qy1 = quick.rect
        assert px0 <= qx0 and py0 <= qy0 and px1 >= qx1 and py1 >= qy1, name
        c = c.update(part)
        full = r.render(a, mask.copy())
        np.testing.assert_array_equal(_dense(c), _dense(full), err_msg=name)
        changed = (_dense(full) != _dense(prev_full)).any(axis=2)
        outside = np.ones(changed.shape, bool)
        outside[py0:py1, px0:px1] = False
        assert not changed[outside].any(), name
        moved.append(bool(changed.any()))
        prev_full = full
    # An undo: the mask goes back to an earlier state inside the strokes' rectangle.
    x0, y0, x1_, y1_ = (0, 0, mask.shape[1], mask.shape[0])
    diff = np.argwhere(mask != saved)
    (y0, x0), (y1_, x1_) = diff.min(axis=0), diff.max(axis=0) + 1
    mask[...] = saved
    c = c.update(r.render(a, mask, since=c, rect=(int(x0), int(y0), int(x1_), int(y1_))))
    np.testing.assert_array_equal(_dense(c), _dense(r.render(a, mask.copy())))
    assert all(moved), moved  # every stroke changed the result
    assert len(a.extras) >= 1  # the stroke outside the face got a region of its own
    out = r.composite(img, c, 1.0)
    np.testing.assert_array_equal(out, r.composite(img, r.render(a, mask.copy()), 1.0))


def test_a_lone_stroke_reaches_a_few_working_pixels(app_retoucher, make_portrait):
    """The documented reach: a stroke away from other edits changes the correction only within
    EDIT_FEATHER + 1 working pixels (and the photo's own pixels it painted)."""
    r = app_retoucher
    img, spots = make_portrait(1600, 1200, seed=2)
    a = r.analyze(img)
    face = a.plan.regions[0]
    c = r.render(a)
    mask = a.mask.copy()
    x, y, _ = spots[0]
    rect = _brush(mask, x, y, 6, 1.0)
    part = r.render(a, mask, since=c, rect=rect)
    per = face.side / face.n  # photo pixels per working pixel
    grow = int(np.ceil((pl.EDIT_FEATHER + 1 + 2 + np.ceil(face.n / face.side) + 2) * per)) + 3
    px0, py0, px1, py1 = part.rect
    assert px0 >= rect[0] - grow and py0 >= rect[1] - grow and px1 <= rect[2] + grow and py1 <= rect[3] + grow
    full = r.render(a, mask.copy())
    changed = (_dense(full) != _dense(c)).any(axis=2)
    ys, xs = np.nonzero(changed)
    assert ys.size and xs.min() >= px0 and xs.max() < px1 and ys.min() >= py0 and ys.max() < py1


def test_the_transformer_reaches_the_whole_region(app_retoucher):
    """Why edits are synthesised on crops of their own: with shifted windows, one token's weight
    changes every token of a 256-px region (32 x 32 tokens) after the transformer's blocks."""
    model = app_retoucher.model
    cfg = model.config
    torch.manual_seed(0)
    frames = torch.randn(1, len(cfg.frames), cfg.token_dim, 32, 32)
    w = torch.full((1, 1, 32, 32), 0.05)
    w2 = w.clone()
    w2[..., 3, 3] = 1.0
    with torch.inference_mode():
        d = (model.transformer(frames, w) - model.transformer(frames, w2)).abs().amax(dim=(1, 2))[0]
    assert (d > 0).all()


def test_windowed_pieces_equal_the_whole():
    """Every photo <-> working-grid mapping is pointwise: a window gives the same values as the
    same part of the whole (what makes partial renders exact)."""
    rng = np.random.default_rng(0)
    img = _skin(300, 360)
    shape = img.shape[:2]
    regions = [
        rg.Region((-40, 20, 200, 260), (0, 20, 200, 260), 64, 30.0, "face", 0),  # downscaled, leaves the image
        rg.Region((150, -30, 390, 210), (150, 0, 360, 210), 96, 40.0, "tile", 1),
        rg.Region((100, 150, 160, 210), (100, 150, 160, 210), 96, 10.0, "tile", 1),  # upscaled (side < n)
    ]
    mask = (rng.random(shape) > 0.97).astype(np.float32) * rng.random(shape).astype(np.float32)
    pred = np.clip(mask + rng.normal(0, 0.01, shape).astype(np.float32), 0, 1)
    for region in regions:
        x0, y0, x1, y1 = region.box
        n = region.n
        fill = rng.random((n, n)).astype(np.float32)
        whole = pl.mask_to_work(mask[y0:y1, x0:x1], region, fill=fill)
        ch, us = pl.edit_maps(mask[y0:y1, x0:x1], pred[y0:y1, x0:x1], region)
        for win in [(0, 0, n, n), (5, 7, 20, 33), (n - 9, 0, n, n // 2)]:
            wx0, wy0, wx1, wy1 = win
            np.testing.assert_array_equal(pl.mask_to_work(mask[y0:y1, x0:x1], region, fill=fill, window=win), whole[wy0:wy1, wx0:wx1])
            c2, u2 = pl.edit_maps(mask[y0:y1, x0:x1], pred[y0:y1, x0:x1], region, win)
            np.testing.assert_array_equal(c2, ch[wy0:wy1, wx0:wx1])
            np.testing.assert_array_equal(u2, us[wy0:wy1, wx0:wx1])
        # a photo box touches exactly the working window work_window gives (or less)
        box = (x0 + 17, y0 + 9, x0 + 40, y0 + 31)
        win = pl.work_window(region, box)
        m2 = mask.copy()
        m2[box[1] : box[3], box[0] : box[2]] = 1.0 - m2[box[1] : box[3], box[0] : box[2]]
        moved = pl.mask_to_work(m2[y0:y1, x0:x1], region) != pl.mask_to_work(mask[y0:y1, x0:x1], region)
        outside = np.ones_like(moved)
        outside[win[1] : win[3], win[0] : win[2]] = False
        assert moved.any() and not moved[outside].any()
        x_n = rng.random((n, n, 3)).astype(np.float32)
        d_n = rng.normal(0, 0.05, (n, n, 3)).astype(np.float32)
        g_n = rng.random((n, n)).astype(np.float32)
        full = pl.full_res_delta(img, region, x_n, d_n, g_n)
        for _ in range(12):  # any rectangle
            sx0, sy0 = rng.integers(0, x1 - x0 - 1), rng.integers(0, y1 - y0 - 1)
            sx1, sy1 = rng.integers(sx0 + 1, x1 - x0 + 1), rng.integers(sy0 + 1, y1 - y0 + 1)
            sub = (x0 + sx0, y0 + sy0, x0 + sx1, y0 + sy1)
            np.testing.assert_array_equal(pl.full_res_delta(img, region, x_n, d_n, g_n, sub), full[sy0:sy1, sx0:sx1])
        # what a working window reaches on the photo (photo_reach) bounds the change of the upsampling
        wb = (10, 12, 14, 15)
        d2 = d_n.copy()
        d2[wb[1] : wb[3], wb[0] : wb[2]] += 1.0
        moved = (pl.full_res_delta(img, region, x_n, d2, g_n) != full).any(axis=2)
        rx0, ry0, rx1, ry1 = pl.photo_reach(region, wb)
        outside = np.ones_like(moved)
        outside[ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0] = False
        assert moved.any() and not moved[outside].any()
        for i in range(len(regions)):
            whole_w = pl.region_weights(regions, shape, i)
            bx0, by0 = regions[i].box[:2]
            sub = (bx0 + 3, by0 + 5, bx0 + 50, by0 + 41)
            np.testing.assert_array_equal(pl.region_weights(regions, shape, i, sub), whole_w[5:41, 3:50])


def test_correction_update_and_rect_composite():
    shape = (40, 50)
    b = CorrectionBuilder(shape, np.uint8, [(0, 0, 30, 30), (10, 10, 50, 40)])
    b.add((0, 0, 30, 30), np.full((30, 30, 3), 10.0, np.float32))
    b.add((10, 10, 50, 40), np.full((30, 40, 3), -4.0, np.float32))
    c = b.build()
    img = np.full(shape + (3,), 100, np.uint8)
    part = Correction(shape, np.dtype(np.uint8), [Patch((12, 8, 20, 14), np.full((6, 8, 3), 50, np.float16))], rect=(10, 5, 25, 20), work="w")
    merged = c.update(part)
    assert merged.rect is None and merged.work == "w" and c.patches and c.rect is None  # c itself unchanged
    area = np.zeros(shape, int)
    for p in merged.patches:
        x0, y0, x1, y1 = p.box
        area[y0:y1, x0:x1] += 1
        assert any(np.shares_memory(p.delta, q.delta) for q in c.patches + part.patches)  # views, not copies
    assert area.max() == 1
    out = composite(img, merged, 1.0)
    expected = composite(img, c, 1.0)
    expected[5:20, 10:25] = 100  # inside the rectangle: the partial only
    expected[8:14, 12:20] = 150
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(composite(img, merged, 0.5, rect=(8, 3, 33, 27)), composite(img, merged, 0.5)[3:27, 8:33])
    assert c.update(Correction(shape, np.dtype(np.uint8), [], rect=None)).patches == []  # a full one replaces all


def _lightness(im: np.ndarray) -> np.ndarray:
    """L* (0-100) of an 8-bit RGB image, per pixel: the evaluation's colour conversion."""
    return srgb_to_lab(to_float(im))[..., 0]


def test_a_broad_brush_over_a_flushed_cheek_leaves_no_pale_patch(app_retoucher, make_portrait, monkeypatch):
    """The bundled model under a photographer's broad brush (a disc 2.6 cm across around a spot, on
    skin that is redder and darker there): the clean skin under the brush within 8 mm of the spot
    keeps the photo's lightness (within 0.5 L*), through the whole run-time path, and so does the
    classical fill the GUI shows while the model runs. Without the tone hold
    (engine.model.fill.hold_tone) the fill takes the brush border's paler tone. Further from the
    spot the hold fades out (``TONE_NEAR``) where the photo's tone is off the skin's around the
    brush (``border_match``), as over the middle of this flush, and the brush replaces the tone
    with its border's."""
    img, spots = make_portrait(1024, 768, seed=0)
    r = app_retoucher
    px_per_mm = r.analyze(img).plan.px_per_mm
    x, y, _ = spots[0]
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    s = 8 * px_per_mm
    flush = np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * s * s))[..., None]
    photo = np.clip(img * (1 - flush * np.array([0.05, 0.15, 0.12])), 0, 255).round().astype(np.uint8)
    a = r.analyze(photo)
    brush = cv2.GaussianBlur(((yy - y) ** 2 + (xx - x) ** 2 <= (1.6 * s) ** 2).astype(np.float32), (0, 0), px_per_mm)
    near = (yy - y) ** 2 + (xx - x) ** 2 <= (8 * px_per_mm) ** 2
    between = (brush > 0.9) & (a.mask < 0.05) & near
    assert between.sum() > 1500

    def lightness_shift(out: np.ndarray) -> float:
        return float(_lightness(out)[between].mean() - _lightness(photo)[between].mean())

    def preview_shift(a) -> float:  # the classical fill the GUI shows while the model runs
        mask = np.maximum(a.mask, brush)
        ys, xs = np.nonzero(mask != a.mask)
        p = r.render(a, mask, since=r.render(a, a.mask.copy()), rect=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), fill=True)
        out = photo.copy()
        x0, y0, x1, y1 = p.rect
        out[y0:y1, x0:x1] = r.composite(photo, p, 1.0, p.rect)
        return lightness_shift(out)

    held = lightness_shift(r.composite(photo, r.render(a, brush), 1.0))
    held_preview = preview_shift(a)
    monkeypatch.setattr(r, "tone_sigma", 0.0)  # the hold off (before the analysis, which remembers syntheses)
    a = r.analyze(photo)
    plain = lightness_shift(r.composite(photo, r.render(a, brush), 1.0))
    assert abs(held) < 0.5 < plain
    assert abs(held_preview) < 0.5 < preview_shift(a)


def test_a_brush_over_an_under_eye_circle_takes_its_tone_away(app_retoucher, make_portrait, monkeypatch):
    """A photographer brushes over a dark circle below an eye, with two spots at the lash line: the
    tone hold, which near spots keeps the photo's tone on the clean skin under a brush, stays off
    below the eyes (engine.features.under_eyes), so the circle takes the cheek's tone as it would
    with the hold off everywhere, through the whole run-time path. With the zone taken away, the
    hold keeps the circle darker."""
    import engine.retoucher as retoucher_mod
    from engine.features import under_eyes

    img, _ = make_portrait(1024, 768, seed=0)
    r = app_retoucher
    a = r.analyze(img)
    assert len(a.faces) == 1
    f = a.faces[0]
    (ex, ey), (rx, ry) = f.landmarks[0], f.landmarks[1]
    d = float(np.hypot(rx - ex, ry - ey))
    ppm = a.plan.px_per_mm
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    circle = np.exp(-(((xx - ex) / (0.3 * d)) ** 2 + ((yy - ey - 0.18 * d) / (0.12 * d)) ** 2))
    photo = img * (1 - 0.6 * circle[..., None] * np.array([0.22, 0.31, 0.25]))
    for sx in (-0.12, 0.1):  # two spots at the lash line
        spot = np.exp(-((xx - ex - sx * d) ** 2 + (yy - ey - 0.1 * d) ** 2) / (2 * (0.6 * ppm) ** 2))
        photo = photo * (1 - 0.5 * spot[..., None] * np.array([0.2, 0.45, 0.4]))
    photo = np.clip(photo, 0, 255).round().astype(np.uint8)
    brush = cv2.GaussianBlur((circle > 0.3).astype(np.float32), (0, 0), ppm)
    n = max(h, w)
    zone = under_eyes(a.faces, (0, 0, n, n), n)[:h, :w]

    def retouched() -> tuple[np.ndarray, np.ndarray]:  # (the retouched photo, its predicted mask)
        b = r.analyze(photo)
        return r.composite(photo, r.render(b, np.maximum(b.mask, brush)), 1.0), b.mask

    out, pred = retouched()
    inside = (circle > 0.5) & (pred < 0.05)
    core = inside & (zone > 0.99)
    assert core.sum() > 500
    assert _lightness(out)[inside].mean() > _lightness(photo)[inside].mean() + 2.0  # the circle is lifted
    monkeypatch.setattr(r, "tone_sigma", 0.0)
    off, _ = retouched()
    assert np.abs(out.astype(np.float32) - off)[core].mean() < 0.5  # as with the hold off
    monkeypatch.undo()
    monkeypatch.setattr(retoucher_mod, "under_eyes", lambda *args, **kw: None)
    held, _ = retouched()
    assert _lightness(held)[inside].mean() < _lightness(out)[inside].mean() - 1.0  # without the zone the hold keeps it dark


def test_the_tone_hold_reads_the_prediction_without_its_haze_when_the_weights_say_so(tiny_weights, make_portrait):
    """ModelConfig.hold_tophat_mm: the tone hold under a brush reads the region's prediction with
    the haze under its peaks taken away; 0 (every checkpoint before it) reads it as it is."""
    import dataclasses

    import torch

    from engine.retoucher import Retoucher

    img, _ = make_portrait(512, 384, seed=1)
    plain = Retoucher.load(tiny_weights, device="cpu")
    assert all(s.tone_n is None for s in plain.analyze(img).states)
    r = Retoucher.load(tiny_weights, device="cpu")
    r.model.config = dataclasses.replace(r.model.config, hold_tophat_mm=6.0)
    a = r.analyze(img)
    assert a.states
    r.render(a, np.ones(img.shape[:2], np.float32))  # strokes everywhere: regions of their own beside the planned ones
    assert a.extras  # (their edits are laid over the analysis's mask, which the hold then reads)
    for s in a.states + a.extras:
        with torch.inference_mode():
            want = r.model.tophat(torch.from_numpy(s.mask_n)[None, None], 6.0)[0, 0].numpy()
        assert np.abs(want - s.mask_n).max() > 0.05  # (the tiny model's prediction has a haze to take away)
        np.testing.assert_allclose(s.tone_n, want, atol=1e-6)
    with pytest.raises(ValueError, match="hold_tophat_mm"):
        dataclasses.replace(r.model.config, hold_tophat_mm=-1.0)


def test_the_tone_hold_reads_the_prediction_strengthened_and_grown_when_the_weights_say_so(tiny_weights, make_portrait):
    """ModelConfig.hold_floor, hold_gain and hold_dilate_mm: after the top-hat the hold's reading
    drops the haze below the floor, is multiplied (clipped at 1) and grown by a grey dilation, so a
    spot's faint halo counts as blemish and the skin between spots as clean skin, whose tone the
    hold keeps; the mask the fill is handed stays as it was."""
    import dataclasses

    import torch
    import torch.nn.functional as F

    from engine.retoucher import Retoucher

    img, _ = make_portrait(512, 384, seed=1)
    plain = Retoucher.load(tiny_weights, device="cpu")
    base = plain.analyze(img)
    r = Retoucher.load(tiny_weights, device="cpu")
    r.model.config = dataclasses.replace(r.model.config, hold_tophat_mm=6.0, hold_floor=0.1, hold_gain=2.0, hold_dilate_mm=1.25)
    a = r.analyze(img)
    assert a.states and len(a.states) == len(base.states)
    px = r.model.config.work_px_per_mm
    rad = int(round(1.25 * px))
    assert rad >= 1
    for s, b in zip(a.states, base.states):
        np.testing.assert_array_equal(s.mask_n, b.mask_n)  # the fill's mask is untouched
        with torch.inference_mode():
            t = r.model.tophat(torch.from_numpy(s.mask_n)[None, None], 6.0)
            floored = ((t - 0.1) / 0.9).clamp(0.0, 1.0)
            want = F.max_pool2d((floored * 2.0).clamp(0.0, 1.0), 2 * rad + 1, 1, rad)[0, 0].numpy()
        np.testing.assert_allclose(s.tone_n, want, atol=1e-6)
        th = t[0, 0].numpy()
        assert (s.tone_n[th < 0.1] == 0.0).mean() > 0.5  # the haze below the floor reads as clean skin
        assert (s.tone_n > th + 0.01).any()  # and the spots above it read stronger (doubled, grown)
        assert s.tone_n.max() <= 1.0
    for bad in (dict(hold_floor=1.0), dict(hold_gain=0.5), dict(hold_dilate_mm=-1.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            dataclasses.replace(r.model.config, **bad)
    # a gain or dilation alone (no top-hat) is a reading of its own too
    g = Retoucher.load(tiny_weights, device="cpu")
    g.model.config = dataclasses.replace(g.model.config, hold_gain=3.0)
    for s in g.analyze(img).states:
        np.testing.assert_allclose(s.tone_n, np.clip(3.0 * s.mask_n, 0.0, 1.0), atol=1e-6)
