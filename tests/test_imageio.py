"""Tests for engine.imageio: every image is generated here, in tmp_path (RAW files with pidng)."""
from __future__ import annotations

import os
import stat
import struct
import zlib
from pathlib import Path

import cv2
import exiv2
import numpy as np
import pytest
import tifffile
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


def meta(photo: Photo) -> dict[str, str]:
    """Every EXIF/IPTC/XMP value the loader kept, as {exiv2 key: text}."""
    return photo.metadata.as_dict()


def file_meta(path: Path) -> tuple[dict[str, str], bytes | None]:
    """What exiv2 reads straight from a file: ({key: text}, ICC profile)."""
    img = exiv2.ImageFactory.open(path.read_bytes())
    img.readMetadata()
    out: dict[str, str] = {}
    for data in (img.exifData(), img.iptcData(), img.xmpData()):
        for d in data:
            out[d.key()] = f"{out[d.key()]}; {d.toString()}" if d.key() in out else d.toString()
    icc = bytes(img.iccProfile().data()) if img.iccProfileDefined() else None
    return out, icc


def set_file_metadata(path: Path, exif: dict | None = None, xmp: dict | None = None, iptc: list | None = None) -> None:
    """Write tags into an existing file with exiv2 (a test fixture: what a camera or catalogue writes)."""
    img = exiv2.ImageFactory.open(path.read_bytes())
    img.readMetadata()
    for key, value in (exif or {}).items():
        img.exifData()[key] = value
    for key, value in (xmp or {}).items():
        img.xmpData()[key] = value
    for key, value in iptc or []:
        img.iptcData().add(exiv2.IptcKey(key), exiv2.StringValue(value))
    img.writeMetadata()
    io_ = img.io()
    data = bytes(io_.mmap())
    io_.munmap()
    path.write_bytes(data)


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
    for name in ["a.jpg", "a.JPEG", "b.png", "c.TIF", "d.tiff", "e.WebP", "f.HEIC", "g.heif", "h.avif",
                 "i.DNG", "j.cr2", "k.CR3", "l.nef", "m.ARW", "n.raf", "o.orf", "p.RW2"]:
        assert is_supported(name)
    for name in ["a.bmp", "a.gif", "a", "a.jpg.txt", "a.xmp", "a.psd"]:
        assert not is_supported(name)
    assert imageio.is_raw("x.NEF") and not imageio.is_raw("x.tif")
    assert imageio.default_output_suffix("shoot/IMG_1.CR2") == ".tif"
    assert imageio.default_output_suffix("IMG_1.jpeg") == ".jpeg"


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
    [(".jpg", U8), (".png", U8), (".png", U16), (".tif", U8), (".tif", U16), (".webp", U8),
     (".heic", U8), (".heic", U16), (".avif", U8)],
)
def test_exif_and_icc_survive(tmp_path, suffix, dtype):
    icc = srgb_icc()
    src = noise(dtype=dtype)
    # Orientation 6 in the supplied EXIF must be written as 1: the pixels we save are upright.
    path = save_image(tmp_path / f"m{suffix}", src, exif=camera_exif(6).tobytes(), icc_profile=icc)
    photo = load_image(path)
    assert photo.icc_profile == icc
    m = meta(photo)
    assert m["Exif.Image.Make"] == "Nikon" and m["Exif.Image.Model"] == "Z 9"
    assert m["Exif.Image.DateTime"] == "2024:05:06 07:08:09"
    assert m["Exif.Image.Orientation"] == "1" and m["Exif.Image.Software"] == imageio.SOFTWARE
    assert m["Exif.Photo.DateTimeOriginal"] == "2024:05:06 07:08:09" and m["Exif.Photo.ISOSpeedRatings"] == "200"
    assert photo.pixels.shape == src.shape  # not rotated on the way back
    # An independent reader sees the same metadata in the file.
    if suffix == ".heic":
        import pillow_heif

        heif = pillow_heif.open_heif(path)
        assert heif.info["icc_profile"] == icc and b"Z 9" in heif.info["exif"]
    else:
        with Image.open(path) as im:
            assert im.info.get("icc_profile") == icc
            assert im.getexif()[272] == "Z 9" and im.getexif().get(ORIENTATION, 1) == 1


