"""The `retouch` command line and folder batches (tiny model in a temporary checkpoint)."""
from __future__ import annotations

import functools

import os
import subprocess
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from engine import __version__
from engine import faces as faces_mod
from engine.batch import plan_batch, run_batch
from engine.cli import main
from engine.errors import Cancelled, RetouchError
from engine.imageio import load_image, load_mask, save_image
from engine.model.checkpoint import save_model
from engine.model.config import ModelConfig
from engine.model.retouchformer import RetouchFormer
from engine.retoucher import Retoucher

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _one_thread_no_faces(monkeypatch):
    torch.set_num_threads(1)
    # Generated pictures contain no detectable faces; pretend one is in the middle.
    from tests.test_pipeline import fake_face

    monkeypatch.setattr(faces_mod, "detect", lambda image, **kw: [fake_face((60, 40, 140, 120))])


def _photo(h=160, w=200, seed=0, dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float32)
    img[:] = (0.8, 0.62, 0.52)
    img += rng.normal(0, 0.03, (h, w, 1))
    cv2.circle(img, (100, 80), 5, (0.5, 0.3, 0.3), -1)
    top = 255 if dtype == np.uint8 else 65535
    return np.rint(np.clip(img, 0, 1) * top).astype(dtype)


def _exif(orientation: int = 1) -> bytes:
    ex = Image.Exif()
    ex[0x010F] = "TestCam"  # Make
    ex[0x0112] = orientation
    return ex.tobytes()


