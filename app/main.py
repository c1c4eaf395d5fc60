"""Entry point: ``retouch-studio [PHOTO]`` opens the app (this is also how a catalogue program's
"Edit in" starts it: Save, Ctrl+S, then writes the retouch back into PHOTO); ``retouch-studio
--self-test`` checks the installation headless (model loads, a generated portrait is retouched
inside the mask only)."""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Sequence

log = logging.getLogger("app")

SCREENSHOT_ENV = "RETOUCH_STUDIO_SCREENSHOT"  # path: grab the window once the preview is ready, then quit


def _say(text: str, err: bool = False) -> None:
    """Print when there is a console (windowed/frozen apps may have sys.stdout = None); always log."""
    stream = sys.stderr if err else sys.stdout
    if stream is not None:
        try:
            print(text, file=stream, flush=True)
        except OSError:
            pass
    (log.error if err else log.info)(text)


def apply_theme(app) -> None:
    """A neutral dark theme, as photo tools use (colours are judged against grey, not white)."""
    from PySide6.QtGui import QColor, QPalette

    app.setStyle("Fusion")
    p = QPalette()
    base, window, text = QColor(30, 30, 32), QColor(44, 44, 47), QColor(222, 222, 226)
    for role, c in ((QPalette.ColorRole.Window, window), (QPalette.ColorRole.WindowText, text),
                    (QPalette.ColorRole.Base, base), (QPalette.ColorRole.AlternateBase, window),
                    (QPalette.ColorRole.ToolTipBase, QColor(20, 20, 22)), (QPalette.ColorRole.ToolTipText, text),
                    (QPalette.ColorRole.Text, text), (QPalette.ColorRole.Button, QColor(52, 52, 56)),
                    (QPalette.ColorRole.ButtonText, text), (QPalette.ColorRole.Highlight, QColor(214, 96, 128)),
                    (QPalette.ColorRole.HighlightedText, QColor(255, 255, 255)),
                    (QPalette.ColorRole.PlaceholderText, QColor(130, 130, 135))):
        p.setColor(role, c)
    for role in (QPalette.ColorRole.WindowText, QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor(110, 110, 115))
    app.setPalette(p)
    app.setStyleSheet("QGroupBox { font-weight: 600; border: 1px solid #3a3a3e; border-radius: 5px; margin-top: 14px;"
                      " padding-top: 6px; } QGroupBox::title { subcontrol-origin: margin; left: 8px; padding: 0 4px; }"
                      " QToolBar { border: none; spacing: 2px; }")


def install_excepthook() -> None:
    """Uncaught exceptions are logged and shown in a dialog instead of killing the app silently."""

    def hook(etype, value, tb) -> None:
        if issubclass(etype, KeyboardInterrupt):
            sys.__excepthook__(etype, value, tb)
            return
        log.error("Uncaught exception:\n%s", "".join(traceback.format_exception(etype, value, tb)))
        try:
            from PySide6.QtWidgets import QApplication, QMessageBox

            from app.window import describe_error

            if QApplication.instance() is not None:
                QMessageBox.critical(QApplication.activeWindow(), "Unexpected error", describe_error(value))
        except Exception:  # noqa: BLE001 - never raise from the hook itself
            log.exception("could not show the error dialog")

    sys.excepthook = hook


