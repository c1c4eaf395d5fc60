"""Qt-free parts of the app: brush strokes, patch-based undo/redo, display pyramids."""
from __future__ import annotations

import numpy as np
import pytest

from app.maskedit import TILE, Brush, History, Stroke, brush_profile, diff_edit, paint
from app.pyramid import build_pyramid, level_for_scale, update_pyramid
from engine.compositor import mix as blend


def test_brush_profile_hard_and_soft():
    hard = brush_profile(10, 1.0, 50, 50, 0, 0, 100, 100)
    assert hard[50, 50] == 1.0 and hard[50, 61] == 0.0 and hard[50, 58] == 1.0
    soft = brush_profile(10, 0.0, 50, 50, 0, 0, 100, 100)
    assert 0.0 < soft[50, 55] < 1.0  # feathered half way out
    assert soft[50, 50] > soft[50, 53] > soft[50, 57] > soft[50, 59]


def test_stroke_adds_inside_brush_only_and_respects_opacity():
    mask = np.zeros((600, 700), np.float32)
    s = Stroke(mask, Brush(size=20, hardness=1.0, opacity=0.6))
    for x in range(100, 400, 3):  # overlapping dabs must not accumulate beyond the opacity
        s.line_to(x, 300)
    edit = s.finish()
    assert edit is not None
    assert mask[300, 250] == pytest.approx(0.6)
    assert mask.max() == pytest.approx(0.6)
    assert mask[300, 450] == 0 and mask[280, 250] == 0 and mask[320, 250] == 0
    # Only touched tiles are stored, each cropped to its changed box.
    assert all((p.rect[2] - p.rect[0]) <= TILE and (p.rect[3] - p.rect[1]) <= TILE for p in edit.patches)
    total = sum(p.before.size for p in edit.patches)
    assert total < 0.05 * mask.size


def test_a_stroke_paints_over_the_mask_it_was_laid_on_as_paint_says():
    """The benchmarks brush a predicted mask with ``paint``; it must be what a stroke does."""
    rng = np.random.default_rng(3)
    under = (rng.random((300, 300)) * 0.5).astype(np.float32)  # a hazy predicted mask
    for erase, opacity in ((False, 1.0), (False, 0.4), (True, 0.7)):
        mask = under.copy()
        s = Stroke(mask, Brush(size=60, hardness=0.3, opacity=opacity, erase=erase))
        s.stamp(150, 150)
        cov = brush_profile(30, 0.3, 150, 150, 0, 0, 300, 300)
        np.testing.assert_allclose(mask, paint(under, cov, erase, opacity), atol=1e-6)
    painted = paint(under, np.ones_like(under))
    assert painted.dtype == np.float32 and np.all(painted == 1.0)  # full coverage: the stroke's value
    np.testing.assert_array_equal(paint(under, np.zeros_like(under)), under)  # untouched: the mask as it was
    half = paint(under, np.full_like(under, 0.5))
    np.testing.assert_allclose(half, under + 0.5 * (1.0 - under), atol=1e-6)  # halfway toward 1, prediction kept


def test_erase_and_undo_redo_restore_exact_values():
    rng = np.random.default_rng(0)
    mask = rng.random((500, 520)).astype(np.float32)
    original = mask.copy()
    h = History()
    s = Stroke(mask, Brush(size=40, hardness=0.5, erase=True))
    s.line_to(100, 100)
    s.line_to(400, 380)
    h.push(s.finish())
    after = mask.copy()
    assert mask[240, 250] == 0.0 and not np.array_equal(mask, original)
    assert h.undo(mask) is not None
    np.testing.assert_array_equal(mask, original)
    assert h.redo(mask) is not None
    np.testing.assert_array_equal(mask, after)
    assert not h.can_redo() and h.can_undo()


def test_history_stores_patches_not_whole_masks():
    mask = np.zeros((4000, 6000), np.float32)  # 24 MP
    h = History()
    s = Stroke(mask, Brush(size=30))
    s.line_to(3000, 2000)
    h.push(s.finish())
    assert h.nbytes < 2 * 4 * 64 * 64  # a 30-px dab: a few KB, not 96 MB


def test_diff_edit_reset_roundtrip():
    a = np.zeros((300, 300), np.float32)
    b = a.copy()
    b[10:20, 200:260] = 0.5
    e = diff_edit(a, b, "reset")
    assert e is not None and e.bounds() == (200, 10, 260, 20)
    assert diff_edit(a, a.copy(), "none") is None


def test_pyramid_patch_update_matches_rebuild():
    rng = np.random.default_rng(1)
    base = (rng.random((1001, 777)) * 255).astype(np.uint8)
    levels = build_pyramid(base, min_side=64)
    assert [lv.shape for lv in levels][:3] == [(1001, 777), (501, 389), (251, 195)]
    base[400:460, 300:333] = 255
    update_pyramid(levels, (300, 400, 333, 460))
    fresh = build_pyramid(base.copy(), min_side=64)
    for lv, fr in zip(levels, fresh):
        np.testing.assert_array_equal(lv, fr)


def test_level_choice_and_blend():
    assert level_for_scale(1.0, 6) == 0 and level_for_scale(2.0, 6) == 0
    assert level_for_scale(0.5, 6) == 1 and level_for_scale(0.3, 6) == 1 and level_for_scale(0.2, 6) == 2
    assert level_for_scale(0.0001, 6) == 5
    a, b = np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 200, np.uint8)
    assert blend(a, b, 0.0) is a and blend(a, b, 1.0) is b
    assert int(blend(a, b, 0.25)[0, 0, 0]) == 50


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_after_pyramid_equals_full_rebuild(dtype):
    from app.pyramid import after_pyramid, changed_rect, to_display_u8

    rng = np.random.default_rng(2)
    hi = 255 if dtype == np.uint8 else 65535
    image = rng.integers(0, hi, (700, 900, 3)).astype(dtype)
    after = image.copy()
    after[200:260, 333:480] = hi // 3
    assert changed_rect(image, after) == (333, 200, 480, 260)
    assert changed_rect(image, image.copy()) is None
    before = build_pyramid(to_display_u8(image), min_side=64)
    got = after_pyramid(before, image, after)
    want = build_pyramid(to_display_u8(after), min_side=64)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    np.testing.assert_array_equal(before[1], build_pyramid(to_display_u8(image), min_side=64)[1])  # untouched
    for g, w in zip(after_pyramid(before, image, after, boxes=[(333, 200, 400, 260), (400, 210, 480, 250)]), want):
        np.testing.assert_array_equal(g, w)  # known boxes give the same result
    assert after_pyramid(before, image, image.copy(), boxes=[])[0] is before[0]
