"""Does a candidate beat the bundled weights on the validation portraits? The synthetic half of
the ship rule, read from what ``tests/bench/ship_weights.sh`` wrote to its output folder:

    python -m engine.training.ship OUT_DIR

The candidate wins when, on the validation portraits (held out, not the evaluation's),

- through the whole pipeline with the predicted mask it takes more out of the blemishes than the
  bundled weights (PSNR in blemishes, ``validation.json``),
- and leaves the whole photo closer to the clean one than the untouched photo, and no further
  from it than the bundled weights do beyond the images' noise (the image-by-image difference's
  95 % interval reaches zero or above),
- and handed the exact mask (as a brushed mask is used) it takes at least as much out of the
  blemishes as the bundled weights (``validation_true_mask_{bundled,candidate}.json``; a stage that
  trains the mask net alone leaves the fill, and so this figure, exactly as it was).

It prints each comparison (with the image-by-image difference and its 95 % interval where the
validation has it: ``retouch eval --against``) and exits 0 when the candidate wins, 3 when it does
not. The other half, on real photos, is ``tests/bench/brush_lightness.py``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from engine.training.evaluate import difference

LOSES = 3


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SystemExit(f"{path} is missing: run tests/bench/ship_weights.sh first") from None
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{path} cannot be read: {exc}") from None


def verdict(validation: dict, true_bundled: dict, true_candidate: dict) -> tuple[bool, list[str]]:
    """(whether the candidate wins, one line per condition)."""
    sizes = validation.get("_face_sizes") or {}
    if len(sizes) != 1:
        raise SystemExit("validation.json should hold one face-size table (retouch eval --face-size W)")
    (width, table), = sizes.items()
    diffs = (validation.get("_paired") or {}).get("face_sizes", {}).get(width, {}).get("candidate", {})
    try:
        cand, bund, untouched = table["candidate"], table["bundled"], table["input (untouched)"]
        t_cand, t_bund = true_candidate["candidate"], true_bundled["bundled"]
    except KeyError as exc:
        raise SystemExit(f"the validation tables lack {exc}: were they written by ship_weights.sh?") from None

    def interval(key: str) -> str:
        return f"; image by image (dB) {difference(diffs[key], 2)}" if diffs.get(key) else ""

    whole = diffs.get("psnr")
    checks = [
        (cand["psnr_blemish"] > bund["psnr_blemish"],
         f"through the pipeline, in the blemishes: {cand['psnr_blemish']:.2f} against {bund['psnr_blemish']:.2f} dB for the bundled weights{interval('psnr_blemish')}"),
        (cand["psnr"] > untouched["psnr"],
         f"through the pipeline, the whole photo against the untouched photo: {cand['psnr']:.2f} against {untouched['psnr']:.2f} dB"),
        (not whole or whole.get("ci95") is None or whole["mean"] + whole["ci95"] >= 0.0,
         f"through the pipeline, the whole photo against the bundled weights: {cand['psnr']:.2f} against {bund['psnr']:.2f} dB{interval('psnr')}"),
        (t_cand["psnr_blemish"] >= t_bund["psnr_blemish"],
         f"with the exact mask, in the blemishes: {t_cand['psnr_blemish']:.2f} against {t_bund['psnr_blemish']:.2f} dB"),
    ]
    lines = [("passes  " if ok else "FAILS   ") + text for ok, text in checks]
    return all(ok for ok, _ in checks), lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.training.ship", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path, help="ship_weights.sh's output folder")
    args = p.parse_args(argv)
    d = args.out_dir
    wins, lines = verdict(_read(d / "validation.json"), _read(d / "validation_true_mask_bundled.json"), _read(d / "validation_true_mask_candidate.json"))
    print("\n".join(lines))
    print("the candidate wins on validation: check real photos next (tests/bench/brush_lightness.py)" if wins else "the candidate does not beat the bundled weights on validation: do not ship it")
    return 0 if wins else LOSES


if __name__ == "__main__":
    raise SystemExit(main())
