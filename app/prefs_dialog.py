"""Preferences dialog: device, default strength, overlay colour/opacity, export defaults."""
from __future__ import annotations

from dataclasses import replace

from PySide6.QtGui import QColor
from PySide6.QtWidgets import QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFormLayout, QPushButton, QSpinBox, QWidget

from app.prompts import Prompter
from app.settings import Preferences

DEVICE_LABELS = {"auto": "Automatic (GPU if available)", "cpu": "CPU", "cuda": "GPU (CUDA)"}
FORMAT_LABELS = {"keep": "Same as original", "jpeg": "JPEG", "png": "PNG", "tiff": "TIFF"}


class PreferencesDialog(QDialog):
    def __init__(self, prefs: Preferences, prompter: Prompter, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("preferencesDialog")
        self.setWindowTitle("Preferences")
        self.prefs, self.prompter = prefs, prompter
        self._color = QColor(prefs.overlay_color)
        f = QFormLayout(self)
        self.device = QComboBox()
        for k, v in DEVICE_LABELS.items():
            self.device.addItem(v, k)
        self.device.setCurrentIndex(max(self.device.findData(prefs.device), 0))
        f.addRow("Compute device", self.device)
        self.strength = QSpinBox()
        self.strength.setRange(0, 100)
        self.strength.setSuffix(" %")
        self.strength.setValue(round(prefs.default_strength * 100))
        f.addRow("Default strength", self.strength)
        self.color = QPushButton()
        self.color.clicked.connect(self._pick)
        self._show_color()
        f.addRow("Overlay colour", self.color)
        self.opacity = QDoubleSpinBox()
        self.opacity.setRange(0.0, 1.0)
        self.opacity.setSingleStep(0.05)
        self.opacity.setValue(prefs.overlay_opacity)
        f.addRow("Overlay opacity", self.opacity)
        self.fmt = QComboBox()
        for k, v in FORMAT_LABELS.items():
            self.fmt.addItem(v, k)
        self.fmt.setCurrentIndex(max(self.fmt.findData(prefs.export_format), 0))
        f.addRow("Export format", self.fmt)
        self.quality = QSpinBox()
        self.quality.setRange(1, 100)
        self.quality.setValue(prefs.export_quality)
        f.addRow("JPEG quality", self.quality)
        bb = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        bb.accepted.connect(self.accept)
        bb.rejected.connect(self.reject)
        f.addRow(bb)

    def _show_color(self) -> None:
        self.color.setStyleSheet(f"background-color: {self._color.name()}; min-height: 18px;")

    def _pick(self) -> None:
        c = self.prompter.choose_color(self._color)
        if c is not None:
            self._color = c
            self._show_color()

    def result_prefs(self) -> Preferences:
        return replace(self.prefs, device=self.device.currentData(), default_strength=self.strength.value() / 100.0,
                       overlay_color=self._color.name(), overlay_opacity=self.opacity.value(),
                       export_format=self.fmt.currentData(), export_quality=self.quality.value(),
                       recent_files=list(self.prefs.recent_files))
