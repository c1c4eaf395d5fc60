"""Every question the app asks the user goes through :class:`Prompter`, so tests can inject answers
(no test ever blocks on a modal dialog)."""
from __future__ import annotations

import logging

from PySide6.QtGui import QColor
from PySide6.QtWidgets import QColorDialog, QFileDialog, QMessageBox, QWidget

log = logging.getLogger(__name__)

def _photo_filter() -> str:
    from engine.imageio import RAW_SUFFIXES, WRITABLE_SUFFIXES

    def pats(suffixes) -> str:
        return " ".join(f"*{x}" for x in sorted(suffixes)) + " " + " ".join(f"*{x.upper()}" for x in sorted(suffixes))

    return (f"Photos ({pats(WRITABLE_SUFFIXES | RAW_SUFFIXES)});;Camera RAW ({pats(RAW_SUFFIXES)});;"
            "All files (*)")


PHOTO_FILTER = _photo_filter()
EXPORT_FILTERS = {"jpeg": "JPEG (*.jpg *.jpeg)", "png": "PNG (*.png)", "tiff": "TIFF (*.tif *.tiff)",
                  "webp": "WebP (*.webp)", "heif": "HEIF (*.heic *.heif)", "avif": "AVIF (*.avif)"}


class Prompter:
    """Modal dialogs. Subclass (or monkeypatch) in tests."""

    def __init__(self, parent: QWidget | None = None) -> None:
        self.parent = parent

    def open_photo(self, start_dir: str = "") -> str | None:
        path, _ = QFileDialog.getOpenFileName(self.parent, "Open photo", start_dir, PHOTO_FILTER)
        return path or None

    def save_photo(self, suggested: str, fmt: str) -> str | None:
        path, _ = QFileDialog.getSaveFileName(self.parent, "Export retouched photo", suggested,
                                              EXPORT_FILTERS.get(fmt, "All files (*)"),
                                              options=QFileDialog.Option.DontConfirmOverwrite)
        return path or None

    def choose_dir(self, title: str, start_dir: str = "") -> str | None:
        path = QFileDialog.getExistingDirectory(self.parent, title, start_dir)
        return path or None

    def choose_color(self, initial: QColor) -> QColor | None:
        c = QColorDialog.getColor(initial, self.parent, "Overlay colour")
        return c if c.isValid() else None

    def error(self, title: str, text: str) -> None:
        log.error("%s: %s", title, text)
        QMessageBox.critical(self.parent, title, text)

    def info(self, title: str, text: str) -> None:
        QMessageBox.information(self.parent, title, text)

    def confirm(self, title: str, text: str) -> bool:
        r = QMessageBox.question(self.parent, title, text,
                                 QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                 QMessageBox.StandardButton.No)
        return r == QMessageBox.StandardButton.Yes

    def save_discard_cancel(self, title: str, text: str) -> str:
        """Returns "save", "discard" or "cancel"."""
        B = QMessageBox.StandardButton
        r = QMessageBox.warning(self.parent, title, text, B.Save | B.Discard | B.Cancel, B.Save)
        return {B.Save: "save", B.Discard: "discard"}.get(r, "cancel")
