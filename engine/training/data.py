"""Training and evaluation data: clean portraits + synthetic blemishes, paired folders, raw-only folders.

All images are read with the project's one loader (engine.imageio.load_image) and brought to the
model's working scale (``ModelConfig.work_px_per_mm`` pixels per millimetre of skin), measured on
each image by the face detector (the pipeline does the same to every photo), so a blemish reaches
the model at the same size in training and in use. Images are cached in memory at that scale
(uint8): about 2.5 GB for the 4,700 bundled portraits (SCUT-FBP5500 and CelebAMask-HQ, about
416 px a side at 1.6 px/mm).
"""
from __future__ import annotations

import hashlib
from itertools import zip_longest
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import cv2
import numpy as np

from engine.imageio import SUPPORTED_SUFFIXES, from_float, load_image, to_float
from engine.skin import skin_mask
from engine.training.synth import SynthConfig, estimate_px_per_mm, synthesize

if TYPE_CHECKING:
    from engine.training.pack import Pack

HOLDOUT_FRACTION = 0.1
#: The shared data folder beside the repository (../shared/data), read in place.
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def list_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    folder = Path(folder)
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)


#: Real acne photos the checks on real skin look at (tests/bench/brush_lightness.py, the README's
#: figures): never used as raw training photos since stage 15, whose --spot-tone term trains on the
#: very measure those checks take (earlier stages saw them among the unpaired photos).
REAL_CHECKS = (
    "acne04_0010.jpg", "acne04_0070.jpg", "acne04_0095.jpg", "acne04_0100.jpg", "acne04_0203.jpg", "acne04_0450.jpg",
    "acne04_0029.jpg", "acne04_0149.jpg", "acne04_0299.jpg", "acne04_0499.jpg", "acne04_0699.jpg", "acne04_0600.jpg",
)


def raw_images(folder: str | Path) -> list[Path]:
    """The raw (unpaired) training photos of ``folder``: all its images but :data:`REAL_CHECKS`."""
    return [p for p in list_images(folder) if p.name not in REAL_CHECKS]


def is_holdout(path: Path) -> bool:
    """A fixed, name-based split: about 10 % of portraits are never used for training."""
    h = int(hashlib.md5(path.name.encode()).hexdigest()[:8], 16)
    return (h % 1000) < HOLDOUT_FRACTION * 1000


def split(paths: list[Path], part: str) -> list[Path]:
    if part == "all":
        return paths
    hold = part == "holdout"
    return [p for p in paths if is_holdout(p) == hold]


def _load_rgb8(path: Path) -> np.ndarray:
    px = load_image(path).pixels
    return px if px.dtype == np.uint8 else from_float(to_float(px), np.uint8)


def face_px_per_mm(px: np.ndarray) -> float | None:
    """The scale (pixels per millimetre) of the most confident face YuNet finds, or None."""
    from engine.faces import detect

    faces = detect(px)
    return max(faces, key=lambda f: f.score).px_per_mm if faces else None


def clean_px_per_mm(px: np.ndarray) -> float:
    """Scale of a clean portrait: from the face detector, else from the width of its skin region."""
    found = face_px_per_mm(px)
    return found if found is not None else estimate_px_per_mm(skin_mask(px))


def raw_px_per_mm(px: np.ndarray) -> float:
    """Scale of a raw photo: from the face detector, else a close-up of skin about 10 cm across."""
    found = face_px_per_mm(px)
    return found if found is not None else min(px.shape[:2]) / CLOSEUP_MM


#: Field of view assumed for a photo without a face (a close-up of skin), in millimetres.
CLOSEUP_MM = 100.0


def load_at_scale(path: Path, px_per_mm: float, scale_of: Callable[[np.ndarray], float] = clean_px_per_mm) -> np.ndarray:
    """Load with the project loader (uint8 RGB) and resize so the skin is at ``px_per_mm``
    pixels per millimetre (the model's working scale), the image's own scale given by ``scale_of``."""
    px = _load_rgb8(path)
    return _rescale(px, px_per_mm / scale_of(px))


