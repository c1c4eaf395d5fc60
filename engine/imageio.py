"""The one place where photos and masks are read from and written to disk.

Everything else in the project (GUI, CLI, batch, training) calls this module, so it is strict:

* :func:`load_image` returns a :class:`Photo` whose ``pixels`` are an upright (EXIF orientation
  applied), C-contiguous ``HxWx3`` RGB array of ``uint8`` or ``uint16``. 16-bit PNG and TIFF keep
  their 16 bits (pixel data is decoded by OpenCV, metadata by Pillow, because Pillow cannot hold
  16-bit RGB). Grayscale, palette and CMYK inputs are converted to RGB and the conversion is
  recorded in ``Photo.notes``. Truncated, corrupt, too-small, too-large, floating-point and
  unsupported files are rejected with an :class:`~engine.errors.ImageError` naming the file.
* :func:`save_image` writes JPEG, PNG, TIFF or WebP with EXIF (orientation reset to 1) and the
  ICC profile embedded in every format, alpha re-attached where the format has one, 16 bits kept
  for PNG and TIFF, and always atomically (temporary file in the same folder, fsync, rename).
  16-bit PNG is encoded by OpenCV and the ``iCCP``/``eXIf`` chunks are inserted into the stream;
  TIFF (8 and 16 bit) is written by a small baseline writer (Deflate + horizontal predictor,
  strips compressed in threads) whose tag directory, EXIF sub-IFDs included, is serialised by
  Pillow's ``ImageFileDirectory_v2``.
* :func:`load_mask` / :func:`save_mask` read and write soft masks as grayscale PNG.

Importing this module sets ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = False`` (truncated files must
fail, never load with a grey bottom) and ``PIL.Image.MAX_IMAGE_PIXELS`` to :data:`MAX_PIXELS`.
"""
from __future__ import annotations

import io
import os
import secrets
import struct
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageCms, ImageFile, UnidentifiedImageError
from PIL.ExifTags import IFD
from PIL.TiffImagePlugin import ImageFileDirectory_v2

from engine.errors import ImageError

__all__ = [
    "FORMATS",
    "MAX_PIXELS",
    "MIN_SIDE",
    "SUPPORTED_SUFFIXES",
    "Photo",
    "apply_orientation",
    "atomic_write_bytes",
    "from_float",
    "is_supported",
    "load_image",
    "load_mask",
    "save_image",
    "save_mask",
    "save_photo",
    "to_float",
]

#: Smallest accepted photo side in pixels.
MIN_SIDE = 64
#: Largest accepted photo (width * height). 60 MP cameras are the target; 200 MP leaves headroom
#: (e.g. stitched or pixel-shift files) without accepting decompression bombs.
MAX_PIXELS = 200_000_000
#: Formats this module reads and writes (Pillow's names).
FORMATS = ("JPEG", "PNG", "TIFF", "WEBP")
#: File suffixes accepted by the batch command (compare lower-cased).
SUPPORTED_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp"})

_SUFFIX_FORMAT = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
}
_FORMAT_ALIASES = {"JPG": "JPEG", "JPEG": "JPEG", "PNG": "PNG", "TIF": "TIFF", "TIFF": "TIFF", "WEBP": "WEBP"}
# Pillow reports some camera JPEGs (multi-picture format) as MPO.
_PILLOW_FORMAT = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "TIFF": "TIFF", "WEBP": "WEBP"}

_WEBP_MAX_SIDE = 16383
_JPEG_MAX_SIDE = 65500
_JPEG_MAX_EXIF = 65533 - 8  # APP1 payload limit, minus a little slack for Pillow's framing
_ORIENTATION = 0x0112
_MAKERNOTE = 0x927C
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# TIFF Deflate level: 1 is ~3x faster than 6 on photos for ~2-4 % larger files (OpenCV's PNG
# writer, used for PNG, also defaults to level 1).
_DEFLATE_LEVEL = 1

