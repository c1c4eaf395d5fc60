"""Where the predicted mask loses in the blemishes through the whole pipeline.

    python tests/bench/pipeline_mask.py --weights NAME=PATH [--weights ...] [--count 12] [--face-size 400] [--kind KIND]

On held-out validation portraits (``--offset 200``, as the ship check's validation; synthetic
blemishes sized in millimetres, faces ``--face-size`` px wide) each weights file goes through
the run-time path (Retoucher.analyze -> render -> composite) twice: with its predicted mask and
handed the exact one. Per weights: PSNR inside the blemishes (φ > 0.2) both ways, the predicted
mask's mean there, the share of those pixels it leaves below 0.1, and the share of the remaining
error inside the blemishes that sits on them. A fill that wins with the exact mask and loses with
its own says the mask, not the fill, is what to train; a gap that no change of the mask's strength
moves says the same of the calibration.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from engine.retoucher import Retoucher
from engine.training.evaluate import BLEMISH_THRESHOLD, DEFAULT_CLEAN, face_size_pairs
from engine.training.metrics import psnr
from engine.training.synth import BLEMISH_KINDS, SynthConfig

MISSED = 0.1  # a blemish pixel the mask leaves below this is missed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", action="append", required=True, help="NAME=PATH (repeat)")
    ap.add_argument("--count", type=int, default=12)
    ap.add_argument("--face-size", type=int, default=400)
    ap.add_argument("--offset", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1234, help="the evaluation's blemish seed (retouch eval --seed)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--kind", choices=BLEMISH_KINDS, help="blemishes of this kind only (default: the evaluation's mix)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = {}
    for spec in args.weights:
        name, sep, path = spec.partition("=")
        if not sep:
            ap.error(f"--weights takes NAME=PATH, not {spec!r}")
        models[name] = Retoucher.load(path, device="cpu")
    only = SynthConfig.only(args.kind) if args.kind else None
    pairs = face_size_pairs(DEFAULT_CLEAN, args.face_size, args.count, args.seed, args.offset, only)
    rows: dict[str, list[tuple[float, ...]]] = {k: [] for k in models}
    for _, raw, clean, true in pairs:
        region = true > BLEMISH_THRESHOLD
        if not region.any():
            continue
        photo = np.round(raw * 255.0).astype(np.uint8)
        for name, r in models.items():
            a = r.analyze(photo)
            own = r.composite(photo, r.render(a), 1.0).astype(np.float32) / 255.0
            exact = r.composite(photo, r.render(a, true.astype(np.float32)), 1.0).astype(np.float32) / 255.0
            missed = a.mask[region] < MISSED
            err = ((own - clean) ** 2).mean(-1)[region]
            rows[name].append((psnr(own, clean, mask=region), psnr(exact, clean, mask=region), float(a.mask[region].mean()),
                               float(missed.mean()), float(err[missed].sum() / max(err.sum(), 1e-12))))
    n = len(next(iter(rows.values())))
    what = f"{n} faces {args.face_size} px wide" + (f", {args.kind} only" if args.kind else "")
    print(f"| weights ({what}, through the pipeline) | predicted mask: PSNR in blemishes (dB) "
          f"| exact mask: PSNR in blemishes (dB) | mask's mean in blemishes | blemish pixels below {MISSED} | their share of the error |")
    print("|---|---|---|---|---|---|")
    for name, v in rows.items():
        m = np.array(v).mean(0)
        print(f"| {name} | {m[0]:.2f} | {m[1]:.2f} | {m[2]:.2f} | {100 * m[3]:.0f} % | {100 * m[4]:.0f} % |")


if __name__ == "__main__":
    main()
