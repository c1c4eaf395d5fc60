"""The one place where photos and masks are read from and written to disk.

Everything else in the project (GUI, CLI, batch, training, tests) calls this module, so it is
strict. Pixels are decoded and encoded by maintained libraries, metadata by exiv2:

=========  ======================================  =============================================
format     pixels                                  metadata (EXIF, IPTC, XMP, ICC)
=========  ======================================  =============================================
JPEG       Pillow (8-bit)                          exiv2 reads and writes all four
PNG        OpenCV (8/16-bit)                       exiv2 reads and writes all four
TIFF       tifffile (8/16-bit, Deflate+predictor)  exiv2 reads and writes all four
WebP       Pillow (8-bit)                          exiv2 (EXIF, XMP, ICC: WebP has no IPTC)
HEIF/HEIC  pillow-heif (8-bit, 10/12-bit -> 16)    exiv2 reads; pillow-heif writes EXIF, XMP, ICC
AVIF       Pillow (8-bit)                          exiv2 reads; Pillow writes EXIF, XMP, ICC
RAW        rawpy/LibRaw (16-bit), read only        exiv2 reads (DNG, CR2, CR3, NEF, ARW, ...)
=========  ======================================  =============================================

* :func:`load_image` returns a :class:`Photo` whose ``pixels`` are an upright (orientation
  applied), C-contiguous ``HxWx3`` RGB array of ``uint8`` or ``uint16``, with its
  :class:`Metadata` (EXIF with orientation 1, IPTC, XMP) and ICC profile. Camera RAW files are
  developed by LibRaw with the camera's white balance to 16-bit Adobe RGB (1998) and tagged with
  that profile. Grayscale, palette and CMYK inputs are converted to RGB and the conversion is
  recorded in ``Photo.notes``. Truncated, corrupt, too-small, too-large, floating-point and
  unsupported files are rejected with an :class:`~engine.errors.ImageError` naming the file.
* :func:`save_image` writes JPEG, PNG, TIFF, WebP, HEIF or AVIF with the EXIF (orientation reset
  to 1, Software set, stale thumbnail and file-layout tags dropped), IPTC, XMP and ICC profile in
  every format that can hold them, 16 bits kept where the format has them, alpha re-attached,
  and always atomically (temporary file in the same folder, fsync, rename). Metadata a format
  cannot hold (IPTC in WebP/HEIF/AVIF) is documented; metadata too large for a format is an
  error naming it, never a silent loss (the one exception: a camera maker note that alone makes
  EXIF too large for a JPEG's 64 kB segment is left out).
* :func:`save_in_place` writes a retouched photo back over the file it was loaded from (the
  "Edit in" round trip), same format, bit depth, profile and metadata.
* :func:`load_mask` / :func:`save_mask` read and write soft masks as grayscale PNG.

Importing this module sets ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = False`` (truncated files must
fail, never load with a grey bottom) and ``PIL.Image.MAX_IMAGE_PIXELS`` to :data:`MAX_PIXELS`.
"""
from __future__ import annotations

import io
import logging
import mmap
import os
import secrets
import stat
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageCms, ImageFile, UnidentifiedImageError

from engine import __version__
from engine.errors import ImageError

__all__ = [
    "FORMATS",
    "MAX_PIXELS",
    "MIN_SIDE",
    "RAW_SUFFIXES",
    "SOFTWARE",
    "SUPPORTED_SUFFIXES",
    "WRITABLE_SUFFIXES",
    "Metadata",
    "Photo",
    "apply_orientation",
    "atomic_write_bytes",
    "default_output_suffix",
    "from_float",
    "is_raw",
    "is_supported",
    "load_image",
    "load_mask",
    "save_image",
    "save_in_place",
    "save_mask",
    "save_photo",
    "to_float",
]

log = logging.getLogger(__name__)

#: Smallest accepted photo side in pixels.
MIN_SIDE = 64
#: Largest accepted photo (width * height). 60 MP cameras are the target; 200 MP leaves headroom
#: (e.g. stitched or pixel-shift files) without accepting decompression bombs.
MAX_PIXELS = 200_000_000
#: Formats this module writes.
FORMATS = ("JPEG", "PNG", "TIFF", "WEBP", "HEIF", "AVIF")
#: The EXIF Software tag of every file written.
SOFTWARE = f"RetouchFormer Studio {__version__}"

#: Camera RAW suffixes (read only; developed by LibRaw).
RAW_SUFFIXES = frozenset(
    {".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf", ".rw2",
     ".rwl", ".pef", ".srw", ".3fr", ".iiq", ".erf", ".kdc", ".mrw", ".x3f"}
)
_SUFFIX_FORMAT = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP",
    ".heic": "HEIF", ".heif": "HEIF", ".hif": "HEIF", ".avif": "AVIF",
}
#: Suffixes :func:`save_image` can write (compare lower-cased).
WRITABLE_SUFFIXES = frozenset(_SUFFIX_FORMAT)
#: File suffixes accepted by the loader and the batch command (compare lower-cased).
SUPPORTED_SUFFIXES = WRITABLE_SUFFIXES | RAW_SUFFIXES
_FORMAT_ALIASES = {
    "JPG": "JPEG", "JPEG": "JPEG", "PNG": "PNG", "TIF": "TIFF", "TIFF": "TIFF", "WEBP": "WEBP",
    "HEIC": "HEIF", "HEIF": "HEIF", "AVIF": "AVIF",
}
_FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif", "WEBP": ".webp", "HEIF": ".heic", "AVIF": ".avif"}
# Pillow reports some camera JPEGs (multi-picture format) as MPO.
_PILLOW_FORMAT = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WEBP", "AVIF": "AVIF"}
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1", b"mif2"}
_AVIF_BRANDS = {b"avif", b"avis"}
_IPTC_FORMATS = {"JPEG", "PNG", "TIFF"}  # formats with a place for IPTC-IIM

_WEBP_MAX_SIDE = 16383
_JPEG_MAX_SIDE = 65500
_HEIF_MAX_SIDE = 16384  # libheif/x265 practical limit for a single-image HEIC
_AVIF_MAX_SIDE = 16384
# TIFF Deflate level: 1 is ~3x faster than 6 on photos for ~2-4 % larger files (OpenCV's PNG
# writer, used for PNG, also defaults to level 1).
_DEFLATE_LEVEL = 1

# EXIF IFD0 tags that describe the pixel layout of a particular file, point to other IFDs, or
# carry blobs this module writes itself (XMP 700, IPTC 33723, Photoshop resources 34377, ICC
# 34675). They never travel from one file to another: a JPEG with a TIFF's StripOffsets in its
# EXIF would be nonsense. DNG's own tags (50706..52999) and TIFF/EP's CFA description go too:
# a developed TIFF that says it is a DNG would confuse every reader.
_LAYOUT_TAGS = frozenset(
    {
        254, 255, 256, 257, 258, 259, 262, 263, 264, 265, 266, 273, 277, 278, 279, 280, 281, 284,
        292, 293, 317, 320, 322, 323, 324, 325, 330, 338, 339, 340, 341, 347, 513, 514, 530, 532,
        700, 33421, 33422, 33723, 34377, 34665, 34675, 34853, 37724,
    }
)
_DNG_TAGS = range(50706, 53000)
# Exif groups that are never copied: thumbnails (they would show the un-retouched photo) and the
# extra image directories of RAW and multi-image files.
_DROP_GROUP_PREFIXES = ("Thumbnail", "SubImage", "SubThumb", "Image2", "Image3", "Image4", "Image5", "Image6",
                        "Image7", "Image8", "Image9", "PanasonicRaw", "MpfInfo")
_POINTER_KEYS = frozenset({"Exif.Photo.InteroperabilityTag", "Exif.Image.ExifTag", "Exif.Image.GPSTag"})
_ORIENTATION_KEY = "Exif.Image.Orientation"
_XMP_ORIENTATION_KEY = "Xmp.tiff.Orientation"

ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

# exiv2's XMP toolkit keeps global state: every exiv2 call goes through this lock (calls take
# milliseconds, so worker threads never wait long).
_EXIV2 = threading.RLock()
_exiv2_ready = False


