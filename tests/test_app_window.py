"""The main window end to end, offscreen, with the real engine and its bundled model."""
from __future__ import annotations

import functools
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication

from app.document import sidecar_path
from engine.imageio import load_mask, save_image

W, H = 800, 600
TIMEOUT = 120_000


def _exif_bytes() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "TestCam"  # Make
    exif[0x0110] = "Model 7"  # Model
    return exif.tobytes()


@functools.lru_cache(maxsize=1)
def _icc_bytes() -> bytes:  # cached: the profile embeds its creation time
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.fixture()
def photo_path(tmp_path, make_portrait) -> Path:
    img, _ = make_portrait(W, H, seed=1)
    path = tmp_path / "IMG_0001.jpg"
    save_image(path, img, exif=_exif_bytes(), icc_profile=_icc_bytes(), quality=95)
    return path


def until(qtbot, w, cond, timeout: int = TIMEOUT) -> None:
    """Wait for ``cond``; fail at once (with the message) if the app showed an error dialog."""

    def check() -> bool:
        assert not w.prompter.errors, w.prompter.errors
        return bool(cond())

    qtbot.waitUntil(check, timeout=timeout)


def open_and_wait(qtbot, w, path: Path) -> None:
    w.open_photo(path)
    until(qtbot, w, lambda: w.doc is not None and w.doc.path == Path(path) and w.doc.after_levels is not None
          and not w.busy)