def test_png_icc_chunk_has_a_name_libpng_accepts(tmp_path):
    # exiv2 alone writes iCCP with an empty name, which libpng-based readers (browsers) discard.
    for dtype in (U8, U16):
        data = save_image(tmp_path / f"p{dtype.__name__}.png", noise(dtype=dtype), icc_profile=srgb_icc()).read_bytes()
        at = data.index(b"iCCP")
        name = data[at + 4 : data.index(b"\x00", at + 4)]
        assert 1 <= len(name) <= 79 and data.count(b"iCCP") == 1


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif", ".webp", ".heic", ".avif"])
def test_xmp_and_iptc_survive_where_the_format_holds_them(tmp_path, suffix):
    src = tmp_path / "src.tif"
    save_image(src, noise(dtype=U16), exif=camera_exif().tobytes())
    set_file_metadata(src, xmp={"Xmp.xmp.Rating": "4", "Xmp.dc.creator": "Jane Doe",
                                "Xmp.photoshop.City": "Lyon", "Xmp.tiff.Orientation": "1"},
                      iptc=[("Iptc.Application2.Keywords", "portrait"), ("Iptc.Application2.Keywords", "studio"),
                            ("Iptc.Application2.Copyright", "(c) Jane Doe")])
    photo = load_image(src)
    m = meta(photo)
    assert m["Xmp.xmp.Rating"] == "4" and m["Iptc.Application2.Keywords"] == "portrait; studio"
    out = save_photo(tmp_path / f"out{suffix}", photo)
    back, _ = file_meta(out)
    assert back["Xmp.xmp.Rating"] == "4" and back["Xmp.dc.creator"] == "Jane Doe" and back["Xmp.photoshop.City"] == "Lyon"
    assert back["Exif.Image.Make"] == "Nikon" and back["Exif.Image.Software"] == imageio.SOFTWARE
    if suffix in (".jpg", ".png", ".tif"):
        assert back["Iptc.Application2.Keywords"] == "portrait; studio"
        assert back["Iptc.Application2.Copyright"] == "(c) Jane Doe"
    else:  # WebP, HEIF and AVIF have no place for IPTC-IIM (documented); the rest is kept
        assert "Iptc.Application2.Keywords" not in back


def test_orientation_and_thumbnail_are_reset_and_software_is_set(tmp_path):
    src = tmp_path / "cam.jpg"
    stored = blocks()
    Image.fromarray(stored).save(src, quality=95, exif=camera_exif(6))
    img = exiv2.ImageFactory.open(src.read_bytes())
    img.readMetadata()
    thumb = tmp_path / "thumb.jpg"
    Image.fromarray(stored[::4, ::4]).save(thumb)
    exiv2.ExifThumb(img.exifData()).setJpegThumbnail(str(thumb))
    img.xmpData()["Xmp.tiff.Orientation"] = "6"
    img.writeMetadata()
    io_ = img.io()
    src.write_bytes(bytes(io_.mmap()))
    io_.munmap()
    assert any(k.startswith("Exif.Thumbnail.") for k in file_meta(src)[0])
    photo = load_image(src)
    assert photo.pixels.shape == (96, 64, 3)  # rotated upright
    out = save_photo(tmp_path / "out.jpg", photo)
    back, _ = file_meta(out)
    assert back["Exif.Image.Orientation"] == "1" and back["Xmp.tiff.Orientation"] == "1"
    assert back["Exif.Image.Software"] == imageio.SOFTWARE
    assert not any(k.startswith("Exif.Thumbnail.") for k in back)  # it showed the un-retouched photo
    assert load_image(out).pixels.shape == (96, 64, 3)  # not rotated twice


def test_exif_without_prefix_and_save_photo_keeps_metadata(tmp_path):
    icc = srgb_icc()
    raw = camera_exif().tobytes()
    assert raw.startswith(b"Exif\x00\x00")
    first = load_image(save_image(tmp_path / "a.png", noise(), exif=raw[6:], icc_profile=icc, alpha=noise()[..., 0]))
    out = save_photo(tmp_path / "b.tif", first, pixels=first.pixels[::-1].copy())
    second = load_image(out)
    assert second.icc_profile == icc and meta(second)["Exif.Image.Make"] == "Nikon"
    assert np.array_equal(second.alpha, first.alpha)
    assert np.array_equal(second.pixels, first.pixels[::-1])
    with pytest.raises(ImageError, match="overwrite"):
        save_photo(first.path, first)