def _exiv2() -> Any:
    global _exiv2_ready
    import exiv2

    if not _exiv2_ready:
        with _EXIV2:
            if not _exiv2_ready:
                exiv2.XmpParser.initialize()
                exiv2.LogMsg.setLevel(exiv2.LogMsg.Level.error)
                _exiv2_ready = True
    return exiv2


# --------------------------------------------------------------------------------------------
# Metadata and Photo


@dataclass(eq=False)
class Metadata:
    """EXIF, IPTC and XMP carried from a photo to its exports (the ICC profile travels beside it).

    ``exif`` and ``iptc`` are exiv2 containers (``exiv2.ExifData`` / ``exiv2.IptcData``), ``xmp``
    is the XMP packet (text). EXIF is cleaned on loading: orientation 1 (the pixels are upright),
    no thumbnail, no file-layout or RAW-only tags. Use :meth:`as_dict` to look at the values.
    """

    exif: Any = None
    iptc: Any = None
    xmp: str | None = None

    def __bool__(self) -> bool:
        return bool((self.exif is not None and self.exif.count()) or (self.iptc is not None and self.iptc.count()) or self.xmp)

    def as_dict(self) -> dict[str, str]:
        """Every EXIF, IPTC and XMP value as ``{exiv2 key: text}`` (repeated IPTC keys joined by ``"; "``)."""
        out: dict[str, str] = {}
        with _EXIV2:
            ex = _exiv2()
            for data in (self.exif, self.iptc):
                for datum in data or ():
                    key = datum.key()
                    text = datum.toString()
                    out[key] = f"{out[key]}; {text}" if key in out else text
            if self.xmp:
                for datum in _decode_xmp(ex, self.xmp):
                    out[datum.key()] = datum.toString()
        return out

    def copy(self) -> "Metadata":
        with _EXIV2:
            ex = _exiv2()
            return Metadata(_copy_data(ex.ExifData(), self.exif), _copy_data(ex.IptcData(), self.iptc), self.xmp)


@dataclass
class Photo:
    """A decoded photo, upright and ready for processing.

    ``pixels`` is an ``HxWx3`` RGB array (``uint8`` for 8-bit sources, ``uint16`` for 16-bit PNG,
    TIFF, high-bit-depth HEIF and developed RAW files). ``metadata`` holds the source's EXIF
    (orientation 1), IPTC and XMP; ``icc_profile`` its colour profile (None: sRGB).
    ``alpha`` (``HxW``, same dtype as ``pixels``) is kept so that exports can re-attach it.
    ``notes`` lists conversions made while loading (grayscale -> RGB, CMYK -> RGB, RAW developed...).
    ``source_stat`` is (size, mtime_ns) of the file when it was read (see :func:`save_in_place`).
    """

    pixels: np.ndarray
    bit_depth: int
    format: str
    metadata: Metadata = field(default_factory=Metadata)
    icc_profile: bytes | None = None
    alpha: np.ndarray | None = None
    path: Path | None = None
    notes: list[str] = field(default_factory=list)
    source_stat: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        p = self.pixels
        if not isinstance(p, np.ndarray) or p.ndim != 3 or p.shape[2] != 3:
            raise ValueError("Photo.pixels must be an HxWx3 RGB array")
        expected = {8: np.uint8, 16: np.uint16}.get(self.bit_depth)
        if expected is None or p.dtype != expected:
            raise ValueError(f"Photo.pixels dtype {p.dtype} does not match bit_depth {self.bit_depth}")
        if self.alpha is not None and (self.alpha.shape != p.shape[:2] or self.alpha.dtype != p.dtype):
            raise ValueError("Photo.alpha must be HxW with the same dtype as the pixels")

    @property
    def exif(self) -> Any:
        """The EXIF container (``exiv2.ExifData``) or None."""
        return self.metadata.exif

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def megapixels(self) -> float:
        return self.height * self.width / 1e6

    @property
    def is_raw(self) -> bool:
        return self.format == "RAW"


# --------------------------------------------------------------------------------------------
# Small public helpers


def is_supported(path: str | os.PathLike[str]) -> bool:
    """True if the file name has one of :data:`SUPPORTED_SUFFIXES` (case-insensitive)."""
    return Path(path).suffix.lower() in SUPPORTED_SUFFIXES


def is_raw(path: str | os.PathLike[str]) -> bool:
    """True if the file name has a camera RAW suffix (case-insensitive)."""
    return Path(path).suffix.lower() in RAW_SUFFIXES


def default_output_suffix(path: str | os.PathLike[str]) -> str:
    """Suffix of an output that keeps ``path``'s format: its own suffix, or ``.tif`` (16-bit TIFF)
    for camera RAW files, which cannot be written."""
    suffix = Path(path).suffix
    return ".tif" if suffix.lower() in RAW_SUFFIXES else suffix


def to_float(pixels: np.ndarray) -> np.ndarray:
    """``uint8``/``uint16`` (or float) image -> ``float32`` in [0, 1], with a single allocation."""
    if pixels.dtype == np.uint8:
        scale = 1.0 / 255.0
    elif pixels.dtype == np.uint16:
        scale = 1.0 / 65535.0
    elif np.issubdtype(pixels.dtype, np.floating):
        return pixels.astype(np.float32, copy=False)
    else:
        raise ValueError(f"to_float expects uint8 or uint16 pixels, got {pixels.dtype}")
    out = pixels.astype(np.float32)
    out *= np.float32(scale)
    return out


def from_float(arr: np.ndarray, dtype: Any = np.uint8) -> np.ndarray:
    """Float image in [0, 1] -> ``uint8``/``uint16``; clips to [0, 1], NaN -> 0, rounds to nearest."""
    dt = np.dtype(dtype)
    if dt == np.uint8:
        top = 255.0
    elif dt == np.uint16:
        top = 65535.0
    else:
        raise ValueError(f"from_float can produce uint8 or uint16, not {dt}")
    tmp = np.clip(arr, 0.0, 1.0, dtype=np.float32)
    np.nan_to_num(tmp, copy=False, nan=0.0)
    tmp *= np.float32(top)
    np.rint(tmp, out=tmp)
    return tmp.astype(dt)


def apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Return ``arr`` (HxW or HxWxC) as displayed for EXIF ``orientation`` 1..8 (a view).

    Unknown values are treated as 1. Callers wanting a contiguous array call
    ``np.ascontiguousarray`` on the result.
    """
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:  # transpose (mirror across the main diagonal)
        return arr.swapaxes(0, 1)
    if orientation == 6:  # stored rotated 90 deg counter-clockwise -> rotate clockwise
        return np.rot90(arr, -1)
    if orientation == 7:  # transverse (mirror across the anti-diagonal)
        return np.rot90(arr, 2).swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(arr, 1)
    return arr


def _convert_depth(arr: np.ndarray, bits: int) -> np.ndarray:
    """Convert ``uint8``/``uint16`` data to ``bits`` (8 or 16); 16 -> 8 rounds v/257 to nearest."""
    if bits == 8:
        if arr.dtype == np.uint8:
            return arr
        # v/257 never lands on .5 for integer v, so cv2's round-to-nearest-even is plain rounding.
        return cv2.convertScaleAbs(arr, alpha=1.0 / 257.0)
    if arr.dtype == np.uint16:
        return arr
    out = arr.astype(np.uint16)
    out *= 257
    return out


# --------------------------------------------------------------------------------------------
# Metadata through exiv2


def _copy_data(dst: Any, src: Any) -> Any:
    """Copy every datum of an exiv2 container into ``dst`` (None when there is nothing)."""
    if src is None:
        return None
    for datum in src:
        dst.add(datum)
    return dst if dst.count() else None


def _decode_xmp(ex: Any, packet: str) -> Any:
    """An XMP packet as an ``exiv2.XmpData`` (exiv2 reads a bare packet like an XMP sidecar file)."""
    try:
        img = ex.ImageFactory.open(packet.encode("utf-8"))
        img.readMetadata()
        return _copy_data(ex.XmpData(), img.xmpData()) or ex.XmpData()
    except ex.Exiv2Error as exc:
        raise ImageError(f"The XMP metadata is not valid XMP ({exc}).") from exc


def _clean_exif(ex: Any, src: Any, *, orientation_to_1: bool = True) -> Any:
    """The EXIF worth carrying to another file (see _LAYOUT_TAGS and _DROP_GROUP_PREFIXES)."""
    out = ex.ExifData()
    for datum in src:
        group = datum.groupName()
        if group.startswith(_DROP_GROUP_PREFIXES) or datum.key() in _POINTER_KEYS:
            continue
        if group == "Image" and (datum.tag() in _LAYOUT_TAGS or datum.tag() in _DNG_TAGS):
            continue
        out.add(datum)
    if orientation_to_1 and out.count():
        out[_ORIENTATION_KEY] = ex.UShortValue(1)
    return out if out.count() else None


def _orientation_of(ex: Any, data: Any) -> int | None:
    it = data.findKey(ex.ExifKey(_ORIENTATION_KEY)) if data is not None else None
    if it is None or it == data.end():
        return None
    try:
        return int(it.toInt64())
    except Exception:  # noqa: BLE001 - a damaged value counts as "no orientation"
        return 0


@dataclass
class _ReadMeta:
    metadata: Metadata
    icc: bytes | None
    orientation: int  # as stored; 1 when none


def _read_metadata(buf: Any, fmt: str, name: str, notes: list[str]) -> _ReadMeta:
    """EXIF/IPTC/XMP/ICC of an encoded file (a bytes-like object, typically an mmap of it)."""
    try:
        ex = _exiv2()
        with _EXIV2:
            img = ex.ImageFactory.open(buf)
            img.readMetadata()
            exif_src = img.exifData()
            xmp_src = img.xmpData()
            orientation = _orientation_of(ex, exif_src)
            if orientation is None:
                it = xmp_src.findKey(ex.XmpKey(_XMP_ORIENTATION_KEY))
                orientation = int(it.toInt64()) if it != xmp_src.end() else None
            exif = _clean_exif(ex, exif_src)
            iptc = _copy_data(ex.IptcData(), img.iptcData())
            xmp = None
            if xmp_src.count():
                if fmt == "RAW":  # Camera Raw settings describe the RAW, not the developed pixels
                    kept = ex.XmpData()
                    for datum in xmp_src:
                        if not datum.key().startswith("Xmp.crs."):
                            kept.add(datum)
                    xmp_src = kept
                xmp = _encode_xmp(ex, xmp_src) if xmp_src.count() else None
            icc = bytes(img.iccProfile().data()) if img.iccProfileDefined() else None
            del img, exif_src, xmp_src
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - damaged metadata must not stop the photo from loading
        log.warning("metadata of %s not readable: %s", name, exc)
        notes.append("The metadata (EXIF/IPTC/XMP) is damaged and was dropped.")
        return _ReadMeta(Metadata(), None, 1)
    if orientation is None:
        orientation = 1
    elif not 1 <= orientation <= 8:
        notes.append(f"Ignored an invalid EXIF orientation value ({orientation}).")
        orientation = 1
    return _ReadMeta(Metadata(exif, iptc, xmp), icc, orientation)


def _encode_xmp(ex: Any, data: Any) -> str:
    """An ``exiv2.XmpData`` as an XMP packet (compact, without padding)."""
    result = ex.XmpParser.encode(data, ex.XmpParser.XmpFormatFlags.useCompactFormat, 0)
    status, packet = (0, result) if isinstance(result, str) else (result[0], result[1])
    if status != 0:
        raise ImageError("The XMP metadata could not be encoded.")
    return str(packet)


def _exif_from_bytes(data: bytes | Image.Exif) -> Any:
    """Caller-supplied EXIF (``Exif\\0\\0`` + TIFF block, a bare TIFF block, or Pillow's Exif)
    parsed by exiv2 and cleaned."""
    raw = data.tobytes() if isinstance(data, Image.Exif) else bytes(data)
    if raw.startswith(b"Exif\x00\x00"):
        raw = raw[6:]
    if not raw:
        return None
    if raw[:4] not in (b"II*\x00", b"MM\x00*"):
        raise ImageError("The EXIF data to embed is not a valid EXIF block.")
    try:
        ex = _exiv2()
        with _EXIV2:
            img = ex.ImageFactory.open(raw)
            img.readMetadata()
            src = img.exifData()
            if not src.count():
                raise ValueError("no EXIF tags could be read")
            return _clean_exif(ex, src)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ImageError(f"The EXIF data to embed is not valid ({exc}).") from exc


def _prepared_metadata(ex: Any, meta: Metadata | None, exif_override: Any, size: tuple[int, int]) -> tuple[Any, Any, Any]:
    """(ExifData, IptcData or None, XmpData or None) to write into a new file of ``size`` (w, h):
    orientation 1, Software set, pixel dimensions updated where the source had them."""
    w, h = size
    exif = ex.ExifData()
    _copy_data(exif, exif_override if exif_override is not None else (meta.exif if meta else None))
    exif[_ORIENTATION_KEY] = ex.UShortValue(1)
    exif["Exif.Image.Software"] = ex.AsciiValue(SOFTWARE)
    for key, value in (("Exif.Photo.PixelXDimension", w), ("Exif.Photo.PixelYDimension", h)):
        if exif.findKey(ex.ExifKey(key)) != exif.end():
            exif[key] = ex.ULongValue(value)
    iptc = _copy_data(ex.IptcData(), meta.iptc) if meta is not None else None
    xmp = None
    if meta is not None and meta.xmp:
        xmp = _decode_xmp(ex, meta.xmp)
        for key, value in ((_XMP_ORIENTATION_KEY, 1), ("Xmp.tiff.ImageWidth", w), ("Xmp.tiff.ImageLength", h),
                           ("Xmp.exif.PixelXDimension", w), ("Xmp.exif.PixelYDimension", h),
                           ("Xmp.tiff.Software", SOFTWARE)):
            if xmp.findKey(ex.XmpKey(key)) != xmp.end():
                xmp[key] = str(value)
    return exif, iptc, xmp


def _std_exif_keys(exif: Any) -> set[str]:
    """Keys of the standard EXIF groups, to check that they arrived (maker notes are re-encoded by
    exiv2, and AVIF/HEIF encoders move the orientation into the container: not compared)."""
    if exif is None:
        return set()
    return {d.key() for d in exif if d.groupName() in ("Image", "Photo", "GPSInfo", "Iop") and d.key() != _ORIENTATION_KEY}


def _strip_maker_note(ex: Any, exif: Any) -> bool:
    doomed = [d.key() for d in exif if d.key() == "Exif.Photo.MakerNote" or d.groupName() == "MakerNote"
              or ex.ExifTags.isMakerGroup(d.groupName())]
    for key in doomed:
        it = exif.findKey(ex.ExifKey(key))
        while it != exif.end():
            exif.erase(it)
            it = exif.findKey(ex.ExifKey(key))
    return bool(doomed)


def _limit_message(name: str, what: str, fmt: str) -> str:
    other = "TIFF or PNG" if fmt in ("JPEG", "WEBP", "HEIF", "AVIF") else "TIFF"
    return f"Cannot save {name}: its {what} metadata is too large for a {fmt} file; save it as {other} instead."


def _embed(data: bytes, fmt: str, name: str, exif: Any, iptc: Any, xmp: Any, icc: bytes | None) -> bytes:
    """Write EXIF/IPTC/XMP/ICC into the encoded ``data`` (JPEG, PNG, TIFF or WebP) with exiv2 and
    check that all of it arrived."""
    ex = _exiv2()
    with _EXIV2:
        for attempt in range(2):
            img = ex.ImageFactory.open(data)
            img.readMetadata()
            img.setExifData(exif)
            if iptc is not None and fmt in _IPTC_FORMATS:
                img.setIptcData(iptc)
            if xmp is not None:
                img.setXmpData(xmp)
            if icc:
                img.setIccProfile(ex.DataBuf(icc), False)
            try:
                img.writeMetadata()
            except ex.Exiv2Error as exc:
                text = str(exc)
                what = "XMP" if "XMP" in text else "IPTC" if "IPTC" in text else "EXIF" if "Exif" in text else "ICC profile"
                if "too large" in text.lower() or "larger than" in text.lower() or "exceeds" in text.lower():
                    raise ImageError(_limit_message(name, what, fmt)) from exc
                raise ImageError(f"Could not write the metadata of {name} ({text}).") from exc
            bio = img.io()
            out = bytes(bio.mmap())
            bio.munmap()
            del img, bio
            missing = _check_written(ex, out, fmt, exif, iptc, xmp, icc)
            if not missing:
                return out
            if missing == "EXIF" and attempt == 0 and _strip_maker_note(ex, exif):
                log.info("%s: camera maker note left out: the EXIF did not fit a %s file", name, fmt)
                continue
            raise ImageError(_limit_message(name, missing, fmt))
    raise AssertionError("unreachable")


def _check_written(ex: Any, out: bytes, fmt: str, exif: Any, iptc: Any, xmp: Any, icc: bytes | None) -> str | None:
    """Name of the metadata block that did not arrive in ``out`` (None: everything did)."""
    img = ex.ImageFactory.open(out)
    img.readMetadata()
    if not _std_exif_keys(exif) <= _std_exif_keys(img.exifData()):
        return "EXIF"
    if iptc is not None and fmt in _IPTC_FORMATS and img.iptcData().count() < iptc.count():
        return "IPTC"
    if xmp is not None and img.xmpData().count() < xmp.count():
        return "XMP"
    if icc and (not img.iccProfileDefined() or bytes(img.iccProfile().data()) != icc):
        return "ICC profile"
    return None


def _exif_payload(ex: Any, exif: Any, name: str, fmt: str) -> bytes:
    """EXIF as an ``Exif\\0\\0`` + TIFF block for encoders that take it as bytes (HEIF, AVIF):
    exiv2 writes it into a tiny JPEG and the block is read back from there."""
    with _EXIV2:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, "JPEG")
        for attempt in range(2):
            carrier = _embed_exif_only(ex, buf.getvalue(), exif)
            with Image.open(io.BytesIO(carrier)) as im:
                raw = im.info.get("exif", b"")
            back = ex.ImageFactory.open(carrier)
            back.readMetadata()
            if _std_exif_keys(exif) <= _std_exif_keys(back.exifData()):
                return raw
            if attempt == 0 and _strip_maker_note(ex, exif):
                continue
            raise ImageError(_limit_message(name, "EXIF", fmt))
    raise AssertionError("unreachable")


def _embed_exif_only(ex: Any, jpeg: bytes, exif: Any) -> bytes:
    img = ex.ImageFactory.open(jpeg)
    img.readMetadata()
    img.setExifData(exif)
    img.writeMetadata()
    bio = img.io()
    out = bytes(bio.mmap())
    bio.munmap()
    return out


# --------------------------------------------------------------------------------------------
# Loading


@dataclass
class _Decoded:
    """Upright pixels in their natural layout (HxW gray or HxWx3 RGB) plus metadata."""

    pixels: np.ndarray
    alpha: np.ndarray | None
    format: str
    metadata: Metadata
    icc: bytes | None
    notes: list[str]


def _name(path: Path) -> str:
    return path.name or str(path)


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise ImageError(f"{path} does not exist.")
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image file.")
    if not os.access(path, os.R_OK):
        raise ImageError(f"{path} cannot be read: permission denied.")


def _check_size(path: Path, width: int, height: int, min_side: int) -> None:
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"{_name(path)} is {width}x{height} ({width * height / 1e6:.0f} megapixels); "
            f"the largest supported size is {MAX_PIXELS / 1e6:.0f} megapixels."
        )
    if min(width, height) < min_side:
        raise ImageError(
            f"{_name(path)} is only {width}x{height} pixels; images must be at least "
            f"{min_side} pixels on each side."
        )


def _sniff(path: Path, head: bytes) -> str:
    """The decoder to use: RAW, HEIF, AVIF, TIFF or PILLOW (JPEG, PNG, WebP and the rest)."""
    if path.suffix.lower() in RAW_SUFFIXES:
        return "RAW"
    if head[4:8] == b"ftyp":
        brands = {head[8:12]} | {head[i : i + 4] for i in range(16, min(len(head), 48) - 3, 4)}
        if brands & _AVIF_BRANDS and head[8:12] in _AVIF_BRANDS:
            return "AVIF"
        if brands & _HEIF_BRANDS:
            return "HEIF"
        if brands & _AVIF_BRANDS:
            return "AVIF"
        if head[8:12] in (b"crx ",):
            return "RAW"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    return "PILLOW"


def _unsupported_message(path: Path) -> str:
    return f"{_name(path)} is not a readable JPEG, PNG, TIFF, WebP, HEIF, AVIF or camera RAW image (or it is damaged)."


def _map_file(path: Path) -> tuple[Any, tuple[int, int]]:
    """A read-only memory map of the file (a bytes-like object) and its (size, mtime_ns)."""
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        if st.st_size == 0:
            raise ImageError(f"{_name(path)} is empty (0 bytes).")
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ), (st.st_size, st.st_mtime_ns)


def _decode(path: str | os.PathLike[str], min_side: int) -> tuple[_Decoded, tuple[int, int]]:
    path = Path(path)
    name = _name(path)
    _check_readable(path)
    try:
        buf, stamp = _map_file(path)
    except ImageError:
        raise
    except OSError as exc:
        raise ImageError(f"{name} cannot be read ({exc.strerror or exc}).") from exc
    notes: list[str] = []
    try:
        kind = _sniff(path, bytes(buf[:64]))
        decoder = {"RAW": _decode_raw, "HEIF": _decode_heif, "TIFF": _decode_tiff}.get(kind, _decode_pillow)
        raw = decoder(path, buf, min_side, notes)
        meta = _read_metadata(buf, raw.format, name, notes)
        icc = meta.icc if raw.icc is None else (raw.icc or None)
        pixels, alpha = raw.pixels, raw.alpha
        if isinstance(pixels, Image.Image):  # 8-bit Pillow decodes and CMYK TIFFs
            pixels, alpha, icc = _pillow_to_arrays(pixels, name, notes, icc)
    except MemoryError as exc:
        raise ImageError(f"Not enough memory to open {name}.") from exc
    finally:
        try:
            buf.close()
        except BufferError:  # something still holds a view; the map is freed with it
            pass
    orientation = meta.orientation if raw.orientation is None else raw.orientation
    pixels = _owned_contiguous(apply_orientation(pixels, orientation))
    if alpha is not None:
        alpha = _owned_contiguous(apply_orientation(alpha, orientation))
    return _Decoded(pixels, alpha, raw.format, meta.metadata, icc, notes), stamp


@dataclass
class _Raw:
    """What a decoder found. ``pixels``: an array (HxW or HxWxC) or a loaded 8-bit Pillow image.
    ``orientation``: None -> apply the EXIF/XMP orientation exiv2 reads; an int -> apply this one
    (1 when the decoder already applied the file's own transforms). ``icc``: None -> the profile
    exiv2 reads; ``b""`` -> no profile; bytes -> this profile."""

    pixels: Any
    alpha: np.ndarray | None
    format: str
    orientation: int | None = None
    icc: bytes | None = None


def _owned_contiguous(arr: np.ndarray) -> np.ndarray:
    if arr.flags.c_contiguous and arr.flags.writeable:
        return arr
    return np.array(arr, order="C", copy=True)


def _decode_raw(path: Path, buf: Any, min_side: int, notes: list[str]) -> _Raw:
    try:
        import rawpy
    except ImportError as exc:  # pragma: no cover - rawpy is a dependency
        raise ImageError(f"{_name(path)} is a camera RAW file; reading RAW files needs the rawpy package (pip install rawpy).") from exc
    from engine.colour import ADOBE_RGB_NAME, adobe_rgb_profile

    try:
        with rawpy.imread(io.BytesIO(buf)) as raw:
            s = raw.sizes
            w, h = (s.height, s.width) if s.flip in (5, 6) else (s.width, s.height)
            _check_size(path, int(w), int(h), min_side)
            rgb = raw.postprocess(
                use_camera_wb=True,  # the white balance the photographer shot with
                output_color=rawpy.ColorSpace.Adobe,
                gamma=(2.19921875, 0.0),  # Adobe RGB (1998)'s pure 563/256 power curve
                output_bps=16,
            )
    except ImageError:
        raise
    except rawpy.LibRawFileUnsupportedError as exc:
        raise ImageError(
            f"{_name(path)} is a RAW format this version of LibRaw cannot decode; convert it to DNG "
            "(Adobe DNG Converter) or export a 16-bit TIFF from your RAW converter."
        ) from exc
    except (rawpy.LibRawIOError, rawpy.LibRawDataError, rawpy.LibRawUnspecifiedError, rawpy.LibRawNoThumbnailError) as exc:
        raise ImageError(f"{_name(path)} is a damaged or truncated camera RAW file ({exc}).") from exc
    except (rawpy.LibRawError, ValueError, OSError) as exc:
        raise ImageError(f"{_name(path)} could not be decoded as a camera RAW file ({exc}).") from exc
    notes.append(f"Developed the camera RAW file with LibRaw: camera white balance, 16-bit {ADOBE_RGB_NAME}.")
    return _Raw(np.ascontiguousarray(rgb), None, "RAW", 1, adobe_rgb_profile())


def _decode_heif(path: Path, buf: Any, min_side: int, notes: list[str]) -> _Raw:
    try:
        import pillow_heif
    except ImportError as exc:  # pragma: no cover - pillow-heif is a dependency
        raise ImageError(f"{_name(path)} is a HEIF/HEIC image; reading it needs the pillow-heif package (pip install pillow-heif).") from exc
    from engine.colour import nclx_profile

    try:
        heif = pillow_heif.open_heif(str(path), convert_hdr_to_8bit=False)
        w, h = heif.size
        _check_size(path, w, h, min_side)
        bit_depth = int(heif.info.get("bit_depth", 8))
        mode = heif.mode
        arr = np.asarray(heif)
        info = dict(heif.info)
        del heif
    except ImageError:
        raise
    except (ValueError, RuntimeError, OSError, SyntaxError) as exc:
        text = str(exc)
        if "codec" in text.lower() or "decoder" in text.lower() or "plugin" in text.lower():
            raise ImageError(
                f"{_name(path)} cannot be decoded: this installation has no decoder for its HEIF codec ({text})."
            ) from exc
        raise ImageError(f"{_name(path)} is a damaged or truncated HEIF image ({text}).") from exc
    if arr.dtype == np.uint16 and bit_depth in (10, 12):
        # pillow-heif aligns 10/12-bit samples to the top of 16 bits; rescale so that white is 65535.
        shift = 16 - bit_depth
        top = (1 << bit_depth) - 1
        arr = ((arr >> shift).astype(np.uint32) * 65535 + top // 2) // top
        arr = arr.astype(np.uint16)
    alpha = None
    if arr.ndim == 3 and arr.shape[2] == 4:
        alpha = np.ascontiguousarray(arr[..., 3])
        arr = arr[..., :3]
    elif arr.ndim == 3 and arr.shape[2] == 2:
        alpha = np.ascontiguousarray(arr[..., 1])
        arr = arr[..., 0]
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if mode not in ("RGB", "RGBA", "RGB;16", "RGBA;16", "L", "LA", "L;16", "I;16", "I;16L"):
        notes.append(f"Decoded the {mode} HEIF image as RGB.")
    icc: bytes | None = None  # None -> exiv2's reading of the 'colr' box
    nclx = info.get("nclx_profile")
    if not info.get("icc_profile") and nclx:
        prof, note = nclx_profile(int(nclx.get("color_primaries", 2)), int(nclx.get("transfer_characteristics", 2)))
        icc = prof or b""
        if note:
            notes.append(note)
    return _Raw(arr, alpha, "HEIF", 1, icc)


def _decode_tiff(path: Path, buf: Any, min_side: int, notes: list[str]) -> _Raw:
    """TIFF (8/16-bit gray or RGB, palette, 8-bit CMYK; any compression tifffile and imagecodecs
    decode). The Orientation tag is not applied here: exiv2 reads it like every other format's."""
    import tifffile

    name = _name(path)
    try:
        tf = tifffile.TiffFile(path)
    except Exception as exc:  # noqa: BLE001 - tifffile raises a variety of types on garbage
        raise ImageError(f"{name} is a damaged TIFF or uses a TIFF layout that is not supported.") from exc
    with tf:
        if not tf.pages:
            raise ImageError(f"{name} is a TIFF file without any image.")
        page = tf.pages[0]
        if "DNGVersion" in page.tags or int(page.photometric) in (32803, 34892):  # a DNG named .tif
            return _decode_raw(path, buf, min_side, notes)
        w, h = int(page.imagewidth), int(page.imagelength)
        _check_size(path, w, h, min_side)
        bits = int(page.bitspersample)
        if int(page.sampleformat) == 3:
            raise ImageError(f"{name} is a floating-point TIFF, which is not supported; export it as an 8- or 16-bit TIFF.")
        if bits not in (1, 8, 16) or int(page.sampleformat) not in (1, 2):
            raise ImageError(f"{name} has {bits}-bit samples, which is not supported; export it as an 8- or 16-bit TIFF.")
        photometric = int(page.photometric)
        if bits == 16 and photometric not in (0, 1, 2):
            raise ImageError(f"{name} is a 16-bit TIFF that is not grayscale or RGB (e.g. CMYK or Lab); convert it to RGB first.")
        if photometric not in (0, 1, 2, 3, 5, 6):
            raise ImageError(f"{name} uses a TIFF colour model that is not supported (e.g. Lab); convert it to RGB first.")
        size = len(buf)
        if any(int(o) + int(n) > size for o, n in zip(page.dataoffsets, page.databytecounts)):
            raise ImageError(f"{name} is truncated or damaged (its image data ends early).")
        try:
            arr = page.asarray(maxworkers=min(4, os.cpu_count() or 1))
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - codec errors come in many types
            raise ImageError(f"{name} is truncated or damaged and could not be decoded ({exc}).") from exc
        samples = int(page.samplesperpixel)
        if int(page.planarconfig) == 2 and arr.ndim == 3 and samples > 1 and arr.shape[0] == samples:
            arr = np.moveaxis(arr, 0, -1)
        colormap = np.asarray(page.colormap) if photometric == 3 and page.colormap is not None else None
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.dtype == bool or bits == 1:
        arr = arr.astype(np.uint8) * np.uint8(255)
    if arr.dtype not in (np.uint8, np.uint16) or arr.shape[:2] != (h, w):
        raise ImageError(f"{name} uses a TIFF layout that is not supported.")
    if photometric == 0:  # min-is-white
        arr = np.iinfo(arr.dtype).max - arr
    if photometric == 3:  # palette: 16-bit colour map entries, 8-bit result
        if colormap is None:
            raise ImageError(f"{name} is a palette TIFF without a colour map.")
        cmap = colormap.T.astype(np.uint16)  # (entries, 3)
        if cmap.max() <= 255:
            cmap *= 257
        notes.append("Converted the palette (indexed-colour) image to RGB.")
        return _Raw(_convert_depth(cmap[arr if arr.ndim == 2 else arr[..., 0]], 8), None, "TIFF")
    if photometric == 5:  # CMYK (8-bit): converted through its profile once the metadata is read
        if arr.ndim != 3 or arr.shape[2] < 4:
            raise ImageError(f"{name} is a CMYK TIFF with an unexpected layout.")
        return _Raw(Image.fromarray(np.ascontiguousarray(arr[..., :4]), "CMYK"), None, "TIFF")
    alpha = None
    if arr.ndim == 3:
        colour = 3 if photometric in (2, 6) and arr.shape[2] >= 3 else 1
        if arr.shape[2] > colour:
            alpha = arr[..., colour]  # the first extra sample (TIFF writers put alpha there)
        arr = arr[..., :3] if colour == 3 else arr[..., 0]
    return _Raw(arr, alpha, "TIFF")


def _decode_pillow(path: Path, buf: Any, min_side: int, notes: list[str]) -> _Raw:
    """JPEG, 8-bit PNG, WebP and AVIF through Pillow (16-bit PNG: see _decode_png16). Returns the
    loaded Pillow image; _decode turns it into arrays once the profile is known (CMYK JPEGs)."""
    name = _name(path)
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name} is too large to open safely (over {MAX_PIXELS / 1e6:.0f} megapixels).") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(_unsupported_message(path)) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name} is damaged or truncated and could not be read ({exc}).") from exc
    try:
        fmt = _PILLOW_FORMAT.get(im.format or "")
        if fmt is None:
            raise ImageError(
                f"{name} is a {im.format or 'unknown'} image; only JPEG, PNG, TIFF, WebP, HEIF, AVIF and camera RAW files are supported."
            )
        w, h = im.size
        _check_size(path, w, h, min_side)
        if im.mode in ("F", "I") and fmt != "PNG":
            kind = "floating-point" if im.mode == "F" else "32-bit integer"
            raise ImageError(f"{name} is a {kind} image, which is not supported; export it as 8- or 16-bit.")
        if fmt == "PNG" and bytes(buf[12:16]) == b"IHDR" and buf[24] == 16:  # 16-bit: Pillow would drop to 8
            return _decode_png16(path, buf, im)
        orientation = None
        if fmt == "AVIF":  # Pillow turns the AVIF transforms (irot/imir) into an EXIF orientation itself
            try:
                orientation = int(im.getexif().get(0x0112, 1))
            except Exception:  # noqa: BLE001
                orientation = 1
            orientation = orientation if 1 <= orientation <= 8 else 1
        ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated files must fail, whoever changed it
        try:
            im.load()
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{name} is too large to open safely.") from exc
        except Exception as exc:  # noqa: BLE001 - decoders raise OSError, SyntaxError, zlib.error...
            raise ImageError(f"{name} is truncated or damaged and could not be decoded ({exc}).") from exc
    except BaseException:
        im.close()
        raise
    return _Raw(im, None, fmt, orientation)


