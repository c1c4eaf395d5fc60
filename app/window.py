"""The main window: canvas, tool panel, menus, status bar; wires user actions to background jobs."""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import qtawesome as qta
from PySide6.QtCore import QEvent, QObject, QSettings, Qt, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QColor, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication, QCheckBox, QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QMainWindow,
    QProgressBar, QPushButton, QScrollArea, QSlider, QSpinBox, QSplitter, QToolButton, QVBoxLayout, QWidget,
)

from app.canvas import Canvas, display_converter, profile_name
from app.document import Document, sidecar_path
from app.logs import log_file
from app.maskedit import Brush
from app.prompts import Prompter
from app.pyramid import after_pyramid, build_pyramid, to_display_u8
from app.settings import Preferences
from app.workers import Job, JobRunner, ModelQueue
from engine.errors import ImageError, RetouchError

log = logging.getLogger(__name__)

FORMAT_LABELS = {"keep": "Same as original", "jpeg": "JPEG", "png": "PNG", "tiff": "TIFF", "heif": "HEIF (HEIC)",
                 "avif": "AVIF"}
EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "tiff": ".tif", "webp": ".webp", "heif": ".heic", "avif": ".avif"}


def load_retoucher(device: str) -> Any:
    from engine.retoucher import Retoucher

    return Retoucher.load(None, device=device)


def describe_error(exc: BaseException) -> str:
    """One clear sentence for a dialog: engine errors speak for themselves, others point to the log."""
    if isinstance(exc, RetouchError):
        return str(exc)
    where = f" Details were written to {log_file()}." if log_file() else ""
    return f"Unexpected error ({type(exc).__name__}: {exc}).{where}"


def normalise_format(fmt: str | None) -> str:
    f = (fmt or "").lower().lstrip(".")
    return {"jpg": "jpeg", "tif": "tiff", "heic": "heif", "hif": "heif"}.get(f, f)