def test_tiff_layout_tags_do_not_leak_into_exif(tmp_path):
    path = tmp_path / "pillow.tif"
    Image.fromarray(noise()).save(path, exif=camera_exif(), compression="tiff_lzw")
    photo = load_image(path)
    m = meta(photo)
    assert m["Exif.Image.Make"] == "Nikon"
    for key in ("ImageWidth", "ImageLength", "BitsPerSample", "Compression", "StripOffsets", "StripByteCounts"):
        assert f"Exif.Image.{key}" not in m
    # ...so it can be carried into a JPEG and back.
    out = load_image(save_image(tmp_path / "o.jpg", blocks(), exif=photo.exif))
    assert meta(out)["Exif.Image.Model"] == "Z 9"


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
    if stored.dtype == np.uint16 or fmt == ".tiff":  # Pillow has no 16-bit RGB: OpenCV / tifffile + exiv2
        if fmt == ".png":
            path.write_bytes(cv2.imencode(".png", stored[..., ::-1])[1].tobytes())
        else:
            tifffile.imwrite(path, stored, photometric="rgb", compression="adobe_deflate", predictor=True)
        set_file_metadata(path, exif={"Exif.Image.Make": "Nikon", "Exif.Image.Orientation": exiv2.UShortValue(orientation)})
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
        (".tiff", np.uint8),  # tifffile's Deflate TIFF, orientation written by exiv2
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
    assert meta(photo)["Exif.Image.Orientation"] == "1"
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
    assert meta(photo)["Exif.Image.Model"] == "Z 9"


def test_invalid_orientation_value_is_ignored(tmp_path):
    exif = camera_exif()
    exif[ORIENTATION] = 9
    path = tmp_path / "o9.png"
    Image.fromarray(noise()).save(path, exif=exif)
    photo = load_image(path)
    assert np.array_equal(photo.pixels, noise())
    assert any("orientation" in n for n in photo.notes)
    assert meta(photo)["Exif.Image.Orientation"] == "1"


def test_jpeg_exif_size_limit(tmp_path):
    exif = camera_exif()
    exif.get_ifd(EXIF_IFD)[0x927C] = b"\x01" * 70000  # a bulky MakerNote is dropped to fit APP1
    photo = load_image(save_image(tmp_path / "m.jpg", blocks(), exif=exif.tobytes()))
    kept = meta(photo)
    assert kept["Exif.Image.Make"] == "Nikon" and "Exif.Photo.MakerNote" not in kept
    huge = camera_exif()
    huge[270] = "x" * 70000  # ImageDescription: nothing sensible to drop
    with pytest.raises(ImageError, match="EXIF metadata is too large for a JPEG") as exc:
        save_image(tmp_path / "h.jpg", blocks(), exif=huge.tobytes())
    _assert_clear(exc, "h.jpg")
    assert not (tmp_path / "h.jpg").exists() and leftovers(tmp_path) == []
    # TIFF has no such limit and keeps everything (exiv2 holds EXIF in PNG and WebP to 64 kB too).
    big = load_image(save_image(tmp_path / "h.tif", noise(), exif=huge.tobytes()))
    assert len(meta(big)["Exif.Image.ImageDescription"]) == 70000
    with pytest.raises(ImageError, match="too large for a PNG file; save it as TIFF"):
        save_image(tmp_path / "h.png", noise(), exif=huge.tobytes())


def test_xmp_too_large_for_jpeg_is_one_clear_sentence_and_writes_nothing(tmp_path):
    src = save_image(tmp_path / "src.tif", noise())
    set_file_metadata(src, xmp={"Xmp.dc.description": "lang=x-default " + "y" * 70000, "Xmp.xmp.Rating": "5"})
    photo = load_image(src)
    target = tmp_path / "out.jpg"
    target.write_bytes(b"previous export")
    with pytest.raises(ImageError, match="XMP metadata is too large for a JPEG file; save it as TIFF or PNG") as exc:
        save_photo(target, photo)
    _assert_clear(exc, "out.jpg")
    assert target.read_bytes() == b"previous export" and leftovers(tmp_path) == []
    back, _ = file_meta(save_photo(tmp_path / "out.tif", photo))  # TIFF holds it
    assert len(back["Xmp.dc.description"]) > 70000 and back["Xmp.xmp.Rating"] == "5"