def mouse(canvas, kind: QEvent.Type, x: float, y: float, button=Qt.MouseButton.LeftButton) -> None:
    buttons = Qt.MouseButton.NoButton if kind == QEvent.Type.MouseButtonRelease else button
    pos = QPointF(x, y)
    ev = QMouseEvent(kind, pos, canvas.mapToGlobal(pos), button, buttons, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(canvas, ev)


def stroke(canvas, points: list[tuple[float, float]]) -> None:
    mouse(canvas, QEvent.Type.MouseButtonPress, *points[0])
    for p in points[1:]:
        mouse(canvas, QEvent.Type.MouseMove, *p)
    mouse(canvas, QEvent.Type.MouseButtonRelease, *points[-1])


def test_open_shows_predicted_overlay(qtbot, make_window, portrait, prompter, tmp_path):
    path = tmp_path / "big portrait.jpg"
    save_image(path, portrait, quality=90)  # ~3 MP
    h, w_ = portrait.shape[:2]
    w = make_window()
    w.prompter.open_path = str(path)
    w.act_open.trigger()  # File > Open, through the (fake) file dialog
    until(qtbot, w, lambda: w.doc is not None and w.doc.mask is not None)  # the predicted overlay is up
    doc = w.doc
    assert doc.mask.shape == (h, w_) and doc.mask.dtype == np.float32
    assert np.array_equal(doc.mask, np.clip(doc.analysis.mask, 0, 1))
    assert len(doc.before_levels) >= 3  # display pyramid, not rescaling per paint
    assert w.findChild(type(w.canvas), "canvas") is w.canvas
    until(qtbot, w, lambda: doc.after_levels is not None and not w.busy)
    # The overlay tints the view where the mask is set: overlay on vs off differ exactly there.
    doc.mask[:] = 0
    doc.mask[100:200, 100:300] = 1.0
    doc.mask_changed((0, 0, w_, h))
    w.canvas.set_view(1.0, QPointF(0, 0))
    w.set_overlay_visible(True)
    on = w.canvas.current_view_array().copy()
    w.overlay_slider.setValue(0)
    assert np.array_equal(w.canvas.current_view_array(), on) is False  # opacity slider acts
    w.overlay_slider.setValue(60)
    w.act_overlay.trigger()  # the O key's action hides it
    assert not w.canvas.show_overlay
    off = w.canvas.current_view_array().copy()
    diff = np.any(on != off, axis=-1)
    assert diff[120:180, 120:280].all()
    assert not diff[300:, :].any() and not diff[:, 400:].any()
    assert "Device" in w.device_label.text()
    assert not prompter.errors


@pytest.mark.parametrize("zoom, ox, oy", [(2.0, -300.0, -200.0), (0.5, 40.0, 30.0)])
def test_brush_stroke_lands_at_photo_pixels_at_zoom(qtbot, make_window, photo_path, prompter, zoom, ox, oy):
    w = make_window()
    open_and_wait(qtbot, w, photo_path)
    doc, canvas = w.doc, w.canvas
    doc.mask[:] = 0
    doc.mask_changed((0, 0, W, H))
    # photo (x, y) appears at widget (ox + zoom * x, oy + zoom * y)
    canvas.set_view(zoom, QPointF(ox, oy))
    w.brush_size_spin.setValue(20)
    w.hardness_slider.setValue(100)
    w.set_tool("add")
    # Drag from photo (250, 200) to photo (300, 200).
    pts = [(ox + zoom * x, oy + zoom * 200) for x in range(250, 301, 5)]
    stroke(canvas, pts)
    m = doc.mask
    assert m[200, 250] == 1.0 and m[200, 275] == 1.0 and m[200, 300] == 1.0
    assert m[200, 238] == 0.0 and m[200, 312] == 0.0  # radius 10 px, hard edge
    assert m[188, 275] == 0.0 and m[212, 275] == 0.0
    ys, xs = np.nonzero(m)
    assert xs.min() >= 239 and xs.max() <= 311 and ys.min() >= 189 and ys.max() <= 211
    # [ and ] change the brush size.
    w.act_bigger.trigger()
    assert w.brush_size_spin.value() == 24 and canvas.brush.size == 24
    w.act_smaller.trigger()
    assert w.brush_size_spin.value() == 20
    # The erase brush removes what was painted, at the same pixels.
    w.set_tool("erase")
    stroke(canvas, pts)
    assert m[200, 275] == 0.0
    assert not prompter.errors


def test_undo_redo_and_reset(qtbot, make_window, photo_path):
    w = make_window()
    open_and_wait(qtbot, w, photo_path)
    doc, canvas = w.doc, w.canvas
    predicted = doc.mask.copy()
    canvas.set_view(1.0, QPointF(0, 0))
    w.brush_size_spin.setValue(30)
    w.set_tool("add")
    stroke(canvas, [(100, 100), (150, 120)])
    first = doc.mask.copy()
    w.set_tool("erase")
    stroke(canvas, [(110, 90), (140, 130)])  # erase across the first stroke
    second = doc.mask.copy()
    assert not np.array_equal(first, predicted) and not np.array_equal(second, first)
    assert doc.dirty and w.windowTitle().startswith("IMG_0001.jpg *")
    w.act_undo.trigger()
    np.testing.assert_array_equal(doc.mask, first)
    w.act_undo.trigger()
    np.testing.assert_array_equal(doc.mask, predicted)
    assert not w.act_undo.isEnabled()
    w.act_redo.trigger()
    np.testing.assert_array_equal(doc.mask, first)
    w.act_redo.trigger()
    np.testing.assert_array_equal(doc.mask, second)
    w.reset_mask()
    np.testing.assert_array_equal(doc.mask, predicted)
    w.act_undo.trigger()
    np.testing.assert_array_equal(doc.mask, second)
    # Each edit stored patches, not whole masks.
    assert doc.history.nbytes < 2 * doc.mask.nbytes
    # The edited mask is rendered in the background and the preview follows.
    until(qtbot, w, lambda: doc.rendered_version == doc.mask_version and not w.busy)


def test_strength_changes_preview_without_model_run(qtbot, make_window, photo_path, app_retoucher, monkeypatch):
    w = make_window()
    open_and_wait(qtbot, w, photo_path)
    doc = w.doc
    # Render an explicit mask over the whole face so the correction is visible.
    doc.mask[:] = 0
    doc.mask[150:450, 250:550] = 1.0
    doc.mask_changed((0, 0, W, H))
    w.request_render()
    until(qtbot, w, lambda: doc.rendered_version == doc.mask_version and not w.busy)
    calls = []
    for name in ("analyze", "render"):
        real = getattr(app_retoucher, name)
        monkeypatch.setattr(app_retoucher, name, lambda *a, _r=real, _n=name, **k: (calls.append(_n), _r(*a, **k))[1])
    w.set_overlay_visible(False)
    w.canvas.set_view(1.0, QPointF(0, 0))
    views = {}
    for v in (0, 50, 100):
        w.strength_slider.setValue(v)
        views[v] = w.canvas.current_view_array().astype(np.int32)
    before = doc.before_levels[0][:views[0].shape[0], :views[0].shape[1]].astype(np.int32)
    np.testing.assert_array_equal(views[0], before)
    full = np.abs(views[100] - views[0])[150:450, 250:550]
    assert full.sum() > 0 and np.count_nonzero(full) > 50  # the correction is visible at 100 %
    half = np.abs(views[50] - views[0])[150:450, 250:550]
    assert 0.3 * full.sum() < half.sum() < 0.7 * full.sum()  # and about half of it at 50 %
    outside = np.abs(views[100] - views[0])[:100, :]
    assert outside.max() == 0
    assert w.strength_value.text() == "100 %"
    assert calls == []  # strength never runs the model


def test_export_keeps_size_and_metadata(qtbot, make_window, photo_path, prompter, tmp_path):
    w = make_window()
    open_and_wait(qtbot, w, photo_path)
    out = tmp_path / "out" / "retouched.png"
    out.parent.mkdir()
    prompter.save_path = str(out)
    w.format_combo.setCurrentIndex(w.format_combo.findData("png"))
    qtbot.mouseClick(w.export_button, Qt.MouseButton.LeftButton)
    until(qtbot, w, lambda: w.last_export == out and not w.busy)
    assert not prompter.errors
    with Image.open(out) as im:
        assert im.size == (W, H) and im.format == "PNG"
        assert im.getexif().get(0x010F) == "TestCam"
        assert im.info.get("icc_profile") == _icc_bytes()
    # The original is never overwritten without asking; declining leaves it untouched.
    original = photo_path.read_bytes()
    prompter.save_path = str(photo_path)
    prompter.confirm_answer = False
    w.format_combo.setCurrentIndex(w.format_combo.findData("keep"))
    w.export()
    w.wait_idle(60)
    assert any(a.startswith("confirm:Overwrite") for a in prompter.asked)
    assert photo_path.read_bytes() == original


def test_sidecar_saved_and_restored(qtbot, make_window, photo_path, prompter, isolated_settings):
    w = make_window()
    open_and_wait(qtbot, w, photo_path)
    w.canvas.set_view(1.0, QPointF(0, 0))
    w.brush_size_spin.setValue(40)
    w.set_tool("add")
    stroke(w.canvas, [(600, 100), (700, 150)])
    assert w.doc.dirty
    w.act_save_mask.trigger()  # Ctrl+S: written by a worker
    side = sidecar_path(photo_path)
    until(qtbot, w, lambda: not w.doc.dirty and not w.runner.busy())
    np.testing.assert_allclose(load_mask(side), w.doc.mask, atol=1.0 / 65535 + 1e-6)
    stroke(w.canvas, [(600, 400), (650, 500)])
    edited = w.doc.mask.copy()
    assert w.doc.dirty
    # Closing with unsaved edits asks; answering "save" writes the 16-bit sidecar.
    prompter.unsaved_answer = "save"
    assert w.close()
    assert any(a.startswith("unsaved:") for a in prompter.asked)
    assert side.name == "IMG_0001.jpg.retouch-mask.png" and side.exists()
    with Image.open(side) as im:
        assert im.mode in ("I;16", "I") and im.size == (W, H)
    np.testing.assert_allclose(load_mask(side), edited, atol=1.0 / 65535 + 1e-6)
    # Reopening restores the edited mask, not the prediction.
    w2 = make_window()
    open_and_wait(qtbot, w2, photo_path)
    np.testing.assert_allclose(w2.doc.mask, edited, atol=1.0 / 65535 + 1e-6)
    assert not w2.doc.dirty
    assert "restored" in w2.info_label.text()
    # The recent-files list remembers the photo (persisted in the isolated settings).
    assert w2.prefs.recent_files[0] == str(photo_path)
    assert not prompter.errors


def test_cancel_running_job_keeps_ui_responsive(qtbot, make_window, photo_path, prompter, app_retoucher, monkeypatch):
    started = threading.Event()
    real_analyze = app_retoucher.analyze

    def slow_analyze(image, *, cancel=None, progress=None, **kw):
        started.set()
        t0 = time.monotonic()
        while not cancel() and time.monotonic() - t0 < 30:  # a long job, until cancelled
            time.sleep(0.01)
        return real_analyze(image, cancel=cancel, progress=progress, **kw)  # the engine raises Cancelled

    monkeypatch.setattr(app_retoucher, "analyze", slow_analyze)
    w = make_window()
    w.open_photo(photo_path)
    qtbot.waitUntil(started.is_set, timeout=TIMEOUT)
    assert w.busy and w.cancel_button.isVisible()
    # The GUI thread still serves events while the model runs.
    w.strength_slider.setValue(40)
    assert w.strength_value.text() == "40 %"
    t0 = time.monotonic()
    w.act_cancel.trigger()
    qtbot.waitUntil(lambda: not w.busy, timeout=20000)
    assert time.monotonic() - t0 < 10
    assert "cancelled" in w.status_label.text().lower()
    assert w.doc.mask is None and not prompter.errors


def test_render_requests_are_coalesced(qtbot, make_window, photo_path, app_retoucher, monkeypatch):
    w = make_window()
    open_and_wait(qtbot, w, photo_path)
    gate = threading.Event()
    seen = []
    real_run = app_retoucher.run_render

    def gated_run(plan, *, cancel=None):
        if not plan.fill:  # the model's renders (the quick fill preview runs on the GUI thread)
            seen.append(plan)
            gate.wait(30)
        return real_run(plan, cancel=cancel)

    monkeypatch.setattr(app_retoucher, "run_render", gated_run)
    w.canvas.set_view(1.0, QPointF(0, 0))
    w.brush_size_spin.setValue(20)
    for i in range(4):  # four strokes while the first render is still running
        stroke(w.canvas, [(100 + 60 * i, 300), (120 + 60 * i, 300)])
        qtbot.waitUntil(lambda: len(seen) >= 1, timeout=TIMEOUT)
    gate.set()
    until(qtbot, w, lambda: not w.busy and w.doc.rendered_version == w.doc.mask_version)
    assert len(seen) == 2  # the first stroke's render, then only the latest state
    # Each was a partial render of what its strokes changed: the first of stroke 1, the second
    # of strokes 2 to 4 together (planned when it started, from the mask as it was then).
    x0, y0, x1, y1 = seen[0].rect
    assert x0 <= 90 and x1 >= 130 and y0 <= 290 and y1 >= 310
    x0, y0, x1, y1 = seen[1].rect
    assert x0 <= 150 and x1 >= 310 and y0 <= 290 and y1 >= 310
    # The merged result is the full render of the final mask.
    doc = w.doc
    full = app_retoucher.composite(doc.image, real_run(app_retoucher.plan_render(doc.analysis, doc.mask)), 1.0)
    np.testing.assert_array_equal(app_retoucher.composite(doc.image, doc.correction, 1.0), full)


def test_drop_opens_photo_and_preferences_persist(qtbot, make_window, photo_path, isolated_settings):
    from PySide6.QtCore import QMimeData, QUrl
    from PySide6.QtGui import QDropEvent

    from app.settings import Preferences

    w = make_window()
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(photo_path))])
    ev = QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    w.dropEvent(ev)
    until(qtbot, w, lambda: w.doc is not None and w.doc.path == photo_path)
    w.wait_idle(120)
    w.overlay_slider.setValue(30)  # panel changes become the saved defaults
    w.quality_spin.setValue(80)
    w.format_combo.setCurrentIndex(w.format_combo.findData("tiff"))
    w.prefs.overlay_color, w.prefs.device = "#00ff00", "cpu"
    w.prefs.save(isolated_settings)
    again = Preferences.load(isolated_settings)
    assert (again.overlay_color, again.export_quality, again.device) == ("#00ff00", 80, "cpu")
    assert (again.overlay_opacity, again.export_format) == (0.3, "tiff")
    assert again.recent_files == [str(photo_path)]


