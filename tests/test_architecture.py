"""The engine never imports Qt; app/ is the only GUI package."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QT = ("PySide6", "shiboken6", "qtawesome", "PyQt5", "PyQt6", "qtpy")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_engine_sources_do_not_import_qt() -> None:
    offenders = {str(p.relative_to(ROOT)): sorted(_imports(p) & set(QT)) for p in (ROOT / "engine").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_importing_the_engine_loads_no_qt_module() -> None:
    code = (
        "import sys, engine, engine.model, engine.cli, engine.retoucher, engine.imageio, engine.training.train;"
        f"bad=[m for m in sys.modules if m.split('.')[0] in {QT!r}];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_top_level_layout() -> None:
    for name in ("pyproject.toml", "README.md", "app", "engine", "resources", "tests", "packaging"):
        assert (ROOT / name).exists(), name


def test_run_time_path_does_not_import_training() -> None:
    """What the app and `retouch IMAGE` use at run time never loads the training package."""
    code = (
        "import sys, engine, engine.model, engine.cli, engine.retoucher, engine.pipeline, engine.imageio, engine.batch, app.window;"
        "bad=[m for m in sys.modules if m.startswith('engine.training')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"})
    assert res.returncode == 0, res.stdout + res.stderr


def test_training_needs_only_what_a_gpu_machine_has(tmp_path) -> None:
    """A lent GPU machine has torch, numpy, OpenCV, Pillow and safetensors, nothing else of ours:
    training from a pack must run without the photo-file libraries and Qt."""
    import numpy as np

    from engine.imageio import from_float, save_image
    from engine.training import pack
    from tests.test_synth import make_face

    faces = tmp_path / "faces"
    faces.mkdir()
    for i in range(4):
        save_image(faces / f"f{i}.png", from_float(make_face(96, seed=i), np.uint8))
    assert pack.main(["--out", str(tmp_path / "p.npz"), "--clean", str(faces), "--raw", str(faces), "--preset", "tiny"]) == 0
    blocked = ["exiv2", "tifffile", "rawpy", "pillow_heif", "imagecodecs", "PySide6", "qtawesome", "skimage"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "from engine.training.train import main\n"
        f"main(['--run', {str(tmp_path / 'run')!r}, '--preset', 'tiny', '--pack', {str(tmp_path / 'p.npz')!r}, '--steps', '2',"
        " '--batch', '2', '--unpaired-batch', '1', '--crop', '48', '--grid-every', '100000', '--threads', '1',"
        f" '--state', {str(tmp_path / 'state.pt')!r}])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "state.pt").is_file() and (tmp_path / "run" / "model.safetensors").is_file()
