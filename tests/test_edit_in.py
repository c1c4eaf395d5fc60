"""The "Edit in" round trip and the colour-managed canvas, through the real main window (offscreen).

A catalogue program (Lightroom Classic, darktable, Capture One) starts ``retouch-studio FILE`` with
a 16-bit ProPhoto TIFF; Save (Ctrl+S) writes the retouch back into that file after one
confirmation, keeping bit depth, profile and metadata. The model here is a tiny one made by the
test (quick, and independent of the shipped weights); every image is generated here.
"""
from __future__ import annotations

import functools
from pathlib import Path

import exiv2
import imagecodecs
import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QPointF, QUrl
from PySide6.QtGui import QFileOpenEvent, QKeySequence
from PySide6.QtWidgets import QApplication

from app.document import sidecar_path
from engine import imageio
from engine.colour import adobe_rgb_profile, srgb_profile
from engine.imageio import load_image, save_image
from tests.test_app_window import open_and_wait, until

KW = {"colorspace": "rgb", "outcolorspace": "rgb"}
TIMEOUT = 120_000


@functools.lru_cache(maxsize=1)
def prophoto() -> bytes:
    return bytes(imagecodecs.cms_profile("rgb", whitepoint=(0.3457, 0.3585),
                                         primaries=[0.7347, 0.2653, 0.1596, 0.8404, 0.0366, 0.0001], gamma=1.8))


def convert(px: np.ndarray, src: bytes, dst: bytes, dtype) -> np.ndarray:
    f = imagecodecs.cms_transform(px, src, dst, outdtype=np.float32, **KW).reshape(px.shape)
    top = 255 if dtype == np.uint8 else 65535
    return np.rint(np.clip(f, 0, 1) * top).astype(dtype)


@pytest.fixture(scope="module")
def tiny_retoucher(tiny_weights):
    from engine.retoucher import Retoucher

    return Retoucher.load(tiny_weights, device="cpu")


