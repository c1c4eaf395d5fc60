"""Shared pytest fixtures: offscreen Qt, isolated QSettings, a generated portrait photo."""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before any Qt import

import numpy as np
import pytest


@pytest.fixture()
def isolated_settings(tmp_path, monkeypatch):
    """A QSettings in tmp_path; the app's organisation name is made unique so nothing touches the user's."""
    from PySide6.QtCore import QCoreApplication, QSettings

    monkeypatch.setenv("RETOUCH_STUDIO_DATA", str(tmp_path / "data"))
    for fmt in (QSettings.Format.NativeFormat, QSettings.Format.IniFormat):
        for scope in (QSettings.Scope.UserScope, QSettings.Scope.SystemScope):
            QSettings.setPath(fmt, scope, str(tmp_path / "settings"))
    old_org = QCoreApplication.organizationName()
    QCoreApplication.setOrganizationName(f"RetouchFormerTest-{tmp_path.name}")
    yield QSettings(str(tmp_path / "settings" / "studio.ini"), QSettings.Format.IniFormat)
    QCoreApplication.setOrganizationName(old_org)


@pytest.fixture()
def make_portrait():
    """Factory: ``make_portrait(width, height, seed)`` -> (RGB uint8 image, [(x, y, r) of spots])."""
    from app.sample import synthetic_portrait

    def make(width: int = 2048, height: int = 1536, seed: int = 0):
        return synthetic_portrait(width, height, seed=seed)

    return make


@pytest.fixture()
def portrait(make_portrait) -> np.ndarray:
    """A generated ~3 MP portrait (skin-coloured face with eyes, mouth, texture and spots)."""
    return make_portrait()[0]


class FakePrompter:
    """Answers the app's dialogs without blocking; records what was asked."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []
        self.asked: list[str] = []
        self.open_path: str | None = None
        self.save_path: str | None = None
        self.dirs: list[str] = []
        self.confirm_answer = False
        self.unsaved_answer = "discard"

    def open_photo(self, start_dir=""):
        return self.open_path

    def save_photo(self, suggested, fmt):
        self.asked.append(f"save:{suggested}")
        return self.save_path

    def choose_dir(self, title, start_dir=""):
        return self.dirs.pop(0) if self.dirs else None

    def choose_color(self, initial):
        return None

    def error(self, title, text):
        self.errors.append((title, text))

    def info(self, title, text):
        self.asked.append(f"info:{title}")

    def confirm(self, title, text):
        self.asked.append(f"confirm:{title}")
        return self.confirm_answer

    def save_discard_cancel(self, title, text):
        self.asked.append(f"unsaved:{title}")
        return self.unsaved_answer


@pytest.fixture()
def prompter() -> FakePrompter:
    return FakePrompter()


@pytest.fixture(scope="session")
def app_retoucher():
    """The real engine with its bundled small model, loaded once for all GUI tests (CPU)."""
    import torch

    torch.set_num_threads(1)
    from engine.retoucher import Retoucher

    return Retoucher.load(None, device="cpu")


@pytest.fixture()
def make_window(qtbot, isolated_settings, prompter, app_retoucher):
    """Factory for a shown MainWindow wired to the fake prompter, isolated settings and the real engine."""
    from app.window import MainWindow

    windows = []

    def make(p: FakePrompter | None = None, retoucher=None):
        r = retoucher or app_retoucher
        w = MainWindow(prompter=p or prompter, settings=isolated_settings, retoucher_factory=lambda _device: r)
        qtbot.addWidget(w)
        w.resize(1200, 800)
        w.show()
        qtbot.waitUntil(lambda: w.retoucher is not None, timeout=60000)
        windows.append(w)
        return w

    yield make
    for w in windows:
        w.shutdown()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> str:
    """A tiny model whose synthesis visibly differs from its input (so corrections are non-zero):
    quick tests of the whole path, independent of the shipped weights."""
    import torch

    from engine.model.checkpoint import save_model
    from engine.model.config import ModelConfig
    from engine.model.retouchformer import RetouchFormer

    torch.manual_seed(1)
    model = RetouchFormer(ModelConfig.preset("tiny"))
    with torch.no_grad():
        model.synthesis.out.weight.normal_(0.0, 0.05)
        model.synthesis.out.bias.fill_(0.04)
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    save_model(model, path)
    return str(path)
