"""The PyInstaller bundle carries the imaging libraries (RAW, HEIF, TIFF, metadata, colour)."""
from __future__ import annotations

import importlib
import importlib.util
import sys

import pytest

from tests.test_packaging import _exec_spec, _models, cfg


def test_every_imaging_module_named_for_the_bundle_exists():
    for name in cfg.IMAGING_HIDDEN_IMPORTS + cfg.SUBMODULE_PACKAGES:
        assert importlib.util.find_spec(name) is not None, name
    # The codec modules imagecodecs loads by name (what collect_submodules("imagecodecs") brings in).
    for name in ("imagecodecs._cms", "imagecodecs._zlib", "imagecodecs._imcd"):
        assert importlib.util.find_spec(name) is not None, name


def test_the_engine_reaches_for_only_bundled_imaging_packages():
    # What load/save actually import lazily, for each format, is named for the bundle.
    needed = {"rawpy", "pillow_heif", "tifffile", "exiv2", "imagecodecs"}
    hidden = {n.split(".")[0] for n in cfg.IMAGING_HIDDEN_IMPORTS + cfg.SUBMODULE_PACKAGES}
    assert needed <= hidden
    for name in needed:
        importlib.import_module(name)


def test_spec_collects_the_imaging_libraries(monkeypatch, tmp_path):
    import engine.faces as faces

    if not any(isinstance(v, str) and v.endswith(".xml") for v in vars(faces).values()):
        # The face detector no longer names Haar cascades (another change in progress); give the
        # spec one so that this test checks what it is about.
        monkeypatch.setattr(faces, "_TEST_CASCADE", "haarcascade_frontalface_default.xml", raising=False)
    ns = _exec_spec(monkeypatch, _models(tmp_path / "models"), "cpu")
    hidden = set(ns["a"].kwargs["hiddenimports"])
    for name in ("imagecodecs", "exiv2", "rawpy", "pillow_heif", "tifffile", "PIL.AvifImagePlugin", "app", "engine"):
        assert name in hidden, name
    excluded = set(ns["a"].kwargs["excludes"])
    assert not {n for n in hidden if any(n == e or n.startswith(e + ".") for e in excluded)}


@pytest.mark.skipif(sys.platform != "darwin", reason="the .app bundle is built on macOS only")
def test_macos_app_declares_photo_document_types(monkeypatch, tmp_path):  # pragma: no cover - macOS
    ns = _exec_spec(monkeypatch, _models(tmp_path / "models"), "cpu")
    plist = ns["app"].kwargs["info_plist"]
    assert plist["CFBundleDocumentTypes"] == cfg.DOCUMENT_TYPES