@functools.lru_cache(maxsize=1)
def _icc() -> bytes:
    # one profile per test run: the profile header records its creation time, so two calls a
    # second apart give different bytes
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("retouch: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------------------------
# single photo


def test_cli_keeps_exif_icc_and_orientation(tmp_path, capsys, tiny_weights):
    src = tmp_path / "in.jpg"
    stored = _photo(160, 200)
    # Stored sideways with orientation 6 (display = rotate 90 deg clockwise): upright is 200x160 (HxW).
    Image.fromarray(stored).save(src, quality=95, exif=_exif(6), icc_profile=_icc())
    out = tmp_path / "out.jpg"
    mask_out = tmp_path / "mask.png"
    code, _, err = _run(capsys, src, "-o", out, "--weights", tiny_weights, "--device", "cpu", "--mask-out", mask_out)
    assert code == 0, err
    photo = load_image(out)
    assert photo.pixels.shape == (200, 160, 3)  # upright
    with Image.open(out) as im:
        exif = im.getexif()
        assert exif.get(0x010F) == "TestCam"
        assert exif.get(0x0112, 1) == 1
        assert im.info.get("icc_profile") == _icc()
    mask = load_mask(mask_out, (200, 160))
    assert mask.max() > 0


def test_cli_16bit_png_and_user_mask(tmp_path, capsys, tiny_weights):
    src = tmp_path / "in16.png"
    img = _photo(dtype=np.uint16)
    save_image(src, img)
    mask = np.zeros(img.shape[:2], np.uint8)
    mask[60:100, 80:120] = 255
    mpath = tmp_path / "m.png"
    cv2.imwrite(str(mpath), mask)
    out = tmp_path / "out16.png"
    code, _, err = _run(capsys, src, "-o", out, "--weights", tiny_weights, "--device", "cpu", "--mask", mpath)
    assert code == 0, err
    res = load_image(out)
    assert res.bit_depth == 16 and res.pixels.dtype == np.uint16
    assert np.array_equal(res.pixels[mask == 0], img[mask == 0])
    assert (res.pixels[mask > 0] != img[mask > 0]).any()
    # strength 0 through the CLI: the photo comes back unchanged
    out0 = tmp_path / "zero.png"
    assert _run(capsys, src, "-o", out0, "--weights", tiny_weights, "--device", "cpu", "--strength", "0")[0] == 0
    assert np.array_equal(load_image(out0).pixels, img)


def test_cli_wrong_mask_size(tmp_path, capsys, tiny_weights):
    src = tmp_path / "in.png"
    save_image(src, _photo())
    mpath = tmp_path / "m.png"
    cv2.imwrite(str(mpath), np.zeros((50, 60), np.uint8))
    code, _, err = _run(capsys, src, "-o", tmp_path / "o.png", "--weights", tiny_weights, "--mask", mpath)
    assert code == 1
    assert "60x50 but the photo is 200x160" in _one_line_error(err)
    assert not (tmp_path / "o.png").exists()


def test_cli_refuses_overwrite_and_input(tmp_path, capsys, tiny_weights):
    src = tmp_path / "in.png"
    save_image(src, _photo())
    before = src.read_bytes()
    code, _, err = _run(capsys, src, "-o", src, "--weights", tiny_weights, "--overwrite")
    assert code == 1 and "input" in _one_line_error(err)
    assert src.read_bytes() == before
    out = tmp_path / "o.png"
    out.write_bytes(b"keep me")
    code, _, err = _run(capsys, src, "-o", out, "--weights", tiny_weights)
    assert code == 1 and "--overwrite" in _one_line_error(err)
    assert out.read_bytes() == b"keep me"
    assert _run(capsys, src, "-o", out, "--weights", tiny_weights, "--overwrite", "--device", "cpu")[0] == 0
    assert load_image(out).pixels.shape == (160, 200, 3)


def test_cli_errors_are_one_line(tmp_path, capsys, tiny_weights):
    src = tmp_path / "in.png"
    save_image(src, _photo())
    cases = [
        [tmp_path / "missing.jpg", "-o", tmp_path / "o.png"],
        [src, "-o", tmp_path / "o.png", "--weights", tmp_path / "nope.safetensors"],
        [src, "-o", tmp_path / "o.png", "--weights", tiny_weights, "--device", "quantum"],
        [src, "-o", tmp_path / "o.xyz", "--weights", tiny_weights],
        [src, "-o", tmp_path / "no_such_dir" / "o.png", "--weights", tiny_weights],
    ]
    for argv in cases:
        code, _, err = _run(capsys, *argv)
        assert code == 1, argv
        _one_line_error(err)
    assert not list(tmp_path.glob("o.*"))


def test_cli_keyboard_interrupt(tmp_path, capsys, tiny_weights, monkeypatch):
    src = tmp_path / "in.png"
    save_image(src, _photo())

    def interrupted(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(Retoucher, "analyze", interrupted)
    code, _, err = _run(capsys, src, "-o", tmp_path / "o.png", "--weights", tiny_weights)
    assert code == 130 and "Cancelled" in _one_line_error(err)


def test_cli_subprocess_no_traceback_and_version(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run(
        [sys.executable, "-m", "engine.cli", str(tmp_path / "missing.jpg"), "-o", str(tmp_path / "o.jpg")],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )
    assert res.returncode == 1
    assert res.stderr.strip().count("\n") == 0 and res.stderr.startswith("retouch: error:")
    res = subprocess.run([sys.executable, "-m", "engine.cli", "--version"], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=120)
    assert res.returncode == 0 and __version__ in res.stdout


def test_atomic_write_keeps_existing_output(tmp_path, capsys, tiny_weights, monkeypatch):
    src = tmp_path / "in.png"
    save_image(src, _photo())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "o.png"
    out.write_bytes(b"previous result")

    def no_space(a, b):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    code, _, err = _run(capsys, src, "-o", out, "--weights", tiny_weights, "--overwrite", "--device", "cpu")
    monkeypatch.undo()
    assert code == 1 and "No space left" in _one_line_error(err)
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in out_dir.iterdir()) == ["o.png"]  # no temporary file left


def test_train_and_eval_are_delegated(monkeypatch, capsys):
    seen = {}
    fake = types.ModuleType("engine.training.evaluate")
    fake.main = lambda argv: seen.setdefault("eval", argv) and 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "engine.training.evaluate", fake)
    assert main(["eval", "--data", "x"]) == 3
    assert seen["eval"] == ["--data", "x"]
    fake_train = types.ModuleType("engine.training.train")
    fake_train.main = lambda argv: seen.setdefault("train", argv) and 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "engine.training.train", fake_train)
    assert main(["train", "--steps", "1"]) == 0
    assert seen["train"] == ["--steps", "1"]


# --------------------------------------------------------------------------------------------
# batch


