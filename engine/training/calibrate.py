"""Calibrate the predicted mask of trained weights on validation faces.

    python -m engine.training.calibrate WEIGHTS [--count 60] [--offset 200] [--out CALIBRATED]
                                        [--tophats 0,4,8] [--floors 0] [--gains 1,2] [--dilates 0,0.6]

A mask net trained for a short while predicts a faint haze over clean skin (and over features it
is unsure of); every bit of it is skin the retouch changes for nothing. Two calibration settings
take it away (a third strengthens what is left): ``ModelConfig.mask_tophat_mm`` subtracts the broad haze under the peaks (a
morphological opening that many millimetres wide: blemishes stand out of it, a face-wide haze
does not; broad blemishes such as redness patches and under-eye circles lose strength too, which
the per-kind evaluation shows), ``ModelConfig.mask_floor`` drops what is left below it and
stretches the rest back to 0..1, and ``ModelConfig.mask_gain`` multiplies the rest (clipped at 1),
for a mask net that estimates the blemishes' blend weight rather than their footprint
(``retouch train --iou-form minmax``): the fill needs a papule's halo, where that weight is 0.2,
taken away as a whole; ``ModelConfig.mask_dilate_mm`` then spreads each spot's strength over its
rim (a grey dilation that many millimetres around every pixel), another way to the same end
(on stage 16 neither moved the blemishes through the pipeline: the model card's "The predicted
mask through the pipeline"). They are chosen here on held-out portraits that are *not* the
evaluation's (``--offset``: the evaluation uses the first 200 held-out portraits), with blemishes
sized in millimetres, by the model itself at its working scale: among the settings that leave the whole photo closer to the clean one than
the untouched photo (whole-image PSNR, which falls with every false positive), the one with the
highest PSNR inside the blemishes (which falls with every missed spot), settings within
``LEVEL_DB`` of it counting as level and the one of those that leaves the whole photo best winning;
when no setting is that safe, the best sum of the two. ``--out`` writes the weights with the chosen settings in their
configuration.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

from engine.model import ModelConfig, load_model, save_model
from engine.training import metrics
from engine.training.data import eval_pairs
from engine.training.evaluate import BLEMISH_THRESHOLD, DEFAULT_CLEAN

FLOORS = (0.0, 0.15, 0.3)
TOPHATS_MM = (0.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
GAINS = (1.0,)  # a mask net trained with --iou-form minmax: --gains 1,1.5,2,3
DILATES_MM = (0.0,)  # ... and --dilates 0,0.6 (0.6 mm: one working pixel at 1.6 px/mm)
SEED = 4321  # the validation pairs' blemishes (the evaluation's differ)
# blemish PSNRs this close are level: far inside the images' noise on 40 portraits (image by image,
# ±0.1-0.3 dB), while the whole photo can differ by 0.5 dB between two such settings
LEVEL_DB = 0.1


def _values(text: str) -> tuple[float, ...]:
    """A comma-separated list of numbers (an argparse type)."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def choose(table: dict, untouched: tuple[float, float]) -> tuple[float, ...]:
    """The setting that takes the most out of the blemishes (PSNR inside them) among those that
    leave the whole photo better than untouched, the best whole photo among those level with it
    (within ``LEVEL_DB``); when none is safe, the best sum of both PSNRs."""
    safe = [s for s in table if table[s][0] >= untouched[0]]
    if safe:
        most = max(table[s][1] for s in safe)
        return max((s for s in safe if table[s][1] >= most - LEVEL_DB), key=lambda s: table[s][0])
    return max(table, key=lambda s: table[s][0] + table[s][1])


