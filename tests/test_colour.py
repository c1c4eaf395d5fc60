"""The network works in sRGB, the photo keeps its own profile (engine.colour), end to end through
the engine, the command line and batch. Every image is generated here."""
from __future__ import annotations

import functools
from pathlib import Path

import exiv2
import imagecodecs
import numpy as np
import pytest
from PIL import Image

from engine import imageio
from engine.colour import WorkingSpace, adobe_rgb_profile, is_srgb, retouch_photo, srgb_profile
from engine.compositor import Correction, Patch, composite
from engine.imageio import load_image, save_image, save_photo

KW = {"colorspace": "rgb", "outcolorspace": "rgb"}


@functools.lru_cache(maxsize=1)
def prophoto() -> bytes:
    """ProPhoto RGB (ROMM primaries, D50, gamma 1.8), as Lightroom hands photos to external editors."""
    return bytes(imagecodecs.cms_profile("rgb", whitepoint=(0.3457, 0.3585),
                                         primaries=[0.7347, 0.2653, 0.1596, 0.8404, 0.0366, 0.0001], gamma=1.8))


def to_prophoto16(srgb8: np.ndarray) -> np.ndarray:
    f = imagecodecs.cms_transform(srgb8, srgb_profile(), prophoto(), outdtype=np.float32, **KW).reshape(srgb8.shape)
    return np.rint(np.clip(f, 0, 1) * 65535).astype(np.uint16)


def to_srgb_float(pixels: np.ndarray, icc: bytes) -> np.ndarray:
    return imagecodecs.cms_transform(pixels, icc, srgb_profile(), outdtype=np.float32, **KW).reshape(pixels.shape)


def tag_xmp(path: Path) -> None:
    img = exiv2.ImageFactory.open(path.read_bytes())
    img.readMetadata()
    img.xmpData()["Xmp.xmp.Rating"] = "5"
    img.xmpData()["Xmp.dc.creator"] = "Jane Doe"
    img.xmpData()["Xmp.xmp.CreatorTool"] = "Adobe Photoshop Lightroom Classic 13.0"
    img.iptcData().add(exiv2.IptcKey("Iptc.Application2.Keywords"), exiv2.StringValue("wedding"))
    img.writeMetadata()
    io_ = img.io()
    data = bytes(io_.mmap())
    io_.munmap()
    path.write_bytes(data)


def test_untagged_and_srgb_tagged_photos_go_to_the_network_unconverted():
    px = np.random.default_rng(0).integers(0, 65535, (40, 50, 3), dtype=np.uint16)
    from PIL import ImageCms

    pillow_srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for icc in (None, srgb_profile(), pillow_srgb):
        ws = WorkingSpace.of(px, icc)
        assert ws.identity and ws.image is px  # no copy, no conversion
    assert not is_srgb(prophoto()) and not is_srgb(adobe_rgb_profile())
    broken = WorkingSpace.of(px, b"\0" * 16 + b"RGB " + b"\0" * 200)
    assert broken.identity and broken.notes  # an unusable profile: treated as sRGB, and said so


def test_prophoto_correction_goes_back_into_prophoto_and_leaves_the_rest_bit_identical():
    rng = np.random.default_rng(1)
    srgb = rng.integers(40, 220, (64, 80, 3), dtype=np.uint8)
    photo = to_prophoto16(srgb)
    ws = WorkingSpace.of(photo, prophoto())
    assert not ws.identity and ws.image.dtype == np.uint16
    # The network sees sRGB: the ProPhoto numbers converted back (not the ProPhoto numbers themselves).
    assert np.abs(ws.image.astype(float) / 257 - srgb).max() < 1.0
    assert np.abs(photo.astype(float) / 257 - srgb).mean() > 5

    # A correction on a disc: +0.1 (sRGB units) in red, -0.05 in blue; zero elsewhere in the box.
    yy, xx = np.mgrid[0:40, 0:40]
    disc = ((yy - 20) ** 2 + (xx - 20) ** 2) < 12 ** 2
    delta = np.zeros((40, 40, 3), np.float32)
    delta[disc] = (0.1 * 65535, 0.0, -0.05 * 65535)
    c = Correction((64, 80), np.dtype(np.uint16), [Patch((10, 12, 50, 52), delta)])
    back = ws.to_photo(c)
    out = composite(photo, back, 1.0)
    changed = np.zeros((64, 80), bool)
    changed[12:52, 10:50] = disc
    assert np.array_equal(out[~changed], photo[~changed])  # bit-identical outside the correction
    s_before = to_srgb_float(photo, prophoto())[changed]
    s_after = to_srgb_float(out, prophoto())[changed]
    np.testing.assert_allclose(s_after - s_before, np.tile([0.1, 0.0, -0.05], (changed.sum(), 1)), atol=0.004)