def _folder(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    save_image(src / "a.jpg", _photo(seed=1), exif=_exif(), icc_profile=_icc())
    save_image(src / "b.png", _photo(seed=2))
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    save_image(src / "sub" / "c.tif", _photo(seed=3, dtype=np.uint16))
    (src / "notes.txt").write_text("not an image")
    return src


def test_batch_cli_goes_on_past_a_bad_file(tmp_path, capsys, tiny_weights):
    src = _folder(tmp_path)
    dst = tmp_path / "out"
    code, _, err = _run(capsys, "batch", src, dst, "--weights", tiny_weights, "--device", "cpu")
    assert code == 1
    assert (dst / "a.jpg").is_file() and (dst / "b.png").is_file()
    assert not (dst / "sub").exists()  # not recursive
    assert "broken.jpg" in err and "failed" in err and "ETA" in err and "Traceback" not in err
    with Image.open(dst / "a.jpg") as im:
        assert im.getexif().get(0x010F) == "TestCam" and im.info.get("icc_profile") == _icc()
    assert not [p for p in dst.rglob("*") if p.name.startswith(".")]  # no temporary files
    # run again: existing outputs are skipped, not rewritten
    stamp = (dst / "a.jpg").stat().st_mtime_ns
    code, _, err = _run(capsys, "batch", src, dst, "--weights", tiny_weights, "--device", "cpu")
    assert code == 1 and "2 skipped" in err
    assert (dst / "a.jpg").stat().st_mtime_ns == stamp


def test_batch_recursive_format_and_report(tmp_path, tiny_weights):
    src = _folder(tmp_path)
    (src / "broken.jpg").unlink()
    dst = tmp_path / "out"
    r = Retoucher.load(tiny_weights, device="cpu")
    seen = []
    report = run_batch(src, dst, retoucher=r, fmt="png", recursive=True, progress=lambda f, m: seen.append(f))
    assert sorted(p.name for p in report.done) == ["a.jpg", "b.png", "c.tif"] and not report.failed
    assert (dst / "a.png").is_file() and (dst / "sub" / "c.png").is_file()
    assert load_image(dst / "sub" / "c.png").bit_depth == 16
    assert seen[-1] == 1.0
    report = run_batch(src, dst, retoucher=r, fmt="png", recursive=True, overwrite=True)
    assert len(report.done) == 3 and not report.skipped


def test_batch_folder_rules(tmp_path, tiny_weights):
    src = _folder(tmp_path)
    with pytest.raises(RetouchError, match="must differ"):
        plan_batch(src, src)
    with pytest.raises(RetouchError, match="does not exist"):
        plan_batch(tmp_path / "nope", tmp_path / "out")
    # an output folder inside the input folder is never scanned as input
    inner = src / "retouched"
    inner.mkdir()
    save_image(inner / "old.png", _photo(seed=9))
    pairs = plan_batch(src, inner, recursive=True)
    assert all("retouched" not in p.relative_to(src).parts for p, _ in pairs)
    assert {p.name for p, _ in pairs} == {"a.jpg", "b.png", "broken.jpg", "c.tif"}
    # a.png and a.jpg both becoming a.jpg get distinct names
    save_image(src / "a.png", _photo(seed=4))
    outs = [o.name for _, o in plan_batch(src, tmp_path / "o2", fmt="jpg")]
    assert len(outs) == len(set(outs))


def test_batch_cancel(tmp_path, tiny_weights):
    src = _folder(tmp_path)
    r = Retoucher.load(tiny_weights, device="cpu")
    with pytest.raises(Cancelled) as info:
        run_batch(src, tmp_path / "out", retoucher=r, cancel=lambda: True)
    assert info.value.report.done == []  # type: ignore[attr-defined]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_blemish_size_sets_the_scale(tmp_path, capsys, tiny_weights, monkeypatch) -> None:
    """No face: the photo is still retouched, at the scale --blemish-size gives (said on stderr)."""
    monkeypatch.setattr(faces_mod, "detect", lambda image, **kw: [])
    src = tmp_path / "skin.png"
    save_image(src, _photo())
    code, _, err = _run(capsys, src, "-o", tmp_path / "a.png", "--weights", tiny_weights, "--mask-out", tmp_path / "m.png")
    assert code == 0 and "No face found; blemish size" in err and "(assumed: no face)" in err
    code, _, err = _run(capsys, src, "-o", tmp_path / "b.png", "--weights", tiny_weights, "--blemish-size", "12")
    assert code == 0 and "blemish size 12 px (as set)" in err
    assert not np.array_equal(load_image(tmp_path / "b.png").pixels, _photo())
    with pytest.raises(SystemExit):
        main([str(src), "-o", str(tmp_path / "c.png"), "--blemish-size", "-3"])
