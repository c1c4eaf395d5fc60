"""Packaging: the PyInstaller spec's contents (fast, no build) and a real CPU build (slow).

Slow test: ``QT_QPA_PLATFORM=offscreen .venv/bin/python -m pytest -m slow tests/test_packaging.py``
(builds packaging/dist/cpu with the current environment, several minutes).
"""
from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
SPEC = PACKAGING / "retouch_studio.spec"


def _load(name: str, path: Path) -> types.ModuleType:
    # packaging/ is not a package (it would shadow the 'packaging' library): load by path.
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cfg = _load("bundle_config", PACKAGING / "bundle_config.py")
build = _load("packaging_build", PACKAGING / "build.py")


def _models(folder: Path, names=("small.safetensors",), card: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"\0" * 16)
    if card:
        (folder / "MODEL_CARD.md").write_text("# card\n", encoding="utf-8")
    return folder


# -- the spec, executed with recording stand-ins for PyInstaller's build classes ---------------
class _Target:
    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


class _Analysis(_Target):
    def __init__(self, scripts, **kwargs) -> None:
        super().__init__(scripts, **kwargs)
        names = [Path(s).stem for s in scripts]
        self.scripts = [("pyiboot01_bootstrap", "boot.py", "PYSOURCE")] + [(n, f"{n}.py", "PYSOURCE") for n in names]
        self.pure = []
        self.binaries = [
            ("torch/lib/libtorch_cpu.so", "/x/libtorch_cpu.so", "BINARY"),
            ("torch/lib/libtorch_cuda.so", "/x/libtorch_cuda.so", "BINARY"),
            ("nvidia/cudnn/lib/libcudnn.so.9", "/x/libcudnn.so.9", "BINARY"),
            ("torch/lib/libtorchbind_test.so", "/x/libtorchbind_test.so", "BINARY"),
            ("PySide6/Qt/lib/libQt6Widgets.so.6", "/x/libQt6Widgets.so.6", "BINARY"),
        ]
        # Like PyInstaller: (source, dest folder) pairs become (dest path, source, typecode) entries.
        self.datas = [(f"{dest}/{Path(src).name}", src, "DATA") for src, dest in kwargs["datas"]] + [
            ("torch/include/ATen/ATen.h", "/x/ATen.h", "DATA"),
            ("torch/lib/libprotobuf.a", "/x/libprotobuf.a", "DATA"),
        ]


def _fake_hooks() -> types.ModuleType:
    import qtawesome

    fonts = Path(qtawesome.__file__).parent / "fonts"
    hooks = types.ModuleType("PyInstaller.utils.hooks")
    hooks.collect_data_files = lambda pkg: [(str(p), f"{pkg}/fonts") for p in sorted(fonts.iterdir())]
    hooks.collect_submodules = lambda pkg: [pkg]
    return hooks


def _exec_spec(monkeypatch, models: Path, variant: str) -> dict:
    monkeypatch.setenv("RETOUCH_MODELS_DIR", str(models))
    monkeypatch.setenv("RETOUCH_BUILD_VARIANT", variant)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name, mod in (("PyInstaller", types.ModuleType("PyInstaller")),
                      ("PyInstaller.utils", types.ModuleType("PyInstaller.utils")),
                      ("PyInstaller.utils.hooks", _fake_hooks())):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.delitem(sys.modules, "bundle_config", raising=False)
    ns = {"__file__": str(SPEC), "__name__": "__main__", "SPEC": str(SPEC), "SPECPATH": str(PACKAGING),
          "Analysis": _Analysis, "PYZ": _Target, "EXE": _Target, "COLLECT": _Target, "BUNDLE": _Target}
    exec(compile(SPEC.read_text(encoding="utf-8"), str(SPEC), "exec"), ns)
    return ns


def test_spec_builds_one_folder_with_windowed_app_and_console_cli(monkeypatch, tmp_path):
    ns = _exec_spec(monkeypatch, _models(tmp_path / "models"), "cpu")
    gui, cli, coll = ns["gui_exe"], ns["cli_exe"], ns["coll"]
    assert (gui.kwargs["name"], gui.kwargs["console"]) == ("retouch-studio", False)
    assert (cli.kwargs["name"], cli.kwargs["console"]) == ("retouch", True)
    for exe, entry in ((gui, "entry_gui"), (cli, "entry_cli")):
        assert exe.kwargs["exclude_binaries"] is True  # one-folder, not one-file
        names = [s[0] for s in exe.args[1]]
        assert names[-1] == entry and {"entry_gui", "entry_cli"} & set(names) == {entry}
        assert "pyiboot01_bootstrap" in names
    assert coll.args[0] is gui and coll.args[1] is cli