def self_test() -> int:
    """Load the model, retouch a generated portrait headless, check inside/outside the mask, then
    drive the main window offscreen through open -> analyse -> render. Returns the exit code."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import cv2
    import numpy as np

    from app.sample import synthetic_portrait
    from engine.errors import RetouchError
    from engine.retoucher import Retoucher

    try:
        t0 = time.perf_counter()
        r = Retoucher.load(None, device=os.environ.get("RETOUCH_DEVICE", "auto"))
        img, spots = synthetic_portrait(640, 480, seed=3)
        mask = np.zeros(img.shape[:2], np.float32)
        for x, y, rad in spots:
            cv2.circle(mask, (x, y), int(rad * 1.8), 1.0, -1)
        a = r.analyze(img)
        c = r.render(a, mask)
        out = r.composite(img, c, 1.0)
        if out.shape != img.shape or out.dtype != img.dtype:
            raise AssertionError(f"output is {out.shape} {out.dtype}, expected {img.shape} {img.dtype}")
        inside = mask > 0.5
        outside = cv2.dilate((mask > 0).astype(np.uint8), np.ones((9, 9), np.uint8)) == 0
        changed_inside = float(np.mean(np.any(out[inside] != img[inside], axis=-1)))
        if changed_inside < 0.05:
            raise AssertionError(f"the output barely differs inside the mask ({changed_inside:.1%} of pixels changed)")
        if not np.array_equal(out[outside], img[outside]):
            n = int(np.sum(np.any(out[outside] != img[outside], axis=-1)))
            raise AssertionError(f"the output differs from the input outside the mask ({n} pixels)")
        engine_s = time.perf_counter() - t0
        gui_s = _self_test_gui(r, img)
        _say(f"self-test passed: device {r.device} ({getattr(r, 'device_label', r.device)}); "
             f"{changed_inside:.0%} of masked pixels changed, unmasked pixels identical; "
             f"engine {engine_s:.1f} s, window {gui_s:.1f} s")
        return 0
    except RetouchError as exc:
        _say(f"self-test failed: {exc}", err=True)
    except Exception as exc:  # noqa: BLE001 - the self-test reports every failure as one line + log
        log.exception("self-test failed")
        _say(f"self-test failed: {type(exc).__name__}: {exc}", err=True)
    return 1


def _self_test_gui(retoucher, img) -> float:
    """Open ``img`` in an offscreen main window and wait for the rendered preview."""
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from app.prompts import Prompter
    from app.window import MainWindow
    from engine.imageio import save_image

    class _Silent(Prompter):
        def error(self, title: str, text: str) -> None:
            raise RuntimeError(f"{title}: {text}")

        def save_discard_cancel(self, title: str, text: str) -> str:
            return "discard"

    t0 = time.perf_counter()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "self-test.png"
        save_image(path, img)
        settings = QSettings(str(Path(tmp) / "settings.ini"), QSettings.Format.IniFormat)
        w = MainWindow(prompter=_Silent(), settings=settings, retoucher_factory=lambda _d: retoucher)
        w.show()
        w.open_photo(path)
        ok = w.wait_idle(120)
        doc = w.doc
        if not ok or doc is None or doc.after_levels is None:
            raise AssertionError("the window did not show a rendered preview")
        if w.grab().isNull():
            raise AssertionError("the window could not be drawn")
        w.close()
        app.processEvents()
    return time.perf_counter() - t0


def _screenshot_when_ready(window, path: str) -> None:
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    t0 = time.perf_counter()

    def poll() -> None:
        doc = window.doc
        ready = doc is not None and doc.after_levels is not None and not window.busy
        if ready or time.perf_counter() - t0 > 300:
            if os.environ.get("RETOUCH_STUDIO_SCREENSHOT_SPLIT"):
                window.act_split.setChecked(True)
                window._toggle_split()
            QApplication.processEvents()
            window.grab().save(path)
            _say(f"screenshot saved to {path}" if ready else f"timed out; partial screenshot saved to {path}")
            window.shutdown()
            QApplication.quit()
        else:
            QTimer.singleShot(200, poll)

    QTimer.singleShot(500, poll)


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    multiprocessing.freeze_support()
    parser = argparse.ArgumentParser(prog="retouch-studio", description="RetouchFormer Studio: face retouching.")
    parser.add_argument("photo", nargs="?", help="photo to open")
    parser.add_argument("--self-test", action="store_true", help="check the installation headless and exit")
    parser.add_argument(
        "--quit-when-ready", action="store_true", help="quit once the window is shown and the model loaded (start-up timing)"
    )
    # Lenient: platforms may add their own arguments (e.g. macOS -psn_…); those are ignored.
    args, unknown = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))

    import torch  # noqa: F401 - torch before Qt (DLL load order in frozen Windows builds)

    from PySide6.QtCore import QCoreApplication

    QCoreApplication.setOrganizationName("RetouchFormer")
    QCoreApplication.setApplicationName("RetouchFormer Studio")
    from app.logs import setup_logging

    logfile = setup_logging()
    log.info("starting; log file %s; ignored arguments %s", logfile, unknown)
    if args.self_test:
        return self_test()

    from PySide6.QtWidgets import QApplication

    from app.window import MainWindow

    install_excepthook()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    apply_theme(app)
    w = MainWindow()
    w.show()
    install_file_open_handler(app, w)
    if args.photo:
        w.open_photo(args.photo)
    shot = os.environ.get(SCREENSHOT_ENV)
    if shot:
        _screenshot_when_ready(w, shot)
    if args.quit_when_ready:
        _quit_when_ready(w, started)
    return app.exec()


def install_file_open_handler(app, window):
    """Open the files macOS hands over with an "open document" event (Lightroom's and Capture One's
    "Edit in" on a Mac send the file that way, not on the command line; Windows and Linux pass it
    as the PHOTO argument). Returns the event filter (kept alive by the application)."""
    from PySide6.QtCore import QEvent, QObject

    class _FileOpen(QObject):
        def eventFilter(self, obj, ev) -> bool:  # noqa: N802 - Qt API
            if ev.type() == QEvent.Type.FileOpen:
                path = ev.file() or ev.url().toLocalFile()
                if path:
                    window.open_photo(path)
                    return True
            return False

    handler = _FileOpen(app)
    app.installEventFilter(handler)
    return handler


def _quit_when_ready(window, started: float) -> None:
    """Print the time from main() to a shown window with the model loaded, then quit."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    def poll() -> None:
        if window.isVisible() and window.retoucher is not None and not window.busy:
            _say(f"usable window after {time.perf_counter() - started:.2f} s")
            QApplication.instance().quit()
        else:
            QTimer.singleShot(20, poll)

    QTimer.singleShot(0, poll)


if __name__ == "__main__":
    sys.exit(main())
