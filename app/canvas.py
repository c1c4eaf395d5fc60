"""The photo canvas: pyramid-backed display, zoom/pan, mask overlay, before/after, brush painting.

Painting only ever touches the visible part of one pyramid level (at most ~2x the screen's device
pixels), and the composed view is cached, so moving the cursor or panning never rescales the
whole photo.

Colour: the pyramids hold *display* pixels. :func:`display_converter` turns a photo with an
embedded profile (Adobe RGB, ProPhoto RGB, Display P3...) into sRGB with Qt's QColorSpace when the
pyramids are built (and for the re-rendered box after each correction), so the canvas never
converts while painting, and the overlay colour, the before/after split and the strength mix all
work on already-converted pixels. Untagged photos are sRGB; sRGB photos are shown unconverted.
The display is taken to be sRGB: macOS colour-manages sRGB windows to the monitor; elsewhere
this is what applications without a monitor-profile setting assume.
"""
from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np
from PySide6.QtCore import QByteArray, QPointF, QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import (
    QColor, QColorSpace, QImage, QKeyEvent, QMouseEvent, QPainter, QPaintEvent, QPen, QWheelEvent,
)
from PySide6.QtWidgets import QSizePolicy, QWidget

from app.document import Document
from app.maskedit import Brush, Edit, Stroke
from app.pyramid import level_for_scale, overlay
from engine.compositor import mix

MIN_ZOOM, MAX_ZOOM = 0.01, 32.0

log = logging.getLogger(__name__)

DisplayFn = Callable[[np.ndarray], np.ndarray]


def display_converter(icc: bytes | None) -> DisplayFn | None:
    """A function turning the photo's HxWx3 uint8/uint16 pixels (in the space of ``icc``) into
    HxWx3 uint8 sRGB for the screen, or None when no conversion is needed (untagged, sRGB, or a
    profile nobody can use: those are shown as sRGB, and the engine's notes say so)."""
    from engine.colour import convert, is_srgb, srgb_profile

    if not icc:
        return None
    try:
        if is_srgb(icc):
            return None
    except ValueError:
        return None
    cs = QColorSpace.fromIccProfile(QByteArray(bytes(icc)))
    target = QColorSpace(QColorSpace.NamedColorSpace.SRgb)
    if not cs.isValid():  # a profile Qt cannot model: LittleCMS does the display conversion instead
        log.info("Qt cannot use this colour profile; converting for display with LittleCMS")
        srgb = srgb_profile()
        return lambda px: _to_u8(convert(np.ascontiguousarray(px), icc, srgb))
    return lambda px: _qt_to_srgb(px, cs, target)


_PRIMARY_NAMES = {"SRgb": "sRGB", "AdobeRgb": "Adobe RGB", "DciP3D65": "Display P3", "ProPhotoRgb": "ProPhoto RGB",
                  "Bt2020": "Rec. 2020"}


def profile_name(icc: bytes | None) -> str:
    """A short name for the info panel: the profile's description, with the colour space Qt
    recognises from its primaries when the description does not say (e.g. "RGB built-in")."""
    from engine.colour import describe_profile

    desc = describe_profile(icc)
    if not icc:
        return desc
    cs = QColorSpace.fromIccProfile(QByteArray(bytes(icc)))
    known = _PRIMARY_NAMES.get(cs.primaries().name, "") if cs.isValid() else ""
    if known and known.lower().replace(" ", "") not in desc.lower().replace(" ", ""):
        return f"{known} ({desc})"
    return desc


def _to_u8(px: np.ndarray) -> np.ndarray:
    return px if px.dtype == np.uint8 else (px >> 8).astype(np.uint8)