def test_out_of_srgb_gamut_colours_are_not_clipped_by_the_round_trip():
    # A saturated ProPhoto green far outside sRGB, with a small correction on top.
    photo = np.zeros((8, 8, 3), np.uint16)
    photo[...] = (9000, 52000, 7000)
    ws = WorkingSpace.of(photo, prophoto())
    delta = np.zeros((8, 8, 3), np.float32)
    delta[2:6, 2:6] = 0.01 * 65535
    out = composite(photo, ws.to_photo(Correction((8, 8), np.dtype(np.uint16), [Patch((0, 0, 8, 8), delta)])), 1.0)
    assert np.array_equal(out[0], photo[0])
    assert np.abs(out[2:6, 2:6].astype(int) - photo[2:6, 2:6]).max() < 2000  # moved a little, not clipped to sRGB


@pytest.fixture(scope="module")
def retoucher(tiny_weights):
    from engine.retoucher import Retoucher

    return Retoucher.load(tiny_weights, device="cpu")


@pytest.fixture()
def prophoto_tiff(tmp_path, make_portrait) -> tuple[Path, np.ndarray]:
    img, spots = make_portrait(512, 512, seed=4)
    path = tmp_path / "IMG_0042-Edit.tif"
    exif = Image.Exif()
    exif[0x010F] = "Nikn"  # Make
    save_image(path, to_prophoto16(img), icc_profile=prophoto(), exif=exif)
    tag_xmp(path)
    mask = np.zeros((512, 512), np.float32)
    for x, y, r in spots:
        mask[max(0, y - 3 * r): y + 3 * r, max(0, x - 3 * r): x + 3 * r] = 1.0
    return path, mask


def test_prophoto_16bit_tiff_keeps_profile_and_pixels_outside_the_mask(retoucher, prophoto_tiff, tmp_path):
    path, mask = prophoto_tiff
    photo = load_image(path)
    assert photo.icc_profile == prophoto() and photo.bit_depth == 16
    result = retouch_photo(retoucher, photo.pixels, photo.icc_profile, mask)
    out = save_photo(tmp_path / "out.tif", photo, result)
    back = load_image(out)
    assert back.icc_profile == prophoto() and back.bit_depth == 16 and back.format == "TIFF"
    outside = mask == 0
    assert np.array_equal(back.pixels[outside], photo.pixels[outside])
    assert np.count_nonzero(np.any(back.pixels[~outside] != photo.pixels[~outside], axis=-1)) > 0.05 * (~outside).sum()
    m = back.metadata.as_dict()
    assert m["Xmp.xmp.Rating"] == "5" and m["Xmp.dc.creator"] == "Jane Doe" and m["Iptc.Application2.Keywords"] == "wedding"
    assert m["Exif.Image.Make"] == "Nikn" and m["Exif.Image.Software"] == imageio.SOFTWARE


def test_cli_in_place_is_the_scripted_edit_in(prophoto_tiff, tiny_weights, tmp_path, capsys):
    from engine.cli import main

    path, _ = prophoto_tiff
    before = load_image(path)
    assert main([str(path), "--in-place", "--device", "cpu", "--weights", tiny_weights]) == 0
    after = load_image(path)
    assert after.icc_profile == prophoto() and after.bit_depth == 16
    assert after.metadata.as_dict()["Xmp.xmp.Rating"] == "5"
    assert not np.array_equal(after.pixels, before.pixels)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    raw = tmp_path / "x.dng"
    raw.write_bytes(b"II*\x00")
    assert main([str(raw), "--in-place"]) == 1
    assert "camera RAW file, which cannot be written" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # one or the other: a usage error
        main([str(path), "--in-place", "-o", str(tmp_path / "y.tif")])
    assert usage.value.code == 2


def test_batch_keeps_raw_as_16_bit_tiff_and_xmp(retoucher, tmp_path, make_portrait):
    from engine.batch import run_batch
    from tests.test_imageio import make_dng

    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    make_dng(src / "DSC_0001.NEF.dng")  # a DNG: what LibRaw reads
    img, _ = make_portrait(256, 256, seed=2)
    save_image(src / "face.tif", to_prophoto16(img), icc_profile=prophoto())
    tag_xmp(src / "face.tif")
    report = run_batch(src, dst, retoucher=retoucher)
    assert report.ok and len(report.done) == 2
    raw_out = load_image(dst / "DSC_0001.NEF.tif")
    assert raw_out.bit_depth == 16 and raw_out.icc_profile == adobe_rgb_profile()
    tif_out = load_image(dst / "face.tif")
    assert tif_out.icc_profile == prophoto() and tif_out.metadata.as_dict()["Xmp.dc.creator"] == "Jane Doe"