class MainWindow(QMainWindow):
    """RetouchFormer Studio main window.

    ``prompter`` answers every dialog (inject a fake in tests); ``settings`` is the QSettings store;
    ``retoucher_factory(device)`` loads the model (default: the engine's bundled small model).
    """

    def __init__(self, prompter: Prompter | None = None, settings: QSettings | None = None,
                 retoucher_factory: Callable[[str], Any] | None = None) -> None:
        super().__init__()
        self.setObjectName("mainWindow")
        self.setWindowTitle("RetouchFormer Studio")
        self.setWindowIcon(qta.icon("mdi6.face-woman-shimmer", color="#e8a0b4"))
        self.setAcceptDrops(True)
        self.prompter = prompter or Prompter(self)
        self.settings = settings or QSettings()
        self.prefs = Preferences.load(self.settings)
        self.retoucher_factory = retoucher_factory or load_retoucher
        self.retoucher: Any = None
        self.doc: Document | None = None
        self._restored_mask: np.ndarray | None = None
        self._open_gen = 0
        self._open_job: Job | None = None
        self.last_export: Path | None = None
        self.last_save: Path | None = None
        self.batch_dialog: Any = None
        self.runner = JobRunner(self)
        self.queue = ModelQueue(self.runner)
        self.queue.jobStarted.connect(self._on_job_started)
        self.queue.busyChanged.connect(self._on_busy_changed)
        self._build_ui()
        self._apply_prefs()
        geometry = self.settings.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        QApplication.instance().installEventFilter(self)
        self.load_model()

    # ================================================================== UI construction
    def _icon(self, name: str) -> Any:
        return qta.icon(name, color="#d8d8dc", color_disabled="#66666a")

    def _action(self, text: str, icon: str | None, slot: Callable, shortcut: Any = None,
                checkable: bool = False, tip: str | None = None) -> QAction:
        a = QAction(text, self)
        if icon:
            a.setIcon(self._icon(icon))
        if shortcut is not None:
            if isinstance(shortcut, (list, tuple)):
                a.setShortcuts([QKeySequence(s) for s in shortcut])
            else:
                a.setShortcut(QKeySequence(shortcut))
        a.setCheckable(checkable)
        if tip or shortcut is not None:
            keys = a.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
            a.setToolTip(f"{tip or text} ({keys})" if keys else (tip or text))
        a.triggered.connect(slot)
        self.addAction(a)
        return a

    def _build_ui(self) -> None:
        self.canvas = Canvas()
        self.canvas.strokeFinished.connect(self._on_stroke)
        self.canvas.zoomChanged.connect(self._on_zoom)

        A = self._action
        self.act_open = A("&Open…", "mdi6.folder-open", lambda: self.open_photo(), QKeySequence.StandardKey.Open)
        self.act_save = A("&Save", "mdi6.content-save", self.save_to_original, QKeySequence.StandardKey.Save,
                          tip="Write the retouched photo back into its file (asks once): for \"Edit in\" from a catalogue")
        self.act_save_as = A("Save &as…", "mdi6.content-save-edit", lambda: self.export(), "Ctrl+Shift+S",
                             tip="Save the retouched photo as a new file")
        self.act_save_mask = A("Save &mask", "mdi6.content-save-cog", lambda: self.save_sidecar(background=True),
                               "Ctrl+Alt+S", tip="Save the edited mask beside the photo")
        self.act_export = A("&Export…", "mdi6.export", lambda: self.export(), "Ctrl+E")
        self.act_batch = A("&Batch export…", "mdi6.folder-multiple-image", self.show_batch, "Ctrl+B")
        self.act_prefs = A("&Preferences…", "mdi6.cog", self.show_preferences, QKeySequence.StandardKey.Preferences)
        self.act_quit = A("&Quit", None, self.close, QKeySequence.StandardKey.Quit)
        self.act_undo = A("&Undo stroke", "mdi6.undo", self.undo, "Ctrl+Z")
        self.act_redo = A("&Redo stroke", "mdi6.redo", self.redo, ["Ctrl+Shift+Z", "Ctrl+Y"])
        self.act_reset = A("Reset mask to &prediction", "mdi6.restore", self.reset_mask, "Ctrl+R")
        self.act_add = A("&Add to mask", "mdi6.brush", lambda: self.set_tool("add"), "B", checkable=True)
        self.act_erase = A("&Erase from mask", "mdi6.eraser", lambda: self.set_tool("erase"), "E", checkable=True)
        self.act_hand = A("&Hand (pan)", "mdi6.hand-back-right", lambda: self.set_tool(None), "H", checkable=True)
        self.act_smaller = A("Smaller brush", None, lambda: self.scale_brush(1 / 1.2), "[")
        self.act_bigger = A("Bigger brush", None, lambda: self.scale_brush(1.2), "]")
        self.act_fit = A("&Fit to window", "mdi6.fit-to-screen", self.canvas.fit, "Ctrl+0")
        self.act_100 = A("&100 %", "mdi6.magnify-plus-outline", self.canvas.actual_pixels, "Ctrl+1")
        self.act_overlay = A("Show mask &overlay", "mdi6.layers-outline", self._toggle_overlay, "O", checkable=True)
        self.act_split = A("&Split before/after", "mdi6.compare", self._toggle_split, "Y", checkable=True,
                           tip="Split view (hold \\ to see the original)")
        self.act_cancel = A("&Cancel running job", "mdi6.close-circle", self.cancel_jobs, "Esc")
        self.act_overlay.setChecked(True)
        for a, short in ((self.act_add, "Add"), (self.act_erase, "Erase"), (self.act_hand, "Pan")):
            a.setIconText(short)

        mb = self.menuBar()
        m = mb.addMenu("&File")
        m.addAction(self.act_open)
        self.recent_menu = m.addMenu(self._icon("mdi6.history"), "Open &recent")
        m.addSeparator()
        for a in (self.act_save, self.act_save_as, self.act_export, self.act_save_mask, self.act_batch):
            m.addAction(a)
        m.addSeparator()
        m.addAction(self.act_prefs)
        m.addSeparator()
        m.addAction(self.act_quit)
        m = mb.addMenu("&Edit")
        for a in (self.act_undo, self.act_redo, self.act_reset):
            m.addAction(a)
        m.addSeparator()
        for a in (self.act_add, self.act_erase, self.act_hand, self.act_smaller, self.act_bigger):
            m.addAction(a)
        m = mb.addMenu("&View")
        for a in (self.act_fit, self.act_100, self.act_overlay, self.act_split):
            m.addAction(a)
        m.addSeparator()
        m.addAction(self.act_cancel)

        tb = self.addToolBar("Main")
        tb.setObjectName("mainToolBar")
        tb.setMovable(False)
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonIconOnly)
        for a in (self.act_open, self.act_save, self.act_save_mask, self.act_export, self.act_batch, None, self.act_undo, self.act_redo,
                  self.act_reset, None, self.act_add, self.act_erase, self.act_hand, None, self.act_fit, self.act_100,
                  self.act_overlay, self.act_split, None, self.act_cancel):
            tb.addSeparator() if a is None else tb.addAction(a)

        panel = self._build_panel()
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.canvas)
        split.addWidget(panel)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 0)
        split.setCollapsible(0, False)
        self.setCentralWidget(split)

        sb = self.statusBar()
        self.status_label = QLabel("Ready")
        self.status_label.setObjectName("statusLabel")
        self.progress = QProgressBar()
        self.progress.setObjectName("jobProgress")
        self.progress.setMaximumWidth(180)
        self.progress.setMaximumHeight(14)
        self.progress.setTextVisible(False)
        self.progress.hide()
        self.cancel_button = QToolButton()
        self.cancel_button.setObjectName("cancelButton")
        self.cancel_button.setDefaultAction(self.act_cancel)
        self.cancel_button.setAutoRaise(True)
        self.cancel_button.hide()
        self.zoom_label = QLabel("")
        self.faces_label = QLabel("")
        self.faces_label.setObjectName("facesLabel")
        self.faces_label.setToolTip("Faces found and the scale the model worked at (the blemish size in the side panel)")
        self.device_label = QLabel("Model: loading…")
        self.device_label.setObjectName("deviceLabel")
        sb.addWidget(self.status_label, 1)
        sb.addWidget(self.progress)
        sb.addWidget(self.cancel_button)
        sb.addPermanentWidget(self.faces_label)
        sb.addPermanentWidget(self.zoom_label)
        sb.addPermanentWidget(self.device_label)
        self.resize(1400, 900)
        self._update_actions()

    def _slider(self, name: str, lo: int, hi: int, value: int) -> QSlider:
        s = QSlider(Qt.Orientation.Horizontal)
        s.setObjectName(name)
        s.setRange(lo, hi)
        s.setValue(value)
        return s

    def _build_panel(self) -> QWidget:
        inner = QWidget()
        inner.setObjectName("sidePanel")
        lay = QVBoxLayout(inner)
        lay.setContentsMargins(10, 10, 10, 10)
        lay.setSpacing(12)

        g = QGroupBox("Retouch")
        f = QFormLayout(g)
        self.strength_slider = self._slider("strengthSlider", 0, 100, 100)
        self.strength_value = QLabel("100 %")
        self.strength_value.setMinimumWidth(42)
        row = QHBoxLayout()
        row.addWidget(self.strength_slider)
        row.addWidget(self.strength_value)
        f.addRow("Strength", row)
        self.strength_slider.valueChanged.connect(self._on_strength)
        self.blemish_spin = QSpinBox()
        self.blemish_spin.setObjectName("blemishSizeSpin")
        self.blemish_spin.setRange(1, 2000)
        self.blemish_spin.setSuffix(" px")
        self.blemish_spin.setToolTip(
            "Diameter of a typical blemish (about 3 mm of skin) in photo pixels: sets the scale the model\n"
            "works at. Auto takes it from the faces found; set it by hand for photos without a face\n"
            "(a close-up of skin, a shoulder) or when the automatic scale misses spots."
        )
        self.blemish_spin.setEnabled(False)
        self.blemish_spin.editingFinished.connect(self._on_blemish_size)
        self.blemish_auto = QCheckBox("Auto")
        self.blemish_auto.setObjectName("blemishAutoCheck")
        self.blemish_auto.setChecked(True)
        self.blemish_auto.toggled.connect(self._on_blemish_auto)
        row = QHBoxLayout()
        row.addWidget(self.blemish_spin, 1)
        row.addWidget(self.blemish_auto)
        f.addRow("Blemish size", row)
        lay.addWidget(g)

        g = QGroupBox("Mask")
        f = QFormLayout(g)
        self.overlay_check = QCheckBox("Show overlay (O)")
        self.overlay_check.setChecked(True)
        self.overlay_check.toggled.connect(lambda on: self.set_overlay_visible(on))
        f.addRow(self.overlay_check)
        self.overlay_slider = self._slider("overlayOpacitySlider", 0, 100, 45)
        self.overlay_slider.valueChanged.connect(self._on_overlay_opacity)
        f.addRow("Opacity", self.overlay_slider)
        self.color_button = QPushButton()
        self.color_button.setObjectName("overlayColorButton")
        self.color_button.clicked.connect(self._choose_color)
        f.addRow("Colour", self.color_button)
        b = QPushButton(self._icon("mdi6.restore"), "Reset to prediction")
        b.setObjectName("resetMaskButton")
        b.clicked.connect(self.reset_mask)
        f.addRow(b)
        lay.addWidget(g)

        g = QGroupBox("Brush")
        f = QFormLayout(g)
        row = QHBoxLayout()
        for a in (self.act_add, self.act_erase, self.act_hand):
            tb = QToolButton()
            tb.setDefaultAction(a)
            tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            row.addWidget(tb)
        row.addStretch(1)
        f.addRow(row)
        self.brush_size_spin = QSpinBox()
        self.brush_size_spin.setObjectName("brushSizeSpin")
        self.brush_size_spin.setRange(1, 2000)
        self.brush_size_spin.setSuffix(" px")
        self.brush_size_spin.setToolTip("Brush diameter in photo pixels ([ and ] change it)")
        self.brush_size_spin.valueChanged.connect(self._on_brush_controls)
        f.addRow("Size", self.brush_size_spin)
        self.hardness_slider = self._slider("brushHardnessSlider", 0, 100, 50)
        self.hardness_slider.valueChanged.connect(self._on_brush_controls)
        f.addRow("Hardness", self.hardness_slider)
        self.brush_opacity_slider = self._slider("brushOpacitySlider", 1, 100, 100)
        self.brush_opacity_slider.valueChanged.connect(self._on_brush_controls)
        f.addRow("Opacity", self.brush_opacity_slider)
        lay.addWidget(g)

        g = QGroupBox("Export")
        f = QFormLayout(g)
        self.format_combo = QComboBox()
        self.format_combo.setObjectName("exportFormatCombo")
        for key, label in FORMAT_LABELS.items():
            self.format_combo.addItem(label, key)
        f.addRow("Format", self.format_combo)
        self.format_combo.currentIndexChanged.connect(lambda _i: setattr(self.prefs, "export_format", self.format_combo.currentData()))
        self.quality_spin = QSpinBox()
        self.quality_spin.setObjectName("exportQualitySpin")
        self.quality_spin.setRange(1, 100)
        self.quality_spin.valueChanged.connect(lambda v: setattr(self.prefs, "export_quality", int(v)))
        f.addRow("JPEG quality", self.quality_spin)
        self.metadata_check = QCheckBox("Keep metadata (EXIF, IPTC, XMP)")
        self.metadata_check.setToolTip("The colour profile is always embedded: the pixels are in its colour space.")
        self.metadata_check.setObjectName("keepMetadataCheck")
        self.metadata_check.setChecked(True)
        f.addRow(self.metadata_check)
        note = QLabel("Bit depth is kept (16-bit stays 16-bit in PNG/TIFF).")
        note.setWordWrap(True)
        note.setStyleSheet("color: #8a8a90;")
        f.addRow(note)
        self.export_button = QPushButton(self._icon("mdi6.export"), "Export…")
        self.export_button.setObjectName("exportButton")
        self.export_button.clicked.connect(lambda: self.export())
        self.batch_button = QPushButton(self._icon("mdi6.folder-multiple-image"), "Batch…")
        self.batch_button.setObjectName("batchButton")
        self.batch_button.clicked.connect(self.show_batch)
        row = QHBoxLayout()
        row.addWidget(self.export_button)
        row.addWidget(self.batch_button)
        f.addRow(row)
        lay.addWidget(g)

        self.info_label = QLabel("")
        self.info_label.setObjectName("infoLabel")
        self.info_label.setWordWrap(True)
        self.info_label.setStyleSheet("color: #9a9aa0;")
        lay.addWidget(self.info_label)
        lay.addStretch(1)

        scroll = QScrollArea()
        scroll.setWidget(inner)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(300)
        scroll.setMaximumWidth(360)
        return scroll

    def _apply_prefs(self) -> None:
        p = replace(self.prefs)  # a copy: the widgets' change handlers write back into self.prefs
        self.strength_slider.setValue(round(p.default_strength * 100))
        self.overlay_slider.setValue(round(p.overlay_opacity * 100))
        self._set_overlay_color(QColor(p.overlay_color))
        self.canvas.set_overlay(opacity=p.overlay_opacity)
        i = self.format_combo.findData(p.export_format)
        self.format_combo.setCurrentIndex(max(i, 0))
        self.quality_spin.setValue(p.export_quality)
        self.brush_size_spin.setValue(round(p.brush_size))
        self.hardness_slider.setValue(round(p.brush_hardness * 100))
        self.brush_opacity_slider.setValue(round(p.brush_opacity * 100))
        self._on_brush_controls()
        self.set_tool("add")
        self._rebuild_recent_menu()

    def _set_overlay_color(self, c: QColor) -> None:
        self.canvas.set_overlay(color=c)
        self.color_button.setStyleSheet(f"background-color: {c.name()}; min-height: 18px; border-radius: 3px;")
        self.color_button.setToolTip(c.name())

    def _rebuild_recent_menu(self) -> None:
        self.recent_menu.clear()
        for p in self.prefs.recent_files:
            a = self.recent_menu.addAction(Path(p).name)
            a.setToolTip(p)
            a.triggered.connect(lambda _=False, p=p: self.open_photo(p))
        self.recent_menu.setEnabled(bool(self.prefs.recent_files))

    def _update_actions(self) -> None:
        doc = self.doc
        has_mask = doc is not None and doc.mask is not None
        self.act_undo.setEnabled(has_mask and doc.history.can_undo())
        self.act_redo.setEnabled(has_mask and doc.history.can_redo())
        self.act_reset.setEnabled(has_mask)
        self.act_save_mask.setEnabled(has_mask)
        self.act_save.setEnabled(has_mask)
        self.act_save_as.setEnabled(has_mask)
        self.act_export.setEnabled(has_mask)
        self.export_button.setEnabled(has_mask)
        title = "RetouchFormer Studio"
        if doc is not None:
            title = f"{doc.path.name}{' *' if doc.dirty else ''} — {title}"
        self.setWindowTitle(title)

    # ================================================================== status & jobs
    def set_status(self, text: str) -> None:
        self.status_label.setText(text)
        log.info("status: %s", text)

    def _on_job_started(self, name: str) -> None:
        self.set_status(f"{name}…")

    def _on_busy_changed(self, busy: bool) -> None:
        self.progress.setVisible(busy)
        self.cancel_button.setVisible(busy)
        self.act_cancel.setEnabled(busy)
        if busy:
            self.progress.setRange(0, 0)

    def _on_progress(self, frac: float, msg: str) -> None:
        self.progress.setRange(0, 1000)
        self.progress.setValue(int(np.clip(frac, 0, 1) * 1000))
        if msg:
            self.status_label.setText(msg)

    def _job(self, name: str, fn: Callable, on_done: Callable[[Any, float], None], error_title: str,
             on_cancel: Callable[[], None] | None = None) -> Job:
        job = Job(name, fn)
        job.signals.progress.connect(self._on_progress)
        job.signals.done.connect(on_done)
        job.signals.failed.connect(lambda exc: self.show_error(error_title, exc))
        job.signals.cancelled.connect(on_cancel or (lambda: self.set_status(f"{name}: cancelled")))
        return job

    def show_error(self, title: str, exc: BaseException | str) -> None:
        text = exc if isinstance(exc, str) else describe_error(exc)
        self.set_status(f"{title}: {text}")
        self.prompter.error(title, text)

    def cancel_jobs(self) -> None:
        """Cancel the running model job (and drop queued ones)."""
        cancelled = self.queue.cancel()
        if self._open_job is not None:
            self._open_job.cancel()
            cancelled = True
        if cancelled:
            self.set_status("Cancelling…")

    @property
    def busy(self) -> bool:
        return self.queue.busy or self._open_job is not None

    # ================================================================== model
    def load_model(self) -> None:
        device = self.prefs.device
        self.retoucher = None
        self.device_label.setText("Model: loading…")

        def done(r: Any, secs: float) -> None:
            self.retoucher = r
            label = getattr(r, "device_label", getattr(r, "device", "?"))
            self.device_label.setText(f"Device: {label}")
            self.set_status(f"Model loaded in {secs:.1f} s")

        def make() -> Job:
            return self._job("Loading the model", lambda c, p: self.retoucher_factory(device), done, "Could not load the model")

        self.queue.submit("model", make)

    # ================================================================== opening
    def open_photo(self, path: str | Path | None = None) -> None:
        if path is None:
            start = str(Path(self.prefs.recent_files[0]).parent) if self.prefs.recent_files else ""
            path = self.prompter.open_photo(start)
            if not path:
                return
        if not self.maybe_save():
            return
        path = Path(path)
        self._open_gen += 1
        gen = self._open_gen
        if self._open_job is not None:
            self._open_job.cancel()

        def work(cancel: Callable[[], bool], progress: Callable[[float, str], None]) -> dict:
            from engine.colour import WorkingSpace
            from engine.imageio import load_image, load_mask

            progress(0.1, f"Reading {path.name}…")
            photo = load_image(path)
            if cancel():
                return {}
            progress(0.5, "Converting colours…")
            working = WorkingSpace.of(photo.pixels, photo.icc_profile)  # what the network sees: sRGB
            to_display = display_converter(photo.icc_profile)  # what the screen shows: sRGB
            progress(0.7, "Building the preview…")
            levels = build_pyramid(to_display(photo.pixels) if to_display else to_display_u8(photo.pixels))
            restored, warning = None, None
            side = sidecar_path(path)
            if side.exists():
                try:
                    restored = np.asarray(load_mask(side, photo.pixels.shape[:2]), np.float32)
                except ImageError as exc:
                    warning = f"The saved mask was ignored: {exc}"
            return {"photo": photo, "levels": levels, "restored": restored, "warning": warning, "working": working,
                    "to_display": to_display}

        def done(res: dict, secs: float) -> None:
            self._open_job = None
            if gen != self._open_gen or not res:
                return
            self._install_document(path, res, secs)

        def cancelled() -> None:
            self._open_job = None
            self.set_status("Opening cancelled")

        job = self._job(f"Opening {path.name}", work, done, "Could not open the photo", cancelled)
        job.signals.failed.connect(lambda _e: setattr(self, "_open_job", None))
        self._open_job = job
        self.set_status(f"Opening {path.name}…")
        self.runner.start(job)

    def _install_document(self, path: Path, res: dict, secs: float) -> None:
        self.queue.cancel()  # anything for the previous photo is stale (the model load is kept)
        doc = Document(path, res["photo"], res["levels"], res.get("working"), res.get("to_display"))
        self.doc = doc
        self._restored_mask = res["restored"]
        self.canvas.set_document(doc)
        self.strength_slider.setValue(round(self.prefs.default_strength * 100))  # per photo, from the default
        self.prefs.add_recent(str(path))
        self.prefs.save(self.settings)
        self._rebuild_recent_menu()
        h, w = doc.height, doc.width
        depth = getattr(doc.photo, "bit_depth", 8)
        notes = list(getattr(doc.photo, "notes", [])) + list(getattr(doc.working, "notes", []))
        self.info_label.setText(f"{path.name}\n{w} × {h} px ({w * h / 1e6:.1f} MP), {depth}-bit, "
                                f"{profile_name(getattr(doc.photo, 'icc_profile', None))}"
                                + "".join(f"\n{n}" for n in notes))
        self.set_status(f"Opened {path.name} in {secs:.2f} s")
        if res["warning"]:
            self.prompter.error("Saved mask ignored", res["warning"])
        self._update_actions()
        self._request_analysis()

    # ================================================================== model jobs
    def _request_analysis(self) -> None:
        doc = self.doc

        def make() -> Job | None:
            if doc is not self.doc:
                return None
            r = self.retoucher
            if r is None:
                self.set_status("The model is not loaded; choose a device in Preferences and try again.")
                return None

            blemish = self.blemish_size()

            def work(cancel, progress):
                return r.analyze(doc.network_image, blemish_size=blemish, cancel=cancel, progress=progress)

            return self._job("Finding faces and predicting the mask", work,
                             lambda a, secs: self._on_analysis(doc, a, secs), "Analysis failed")

        self.queue.submit("analyze", make)

    def _on_analysis(self, doc: Document, analysis: Any, secs: float) -> None:
        if doc is not self.doc:
            return
        restored, self._restored_mask = self._restored_mask, None
        if restored is None and doc.edited:  # a new scale: keep the user's edits over the new prediction
            edits = np.abs(doc.mask - doc.predicted) > 1.0 / 255.0
            restored = np.where(edits, doc.mask, np.asarray(analysis.mask, np.float32))
        doc.set_analysis(analysis, restored)
        plan = analysis.plan
        n = len(plan.faces)
        self.faces_label.setText(
            f"{n} face{'s' if n != 1 else ''} · blemish {analysis.blemish_size:.0f} px"
            + {"faces": "", "user": " (set)", "default": " (assumed)"}[plan.source]
        )
        if self.blemish_auto.isChecked():
            self.blemish_spin.blockSignals(True)
            self.blemish_spin.setValue(max(1, round(float(analysis.blemish_size))))
            self.blemish_spin.blockSignals(False)
        self.canvas.invalidate()
        msg = getattr(analysis, "message", "") or "Mask predicted"
        extra = ""
        if restored is not None:
            extra = " Restored your edited mask from the sidecar."
            self.info_label.setText(self.info_label.text() + f"\nEdited mask restored from {sidecar_path(doc.path).name}")
        self.set_status(f"{msg} ({secs:.1f} s).{extra}")
        self._update_actions()
        self.request_render()

    def blemish_size(self) -> float | None:
        """The blemish size the user set (photo px), or None for automatic (from the faces)."""
        return None if self.blemish_auto.isChecked() else float(self.blemish_spin.value())

    def set_blemish_size(self, px: float | None) -> None:
        """Set the blemish size (None: automatic) and analyse the photo again at that scale."""
        self.blemish_auto.blockSignals(True)
        self.blemish_auto.setChecked(px is None)
        self.blemish_auto.blockSignals(False)
        self.blemish_spin.setEnabled(px is not None)
        if px is not None:
            self.blemish_spin.setValue(max(1, round(px)))
        if self.doc is not None:
            self._request_analysis()

    def _on_blemish_auto(self, on: bool) -> None:
        self.set_blemish_size(None if on else float(self.blemish_spin.value()))

    def _on_blemish_size(self) -> None:
        a = self.doc.analysis if self.doc is not None else None
        if self.blemish_auto.isChecked() or (a is not None and round(a.blemish_size) == self.blemish_spin.value()):
            return  # nothing new to analyse
        self.set_blemish_size(float(self.blemish_spin.value()))

    def _display(self, doc: Document, pixels: np.ndarray) -> np.ndarray:
        return (doc.to_display or to_display_u8)(pixels)

    def request_render(self) -> None:
        """Re-run the model for the current mask. Coalesced: only the latest request is rendered
        next. After a stroke only what the stroke can change is rendered (the engine's partial
        render), composited and redrawn; the first render of a mask is a full one."""
        doc = self.doc
        if doc is None or doc.analysis is None:
            return

        def make() -> Job | None:
            if doc is not self.doc or self.retoucher is None:
                return None
            if doc.rendered_version == doc.mask_version:
                return None
            r, version = self.retoucher, doc.mask_version
            base = doc.correction
            rect = doc.edited_since(doc.rendered_version) if base is not None else None
            if base is not None and rect is None:  # nothing recorded since (versions moved without an edit)
                base = None
            mask = doc.mask if (base is not None or doc.edited) else None
            plan = r.plan_render(doc.analysis, mask, since=base, rect=rect)  # reads the mask now, on this thread
            image, before_levels = doc.image, doc.before_levels

            def work(cancel, progress):
                c = doc.to_photo(r.run_render(plan, cancel=cancel))
                if cancel():
                    return None
                progress(0.8, "Compositing the preview…")
                if c.rect is not None:  # a stroke: that rectangle only
                    return base, c, self._display(doc, r.composite(image, c, 1.0, rect=c.rect))
                after = r.composite(image, c, 1.0)
                boxes = [tuple(p.box) for p in c.patches]  # engine.compositor.Correction: disjoint boxes
                return None, c, after_pyramid(before_levels, image, after, boxes, doc.to_display)

            return self._job("Rendering the correction", work,
                             lambda res, secs: self._on_render(doc, version, res, secs), "Rendering failed")

        self.queue.submit("render", make)

    def _on_render(self, doc: Document, version: int, res: Any, secs: float) -> None:
        if doc is not self.doc or res is None:
            return
        base, c, pixels = res
        if c.rect is None:
            doc.set_correction(c, pixels, version)
        elif base is doc.correction:
            doc.update_correction(c, pixels, version)
        else:  # another correction was installed meanwhile (a new analysis): render everything again
            self.request_render()
            return
        self.canvas.invalidate()
        stale = " (newer edits pending)" if version != doc.mask_version else ""
        if stale:
            self.preview_fill()  # the strokes still pending keep their quick preview
        self.set_status(f"Preview updated in {secs:.2f} s{stale}")
        self.last_render_seconds = secs

    def preview_fill(self) -> None:
        """Show at once, under the strokes made since the last render, the classical fill the model
        is anchored on (tens of milliseconds, on this thread); the model's result replaces it."""
        doc, r = self.doc, self.retoucher
        if doc is None or r is None or doc.correction is None or doc.analysis is None or doc.mask is None:
            return
        rect = doc.edited_since(doc.rendered_version)
        if rect is None:
            return
        try:
            p = doc.to_photo(r.render(doc.analysis, doc.mask, since=doc.correction, rect=rect, fill=True))
            pixels = self._display(doc, r.composite(doc.image, p, 1.0, rect=p.rect))
        except RetouchError:  # a correction of another analysis: nothing quick to show
            return
        except Exception:  # noqa: BLE001 - only a preview: the model's render follows and reports
            log.exception("fill preview failed")
            return
        doc.show_preview(p.rect, pixels)
        self.canvas.invalidate()

    # ================================================================== editing
    def _on_stroke(self, _edit: Any) -> None:
        self._mask_edited()

    def _mask_edited(self) -> None:
        self.preview_fill()
        self.canvas.invalidate()
        self._update_actions()
        QTimer.singleShot(0, self, self.request_render)  # once the preview is on screen

    def undo(self) -> None:
        if self.doc is not None and self.canvas._stroke is None and self.doc.undo() is not None:
            self._mask_edited()

    def redo(self) -> None:
        if self.doc is not None and self.canvas._stroke is None and self.doc.redo() is not None:
            self._mask_edited()

    def reset_mask(self) -> None:
        if self.doc is not None and self.doc.reset_to_prediction() is not None:
            self._mask_edited()

    def set_tool(self, tool: str | None) -> None:
        self.canvas.set_tool(tool)
        self.act_add.setChecked(tool == "add")
        self.act_erase.setChecked(tool == "erase")
        self.act_hand.setChecked(tool is None)

    def scale_brush(self, factor: float) -> None:
        self.brush_size_spin.setValue(max(1, round(self.brush_size_spin.value() * factor + (0.5 if factor > 1 else -0.5))))

    def _on_brush_controls(self) -> None:
        b = Brush(float(self.brush_size_spin.value()), self.hardness_slider.value() / 100.0,
                  self.brush_opacity_slider.value() / 100.0, erase=self.canvas.brush.erase)
        self.canvas.set_brush(b)
        self.prefs.brush_size, self.prefs.brush_hardness, self.prefs.brush_opacity = b.size, b.hardness, b.opacity

    def _on_strength(self, v: int) -> None:
        self.strength_value.setText(f"{v} %")
        self.canvas.set_strength(v / 100.0)

    def set_overlay_visible(self, on: bool) -> None:
        self.act_overlay.setChecked(on)
        self.overlay_check.blockSignals(True)
        self.overlay_check.setChecked(on)
        self.overlay_check.blockSignals(False)
        self.canvas.set_overlay(visible=on)

    def _on_overlay_opacity(self, v: int) -> None:
        self.canvas.set_overlay(opacity=v / 100.0)
        self.prefs.overlay_opacity = v / 100.0

    def _toggle_overlay(self) -> None:
        self.set_overlay_visible(self.act_overlay.isChecked())

    def _toggle_split(self) -> None:
        self.canvas.set_split(self.act_split.isChecked())

    def _choose_color(self) -> None:
        c = self.prompter.choose_color(self.canvas.overlay_color)
        if c is not None:
            self._set_overlay_color(c)
            self.prefs.overlay_color = c.name()

    def _on_zoom(self, scale: float) -> None:
        self.zoom_label.setText(f"{scale * 100:.0f} %")

    # ================================================================== sidecar
    def save_sidecar(self, background: bool = False) -> bool:
        """Write the edited mask beside the photo (16-bit PNG, atomic). ``background``: in a worker
        (the GUI stays responsive on big photos); otherwise now, returning False on failure."""
        doc = self.doc
        if doc is None or doc.mask is None:
            return True
        from engine.imageio import save_mask

        side, version = sidecar_path(doc.path), doc.mask_version

        def saved(_res: Any = None, _secs: float = 0.0) -> None:
            doc.saved_version = version
            self.set_status(f"Saved the edited mask to {side.name}")
            self._update_actions()

        if background:
            mask = doc.mask.copy()
            self.runner.start(self._job(f"Saving {side.name}", lambda c, p: save_mask(side, mask, 16, protect=[doc.path]),
                                        saved, "Could not save the mask"))
            return True
        try:
            save_mask(side, doc.mask, 16, protect=[doc.path])
        except (RetouchError, OSError) as exc:
            self.show_error("Could not save the mask", exc)
            return False
        saved()
        return True

    def maybe_save(self) -> bool:
        """Ask about unsaved mask edits; False means the user cancelled."""
        doc = self.doc
        if doc is None or not doc.dirty:
            return True
        ans = self.prompter.save_discard_cancel(
            "Unsaved mask edits", f"The mask of {doc.path.name} has edits that are not saved. Save them beside the photo?")
        if ans == "save":
            return self.save_sidecar()
        return ans == "discard"

    # ================================================================== export
    def export(self, path: str | Path | None = None) -> None:
        """Save as / Export: write the retouched photo to a new file (asks before replacing one)."""
        doc = self.doc
        if doc is None or doc.analysis is None:
            self.show_error("Nothing to export", "Open a photo and wait for its mask before exporting.")
            return
        fmt = self.format_combo.currentData()
        src_fmt = normalise_format(getattr(doc.photo, "format", None) or doc.path.suffix)
        fmt = src_fmt if fmt == "keep" else fmt
        if fmt not in EXTENSIONS:  # camera RAW (cannot be written) and anything unknown
            fmt = "tiff" if getattr(doc.photo, "bit_depth", 8) > 8 else "jpeg"
        if path is None:
            suggested = doc.path.with_name(f"{doc.path.stem}_retouched{EXTENSIONS[fmt]}")
            path = self.prompter.save_photo(str(suggested), fmt)
            if not path:
                return
        path = Path(path)
        if not path.suffix:
            path = path.with_suffix(EXTENSIONS[fmt])
        protect = [doc.path]
        if path.resolve() == doc.path.resolve():
            if not self.prompter.confirm("Overwrite the original?",
                                         f"{path.name} is the original photo. Replace it with the retouched version? "
                                         "This cannot be undone."):
                return
            protect = []
        elif path.exists() and not self.prompter.confirm("Replace file?", f"{path.name} already exists. Replace it?"):
            return
        quality = self.quality_spin.value()
        keep_meta = self.metadata_check.isChecked()
        photo = doc.photo

        def write(out: np.ndarray) -> Path:
            from engine.imageio import save_image

            # The colour profile is always embedded: the pixels are in its colour space.
            return save_image(path, out, metadata=photo.metadata if keep_meta else None, icc_profile=photo.icc_profile,
                              alpha=photo.alpha, quality=quality, format=fmt, protect=protect)

        if doc.dirty:
            self.save_sidecar(background=True)
        self._write_retouched(doc, f"Exporting {path.name}", write, self._on_exported, "Export failed")

    def save_to_original(self) -> None:
        """Save (Ctrl+S): write the retouched photo back into the file it was opened from, in its
        own format, bit depth, colour profile and metadata, atomically. The first time for a photo
        it asks; a catalogue program that opened this file ("Edit in") then picks up the change."""
        doc = self.doc
        if doc is None or doc.analysis is None:
            self.show_error("Nothing to save", "Open a photo and wait for its mask before saving.")
            return
        photo = doc.photo
        if getattr(photo, "is_raw", False):
            self.show_error("Cannot save into a RAW file",
                            f"{doc.path.name} is a camera RAW file, which cannot be written; use Export (Ctrl+E) "
                            "to save the retouched photo as a 16-bit TIFF.")
            return
        if not doc.write_confirmed:
            if not self.prompter.confirm(
                    "Save into the original?",
                    f"Replace the pixels of {doc.path.name} with the retouched photo? Its format, bit depth, colour "
                    "profile and metadata are kept, so the program that opened it (Lightroom, darktable, Capture One) "
                    "picks up the change. This cannot be undone."):
                return
            doc.write_confirmed = True
        quality = self.quality_spin.value()
        version = doc.mask_version

        def write(out: np.ndarray) -> Path:
            from engine.imageio import save_in_place

            return save_in_place(photo, out, quality=quality)

        def done(path: Path | None, secs: float) -> None:
            if path is None:
                return
            doc.written_version = version
            self.last_save = Path(path)
            self.set_status(f"Saved the retouched photo into {Path(path).name} in {secs:.1f} s")
            self._update_actions()

        self._write_retouched(doc, f"Saving {doc.path.name}", write, done, "Could not save the photo")

    def _write_retouched(self, doc: Document, name: str, write: Callable[[np.ndarray], Path],
                         on_done: Callable[[Any, float], None], error_title: str) -> None:
        """Render (if the mask changed since the preview), composite at the current strength at full
        resolution in the photo's own colour space, and ``write`` the result, in the model queue."""
        strength = self.strength_slider.value() / 100.0
        image, analysis = doc.image, doc.analysis
        need_render = doc.correction is None or doc.rendered_version != doc.mask_version
        correction = doc.correction
        mask = doc.mask.copy() if (need_render and doc.edited) else None

        def make() -> Job | None:
            r = self.retoucher
            if r is None:
                self.show_error(error_title, "The model is not loaded.")
                return None

            def work(cancel, progress):
                c = doc.to_photo(r.render(analysis, mask, cancel=cancel)) if need_render else correction
                progress(0.5, "Compositing at full resolution…")
                out = r.composite(image, c, strength)
                if cancel():
                    return None
                progress(0.8, f"{name}…")
                return write(out)

            return self._job(name, work, on_done, error_title)

        self.queue.submit("export", make)

    def _on_exported(self, path: Path | None, secs: float) -> None:
        if path is None:
            return
        self.last_export = Path(path)
        self.set_status(f"Exported {Path(path).name} in {secs:.1f} s")

    # ================================================================== dialogs
    def show_batch(self) -> None:
        from app.batch_dialog import BatchDialog

        if self.batch_dialog is None:
            self.batch_dialog = BatchDialog(self, self.prompter, self.prefs, self.runner)
        self.batch_dialog.show()
        self.batch_dialog.raise_()

    def show_preferences(self) -> None:
        from app.prefs_dialog import PreferencesDialog

        dlg = PreferencesDialog(self.prefs, self.prompter, self)
        if dlg.exec():
            old_device = self.prefs.device
            self.prefs = dlg.result_prefs()
            self.prefs.save(self.settings)
            self._apply_prefs()
            if self.prefs.device != old_device:
                self.load_model()

    # ================================================================== events
    def eventFilter(self, obj: QObject, ev: QEvent) -> bool:  # noqa: N802
        t = ev.type()
        if t in (QEvent.Type.KeyPress, QEvent.Type.KeyRelease) and self.isActiveWindow():
            key = ev.key()
            if key == Qt.Key.Key_Backslash and not ev.isAutoRepeat():
                self.canvas.set_show_before(t == QEvent.Type.KeyPress)
                return True
            if key == Qt.Key.Key_Space and not ev.isAutoRepeat() and (self.canvas.underMouse() or self.canvas.hasFocus()):
                self.canvas.set_space_held(t == QEvent.Type.KeyPress)
                return True
        return False

    def dragEnterEvent(self, e: QDragEnterEvent) -> None:  # noqa: N802
        if e.mimeData().hasUrls() and any(u.isLocalFile() for u in e.mimeData().urls()):
            e.acceptProposedAction()

    def dropEvent(self, e: QDropEvent) -> None:  # noqa: N802
        files = [u.toLocalFile() for u in e.mimeData().urls() if u.isLocalFile()]
        if files:
            e.acceptProposedAction()
            QTimer.singleShot(0, lambda: self.open_photo(files[0]))

    def closeEvent(self, e: QCloseEvent) -> None:  # noqa: N802
        if not self.maybe_save():
            e.ignore()
            return
        if self.batch_dialog is not None and not self.batch_dialog.close():
            e.ignore()
            return
        self.prefs.save(self.settings)
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.shutdown()
        e.accept()

    def shutdown(self, wait_ms: int = 10000) -> None:
        """Cancel every job and wait (bounded) for the workers to stop."""
        QApplication.instance().removeEventFilter(self)
        self.queue.cancel()
        self.runner.cancel_all()
        self.runner.wait(wait_ms)

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Process events until no job runs (for scripts and tests)."""
        t0 = time.perf_counter()
        app = QApplication.instance()
        while self.busy or self.runner.busy():
            if time.perf_counter() - t0 > timeout_s:
                return False
            app.processEvents()
            time.sleep(0.005)
        app.processEvents()
        return True
