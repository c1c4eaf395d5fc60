"""Batch export dialog (real engine.batch) and the --self-test entry point."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from PIL import Image
from PySide6.QtCore import Qt

from engine.imageio import save_image

TIMEOUT = 180_000


def _folder(tmp_path: Path, make_portrait, n_good: int, bad: bool) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(n_good):
        img, _ = make_portrait(320, 256, seed=10 + i)
        save_image(src / f"photo_{i}.{'png' if i % 2 else 'jpg'}", img)
    if bad:
        (src / "broken.jpg").write_bytes(b"this is not a JPEG file")
    return src


def test_batch_reports_bad_file_and_exports_others(qtbot, make_window, make_portrait, prompter, tmp_path):
    src = _folder(tmp_path, make_portrait, 2, bad=True)
    dst = tmp_path / "out"
    w = make_window()
    w.batch_button.click()
    dlg = w.batch_dialog
    assert dlg.isVisible() and not dlg.isModal()
    prompter.dirs = [str(src), str(dst)]
    for edit in (dlg.in_edit, dlg.out_edit):  # the Browse buttons ask the (fake) folder dialog
        edit.parent().findChild(type(dlg.start_button)).click()
    assert dlg.in_edit.text() == str(src) and dlg.out_edit.text() == str(dst)
    dlg.format_combo.setCurrentIndex(dlg.format_combo.findData("png"))
    qtbot.mouseClick(dlg.start_button, Qt.MouseButton.LeftButton)
    assert dlg.running and dlg.cancel_button.isEnabled()
    w.strength_slider.setValue(30)  # the main window stays usable meanwhile
    assert w.strength_value.text() == "30 %"
    qtbot.waitUntil(lambda: not dlg.running, timeout=TIMEOUT)
    rep = dlg.report
    assert rep is not None, dlg.status.text()
    assert sorted(p.name for p in rep.done) == ["photo_0.jpg", "photo_1.png"]
    assert [Path(p).name for p, _ in rep.failed] == ["broken.jpg"]
    assert dlg.errors.count() == 1 and "broken.jpg" in dlg.errors.item(0).text()
    outs = sorted(dst.iterdir())
    assert len(outs) == 2
    for o in outs:
        with Image.open(o) as im:
            assert im.size == (320, 256)
    assert dlg.progress.value() == dlg.progress.maximum()
    assert not prompter.errors


def test_batch_cancel(qtbot, make_window, make_portrait, prompter, tmp_path, app_retoucher, monkeypatch):
    src = _folder(tmp_path, make_portrait, 4, bad=False)
    dst = tmp_path / "out"
    gate, entered = threading.Event(), threading.Event()
    real = app_retoucher.analyze

    def gated(image, **kw):
        entered.set()
        gate.wait(30)
        return real(image, **kw)

    monkeypatch.setattr(app_retoucher, "analyze", gated)
    w = make_window()
    w.show_batch()
    dlg = w.batch_dialog
    dlg.in_edit.setText(str(src))
    dlg.out_edit.setText(str(dst))
    dlg.start_button.click()
    qtbot.waitUntil(entered.is_set, timeout=TIMEOUT)
    dlg.cancel_button.click()
    gate.set()
    qtbot.waitUntil(lambda: not dlg.running, timeout=TIMEOUT)
    n_out = len(list(dst.iterdir())) if dst.exists() else 0
    assert n_out < 4
    assert "cancel" in dlg.status.text().lower()
    assert dlg.start_button.isEnabled() and not prompter.errors


def test_self_test_entry_point(tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", RETOUCH_STUDIO_DATA=str(tmp_path / "data"),
               RETOUCH_DEVICE="cpu", OMP_NUM_THREADS="1")
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", "import sys; from app.main import main; sys.exit(main(['--self-test']))"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "self-test passed" in proc.stdout and "device cpu" in proc.stdout
    assert (tmp_path / "data" / "logs" / "retouch-studio.log").exists()


def test_quit_when_ready_reports_a_usable_window(tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", RETOUCH_STUDIO_DATA=str(tmp_path / "data"),
               XDG_CONFIG_HOME=str(tmp_path / "config"), HOME=str(tmp_path), OMP_NUM_THREADS="1")
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", "import sys; from app.main import main; sys.exit(main(['--quit-when-ready']))"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "usable window after" in proc.stdout
