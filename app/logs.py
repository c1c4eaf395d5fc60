"""Logging to a file in the user's data folder (windowed/frozen apps may have no stdout/stderr)."""
from __future__ import annotations

import logging
import os
import sys
from logging.handlers import RotatingFileHandler
from pathlib import Path

_log_file: Path | None = None


def data_dir() -> Path:
    """Per-user data folder: QStandardPaths AppDataLocation, or a platform equivalent without Qt."""
    env = os.environ.get("RETOUCH_STUDIO_DATA")
    if env:
        return Path(env)
    try:
        from PySide6.QtCore import QStandardPaths

        loc = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
        if loc:
            return Path(loc)
    except Exception:  # noqa: BLE001 - fall back to a platform default below
        pass
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home())) / "RetouchFormer Studio"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "RetouchFormer Studio"
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "RetouchFormer Studio"


def setup_logging(level: int = logging.INFO) -> Path | None:
    """Log to ``<data dir>/logs/retouch-studio.log`` (rotating) and to stderr when there is one."""
    global _log_file
    root = logging.getLogger()
    root.setLevel(level)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        d = data_dir() / "logs"
        d.mkdir(parents=True, exist_ok=True)
        _log_file = d / "retouch-studio.log"
        fh = RotatingFileHandler(_log_file, maxBytes=2_000_000, backupCount=2, encoding="utf-8")
        fh.setFormatter(fmt)
        root.addHandler(fh)
    except OSError:
        _log_file = None
    if sys.stderr is not None:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        sh.setLevel(logging.WARNING)
        root.addHandler(sh)
    return _log_file


def log_file() -> Path | None:
    return _log_file
