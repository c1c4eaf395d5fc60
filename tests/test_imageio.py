"""Tests for engine.imageio: every image is generated here, in tmp_path."""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from engine import imageio
from engine.errors import ImageError
from engine.imageio import (
    MIN_SIDE,
    Photo,
    from_float,
    is_supported,
    load_image,
    load_mask,
    save_image,
    save_mask,
    save_photo,
    to_float,
)

ORIENTATION = 0x0112
EXIF_IFD = 0x8769
U8, U16 = np.uint8, np.uint16


# ----------------------------------------------------------------------------- helpers


def noise(h: int = 70, w: int = 96, dtype=np.uint8, seed: int = 0, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = 255 if dtype == np.uint8 else 65535
    shape = (h, w, channels) if channels > 1 else (h, w)
    return rng.integers(0, top + 1, shape, dtype=dtype)


def blocks(seed: int = 1) -> np.ndarray:
    """An asymmetric 64x96 image of flat 16px blocks: survives JPEG well enough to compare."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    return np.kron(grid, np.ones((16, 16, 1), dtype=np.uint8))


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def camera_exif(orientation: int | None = None) -> Image.Exif:
    exif = Image.Exif()
    exif[271] = "Nikon"
    exif[272] = "Z 9"
    exif[306] = "2024:05:06 07:08:09"
    if orientation is not None:
        exif[ORIENTATION] = orientation
    sub = exif.get_ifd(EXIF_IFD)
    sub[0x9003] = "2024:05:06 07:08:09"  # DateTimeOriginal
    sub[0x8827] = 200  # ISO
    return exif


def parse_exif(data: bytes | None) -> Image.Exif:
    assert data is not None
    exif = Image.Exif()
    exif.load(data)
    return exif


def expected_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """What a viewer shows for a stored image ``a`` tagged with ``orientation`` (EXIF 2.3)."""
    return {
        1: a,
        2: a[:, ::-1],
        3: a[::-1, ::-1],
        4: a[::-1],
        5: a.swapaxes(0, 1),
        6: np.rot90(a, -1),
        7: np.rot90(a, 1)[:, ::-1],
        8: np.rot90(a, 1),
    }[orientation]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.startswith("."))


# ----------------------------------------------------------------------------- basics


def test_supported_suffixes_case_insensitive():
    for name in ["a.jpg", "a.JPEG", "b.png", "c.TIF", "d.tiff", "e.WebP"]:
        assert is_supported(name)
    for name in ["a.bmp", "a.gif", "a", "a.jpg.txt", "a.heic"]:
        assert not is_supported(name)


def test_to_float_and_from_float_round_trip():
    a8 = noise(dtype=np.uint8)
    f8 = to_float(a8)
    assert f8.dtype == np.float32 and f8.min() >= 0 and f8.max() <= 1
    assert np.array_equal(from_float(f8, np.uint8), a8)
    a16 = noise(dtype=np.uint16)
    assert np.array_equal(from_float(to_float(a16), np.uint16), a16)
    wild = np.array([-0.5, 0.0, 0.4 / 255, 0.6 / 255, 1.0, 7.0, np.nan], dtype=np.float64)
    assert from_float(wild, np.uint8).tolist() == [0, 0, 0, 1, 255, 255, 0]
    with pytest.raises(ValueError):
        from_float(wild, np.int32)


def test_photo_properties_and_validation():
    photo = Photo(pixels=noise(80, 100), bit_depth=8, format="PNG")
    assert (photo.height, photo.width) == (80, 100)
    assert photo.megapixels == pytest.approx(0.008)
    with pytest.raises(ValueError):
        Photo(pixels=noise(80, 100), bit_depth=16, format="PNG")


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix,exact", [(".png", True), (".tif", True), (".jpg", False), (".webp", False)])
def test_round_trip_8bit(tmp_path, suffix, exact):
    src = blocks() if not exact else noise()
    out = save_image(tmp_path / f"x{suffix}", src)
    photo = load_image(out)
    assert photo.pixels.dtype == np.uint8 and photo.bit_depth == 8
    assert photo.pixels.shape == src.shape and photo.pixels.flags.c_contiguous
    assert photo.format == {".png": "PNG", ".tif": "TIFF", ".jpg": "JPEG", ".webp": "WEBP"}[suffix]
    assert photo.path == out and photo.alpha is None and photo.notes == []
    if exact:
        assert np.array_equal(photo.pixels, src)
    else:  # lossy: close to the source (WebP always subsamples chroma, hence the looser bound)
        assert np.abs(photo.pixels.astype(int) - src).mean() < (3 if suffix == ".jpg" else 8)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_round_trip_16bit_exact(tmp_path, suffix):
    src = noise(dtype=np.uint16)
    photo = load_image(save_image(tmp_path / f"x{suffix}", src))
    assert photo.pixels.dtype == np.uint16 and photo.bit_depth == 16
    assert np.array_equal(photo.pixels, src)
    assert photo.pixels.flags.c_contiguous and photo.pixels.flags.writeable


def test_16bit_tiff_with_many_strips_and_unicode_name(tmp_path):
    src = noise(300, 2000, np.uint16, seed=3)  # ~1 MB strips -> several strips
    path = tmp_path / "Porträt ü.tif"
    save_image(path, src, alpha=src[..., 1])
    with Image.open(path) as im:
        assert len(im.tag_v2[273]) > 1  # really multi-strip
    photo = load_image(path)
    assert np.array_equal(photo.pixels, src)
    assert np.array_equal(photo.alpha, src[..., 1])
    # An independent decoder (OpenCV/libtiff, BGRA order) agrees.
    raw = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(raw[..., [2, 1, 0]], src)


def test_8bit_tiff_written_by_us_is_read_by_pillow_directly(tmp_path):
    src = noise(200, 1500, seed=4)
    path = save_image(tmp_path / "x.tiff", src)
    with Image.open(path) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), src)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg", ".webp"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_non_contiguous_views_are_saved_correctly(tmp_path, suffix, dtype):
    lossless = suffix in (".png", ".tif")
    if lossless:
        base = noise(96, 140, dtype, seed=8)
        view = base[::-1, ::2]  # negative and stepped strides
    else:
        base = blocks().astype(dtype) * (257 if dtype == np.uint16 else 1)
        view = base[::-1]
    alpha = view[..., 0]  # a strided view too
    photo = load_image(save_image(tmp_path / f"v{suffix}", view, alpha=alpha))
    if lossless:
        assert np.array_equal(photo.pixels, view) and np.array_equal(photo.alpha, alpha)
    else:
        want = blocks()[::-1]
        assert np.abs(photo.pixels.astype(int) - want).mean() < 8


def test_16bit_to_8bit_rounds_and_8bit_to_16bit_scales(tmp_path):
    src = np.tile(np.arange(0, 65536, 8, dtype=np.uint16).reshape(64, 128, 1), (1, 1, 3))
    src[0, :4, 0] = [128, 129, 385, 65535]
    photo = load_image(save_image(tmp_path / "down.png", src, bit_depth=8))
    assert photo.pixels.dtype == np.uint8
    expected = ((src.astype(np.uint32) + 128) // 257).astype(np.uint8)
    assert np.array_equal(photo.pixels, expected)
    assert photo.pixels[0, :4, 0].tolist() == [0, 1, 1, 255]
    up = load_image(save_image(tmp_path / "up.tif", noise(), bit_depth=16))
    assert up.pixels.dtype == np.uint16
    assert np.array_equal(up.pixels, noise().astype(np.uint16) * 257)
    jpg = load_image(save_image(tmp_path / "x.jpg", blocks().astype(np.uint16) * 257))
    assert jpg.bit_depth == 8 and np.abs(jpg.pixels.astype(int) - blocks()).mean() < 4


# ----------------------------------------------------------------------------- metadata


@pytest.mark.parametrize(
    "suffix,dtype",
    [(".jpg", U8), (".png", U8), (".png", U16), (".tif", U8), (".tif", U16), (".webp", U8)],
)
def test_exif_and_icc_survive(tmp_path, suffix, dtype):
    icc = srgb_icc()
    src = noise(dtype=dtype)
    # Orientation 6 in the supplied EXIF must be written as 1: the pixels we save are upright.
    path = save_image(tmp_path / f"m{suffix}", src, exif=camera_exif(6).tobytes(), icc_profile=icc)
    photo = load_image(path)
    assert photo.icc_profile == icc
    exif = parse_exif(photo.exif)
    assert exif[271] == "Nikon" and exif[272] == "Z 9" and exif[306] == "2024:05:06 07:08:09"
    assert exif[ORIENTATION] == 1
    sub = exif.get_ifd(EXIF_IFD)
    assert sub[0x9003] == "2024:05:06 07:08:09" and sub[0x8827] == 200
    assert photo.pixels.shape == src.shape  # not rotated on the way back
    # Pillow, an independent reader, sees the same metadata in the file.
    with Image.open(path) as im:
        assert im.info.get("icc_profile") == icc
        assert im.getexif()[272] == "Z 9"


def test_exif_without_prefix_and_save_photo_keeps_metadata(tmp_path):
    icc = srgb_icc()
    raw = camera_exif().tobytes()
    assert raw.startswith(b"Exif\x00\x00")
    first = load_image(save_image(tmp_path / "a.png", noise(), exif=raw[6:], icc_profile=icc, alpha=noise()[..., 0]))
    out = save_photo(tmp_path / "b.tif", first, pixels=first.pixels[::-1].copy())
    second = load_image(out)
    assert second.icc_profile == icc and parse_exif(second.exif)[271] == "Nikon"
    assert np.array_equal(second.alpha, first.alpha)
    assert np.array_equal(second.pixels, first.pixels[::-1])
    with pytest.raises(ImageError, match="overwrite"):
        save_photo(first.path, first)


def test_tiff_layout_tags_do_not_leak_into_exif(tmp_path):
    path = tmp_path / "pillow.tif"
    Image.fromarray(noise()).save(path, exif=camera_exif(), compression="tiff_lzw")
    photo = load_image(path)
    exif = parse_exif(photo.exif)
    assert exif[271] == "Nikon"
    for layout_tag in (256, 257, 258, 259, 273, 279):
        assert layout_tag not in exif
    # ...so it can be carried into a JPEG and back.
    out = load_image(save_image(tmp_path / "o.jpg", blocks(), exif=photo.exif))
    assert parse_exif(out.exif)[272] == "Z 9"


def test_invalid_exif_to_embed_is_a_clear_error(tmp_path):
    with pytest.raises(ImageError, match="EXIF"):
        save_image(tmp_path / "x.jpg", blocks(), exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f")
    assert list(tmp_path.iterdir()) == []


def test_grayscale_profile_is_dropped_after_rgb_conversion(tmp_path):
    gray_icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()  # non-RGB profile
    path = tmp_path / "g.png"
    Image.fromarray(noise(channels=1)).save(path, icc_profile=gray_icc)
    photo = load_image(path)
    assert photo.icc_profile is None
    assert any("grayscale" in n for n in photo.notes)
    assert np.array_equal(photo.pixels[..., 0], noise(channels=1))
    assert np.array_equal(photo.pixels[..., 0], photo.pixels[..., 2])


# ----------------------------------------------------------------------------- orientation


def _write_oriented(path: Path, stored: np.ndarray, orientation: int) -> None:
    exif = camera_exif(orientation)
    fmt = path.suffix.lower()
    if stored.dtype == np.uint16 or fmt == ".tiff":  # our own encoders (Pillow: no 16-bit RGB)
        tags = {271: "Nikon", 272: "Z 9", ORIENTATION: orientation}  # raw tags: orientation kept
        encode = imageio._encode_png if fmt == ".png" else imageio._encode_tiff
        path.write_bytes(b"".join(encode(stored, None, tags, None)))
    elif fmt == ".jpg":
        Image.fromarray(stored).save(path, quality=95, subsampling=0, exif=exif)
    elif fmt == ".webp":
        Image.fromarray(stored).save(path, lossless=True, exif=exif)
    else:
        Image.fromarray(stored).save(path, exif=exif)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(
    "suffix,dtype",
    [
        (".png", np.uint8),
        (".tif", np.uint8),  # Pillow's uncompressed TIFF
        (".tiff", np.uint8),  # our Deflate TIFF (Pillow decodes it through libtiff)
        (".webp", np.uint8),
        (".jpg", np.uint8),
        (".png", np.uint16),
        (".tif", np.uint16),
    ],
)
def test_exif_orientation(tmp_path, orientation, suffix, dtype):
    stored = blocks() if suffix == ".jpg" else noise(64, 96, dtype, seed=orientation)
    path = tmp_path / f"o{orientation}{suffix}"
    _write_oriented(path, stored, orientation)
    photo = load_image(path)
    want = expected_orientation(stored, orientation)
    assert photo.pixels.shape == want.shape
    if suffix == ".jpg":
        assert np.abs(photo.pixels.astype(int) - want).mean() < 4
    else:
        assert np.array_equal(photo.pixels, want)
    assert photo.pixels.flags.c_contiguous and photo.pixels.flags.writeable
    assert parse_exif(photo.exif)[ORIENTATION] == 1
    if dtype == np.uint8 and suffix != ".jpg":
        # Pillow's own exif_transpose agrees with the numpy expectation.
        with Image.open(path) as im:
            assert np.array_equal(np.asarray(ImageOps.exif_transpose(im).convert("RGB")), want)


def test_orientation_applies_to_alpha(tmp_path):
    rgba = noise(64, 96, channels=4, seed=9)
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path, exif=camera_exif(8))
    photo = load_image(path)
    assert np.array_equal(photo.pixels, np.rot90(rgba[..., :3], 1))
    assert np.array_equal(photo.alpha, np.rot90(rgba[..., 3], 1))


# ----------------------------------------------------------------------------- alpha and colour modes


@pytest.mark.parametrize("suffix,dtype", [(".png", U8), (".png", U16), (".tif", U8), (".tif", U16), (".webp", U8)])
def test_alpha_kept(tmp_path, suffix, dtype):
    src = noise(dtype=dtype)
    alpha = noise(dtype=dtype, channels=1, seed=5)
    photo = load_image(save_image(tmp_path / f"a{suffix}", src, alpha=alpha, quality=100))
    assert photo.alpha is not None and photo.alpha.dtype == dtype
    if suffix == ".webp":
        assert np.array_equal(photo.alpha, alpha)  # WebP alpha is lossless
    else:
        assert np.array_equal(photo.alpha, alpha) and np.array_equal(photo.pixels, src)


def test_alpha_dropped_for_jpeg(tmp_path):
    photo = load_image(save_image(tmp_path / "a.jpg", blocks(), alpha=np.zeros((64, 96), np.uint8)))
    assert photo.alpha is None


def test_grayscale_palette_and_cmyk_become_rgb(tmp_path):
    gray16 = noise(dtype=np.uint16, channels=1)
    cv2.imwrite(str(tmp_path / "g16.png"), gray16)
    photo = load_image(tmp_path / "g16.png")
    assert photo.pixels.dtype == np.uint16 and photo.pixels.shape == (*gray16.shape, 3)
    assert all(np.array_equal(photo.pixels[..., c], gray16) for c in range(3))
    assert any("grayscale" in n for n in photo.notes)

    cv2.imwrite(str(tmp_path / "g16.tif"), gray16)
    assert np.array_equal(load_image(tmp_path / "g16.tif").pixels[..., 1], gray16)

    pal = Image.fromarray(blocks()).quantize(16)
    pal.save(tmp_path / "p.png")
    photo = load_image(tmp_path / "p.png")
    assert photo.pixels.shape == (64, 96, 3) and any("palette" in n for n in photo.notes)
    assert np.array_equal(photo.pixels, np.asarray(pal.convert("RGB")))

    Image.fromarray(blocks()).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    photo = load_image(tmp_path / "c.jpg")
    assert photo.pixels.shape == (64, 96, 3) and photo.format == "JPEG"
    assert any("CMYK" in n for n in photo.notes)
    assert np.abs(photo.pixels.astype(int) - blocks()).mean() < 12


# ----------------------------------------------------------------------------- rejection


def _assert_clear(exc: pytest.ExceptionInfo, name: str) -> None:
    msg = str(exc.value)
    assert name in msg and msg.endswith(".") and "\n" not in msg


@pytest.mark.parametrize("suffix,dtype", [(".jpg", U8), (".png", U8), (".png", U16), (".tif", U16), (".webp", U8)])
def test_truncated_files_rejected(tmp_path, suffix, dtype):
    src = noise(300, 400, dtype)
    good = save_image(tmp_path / f"good{suffix}", src)
    data = good.read_bytes()
    bad = tmp_path / f"cut{suffix}"
    bad.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageError) as exc:
        load_image(bad)
    _assert_clear(exc, bad.name)


def test_not_an_image_and_missing_and_folder(tmp_path):
    bad = tmp_path / "random.jpg"
    bad.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(ImageError) as exc:
        load_image(bad)
    _assert_clear(exc, "random.jpg")
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError):
        load_image(empty)


def test_unsupported_format_rejected(tmp_path):
    Image.fromarray(noise()).save(tmp_path / "x.bmp")
    with pytest.raises(ImageError, match="BMP") as exc:
        load_image(tmp_path / "x.bmp")
    _assert_clear(exc, "x.bmp")
    with pytest.raises(ImageError, match="extension"):
        save_image(tmp_path / "y.bmp", noise())
    with pytest.raises(ImageError, match="GIF"):
        save_image(tmp_path / "y.png", noise(), format="GIF")


@pytest.mark.parametrize("h,w", [(MIN_SIDE - 1, 200), (200, 10)])
def test_too_small_rejected(tmp_path, h, w):
    path = save_image(tmp_path / "tiny.png", noise(h, w))
    with pytest.raises(ImageError, match="at least 64") as exc:
        load_image(path)
    _assert_clear(exc, "tiny.png")


def test_float_tiffs_rejected(tmp_path):
    cv2.imwrite(str(tmp_path / "f3.tif"), noise().astype(np.float32) / 255)
    cv2.imwrite(str(tmp_path / "f1.tif"), noise(channels=1).astype(np.float32) / 255)
    for name in ("f3.tif", "f1.tif"):
        with pytest.raises(ImageError, match="floating-point") as exc:
            load_image(tmp_path / name)
        _assert_clear(exc, name)


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_pixel_limits(tmp_path, recwarn):
    # A decompression bomb (900 MP header) and a merely too-large one (225 MP) are rejected.
    for w, h in [(30000, 30000), (15000, 15000)]:
        path = tmp_path / f"big{w}.png"
        path.write_bytes(_png_header_only(w, h))
        with pytest.raises(ImageError, match="megapixels") as exc:
            load_image(path)
        _assert_clear(exc, path.name)
    # A 60 MP header passes the size checks (and then fails only because there is no pixel data).
    path = tmp_path / "sixty.png"
    path.write_bytes(_png_header_only(9504, 6336))
    with pytest.raises(ImageError) as exc:
        load_image(path)
    assert "megapixels" not in str(exc.value)


def test_60_megapixel_photo_loads(tmp_path):
    h, w = 6336, 9504
    gray = np.zeros((h, w), np.uint8)
    gray[::97, :] = 200
    ok, enc = cv2.imencode(".png", gray)
    path = tmp_path / "sixty.png"
    path.write_bytes(enc.tobytes())
    del gray
    photo = load_image(path)
    assert photo.pixels.shape == (h, w, 3) and photo.megapixels == pytest.approx(60.2, abs=0.1)
    assert photo.pixels[97, 5, 2] == 200 and photo.pixels[98, 5, 0] == 0


# ----------------------------------------------------------------------------- atomic writes


def test_encoder_failure_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = save_image(tmp_path / "out.png", noise(seed=1))
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("encoder exploded")

    monkeypatch.setattr(imageio, "_encode_png", boom)
    with pytest.raises(ImageError, match="out.png"):
        save_image(path, noise(seed=2))
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = save_image(tmp_path / "out.jpg", blocks())
    before = path.read_bytes()

    def fail_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(imageio.os, "replace", fail_replace)
    with pytest.raises(ImageError, match="No space left"):
        save_image(path, blocks(seed=7))
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []

    monkeypatch.undo()

    def fail_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(imageio.os, "fsync", fail_fsync)
    with pytest.raises(ImageError):
        imageio.atomic_write_bytes(path, b"new content")
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_atomic_write_bytes_replaces_and_checks_folder(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    assert imageio.atomic_write_bytes(target, b"new") == target
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
    with pytest.raises(ImageError, match="does not exist"):
        imageio.atomic_write_bytes(tmp_path / "missing" / "a.bin", b"x")


def test_protect_refuses_to_overwrite_input(tmp_path):
    src = save_image(tmp_path / "input.jpg", blocks())
    before = src.read_bytes()
    photo = load_image(src)
    with pytest.raises(ImageError, match="overwrite") as exc:
        save_image(src, photo.pixels, protect=[src])
    _assert_clear(exc, "input.jpg")
    # Same file reached through a different spelling of the path.
    other = tmp_path / "sub" / ".." / "input.jpg"
    (tmp_path / "sub").mkdir()
    with pytest.raises(ImageError, match="overwrite"):
        save_image(other, photo.pixels, protect=[src])
    if hasattr(os, "symlink"):
        link = tmp_path / "link.jpg"
        os.symlink(src, link)
        with pytest.raises(ImageError, match="overwrite"):
            save_image(link, photo.pixels, protect=[src])
    with pytest.raises(ImageError, match="overwrite"):
        save_mask(src.with_suffix(".png"), np.zeros((64, 96)), protect=[src.with_suffix(".png")])
    assert src.read_bytes() == before
    save_image(tmp_path / "output.jpg", photo.pixels, protect=[src])  # other names are fine


def test_save_rejects_bad_arrays(tmp_path):
    with pytest.raises(ImageError, match="HxWx3"):
        save_image(tmp_path / "x.png", np.zeros((64, 64), np.uint8))
    with pytest.raises(ImageError, match="from_float"):
        save_image(tmp_path / "x.png", np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ImageError, match="alpha"):
        save_image(tmp_path / "x.png", noise(), alpha=np.zeros((3, 3), np.uint8))
    with pytest.raises(ImageError, match="quality"):
        save_image(tmp_path / "x.jpg", noise(), quality=0)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_mask_round_trip(tmp_path, bit_depth):
    rng = np.random.default_rng(bit_depth)
    mask = rng.random((70, 90)).astype(np.float32)
    mask[0, 0], mask[0, 1] = 0.0, 1.0
    path = save_mask(tmp_path / "m.png", mask, bit_depth=bit_depth)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.ndim == 2 and raw.dtype == (np.uint8 if bit_depth == 8 else np.uint16)
    assert raw[0, 0] == 0 and raw[0, 1] == (255 if bit_depth == 8 else 65535)
    back = load_mask(path, shape=(70, 90))
    assert back.dtype == np.float32 and back.shape == (70, 90)
    tol = 0.5 / (255 if bit_depth == 8 else 65535) + 1e-7
    assert np.abs(back - mask).max() <= tol
    assert leftovers(tmp_path) == []


def test_mask_size_mismatch(tmp_path):
    path = save_mask(tmp_path / "m.png", np.zeros((60, 80), np.float32))
    with pytest.raises(ImageError) as exc:
        load_mask(path, shape=(3000, 4000))
    assert "80x60" in str(exc.value) and "4000x3000" in str(exc.value)


def test_rgb_mask_collapses_and_orientation_applies(tmp_path):
    gray = noise(40, 50, channels=1, seed=11)
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 7)])
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path, exif=camera_exif(6))
    back = load_mask(path)
    assert back.shape == (50, 40)
    assert np.abs(back - np.rot90(gray, -1) / 255).max() < 1e-5


def test_save_mask_validation(tmp_path):
    with pytest.raises(ImageError, match="PNG"):
        save_mask(tmp_path / "m.jpg", np.zeros((8, 8)))
    with pytest.raises(ImageError, match="HxW"):
        save_mask(tmp_path / "m.png", np.zeros((8, 8, 3)))
    path = save_mask(tmp_path / "b.png", np.eye(8, dtype=bool), bit_depth=16)
    assert np.array_equal(load_mask(path), np.eye(8, dtype=np.float32))


# ----------------------------------------------------------------------------- metadata edge cases


def _chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data) & 0xFFFFFFFF)


def test_16bit_png_with_exif_after_image_data(tmp_path):
    stored = noise(64, 96, np.uint16, seed=12)
    ok, enc = cv2.imencode(".png", stored[..., ::-1])
    data = enc.tobytes()
    assert data.endswith(b"IEND\xaeB`\x82")
    exif = camera_exif(8).tobytes()[6:]
    path = tmp_path / "late_exif.png"
    path.write_bytes(data[:-12] + _chunk(b"eXIf", exif) + data[-12:])
    photo = load_image(path)
    assert photo.bit_depth == 16
    assert np.array_equal(photo.pixels, np.rot90(stored, 1))
    assert parse_exif(photo.exif)[272] == "Z 9"


def test_invalid_orientation_value_is_ignored(tmp_path):
    exif = camera_exif()
    exif[ORIENTATION] = 9
    path = tmp_path / "o9.png"
    Image.fromarray(noise()).save(path, exif=exif)
    photo = load_image(path)
    assert np.array_equal(photo.pixels, noise())
    assert any("orientation" in n for n in photo.notes)
    assert parse_exif(photo.exif)[ORIENTATION] == 1


def test_jpeg_exif_size_limit(tmp_path):
    exif = camera_exif()
    exif.get_ifd(EXIF_IFD)[0x927C] = b"\x01" * 70000  # a bulky MakerNote is dropped to fit APP1
    photo = load_image(save_image(tmp_path / "m.jpg", blocks(), exif=exif.tobytes()))
    kept = parse_exif(photo.exif)
    assert kept[271] == "Nikon" and 0x927C not in kept.get_ifd(EXIF_IFD)
    huge = camera_exif()
    huge[270] = "x" * 70000  # ImageDescription: nothing sensible to drop
    with pytest.raises(ImageError, match="too large"):
        save_image(tmp_path / "h.jpg", blocks(), exif=huge.tobytes())
    # PNG and TIFF have no such limit and keep everything.
    big = load_image(save_image(tmp_path / "h.png", noise(), exif=huge.tobytes()))
    assert len(parse_exif(big.exif)[270]) == 70000


def test_truncation_detected_even_if_someone_enabled_truncated_loading(tmp_path, monkeypatch):
    from PIL import ImageFile

    good = save_image(tmp_path / "g.jpg", noise(300, 400)).read_bytes()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(good[: len(good) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageError, match="truncated"):
        load_image(bad)