def _rescale(px: np.ndarray, f: float) -> np.ndarray:
    """``px`` resized by ``f`` (clipped to 0.1..4; area averaging down, bicubic up)."""
    f = float(np.clip(f, 0.1, 4.0))
    h, w = px.shape[:2]
    size = (max(16, int(round(w * f))), max(16, int(round(h * f))))
    if size == (w, h):
        return px
    return cv2.resize(px, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)


def centre_crop(img: np.ndarray, multiple: int = 16, largest: int | None = None) -> np.ndarray:
    """The central square of ``img``, its side a multiple of ``multiple`` (at most ``largest``)."""
    h, w = img.shape[:2]
    s = min(h, w, largest or min(h, w))
    s -= s % multiple
    y0, x0 = (h - s) // 2, (w - s) // 2
    return img[y0 : y0 + s, x0 : x0 + s]


class ImageCache:
    """Lazily loaded, in-memory uint8 images at the model's working scale."""

    def __init__(self, paths: list[Path], px_per_mm: float, scale_of: Callable[[np.ndarray], float] = clean_px_per_mm) -> None:
        self.paths, self.px_per_mm, self.scale_of = list(paths), px_per_mm, scale_of
        self._cache: dict[int, np.ndarray] = {}
        self._skin: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        img = self._cache.get(i)
        if img is None:
            img = self._cache[i] = load_at_scale(self.paths[i], self.px_per_mm, self.scale_of)
        return img

    def skin(self, i: int) -> np.ndarray:
        """The skin mask of image ``i`` (uint8 0..255), found once on the whole image (a crop
        of background or hair alone would fool the colour rule)."""
        sk = self._skin.get(i)
        if sk is None:
            sk = self._skin[i] = np.round(skin_mask(self[i]) * 255.0).astype(np.uint8)
        return sk


@dataclass
class Batch:
    clean: np.ndarray  # (B, S, S, 3) float32: y (clean targets; also y_u)
    raw: np.ndarray  # (B, S, S, 3): x_a
    mask: np.ndarray  # (B, S, S): φ(x_a, y_a)
    unpaired: np.ndarray | None  # (Bu, S, S, 3): x_u


def _augment(
    img: np.ndarray, rng: np.random.Generator, crop: int, skin: np.ndarray | None = None
) -> tuple[np.ndarray, float, np.ndarray | None]:
    """Flip, small scale/rotation, mild colour/exposure jitter, random ``crop`` x ``crop`` window
    inside the image (reflected only when the image is smaller than the window).

    uint8 -> float32. Returns the crop, the scale factor applied (the blemish synthesiser sizes
    its lesions with it, so they stay true to millimetres) and ``skin`` (uint8 0..255, the
    image's skin mask) warped the same way, or None.
    """
    h, w = img.shape[:2]
    flip = rng.random() < 0.5
    ang, sc = rng.uniform(-8, 8), float(rng.uniform(0.87, 1.15))
    half = crop / (2.0 * sc)  # half the window, in source pixels
    cx = rng.uniform(half, w - half) if w > 2 * half else w / 2.0
    cy = rng.uniform(half, h - half) if h > 2 * half else h / 2.0
    m = cv2.getRotationMatrix2D((cx, cy), ang, sc)
    m[:, 2] += (crop / 2.0 - cx, crop / 2.0 - cy)

    def warp(a: np.ndarray) -> np.ndarray:
        out = cv2.warpAffine(np.ascontiguousarray(a), m, (crop, crop), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        return out[:, ::-1] if flip else out

    f = to_float(warp(img))
    f = np.clip(f * rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, size=3) + rng.uniform(-0.04, 0.04), 0, 1)
    return np.ascontiguousarray(f, dtype=np.float32), sc, None if skin is None else np.ascontiguousarray(warp(skin))


