"""Synthetic skin blemishes with an exact soft mask, for the paired side (x_a, y_a) of training.

:func:`synthesize` takes a clean portrait and paints, on facial skin only, a random mix of

* papules and pustules: raised red bumps with an inflamed halo, shading from a top-left light, an
  optional specular highlight, and (pustules) a whitish-yellow head;
* dark spots: brownish post-inflammatory hyperpigmentation with irregular soft edges;
* pockmarks / atrophic scars: shallow depressions rendered as shading and a slight darkening;
* redness patches: diffuse, noise-modulated erythema;
* dark under-eye circles (optional, with a probability), below the eyes found in the skin mask.

Every blemish is a sequence of alpha-blended layers ``out = out + a * (target - out)`` applied to
a small region of interest. The returned mask is the exact combined blend weight
``1 - prod_k (1 - a_k)``: the fraction of each pixel that no longer comes from the clean image
(for non-overlapping layers this is simply the layer's alpha, and it is never below the maximum
over layers). Consequently ``mask == 0`` exactly where ``raw == clean``, and
``|raw - clean| <= mask`` per channel. Alphas below 1/255 are cut to 0 so the mask has compact
support. Every layer's target differs from the skin beneath it by a clearly visible amount, so a
pixel with a noticeable mask value really changed.

Sizes are in millimetres on the face (papules and pustules 1-5 mm across, dark spots 2-6 mm, pock
marks 1-3 mm, redness patches 1.5-5 cm, on a face about 14 cm wide) and are turned into pixels with
the image's scale ``px_per_mm`` (from the face detector's landmarks; estimated from the skin
region's width when not given), so a lesion has its real size whatever the photo's resolution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from engine.errors import ImageError
from engine.skin import as_float_rgb, skin_mask

__all__ = ["BLEMISH_KINDS", "FACE_WIDTH_MM", "SynthConfig", "SynthSample", "estimate_px_per_mm", "synthesize", "preview_grid"]

BLEMISH_KINDS = ("papules", "dark_spots", "scars", "redness", "under_eye")

_ALPHA_MIN = 1.0 / 255.0
# Light comes from the top left (unit vector in (y, x) image coordinates pointing towards the light).
_LIGHT = np.array([-0.6, -0.8], np.float32)


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the blemish synthesiser. Sizes are millimetres of skin (diameters, except the
    redness radius).

    ``severity`` (drawn per image from Beta(``severity_beta``)) scales all counts jointly, so some
    images get a handful of blemishes and some get many. Each kind is present in an image with its
    probability ``p_*``; counts are then drawn uniformly between ``0`` and ``severity * max``
    (at least ``min`` when present).
    """

    severity_beta: tuple[float, float] = (1.0, 1.6)
    # Papules / pustules.
    p_papules: float = 0.85
    papules_count: tuple[int, int] = (2, 70)
    papule_diameter_mm: tuple[float, float] = (1.0, 5.0)
    pustule_prob: float = 0.3
    highlight_prob: float = 0.35
    # Dark spots (post-inflammatory hyperpigmentation).
    p_dark_spots: float = 0.6
    dark_spots_count: tuple[int, int] = (1, 25)
    dark_spot_diameter_mm: tuple[float, float] = (2.0, 6.0)
    # Pockmarks / atrophic scars.
    p_scars: float = 0.4
    scars_count: tuple[int, int] = (1, 25)
    scar_diameter_mm: tuple[float, float] = (1.0, 3.0)
    # Redness patches (diffuse erythema).
    p_redness: float = 0.5
    redness_count: tuple[int, int] = (1, 4)
    redness_radius_mm: tuple[float, float] = (8.0, 25.0)
    redness_strength: tuple[float, float] = (0.3, 0.7)
    # Dark under-eye circles.
    p_under_eye: float = 0.3
    under_eye_strength: tuple[float, float] = (0.45, 0.85)
    # Fraction of papules / spots placed in clusters (acne groups on cheeks, forehead, chin).
    cluster_fraction: float = 0.6

    @classmethod
    def only(cls, kind: str, **overrides: object) -> "SynthConfig":
        """A config that always produces ``kind`` (one of :data:`BLEMISH_KINDS`) and nothing else."""
        if kind not in BLEMISH_KINDS:
            raise ValueError(f"Unknown blemish kind {kind!r}; expected one of {', '.join(BLEMISH_KINDS)}.")
        probs = {f"p_{k}": (1.0 if k == kind else 0.0) for k in BLEMISH_KINDS}
        return replace(cls(), **probs, **overrides)  # type: ignore[arg-type]