def test_excepthook_shows_dialog_and_logs(qtbot, monkeypatch, caplog):
    import sys

    from PySide6.QtWidgets import QMessageBox

    from app.main import install_excepthook

    shown = []
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(QMessageBox, "critical", lambda parent, title, text, *a: shown.append((title, text)))
    install_excepthook()
    try:
        raise ValueError("boom")
    except ValueError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    assert shown and shown[0][0] == "Unexpected error" and "boom" in shown[0][1]
    assert "Uncaught exception" in caplog.text


def test_wheel_zoom_keeps_point_under_cursor_and_pan(qtbot, make_window, photo_path):
    from PySide6.QtCore import QPoint
    from PySide6.QtGui import QWheelEvent

    w = make_window()
    open_and_wait(qtbot, w, photo_path)
    c = w.canvas
    c.set_view(0.8, QPointF(20, 10))
    at = QPointF(300, 250)
    before = c.widget_to_photo(at)
    ev = QWheelEvent(at, c.mapToGlobal(at), QPoint(0, 0), QPoint(0, 240), Qt.MouseButton.NoButton,
                     Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(c, ev)
    assert c.zoom > 0.8 * 1.3
    after = c.widget_to_photo(at)
    assert abs(after.x() - before.x()) < 1e-6 and abs(after.y() - before.y()) < 1e-6
    # Middle-button drag pans by the mouse delta; nothing is painted into the mask.
    mask = w.doc.mask.copy()
    off = QPointF(c.offset)
    mouse(c, QEvent.Type.MouseButtonPress, 300, 250, Qt.MouseButton.MiddleButton)
    mouse(c, QEvent.Type.MouseMove, 340, 230, Qt.MouseButton.MiddleButton)
    mouse(c, QEvent.Type.MouseButtonRelease, 340, 230, Qt.MouseButton.MiddleButton)
    assert (c.offset.x() - off.x(), c.offset.y() - off.y()) == (40.0, -20.0)
    np.testing.assert_array_equal(w.doc.mask, mask)
    w.act_fit.trigger()
    assert c.fit_mode and c.zoom < 1.5


def test_preferences_dialog_roundtrip(qtbot, prompter):
    from PySide6.QtGui import QColor

    from app.prefs_dialog import PreferencesDialog
    from app.settings import Preferences

    prompter.choose_color = lambda initial: QColor("#123456")
    dlg = PreferencesDialog(Preferences(), prompter)
    qtbot.addWidget(dlg)
    dlg.device.setCurrentIndex(dlg.device.findData("cpu"))
    dlg.strength.setValue(70)
    dlg.color.click()
    dlg.quality.setValue(88)
    dlg.fmt.setCurrentIndex(dlg.fmt.findData("tiff"))
    p = dlg.result_prefs()
    assert (p.device, p.default_strength, p.overlay_color, p.export_quality, p.export_format) == ("cpu", 0.7, "#123456", 88, "tiff")


def test_hold_backslash_shows_original_and_split_view(qtbot, make_window, photo_path):
    w = make_window()
    open_and_wait(qtbot, w, photo_path)
    doc, c = w.doc, w.canvas
    doc.mask[:] = 0
    doc.mask[150:450, 250:550] = 1.0
    doc.mask_changed((0, 0, doc.width, doc.height))
    w.request_render()
    until(qtbot, w, lambda: doc.rendered_version == doc.mask_version and not w.busy)
    c.set_view(1.0, QPointF(0, 0))
    original = doc.before_levels[0]
    after = c.current_view_array().copy()
    assert not np.array_equal(after, original)
    qtbot.keyPress(c, Qt.Key.Key_Backslash)
    assert c.show_before
    np.testing.assert_array_equal(c.current_view_array(), original)  # original, no overlay
    qtbot.keyRelease(c, Qt.Key.Key_Backslash)
    assert not c.show_before
    w.set_overlay_visible(False)
    w.act_split.trigger()
    c.split_pos = 400 / c.width()  # split at photo x = 400
    c.invalidate()
    v = c.current_view_array()
    np.testing.assert_array_equal(v[:, :400], original[:, :400])
    assert not np.array_equal(v[:, 400:], original[:, 400:])


def test_saved_preferences_are_applied_to_a_new_window(make_window, isolated_settings):
    from app.settings import Preferences

    Preferences(default_strength=0.6, overlay_opacity=0.25, export_format="png", export_quality=77,
                brush_size=33, brush_hardness=0.8, brush_opacity=0.4).save(isolated_settings)
    w = make_window()
    assert w.strength_slider.value() == 60 and w.overlay_slider.value() == 25
    assert w.format_combo.currentData() == "png" and w.quality_spin.value() == 77
    assert (w.brush_size_spin.value(), w.hardness_slider.value(), w.brush_opacity_slider.value()) == (33, 80, 40)
    assert w.canvas.brush.size == 33 and w.canvas.brush.hardness == 0.8 and w.canvas.brush.opacity == 0.4


def test_missing_weights_and_bad_photo_give_clear_dialogs(qtbot, isolated_settings, prompter, tmp_path, photo_path):
    from app.window import MainWindow
    from engine.retoucher import Retoucher

    def load(_device):
        return Retoucher.load(tmp_path / "nope.safetensors", device="cpu")  # the real loader's error

    w = MainWindow(prompter=prompter, settings=isolated_settings, retoucher_factory=load)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: bool(prompter.errors), timeout=30000)
    title, text = prompter.errors[0]
    assert title == "Could not load the model" and "nope.safetensors" in text and "Traceback" not in text
    w.open_photo(photo_path)  # the photo still opens for viewing; analysis explains why it cannot run
    qtbot.waitUntil(lambda: w.doc is not None and not w.busy, timeout=30000)
    assert w.doc.mask is None and "model is not loaded" in w.status_label.text()
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    prompter.errors.clear()
    w.open_photo(bad)
    qtbot.waitUntil(lambda: bool(prompter.errors), timeout=30000)
    assert prompter.errors[0][0] == "Could not open the photo" and "broken.jpg" in prompter.errors[0][1]
    assert w.doc.path == photo_path  # the previous photo stays open
    w.shutdown()


