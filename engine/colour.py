"""Colour spaces: the network works in sRGB; the photo keeps its own profile.

RetouchFormer was trained on sRGB portraits, so it sees every photo in sRGB: a photo tagged with
another RGB profile (Adobe RGB, ProPhoto RGB, Display P3, a camera-converter profile...) is
converted to sRGB for the network (:attr:`WorkingSpace.image`). The correction the network
returns is then carried back into the photo's own encoding (:meth:`WorkingSpace.to_photo`):
inside each corrected box the photo-space correction is ``T⁻¹(T(p) + d) - p``, where ``T`` is
the unclipped floating-point transform from the photo's profile to sRGB, ``p`` the photo's pixel
and ``d`` the network's correction in sRGB. So:

* pixels the correction does not touch (``d == 0``: everything outside the mask) stay
  bit-identical, whatever the profile;
* colours outside the sRGB gamut (saturated clothes, flowers in ProPhoto) are never clipped:
  only the *change* goes through sRGB, not the pixel;
* the file keeps its profile and bit depth; nothing is converted on export.

Untagged photos are sRGB by convention, and profiles that describe sRGB (a camera's
"sRGB IEC61966-2.1", Pillow's built-in sRGB) are recognised by measuring them, so those photos
go to the network as they are, without any conversion.

Colour transforms use LittleCMS through ``imagecodecs`` (float, unbounded, 16-bit capable).
This module never imports Qt: the GUI does its display conversion with Qt's QColorSpace.
"""
from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np

from engine.compositor import Correction, Patch, delta_dtype, dtype_max

__all__ = [
    "ADOBE_RGB_NAME",
    "WorkingSpace",
    "adobe_rgb_profile",
    "convert",
    "describe_profile",
    "is_srgb",
    "nclx_profile",
    "profile_colour_space",
    "srgb_profile",
]

log = logging.getLogger(__name__)

#: Name of the output profile camera RAW files are developed into.
ADOBE_RGB_NAME = "Adobe RGB (1998)"

# Chromaticities (x, y) used to describe HEIF/AVIF "nclx" colour information as an ICC profile.
_D65 = (0.3127, 0.3290)
_PRIMARIES = {
    1: (0.640, 0.330, 0.300, 0.600, 0.150, 0.060),  # BT.709 / sRGB
    9: (0.708, 0.292, 0.170, 0.797, 0.131, 0.046),  # BT.2020
    12: (0.680, 0.320, 0.265, 0.690, 0.150, 0.060),  # Display P3 (SMPTE EG 432-1)
}
_SRGB_TRANSFERS = (13,)  # IEC 61966-2-1
_BT709_TRANSFERS = (1, 6, 14, 15)  # BT.709, BT.601, BT.2020 10/12-bit: the same curve
_HDR_TRANSFERS = (16, 18)  # PQ, HLG


def _cms():
    import imagecodecs

    return imagecodecs


@functools.lru_cache(maxsize=None)
def srgb_profile() -> bytes:
    """LittleCMS's sRGB (IEC 61966-2.1) profile."""
    return bytes(_cms().cms_profile("srgb"))


@functools.lru_cache(maxsize=None)
def adobe_rgb_profile() -> bytes:
    """An Adobe RGB (1998)-compatible profile (LittleCMS; public domain), for developed RAW files."""
    return bytes(_cms().cms_profile("adobergb"))


def profile_colour_space(icc: bytes | None) -> bytes:
    """The ICC header's data colour space (``b"RGB "``, ``b"GRAY"``, ``b"CMYK"``...), or ``b""``."""
    return bytes(icc[16:20]) if icc and len(icc) >= 20 else b""


def describe_profile(icc: bytes | None) -> str:
    """The profile's description (``desc`` tag), ``"sRGB (untagged)"`` without one."""
    if not icc:
        return "sRGB (untagged)"
    try:
        import io

        from PIL import ImageCms

        text = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).strip()
    except Exception:  # noqa: BLE001 - a name is only informative
        text = ""
    return text or "embedded profile"


def _transfer_table(kind: str) -> np.ndarray:
    x = np.linspace(0.0, 1.0, 4096)
    if kind == "srgb":
        y = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    else:  # BT.709 camera curve, inverted
        y = np.where(x < 0.081, x / 4.5, ((x + 0.099) / 1.099) ** (1 / 0.45))
    return y.astype(np.float32)


def nclx_profile(primaries: int, transfer: int) -> tuple[bytes | None, str | None]:
    """An ICC profile for HEIF/AVIF ``nclx`` colour information (``colour_primaries``,
    ``transfer_characteristics``). Returns ``(icc or None, note or None)``: None for sRGB
    (untagged means sRGB), and a note when the combination cannot be represented."""
    if transfer in _HDR_TRANSFERS:
        return None, "This is an HDR (PQ/HLG) image; it was opened as standard range, so highlights and colours may look different."
    if primaries in (1, 2) and transfer in _SRGB_TRANSFERS + _BT709_TRANSFERS + (2,):
        return None, None  # BT.709 primaries with an sRGB-like curve: treat as sRGB
    prims = _PRIMARIES.get(primaries)
    if prims is None or transfer not in _SRGB_TRANSFERS + _BT709_TRANSFERS:
        return None, "The image's colour description is not supported; it was treated as sRGB."
    table = _transfer_table("srgb" if transfer in _SRGB_TRANSFERS else "bt709")
    try:
        icc = bytes(_cms().cms_profile("rgb", whitepoint=_D65, primaries=list(prims), transferfunction=table))
    except Exception:  # noqa: BLE001
        return None, "The image's colour description could not be turned into a profile; it was treated as sRGB."
    return icc, None