def test_truncation_detected_even_if_someone_enabled_truncated_loading(tmp_path, monkeypatch):
    from PIL import ImageFile

    good = save_image(tmp_path / "g.jpg", noise(300, 400)).read_bytes()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(good[: len(good) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageError, match="truncated"):
        load_image(bad)


# ----------------------------------------------------------------------------- camera RAW (DNG made with pidng)


def make_dng(path: Path, h: int = 128, w: int = 192, *, neutral=(1.0, 1.0, 1.0), orientation: int = 1,
             make: str = "Testcam") -> Path:
    """A small Bayer (RGGB) DNG: a warm left half and a cool right half, 12-bit data."""
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import CalibrationIlluminant, CFAPattern, DNGVersion, PhotometricInterpretation

    scene = np.zeros((h, w, 3))
    scene[:, : w // 2] = (0.55, 0.30, 0.18)
    scene[:, w // 2 :] = (0.18, 0.30, 0.55)
    white = 4095
    raw = np.zeros((h, w), np.uint16)
    gains = [1 / neutral[0], 1 / neutral[1], 1 / neutral[2]]  # what the camera recorded under that light
    raw[0::2, 0::2] = np.clip(scene[0::2, 0::2, 0] / gains[0], 0, 1) * white
    raw[0::2, 1::2] = np.clip(scene[0::2, 1::2, 1] / gains[1], 0, 1) * white
    raw[1::2, 0::2] = np.clip(scene[1::2, 0::2, 1] / gains[1], 0, 1) * white
    raw[1::2, 1::2] = np.clip(scene[1::2, 1::2, 2] / gains[2], 0, 1) * white
    t = DNGTags()
    t.set(Tag.ImageWidth, w)
    t.set(Tag.ImageLength, h)
    t.set(Tag.TileWidth, w)
    t.set(Tag.TileLength, h)
    t.set(Tag.Orientation, orientation)
    t.set(Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array)
    t.set(Tag.SamplesPerPixel, 1)
    t.set(Tag.BitsPerSample, 16)
    t.set(Tag.CFARepeatPatternDim, [2, 2])
    t.set(Tag.CFAPattern, CFAPattern.RGGB)
    t.set(Tag.BlackLevel, 0)
    t.set(Tag.WhiteLevel, white)
    # XYZ -> camera: the sRGB primaries' matrix, so camera RGB is linear sRGB.
    m = [[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]]
    t.set(Tag.ColorMatrix1, [[int(round(v * 10000)), 10000] for row in m for v in row])
    t.set(Tag.CalibrationIlluminant1, CalibrationIlluminant.D65)
    t.set(Tag.AsShotNeutral, [[int(round(v * 10000)), 10000] for v in neutral])
    t.set(Tag.Make, make)
    t.set(Tag.Model, "T1")
    t.set(Tag.DNGVersion, DNGVersion.V1_4)
    t.set(Tag.DNGBackwardVersion, DNGVersion.V1_2)
    r = RAW2DNG()
    r.options(t, path="", compress=False)
    r.convert(raw, filename=str(path.with_suffix("")))
    return path


def test_dng_is_developed_to_16_bit_adobe_rgb_with_camera_white_balance(tmp_path):
    from engine.colour import adobe_rgb_profile

    path = make_dng(tmp_path / "IMG_0001.dng")
    photo = load_image(path)
    assert photo.format == "RAW" and photo.is_raw and photo.bit_depth == 16
    assert photo.pixels.dtype == np.uint16 and photo.pixels.shape == (128, 192, 3)
    assert photo.icc_profile == adobe_rgb_profile()  # the stated output profile
    assert any("LibRaw" in n and "Adobe RGB" in n for n in photo.notes)
    left = photo.pixels[20:100, 10:80].reshape(-1, 3).mean(0)
    right = photo.pixels[20:100, 110:180].reshape(-1, 3).mean(0)
    assert left[0] > left[2] * 1.3 and right[2] > right[0] * 1.3  # warm stays warm, cool stays cool
    m = meta(photo)
    assert m["Exif.Image.Make"] == "Testcam" and m["Exif.Image.Model"] == "T1"
    assert not any(k in m for k in ("Exif.Image.DNGVersion", "Exif.Image.ColorMatrix1", "Exif.Image.CFAPattern",
                                    "Exif.Image.AsShotNeutral", "Exif.Image.TileOffsets"))

    # As shot under a green-ish light, the camera's white balance brings the scene back.
    tinted = load_image(make_dng(tmp_path / "tinted.dng", neutral=(0.6, 1.0, 0.8)))
    ratio_plain = left / left[1]
    t_left = tinted.pixels[20:100, 10:80].reshape(-1, 3).mean(0)
    assert np.allclose(t_left / t_left[1], ratio_plain, rtol=0.12)


def test_raw_orientation_is_applied_by_libraw_and_exported_as_16_bit_tiff(tmp_path):
    photo = load_image(make_dng(tmp_path / "portrait.dng", orientation=6))
    assert photo.pixels.shape == (192, 128, 3)  # rotated upright
    assert meta(photo)["Exif.Image.Orientation"] == "1"
    out = tmp_path / ("portrait" + imageio.default_output_suffix(photo.path))
    save_photo(out, photo)
    back = load_image(out)
    assert out.suffix == ".tif" and back.format == "TIFF" and back.bit_depth == 16
    assert np.array_equal(back.pixels, photo.pixels) and back.icc_profile == photo.icc_profile
    m, _ = file_meta(out)
    assert m["Exif.Image.Make"] == "Testcam" and "Exif.Image.DNGVersion" not in m
    with tifffile.TiffFile(out) as tf:  # a plain RGB TIFF, not a DNG
        assert tf.pages[0].photometric == 2 and "DNGVersion" not in tf.pages[0].tags
    with pytest.raises(ImageError, match="camera RAW files cannot be written"):
        save_photo(tmp_path / "x.nef", photo)


def test_bad_raw_files_get_one_clear_sentence(tmp_path):
    fake = tmp_path / "IMG_0002.NEF"
    fake.write_bytes(np.random.default_rng(3).bytes(20000))
    with pytest.raises(ImageError, match="RAW") as exc:
        load_image(fake)
    _assert_clear(exc, "IMG_0002.NEF")
    good = make_dng(tmp_path / "cut.dng").read_bytes()
    cut = tmp_path / "cut2.dng"
    cut.write_bytes(good[: len(good) // 3])
    with pytest.raises(ImageError) as exc:
        load_image(cut)
    _assert_clear(exc, "cut2.dng")


# ----------------------------------------------------------------------------- HEIF / AVIF


def smooth(h: int = 96, w: int = 128, dtype=np.uint8) -> np.ndarray:
    """A smooth gradient image (lossy codecs reproduce it closely)."""
    y, x = np.mgrid[0:h, 0:w]
    top = 255 if dtype == np.uint8 else 65535
    img = np.stack([x / (w - 1), y / (h - 1), 0.5 + 0.25 * np.sin(x / 9.0)], -1) * top
    return img.round().astype(dtype)


@pytest.mark.parametrize("suffix,dtype", [(".heic", U8), (".heic", U16), (".avif", U8)])
def test_heif_and_avif_round_trip_with_alpha(tmp_path, suffix, dtype):
    src = smooth(dtype=dtype)
    alpha = np.full(src.shape[:2], np.iinfo(dtype).max, dtype)
    alpha[:, :20] = 0
    photo = load_image(save_image(tmp_path / f"a{suffix}", src, alpha=alpha, quality=95))
    assert photo.format == ("HEIF" if suffix == ".heic" else "AVIF")
    # HEIF keeps high bit depth (stored as 10-bit, read back scaled to 16); AVIF through Pillow is 8-bit.
    assert photo.bit_depth == (16 if dtype == U16 and suffix == ".heic" else 8)
    scale = 257 if photo.bit_depth == 16 and dtype == U8 else 1
    ref = src if photo.bit_depth == 16 or dtype == U8 else (src // 257).astype(U8)
    err = np.abs(photo.pixels.astype(float) - ref.astype(float) * scale).mean() / (65535 if photo.bit_depth == 16 else 255)
    assert err < 0.02
    assert photo.alpha is not None and photo.alpha[:, :15].max() < 0.1 * np.iinfo(photo.alpha.dtype).max
    assert photo.alpha[:, 30:].min() > 0.9 * np.iinfo(photo.alpha.dtype).max


def test_heif_from_a_phone_in_display_p3_keeps_its_colour_description(tmp_path):
    import pillow_heif

    from engine.colour import is_srgb

    src = smooth()
    heif = pillow_heif.from_bytes(mode="RGB", size=(src.shape[1], src.shape[0]), data=src.tobytes())
    path = tmp_path / "IMG_4242.HEIC"
    # No ICC profile, only CICP/nclx colour information (Display P3, sRGB curve), as phones write.
    heif.save(path, quality=95, chroma=444, color_primaries=12, transfer_characteristics=13,
              matrix_coefficients=6, full_range_flag=1, save_nclx_profile=True)
    photo = load_image(path)
    assert photo.format == "HEIF" and photo.icc_profile is not None and not is_srgb(photo.icc_profile)
    assert np.abs(photo.pixels.astype(int) - src).mean() < 3


def test_heif_without_its_codec_is_one_clear_sentence(tmp_path, monkeypatch):
    import pillow_heif

    path = save_image(tmp_path / "x.heic", smooth())

    def no_codec(*args, **kwargs):
        raise RuntimeError("No decoding plugin installed for this compression format")

    monkeypatch.setattr(pillow_heif, "open_heif", no_codec)
    with pytest.raises(ImageError, match="no decoder for its HEIF codec") as exc:
        load_image(path)
    _assert_clear(exc, "x.heic")


def test_avif_orientation_is_applied_once(tmp_path):
    stored = smooth()
    path = tmp_path / "o.avif"
    Image.fromarray(stored).save(path, quality=95, exif=camera_exif(6))  # Pillow stores it as irot/imir
    photo = load_image(path)
    assert photo.pixels.shape == (128, 96, 3)
    assert np.abs(photo.pixels.astype(int) - np.rot90(stored, -1)).mean() < 4
    assert meta(photo).get("Exif.Image.Orientation", "1") == "1"


# ----------------------------------------------------------------------------- writing back ("Edit in")


def test_save_in_place_keeps_format_depth_profile_metadata_and_mode(tmp_path):
    icc = srgb_icc()
    path = save_image(tmp_path / "IMG_7.tif", noise(dtype=U16), exif=camera_exif().tobytes(), icc_profile=icc)
    set_file_metadata(path, xmp={"Xmp.xmp.Rating": "3"}, iptc=[("Iptc.Application2.Keywords", "bride")])
    os.chmod(path, 0o640)
    photo = load_image(path)
    edited = photo.pixels.copy()
    edited[10:20, 10:20] = 1234
    assert imageio.save_in_place(photo, edited) == path
    back = load_image(path)
    assert back.format == "TIFF" and back.bit_depth == 16 and back.icc_profile == icc
    assert np.array_equal(back.pixels, edited)
    m = meta(back)
    assert m["Xmp.xmp.Rating"] == "3" and m["Iptc.Application2.Keywords"] == "bride" and m["Exif.Image.Make"] == "Nikon"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640 and leftovers(tmp_path) == []
    imageio.save_in_place(photo, edited)  # again: the stamp was updated after the first save


def test_save_in_place_refuses_raw_and_files_changed_meanwhile(tmp_path):
    raw = load_image(make_dng(tmp_path / "r.dng"))
    with pytest.raises(ImageError, match="camera RAW file, which cannot be written") as exc:
        imageio.save_in_place(raw, raw.pixels)
    _assert_clear(exc, "r.dng")
    path = save_image(tmp_path / "a.jpg", blocks())
    photo = load_image(path)
    save_image(tmp_path / "b.jpg", blocks(seed=5))
    os.replace(tmp_path / "b.jpg", path)  # the catalogue re-rendered the file while we were editing
    before = path.read_bytes()
    with pytest.raises(ImageError, match="changed by another program") as exc:
        imageio.save_in_place(photo, photo.pixels)
    _assert_clear(exc, "a.jpg")
    assert path.read_bytes() == before
