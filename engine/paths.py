"""Where bundled resources (the default model) live: the repository, a PyInstaller bundle, or $RETOUCH_RESOURCES."""
from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT_MODEL_NAME = "small.safetensors"


def resources_dir() -> Path:
    env = os.environ.get("RETOUCH_RESOURCES")
    if env:
        return Path(env)
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen:
        return Path(frozen) / "resources"
    return Path(__file__).resolve().parent.parent / "resources"


def default_weights_path() -> Path:
    return resources_dir() / "models" / DEFAULT_MODEL_NAME


#: The YuNet face detector (OpenCV model zoo, MIT) under resources/models/yunet/.
YUNET_FILE = "face_detection_yunet_2023mar.onnx"


def yunet_path() -> Path:
    return resources_dir() / "models" / "yunet" / YUNET_FILE