def _kw() -> dict:
    return {"colorspace": "rgb", "outcolorspace": "rgb"}


def convert(pixels: np.ndarray, src: bytes, dst: bytes) -> np.ndarray:
    """``pixels`` (HxWx3 uint8/uint16) from profile ``src`` to ``dst``, same dtype, relative
    colorimetric, clipped to the destination's gamut. Computed in float (LittleCMS's 8/16-bit
    paths use precomputed tables that are off by up to ~10/255 with gamma-1.8 profiles), in
    strips so that the float buffer stays small."""
    top = np.float32(dtype_max(pixels.dtype))
    out = np.empty_like(pixels)
    h, w = pixels.shape[:2]
    step = max(1, (8 << 20) // max(1, w * 3))
    for y in range(0, h, step):
        f = _cms().cms_transform(np.ascontiguousarray(pixels[y : y + step]), src, dst, outdtype=np.float32, **_kw())
        f = np.asarray(f, np.float32).reshape(pixels[y : y + step].shape)
        f *= top
        np.clip(f, 0.0, top, out=f)
        np.rint(f, out=f)
        out[y : y + step] = f
    return out


@functools.lru_cache(maxsize=64)
def _srgb_like(digest: str, icc: bytes) -> bool:
    del digest  # part of the cache key only
    grid = np.stack(np.meshgrid(*[np.linspace(0.0, 1.0, 9, dtype=np.float32)] * 3, indexing="ij"), -1).reshape(1, -1, 3)
    out = _cms().cms_transform(grid, icc, srgb_profile(), outdtype=np.float32, **_kw())
    return bool(np.abs(out - grid).max() < 0.25 / 255.0)


def is_srgb(icc: bytes | None) -> bool:
    """True for untagged photos and for profiles that describe sRGB (measured, not by name).
    Raises ValueError for a profile LittleCMS cannot use (damaged, or not an RGB profile)."""
    if not icc:
        return True
    if profile_colour_space(icc) != b"RGB ":
        raise ValueError("not an RGB profile")
    try:
        return _srgb_like(hashlib.sha1(icc).hexdigest(), bytes(icc))
    except Exception as exc:  # imagecodecs.CmsError and friends
        raise ValueError(f"LittleCMS cannot use the profile ({exc})") from exc


@dataclass(eq=False)
class WorkingSpace:
    """The photo as the network sees it (sRGB) and the way back to the photo's own space.

    ``image`` has the photo's shape and dtype. For sRGB and untagged photos it *is* the photo's
    pixel array (no copy) and :meth:`to_photo` returns corrections unchanged.
    """

    pixels: np.ndarray
    icc: bytes | None
    image: np.ndarray
    identity: bool
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, pixels: np.ndarray, icc: bytes | None) -> "WorkingSpace":
        """Working space for ``pixels`` (HxWx3 uint8/uint16) tagged with ``icc`` (None: sRGB)."""
        notes: list[str] = []
        try:
            identity = is_srgb(icc)
        except ValueError as exc:
            log.warning("colour profile not usable: %s", exc)
            notes.append("The embedded colour profile could not be used; the photo was treated as sRGB for the model (the profile is kept in exports).")
            identity = True
        if identity:
            return cls(pixels, icc, pixels, True, notes)
        return cls(pixels, icc, convert(pixels, icc, srgb_profile()), False, notes)

    def _to_srgb_float(self, block: np.ndarray) -> np.ndarray:
        out = _cms().cms_transform(np.ascontiguousarray(block), self.icc, srgb_profile(), outdtype=np.float32, **_kw())
        return np.asarray(out, np.float32).reshape(block.shape)

    def _from_srgb_float(self, block: np.ndarray) -> np.ndarray:
        out = _cms().cms_transform(np.ascontiguousarray(block, np.float32), srgb_profile(), self.icc, outdtype=np.float32, **_kw())
        return np.asarray(out, np.float32).reshape(block.shape)

    def to_photo(self, correction: Correction) -> Correction:
        """``correction`` (computed on :attr:`image`) as a correction of the photo's own pixels.

        Exactly zero wherever the sRGB correction is zero, so the compositor leaves those pixels
        bit-identical."""
        if self.identity or correction.is_empty():
            return correction
        top = np.float32(dtype_max(self.pixels.dtype))
        store = delta_dtype(self.pixels.dtype)
        patches: list[Patch] = []
        for patch in correction.patches:
            x0, y0, x1, y1 = patch.box
            p = self.pixels[y0:y1, x0:x1]
            d = patch.delta.astype(np.float32) / top
            s = self._to_srgb_float(p)
            back = self._from_srgb_float(s + d)
            back *= top
            back -= p
            back[~np.any(patch.delta != 0, axis=-1)] = 0.0
            patches.append(Patch(patch.box, back.astype(store)))
        return Correction(correction.shape, correction.dtype, patches, list(correction.regions), correction.rect, correction.work)


def retouch_photo(retoucher, pixels: np.ndarray, icc: bytes | None, mask: np.ndarray | None = None,
                  strength: float = 1.0, *, blemish_size: float | None = None, cancel=None, progress=None) -> np.ndarray:
    """``Retoucher.retouch`` for a photo tagged with ``icc``: the network analyses and renders
    in sRGB, the correction is carried back and composited on the photo's own pixels."""
    ws = WorkingSpace.of(pixels, icc)
    analysis = retoucher.analyze(ws.image, blemish_size=blemish_size, cancel=cancel, progress=progress)
    correction = ws.to_photo(retoucher.render(analysis, mask, cancel=cancel))
    return retoucher.composite(pixels, correction, strength)