# TIFF tags that describe the pixel layout of a particular file (or carry large application blobs
# tied to it). They must never travel as "EXIF" from one file to another: a JPEG written with a
# TIFF's StripOffsets in its EXIF would be nonsense, and a TIFF written with them would be broken.
_LAYOUT_TAGS = frozenset(
    {
        254, 255, 256, 257, 258, 259, 262, 263, 264, 265, 266, 273, 277, 278, 279, 280, 281,
        284, 292, 293, 317, 320, 322, 323, 324, 325, 330, 338, 339, 340, 341, 347, 513, 514,
        530, 532, 700, 33723, 34377, 34675, 37724,
    }
)

ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


# --------------------------------------------------------------------------------------------
# Photo


@dataclass
class Photo:
    """A decoded photo, upright and ready for processing.

    ``pixels`` is an ``HxWx3`` RGB array (``uint8`` for 8-bit sources, ``uint16`` for 16-bit PNG
    and TIFF). ``exif`` is the source EXIF (``b"Exif\\0\\0"``-prefixed TIFF block) with the
    orientation reset to 1, because the orientation has already been applied to ``pixels``.
    ``alpha`` (``HxW``, same dtype as ``pixels``) is kept so that exports can re-attach it.
    ``notes`` lists conversions made while loading (grayscale -> RGB, CMYK -> RGB, ...).
    """

    pixels: np.ndarray
    bit_depth: int
    format: str
    exif: bytes | None = None
    icc_profile: bytes | None = None
    alpha: np.ndarray | None = None
    path: Path | None = None
    notes: list[str] = field(default_factory=list)

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
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def megapixels(self) -> float:
        return self.height * self.width / 1e6


# --------------------------------------------------------------------------------------------
# Small public helpers


def is_supported(path: str | os.PathLike[str]) -> bool:
    """True if the file name has one of :data:`SUPPORTED_SUFFIXES` (case-insensitive)."""
    return Path(path).suffix.lower() in SUPPORTED_SUFFIXES


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
# EXIF / ICC helpers


_ExifDict = dict[int, Any]
"""EXIF as a plain dict: IFD0 tags, with the EXIF/GPS sub-IFDs (and Interop) as nested dicts."""


def _clean_exif_tags(exif: Image.Exif) -> _ExifDict:
    """The tags of ``exif`` worth carrying to another file: layout tags dropped, sub-IFDs resolved
    to dicts, orientation set to 1 (the pixels are upright). Empty if nothing is left."""
    tags: _ExifDict = {}
    for key in list(exif.keys()):
        if key in _LAYOUT_TAGS:
            continue
        if key in (IFD.Exif, IFD.GPSInfo):
            sub = dict(exif.get_ifd(key))
            if key == IFD.Exif and IFD.Interop in sub and not isinstance(sub[IFD.Interop], dict):
                interop = dict(exif.get_ifd(IFD.Interop))
                if interop:
                    sub[IFD.Interop] = interop
                else:
                    del sub[IFD.Interop]
            if sub:
                tags[key] = sub
        else:
            tags[key] = exif[key]
    if tags:
        tags[_ORIENTATION] = 1
    return tags


def _exif_bytes(tags: _ExifDict | None) -> bytes | None:
    """``b"Exif\\0\\0"`` + TIFF-structured EXIF block for ``tags`` (None when empty)."""
    if not tags:
        return None
    out = Image.Exif()
    for key, value in tags.items():
        out[key] = value
    return out.tobytes()


def _exif_payload_ok(raw: bytes) -> bool:
    """Cheap structural check of an EXIF block (Pillow only warns on garbage and returns nothing)."""
    tiff = raw[6:] if raw.startswith(b"Exif\x00\x00") else raw
    if len(tiff) < 10 or tiff[:4] not in (b"II*\x00", b"MM\x00*"):
        return False
    (first_ifd,) = struct.unpack("<I" if tiff[:2] == b"II" else ">I", tiff[4:8])
    return 8 <= first_ifd and first_ifd + 2 <= len(tiff)