def test_spec_bundles_weights_face_detector_and_icon_fonts(monkeypatch, tmp_path):
    models = _models(tmp_path / "models")
    a = _exec_spec(monkeypatch, models, "cpu")["a"]
    datas = {d[0]: d[1] for d in a.datas}
    assert datas["resources/models/small.safetensors"] == str(models / "small.safetensors")
    assert datas["resources/models/MODEL_CARD.md"] == str(models / "MODEL_CARD.md")
    for name in ("face_detection_yunet_2023mar.onnx", "LICENSE", "SOURCE.md"):
        assert Path(datas[f"resources/models/yunet/{name}"]).is_file()
    assert not any(dest.startswith("cv2/data/") for dest in datas)  # no Haar cascades any more
    fonts = [dest for dest in datas if dest.startswith("qtawesome/fonts/")]
    assert any(n.endswith(".ttf") for n in fonts) and any(n.endswith(".json") for n in fonts)


def test_spec_excludes_unused_qt_and_dead_weight(monkeypatch, tmp_path):
    a = _exec_spec(monkeypatch, _models(tmp_path / "models"), "cpu")["a"]
    excludes = set(a.kwargs["excludes"])
    for mod in ("PySide6.QtWebEngineCore", "PySide6.QtQml", "PySide6.QtQuick", "PySide6.QtMultimedia",
                "PySide6.QtCharts", "PySide6.QtPdf", "PySide6.QtSql", "PySide6.QtTest", "tkinter", "matplotlib"):
        assert mod in excludes
    binaries = {b[0] for b in a.binaries}
    assert binaries == {"torch/lib/libtorch_cpu.so", "PySide6/Qt/lib/libQt6Widgets.so.6"}
    assert not any(d[0].startswith("torch/include/") or d[0].endswith(".a") for d in a.datas)


def test_cuda_variant_keeps_cuda_libraries(monkeypatch, tmp_path):
    a = _exec_spec(monkeypatch, _models(tmp_path / "models"), "cuda")["a"]
    binaries = {b[0] for b in a.binaries}
    assert {"torch/lib/libtorch_cuda.so", "nvidia/cudnn/lib/libcudnn.so.9"} <= binaries
    assert "torch/lib/libtorchbind_test.so" not in binaries