def _decode_png16(path: Path, buf: Any, im: Image.Image) -> _Raw:
    """16-bit PNG: Pillow checks the file's chunks (CRCs, IEND), OpenCV decodes the 16 bits."""
    name = _name(path)
    try:
        im.verify()
    except Exception as exc:  # noqa: BLE001
        raise ImageError(f"{name} is truncated or damaged ({exc}).") from exc
    finally:
        im.close()
    arr = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageError(f"{name} is truncated or damaged and could not be decoded.")
    alpha = None
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    if channels == 1:
        pixels = arr if arr.ndim == 2 else arr[..., 0]
    elif channels == 2:
        pixels, alpha = arr[..., 0], arr[..., 1]
    elif channels == 3:
        pixels = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB, dst=arr)  # in place: no second 16-bit copy
    elif channels == 4:
        pixels = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB)
        alpha = arr[..., 3].copy()
    else:
        raise ImageError(f"{name} has {channels} channels, which is not supported.")
    return _Raw(pixels, alpha, "PNG")


def _pillow_to_arrays(im: Image.Image, name: str, notes: list[str], icc: bytes | None) -> tuple[np.ndarray, np.ndarray | None, bytes | None]:
    """An 8-bit Pillow image as (colour HxW or HxWx3, alpha or None, icc), converting exotic modes."""
    mode = im.mode
    src = im
    if mode == "CMYK":
        im, icc = _cmyk_to_rgb(im, icc)
        notes.append("Converted the CMYK image to RGB.")
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        notes.append("Converted the palette (indexed-colour) image to RGB.")
    elif mode == "1":
        im = im.convert("L")
    elif mode in ("RGBa", "RGBX", "YCbCr", "La"):
        im = im.convert({"RGBa": "RGBA", "RGBX": "RGB", "YCbCr": "RGB", "La": "LA"}[mode])
    elif mode not in ("RGB", "RGBA", "L", "LA"):
        raise ImageError(f"{name} uses the {mode} colour mode, which is not supported.")
    if im is not src:
        src.close()  # free the unconverted copy before the numpy copy is made
    try:
        colour, alpha = _copy_bands(im)
    finally:
        im.close()
    return colour, alpha, icc


