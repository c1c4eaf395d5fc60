"""What goes into the PyInstaller bundle and what stays out, as plain Python.

``retouch_studio.spec`` imports this module (it is not a package: ``packaging/`` must never get an
``__init__.py``, which would shadow the ``packaging`` library that pip, setuptools and PyInstaller
import). Nothing here imports PyInstaller, torch or Qt, so tests can check the bundle's contents
cheaply without building.

Environment variables read at build time:

``RETOUCH_BUILD_VARIANT``
    ``cpu`` or ``cuda``; default: ``cuda`` when the installed torch is a CUDA build, else ``cpu``.
``RETOUCH_MODELS_DIR``
    Folder whose ``*.safetensors`` + ``MODEL_CARD.md`` are bundled as ``resources/models``
    (default: the repository's ``resources/models``).
"""
from __future__ import annotations

import fnmatch
import importlib.util
import os
import sys
from pathlib import Path
from typing import Iterable, Sequence

#: Repository root (this file is ``<root>/packaging/bundle_config.py``).
REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGING_DIR = REPO_ROOT / "packaging"

GUI_NAME = "retouch-studio"  # windowed executable (app.main:main)
CLI_NAME = "retouch"  # console executable (engine.cli:main)
GUI_ENTRY = PACKAGING_DIR / "entry_gui.py"
CLI_ENTRY = PACKAGING_DIR / "entry_cli.py"
#: Bundle folder name under the dist directory (one-folder build).
BUNDLE_NAME = "RetouchFormer Studio"

VARIANTS = ("cpu", "cuda")

#: Where the model files go inside the bundle; engine.paths.resources_dir() looks in
#: ``sys._MEIPASS / "resources"`` when frozen.
MODELS_DEST = "resources/models"
#: Where the YuNet face detector (+ its licence and source note) goes: engine.paths.yunet_path()
#: is ``resources_dir() / "models/yunet/<file>"``. Always taken from the repository's resources.
DETECTOR_DEST = "resources/models/yunet"
DETECTOR_DIR = REPO_ROOT / "resources" / "models" / "yunet"

#: Modules the app never imports (checked against the unfrozen self-test's ``sys.modules``).
#: PyInstaller's ``excludes`` also drops each name's submodules and (for Qt) their plugins.
_QT_UNUSED = [
    "Qt3DAnimation", "Qt3DCore", "Qt3DExtras", "Qt3DInput", "Qt3DLogic", "Qt3DRender",
    "QtAxContainer", "QtBluetooth", "QtCanvasPainter", "QtCharts", "QtConcurrent", "QtDataVisualization",
    "QtDesigner", "QtGraphs", "QtGraphsWidgets", "QtHelp", "QtHttpServer", "QtLabsStyleKit", "QtLocation",
    "QtMultimedia", "QtMultimediaWidgets", "QtNetwork", "QtNetworkAuth", "QtNfc", "QtPdf", "QtPdfWidgets",
    "QtPositioning", "QtPrintSupport", "QtQml", "QtQmlFeatures", "QtQuick", "QtQuick3D", "QtQuickControls2",
    "QtQuickTest", "QtQuickWidgets", "QtRemoteObjects", "QtScxml", "QtSensors", "QtSerialBus", "QtSerialPort",
    "QtSpatialAudio", "QtSql", "QtStateMachine", "QtSvg", "QtSvgWidgets", "QtTest", "QtTextToSpeech",
    "QtUiTools", "QtWebChannel", "QtWebEngineCore", "QtWebEngineQuick", "QtWebEngineWidgets", "QtWebSockets",
    "QtWebView", "QtXml",
]
EXCLUDED_MODULES: list[str] = [f"PySide6.{m}" for m in _QT_UNUSED] + [
    # Other Qt bindings qtpy could pick up.
    "PyQt5", "PyQt6", "PySide2",
    # GUI toolkits, plotting, notebooks.
    "tkinter", "_tkinter", "turtle", "matplotlib", "IPython", "ipykernel", "jupyter_client", "notebook",
    # Scientific stacks the app does not use (torch imports these only for torch.compile / export).
    "scipy", "pandas", "sklearn", "skimage", "sympy", "mpmath", "networkx", "triton",
    # torch development / test code never reached at inference.
    # (``import torch`` itself imports torch.distributed and parts of torch.testing._internal: kept.)
    "torch.utils.benchmark", "torch.utils.tensorboard", "torch.utils.bottleneck", "torch._inductor",
    "torch.onnx", "torch.testing._internal.opinfo", "torch.testing._internal.distributed",
    "caffe2", "tensorboard", "onnx", "onnxruntime",
    # Python's own test and dev tools.
    "unittest.test", "test", "lib2to3", "pydoc_data", "idlelib", "ensurepip", "distutils",
    "setuptools", "pip", "pytest", "_pytest", "pytestqt",
]