def lightroom_tiff(path: Path, srgb8: np.ndarray) -> Path:
    """What Lightroom's "Edit in" writes: 16-bit ProPhoto TIFF with EXIF, XMP (rating, creator,
    keywords, Camera Raw's history) and IPTC."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "EOS R5"
    exif.get_ifd(0x8769)[0x9003] = "2025:06:07 14:15:16"
    save_image(path, convert(srgb8, srgb_profile(), prophoto(), np.uint16), icc_profile=prophoto(), exif=exif)
    img = exiv2.ImageFactory.open(path.read_bytes())
    img.readMetadata()
    img.exifData()["Exif.Image.Software"] = "Adobe Photoshop Lightroom Classic 13.0 (Windows)"
    xmp = img.xmpData()
    xmp["Xmp.xmp.Rating"] = "4"
    xmp["Xmp.xmp.Label"] = "Red"
    xmp["Xmp.dc.creator"] = "Jane Doe"
    xmp["Xmp.dc.rights"] = 'lang="x-default" (c) 2025 Jane Doe'
    xmp["Xmp.lr.hierarchicalSubject"] = "People|Bride"
    xmp["Xmp.photoshop.City"] = "Lyon"
    xmp["Xmp.xmpMM.DocumentID"] = "xmp.did:0123456789abcdef"
    for kw in ("wedding", "portrait"):
        img.iptcData().add(exiv2.IptcKey("Iptc.Application2.Keywords"), exiv2.StringValue(kw))
    img.iptcData()["Iptc.Application2.City"] = "Lyon"
    img.writeMetadata()
    io_ = img.io()
    data = bytes(io_.mmap())
    io_.munmap()
    path.write_bytes(data)
    return path


def paint_mask(qtbot, w, box: tuple[int, int, int, int]) -> np.ndarray:
    """Replace the mask with a soft-edged disc in ``box`` (x0, y0, x1, y1) and wait for the preview."""
    doc = w.doc
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[0 : doc.height, 0 : doc.width]
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    doc.mask[...] = np.clip((r - d) / 8.0, 0.0, 1.0)
    doc.mask_changed((0, 0, doc.width, doc.height))
    w.request_render()
    until(qtbot, w, lambda: doc.rendered_version == doc.mask_version and not w.busy)
    return doc.mask.copy()


def test_prophoto_16bit_tiff_with_xmp_round_trips_through_save(qtbot, make_window, prompter, make_portrait,
                                                               tiny_retoucher, tmp_path):
    img, _ = make_portrait(480, 360, seed=5)
    path = lightroom_tiff(tmp_path / "IMG_2040-Edit.tif", img)
    before = load_image(path)
    before_meta = before.metadata.as_dict()
    w = make_window(retoucher=tiny_retoucher)
    open_and_wait(qtbot, w, path)
    mask = paint_mask(qtbot, w, (150, 100, 330, 260))

    # Save is Ctrl+S; the first save asks once, and declining changes nothing.
    assert w.act_save.shortcut() == QKeySequence(QKeySequence.StandardKey.Save)
    original = path.read_bytes()
    prompter.confirm_answer = False
    w.act_save.trigger()
    w.wait_idle(60)
    assert prompter.asked.count("confirm:Save into the original?") == 1 and path.read_bytes() == original
    prompter.confirm_answer = True
    w.act_save.trigger()
    until(qtbot, w, lambda: w.last_save == path and not w.busy)
    assert prompter.asked.count("confirm:Save into the original?") == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # atomic: no temporary left

    after = load_image(path)
    assert after.format == "TIFF" and after.bit_depth == 16 and after.pixels.dtype == np.uint16
    assert after.icc_profile == prophoto() and after.pixels.shape == before.pixels.shape
    outside, inside = mask == 0, mask >= 0.99
    assert np.array_equal(after.pixels[outside], before.pixels[outside])  # bit-identical outside the mask
    assert np.count_nonzero(np.any(after.pixels[inside] != before.pixels[inside], axis=-1)) > 0.5 * inside.sum()
    after_meta = after.metadata.as_dict()
    changed = {k for k in set(before_meta) | set(after_meta) if before_meta.get(k) != after_meta.get(k)}
    assert changed == {"Exif.Image.Software"}  # every other property kept, the software tag set
    assert after_meta["Exif.Image.Software"] == imageio.SOFTWARE
    assert after_meta["Xmp.xmp.Rating"] == "4" and after_meta["Iptc.Application2.Keywords"] == "wedding; portrait"
    with Image.open(path) as im:  # an independent reader agrees on size, depth and profile
        assert im.size == (480, 360) and im.info.get("icc_profile") == prophoto()
    # A second save does not ask again; closing does not ask about the mask (it is in the photo).
    prompter.asked.clear()
    paint_mask(qtbot, w, (60, 60, 140, 140))
    w.act_save.trigger()
    until(qtbot, w, lambda: not w.busy and not w.doc.dirty)
    assert not any(a.startswith("confirm:") for a in prompter.asked)
    assert w.close() and not any(a.startswith("unsaved:") for a in prompter.asked)
    assert not sidecar_path(path).exists()


def test_canvas_converts_embedded_profiles_to_the_display(qtbot, make_window, make_portrait, tiny_retoucher, tmp_path):
    img, _ = make_portrait(480, 360, seed=6)
    path = lightroom_tiff(tmp_path / "wide.tif", img)
    w = make_window(retoucher=tiny_retoucher)
    open_and_wait(qtbot, w, path)
    level0 = w.doc.before_levels[0]
    # The screen shows the photo's colours (ProPhoto converted to sRGB), not its raw ProPhoto numbers.
    assert np.abs(level0.astype(int) - img).mean() < 1.0 and np.abs(level0.astype(int) - img).max() <= 3
    assert np.abs((load_image(path).pixels >> 8).astype(int) - img).mean() > 5
    paint_mask(qtbot, w, (150, 100, 330, 260))
    after = w.doc.after_levels[0]
    expected = convert(w.retoucher.composite(w.doc.image, w.doc.correction, 1.0), prophoto(), srgb_profile(), np.uint8)
    assert np.abs(after.astype(int) - expected).max() <= 3  # the corrected box is converted too
    assert np.array_equal(after[:50], level0[:50])  # and nothing else changed
    # Before/after split: the left half shows the converted original, the right half the converted result.
    w.canvas.set_view(1.0, QPointF(0, 0))
    w.set_overlay_visible(False)
    w.act_split.setChecked(True)
    w._toggle_split()
    view = w.canvas.current_view_array()
    split = w.canvas._split_col(1, 0)
    assert split is not None and 0 < split < view.shape[1]
    np.testing.assert_array_equal(view[:, :split], level0[: view.shape[0], :split])
    np.testing.assert_array_equal(view[:, split:], after[: view.shape[0], split : view.shape[1]])


def test_untagged_and_srgb_photos_are_shown_unconverted(qtbot, make_window, make_portrait, tiny_retoucher, tmp_path):
    img, _ = make_portrait(320, 240, seed=7)
    for name, icc in (("plain.png", None), ("srgb.png", srgb_profile())):
        path = save_image(tmp_path / name, img, icc_profile=icc)
        w = make_window(retoucher=tiny_retoucher)
        open_and_wait(qtbot, w, path)
        assert w.doc.to_display is None and w.doc.working.identity
        assert np.array_equal(w.doc.before_levels[0], img)


def test_raw_files_open_developed_and_export_as_16_bit_tiff(qtbot, make_window, prompter, tiny_retoucher, tmp_path):
    from tests.test_imageio import make_dng

    path = make_dng(tmp_path / "DSC_0007.dng")
    w = make_window(retoucher=tiny_retoucher)
    open_and_wait(qtbot, w, path)
    assert "Adobe RGB" in w.info_label.text() and "16-bit" in w.info_label.text()
    w.save_to_original()  # cannot write a RAW: one clear sentence, nothing written
    assert prompter.errors and "camera RAW file, which cannot be written" in prompter.errors[-1][1]
    prompter.errors.clear()
    out = tmp_path / "DSC_0007_retouched.tif"
    prompter.save_path = str(out)
    w.format_combo.setCurrentIndex(w.format_combo.findData("keep"))
    w.export()
    until(qtbot, w, lambda: w.last_export == out and not w.busy)
    assert any(a.endswith("DSC_0007_retouched.tif") for a in prompter.asked)  # suggested as TIFF
    back = load_image(out)
    assert back.bit_depth == 16 and back.icc_profile == adobe_rgb_profile()


def test_mask_keeps_its_own_shortcut_and_save_as_exports(qtbot, make_window, prompter, make_portrait, tiny_retoucher,
                                                         tmp_path):
    img, _ = make_portrait(320, 240, seed=8)
    path = save_image(tmp_path / "p.jpg", img)
    w = make_window(retoucher=tiny_retoucher)
    open_and_wait(qtbot, w, path)
    assert w.act_save_mask.shortcut() == QKeySequence("Ctrl+Alt+S")
    assert w.act_save_as.shortcut() == QKeySequence("Ctrl+Shift+S")
    paint_mask(qtbot, w, (100, 60, 220, 180))
    w.act_save_mask.trigger()
    until(qtbot, w, lambda: not w.doc.dirty and not w.runner.busy())
    assert sidecar_path(path).exists()
    out = tmp_path / "p_retouched.heic"
    prompter.save_path = str(out)
    w.format_combo.setCurrentIndex(w.format_combo.findData("heif"))
    w.act_save_as.trigger()
    until(qtbot, w, lambda: w.last_export == out and not w.busy)
    assert load_image(out).format == "HEIF"
    assert not any(a.startswith("confirm:Save into") for a in prompter.asked)  # Save as never asks that


def test_macos_open_document_event_opens_the_photo(qtbot, make_window, make_portrait, tiny_retoucher, tmp_path):
    from app.main import install_file_open_handler

    img, _ = make_portrait(320, 240, seed=9)
    path = save_image(tmp_path / "from catalogue.tif", img)
    w = make_window(retoucher=tiny_retoucher)
    app = QApplication.instance()
    handler = install_file_open_handler(app, w)
    try:
        QApplication.sendEvent(app, QFileOpenEvent(QUrl.fromLocalFile(str(path))))
        until(qtbot, w, lambda: w.doc is not None and w.doc.path == path)
    finally:
        app.removeEventFilter(handler)