def _qt_to_srgb(px: np.ndarray, cs: QColorSpace, target: QColorSpace) -> np.ndarray:
    """QColorSpace conversion in strips (16-bit sources are converted from their 16 bits)."""
    h, w = px.shape[:2]
    out = np.empty((h, w, 3), np.uint8)
    step = max(1, (1 << 20) // max(1, w))
    for y in range(0, h, step):
        block = px[y : y + step]
        bh = block.shape[0]
        if block.dtype == np.uint16:
            buf = np.empty((bh, w, 4), np.uint16)
            buf[..., :3] = block
            buf[..., 3] = 65535
            img = QImage(buf.data, w, bh, w * 8, QImage.Format.Format_RGBX64)
        else:
            buf = np.ascontiguousarray(block)
            img = QImage(buf.data, w, bh, w * 3, QImage.Format.Format_RGB888)
        img.setColorSpace(cs)
        conv = img.convertedToColorSpace(target).convertToFormat(QImage.Format.Format_RGB888)
        stride = conv.bytesPerLine()
        rows = np.frombuffer(conv.constBits(), np.uint8, count=stride * bh).reshape(bh, stride)
        out[y : y + bh] = rows[:, : w * 3].reshape(bh, w, 3)
        del img, conv, buf
    return out


class Canvas(QWidget):
    """Shows a :class:`Document`; paints into its mask with the current :class:`Brush`."""

    strokeFinished = Signal(object)  # Edit
    zoomChanged = Signal(float)
    brushChanged = Signal(object)  # Brush
    maskEdited = Signal()  # live, during a stroke

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("canvas")
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.doc: Document | None = None
        self.zoom = 1.0
        self.offset = QPointF(0, 0)
        self.fit_mode = True
        self.strength = 1.0
        self.show_overlay = True
        self.overlay_color = QColor("#ff3b6b")
        self.overlay_opacity = 0.5
        self.show_before = False
        self.split = False
        self.split_pos = 0.5  # fraction of the widget width
        self.tool: str | None = "add"  # "add", "erase" or None (pan/view only)
        self.brush = Brush()
        self._stroke: Stroke | None = None
        self._pan_anchor: QPointF | None = None
        self._space = False
        self._drag_split = False
        self._mouse: QPointF | None = None
        self._cache_key: tuple | None = None
        self._cache_img: QImage | None = None
        self._cache_arr: np.ndarray | None = None
        self._cache_target = QRectF()
        self._cache_base: tuple | None = None  # (key, base array) without overlay

    # ------------------------------------------------------------------ document & view state
    def sizeHint(self) -> QSize:
        return QSize(900, 650)

    def set_document(self, doc: Document | None) -> None:
        self.doc = doc
        self._stroke = None
        self.invalidate()
        self.fit()

    def invalidate(self) -> None:
        """Drop the cached view (call after anything but a mask edit changed)."""
        self._cache_key = None
        self._cache_base = None
        self.update()

    def set_strength(self, s: float) -> None:
        self.strength = float(np.clip(s, 0.0, 1.0))
        self.invalidate()

    def set_overlay(self, visible: bool | None = None, color: QColor | None = None, opacity: float | None = None) -> None:
        if visible is not None:
            self.show_overlay = visible
        if color is not None:
            self.overlay_color = QColor(color)
        if opacity is not None:
            self.overlay_opacity = float(np.clip(opacity, 0.0, 1.0))
        self.invalidate()

    def set_show_before(self, on: bool) -> None:
        if on != self.show_before:
            self.show_before = on
            self.invalidate()

    def set_split(self, on: bool) -> None:
        self.split = on
        self.invalidate()

    def set_brush(self, brush: Brush) -> None:
        self.brush = brush
        self.brushChanged.emit(brush)
        self.update()

    def set_tool(self, tool: str | None) -> None:
        self.tool = tool
        self.brush = Brush(self.brush.size, self.brush.hardness, self.brush.opacity, erase=(tool == "erase"))
        self._update_cursor()
        self.update()

    # ------------------------------------------------------------------ coordinates
    def photo_size(self) -> tuple[int, int]:
        return (self.doc.width, self.doc.height) if self.doc else (1, 1)

    def widget_to_photo(self, p: QPointF) -> QPointF:
        return QPointF((p.x() - self.offset.x()) / self.zoom, (p.y() - self.offset.y()) / self.zoom)

    def photo_to_widget(self, p: QPointF) -> QPointF:
        return QPointF(self.offset.x() + p.x() * self.zoom, self.offset.y() + p.y() * self.zoom)

    def fit(self) -> None:
        """Fit the whole photo in the window (and keep fitting on resize)."""
        self.fit_mode = True
        if self.doc is None:
            return
        w, h = self.photo_size()
        z = min(max(self.width() - 16, 16) / w, max(self.height() - 16, 16) / h)
        self._set_view(z, QPointF((self.width() - w * z) / 2, (self.height() - h * z) / 2))

    def actual_pixels(self) -> None:
        """100 %: one photo pixel per device pixel, centred on the current view centre."""
        dpr = self.devicePixelRatioF()
        self.zoom_about(QPointF(self.width() / 2, self.height() / 2), 1.0 / dpr)

    def zoom_about(self, anchor: QPointF, new_zoom: float) -> None:
        """Zoom keeping the photo point under ``anchor`` (widget coordinates) fixed."""
        if self.doc is None:
            return
        new_zoom = float(np.clip(new_zoom, MIN_ZOOM, MAX_ZOOM))
        ph = self.widget_to_photo(anchor)
        self.fit_mode = False
        self._set_view(new_zoom, QPointF(anchor.x() - ph.x() * new_zoom, anchor.y() - ph.y() * new_zoom))

    def set_view(self, zoom: float, offset: QPointF) -> None:
        """Set zoom and offset directly (photo point (0,0) lands at ``offset``)."""
        self.fit_mode = False
        self._set_view(float(np.clip(zoom, MIN_ZOOM, MAX_ZOOM)), QPointF(offset))

    def _set_view(self, zoom: float, offset: QPointF) -> None:
        changed = zoom != self.zoom
        self.zoom, self.offset = zoom, offset
        self._cache_key = None
        self.update()
        if changed:
            self.zoomChanged.emit(zoom * self.devicePixelRatioF())

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        if self.fit_mode:
            self.fit()
        super().resizeEvent(event)

    # ------------------------------------------------------------------ painting
    def _view_params(self) -> tuple:
        doc = self.doc
        assert doc is not None
        dpr = self.devicePixelRatioF()
        k = level_for_scale(self.zoom * dpr, len(doc.before_levels))
        f = 2 ** k
        lvl = doc.before_levels[k]
        lh, lw = lvl.shape[:2]
        tl = self.widget_to_photo(QPointF(0, 0))
        br = self.widget_to_photo(QPointF(self.width(), self.height()))
        lx0 = int(np.clip(math.floor(tl.x() / f), 0, lw))
        ly0 = int(np.clip(math.floor(tl.y() / f), 0, lh))
        lx1 = int(np.clip(math.ceil(br.x() / f), 0, lw))
        ly1 = int(np.clip(math.ceil(br.y() / f), 0, lh))
        return k, f, (lx0, ly0, lx1, ly1)

    def _split_col(self, f: int, lx0: int) -> int | None:
        if not self.split or self.show_before:
            return None
        x = self.width() * self.split_pos
        return int(round((x - self.offset.x()) / self.zoom / f)) - lx0

    def _base(self, k: int, rect: tuple[int, int, int, int], split_col: int | None) -> np.ndarray:
        doc = self.doc
        assert doc is not None
        lx0, ly0, lx1, ly1 = rect
        key = (id(doc), k, rect, self.strength, self.show_before, split_col, doc.after_version)
        if self._cache_base is not None and self._cache_base[0] == key:
            return self._cache_base[1]
        before = doc.before_levels[k][ly0:ly1, lx0:lx1]
        if doc.after_levels is None or self.show_before:
            base = before
        else:
            after = doc.after_levels[k][ly0:ly1, lx0:lx1]
            base = mix(before, after, self.strength)
            if split_col is not None and split_col > 0:
                base = base.copy() if base is after or base is before else base
                c = min(split_col, base.shape[1])
                base[:, :c] = before[:, :c]
        base = np.ascontiguousarray(base)
        self._cache_base = (key, base)
        return base

    def _overlay_visible(self) -> bool:
        return (self.show_overlay or self._stroke is not None) and not self.show_before

    def _compose(self) -> None:
        doc = self.doc
        assert doc is not None
        k, f, rect = self._view_params()
        split_col = self._split_col(f, rect[0])
        ov = self._overlay_visible() and doc.mask_levels is not None
        col = self.overlay_color
        key = (id(doc), k, rect, self.strength, self.show_before, split_col, doc.after_version,
               ov and doc.mask_version, ov and (col.red(), col.green(), col.blue(), self.overlay_opacity))
        if key == self._cache_key:
            return
        lx0, ly0, lx1, ly1 = rect
        base = self._base(k, rect, split_col)
        if ov and base.size:
            arr = overlay(base, doc.mask_levels[k][ly0:ly1, lx0:lx1], (col.red(), col.green(), col.blue()), self.overlay_opacity)
        else:
            arr = base
        arr = np.ascontiguousarray(arr)
        h, w = arr.shape[:2]
        self._cache_arr = arr  # keeps the buffer alive for the QImage below
        self._cache_img = QImage(arr.data, w, h, 3 * w, QImage.Format.Format_RGB888) if w and h else None
        self._cache_target = QRectF(self.offset.x() + lx0 * f * self.zoom, self.offset.y() + ly0 * f * self.zoom,
                                    (lx1 - lx0) * f * self.zoom, (ly1 - ly0) * f * self.zoom)
        self._cache_key = key

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(38, 38, 40))
        if self.doc is None:
            p.setPen(QColor(150, 150, 155))
            f = p.font()
            f.setPointSizeF(f.pointSizeF() * 1.3)
            p.setFont(f)
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter,
                       "Open a portrait to start\n(File > Open, Ctrl+O, or drop a photo here)")
            p.end()
            return
        self._compose()
        if self._cache_img is not None:
            smooth = self.zoom * self.devicePixelRatioF() < 1.0
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth)
            p.drawImage(self._cache_target, self._cache_img, QRectF(self._cache_img.rect()))
        self._paint_decorations(p)
        p.end()

    def _paint_decorations(self, p: QPainter) -> None:
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        if self.split and not self.show_before and self.doc.after_levels is not None:
            x = self.width() * self.split_pos
            p.setPen(QPen(QColor(255, 255, 255, 220), 1.5))
            p.drawLine(QPointF(x, 0), QPointF(x, self.height()))
            self._label(p, QPointF(x - 8, 10), "Before", right=True)
            self._label(p, QPointF(x + 8, 10), "After")
        elif self.show_before:
            self._label(p, QPointF(10, 10), "Before (original)")
        if self._mouse is not None and self._brush_active():
            r = self.brush.size / 2.0 * self.zoom
            c = self._mouse
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.setPen(QPen(QColor(0, 0, 0, 200), 2.5))
            p.drawEllipse(c, r, r)
            p.setPen(QPen(QColor(255, 255, 255, 230), 1.2))
            p.drawEllipse(c, r, r)
            if 0.0 < self.brush.hardness < 1.0 and r > 4:
                ri = r * self.brush.hardness
                p.setPen(QPen(QColor(255, 255, 255, 150), 1.0, Qt.PenStyle.DashLine))
                p.drawEllipse(c, ri, ri)
            if self.brush.erase:
                p.setPen(QPen(QColor(255, 255, 255, 230), 1.2))
                p.drawLine(QPointF(c.x() - 4, c.y()), QPointF(c.x() + 4, c.y()))

    def _label(self, p: QPainter, at: QPointF, text: str, right: bool = False) -> None:
        fm = p.fontMetrics()
        w, h = fm.horizontalAdvance(text) + 12, fm.height() + 6
        r = QRectF(at.x() - w if right else at.x(), at.y(), w, h)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor(0, 0, 0, 150))
        p.drawRoundedRect(r, 4, 4)
        p.setPen(QColor(235, 235, 235))
        p.drawText(r, Qt.AlignmentFlag.AlignCenter, text)

    def _brush_active(self) -> bool:
        return (self.doc is not None and self.doc.mask is not None and self.tool in ("add", "erase")
                and not self._space and self._pan_anchor is None)

    def _update_cursor(self) -> None:
        if self._pan_anchor is not None:
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
        elif self._space or self.tool is None:
            self.setCursor(Qt.CursorShape.OpenHandCursor)
        elif self._brush_active():
            self.setCursor(Qt.CursorShape.CrossCursor if self.brush.size * self.zoom < 6 else Qt.CursorShape.BlankCursor)
        else:
            self.setCursor(Qt.CursorShape.ArrowCursor)

    def _brush_region(self, c: QPointF | None) -> QRect:
        if c is None:
            return QRect()
        r = int(self.brush.size / 2.0 * self.zoom) + 4
        return QRect(int(c.x()) - r, int(c.y()) - r, 2 * r + 1, 2 * r + 1)

    # ------------------------------------------------------------------ brush
    def set_brush_size(self, size: float) -> None:
        size = float(np.clip(size, 1.0, 5000.0))
        self.set_brush(Brush(size, self.brush.hardness, self.brush.opacity, self.brush.erase))

    def begin_stroke(self, photo_pt: QPointF) -> None:
        doc = self.doc
        if doc is None or doc.mask is None:
            return
        self._stroke = Stroke(doc.mask, self.brush)
        self._apply(self._stroke.line_to(photo_pt.x(), photo_pt.y()))
        self._cache_key = None

    def continue_stroke(self, photo_pt: QPointF) -> None:
        if self._stroke is not None:
            self._apply(self._stroke.line_to(photo_pt.x(), photo_pt.y()))

    def end_stroke(self) -> Edit | None:
        stroke, self._stroke = self._stroke, None
        if stroke is None:
            return None
        edit = stroke.finish()
        if self.doc is not None:
            self.doc.push_edit(edit)
        self.invalidate()
        if edit is not None:
            self.strokeFinished.emit(edit)
        return edit

    def _apply(self, rect) -> None:
        if rect is None or self.doc is None:
            return
        self.doc.mask_changed(rect)
        self.maskEdited.emit()
        x0, y0, x1, y1 = rect
        a = self.photo_to_widget(QPointF(x0, y0))
        b = self.photo_to_widget(QPointF(x1, y1))
        self.update(QRect(int(a.x()) - 2, int(a.y()) - 2, int(b.x() - a.x()) + 5, int(b.y() - a.y()) + 5))

    # ------------------------------------------------------------------ input
    def mousePressEvent(self, e: QMouseEvent) -> None:  # noqa: N802
        pos = e.position()
        if e.button() == Qt.MouseButton.MiddleButton or (e.button() == Qt.MouseButton.LeftButton and (self._space or self.tool is None)):
            self._pan_anchor = pos
            self._update_cursor()
            return
        if e.button() == Qt.MouseButton.LeftButton:
            if self.split and abs(pos.x() - self.width() * self.split_pos) < 6:
                self._drag_split = True
                return
            if self._brush_active():
                self.begin_stroke(self.widget_to_photo(pos))

    def mouseMoveEvent(self, e: QMouseEvent) -> None:  # noqa: N802
        pos = e.position()
        old = self._mouse
        self._mouse = pos
        if self._pan_anchor is not None:
            d = pos - self._pan_anchor
            self._pan_anchor = pos
            self.fit_mode = False
            self._set_view(self.zoom, self.offset + d)
            return
        if self._drag_split:
            self.split_pos = float(np.clip(pos.x() / max(self.width(), 1), 0.0, 1.0))
            self.invalidate()
            return
        if self._stroke is not None:
            self.continue_stroke(self.widget_to_photo(pos))
        self.update(self._brush_region(old))
        self.update(self._brush_region(pos))

    def mouseReleaseEvent(self, e: QMouseEvent) -> None:  # noqa: N802
        if self._pan_anchor is not None and e.button() in (Qt.MouseButton.MiddleButton, Qt.MouseButton.LeftButton):
            self._pan_anchor = None
            self._update_cursor()
            return
        if self._drag_split:
            self._drag_split = False
            return
        if e.button() == Qt.MouseButton.LeftButton:
            self.end_stroke()

    def wheelEvent(self, e: QWheelEvent) -> None:  # noqa: N802
        if self.doc is None:
            return
        dy = e.angleDelta().y() or e.angleDelta().x()
        if dy == 0:
            return
        self.zoom_about(e.position(), self.zoom * math.pow(1.0015, dy))
        self._update_cursor()

    def enterEvent(self, e) -> None:  # noqa: N802
        self._update_cursor()
        super().enterEvent(e)

    def leaveEvent(self, e) -> None:  # noqa: N802
        old, self._mouse = self._mouse, None
        self.update(self._brush_region(old))
        super().leaveEvent(e)

    def set_space_held(self, held: bool) -> None:
        self._space = held
        self._update_cursor()
        self.update(self._brush_region(self._mouse))

    def keyPressEvent(self, e: QKeyEvent) -> None:  # noqa: N802
        if e.key() == Qt.Key.Key_Space and not e.isAutoRepeat():
            self.set_space_held(True)
        elif e.key() == Qt.Key.Key_Backslash and not e.isAutoRepeat():
            self.set_show_before(True)
        else:
            super().keyPressEvent(e)

    def keyReleaseEvent(self, e: QKeyEvent) -> None:  # noqa: N802
        if e.key() == Qt.Key.Key_Space and not e.isAutoRepeat():
            self.set_space_held(False)
        elif e.key() == Qt.Key.Key_Backslash and not e.isAutoRepeat():
            self.set_show_before(False)
        else:
            super().keyReleaseEvent(e)

    def current_view_array(self) -> np.ndarray | None:
        """The composed RGB array currently on screen (for tests and screenshots)."""
        if self.doc is None:
            return None
        self._compose()
        return self._cache_arr