@dataclass
class SynthSample:
    """A synthetic training pair: ``raw`` (with blemishes), ``clean`` (the input) and the soft ``mask``."""

    raw: np.ndarray
    clean: np.ndarray
    mask: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)


class _Canvas:
    """The image being painted plus the running product of (1 - alpha)."""

    def __init__(self, clean: np.ndarray, skin: np.ndarray) -> None:
        self.img = clean.copy()
        self.keep = np.ones(clean.shape[:2], np.float32)
        self.skin = skin
        self.h, self.w = skin.shape

    def roi(self, cy: float, cx: float, radius: float) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
        """Slices of a square region around (cy, cx) and the pixel-centre offsets dy, dx within it."""
        r = int(math.ceil(radius)) + 1
        y0, y1 = max(0, int(cy) - r), min(self.h, int(cy) + r + 2)
        x0, x1 = max(0, int(cx) - r), min(self.w, int(cx) + r + 2)
        if y0 >= y1 or x0 >= x1:
            return None
        dy = (np.arange(y0, y1, dtype=np.float32) - cy)[:, None]
        dx = (np.arange(x0, x1, dtype=np.float32) - cx)[None, :]
        return slice(y0, y1), slice(x0, x1), dy, dx

    def blend(self, sy: slice, sx: slice, alpha: np.ndarray, target: np.ndarray) -> None:
        """Blend ``target`` (patch, HxWx3 or broadcastable) into the canvas with ``alpha`` x skin."""
        a = alpha * self.skin[sy, sx]
        a = np.where(a >= _ALPHA_MIN, np.minimum(a, 1.0), 0.0).astype(np.float32)
        if not a.any():
            return
        patch = self.img[sy, sx]
        patch += a[..., None] * (np.clip(target, 0.0, 1.0) - patch)
        self.keep[sy, sx] *= 1.0 - a

    def patch(self, sy: slice, sx: slice) -> np.ndarray:
        return self.img[sy, sx]


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _ellipse_d2(dy: np.ndarray, dx: np.ndarray, r: float, ecc: float, theta: float) -> np.ndarray:
    """Squared normalised elliptical distance: 1 on the ellipse of mean radius r."""
    c, s = math.cos(theta), math.sin(theta)
    u = (c * dx + s * dy) / (r * (1.0 + ecc))
    v = (-s * dx + c * dy) / (r * (1.0 - ecc))
    return u * u + v * v


