"""Training and evaluation data: clean portraits + synthetic blemishes, paired folders, raw-only folders.

All images are read with the project's one loader (engine.imageio.load_image) and brought to the
model's square resolution. Images are cached in memory at that resolution (uint8), which for
the 3,600 bundled training portraits at 256² is about 0.7 GB.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from engine.imageio import SUPPORTED_SUFFIXES, from_float, load_image, to_float
from engine.training.synth import SynthConfig, synthesize

HOLDOUT_FRACTION = 0.1
#: The shared data folder beside the repository (../shared/data), read in place.
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def list_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    folder = Path(folder)
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)


def is_holdout(path: Path) -> bool:
    """A fixed, name-based split: about 10 % of portraits are never used for training."""
    h = int(hashlib.md5(path.name.encode()).hexdigest()[:8], 16)
    return (h % 1000) < HOLDOUT_FRACTION * 1000


def split(paths: list[Path], part: str) -> list[Path]:
    if part == "all":
        return paths
    hold = part == "holdout"
    return [p for p in paths if is_holdout(p) == hold]


def load_square(path: Path, size: int) -> np.ndarray:
    """Load with the project loader, centre-crop to square, resize to ``size``; uint8 RGB."""
    px = load_image(path).pixels
    if px.dtype != np.uint8:
        px = from_float(to_float(px), np.uint8)
    h, w = px.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    px = px[y0 : y0 + s, x0 : x0 + s]
    interp = cv2.INTER_AREA if s > size else cv2.INTER_CUBIC
    return cv2.resize(px, (size, size), interpolation=interp)


class ImageCache:
    """Lazily loaded, in-memory uint8 images at one square size."""

    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths, self.size = list(paths), size
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        img = self._cache.get(i)
        if img is None:
            img = self._cache[i] = load_square(self.paths[i], self.size)
        return img


@dataclass
class Batch:
    clean: np.ndarray  # (B, S, S, 3) float32: y (clean targets; also y_u)
    raw: np.ndarray  # (B, S, S, 3): x_a
    mask: np.ndarray  # (B, S, S): φ(x_a, y_a)
    unpaired: np.ndarray | None  # (Bu, S, S, 3): x_u


def _augment(img: np.ndarray, rng: np.random.Generator, crop: int) -> np.ndarray:
    """Flip, small scale/rotation, mild colour/exposure jitter, random crop. uint8 -> float32."""
    s = img.shape[0]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    ang, sc = rng.uniform(-8, 8), rng.uniform(0.95, 1.15)
    m = cv2.getRotationMatrix2D((s / 2, s / 2), ang, sc)
    img = cv2.warpAffine(np.ascontiguousarray(img), m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    f = to_float(img)
    f = np.clip(f * rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, size=3) + rng.uniform(-0.04, 0.04), 0, 1)
    if crop < s:
        y0, x0 = rng.integers(0, s - crop + 1, size=2)
        f = f[y0 : y0 + crop, x0 : x0 + crop]
    return np.ascontiguousarray(f, dtype=np.float32)


def _phi(raw: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """φ(x, y) for real pairs: per-pixel difference normalised to [0, 1] and softened."""
    d = np.abs(raw - clean).max(axis=2)
    return cv2.GaussianBlur(np.clip(d / 0.08, 0, 1), (0, 0), 1.0).astype(np.float32)


class TrainingData:
    """Infinite sampler mixing (a) synthetic pairs from clean portraits, (b) real pairs, (c) raw-only images.

    gamma: the share of paired data, as in the paper: a fraction gamma of the clean portraits (and
    of the real pairs) are used as pairs; the rest serve as unpaired clean images y_u.
    """

    def __init__(
        self,
        size: int,
        crop: int,
        clean_dirs: list[Path] = (),
        paired_dirs: list[Path] = (),
        raw_dirs: list[Path] = (),
        gamma: float = 1.0,
        synth: SynthConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.size, self.crop, self.synth = size, crop, synth or SynthConfig()
        rng = np.random.default_rng(seed)
        clean = [p for d in clean_dirs for p in split(list_images(d), "train")]
        rng.shuffle(clean)
        n_pair = int(round(gamma * len(clean)))
        self.synth_pairs = ImageCache(clean[:n_pair], size)
        self.clean_only = ImageCache(clean[n_pair:], size)
        pairs: list[tuple[Path, Path]] = []
        for d in paired_dirs:
            raw_dir, ret_dir = Path(d) / "raw", Path(d) / "retouched"
            for p in list_images(raw_dir):
                q = ret_dir / p.relative_to(raw_dir)
                if q.exists():
                    pairs.append((p, q))
        rng.shuffle(pairs)
        n_real = int(round(gamma * len(pairs)))
        self.real_raw = ImageCache([a for a, _ in pairs[:n_real]], size)
        self.real_clean = ImageCache([b for _, b in pairs[:n_real]], size)
        self.unpaired_clean_from_pairs = ImageCache([b for _, b in pairs[n_real:]], size)
        raws = [p for d in raw_dirs for p in list_images(d)] + [a for a, _ in pairs[n_real:]]
        self.raw_only = ImageCache(raws, size)
        if len(self.synth_pairs) + len(self.real_raw) == 0:
            raise ValueError("no paired training data: give --clean folders (synthetic pairs) or --paired folders with gamma > 0")

    def describe(self) -> dict[str, int]:
        return {
            "synthetic_pairs": len(self.synth_pairs),
            "real_pairs": len(self.real_raw),
            "clean_only": len(self.clean_only) + len(self.unpaired_clean_from_pairs),
            "raw_only": len(self.raw_only),
        }

    def _pair(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n_s, n_r = len(self.synth_pairs), len(self.real_raw)
        if n_r and (not n_s or rng.random() < n_r / (n_r + n_s)):
            i = int(rng.integers(n_r))
            st = int(rng.integers(1 << 30))
            raw = _augment(self.real_raw[i], np.random.default_rng(st), self.crop)
            clean = _augment(self.real_clean[i], np.random.default_rng(st), self.crop)
            return raw, clean, _phi(raw, clean)
        clean = _augment(self.synth_pairs[int(rng.integers(n_s))], rng, self.crop)
        s = synthesize(clean, rng, self.synth)
        return s.raw, s.clean, s.mask

    def _clean(self, rng: np.random.Generator) -> np.ndarray:
        pools = [c for c in (self.clean_only, self.unpaired_clean_from_pairs) if len(c)]
        if not pools:
            return self._pair(rng)[1]
        pool = pools[int(rng.integers(len(pools)))]
        return _augment(pool[int(rng.integers(len(pool)))], rng, self.crop)

    def batches(self, batch: int, unpaired: int, rng: np.random.Generator) -> Iterator[Batch]:
        while True:
            pairs = [self._pair(rng) for _ in range(batch)]
            raw, clean, mask = (np.stack(t) for t in zip(*pairs))
            # y for the prior: the pairs' clean sides plus unpaired clean portraits when there are any
            if len(self.clean_only) + len(self.unpaired_clean_from_pairs):
                clean = np.concatenate([clean, np.stack([self._clean(rng) for _ in range(max(1, batch // 2))])])
            xu = None
            if unpaired and len(self.raw_only):
                xu = np.stack([_augment(self.raw_only[int(rng.integers(len(self.raw_only)))], rng, self.crop) for _ in range(unpaired)])
            yield Batch(clean, raw, mask, xu)


def eval_pairs(clean_dir: Path, size: int, count: int, seed: int = 1234, synth: SynthConfig | None = None) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Deterministic synthetic evaluation pairs from held-out portraits: (name, raw, clean, mask)."""
    paths = split(list_images(clean_dir), "holdout")[:count]
    for i, p in enumerate(paths):
        clean = to_float(load_square(p, size))
        s = synthesize(clean, np.random.default_rng(seed + i), synth)
        yield p.name, s.raw, s.clean, s.mask