def test_blemish_size_control_rescales_and_keeps_edits(qtbot, make_window, photo_path):
    """The status bar says how many faces were found and at what scale; setting a blemish size by
    hand analyses the photo again at that scale and keeps the user's brushed edits."""
    w = make_window()
    open_and_wait(qtbot, w, photo_path)
    a = w.doc.analysis
    n = len(a.faces)
    assert a.message.startswith("No face found" if n == 0 else f"{n} face")
    assert w.faces_label.text().startswith(f"{n} face{'s' if n != 1 else ''} · blemish {a.blemish_size:.0f} px")
    assert w.blemish_auto.isChecked() and not w.blemish_spin.isEnabled()
    assert w.blemish_spin.value() == max(1, round(a.blemish_size))
    w.doc.mask[10:30, 10:40] = 1.0  # a brushed edit
    w.doc.mask_changed((10, 10, 40, 30))
    size = 2 * w.blemish_spin.value()
    w.set_blemish_size(size)
    assert w.blemish_spin.isEnabled() and not w.blemish_auto.isChecked()
    until(qtbot, w, lambda: w.doc.analysis is not a and not w.busy)
    assert w.doc.analysis.plan.source == "user" and w.doc.analysis.blemish_size == size
    assert f"blemish size {size} px (as set)" in w.doc.analysis.message
    assert w.faces_label.text().endswith(f"blemish {size} px (set)")
    assert (w.doc.mask[10:30, 10:40] == 1.0).all()  # the edit survived the new prediction
    b = w.doc.analysis
    w.blemish_auto.setChecked(True)  # back to automatic
    until(qtbot, w, lambda: w.doc.analysis is not b and not w.busy)
    assert w.doc.analysis.plan.source != "user" and not w.blemish_spin.isEnabled()