def _phi(raw: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """φ(x, y) for real pairs: per-pixel difference normalised to [0, 1] and softened."""
    d = np.abs(raw - clean).max(axis=2)
    return cv2.GaussianBlur(np.clip(d / 0.08, 0, 1), (0, 0), 1.0).astype(np.float32)


class MemoryImages:
    """Images already in memory at the working scale (a training pack), with their skin masks;
    the same interface as :class:`ImageCache`."""

    def __init__(self, images: list[np.ndarray], skins: list[np.ndarray] | None = None) -> None:
        self.images, self.skins = list(images), None if skins is None else list(skins)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.images[i]

    def skin(self, i: int) -> np.ndarray:
        if self.skins is None:
            self.skins = [None] * len(self.images)  # type: ignore[list-item]
        if self.skins[i] is None:
            self.skins[i] = np.round(skin_mask(self.images[i]) * 255.0).astype(np.uint8)
        return self.skins[i]


class PairCache:
    """Real (raw, retouched) pairs, both brought to the working scale measured on the raw photo."""

    def __init__(self, pairs: list[tuple[Path, Path]], px_per_mm: float) -> None:
        self.pairs, self.px_per_mm = list(pairs), px_per_mm
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        got = self._cache.get(i)
        if got is None:
            raw, clean = (_load_rgb8(p) for p in self.pairs[i])
            f = self.px_per_mm / raw_px_per_mm(raw)
            raw, clean = _rescale(raw, f), _rescale(clean, f)
            got = self._cache[i] = (raw, clean)
        return got


class TrainingData:
    """Infinite sampler mixing (a) synthetic pairs from clean portraits, (b) real pairs, (c) raw-only images.

    Every image is at the working scale ``px_per_mm``; training samples are random ``crop`` x
    ``crop`` windows of it (flipped, slightly rotated and rescaled, colour-jittered), and
    synthetic blemishes are sized in millimetres at the sample's own scale.

    gamma: the share of paired data, as in the paper: a fraction gamma of the clean portraits (and
    of the real pairs) are used as pairs; the rest serve as unpaired clean images y_u.
    """

    def __init__(
        self,
        px_per_mm: float,
        crop: int,
        clean_dirs: list[Path] = (),
        paired_dirs: list[Path] = (),
        raw_dirs: list[Path] = (),
        gamma: float = 1.0,
        synth: SynthConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.px_per_mm, self.crop, self.synth = px_per_mm, crop, synth or SynthConfig()
        rng = np.random.default_rng(seed)
        clean = [p for d in clean_dirs for p in split(list_images(d), "train")]
        rng.shuffle(clean)
        n_pair = int(round(gamma * len(clean)))
        self.synth_pairs = ImageCache(clean[:n_pair], px_per_mm)
        self.clean_only = ImageCache(clean[n_pair:], px_per_mm)
        pairs: list[tuple[Path, Path]] = []
        for d in paired_dirs:
            raw_dir, ret_dir = Path(d) / "raw", Path(d) / "retouched"
            for p in list_images(raw_dir):
                q = ret_dir / p.relative_to(raw_dir)
                if q.exists():
                    pairs.append((p, q))
        rng.shuffle(pairs)
        n_real = int(round(gamma * len(pairs)))
        self.real = PairCache(pairs[:n_real], px_per_mm)
        self.unpaired_clean_from_pairs = ImageCache([b for _, b in pairs[n_real:]], px_per_mm, raw_px_per_mm)
        raws = [p for d in raw_dirs for p in raw_images(d)] + [a for a, _ in pairs[n_real:]]
        self.raw_only = ImageCache(raws, px_per_mm, raw_px_per_mm)
        if len(self.synth_pairs) + len(self.real) == 0:
            raise ValueError("no paired training data: give --clean folders (synthetic pairs) or --paired folders with gamma > 0")

    @classmethod
    def from_pack(cls, pack: "Pack", crop: int, gamma: float = 1.0, unpaired: bool = True, synth: SynthConfig | None = None, seed: int = 0) -> "TrainingData":
        """Training data from a training pack (engine.training.pack) instead of folders."""
        self = cls.__new__(cls)
        self.px_per_mm, self.crop, self.synth = float(pack.meta["px_per_mm"]), crop, synth or SynthConfig()
        order = np.random.default_rng(seed).permutation(len(pack.cleans))
        n_pair = int(round(gamma * len(order)))
        self.synth_pairs = MemoryImages([pack.cleans[i] for i in order[:n_pair]], [pack.skins[i] for i in order[:n_pair]])
        self.clean_only = MemoryImages([pack.cleans[i] for i in order[n_pair:]], [pack.skins[i] for i in order[n_pair:]])
        self.real = PairCache([], self.px_per_mm)
        self.unpaired_clean_from_pairs = MemoryImages([])
        self.raw_only = MemoryImages(pack.raws if unpaired else [])
        if not len(self.synth_pairs):
            raise ValueError("the pack holds no portraits to pair (gamma is 0?)")
        return self

    def describe(self) -> dict[str, int]:
        return {
            "synthetic_pairs": len(self.synth_pairs),
            "real_pairs": len(self.real),
            "clean_only": len(self.clean_only) + len(self.unpaired_clean_from_pairs),
            "raw_only": len(self.raw_only),
        }

    def _pair(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n_s, n_r = len(self.synth_pairs), len(self.real)
        if n_r and (not n_s or rng.random() < n_r / (n_r + n_s)):
            raw_img, clean_img = self.real[int(rng.integers(n_r))]
            st = int(rng.integers(1 << 30))
            raw = _augment(raw_img, np.random.default_rng(st), self.crop)[0]
            clean = _augment(clean_img, np.random.default_rng(st), self.crop)[0]
            return raw, clean, _phi(raw, clean)
        i = int(rng.integers(n_s))
        clean, sc, skin = _augment(self.synth_pairs[i], rng, self.crop, self.synth_pairs.skin(i))
        s = synthesize(clean, rng, self.synth, skin=skin.astype(np.float32) / 255.0, px_per_mm=self.px_per_mm * sc)
        return s.raw, s.clean, s.mask

    def _clean(self, rng: np.random.Generator) -> np.ndarray:
        pools = [c for c in (self.clean_only, self.unpaired_clean_from_pairs) if len(c)]
        if not pools:
            return self._pair(rng)[1]
        pool = pools[int(rng.integers(len(pools)))]
        return _augment(pool[int(rng.integers(len(pool)))], rng, self.crop)[0]

    def batches(self, batch: int, unpaired: int, rng: np.random.Generator) -> Iterator[Batch]:
        while True:
            pairs = [self._pair(rng) for _ in range(batch)]
            raw, clean, mask = (np.stack(t) for t in zip(*pairs))
            # y for the prior: the pairs' clean sides plus unpaired clean portraits when there are any
            if len(self.clean_only) + len(self.unpaired_clean_from_pairs):
                clean = np.concatenate([clean, np.stack([self._clean(rng) for _ in range(max(1, batch // 2))])])
            xu = None
            if unpaired and len(self.raw_only):
                xu = np.stack([_augment(self.raw_only[int(rng.integers(len(self.raw_only)))], rng, self.crop)[0] for _ in range(unpaired)])
            yield Batch(clean, raw, mask, xu)


def holdout_paths(clean_dirs: list[Path], count: int, offset: int = 0) -> list[Path]:
    """``count`` held-out portraits, taken in turn from each folder, after skipping ``offset``
    (the evaluation uses the first ones; validation of training runs uses later ones)."""
    lists = [split(list_images(d), "holdout") for d in clean_dirs]
    merged = [p for group in zip_longest(*lists) for p in group if p is not None]
    return merged[offset : offset + count]


def eval_pairs(
    clean_dirs: list[Path] | Path,
    px_per_mm: float,
    count: int,
    seed: int = 1234,
    synth: SynthConfig | None = None,
    offset: int = 0,
    largest: int = 512,
) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Deterministic synthetic evaluation pairs from held-out portraits at the working scale:
    (name, raw, clean, mask), each a centred square (side a multiple of 16, at most ``largest``)."""
    dirs = [clean_dirs] if isinstance(clean_dirs, (str, Path)) else list(clean_dirs)
    for i, p in enumerate(holdout_paths(dirs, count, offset)):
        clean = to_float(centre_crop(load_at_scale(p, px_per_mm), 16, largest))
        s = synthesize(clean, np.random.default_rng(seed + offset + i), synth, px_per_mm=px_per_mm)
        yield p.name, s.raw, s.clean, s.mask