#: Packages whose every submodule goes into the bundle: the app and engine import some modules
#: lazily, imagecodecs loads each codec module (``imagecodecs._zlib``, ``._cms``...) by name when
#: tifffile or engine.colour first asks for it, and python-exiv2 splits into extension modules.
SUBMODULE_PACKAGES = ["app", "engine", "imagecodecs", "exiv2"]
#: Imaging modules PyInstaller's import scan might miss: imported inside functions (RAW, HEIF and
#: TIFF are decoded on demand) or found by Pillow at run time (its AVIF plugin).
IMAGING_HIDDEN_IMPORTS = [
    "exiv2", "rawpy", "rawpy._rawpy", "pillow_heif", "pillow_heif.HeifImagePlugin", "tifffile", "imagecodecs",
    "PIL.AvifImagePlugin",
]
#: Their native libraries (LibRaw, libheif + libde265 + x265, libexiv2, LittleCMS and the codecs)
#: sit in ``<package>.libs`` / ``<package>/.dylibs`` / DLL folders next to the extension modules
#: and are found by PyInstaller's binary dependency analysis of those modules.

#: File types the macOS app declares, so Finder's "Open With" and the catalogues' "Edit in"
#: (Lightroom Classic, Capture One) can hand it a photo (the app opens it from the FileOpen event).
DOCUMENT_TYPES = [
    {"CFBundleTypeName": "Photo", "CFBundleTypeRole": "Editor", "LSHandlerRank": "Alternate",
     "LSItemContentTypes": ["public.tiff", "public.jpeg", "public.png", "public.heic", "public.heif",
                            "public.avif", "org.webmproject.webp", "public.camera-raw-image", "com.adobe.raw-image"]},
]

#: Bundle-relative paths (``fnmatch`` patterns, ``/`` separators) of files that are dead weight in
#: every variant: headers, static libraries, CMake files, test libraries, other Qt's pieces.
_DEAD_WEIGHT = [
    "torch/include/*", "torch/share/*", "torch/test/*", "torch/bin/test_*", "torch/bin/protoc*",
    "torch/bin/*StoreTest", "torch/bin/*.pt", "torch/bin/*.ptl",
    "torch/lib/*.a", "*.a", "*.lib", "*.h", "*.hpp", "*.cuh", "*.pyi", "*.cmake", "*.pc",
    "torch/lib/libjitbackend_test*", "torch/lib/libtorchbind_test*", "torch/lib/libbackend_with_compiler*",
    "torch/lib/libaoti_custom_ops*", "torch/lib/*jitbackend_test*", "torch/lib/*torchbind_test*",
    "torch/_inductor/*", "torch/utils/benchmark/*", "torch/onnx/*", "torch/testing/_internal/opinfo/*",
    "caffe2/*", "functorch/include/*",
    "PySide6/Qt/translations/qtwebengine*", "PySide6/Qt/translations/assistant*",
    "PySide6/Qt/translations/designer*", "PySide6/Qt/translations/linguist*",
    "PySide6/Qt/translations/qtmultimedia*", "PySide6/Qt/translations/qtserialport*",
    "PySide6/Qt/translations/qtlocation*", "PySide6/Qt/translations/qtconnectivity*",
    "PySide6/Qt/translations/qtwebsockets*", "PySide6/Qt/translations/qtdeclarative*",
    "PySide6/Qt/lib/libQt6WebEngine*", "PySide6/Qt/lib/libQt6Quick*", "PySide6/Qt/lib/libQt6Qml*",
    "PySide6/Qt/lib/libQt63D*", "PySide6/Qt/lib/libQt6Pdf*", "PySide6/Qt/lib/libQt6Designer*",
    "PySide6/Qt/plugins/qmltooling/*", "PySide6/Qt/qml/*",
]
#: ... and in the CPU variant also every CUDA / cuDNN / NCCL / Triton library.
_CUDA_ONLY = [
    "nvidia/*", "*libcudart*", "*libcublas*", "*libcudnn*", "*libcufft*", "*libcurand*", "*libcusolver*",
    "*libcusparse*", "*libnccl*", "*libnvrtc*", "*libnvJitLink*", "*libnvToolsExt*", "*libcupti*",
    "*libcufile*", "*libnvshmem*", "torch/lib/libtorch_cuda*", "torch/lib/libc10_cuda*", "triton/*",
    "*cudart64_*.dll", "*cublas64_*.dll", "*cudnn*.dll", "*cufft64_*.dll", "*curand64_*.dll",
    "*cusolver64_*.dll", "*cusparse64_*.dll", "*nvrtc64_*.dll", "*nvJitLink*.dll",
]


