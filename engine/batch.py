"""Retouch every photo in a folder (optionally its subfolders) into another folder.

* Never writes into the input folder: ``out_dir == in_dir`` is refused; an output folder inside
  the input folder is allowed and is left out of the scan.
* Each output is written atomically (engine.imageio.save_photo) with the source's EXIF, IPTC,
  XMP, ICC profile, alpha and bit depth (where the output format holds them); ``keep`` writes
  camera RAW inputs as 16-bit TIFF. The network works in sRGB (engine.colour).
* Outputs that already exist are skipped unless ``overwrite``; a bad file is recorded in
  ``BatchReport.failed`` and the batch goes on.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from engine.errors import Cancelled, RetouchError
from engine.colour import retouch_photo
from engine.imageio import default_output_suffix, is_supported, load_image, save_photo

if TYPE_CHECKING:
    from engine.retoucher import Retoucher

__all__ = ["BatchReport", "run_batch", "plan_batch", "FORMAT_SUFFIX"]

#: ``fmt`` choices -> output suffix (``keep`` keeps the input's suffix).
FORMAT_SUFFIX = {"jpg": ".jpg", "jpeg": ".jpg", "png": ".png", "tiff": ".tif", "tif": ".tif", "webp": ".webp"}


@dataclass
class BatchReport:
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def _scan(in_dir: Path, out_dir: Path, recursive: bool) -> list[Path]:
    found: list[Path] = []
    if recursive:
        for root, dirs, files in os.walk(in_dir):
            here = Path(root)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _inside((here / d).resolve(), out_dir))
            found.extend(here / f for f in sorted(files) if not f.startswith(".") and is_supported(f))
    else:
        found = sorted(p for p in in_dir.iterdir() if p.is_file() and not p.name.startswith(".") and is_supported(p))
    return found


def plan_batch(in_dir: str | Path, out_dir: str | Path, *, fmt: str = "keep", recursive: bool = False) -> list[tuple[Path, Path]]:
    """(input, output) pairs of a batch, after checking the folders. Raises RetouchError."""
    src, dst = Path(in_dir), Path(out_dir)
    if not src.is_dir():
        raise RetouchError(f"The input folder {src} does not exist or is not a folder.")
    if dst.exists() and not dst.is_dir():
        raise RetouchError(f"The output {dst} exists and is not a folder.")
    fmt_key = fmt.lower()
    if fmt_key != "keep" and fmt_key not in FORMAT_SUFFIX:
        raise RetouchError(f"Unknown output format '{fmt}'; choose keep, jpg, png or tiff.")
    src_r, dst_r = src.resolve(), dst.resolve()
    if src_r == dst_r:
        raise RetouchError("The output folder must differ from the input folder (inputs are never overwritten).")
    pairs: list[tuple[Path, Path]] = []
    taken: set[Path] = set()
    for path in _scan(src, dst_r, recursive):
        rel = path.relative_to(src)
        suffix = default_output_suffix(path) if fmt_key == "keep" else FORMAT_SUFFIX[fmt_key]
        out = dst / rel.with_suffix(suffix)
        if out.resolve() in taken:  # a.png and a.jpg -> a.jpg: keep both, deterministically
            out = dst / rel.with_name(f"{path.stem}_{path.suffix.lstrip('.').lower()}{suffix}")
        taken.add(out.resolve())
        pairs.append((path, out))
    return pairs


def run_batch(
    in_dir: str | Path,
    out_dir: str | Path,
    *,
    retoucher: "Retoucher",
    strength: float = 1.0,
    blemish_size: float | None = None,
    fmt: str = "keep",
    recursive: bool = False,
    overwrite: bool = False,
    quality: int = 95,
    progress: Callable[[float, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> BatchReport:
    """Retouch every supported photo of ``in_dir`` into ``out_dir``; see the module docstring.

    ``progress(fraction, message)`` is called before each photo and at the end. ``cancel()`` is
    polled between photos (and inside the model work); when it returns True, :class:`Cancelled`
    is raised with the partial report as its ``report`` attribute (finished outputs are kept).
    """
    if not 0.0 <= float(strength) <= 1.0:
        raise RetouchError(f"Strength must be between 0 and 1, not {strength}.")
    if not 1 <= int(quality) <= 100:
        raise RetouchError(f"Quality must be between 1 and 100, not {quality}.")
    pairs = plan_batch(in_dir, out_dir, fmt=fmt, recursive=recursive)
    src_r, dst_r = Path(in_dir).resolve(), Path(out_dir).resolve()
    report = BatchReport()
    total = len(pairs)
    for i, (path, out) in enumerate(pairs):
        if cancel is not None and cancel():
            exc = Cancelled(f"Cancelled after {i} of {total} photos; the finished outputs were kept.")
            exc.report = report  # type: ignore[attr-defined]
            raise exc
        if progress is not None:
            progress(i / total if total else 1.0, path.name)
        if out.exists() and not overwrite:
            report.skipped.append(path)
            continue
        out_r = out.resolve()
        if _inside(out_r, src_r) and not _inside(out_r, dst_r):
            report.failed.append((path, "the output would be written into the input folder"))
            continue
        try:
            photo = load_image(path)
            result = retouch_photo(retoucher, photo.pixels, photo.icc_profile, strength=strength, blemish_size=blemish_size, cancel=cancel)
            out.parent.mkdir(parents=True, exist_ok=True)
            save_photo(out, photo, result, quality=quality, protect=[path])
        except Cancelled as exc:
            exc.report = report  # type: ignore[attr-defined]
            raise
        except RetouchError as exc:
            report.failed.append((path, str(exc)))
        except MemoryError:
            report.failed.append((path, "not enough memory to process this photo"))
        except OSError as exc:
            report.failed.append((path, f"{exc.strerror or exc}"))
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
            report.failed.append((path, f"unexpected error ({type(exc).__name__}: {exc})"))
        else:
            report.done.append(path)
    if progress is not None:
        progress(1.0, "done")
    return report
