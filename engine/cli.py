"""The ``retouch`` command line.

::

    retouch IMAGE -o OUT [--strength S] [--mask MASK.png] [--mask-out MASK.png] [--device D]
                         [--weights W] [--quality Q] [--overwrite]
    retouch IMAGE --in-place [...]   (write the result back into IMAGE: "Edit in" scripts)
    retouch batch IN_DIR OUT_DIR [--recursive] [--strength S] [--format keep|jpg|png|tiff]
                         [--quality Q] [--overwrite] [--device D] [--weights W]
    retouch train ...    (engine.training.train)
    retouch eval ...     (engine.training.evaluate)

Every expected failure prints one line ``retouch: error: ...`` and exits with status 1
(usage errors: 2, Ctrl+C: 130); no traceback.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from engine import __version__
from engine.errors import Cancelled, RetouchError

__all__ = ["main"]

PROG = "retouch"


def _error(message: str) -> None:
    print(f"{PROG}: error: {message.rstrip()}", file=sys.stderr)


def _strength(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid strength '{text}' (a number from 0 to 1)") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"strength must be between 0 and 1, not {text}")
    return value


def _quality(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid quality '{text}' (a whole number from 1 to 100)") from None
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"quality must be between 1 and 100, not {text}")
    return value


def _blemish_size(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid blemish size '{text}' (a number of pixels)") from None
    if not (0.5 <= value <= 5000):
        raise argparse.ArgumentTypeError(f"blemish size must be between 0.5 and 5000 pixels, not {text}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strength", type=_strength, default=1.0, metavar="S", help="correction strength 0..1 (default 1)")
    p.add_argument("--blemish-size", type=_blemish_size, default=None, metavar="PX",
                   help="diameter of a typical blemish (about 3 mm of skin) in photo pixels: the scale the model "
                        "works at (default: from the faces found; without a face, the short side is taken as 15 cm)")
    p.add_argument("--quality", type=_quality, default=95, metavar="Q", help="JPEG/WebP quality 1..100 (default 95)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--device", default="auto", metavar="D", help="auto (default), cpu or cuda")
    p.add_argument("--weights", default=None, metavar="W", help="model weights (.safetensors); default: the bundled small model")


def _single_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Retouch facial skin imperfections in a photo with RetouchFormer.",
        epilog="Other commands: 'retouch batch IN_DIR OUT_DIR', 'retouch train ...', 'retouch eval ...'.",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("image", metavar="IMAGE", help="photo to retouch (JPEG, PNG, TIFF, WebP, HEIF, AVIF or camera RAW)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("-o", "--output", metavar="OUT", help="output file; the format follows its suffix")
    where.add_argument("--in-place", action="store_true",
                       help="write the result back into IMAGE (same format, bit depth, profile and metadata)")
    p.add_argument("--mask", metavar="MASK.png", help="use this mask (grayscale PNG the size of the photo) instead of the predicted one")
    p.add_argument("--mask-out", metavar="MASK.png", help="also save the mask used as a grayscale PNG")
    _common(p)
    return p


def _batch_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{PROG} batch", description="Retouch every photo of a folder into another folder.")
    p.add_argument("in_dir", metavar="IN_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--recursive", action="store_true", help="also process subfolders (mirrored in OUT_DIR)")
    p.add_argument("--format", dest="fmt", default="keep", choices=["keep", "jpg", "png", "tiff"], help="output format (default: keep)")
    _common(p)
    return p


class ProgressBar:
    """A one-line progress bar with ETA on stderr (one line per update when not a terminal)."""

    def __init__(self, total: int, stream=None, width: int = 28) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.width = width
        self.start = time.monotonic()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, fraction: float, message: str) -> None:
        done = int(round(fraction * self.total))
        elapsed = time.monotonic() - self.start
        eta = "--:--"
        if fraction > 0:
            remaining = elapsed * (1.0 - fraction) / fraction
            eta = f"{int(remaining // 60):02d}:{int(remaining % 60):02d}"
        filled = int(round(fraction * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"[{bar}] {done}/{self.total} {fraction * 100:3.0f}% ETA {eta} {message}"
        if self.tty:
            self.stream.write("\r" + line[:120].ljust(120))
            if fraction >= 1.0:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _load_retoucher(args: argparse.Namespace):
    from engine.retoucher import Retoucher  # torch is imported only when needed

    return Retoucher.load(args.weights, device=args.device)


def _run_single(argv: Sequence[str]) -> int:
    args = _single_parser().parse_args(list(argv))
    from engine.colour import WorkingSpace
    from engine.imageio import WRITABLE_SUFFIXES, is_raw, load_image, load_mask, save_in_place, save_mask, save_photo

    src = Path(args.image)
    out = src if args.in_place else Path(args.output)
    if args.in_place and is_raw(src):
        raise RetouchError(f"{src.name} is a camera RAW file, which cannot be written; use -o NAME.tif instead of --in-place.")
    if out.suffix.lower() not in WRITABLE_SUFFIXES:  # fail before the slow part
        raise RetouchError(f"Cannot tell the output format from '{out.name}'; use .jpg, .png, .tif, .webp, .heic or .avif.")
    if args.mask_out and Path(args.mask_out).suffix.lower() != ".png":
        raise RetouchError(f"Masks are saved as PNG; {Path(args.mask_out).name} does not end in .png.")
    inputs = [src] + ([Path(args.mask)] if args.mask else [])
    for target in ([] if args.in_place else [out]) + ([Path(args.mask_out)] if args.mask_out else []):
        if any(_same(target, p) for p in inputs):
            raise RetouchError(f"Refusing to write {target}: it is one of the input files.")
        if target.exists() and not args.overwrite:
            raise RetouchError(f"{target} already exists; pass --overwrite to replace it.")
    if args.mask_out and _same(Path(args.mask_out), out):
        raise RetouchError("--mask-out and -o name the same file.")
    photo = load_image(src)
    mask = load_mask(args.mask, photo.pixels.shape[:2]) if args.mask else None
    retoucher = _load_retoucher(args)
    working = WorkingSpace.of(photo.pixels, photo.icc_profile)  # the network works in sRGB
    analysis = retoucher.analyze(working.image, blemish_size=args.blemish_size)
    print(f"{src.name}: {analysis.message} ({retoucher.device_label}).", file=sys.stderr)
    correction = working.to_photo(retoucher.render(analysis, mask))
    result = retoucher.composite(photo.pixels, correction, args.strength)
    if args.in_place:
        save_in_place(photo, result, quality=args.quality)
    else:
        save_photo(out, photo, result, quality=args.quality, protect=inputs)
    if args.mask_out:
        save_mask(args.mask_out, analysis.mask if mask is None else mask,
                  bit_depth=16 if photo.bit_depth == 16 else 8, protect=inputs + [out])
    print(f"Wrote {out}.", file=sys.stderr)
    return 0


def _run_batch(argv: Sequence[str]) -> int:
    args = _batch_parser().parse_args(list(argv))
    from engine.batch import plan_batch, run_batch

    pairs = plan_batch(args.in_dir, args.out_dir, fmt=args.fmt, recursive=args.recursive)
    if not pairs:
        print(f"No photos (JPEG, PNG, TIFF, WebP, HEIF, AVIF or camera RAW) found in {args.in_dir}.", file=sys.stderr)
        return 0
    retoucher = _load_retoucher(args)
    print(f"Retouching {len(pairs)} photo(s) on {retoucher.device_label}.", file=sys.stderr)
    report = run_batch(
        args.in_dir, args.out_dir, retoucher=retoucher, strength=args.strength, blemish_size=args.blemish_size, fmt=args.fmt,
        recursive=args.recursive, overwrite=args.overwrite, quality=args.quality,
        progress=ProgressBar(len(pairs)),
    )
    print(f"Done: {len(report.done)} retouched, {len(report.skipped)} skipped (already exist), "
          f"{len(report.failed)} failed.", file=sys.stderr)
    for path, why in report.failed:
        print(f"  failed: {path}: {why}", file=sys.stderr)
    return 1 if report.failed else 0


def _delegate(module: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        import importlib

        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                raise RetouchError(f"This installation has no '{module}' command.") from None
            raise
        result = mod.main(argv)
        return int(result or 0)

    return run


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands: dict[str, Callable[[list[str]], int]] = {
        "batch": _run_batch,
        "train": _delegate("engine.training.train"),
        "eval": _delegate("engine.training.evaluate"),
    }
    try:
        if argv and argv[0] in commands:
            return commands[argv[0]](argv[1:])
        return _run_single(argv)
    except Cancelled as exc:
        _error(str(exc))
        return 130
    except KeyboardInterrupt:
        _error("Cancelled.")
        return 130
    except RetouchError as exc:
        _error(str(exc))
        return 1
    except MemoryError:
        _error("Not enough memory for this photo; close other programs or use a smaller image.")
        return 1
    except OSError as exc:
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        _error(f"{exc.strerror or exc}{where}")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
