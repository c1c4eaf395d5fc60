"""README figure: photo | predicted mask | retouched, on a public-domain photo.

    pip install scikit-image   # only for the photo: skimage.data.astronaut() (NASA, public domain)
    python tests/bench/make_figure.py [--weights W] [--out resources/docs/figure.png]

The astronaut portrait gets synthetic blemishes from engine.training.synth on the detected face (so the
figure shows what the model does with blemishes whose true extent is known), then runs through
the same engine API the GUI and the CLI use: Retoucher.analyze -> render -> composite.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from engine.imageio import from_float, save_image, to_float
from engine.training.metrics import psnr, soft_iou
from engine.retoucher import Retoucher
from engine.training.synth import synthesize

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "resources" / "docs" / "figure.png")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    from skimage import data  # public-domain NASA photo shipped with scikit-image

    clean8 = data.astronaut()
    retoucher = Retoucher.load(args.weights, device="cpu")
    first = retoucher.analyze(clean8)
    if not first.faces:
        raise SystemExit("no face found in the astronaut photo")
    x0, y0, x1, y1 = first.regions[0]
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, clean8.shape[1]), min(y1, clean8.shape[0])
    clean = to_float(clean8)
    crop = np.ascontiguousarray(clean[y0:y1, x0:x1])
    sample = synthesize(crop, np.random.default_rng(args.seed))
    raw = clean.copy()
    raw[y0:y1, x0:x1] = sample.raw
    true_mask = np.zeros(clean.shape[:2], np.float32)
    true_mask[y0:y1, x0:x1] = sample.mask
    raw8 = from_float(raw, np.uint8)
    analysis = retoucher.analyze(raw8)
    out8 = retoucher.composite(raw8, retoucher.render(analysis), 1.0)
    region = true_mask > 0.2
    print(f"{analysis.message}; PSNR in blemishes: input {psnr(to_float(raw8), clean, mask=region):.2f} dB, "
          f"retouched {psnr(to_float(out8), clean, mask=region):.2f} dB; Soft-IoU {soft_iou(analysis.mask, true_mask):.3f}")
    fx0, fy0, fx1, fy1 = first.faces[0]
    pad = int(0.25 * (fx1 - fx0))
    sl = (slice(max(fy0 - pad, 0), fy1 + pad), slice(max(fx0 - pad, 0), fx1 + pad))
    mask_rgb = cv2.applyColorMap(from_float(analysis.mask, np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1]
    panels = [raw8[sl], mask_rgb[sl], out8[sl]]
    h = 360
    panels = [cv2.resize(p, (int(p.shape[1] * h / p.shape[0]), h), interpolation=cv2.INTER_CUBIC) for p in panels]
    gap = np.full((h, 6, 3), 255, np.uint8)
    fig = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], 1)
    for i, label in enumerate(("photo (synthetic blemishes)", "predicted soft mask", "retouched")):
        cv2.putText(fig, label, (8 + i * (panels[0].shape[1] + 6), 22), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 2, cv2.LINE_AA)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_image(args.out, fig)
    print(args.out)


if __name__ == "__main__":
    main()
