"""Calibrate the predicted mask of trained weights on validation faces.

    python -m engine.training.calibrate WEIGHTS [--count 60] [--offset 200] [--out CALIBRATED]

A mask net trained for a short while predicts a faint haze over clean skin (and over features it
is unsure of); every bit of it is skin the retouch changes for nothing. The calibration floor
``ModelConfig.mask_floor`` drops mask values below it and stretches the rest back to 0..1. It is
chosen here on held-out portraits that are *not* the evaluation's (``--offset``: the evaluation
uses the first 200 held-out portraits), with blemishes sized in millimetres, by the model itself
at its working scale: the floor that maximises the sum of the whole-image PSNR and the PSNR
inside the blemishes (the first falls with every false positive, the second with every missed
spot). ``--out`` writes the weights with that floor in their configuration.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

from engine.model import load_model, save_model
from engine.training import metrics
from engine.training.data import DEFAULT_DATA, eval_pairs
from engine.training.evaluate import BLEMISH_THRESHOLD

FLOORS = tuple(round(0.05 * i, 2) for i in range(11))  # 0 .. 0.5


def calibrate(weights: Path, clean_dirs: list[Path], count: int, offset: int, seed: int = 4321, floors=FLOORS):
    """{floor: (whole-image PSNR, PSNR in blemishes, Soft-IoU)} on the validation pairs."""
    model = load_model(weights)
    pairs = list(eval_pairs(clean_dirs, model.config.work_px_per_mm, count, seed, offset=offset))
    scores: dict[float, list[tuple[float, float, float]]] = {f: [] for f in floors}
    for _, raw, clean, true in pairs:
        x = torch.from_numpy(raw).permute(2, 0, 1)[None].contiguous()
        region = true > BLEMISH_THRESHOLD
        with torch.inference_mode():
            enc = model.encode(x)
            raw_mask = torch.sigmoid(model.mask_logits(x, enc.recon, ema=True))
            for f in floors:
                m = model.calibrate(raw_mask, f)
                out = model.synthesize(enc, m)[0][0].permute(1, 2, 0).numpy()
                inside = metrics.psnr(out, clean, mask=region) if region.any() else np.nan
                scores[f].append((metrics.psnr(out, clean), inside, metrics.soft_iou(m[0, 0].numpy(), true)))
    return {f: tuple(float(np.nanmean([s[k] for s in v])) for k in range(3)) for f, v in scores.items()}, len(pairs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.training.calibrate", description=__doc__.split("\n")[0])
    p.add_argument("weights", type=Path)
    p.add_argument("--clean", type=Path, action="append", default=None)
    p.add_argument("--count", type=int, default=60)
    p.add_argument("--offset", type=int, default=200, help="skip the evaluation's held-out portraits")
    p.add_argument("--out", type=Path, help="write the weights with the chosen floor here")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    table, n = calibrate(args.weights, args.clean or [DEFAULT_DATA / "faces-hq", DEFAULT_DATA / "faces"], args.count, args.offset)
    print(f"| mask floor | PSNR (dB) | PSNR in blemishes (dB) | Soft-IoU |  ({n} validation portraits)\n|---|---|---|---|")
    for f, (whole, inside, iou) in table.items():
        print(f"| {f:.2f} | {whole:.2f} | {inside:.2f} | {iou:.3f} |")
    best = max(table, key=lambda f: table[f][0] + table[f][1])
    print(f"chosen floor: {best:.2f}")
    if args.out:
        model = load_model(args.weights)
        model.config = dataclasses.replace(model.config, mask_floor=best)
        save_model(model, args.out, extra={**getattr(model, "checkpoint_info", {}), "mask_floor_fitted_on": f"{n} validation portraits (offset {args.offset})"})
        print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
