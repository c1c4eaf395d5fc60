"""A training pack: the training portraits, already at the working scale, in one small file.

A GPU machine lent by the ``device`` tool receives the repository's working tree and at most
64 MiB in all, and has no access to ``../shared/data``. This command prepares everything
``retouch train --pack`` needs in one git-ignored file beside the repository:

    python -m engine.training.pack [--out runs/pack/pack.npz] [--budget-mib 20]

Every clean portrait of the training split (``faces/`` and ``faces-hq/``; never a held-out one)
is brought to the model's working scale exactly as ``retouch train`` does it, cut to a square of
:data:`SIDE` pixels around its centre (the face: 18 cm of skin at 1.6 px/mm), JPEG-encoded, and
stored with its skin mask (PNG); the raw acne photos likewise. When the result would exceed the
budget, the JPEG quality goes down to 80, then an evenly spaced subset of the images is kept.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from engine.imageio import atomic_write_bytes
from engine.model.config import ModelConfig
from engine.training.data import DEFAULT_DATA, ImageCache, centre_crop, list_images, raw_images, raw_px_per_mm, split

SIDE = 288
DEFAULT_PACK = Path("runs") / "pack" / "pack.npz"


def _jpeg(img: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def _png(gray: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(gray), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def _blob(items: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.cumsum([0] + [len(b) for b in items]).astype(np.int64)
    return np.frombuffer(b"".join(items), np.uint8), offsets


def _unblob(data: np.ndarray, offsets: np.ndarray) -> list[bytes]:
    return [data[offsets[i] : offsets[i + 1]].tobytes() for i in range(len(offsets) - 1)]


def decode_jpeg(b: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)[..., ::-1].copy()


def decode_png(b: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED)


def build(clean_dirs: list[Path], raw_dirs: list[Path], px_per_mm: float, budget_mib: float, log=print) -> dict[str, np.ndarray]:
    """Load, scale, crop and encode; returns the arrays of the pack (within ``budget_mib``)."""
    clean_paths = [p for d in clean_dirs for p in split(list_images(d), "train")]
    raw_paths = [p for d in raw_dirs for p in raw_images(d)]
    cache = ImageCache(clean_paths, px_per_mm)
    raw_cache = ImageCache(raw_paths, px_per_mm, raw_px_per_mm)
    cleans, skins, raws = [], [], []
    for i in range(len(cache)):
        img = centre_crop(cache[i], 16, SIDE)
        skin = centre_crop(cache.skin(i), 16, SIDE)
        cleans.append(img)
        skins.append(skin)
        if i % 500 == 0:
            log(f"clean {i}/{len(cache)}")
    for i in range(len(raw_cache)):
        raws.append(centre_crop(raw_cache[i], 16, SIDE))
    skin_png = [_png(s) for s in skins]
    budget = budget_mib * 2**20
    for quality in (90, 85, 80):
        clean_jpg = [_jpeg(c, quality) for c in cleans]
        raw_jpg = [_jpeg(r, quality) for r in raws]
        total = sum(map(len, clean_jpg)) + sum(map(len, raw_jpg)) + sum(map(len, skin_png))
        log(f"quality {quality}: {len(clean_jpg)} portraits + {len(raw_jpg)} raw photos = {total / 2**20:.1f} MiB")
        if total <= budget:
            break
    keep = min(1.0, 0.97 * budget / total)  # a subset: the sizes vary a little from image to image
    ci = np.unique(np.linspace(0, len(clean_jpg) - 1, max(1, int(len(clean_jpg) * keep))).round().astype(int))
    ri = np.unique(np.linspace(0, len(raw_jpg) - 1, max(1, int(len(raw_jpg) * keep))).round().astype(int)) if raw_jpg else np.array([], int)
    c_data, c_off = _blob([clean_jpg[i] for i in ci])
    s_data, s_off = _blob([skin_png[i] for i in ci])
    r_data, r_off = _blob([raw_jpg[i] for i in ri])
    meta = {"px_per_mm": px_per_mm, "side": SIDE, "quality": quality, "clean": len(ci), "raw": len(ri),
            "clean_dirs": [str(d) for d in clean_dirs], "raw_dirs": [str(d) for d in raw_dirs]}
    return {"clean": c_data, "clean_offsets": c_off, "skin": s_data, "skin_offsets": s_off,
            "raw": r_data, "raw_offsets": r_off, "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}


def save(arrays: dict[str, np.ndarray], path: Path) -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # the JPEG/PNG bytes are already compressed
    return atomic_write_bytes(path, buf.getvalue())


class Pack:
    """A loaded pack: decoded portraits (uint8 RGB), their skin masks (uint8) and raw photos."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        try:
            z = np.load(path, allow_pickle=False)
            self.meta = json.loads(z["meta"].tobytes())
            self.cleans = [decode_jpeg(b) for b in _unblob(z["clean"], z["clean_offsets"])]
            self.skins = [decode_png(b) for b in _unblob(z["skin"], z["skin_offsets"])]
            self.raws = [decode_jpeg(b) for b in _unblob(z["raw"], z["raw_offsets"])]
        except (OSError, ValueError, KeyError) as exc:
            raise SystemExit(f"{path} is not a readable training pack ({type(exc).__name__}); make one with python -m engine.training.pack") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.training.pack", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_PACK)
    p.add_argument("--clean", type=Path, action="append", default=None, help="clean portrait folder(s); default: faces and faces-hq")
    p.add_argument("--raw", type=Path, action="append", default=None, help="raw photo folder(s); default: acne-faces")
    p.add_argument("--preset", default="small", help="model preset whose working scale the pack is made at")
    p.add_argument("--budget-mib", type=float, default=20.0, help="largest pack size (the device takes 64 MiB with the working tree)")
    args = p.parse_args(argv)
    clean = args.clean or [DEFAULT_DATA / "faces", DEFAULT_DATA / "faces-hq"]
    raw = args.raw if args.raw is not None else [DEFAULT_DATA / "acne-faces"]
    arrays = build(clean, raw, ModelConfig.preset(args.preset).work_px_per_mm, args.budget_mib, log=lambda m: print(m, file=sys.stderr))
    out = save(arrays, args.out)
    meta = json.loads(arrays["meta"].tobytes())
    print(f"{out}: {meta['clean']} portraits and {meta['raw']} raw photos at {meta['px_per_mm']} px/mm, "
          f"JPEG quality {meta['quality']}, {out.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