class BundleError(RuntimeError):
    """The bundle cannot be built as asked (one sentence saying what to do)."""


def _norm(dest: str) -> str:
    return dest.replace("\\", "/").lstrip("./")


def variant(env: dict[str, str] | None = None) -> str:
    """The build variant: ``RETOUCH_BUILD_VARIANT`` or, unset, what the installed torch is."""
    env = os.environ if env is None else env
    value = env.get("RETOUCH_BUILD_VARIANT", "").strip().lower()
    if value:
        if value not in VARIANTS:
            raise BundleError(f"RETOUCH_BUILD_VARIANT must be one of {', '.join(VARIANTS)}, not '{value}'.")
        return value
    return "cuda" if installed_torch_cuda() else "cpu"


def installed_torch_cuda() -> str | None:
    """CUDA version the installed torch was built for (``None``: CPU build), without importing torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        raise BundleError("torch is not installed in the build environment.")
    version_py = Path(list(spec.submodule_search_locations)[0]) / "version.py"
    for line in version_py.read_text(encoding="utf-8").splitlines():
        if line.startswith("cuda"):  # e.g. "cuda: Optional[str] = '12.8'" or "cuda = None"
            value = line.split("=", 1)[1].strip()
            return None if value in ("None", "") else value.strip("'\"")
    return None


def dead_weight_patterns(build_variant: str) -> list[str]:
    """Bundle-relative ``fnmatch`` patterns of files left out of ``build_variant``."""
    if build_variant not in VARIANTS:
        raise BundleError(f"Unknown build variant '{build_variant}'; choose {' or '.join(VARIANTS)}.")
    return _DEAD_WEIGHT + (_CUDA_ONLY if build_variant == "cpu" else [])


def is_dead_weight(dest: str, build_variant: str) -> bool:
    """Whether the bundle file at ``dest`` (bundle-relative) is left out of ``build_variant``."""
    path = _norm(dest)
    return any(fnmatch.fnmatchcase(path, pat) for pat in dead_weight_patterns(build_variant))


def prune(toc: Iterable[tuple], build_variant: str) -> list[tuple]:
    """A PyInstaller TOC (``(dest, src, typecode)`` entries) without the dead weight."""
    return [entry for entry in toc if not is_dead_weight(entry[0], build_variant)]


def models_dir(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    override = env.get("RETOUCH_MODELS_DIR")
    return Path(override).resolve() if override else REPO_ROOT / "resources" / "models"


def model_datas(folder: Path | None = None, required: Sequence[str] = ()) -> list[tuple[str, str]]:
    """``(source, dest folder)`` pairs for the shipped weights and their model card.

    ``required``: file names (e.g. the default model) that must be among them.
    """
    folder = models_dir() if folder is None else Path(folder)
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise BundleError(
            f"No model weights (*.safetensors) in {folder}; train or copy the shipped model there "
            "(or point RETOUCH_MODELS_DIR at a folder that has it) before building."
        )
    names = {w.name for w in weights}
    missing = [name for name in required if name not in names]
    if missing:
        raise BundleError(f"{folder} lacks {', '.join(missing)}, the model the app loads by default.")
    card = folder / "MODEL_CARD.md"
    if not card.is_file():
        raise BundleError(f"{card} is missing; the weights' licence and provenance must ship with them.")
    return [(str(p), MODELS_DEST) for p in weights + [card]]


def detector_datas(folder: Path | None = None) -> list[tuple[str, str]]:
    """``(source, dest folder)`` pairs for the face detector engine.faces loads (YuNet, through
    engine.paths.yunet_path), with its LICENSE and SOURCE.md."""
    _engine_importable()
    import engine.faces as faces  # cv2 + numpy only; never Qt or torch
    from engine import paths

    if getattr(faces, "yunet_path", None) is not paths.yunet_path:
        raise BundleError("engine/faces.py does not load its model through engine.paths.yunet_path(); "
                          "update bundle_config.detector_datas() to bundle what it loads.")
    folder = DETECTOR_DIR if folder is None else Path(folder)
    needed = [paths.YUNET_FILE, "LICENSE", "SOURCE.md"]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise BundleError(f"The face detector files {', '.join(missing)} are missing from {folder}; "
                          "restore resources/models/yunet/ from the repository before building.")
    return [(str(folder / name), DETECTOR_DEST) for name in needed]


def _engine_importable() -> None:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))


def app_version() -> str:
    """The version the executables report (engine.__version__)."""
    _engine_importable()
    from engine import __version__

    return __version__


def default_model_name() -> str:
    """The file name engine.paths loads by default (read from the engine, not repeated here)."""
    _engine_importable()
    from engine.paths import DEFAULT_MODEL_NAME

    return DEFAULT_MODEL_NAME
