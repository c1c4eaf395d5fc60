"""Batch export: a non-modal dialog that retouches a whole folder in the background."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import Qt
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QListWidget,
    QProgressBar, QPushButton, QSlider, QSpinBox, QVBoxLayout, QWidget,
)

from app.prompts import Prompter
from app.settings import Preferences
from app.workers import Job, JobRunner
from engine.errors import Cancelled

log = logging.getLogger(__name__)

BATCH_FORMATS = {"keep": "Same as original", "jpeg": "JPEG", "png": "PNG", "tiff": "TIFF"}


class BatchDialog(QDialog):
    """Input folder, output folder, strength, format; progress bar, per-file errors, cancel.

    The job loads its own model instance (``retoucher_factory(device)``) so the main window keeps
    using its own for interactive work while the batch runs."""

    def __init__(self, parent: QWidget | None, prompter: Prompter, prefs: Preferences, runner: JobRunner,
                 retoucher_factory: Callable[[str], Any] | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("batchDialog")
        self.setWindowTitle("Batch export")
        self.setModal(False)
        self.prompter, self.prefs, self.runner = prompter, prefs, runner
        if retoucher_factory is None:
            retoucher_factory = getattr(parent, "retoucher_factory", None)
            if retoucher_factory is None:
                from app.window import load_retoucher as retoucher_factory
        self.retoucher_factory = retoucher_factory
        self.job: Job | None = None
        self.report: Any = None

        form = QFormLayout()
        self.in_edit = QLineEdit()
        self.in_edit.setObjectName("batchInputEdit")
        form.addRow("Input folder", self._with_browse(self.in_edit, "Choose the input folder"))
        self.out_edit = QLineEdit()
        self.out_edit.setObjectName("batchOutputEdit")
        form.addRow("Output folder", self._with_browse(self.out_edit, "Choose the output folder"))
        self.strength = QSlider(Qt.Orientation.Horizontal)
        self.strength.setObjectName("batchStrengthSlider")
        self.strength.setRange(0, 100)
        self.strength.setValue(round(prefs.default_strength * 100))
        self.strength_label = QLabel(f"{self.strength.value()} %")
        self.strength.valueChanged.connect(lambda v: self.strength_label.setText(f"{v} %"))
        row = QHBoxLayout()
        row.addWidget(self.strength)
        row.addWidget(self.strength_label)
        form.addRow("Strength", row)
        self.format_combo = QComboBox()
        self.format_combo.setObjectName("batchFormatCombo")
        for k, v in BATCH_FORMATS.items():
            self.format_combo.addItem(v, k)
        self.format_combo.setCurrentIndex(max(self.format_combo.findData(prefs.export_format), 0))
        form.addRow("Format", self.format_combo)
        self.quality = QSpinBox()
        self.quality.setRange(1, 100)
        self.quality.setValue(prefs.export_quality)
        form.addRow("JPEG quality", self.quality)
        self.recursive = QCheckBox("Include subfolders")
        self.overwrite = QCheckBox("Replace existing output files")
        form.addRow(self.recursive)
        form.addRow(self.overwrite)

        self.progress = QProgressBar()
        self.progress.setObjectName("batchProgress")
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.status = QLabel("Choose the folders, then Start.")
        self.status.setObjectName("batchStatus")
        self.status.setWordWrap(True)
        self.errors = QListWidget()
        self.errors.setObjectName("batchErrors")
        self.errors.setMinimumHeight(90)

        self.buttons = QDialogButtonBox()
        self.start_button = self.buttons.addButton("Start", QDialogButtonBox.ButtonRole.AcceptRole)
        self.start_button.setObjectName("batchStartButton")
        self.cancel_button = self.buttons.addButton("Cancel", QDialogButtonBox.ButtonRole.RejectRole)
        self.cancel_button.setObjectName("batchCancelButton")
        self.cancel_button.setEnabled(False)
        self.close_button = self.buttons.addButton("Close", QDialogButtonBox.ButtonRole.DestructiveRole)
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button.clicked.connect(self.close)

        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addWidget(QLabel("Problems:"))
        lay.addWidget(self.errors)
        lay.addWidget(self.buttons)
        self.resize(560, 460)

    def _with_browse(self, edit: QLineEdit, title: str) -> QWidget:
        w = QWidget()
        row = QHBoxLayout(w)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(edit)
        b = QPushButton("Browse…")
        b.clicked.connect(lambda: self._browse(edit, title))
        row.addWidget(b)
        return w

    def _browse(self, edit: QLineEdit, title: str) -> None:
        d = self.prompter.choose_dir(title, edit.text())
        if d:
            edit.setText(d)

    @property
    def running(self) -> bool:
        return self.job is not None

    def start(self) -> None:
        if self.job is not None:
            return
        src, dst = Path(self.in_edit.text().strip()), Path(self.out_edit.text().strip())
        if not self.in_edit.text().strip() or not src.is_dir():
            self.prompter.error("Batch export", "Choose an existing input folder.")
            return
        if not self.out_edit.text().strip():
            self.prompter.error("Batch export", "Choose an output folder.")
            return
        if dst.resolve() == src.resolve():
            self.prompter.error("Batch export", "The output folder must differ from the input folder, so originals are never overwritten.")
            return
        strength = self.strength.value() / 100.0
        fmt = self.format_combo.currentData()
        quality, recursive, overwrite = self.quality.value(), self.recursive.isChecked(), self.overwrite.isChecked()
        device, factory = self.prefs.device, self.retoucher_factory

        def work(cancel, progress):
            from engine.batch import run_batch

            progress(0.0, "Loading the model…")
            r = factory(device)
            try:
                return run_batch(src, dst, retoucher=r, strength=strength, fmt=fmt, recursive=recursive,
                                 overwrite=overwrite, quality=quality,
                                 progress=lambda f, name: progress(f, f"Retouching {name}…" if name != "done" else ""),
                                 cancel=cancel)
            except Cancelled as exc:  # keep the partial report: finished outputs are listed
                partial = getattr(exc, "report", None)
                if partial is None:
                    raise
                return partial

        self.errors.clear()
        self.report = None
        self.progress.setValue(0)
        job = Job("Batch export", work, partial_results=True)
        job.signals.progress.connect(self._on_progress)
        job.signals.done.connect(self._on_done)
        job.signals.failed.connect(self._on_failed)
        job.signals.cancelled.connect(self._on_cancelled)
        job.signals.finished.connect(self._on_finished)
        self.job = job
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText("Starting…")
        self.runner.start(job)

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.status.setText("Cancelling after the current photo…")

    def _on_progress(self, frac: float, msg: str) -> None:
        self.progress.setValue(int(max(0.0, min(frac, 1.0)) * 1000))
        if msg:
            self.status.setText(msg)

    def _on_done(self, report: Any, secs: float) -> None:
        self.report = report
        self.progress.setValue(1000)
        for path, err in report.failed:
            self.errors.addItem(f"{Path(path).name}: {err}")
        summary = f"{len(report.done)} exported, {len(report.skipped)} skipped, {len(report.failed)} failed"
        if self.job is not None and self.job.is_cancelled:
            self.status.setText(f"Cancelled after {secs:.1f} s: {summary}; files already exported are kept.")
        else:
            self.status.setText(f"Done in {secs:.1f} s: {summary}.")

    def _on_failed(self, exc: BaseException) -> None:
        from app.window import describe_error

        text = describe_error(exc)
        self.status.setText(f"Batch export failed: {text}")
        self.prompter.error("Batch export failed", text)

    def _on_cancelled(self) -> None:
        self.status.setText("Cancelled; files already exported are kept.")

    def _on_finished(self) -> None:
        self.job = None
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def closeEvent(self, e: QCloseEvent) -> None:  # noqa: N802
        if self.job is not None:
            if not self.prompter.confirm("Batch export running", "A batch export is running. Cancel it and close?"):
                e.ignore()
                return
            self.job.cancel()
        e.accept()

    def reject(self) -> None:  # Esc: hide, keep running
        self.hide()