def _noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth value noise in about [-1, 1] made by upsampling a coarse random grid."""
    g = rng.standard_normal((max(2, cells), max(2, cells))).astype(np.float32)
    return np.clip(cv2.resize(g, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC) / 1.5, -1.0, 1.0)


class _Sampler:
    """Places blemish centres on skin: partly uniform, partly in a few clusters."""

    def __init__(self, skin: np.ndarray, rng: np.random.Generator, face: float, cluster_fraction: float) -> None:
        self.rng = rng
        self.skin = skin
        self.idx = np.flatnonzero(skin.ravel() > 0.7)
        self.w = skin.shape[1]
        self.face = face
        self.cluster_fraction = cluster_fraction
        n_clusters = int(rng.integers(1, 5))
        self.centres = [self._uniform() for _ in range(n_clusters)] if self.idx.size else []

    def _uniform(self) -> tuple[float, float]:
        i = int(self.idx[self.rng.integers(self.idx.size)])
        return i // self.w + self.rng.random() - 0.5, i % self.w + self.rng.random() - 0.5

    def __call__(self, clustered: bool = True) -> tuple[float, float]:
        if clustered and self.centres and self.rng.random() < self.cluster_fraction:
            cy, cx = self.centres[int(self.rng.integers(len(self.centres)))]
            for _ in range(4):
                y = cy + self.rng.normal() * 0.07 * self.face
                x = cx + self.rng.normal() * 0.07 * self.face
                yi, xi = int(round(y)), int(round(x))
                if 0 <= yi < self.skin.shape[0] and 0 <= xi < self.w and self.skin[yi, xi] > 0.7:
                    return y, x
        return self._uniform()


def _shade(dy: np.ndarray, dx: np.ndarray, height: np.ndarray) -> np.ndarray:
    """Lambertian-like shading term (-1..1) of a height field lit from the top left."""
    gy, gx = np.gradient(height)
    return -(gy * _LIGHT[0] + gx * _LIGHT[1])


def _papule(cv: _Canvas, rng: np.random.Generator, cfg: SynthConfig, cy: float, cx: float, r: float) -> None:
    halo_k = rng.uniform(1.5, 2.6)
    region = cv.roi(cy, cx, r * halo_k * 2.2)
    if region is None:
        return
    sy, sx, dy, dx = region
    ecc, theta = rng.uniform(0.0, 0.25), rng.uniform(0.0, math.pi)
    d2 = _ellipse_d2(dy, dx, r, ecc, theta)
    # 1. Inflamed halo: diffuse redness around the bump.
    halo = rng.uniform(0.3, 0.65) * np.exp(-d2 / (2.0 * halo_k**2))
    red = np.array([rng.uniform(0.96, 1.01), rng.uniform(0.74, 0.86), rng.uniform(0.76, 0.88)], np.float32)
    cv.blend(sy, sx, halo, cv.patch(sy, sx) * red)
    # 2. The bump itself: stronger, slightly darker red with a soft edge.
    soft = rng.uniform(0.6, 1.6)
    core = rng.uniform(0.45, 0.85) * _smoothstep((1.3 - np.sqrt(d2)) / (0.7 * soft))
    deep = np.array([rng.uniform(0.86, 0.97), rng.uniform(0.6, 0.74), rng.uniform(0.62, 0.76)], np.float32)
    cv.blend(sy, sx, core, cv.patch(sy, sx) * deep)
    # 3. Relief: highlight on the lit side, soft shadow on the other.
    height = np.exp(-d2 / 0.8).astype(np.float32)
    sh = _shade(dy, dx, height) * (r * rng.uniform(0.5, 0.9))
    lit = np.clip(sh, 0.0, 1.0)
    cv.blend(sy, sx, lit * 0.35, cv.patch(sy, sx) * 0.7 + 0.3 * np.float32(0.98))
    dark = np.clip(-sh, 0.0, 1.0)
    cv.blend(sy, sx, dark * 0.5, cv.patch(sy, sx) * np.array([0.75, 0.65, 0.65], np.float32))
    # 4. Pustule head: whitish-yellow centre.
    if rng.random() < cfg.pustule_prob:
        hd2 = (dy * dy + dx * dx) / (r * rng.uniform(0.3, 0.5)) ** 2
        head = rng.uniform(0.6, 0.95) * np.exp(-hd2 / 2.0)
        colour = np.array([0.98, rng.uniform(0.9, 0.96), rng.uniform(0.7, 0.85)], np.float32) * rng.uniform(0.92, 1.0)
        cv.blend(sy, sx, head, np.broadcast_to(colour, cv.patch(sy, sx).shape))
    # 5. Specular highlight: a tiny bright glint towards the light.
    if rng.random() < cfg.highlight_prob:
        oy, ox = _LIGHT * r * 0.35
        gd2 = ((dy - oy) ** 2 + (dx - ox) ** 2) / max(0.35, 0.22 * r) ** 2
        glint = rng.uniform(0.15, 0.4) * np.exp(-gd2 / 2.0)
        cv.blend(sy, sx, glint, cv.patch(sy, sx) * 0.3 + 0.7 * np.float32(1.0))


def _dark_spot(cv: _Canvas, rng: np.random.Generator, cy: float, cx: float, r: float) -> None:
    region = cv.roi(cy, cx, r * 2.0)
    if region is None:
        return
    sy, sx, dy, dx = region
    d2 = _ellipse_d2(dy, dx, r, rng.uniform(0.0, 0.35), rng.uniform(0.0, math.pi))
    shape = d2.shape
    d = np.sqrt(d2) * (1.0 + 0.3 * _noise(rng, shape, 5))  # irregular outline
    edge = rng.uniform(0.6, 1.4)
    strength = rng.uniform(0.25, 0.6)
    alpha = strength * _smoothstep((1.0 + edge / 2 - d) / edge) * (1.0 + 0.3 * _noise(rng, shape, 6))
    tone = rng.uniform(0.0, 1.0)  # 0: brown, 1: reddish brown
    gain = np.array([0.8 + 0.1 * tone, 0.64 + 0.02 * tone, 0.56 + 0.04 * tone], np.float32) * rng.uniform(0.85, 1.0)
    cv.blend(sy, sx, alpha, cv.patch(sy, sx) * gain)


def _scar(cv: _Canvas, rng: np.random.Generator, cy: float, cx: float, r: float) -> None:
    region = cv.roi(cy, cx, r * 1.8)
    if region is None:
        return
    sy, sx, dy, dx = region
    d2 = _ellipse_d2(dy, dx, r, rng.uniform(0.0, 0.3), rng.uniform(0.0, math.pi))
    support = _smoothstep((1.3 - np.sqrt(d2)) / 0.6)
    # Ambient occlusion: the pit is slightly darker (and a bit desaturated).
    ao = rng.uniform(0.35, 0.7) * support
    cv.blend(sy, sx, ao, cv.patch(sy, sx) * np.array([0.9, 0.88, 0.89], np.float32))
    # Shading of a bowl: the wall facing the light is lit, the other in shadow (inverse of a bump).
    depth = -np.clip(1.0 - d2, 0.0, 1.0) ** 2
    sh = _shade(dy, dx, depth.astype(np.float32)) * (r * rng.uniform(0.45, 0.8))
    lit = np.clip(sh, 0.0, 1.0)
    cv.blend(sy, sx, lit * 0.6, cv.patch(sy, sx) * 0.7 + 0.3 * np.float32(0.97))
    dark = np.clip(-sh, 0.0, 1.0)
    cv.blend(sy, sx, dark * 0.55, cv.patch(sy, sx) * np.array([0.78, 0.72, 0.72], np.float32))


def _redness(cv: _Canvas, rng: np.random.Generator, cfg: SynthConfig, cy: float, cx: float, r: float) -> None:
    region = cv.roi(cy, cx, r * 2.2)
    if region is None:
        return
    sy, sx, dy, dx = region
    d2 = _ellipse_d2(dy, dx, r, rng.uniform(0.0, 0.4), rng.uniform(0.0, math.pi))
    shape = d2.shape
    mod = 0.65 + 0.35 * _noise(rng, shape, 6)
    alpha = rng.uniform(*cfg.redness_strength) * np.exp(-d2 / 1.2) * mod
    gain = np.array([rng.uniform(0.97, 1.02), rng.uniform(0.7, 0.8), rng.uniform(0.72, 0.82)], np.float32)
    cv.blend(sy, sx, alpha, cv.patch(sy, sx) * gain)


def _eye_positions(skin: np.ndarray) -> list[tuple[float, float, float]]:
    """(y, x, eye width) of the two eyes: the lowest symmetric pair of holes in the upper face,
    falling back to face proportions of the skin region."""
    core = (skin > 0.5).astype(np.uint8)
    ys, xs = np.nonzero(core)
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    # Face width: the widest skin row in the top half of the skin region (below the neck it narrows).
    rows = core[y0 : y0 + (y1 - y0) // 2 + 1].sum(axis=1)
    fw = float(max(rows.max(), 8))
    fcx = (x0 + x1) / 2.0
    # Holes: non-skin components enclosed by the face (not touching the border of the bounding box).
    inv = (1 - core[y0 : y1 + 1, x0 : x1 + 1]).astype(np.uint8)
    n, _, stats, cents = cv2.connectedComponentsWithStats(inv, connectivity=8)
    cand = []
    for i in range(1, n):
        bx, by, bw, bh, area = stats[i]
        if bx == 0 or by == 0 or bx + bw >= inv.shape[1] or by + bh >= inv.shape[0]:
            continue
        cx_, cy_ = cents[i][0] + x0, cents[i][1] + y0
        if 0.08 * fw <= bw <= 0.35 * fw and bh <= 0.2 * fw and cy_ <= y0 + 1.0 * fw:
            cand.append((cy_, cx_, float(bw)))
    best: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    for i, a in enumerate(cand):
        for b in cand[i + 1 :]:
            left, right = (a, b) if a[1] < b[1] else (b, a)
            if (
                left[1] < fcx < right[1] and abs(a[0] - b[0]) < 0.08 * fw
                and 0.25 * fw < right[1] - left[1] < 0.65 * fw
                and abs((left[1] + right[1]) / 2 - fcx) < 0.15 * fw
                and (best is None or a[0] + b[0] > best[0][0] + best[1][0])
            ):
                best = (left, right)
    if best is not None:
        return list(best)
    ey = y0 + 0.45 * fw
    return [(ey, fcx - 0.22 * fw, 0.2 * fw), (ey, fcx + 0.22 * fw, 0.2 * fw)]


def _under_eye(cv: _Canvas, rng: np.random.Generator, cfg: SynthConfig) -> int:
    eyes = _eye_positions(cv.skin)
    strength = rng.uniform(*cfg.under_eye_strength)
    gain = np.array([0.78, 0.69, rng.uniform(0.72, 0.8)], np.float32) * rng.uniform(0.85, 1.0)
    drop = rng.uniform(0.25, 0.4)
    for ey, ex, ew in eyes:
        rx, ry = ew * rng.uniform(0.55, 0.7), ew * rng.uniform(0.28, 0.38)
        cy = ey + ew * drop
        region = cv.roi(cy, ex, 2.0 * rx)
        if region is None:
            continue
        sy, sx, dy, dx = region
        lower = (dx / rx) ** 2 + (dy / ry) ** 2
        eye = (dx / (0.5 * ew)) ** 2 + ((dy + ew * drop) / (0.22 * ew)) ** 2
        # A soft shadow below the eye, fading out at the lid and downwards.
        alpha = np.exp(-lower) * _smoothstep((eye - 1.0) / 1.5) * strength
        alpha *= 1.0 + 0.1 * _noise(rng, alpha.shape, 4)
        cv.blend(sy, sx, alpha, cv.patch(sy, sx) * gain)
    return len(eyes)


#: Width of an adult face in millimetres (the skin region's widest row, ear to ear).
FACE_WIDTH_MM = 140.0


def estimate_px_per_mm(skin: np.ndarray) -> float:
    """A portrait's scale from its skin mask: the widest skin row of the upper face is taken as
    :data:`FACE_WIDTH_MM` (a fallback; the face detector's landmarks are more precise)."""
    core = skin > 0.5
    if not core.any():
        return min(skin.shape) / 256.0
    ys = np.flatnonzero(core.any(axis=1))
    top = core[ys[0] : ys[0] + (ys[-1] - ys[0]) // 2 + 1]
    return max(float(top.sum(axis=1).max()), 8.0) / FACE_WIDTH_MM


def _count(rng: np.random.Generator, p: float, lo_hi: tuple[int, int], severity: float) -> int:
    if rng.random() >= p:
        return 0
    lo, hi = lo_hi
    top = max(lo, int(round(lo + severity * (hi - lo))))
    return int(rng.integers(lo, top + 1))


def synthesize(
    clean: np.ndarray,
    rng: np.random.Generator,
    config: SynthConfig | None = None,
    skin: np.ndarray | None = None,
    px_per_mm: float | None = None,
) -> SynthSample:
    """Add random synthetic blemishes to a clean face image.

    Args:
        clean: float32 HxWx3 RGB in [0, 1] (uint8 is accepted and converted).
        rng: the random generator; the same seed gives the same output.
        config: the blemish parameters (defaults: :class:`SynthConfig`).
        skin: an optional precomputed :func:`engine.skin.skin_mask` of ``clean`` (HxW in [0, 1]).
        px_per_mm: the image's scale (pixels per millimetre of skin); None estimates it from the
            skin region (:func:`estimate_px_per_mm`).

    Returns:
        A :class:`SynthSample`; ``mask`` is the exact per-pixel blend weight and is 0 off skin.
    """
    cfg = config or SynthConfig()
    img = as_float_rgb(clean, "clean image")
    h, w = img.shape[:2]
    if skin is None:
        skin = skin_mask(img)
    else:
        skin = np.asarray(skin, dtype=np.float32)
        if skin.shape != (h, w):
            raise ImageError(f"The skin mask has shape {skin.shape}, but the image is {w}x{h}.")
        skin = np.clip(skin, 0.0, 1.0)
    cv = _Canvas(img, skin)
    counts = dict.fromkeys(BLEMISH_KINDS, 0)
    if not (skin > 0.7).any():
        return SynthSample(raw=cv.img, clean=img, mask=np.zeros((h, w), np.float32), counts=counts)

    s = float(px_per_mm) if px_per_mm is not None else estimate_px_per_mm(skin)
    if not (np.isfinite(s) and s > 0):
        raise ImageError(f"The image scale must be a positive number of pixels per millimetre, not {px_per_mm}.")
    face = math.sqrt(float((skin > 0.5).sum()))
    place = _Sampler(skin, rng, face, cfg.cluster_fraction)
    severity = float(rng.beta(*cfg.severity_beta))

    # Paint order: diffuse layers first, then spots and scars, raised lesions on top.
    n = _count(rng, cfg.p_redness, cfg.redness_count, severity)
    for _ in range(n):
        _redness(cv, rng, cfg, *place(clustered=False), rng.uniform(*cfg.redness_radius_mm) * s)
    counts["redness"] = n
    if rng.random() < cfg.p_under_eye:
        counts["under_eye"] = _under_eye(cv, rng, cfg)
    n = _count(rng, cfg.p_dark_spots, cfg.dark_spots_count, severity)
    for _ in range(n):
        _dark_spot(cv, rng, *place(), 0.5 * rng.uniform(*cfg.dark_spot_diameter_mm) * s)
    counts["dark_spots"] = n
    n = _count(rng, cfg.p_scars, cfg.scars_count, severity)
    for _ in range(n):
        _scar(cv, rng, *place(), 0.5 * rng.uniform(*cfg.scar_diameter_mm) * s)
    counts["scars"] = n
    n = _count(rng, cfg.p_papules, cfg.papules_count, severity)
    lo, hi = cfg.papule_diameter_mm
    for _ in range(n):
        # Small lesions are more common than large ones.
        r = 0.5 * (lo + (hi - lo) * rng.random() ** 1.7) * s
        _papule(cv, rng, cfg, *place(), r)
    counts["papules"] = n

    mask = (1.0 - cv.keep).astype(np.float32)
    return SynthSample(raw=cv.img, clean=img, mask=np.clip(mask, 0.0, 1.0), counts=counts)


def preview_grid(images: list[np.ndarray], seed: int = 0, config: SynthConfig | None = None) -> np.ndarray:
    """A float32 RGB grid with one row per image: clean | raw | mask (for eyeballing the synthesiser)."""
    rng = np.random.default_rng(seed)
    rows = []
    for im in images:
        smp = synthesize(im, rng, config)
        rows.append(np.hstack([smp.clean, smp.raw, np.repeat(smp.mask[..., None], 3, axis=2)]))
    return np.vstack(rows) if rows else np.zeros((1, 1, 3), np.float32)