def test_excludes_spare_every_qt_module_the_app_imports():
    used = {"PySide6.QtOpenGL", "PySide6.QtOpenGLWidgets"}  # imported by qtpy.QtWidgets (qtawesome)
    for path in list((ROOT / "app").glob("*.py")) + list((ROOT / "engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("PySide6"):
                used.add(node.module)
            elif isinstance(node, ast.Import):
                used.update(a.name for a in node.names)
    excluded = set(cfg.EXCLUDED_MODULES)
    clash = {m for m in used if any(m == e or m.startswith(e + ".") for e in excluded)}
    assert not clash, f"excluded but imported: {sorted(clash)}"
    assert "PySide6.QtWidgets" in used  # the scan did find the app's Qt imports


def test_bundled_weights_land_where_the_frozen_engine_looks(monkeypatch, tmp_path):
    from engine import paths

    monkeypatch.delenv("RETOUCH_RESOURCES", raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    expected = tmp_path / cfg.MODELS_DEST / cfg.default_model_name()
    assert paths.default_weights_path() == expected


def test_face_detector_lands_where_the_frozen_engine_looks(monkeypatch, tmp_path):
    from engine import paths

    monkeypatch.delenv("RETOUCH_RESOURCES", raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    pairs = cfg.detector_datas()
    assert all(Path(src).is_file() and dest == cfg.DETECTOR_DEST for src, dest in pairs)
    assert tmp_path / cfg.DETECTOR_DEST / paths.YUNET_FILE == paths.yunet_path()
    assert {Path(src).name for src, _ in pairs} == {paths.YUNET_FILE, "LICENSE", "SOURCE.md"}


def test_missing_face_detector_stops_the_build(tmp_path):
    (tmp_path / "LICENSE").write_text("MIT", encoding="utf-8")
    with pytest.raises(cfg.BundleError, match="face detector files face_detection_yunet_2023mar.onnx, SOURCE.md"):
        cfg.detector_datas(tmp_path)


@pytest.mark.parametrize("names, card, needle", [
    ((), True, "No model weights"),
    (("other.safetensors",), True, "lacks small.safetensors"),
    (("small.safetensors",), False, "MODEL_CARD.md is missing"),
])
def test_model_datas_refuses_an_incomplete_models_folder(tmp_path, names, card, needle):
    folder = _models(tmp_path / "m", names, card)
    with pytest.raises(cfg.BundleError, match=needle):
        cfg.model_datas(folder, required=[cfg.default_model_name()])


def test_repository_ships_the_default_weights():
    folder = ROOT / "resources" / "models"
    if not (folder / cfg.default_model_name()).exists():
        pytest.skip(f"{folder / cfg.default_model_name()} is not trained yet; the build refuses until it is")
    dests = cfg.model_datas(folder, required=[cfg.default_model_name()])
    assert {Path(src).name for src, _ in dests} >= {cfg.default_model_name(), "MODEL_CARD.md"}


def test_dead_weight_rules():
    assert cfg.is_dead_weight("torch/lib/libtorch_cuda.so", "cpu")
    assert not cfg.is_dead_weight("torch/lib/libtorch_cuda.so", "cuda")
    assert cfg.is_dead_weight("torch\\include\\c10\\core.h", "cuda")  # Windows separators
    assert not cfg.is_dead_weight("torch/lib/libtorch_cpu.so", "cpu")
    assert not cfg.is_dead_weight("torch/bin/torch_shm_manager", "cpu")  # `import torch` checks it exists
    assert cfg.is_dead_weight("torch/bin/test_jit", "cpu")
    assert not cfg.is_dead_weight("resources/models/small.safetensors", "cpu")
    with pytest.raises(cfg.BundleError, match="Unknown build variant"):
        cfg.dead_weight_patterns("rocm")


def test_variant_from_environment():
    assert cfg.variant({"RETOUCH_BUILD_VARIANT": "CUDA"}) == "cuda"
    with pytest.raises(cfg.BundleError, match="must be one of"):
        cfg.variant({"RETOUCH_BUILD_VARIANT": "gpu"})
    assert cfg.variant({}) == ("cuda" if cfg.installed_torch_cuda() else "cpu")


def test_build_script_requirements_and_torch_source():
    reqs = build._runtime_requirements()
    assert any(r.startswith("PySide6-Essentials") for r in reqs)
    assert not any(r.startswith("torch") for r in reqs)
    assert build.BUNDLE_NAME == cfg.BUNDLE_NAME
    ns = build.argparse.Namespace(variant="cpu", torch_version="2.13.0", torch_index_url=None)
    args = build._torch_install_args(ns)
    assert args[0] == "torch==2.13.0"
    if sys.platform != "darwin":
        assert args[1:] == ["--index-url", build.CPU_INDEX]
    ns.torch_index_url = ""
    assert build._torch_install_args(ns) == ["torch==2.13.0"]


def test_packaging_is_not_a_python_package():
    # An __init__.py would make packaging/ shadow the 'packaging' library pip and PyInstaller use.
    assert not (PACKAGING / "__init__.py").exists()


# -- the real thing ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_cpu_bundle_builds_and_passes_its_self_test(tmp_path):
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "OMP_NUM_THREADS": "1",
           "RETOUCH_STUDIO_DATA": str(tmp_path / "data")}
    env.pop("RETOUCH_RESOURCES", None)
    built = subprocess.run([sys.executable, str(PACKAGING / "build.py"), "--use-current-env", "--variant", "cpu"],
                           env=env, cwd=ROOT, capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    bundle = build.bundle_dir(PACKAGING / "dist" / "cpu")
    internal = bundle / "_internal"
    assert (internal / cfg.MODELS_DEST / cfg.default_model_name()).is_file()
    assert (internal / cfg.DETECTOR_DEST / "face_detection_yunet_2023mar.onnx").is_file()
    assert not (internal / "torch" / "include").exists()
    assert not list(internal.rglob("libtorch_cuda*")) and not (internal / "nvidia").exists()
    assert not list(internal.rglob("*QtWebEngine*")) and not (internal / "tkinter").exists()

    run = subprocess.run([str(build.executable(bundle, "retouch-studio")), "--self-test"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "self-test passed: device cpu" in run.stdout

    version = subprocess.run([str(build.executable(bundle, "retouch")), "--version"],
                             env=env, capture_output=True, text=True, timeout=300)
    assert version.returncode == 0 and version.stdout.strip() == f"retouch {cfg.app_version()}"