def _parse_exif(data: bytes | Image.Exif | None) -> _ExifDict | None:
    """Parse caller-supplied EXIF (with or without the ``Exif\\0\\0`` prefix) into clean tags."""
    if data is None:
        return None
    raw = data.tobytes() if isinstance(data, Image.Exif) else bytes(data)
    if not raw:
        return None
    if not _exif_payload_ok(raw):
        raise ImageError("The EXIF data to embed is not a valid EXIF block.")
    try:
        exif = Image.Exif()
        exif.load(raw)
        tags = _clean_exif_tags(exif)
        _exif_bytes(tags)  # fail here on unserialisable values, not inside an encoder
    except Exception as exc:  # Pillow raises a variety of types on malformed EXIF
        raise ImageError(f"The EXIF data to embed is not valid ({exc}).") from exc
    return tags or None


def _icc_colour_space(icc: bytes) -> bytes:
    return icc[16:20] if len(icc) >= 20 else b""


# --------------------------------------------------------------------------------------------
# Loading


@dataclass
class _Decoded:
    """Upright pixels in their natural layout (HxW gray or HxWx3 RGB) plus metadata."""

    pixels: np.ndarray
    alpha: np.ndarray | None
    format: str
    exif: bytes | None
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


def _open_pillow(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageError(
            f"{_name(path)} is too large to open safely (over {MAX_PIXELS / 1e6:.0f} megapixels)."
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(_unidentified_message(path)) from exc
    except OSError as exc:
        raise ImageError(f"{_name(path)} is damaged or truncated and could not be read ({exc}).") from exc


def _unidentified_message(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        # Pillow cannot even describe the layout: it is damaged, or a float/exotic TIFF.
        try:
            arr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error:
            arr = None
        if arr is not None and arr.dtype.kind == "f":
            return (
                f"{_name(path)} is a 32-bit floating-point TIFF, which is not supported; "
                "export it as an 8- or 16-bit TIFF."
            )
        return f"{_name(path)} is a damaged TIFF or uses a TIFF layout that is not supported."
    return f"{_name(path)} is not a readable JPEG, PNG, TIFF or WebP image (or it is damaged)."


def _png_header(path: Path) -> tuple[int, int]:
    """(bit depth, colour type) from a PNG's IHDR."""
    with open(path, "rb") as fh:
        head = fh.read(26)
    if len(head) < 26 or head[12:16] != b"IHDR":
        raise ImageError(f"{_name(path)} is a damaged PNG file.")
    return head[24], head[25]


def _iter_png_chunks(buf: bytes | memoryview) -> Iterator[tuple[bytes, int, int]]:
    """Yield (type, start, end) of each chunk of a PNG byte string (end excludes nothing: the
    slice ``buf[start:end]`` is the whole chunk including length, type and CRC). Stops at IEND
    or at the end of the data; a truncated chunk stops the iteration."""
    mv = memoryview(buf)
    pos = len(_PNG_SIGNATURE)
    n = len(mv)
    while pos + 12 <= n:
        (length,) = struct.unpack(">I", mv[pos : pos + 4])
        ctype = bytes(mv[pos + 4 : pos + 8])
        end = pos + 12 + length
        if end > n:
            return
        yield ctype, pos, end
        if ctype == b"IEND":
            return
        pos = end


def _png_chunk(ctype: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(ctype)) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", crc)


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


def _source_bits(im: Image.Image, fmt: str, path: Path) -> int:
    """Bits per sample of the stored data, rejecting float and 32-bit samples."""
    if im.mode in ("F", "I") and fmt != "PNG":
        kind = "floating-point" if im.mode == "F" else "32-bit integer"
        raise ImageError(
            f"{_name(path)} is a {kind} image, which is not supported; export it as 8- or 16-bit."
        )
    if fmt == "PNG":
        return _png_header(path)[0]
    if fmt == "TIFF":
        tags = im.tag_v2  # type: ignore[attr-defined]
        bits_max = max(_as_tuple(tags.get(258, 1)))
        if 3 in _as_tuple(tags.get(339, 1)):
            raise ImageError(
                f"{_name(path)} is a floating-point TIFF, which is not supported; "
                "export it as an 8- or 16-bit TIFF."
            )
        if bits_max > 16:
            raise ImageError(
                f"{_name(path)} has {bits_max}-bit samples, which is not supported; "
                "export it as an 8- or 16-bit TIFF."
            )
        if bits_max > 8:
            if tags.get(262) not in (0, 1, 2):
                raise ImageError(
                    f"{_name(path)} is a 16-bit TIFF that is not grayscale or RGB "
                    "(e.g. CMYK or Lab); convert it to RGB first."
                )
            return 16
        return 8
    return 8


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return value if isinstance(value, tuple) else (value,)


def _read_exif(im: Image.Image, notes: list[str], raw: bytes | None = None) -> tuple[int, bytes | None]:
    """(orientation, cleaned EXIF bytes) of an open Pillow image, or of ``raw`` EXIF bytes."""
    try:
        if raw is not None:
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = im.getexif()
        value = exif.get(_ORIENTATION, 1)
        data = _exif_bytes(_clean_exif_tags(exif))
    except Exception:  # malformed EXIF must not stop the photo from loading
        notes.append("The EXIF metadata is damaged and was dropped.")
        return 1, None
    try:
        orientation = int(value)
    except (TypeError, ValueError):
        orientation = 0
    if not 1 <= orientation <= 8:
        notes.append(f"Ignored an invalid EXIF orientation value ({value!r}).")
        orientation = 1
    return orientation, data


def _decode_16bit(path: Path, im: Image.Image, fmt: str, notes: list[str]) -> _Decoded:
    """16-bit PNG/TIFF: pixels via OpenCV (Pillow would drop to 8 bits), metadata via Pillow."""
    data = np.fromfile(path, dtype=np.uint8)
    raw_exif: bytes | None = None
    if fmt == "PNG":
        chunks = list(_iter_png_chunks(data.data))
        if not chunks or chunks[-1][0] != b"IEND":
            raise ImageError(f"{_name(path)} is truncated or damaged (the PNG data ends early).")
        raw_exif = im.info.get("exif")
        if raw_exif is None:  # eXIf after the image data: Pillow would decode all pixels to find it
            for ctype, start, end in chunks:
                if ctype == b"eXIf":
                    raw_exif = bytes(data[start + 8 : end - 4])
                    break
        orientation, exif = _read_exif(im, notes, raw_exif) if raw_exif else (1, None)
    else:
        orientation, exif = _read_exif(im, notes)
        # OpenCV's TIFF reader applies the Orientation tag itself (even with IMREAD_UNCHANGED);
        # neutralise it in our in-memory copy so that decoding is the same for every format.
        _tiff_set_orientation_1(data)
    icc = im.info.get("icc_profile") or None
    width, height = im.size
    if fmt == "TIFF":  # Pillow reports the already-rotated size for orientations 5-8
        width, height = int(im.tag_v2[256]), int(im.tag_v2[257])  # type: ignore[attr-defined]
    im.close()

    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    del data
    if arr is None:
        raise ImageError(f"{_name(path)} is truncated or damaged and could not be decoded.")
    if arr.dtype.kind == "f":
        raise ImageError(f"{_name(path)} is a floating-point image, which is not supported.")
    if arr.dtype not in (np.uint8, np.uint16) or arr.shape[:2] != (height, width):
        raise ImageError(f"{_name(path)} uses a pixel layout that is not supported.")
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
        raise ImageError(f"{_name(path)} has {channels} channels, which is not supported.")
    del arr
    return _finish(pixels, alpha, orientation, fmt, exif, icc, notes)


def _tiff_set_orientation_1(buf: np.ndarray) -> None:
    """Rewrite the Orientation entry of IFD0 of the TIFF bytes in ``buf`` (uint8 array) to 1."""
    raw = buf.data
    if len(raw) < 16 or bytes(raw[:2]) not in (b"II", b"MM"):
        return
    e = "<" if bytes(raw[:2]) == b"II" else ">"
    (magic,) = struct.unpack(e + "H", raw[2:4])
    if magic == 42:
        (ifd,) = struct.unpack(e + "I", raw[4:8])
        count_fmt, count_size, entry_size, value_at = "H", 2, 12, 8
    elif magic == 43:  # BigTIFF
        (ifd,) = struct.unpack(e + "Q", raw[8:16])
        count_fmt, count_size, entry_size, value_at = "Q", 8, 20, 12
    else:
        return
    if ifd + count_size > len(raw):
        return
    (count,) = struct.unpack(e + count_fmt, raw[ifd : ifd + count_size])
    for i in range(count):
        pos = ifd + count_size + i * entry_size
        if pos + entry_size > len(raw):
            return
        tag, typ = struct.unpack(e + "HH", raw[pos : pos + 4])
        if tag == _ORIENTATION and typ == 3:  # SHORT, stored inline
            buf[pos + value_at : pos + value_at + 2] = np.frombuffer(struct.pack(e + "H", 1), np.uint8)
            return


def _decode_pillow(path: Path, im: Image.Image, fmt: str, notes: list[str]) -> _Decoded:
    """8-bit images: Pillow decodes fully (truncation raises) and converts exotic modes.

    EXIF is read after loading: Pillow's TIFF loader applies the orientation itself and then
    removes the tag, so reading it afterwards never applies an orientation twice."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated files must fail, whoever changed it
    try:
        im.load()
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{_name(path)} is too large to open safely.") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        raise ImageError(f"{_name(path)} is truncated or damaged and could not be decoded ({exc}).") from exc
    orientation, exif = _read_exif(im, notes)
    icc = im.info.get("icc_profile") or None
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
        raise ImageError(f"{_name(path)} uses the {mode} colour mode, which is not supported.")

    if im is not src:
        src.close()  # free the unconverted copy before the numpy copy is made
    pixels, alpha = _pillow_to_arrays(im)
    im.close()
    return _finish(pixels, alpha, orientation, fmt, exif, icc, notes)


def _pillow_to_arrays(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
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
    if icc and _icc_colour_space(icc) == b"CMYK":
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
            out = ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
            if out is not None:
                return out, dst.tobytes()
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass
    return im.convert("RGB"), None


def _finish(
    pixels: np.ndarray,
    alpha: np.ndarray | None,
    orientation: int,
    fmt: str,
    exif: bytes | None,
    icc: bytes | None,
    notes: list[str],
) -> _Decoded:
    pixels = _owned_contiguous(apply_orientation(pixels, orientation))
    if alpha is not None:
        alpha = _owned_contiguous(apply_orientation(alpha, orientation))
    return _Decoded(pixels, alpha, fmt, exif, icc, notes)


def _owned_contiguous(arr: np.ndarray) -> np.ndarray:
    if arr.flags.c_contiguous and arr.flags.writeable:
        return arr
    return np.array(arr, order="C", copy=True)


def _decode(path: str | os.PathLike[str], min_side: int) -> _Decoded:
    path = Path(path)
    _check_readable(path)
    im = _open_pillow(path)
    try:
        fmt = _PILLOW_FORMAT.get(im.format or "")
        if fmt is None:
            raise ImageError(
                f"{_name(path)} is a {im.format or 'unknown'} image; only JPEG, PNG, TIFF and WebP are supported."
            )
        width, height = im.size
        _check_size(path, width, height, min_side)
        notes: list[str] = []
        if _source_bits(im, fmt, path) == 16:
            return _decode_16bit(path, im, fmt, notes)
        return _decode_pillow(path, im, fmt, notes)
    except MemoryError as exc:
        raise ImageError(f"Not enough memory to open {_name(path)}.") from exc
    finally:
        im.close()


def load_image(path: str | os.PathLike[str]) -> Photo:
    """Read a JPEG, PNG, TIFF or WebP photo as an upright RGB :class:`Photo`.

    Raises :class:`~engine.errors.ImageError` (one sentence naming the file) for missing,
    unreadable, truncated, corrupt, unsupported, too small (< :data:`MIN_SIDE`), too large
    (> :data:`MAX_PIXELS`) or floating-point images.
    """
    path = Path(path)
    dec = _decode(path, MIN_SIDE)
    pixels, alpha, icc = dec.pixels, dec.alpha, dec.icc
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
        dec.notes.append("Converted the grayscale image to RGB.")
    if icc is not None and _icc_colour_space(icc) != b"RGB ":
        # A grayscale (or other non-RGB) profile does not describe the RGB pixels we return.
        icc = None
        dec.notes.append("Dropped the embedded non-RGB colour profile after converting to RGB.")
    bit_depth = 16 if pixels.dtype == np.uint16 else 8
    return Photo(
        pixels=pixels,
        bit_depth=bit_depth,
        format=dec.format,
        exif=dec.exif,
        icc_profile=icc,
        alpha=alpha,
        path=path,
        notes=dec.notes,
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
    never written. Returns ``path``.
    """
    parts = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
    path = Path(path)
    folder = _check_target(path, protect)
    tmp = folder / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
                for part in parts:
                    fh.write(part)
                fh.flush()
                os.fsync(fh.fileno())
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
            raise ImageError(f"Cannot save as {format!r}; choose JPEG, PNG, TIFF or WebP.")
        return fmt
    fmt = _SUFFIX_FORMAT.get(path.suffix.lower())
    if fmt is None:
        raise ImageError(
            f"Cannot tell the format of {path.name!r} from its extension; use .jpg, .png, .tif or .webp."
        )
    return fmt


def save_image(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    *,
    exif: bytes | Image.Exif | None = None,
    icc_profile: bytes | None = None,
    alpha: np.ndarray | None = None,
    quality: int = 95,
    format: str | None = None,
    bit_depth: int | None = None,
    protect: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Encode an ``HxWx3`` RGB ``uint8``/``uint16`` image and write it atomically.

    * ``format``: "JPEG", "PNG", "TIFF" or "WEBP" (case-insensitive, "JPG"/"TIF" accepted);
      default from the file suffix.
    * ``bit_depth``: 8 or 16 for PNG/TIFF (default: 16 for ``uint16`` input, 8 for ``uint8``).
      JPEG and WebP are always 8-bit: ``uint16`` data is converted with rounding (``v / 257`` to
      the nearest integer); 8 -> 16 bit multiplies by 257 (exact).
    * ``exif``: embedded in every format; layout tags are dropped and the orientation is
      written as 1 because ``pixels`` are upright. ``icc_profile``: embedded in every format.
    * ``alpha``: ``HxW`` (any of uint8/uint16); re-attached for PNG, TIFF and WebP, dropped for JPEG.
    * ``quality``: 1..100 for JPEG and WebP (JPEG uses 4:4:4 chroma at quality >= 90).
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

    bits = bit_depth if bit_depth is not None else (16 if pixels.dtype == np.uint16 else 8)
    if fmt in ("JPEG", "WEBP"):
        bits = 8
    exif_tags = _parse_exif(exif)
    icc = bytes(icc_profile) if icc_profile else None

    try:
        rgb = _convert_depth(pixels, bits)
        a = _convert_depth(alpha, bits) if alpha is not None else None
        if fmt == "JPEG":
            data = _encode_jpeg(rgb, exif_tags, icc, int(quality), path)
        elif fmt == "WEBP":
            data = _encode_webp(rgb, a, exif_tags, icc, int(quality), path)
        elif fmt == "PNG":
            data = _encode_png(rgb, a, exif_tags, icc)
        else:
            data = _encode_tiff(rgb, a, exif_tags, icc)
    except ImageError:
        raise
    except MemoryError as exc:
        raise ImageError(f"Not enough memory to encode {path.name}.") from exc
    except (OSError, ValueError, cv2.error) as exc:
        raise ImageError(f"Could not encode {path.name} as {fmt}: {exc}.") from exc
    return atomic_write_bytes(path, data, protect=protect)


def save_photo(
    path: str | os.PathLike[str], photo: Photo, pixels: np.ndarray | None = None, **kwargs: Any
) -> Path:
    """:func:`save_image` with ``photo``'s EXIF, ICC profile and alpha (``pixels`` defaults to
    ``photo.pixels``; the input ``photo.path`` is always protected). Extra keyword arguments go
    to :func:`save_image`."""
    protect = list(kwargs.pop("protect", ()))
    if photo.path is not None:
        protect.append(photo.path)
    kwargs.setdefault("exif", photo.exif)
    kwargs.setdefault("icc_profile", photo.icc_profile)
    kwargs.setdefault("alpha", photo.alpha)
    return save_image(path, photo.pixels if pixels is None else pixels, protect=protect, **kwargs)


def _encode_jpeg(rgb: np.ndarray, exif: _ExifDict | None, icc: bytes | None, quality: int, path: Path) -> bytes:
    if max(rgb.shape[:2]) > _JPEG_MAX_SIDE:
        raise ImageError(f"Cannot save {path.name}: JPEG is limited to {_JPEG_MAX_SIDE} pixels per side.")
    params: dict[str, Any] = {"quality": quality, "subsampling": 0 if quality >= 90 else 2}
    if exif is not None:
        raw = _exif_bytes(exif) or b""
        if len(raw) > _JPEG_MAX_EXIF and IFD.Exif in exif:
            exif[IFD.Exif].pop(_MAKERNOTE, None)  # camera maker notes are the usual bulk
            raw = _exif_bytes(exif) or b""
        if len(raw) > _JPEG_MAX_EXIF:
            raise ImageError(f"Cannot save {path.name}: the EXIF data is too large for a JPEG file.")
        params["exif"] = raw
    if icc:
        params["icc_profile"] = icc
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, "JPEG", **params)  # mode RGB
    return buf.getvalue()


def _encode_webp(
    rgb: np.ndarray, alpha: np.ndarray | None, exif: _ExifDict | None, icc: bytes | None, quality: int, path: Path
) -> bytes:
    if max(rgb.shape[:2]) > _WEBP_MAX_SIDE:
        raise ImageError(
            f"Cannot save {path.name}: WebP is limited to {_WEBP_MAX_SIDE} pixels per side; "
            "save as JPEG, PNG or TIFF instead."
        )
    if alpha is not None:
        im = Image.fromarray(np.dstack([rgb, alpha]))  # RGBA
    else:
        im = Image.fromarray(np.ascontiguousarray(rgb))  # RGB
    params: dict[str, Any] = {"quality": quality, "method": 4, "exact": alpha is not None}
    if exif is not None:
        params["exif"] = _exif_bytes(exif)
    if icc:
        params["icc_profile"] = icc
    buf = io.BytesIO()
    im.save(buf, "WEBP", **params)
    return buf.getvalue()


def _encode_png(
    rgb: np.ndarray, alpha: np.ndarray | None, exif: _ExifDict | None, icc: bytes | None
) -> list[_Buffer]:
    """PNG (8 or 16 bit) via OpenCV, then iCCP/eXIf chunks inserted after IHDR."""
    if alpha is not None:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
        bgr[..., 3] = alpha
    else:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, enc = cv2.imencode(".png", bgr)
    del bgr
    if not ok:
        raise ImageError("OpenCV could not encode the PNG image.")
    return _png_with_metadata(enc.data, exif, icc)


def _encode_gray_png(gray: np.ndarray) -> bytes:
    ok, enc = cv2.imencode(".png", gray)
    if not ok:
        raise ImageError("OpenCV could not encode the PNG mask.")
    return enc.tobytes()


def _png_with_metadata(png: bytes | memoryview, exif: _ExifDict | None, icc: bytes | None) -> list[_Buffer]:
    """The chunks of ``png`` with iCCP/eXIf inserted after IHDR (as buffers, to avoid a copy)."""
    extra: list[bytes] = []
    if icc:
        extra.append(_png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc)))
    raw = _exif_bytes(exif)
    if raw:
        extra.append(_png_chunk(b"eXIf", raw[6:]))  # eXIf holds the TIFF block without "Exif\0\0"
    mv = memoryview(png)
    if not extra:
        return [mv]
    parts: list[_Buffer] = [_PNG_SIGNATURE]
    for ctype, start, end in _iter_png_chunks(mv):
        if icc and ctype in (b"iCCP", b"sRGB"):
            continue  # a profile we embed replaces any colour-space chunk the encoder wrote
        if raw and ctype == b"eXIf":
            continue
        parts.append(mv[start:end])
        if ctype == b"IHDR":
            parts.extend(extra)
    return parts


def _tiff_strip(block: np.ndarray) -> bytes:
    """Horizontal-predictor (TIFF Predictor=2) + Deflate for one strip of rows."""
    diff = block.copy()
    diff[:, 1:] -= block[:, :-1]  # unsigned wrap-around is exactly what the predictor specifies
    return zlib.compress(diff.astype(diff.dtype.newbyteorder("<"), copy=False).tobytes(), _DEFLATE_LEVEL)


def _encode_tiff(
    rgb: np.ndarray, alpha: np.ndarray | None, exif: _ExifDict | None, icc: bytes | None
) -> list[_Buffer]:
    """Baseline little-endian RGB(A) TIFF, 8 or 16 bit, Adobe Deflate with horizontal predictor.

    Layout: header, IFD (with EXIF/GPS sub-IFDs and the ICC profile, serialised by Pillow), then
    the strip data. Pillow's IFD writer adds the end-of-IFD offset to StripOffsets, so the offsets
    given here are relative to the first strip.
    """
    arr = np.dstack([rgb, alpha]) if alpha is not None else rgb
    h, w, c = arr.shape
    bits = arr.dtype.itemsize * 8
    rows = max(1, min(h, (1 << 20) // (w * c * arr.dtype.itemsize)))
    blocks = [arr[y : y + rows] for y in range(0, h, rows)]
    workers = max(1, min(4, os.cpu_count() or 1))
    if workers > 1 and len(blocks) > 1:
        with ThreadPoolExecutor(workers) as pool:  # zlib releases the GIL
            strips = list(pool.map(_tiff_strip, blocks))
    else:
        strips = [_tiff_strip(b) for b in blocks]
    del arr, blocks

    ifd = ImageFileDirectory_v2(prefix=b"II")
    for key, value in (exif or {}).items():
        if key not in _LAYOUT_TAGS:  # never let EXIF override the layout written below
            ifd[key] = value
    offsets, pos = [], 0
    for s in strips:
        offsets.append(pos)
        pos += len(s)
    long_, short, undefined = 4, 3, 7
    layout: list[tuple[int, int, Any]] = [
        (256, long_, w),
        (257, long_, h),
        (258, short, (bits,) * c),
        (259, short, 8),  # Adobe Deflate
        (262, short, 2),  # RGB
        (273, long_, tuple(offsets)),  # relative; Pillow adds the end-of-IFD offset
        (277, short, c),
        (278, long_, rows),
        (279, long_, tuple(len(s) for s in strips)),
        (284, short, 1),  # chunky
        (317, short, 2),  # horizontal differencing
        (339, short, (1,) * c),  # unsigned integer samples
    ]
    if c == 4:
        layout.append((338, short, 2))  # unassociated alpha
    if icc:
        layout.append((34675, undefined, icc))
    for tag, typ, value in layout:
        ifd.tagtype[tag] = typ
        ifd[tag] = value
    header = b"II*\x00" + struct.pack("<I", 8)
    return [header, ifd.tobytes(8), *strips]


# --------------------------------------------------------------------------------------------
# Masks


def load_mask(path: str | os.PathLike[str], shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a soft mask (8- or 16-bit grayscale PNG; other supported formats work too) as an
    ``HxW`` ``float32`` array in [0, 1]. RGB(A) masks collapse to their luminance (alpha is
    ignored). EXIF orientation is applied. ``shape=(H, W)`` of the photo: a mismatch raises."""
    path = Path(path)
    dec = _decode(path, 1)
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
    return atomic_write_bytes(path, _encode_gray_png(np.ascontiguousarray(out)), protect=protect)