def calibrate(weights: Path, clean_dirs: list[Path], count: int, offset: int, seed: int = SEED, floors=FLOORS, tophats=TOPHATS_MM, gains=GAINS, dilates=DILATES_MM):
    """({(top-hat mm, floor, gain, dilation mm): (whole-image PSNR, PSNR in blemishes, Soft-IoU)}, the number of
    validation pairs, (whole-image PSNR, PSNR in blemishes) of the untouched photos)."""
    model = load_model(weights)
    pairs = list(eval_pairs(clean_dirs, model.config.work_px_per_mm, count, seed, offset=offset))
    settings = list(itertools.product(tophats, floors, gains, dilates))
    scores: dict[tuple[float, ...], list[tuple[float, float, float]]] = {s: [] for s in settings}
    untouched = []
    for _, raw, clean, true in pairs:
        x = torch.from_numpy(raw).permute(2, 0, 1)[None].contiguous()
        region = true > BLEMISH_THRESHOLD
        untouched.append((metrics.psnr(raw, clean), metrics.psnr(raw, clean, mask=region) if region.any() else np.nan))
        with torch.inference_mode():
            enc = model.encode(x)
            raw_mask = torch.sigmoid(model.mask_logits(x, enc.recon, ema=True))
            for t, f, g, d in settings:
                m = model.calibrate(raw_mask, f, t, g, d)
                out = model.synthesize(enc, m)[0][0].permute(1, 2, 0).numpy()
                inside = metrics.psnr(out, clean, mask=region) if region.any() else np.nan
                scores[(t, f, g, d)].append((metrics.psnr(out, clean), inside, metrics.soft_iou(m[0, 0].numpy(), true)))
    table = {s: tuple(float(np.nanmean([v[k] for v in vals])) for k in range(3)) for s, vals in scores.items()}
    return table, len(pairs), tuple(float(np.nanmean([u[k] for u in untouched])) for k in range(2))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.training.calibrate", description=__doc__.split("\n")[0])
    p.add_argument("weights", type=Path)
    p.add_argument("--clean", type=Path, action="append", default=None)
    p.add_argument("--count", type=int, default=60)
    p.add_argument("--offset", type=int, default=200, help="skip the evaluation's held-out portraits")
    p.add_argument("--out", type=Path, help="write the weights with the chosen floor here")
    p.add_argument("--tophats", type=_values, default=TOPHATS_MM, help="top-hat widths to try (mm, comma-separated)")
    p.add_argument("--floors", type=_values, default=FLOORS, help="mask floors to try")
    p.add_argument("--gains", type=_values, default=GAINS, help="mask gains to try (at least 1)")
    p.add_argument("--dilates", type=_values, default=DILATES_MM, help="mask dilations to try (mm, comma-separated)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    try:  # before the long run: every setting must be one the configuration accepts
        for t, f, g, d in itertools.product(args.tophats, args.floors, args.gains, args.dilates):
            ModelConfig(mask_tophat_mm=t, mask_floor=f, mask_gain=g, mask_dilate_mm=d)
    except ValueError as exc:
        p.error(str(exc))
    if args.threads:
        torch.set_num_threads(args.threads)
    table, n, untouched = calibrate(args.weights, args.clean or DEFAULT_CLEAN, args.count, args.offset, floors=args.floors, tophats=args.tophats, gains=args.gains, dilates=args.dilates)
    print(f"| top-hat (mm) | mask floor | mask gain | dilation (mm) | PSNR (dB) | PSNR in blemishes (dB) | Soft-IoU |  ({n} validation portraits)\n|---|---|---|---|---|---|---|")
    print(f"| untouched | | | | {untouched[0]:.2f} | {untouched[1]:.2f} | n/a |")
    for (t, f, g, d), (whole, inside, iou) in table.items():
        print(f"| {t:.0f} | {f:.2f} | {g:.2f} | {d:.1f} | {whole:.2f} | {inside:.2f} | {iou:.3f} |")
    best = choose(table, untouched)
    print(f"chosen: top-hat {best[0]:.0f} mm, floor {best[1]:.2f}, gain {best[2]:.2f}, dilation {best[3]:.1f} mm")
    if args.out:
        model = load_model(args.weights)
        model.config = dataclasses.replace(model.config, mask_tophat_mm=best[0], mask_floor=best[1], mask_gain=best[2], mask_dilate_mm=best[3])
        save_model(model, args.out, extra={**getattr(model, "checkpoint_info", {}), "mask_calibration": f"fitted on {n} validation portraits (offset {args.offset})"})
        print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
