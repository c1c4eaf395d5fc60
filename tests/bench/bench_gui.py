"""GUI latency benchmark for RetouchFormer Studio (offscreen by default).

Prints:
  * start-up: process start -> main window shown and painted (model loading continues in the
    background), and -> model loaded;
  * open: a generated 24 MP photo -> mask overlay on screen, and -> first rendered preview;
  * stroke: from the release of a brush stroke (on a blemish, view fitted) to the first
    change under the brush on screen (the classical fill; the model's result where a version
    without the quick preview is measured), and to the model's preview on screen; median of
    several strokes; plus the NumPy peak memory of one stroke (tracemalloc);
  * paint: time to compose one view (fit to window) and one strength change.

Usage: .venv/bin/python tests/bench/bench_gui.py [--mp 24] [--device cpu] [--strokes 7]
"""
from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mp", type=float, default=24.0, help="megapixels of the generated photo")
    ap.add_argument("--device", default="cpu", help="auto, cpu or cuda")
    ap.add_argument("--strokes", type=int, default=7)
    args = ap.parse_args()

    import torch  # noqa: F401 - as the app does: torch before Qt
    from PySide6.QtCore import QEvent, QPointF, QSettings, Qt
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtWidgets import QApplication

    from app.main import apply_theme
    from app.window import MainWindow, load_retoucher

    tmp = tempfile.TemporaryDirectory()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    apply_theme(app)
    w = MainWindow(settings=QSettings(str(Path(tmp.name) / "s.ini"), QSettings.Format.IniFormat),
                   retoucher_factory=lambda _d: load_retoucher(args.device))
    w.resize(1600, 1000)
    w.show()
    app.processEvents()
    w.grab()  # forces a full paint
    t_window = time.perf_counter() - T0
    while w.retoucher is None:
        app.processEvents()
        time.sleep(0.002)
    t_model = time.perf_counter() - T0

    from app.sample import synthetic_portrait
    from engine.imageio import save_image

    height = int(round((args.mp * 1e6 / 1.5) ** 0.5))
    width = int(round(height * 1.5))
    img, spots = synthetic_portrait(width, height, seed=5)
    path = Path(tmp.name) / "portrait24.jpg"
    save_image(path, img, quality=92)
    del img

    def wait(cond, timeout=600.0) -> None:
        t = time.perf_counter()
        while not cond():
            if time.perf_counter() - t > timeout:
                raise TimeoutError("timed out")
            app.processEvents()
            time.sleep(0.001)

    t = time.perf_counter()
    w.open_photo(path)
    wait(lambda: w.doc is not None)
    t_shown = time.perf_counter() - t
    wait(lambda: w.doc.mask is not None)
    w.canvas.repaint()
    t_overlay = time.perf_counter() - t
    wait(lambda: w.doc.after_levels is not None and not w.busy)
    t_preview = time.perf_counter() - t
    analysis_msg = getattr(w.doc.analysis, "message", "")

    canvas = w.canvas

    def send(kind, x, y):
        btn = Qt.MouseButton.LeftButton
        pos = QPointF(x, y)
        ev = QMouseEvent(kind, pos, canvas.mapToGlobal(pos), btn,
                         Qt.MouseButton.NoButton if kind == QEvent.Type.MouseButtonRelease else btn,
                         Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(canvas, ev)

    w.brush_size_spin.setValue(max(10, width // 150))
    first, model, render = [], [], []
    peak = 0
    for i in range(args.strokes + 1):  # the last one, not timed, measures memory
        x0, y0 = spots[i % len(spots)][:2]
        p = canvas.photo_to_widget(QPointF(x0, y0))
        timed = i < args.strokes
        if not timed:
            import tracemalloc

            tracemalloc.start()
        send(QEvent.Type.MouseButtonPress, p.x(), p.y())
        for k in range(1, 6):
            send(QEvent.Type.MouseMove, p.x() + 3 * k, p.y() + k)
        shown = w.doc.after_version
        t = time.perf_counter()
        send(QEvent.Type.MouseButtonRelease, p.x() + 15, p.y() + 5)
        wait(lambda: w.doc.after_version != shown)
        canvas.repaint()
        t_quick = time.perf_counter() - t
        wait(lambda: w.doc.rendered_version == w.doc.mask_version and not w.busy)
        canvas.repaint()
        t_done = time.perf_counter() - t
        if timed:
            first.append(t_quick)
            model.append(t_done)
            render.append(getattr(w, "last_render_seconds", float("nan")))
        else:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()

    def timed_compose(fn) -> float:
        fn()
        t = time.perf_counter()
        canvas.repaint()
        return time.perf_counter() - t

    canvas._cache_key = canvas._cache_base = None
    t_paint = timed_compose(lambda: None)
    t_strength = timed_compose(lambda: w.strength_slider.setValue(w.strength_slider.value() - 7))

    dev = w.device_label.text()
    print(f"photo: {width}x{height} ({width * height / 1e6:.1f} MP); {dev}; {analysis_msg}")
    print(f"start-up to usable window:        {t_window:6.2f} s  (model loaded at {t_model:.2f} s)")
    print(f"open 24 MP photo -> image shown:  {t_shown:6.2f} s")
    print(f"open 24 MP photo -> overlay:      {t_overlay:6.2f} s")
    print(f"open 24 MP photo -> preview:      {t_preview:6.2f} s")
    med = statistics.median
    print(f"stroke -> first feedback (median of {len(first)}): {med(first) * 1000:6.0f} ms ({', '.join(f'{x * 1000:.0f}' for x in first)})")
    print(f"stroke -> model preview (median of {len(model)}):  {med(model) * 1000:6.0f} ms ({', '.join(f'{x * 1000:.0f}' for x in model)}); "
          f"the render job itself {med(render) * 1000:.0f} ms")
    print(f"NumPy peak during one stroke (tracemalloc): {peak / 2**20:.1f} MiB (a float copy of the photo: {width * height * 12 / 2**20:.0f} MiB)")
    print(f"repaint at fit (uncached):        {t_paint * 1000:6.1f} ms")
    print(f"strength change -> repaint:       {t_strength * 1000:6.1f} ms")
    w.shutdown()
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
