"""A brush stroke at interactive speed: only what the stroke can change is rendered, composited
and redrawn, the classical fill shows at once, and the result is the full render's."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from PySide6.QtCore import QPointF

from app.pyramid import build_pyramid, to_display_u8
from tests.test_app_window import TIMEOUT, open_and_wait, stroke, until

W, H = 1200, 900


@pytest.fixture()
def face_path(tmp_path, make_portrait):
    from engine.imageio import save_image

    img, spots = make_portrait(W, H, seed=4)
    path = tmp_path / "face.png"  # lossless: the test compares pixels
    save_image(path, img)
    return path, spots


def _levels(doc) -> list[np.ndarray]:
    return [lv.copy() for lv in doc.after_levels]


def _outside(rect, shape) -> np.ndarray:
    out = np.ones(shape[:2], bool)
    x0, y0, x1, y1 = rect
    out[y0:y1, x0:x1] = False
    return out


def _assert_same_outside(before: list[np.ndarray], after: list[np.ndarray], rect) -> None:
    """Every pyramid level keeps its previous pixels outside the footprint of ``rect``."""
    x0, y0, x1, y1 = rect
    for k, (a, b) in enumerate(zip(before, after)):
        f = 2 ** k
        r = (x0 // f, y0 // f, min(-(-x1 // f) + 1, a.shape[1]), min(-(-y1 // f) + 1, a.shape[0]))
        keep = _outside(r, a.shape)
        assert np.array_equal(a[keep], b[keep]), f"level {k} changed outside {r}"


def _full_render_view(doc, r) -> list[np.ndarray]:
    """The display pyramid a full render of the current mask gives."""
    c = doc.to_photo(r.render(doc.analysis, doc.mask.copy()))
    after = r.composite(doc.image, c, 1.0)
    return build_pyramid((doc.to_display or to_display_u8)(after))


def test_stroke_redraws_only_its_rectangle_and_equals_a_full_render(qtbot, make_window, face_path, app_retoucher):
    path, spots = face_path
    w = make_window()
    open_and_wait(qtbot, w, path)
    doc, canvas = w.doc, w.canvas
    canvas.set_view(1.0, QPointF(0, 0))
    w.brush_size_spin.setValue(14)
    w.set_tool("add")
    for i, (sx, sy, _r) in enumerate(spots[:4]):
        if i == 2:
            w.set_tool("erase")  # erase across the previous stroke's end
            sx, sy = spots[1][0] + 8, spots[1][1] + 4
        elif i == 3:
            w.set_tool("add")
        prev = _levels(doc)
        prev_correction = doc.correction
        stroke(canvas, [(sx, sy), (sx + 12, sy + 5)])
        # At once (on the GUI thread, before any model run): the fill preview, inside its rectangle only.
        assert doc.rendered_version < doc.mask_version
        fill_rect = doc.last_update
        assert fill_rect is not None
        _assert_same_outside(prev, doc.after_levels, fill_rect)
        edited = doc.edited_since(doc.rendered_version)
        fx0, fy0, fx1, fy1 = fill_rect
        assert fx0 <= edited[0] and fy0 <= edited[1] and fx1 >= edited[2] and fy1 >= edited[3]
        # Then the model's result, inside the rectangle the engine says the stroke can change.
        until(qtbot, w, lambda: doc.rendered_version == doc.mask_version and not w.busy)
        rect = doc.last_update
        assert rect is not None and doc.correction is not prev_correction
        x0, y0, x1, y1 = rect
        assert x0 <= fx0 and y0 <= fy0 and x1 >= fx1 and y1 >= fy1  # covers the fill preview
        assert (x1 - x0) * (y1 - y0) < 0.25 * W * H  # a small part of the photo
        _assert_same_outside(prev, doc.after_levels, rect)
    # The fast path gives exactly the image a full render of the final mask gives, at every level.
    full = _full_render_view(doc, app_retoucher)
    for k, (a, b) in enumerate(zip(doc.after_levels, full)):
        np.testing.assert_array_equal(a, b, err_msg=f"level {k}")
    np.testing.assert_array_equal(
        app_retoucher.composite(doc.image, doc.correction, 1.0),
        app_retoucher.composite(doc.image, app_retoucher.render(doc.analysis, doc.mask.copy()), 1.0),
    )
    # Undo goes the same way, and still ends at the full render.
    w.act_undo.trigger()
    until(qtbot, w, lambda: doc.rendered_version == doc.mask_version and not w.busy)
    full = _full_render_view(doc, app_retoucher)
    np.testing.assert_array_equal(doc.after_levels[0], full[0])


def test_fill_shows_while_the_model_runs(qtbot, make_window, face_path, app_retoucher, monkeypatch):
    path, spots = face_path
    w = make_window()
    open_and_wait(qtbot, w, path)
    doc, canvas = w.doc, w.canvas
    gate, started = threading.Event(), threading.Event()
    real_run = app_retoucher.run_render

    def gated_run(plan, *, cancel=None):
        if not plan.fill:  # hold the model back (the fill preview runs on the GUI thread)
            started.set()
            gate.wait(60)
        return real_run(plan, cancel=cancel)

    monkeypatch.setattr(app_retoucher, "run_render", gated_run)
    canvas.set_view(1.0, QPointF(0, 0))
    w.brush_size_spin.setValue(24)
    sx, sy, _ = spots[0]
    prev = doc.after_levels[0].copy()
    stroke(canvas, [(sx - 10, sy), (sx + 10, sy)])
    qtbot.waitUntil(started.is_set, timeout=TIMEOUT)
    # The model is held back, and the brushed spot already shows the classical fill.
    assert doc.rendered_version < doc.mask_version and w.busy
    x0, y0, x1, y1 = doc.last_update
    preview = doc.after_levels[0].copy()
    assert not np.array_equal(preview[y0:y1, x0:x1], prev[y0:y1, x0:x1])
    np.testing.assert_array_equal(preview[_outside(doc.last_update, preview.shape)], prev[_outside(doc.last_update, prev.shape)])
    w.set_overlay_visible(False)
    w.strength_slider.setValue(100)
    view = canvas.current_view_array()  # and the canvas shows it
    vy, vx = int(sy), int(sx)
    np.testing.assert_array_equal(view[vy - 3 : vy + 4, vx - 12 : vx + 13], preview[vy - 3 : vy + 4, vx - 12 : vx + 13])
    gate.set()
    until(qtbot, w, lambda: doc.rendered_version == doc.mask_version and not w.busy)
    model = doc.after_levels[0]
    assert not np.array_equal(model[y0:y1, x0:x1], preview[y0:y1, x0:x1])  # the model's result replaced it
    np.testing.assert_array_equal(model, _full_render_view(doc, app_retoucher)[0])


def test_a_stroke_copies_no_full_resolution_buffer(qtbot, make_window, tmp_path, make_portrait):
    """Memory: a stroke's render, composite and redraw allocate far less than one float copy of
    the photo (measured with tracemalloc, which sees NumPy's buffers): the work is done on the
    model's working grid and on the stroke's rectangle."""
    import tracemalloc

    from engine.imageio import save_image

    img, spots = make_portrait(2400, 1800, seed=4)
    path = tmp_path / "big.jpg"
    save_image(path, img, quality=95)
    del img
    w = make_window()
    w.resize(480, 360)  # the view's own buffers follow the screen, not the photo
    open_and_wait(qtbot, w, path)
    doc, canvas = w.doc, w.canvas
    w.brush_size_spin.setValue(28)
    sx, sy, _ = spots[1]
    canvas.set_view(1.0, QPointF(-sx + 200, -sy + 150))
    p = canvas.photo_to_widget(QPointF(sx, sy))
    stroke(canvas, [(p.x(), p.y()), (p.x() + 20, p.y() + 8)])  # a first stroke: caches settle
    until(qtbot, w, lambda: doc.rendered_version == doc.mask_version and not w.busy)
    tracemalloc.start()
    try:
        stroke(canvas, [(p.x() + 60, p.y() - 40), (p.x() + 80, p.y() - 30)])
        until(qtbot, w, lambda: doc.rendered_version == doc.mask_version and not w.busy)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    float_photo = doc.image.shape[0] * doc.image.shape[1] * 3 * 4
    assert doc.last_update is not None and peak < 0.2 * float_photo, (peak, float_photo)
    # Undo keeps only what the strokes changed.
    assert doc.history.nbytes < 0.01 * doc.mask.nbytes


def test_strokes_on_a_wide_gamut_16_bit_photo(qtbot, make_window, make_portrait, tmp_path, app_retoucher):
    """The partial renders go through the photo's own profile (the network works in sRGB) and the
    display conversion like a full render: a 16-bit ProPhoto TIFF ends at the full render's pixels."""
    from tests.test_edit_in import lightroom_tiff

    img, spots = make_portrait(1200, 900, seed=4)
    path = lightroom_tiff(tmp_path / "wide.tif", img)
    w = make_window()
    open_and_wait(qtbot, w, path)
    doc, canvas = w.doc, w.canvas
    assert doc.image.dtype == np.uint16 and doc.to_display is not None and not doc.working.identity
    canvas.set_view(1.0, QPointF(0, 0))
    w.brush_size_spin.setValue(14)
    for sx, sy, _ in spots[:3]:
        prev = _levels(doc)
        stroke(canvas, [(sx, sy), (sx + 12, sy + 5)])
        until(qtbot, w, lambda: doc.rendered_version == doc.mask_version and not w.busy)
        _assert_same_outside(prev, doc.after_levels, doc.last_update)
    full = doc.to_photo(app_retoucher.render(doc.analysis, doc.mask.copy()))
    np.testing.assert_array_equal(app_retoucher.composite(doc.image, doc.correction, 1.0), app_retoucher.composite(doc.image, full, 1.0))
    np.testing.assert_array_equal(doc.after_levels[0], _full_render_view(doc, app_retoucher)[0])