def _copy_bands(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Copy an L/LA/RGB/RGBA Pillow image into fresh numpy arrays (colour, alpha), band by
    strips so that no full-size temporary exists besides Pillow's own buffer and the result."""
    width, height = im.size
    bands = len(im.mode)
    has_alpha = im.mode in ("LA", "RGBA")
    colour_bands = bands - 1 if has_alpha else bands
    colour = np.empty((height, width, colour_bands) if colour_bands > 1 else (height, width), np.uint8)
    alpha = np.empty((height, width), np.uint8) if has_alpha else None
    step = max(1, (8 << 20) // (width * 4))
    for y in range(0, height, step):
        y2 = min(height, y + step)
        strip = np.frombuffer(im.crop((0, y, width, y2)).tobytes(), np.uint8).reshape(y2 - y, width, bands)
        if colour_bands > 1:
            colour[y:y2] = strip[..., :colour_bands]
        else:
            colour[y:y2] = strip[..., 0]
        if alpha is not None:
            alpha[y:y2] = strip[..., -1]
    return colour, alpha


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
    """CMYK -> RGB through the embedded profile when possible (result tagged sRGB)."""
    from engine.colour import profile_colour_space

    if icc and profile_colour_space(icc) == b"CMYK":
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
            out = ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
            if out is not None:
                return out, dst.tobytes()
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass
    return im.convert("RGB"), None


def load_image(path: str | os.PathLike[str]) -> Photo:
    """Read a JPEG, PNG, TIFF, WebP, HEIF/HEIC, AVIF or camera RAW photo as an upright RGB :class:`Photo`.

    Raises :class:`~engine.errors.ImageError` (one sentence naming the file) for missing,
    unreadable, truncated, corrupt, unsupported, too small (< :data:`MIN_SIDE`), too large
    (> :data:`MAX_PIXELS`) or floating-point images, RAW files LibRaw cannot decode and HEIF
    files whose codec this installation lacks.
    """
    from engine.colour import profile_colour_space

    path = Path(path)
    dec, stamp = _decode(path, MIN_SIDE)
    pixels, alpha, icc = dec.pixels, dec.alpha, dec.icc
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
        dec.notes.append("Converted the grayscale image to RGB.")
    if icc is not None and profile_colour_space(icc) != b"RGB ":
        # A grayscale (or other non-RGB) profile does not describe the RGB pixels we return.
        icc = None
        dec.notes.append("Dropped the embedded non-RGB colour profile after converting to RGB.")
    if alpha is not None and alpha.dtype != pixels.dtype:
        alpha = _convert_depth(alpha, 16 if pixels.dtype == np.uint16 else 8)
    return Photo(
        pixels=pixels,
        bit_depth=16 if pixels.dtype == np.uint16 else 8,
        format=dec.format,
        metadata=dec.metadata,
        icc_profile=icc,
        alpha=alpha,
        path=path,
        notes=dec.notes,
        source_stat=stamp,
    )


# --------------------------------------------------------------------------------------------
# Writing


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.normcase(str(a.resolve())) == os.path.normcase(str(b.resolve()))


def _check_protected(path: Path, protect: Iterable[str | os.PathLike[str]]) -> None:
    for p in protect:
        if _same_file(path, Path(p)):
            raise ImageError(
                f"Refusing to overwrite the input file {path}; choose a different output name or folder."
            )


_Buffer = bytes | bytearray | memoryview


def atomic_write_bytes(
    path: str | os.PathLike[str],
    data: _Buffer | Iterable[_Buffer],
    *,
    protect: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Write ``data`` (a buffer, or buffers written one after another) to ``path`` atomically:
    a temporary file in the same folder is written, flushed and fsynced, then renamed over
    ``path``. On any failure the previous file (if any) is untouched and the temporary file is
    removed; errors are raised as :class:`~engine.errors.ImageError`. Paths in ``protect`` are
    never written. A file that is replaced keeps its permission bits. Returns ``path``.
    """
    parts = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
    path = Path(path)
    folder = _check_target(path, protect)
    tmp = folder / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        old_mode = stat.S_IMODE(os.stat(path).st_mode) if path.is_file() else None
    except OSError:
        old_mode = None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
                for part in parts:
                    fh.write(part)
                fh.flush()
                os.fsync(fh.fileno())
            if old_mode is not None:
                try:
                    os.chmod(tmp, old_mode)
                except OSError:
                    pass
        except BaseException:
            _unlink_quietly(tmp)
            raise
        try:
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
    except PermissionError as exc:
        raise ImageError(f"Cannot write {path}: permission denied.") from exc
    except OSError as exc:
        raise ImageError(f"Cannot write {path}: {exc.strerror or exc}.") from exc
    _fsync_dir(folder)
    return path


def _check_target(path: Path, protect: Iterable[str | os.PathLike[str]]) -> Path:
    """Raise unless ``path`` may be written; return its folder."""
    _check_protected(path, protect)
    folder = path.parent
    if not folder.is_dir():
        raise ImageError(f"Cannot write {path}: the folder {folder} does not exist.")
    if path.is_dir():
        raise ImageError(f"Cannot write {path}: a folder with that name exists.")
    return folder


def _unlink_quietly(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _resolve_format(path: Path, format: str | None) -> str:
    if format is not None:
        fmt = _FORMAT_ALIASES.get(format.upper())
        if fmt is None:
            if format.upper() == "RAW":
                raise ImageError(f"Cannot save {path.name} as a camera RAW file; save it as TIFF (16-bit) instead.")
            raise ImageError(f"Cannot save as {format!r}; choose JPEG, PNG, TIFF, WebP, HEIF or AVIF.")
        return fmt
    fmt = _SUFFIX_FORMAT.get(path.suffix.lower())
    if fmt is None:
        if path.suffix.lower() in RAW_SUFFIXES:
            raise ImageError(f"Cannot write {path.name}: camera RAW files cannot be written; save it as .tif (16-bit TIFF) instead.")
        raise ImageError(
            f"Cannot tell the format of {path.name!r} from its extension; use .jpg, .png, .tif, .webp, .heic or .avif."
        )
    return fmt


def save_image(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    *,
    metadata: Metadata | None = None,
    exif: bytes | Image.Exif | Any | None = None,
    icc_profile: bytes | None = None,
    alpha: np.ndarray | None = None,
    quality: int = 95,
    format: str | None = None,
    bit_depth: int | None = None,
    protect: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Encode an ``HxWx3`` RGB ``uint8``/``uint16`` image and write it atomically.

    * ``format``: "JPEG", "PNG", "TIFF", "WEBP", "HEIF" or "AVIF" (case-insensitive, "JPG",
      "TIF", "HEIC" accepted); default from the file suffix.
    * ``bit_depth``: 8 or 16 for PNG/TIFF, 8 or 16 (stored as 10-bit) for HEIF (default: 16 for
      ``uint16`` input, 8 for ``uint8``). JPEG, WebP and AVIF are always 8-bit: ``uint16`` data is
      converted with rounding (``v / 257`` to the nearest integer); 8 -> 16 bit multiplies by 257.
    * ``metadata``: EXIF, IPTC and XMP to embed (a :class:`Metadata`, e.g. ``photo.metadata``);
      ``exif``: EXIF to use instead of ``metadata.exif`` (bytes as in a JPEG's APP1, Pillow's
      ``Image.Exif`` or an ``exiv2.ExifData``). The orientation is written as 1 because
      ``pixels`` are upright and the Software tag is set to :data:`SOFTWARE`.
      ``icc_profile``: embedded in every format.
    * ``alpha``: ``HxW`` (any of uint8/uint16); re-attached for PNG, TIFF, WebP, HEIF and AVIF,
      dropped for JPEG.
    * ``quality``: 1..100 for JPEG, WebP, HEIF and AVIF (JPEG uses 4:4:4 chroma at quality >= 90).
    * ``protect``: paths that must never be overwritten (the inputs); writing onto one raises.

    Returns the written path. On failure nothing is left behind and an existing file is untouched.
    """
    path = Path(path)
    _check_target(path, protect)  # fail before spending seconds on encoding
    fmt = _resolve_format(path, format)
    if not isinstance(pixels, np.ndarray) or pixels.ndim != 3 or pixels.shape[2] != 3:
        shape = getattr(pixels, "shape", None)
        raise ImageError(f"Cannot save {path.name}: expected an HxWx3 RGB image, got shape {shape}.")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ImageError(
            f"Cannot save {path.name}: pixels must be uint8 or uint16, not {pixels.dtype} "
            "(use engine.imageio.from_float)."
        )
    h, w = pixels.shape[:2]
    if h == 0 or w == 0:
        raise ImageError(f"Cannot save {path.name}: the image is empty.")
    if alpha is not None:
        if alpha.shape != (h, w) or alpha.dtype not in (np.uint8, np.uint16):
            raise ImageError(f"Cannot save {path.name}: the alpha channel must be an HxW uint8/uint16 array.")
    if bit_depth not in (None, 8, 16):
        raise ImageError(f"Cannot save {path.name}: bit depth must be 8 or 16, not {bit_depth}.")
    if not 1 <= int(quality) <= 100:
        raise ImageError(f"Cannot save {path.name}: quality must be between 1 and 100, not {quality}.")
    limit = {"JPEG": _JPEG_MAX_SIDE, "WEBP": _WEBP_MAX_SIDE, "HEIF": _HEIF_MAX_SIDE, "AVIF": _AVIF_MAX_SIDE}.get(fmt)
    if limit is not None and max(h, w) > limit:
        raise ImageError(
            f"Cannot save {path.name}: {fmt} is limited to {limit} pixels per side; save as PNG or TIFF instead."
        )

    bits = bit_depth if bit_depth is not None else (16 if pixels.dtype == np.uint16 else 8)
    if fmt in ("JPEG", "WEBP", "AVIF"):
        bits = 8
    if fmt not in _IPTC_FORMATS and metadata is not None and metadata.iptc is not None and metadata.iptc.count():
        log.info("%s: %s has no place for IPTC-IIM; what the XMP mirrors of it is kept", path.name, fmt)
    exif_override = None
    if exif is not None:
        exif_override = exif if not isinstance(exif, (bytes, bytearray, memoryview, Image.Exif)) else _exif_from_bytes(exif)
    icc = bytes(icc_profile) if icc_profile else None
    name = path.name

    try:
        ex = _exiv2()
        with _EXIV2:
            exif_data, iptc_data, xmp_data = _prepared_metadata(ex, metadata, exif_override, (w, h))
        rgb = _convert_depth(pixels, bits)
        a = _convert_depth(alpha, bits) if alpha is not None else None
        if fmt in ("HEIF", "AVIF"):
            with _EXIV2:
                exif_raw = _exif_payload(ex, exif_data, name, fmt)
                xmp_raw = _encode_xmp(ex, xmp_data).encode("utf-8") if xmp_data is not None else None
            encode = _encode_heif if fmt == "HEIF" else _encode_avif
            data = encode(rgb, a, int(quality), exif_raw, xmp_raw, icc)
            with _EXIV2:
                missing = _check_written(ex, data, fmt, exif_data, None, xmp_data, icc)
            if missing:
                raise ImageError(f"Cannot save {name}: the {fmt} encoder did not store its {missing} metadata; save as TIFF instead.")
        else:
            if fmt == "JPEG":
                data = _encode_jpeg(rgb, int(quality))
            elif fmt == "WEBP":
                data = _encode_webp(rgb, a, int(quality))
            elif fmt == "PNG":
                data = _encode_png(rgb, a, icc)
            else:
                data = _encode_tiff(rgb, a)
            data = _embed(data, fmt, name, exif_data, iptc_data, xmp_data, icc)
    except ImageError:
        raise
    except MemoryError as exc:
        raise ImageError(f"Not enough memory to encode {path.name}.") from exc
    except Exception as exc:  # noqa: BLE001 - encoders raise OSError, ValueError, cv2.error, RuntimeError...
        raise ImageError(f"Could not encode {path.name} as {fmt}: {exc}.") from exc
    return atomic_write_bytes(path, data, protect=protect)


def save_photo(
    path: str | os.PathLike[str], photo: Photo, pixels: np.ndarray | None = None, **kwargs: Any
) -> Path:
    """:func:`save_image` with ``photo``'s metadata, ICC profile and alpha (``pixels`` defaults to
    ``photo.pixels``; the input ``photo.path`` is always protected). Extra keyword arguments go
    to :func:`save_image`."""
    protect = list(kwargs.pop("protect", ()))
    if photo.path is not None:
        protect.append(photo.path)
    kwargs.setdefault("metadata", photo.metadata)
    kwargs.setdefault("icc_profile", photo.icc_profile)
    kwargs.setdefault("alpha", photo.alpha)
    return save_image(path, photo.pixels if pixels is None else pixels, protect=protect, **kwargs)


def save_in_place(photo: Photo, pixels: np.ndarray, *, quality: int = 95) -> Path:
    """Write ``pixels`` back over the file ``photo`` was loaded from: same format, bit depth,
    ICC profile, metadata and alpha, atomically. This replaces the original: callers must have
    the user's confirmation. Refuses camera RAW files (they cannot be written) and files that
    changed on disk since they were read (another program wrote them meanwhile)."""
    if photo.path is None:
        raise ImageError("This photo was not loaded from a file, so it cannot be saved in place; export it instead.")
    path = Path(photo.path)
    if photo.is_raw:
        raise ImageError(
            f"{path.name} is a camera RAW file, which cannot be written; export the retouched photo as a 16-bit TIFF instead."
        )
    if photo.source_stat is not None:
        try:
            st = os.stat(path)
            now = (st.st_size, st.st_mtime_ns)
        except OSError:
            now = None
        if now is not None and now != tuple(photo.source_stat):
            raise ImageError(
                f"{path.name} was changed by another program after it was opened; reopen it, or export your retouch to a new file."
            )
    out = save_image(path, pixels, metadata=photo.metadata, icc_profile=photo.icc_profile, alpha=photo.alpha,
                     quality=quality, format=photo.format, bit_depth=photo.bit_depth)
    try:
        st = os.stat(out)
        photo.source_stat = (st.st_size, st.st_mtime_ns)
    except OSError:
        pass
    return out


def _encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, "JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    return buf.getvalue()


def _encode_webp(rgb: np.ndarray, alpha: np.ndarray | None, quality: int) -> bytes:
    im = Image.fromarray(np.dstack([rgb, alpha]) if alpha is not None else np.ascontiguousarray(rgb))
    buf = io.BytesIO()
    im.save(buf, "WEBP", quality=quality, method=4, exact=alpha is not None)
    return buf.getvalue()


def _encode_png(rgb: np.ndarray, alpha: np.ndarray | None, icc: bytes | None) -> bytes:
    """PNG (8 or 16 bit) via OpenCV. The ICC profile goes in here (OpenCV names the iCCP chunk;
    exiv2 alone would write it with an empty name, which libpng-based readers reject, exiv2
    issue #2354); exiv2 then keeps that chunk's name when it writes the rest of the metadata."""
    if alpha is not None:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
        bgr[..., 3] = alpha
    else:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if icc:
        ok, enc = cv2.imencodeWithMetadata(".png", bgr, [cv2.IMAGE_METADATA_ICCP], [np.frombuffer(icc, np.uint8)])
    else:
        ok, enc = cv2.imencode(".png", bgr)
    del bgr
    if not ok:
        raise ImageError("OpenCV could not encode the PNG image.")
    return enc.tobytes()


def _encode_tiff(rgb: np.ndarray, alpha: np.ndarray | None) -> bytes:
    """RGB(A) TIFF, 8 or 16 bit, Adobe Deflate with horizontal predictor, ~1 MB strips compressed
    in threads, by tifffile."""
    import tifffile

    arr = np.dstack([rgb, alpha]) if alpha is not None else np.ascontiguousarray(rgb)
    h, w, c = arr.shape
    rows = max(1, min(h, (1 << 20) // (w * c * arr.dtype.itemsize)))
    buf = io.BytesIO()
    tifffile.imwrite(
        buf, arr, photometric="rgb", planarconfig="contig", extrasamples=("unassalpha",) if alpha is not None else None,
        compression="adobe_deflate", compressionargs={"level": _DEFLATE_LEVEL}, predictor=True, rowsperstrip=rows,
        maxworkers=max(1, min(4, os.cpu_count() or 1)), metadata=None, software=SOFTWARE,
    )
    return buf.getvalue()


def _metadata_params(exif: bytes | None, xmp: bytes | None, icc: bytes | None) -> dict[str, bytes]:
    """The metadata blocks Pillow and pillow-heif take as save parameters (the empty ones left out)."""
    return {k: v for k, v in (("exif", exif), ("xmp", xmp), ("icc_profile", icc)) if v}


def _encode_heif(rgb: np.ndarray, alpha: np.ndarray | None, quality: int, exif: bytes | None, xmp: bytes | None,
                 icc: bytes | None) -> bytes:
    try:
        import pillow_heif
    except ImportError as exc:  # pragma: no cover - a dependency
        raise ImageError("Saving HEIF needs the pillow-heif package (pip install pillow-heif).") from exc
    arr = np.dstack([rgb, alpha]) if alpha is not None else np.ascontiguousarray(rgb)
    sixteen = arr.dtype == np.uint16
    mode = ("RGBA" if alpha is not None else "RGB") + (";16" if sixteen else "")
    if sixteen:  # pillow-heif takes 10-bit samples aligned to the top of 16 bits
        arr = ((arr.astype(np.uint32) * 1023 + 32767) // 65535 << 6).astype(np.uint16)
    heif = pillow_heif.from_bytes(mode=mode, size=(arr.shape[1], arr.shape[0]), data=np.ascontiguousarray(arr).tobytes())
    params: dict[str, Any] = {"quality": quality, "chroma": 444 if quality >= 90 else 420, **_metadata_params(exif, xmp, icc)}
    buf = io.BytesIO()
    try:
        heif.save(buf, format="HEIF", **params)
    except (RuntimeError, ValueError, OSError) as exc:
        if any(word in str(exc).lower() for word in ("encoder", "plugin", "codec")):
            raise ImageError(
                f"Cannot save HEIF: this installation has no HEVC encoder ({exc}); save as JPEG, PNG or TIFF instead."
            ) from exc
        raise
    return buf.getvalue()


def _encode_avif(rgb: np.ndarray, alpha: np.ndarray | None, quality: int, exif: bytes | None, xmp: bytes | None,
                 icc: bytes | None) -> bytes:
    im = Image.fromarray(np.dstack([rgb, alpha]) if alpha is not None else np.ascontiguousarray(rgb))
    params: dict[str, Any] = {"quality": quality, "subsampling": "4:4:4" if quality >= 90 else "4:2:0",
                              **_metadata_params(exif, xmp, icc)}
    buf = io.BytesIO()
    im.save(buf, "AVIF", **params)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Masks


def load_mask(path: str | os.PathLike[str], shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a soft mask (8- or 16-bit grayscale PNG; other supported formats work too) as an
    ``HxW`` ``float32`` array in [0, 1]. RGB(A) masks collapse to their luminance (alpha is
    ignored). EXIF orientation is applied. ``shape=(H, W)`` of the photo: a mismatch raises."""
    path = Path(path)
    dec, _ = _decode(path, 1)
    m = dec.pixels
    if m.ndim == 3:
        f = to_float(m)
        out = f[..., 0] * np.float32(0.299)
        out += f[..., 1] * np.float32(0.587)
        out += f[..., 2] * np.float32(0.114)
        np.clip(out, 0.0, 1.0, out=out)
    else:
        out = to_float(m)
    if shape is not None:
        want_h, want_w = int(shape[0]), int(shape[1])
        if out.shape != (want_h, want_w):
            raise ImageError(
                f"The mask {path.name} is {out.shape[1]}x{out.shape[0]} but the photo is "
                f"{want_w}x{want_h}; masks must have exactly the photo's size."
            )
    return out


def save_mask(
    path: str | os.PathLike[str],
    mask: np.ndarray,
    bit_depth: int = 8,
    *,
    protect: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Write an ``HxW`` mask atomically as a grayscale PNG (0 = untouched, 255/65535 = full).

    Float masks are clipped to [0, 1] and rounded; bool masks map to 0/max; uint8/uint16 masks
    are converted to ``bit_depth`` (8 or 16)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ImageError(f"Masks are saved as PNG; {path.name} does not end in .png.")
    if bit_depth not in (8, 16):
        raise ImageError(f"Mask bit depth must be 8 or 16, not {bit_depth}.")
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[..., 0]
    if m.ndim != 2 or m.size == 0:
        raise ImageError(f"Cannot save mask {path.name}: expected an HxW array, got shape {m.shape}.")
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    if m.dtype == bool:
        out = m.astype(dtype) * dtype(255 if bit_depth == 8 else 65535)
    elif np.issubdtype(m.dtype, np.floating):
        out = from_float(m, dtype)
    elif m.dtype in (np.uint8, np.uint16):
        out = _convert_depth(m, bit_depth)
    else:
        raise ImageError(f"Cannot save mask {path.name}: unsupported dtype {m.dtype}.")
    ok, enc = cv2.imencode(".png", np.ascontiguousarray(out))
    if not ok:
        raise ImageError("OpenCV could not encode the PNG mask.")
    return atomic_write_bytes(path, enc.tobytes(), protect=protect)
