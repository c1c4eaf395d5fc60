"""Checkpoints in the safetensors format, with the ModelConfig as JSON metadata.

The format is small and documented (8-byte little-endian header length, a JSON header naming
each tensor's dtype, shape and byte range, then the raw little-endian bytes), so it is written
and read here directly with numpy rather than through an extra dependency. Files written here
load with the ``safetensors`` package and vice versa.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import WeightsError
from engine.model.config import ModelConfig

_DTYPES: dict[torch.dtype, tuple[str, Any]] = {
    torch.float32: ("F32", np.float32),
    torch.float16: ("F16", np.float16),
    torch.float64: ("F64", np.float64),
    torch.int64: ("I64", np.int64),
    torch.int32: ("I32", np.int32),
    torch.uint8: ("U8", np.uint8),
    torch.bool: ("BOOL", np.bool_),
}
_BY_NAME = {name: (dt, np_dt) for dt, (name, np_dt) in _DTYPES.items()}
_BY_NAME["BF16"] = (torch.bfloat16, None)


def save_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` (+ string ``metadata``) atomically to ``path``."""
    from engine.imageio import atomic_write_bytes  # the project's one atomic writer

    header: dict[str, Any] = {"__metadata__": dict(metadata or {})}
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            data, code = t.view(torch.int16).numpy().tobytes(), "BF16"
        elif t.dtype in _DTYPES:
            code, np_dt = _DTYPES[t.dtype]
            data = t.numpy().astype(np.dtype(np_dt).newbyteorder("<"), copy=False).tobytes()
        else:
            raise TypeError(f"cannot store dtype {t.dtype} in a checkpoint")
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * ((-len(head)) % 8)
    return atomic_write_bytes(Path(path), struct.pack("<Q", len(head)) + head + b"".join(blobs))


def load_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file; raises WeightsError with one clear sentence on any problem."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Model weights not found: {path}. Reinstall the program or pass --weights with a valid file.")
    try:
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        if n <= 0 or 8 + n > len(raw):
            raise ValueError("header length out of range")
        header = json.loads(raw[8 : 8 + n])
        metadata = header.pop("__metadata__", {}) or {}
        base = 8 + n
        tensors: dict[str, torch.Tensor] = {}
        for name, info in header.items():
            begin, end = info["data_offsets"]
            if not (0 <= begin <= end <= len(raw) - base):
                raise ValueError(f"tensor {name} lies outside the file")
            dt, np_dt = _BY_NAME[info["dtype"]]
            buf = raw[base + begin : base + end]
            if dt == torch.bfloat16:
                arr = torch.frombuffer(bytearray(buf), dtype=torch.int16).view(torch.bfloat16)
            else:
                arr = torch.from_numpy(np.frombuffer(buf, dtype=np.dtype(np_dt).newbyteorder("<")).astype(np_dt))
            tensors[name] = arr.reshape(info["shape"]).clone()
    except WeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad file
        raise WeightsError(f"Model weights {path.name} are unreadable or truncated ({exc}).") from None
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def save_model(model: torch.nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Save a RetouchFormer (its state dict, config JSON and optional extra JSON metadata)."""
    meta = {"format": "pt", "kind": "retouchformer", "config": model.config.to_json()}
    if extra:
        meta["extra"] = json.dumps(extra, sort_keys=True)
    return save_safetensors(path, model.state_dict(), meta)


def read_config(path: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    _, meta = load_safetensors(path)
    return _config_from_meta(meta, Path(path))


def _config_from_meta(meta: dict[str, str], path: Path) -> tuple[ModelConfig, dict[str, Any]]:
    if meta.get("kind") != "retouchformer" or "config" not in meta:
        raise WeightsError(f"{path.name} is not a RetouchFormer checkpoint (no model configuration inside).")
    try:
        cfg = ModelConfig.from_json(meta["config"])
    except (ValueError, TypeError) as exc:
        raise WeightsError(f"{path.name} has a model configuration this version cannot read ({exc}).") from None
    return cfg, json.loads(meta.get("extra", "{}"))


def load_model(path: str | Path, expected: ModelConfig | None = None, device: str | torch.device = "cpu"):
    """Build the model described inside the checkpoint and load its weights.

    ``expected``: if given, the checkpoint's configuration must equal it. Any mismatch between
    the file and the model raises one WeightsError sentence, never a list of tensor-size errors.
    """
    from engine.model.retouchformer import RetouchFormer

    path = Path(path)
    tensors, meta = load_safetensors(path)
    cfg, extra = _config_from_meta(meta, path)
    if expected is not None and cfg.to_dict() != expected.to_dict():
        diff = sorted(k for k, v in expected.to_dict().items() if cfg.to_dict().get(k) != v)
        raise WeightsError(
            f"{path.name} holds a '{cfg.name}' model that differs from the requested '{expected.name}' configuration in: {', '.join(diff)}."
        )
    model = RetouchFormer(cfg)
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if tuple(own[k].shape) != tuple(tensors[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} with the wrong shape (e.g. {wrong[0]})")
        raise WeightsError(f"{path.name} does not match the '{cfg.name}' model it claims to be: tensors {'; '.join(parts)}.")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()})
    model.checkpoint_info = extra
    return model.to(device).eval()


def transfer_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Copy ``tensors`` (an earlier model's state) into ``model`` as far as they fit.

    For a warm start across an architecture change: tensors of the same name and shape are
    copied; a convolution that gained input channels gets the old weights in its first channels
    and zeros in the new ones (so it computes what it computed before). Returns the names of
    the model's tensors that kept their fresh initialisation.
    """
    own = model.state_dict()
    fresh = []
    for name, t in own.items():
        old = tensors.get(name)
        if old is not None and tuple(old.shape) == tuple(t.shape):
            t.copy_(old.to(t.dtype))
        elif old is not None and t.ndim == 4 and old.ndim == 4 and old.shape[0] == t.shape[0] and old.shape[2:] == t.shape[2:] and old.shape[1] < t.shape[1]:
            t.zero_()
            t[:, : old.shape[1]].copy_(old.to(t.dtype))
        else:
            fresh.append(name)
    return fresh
