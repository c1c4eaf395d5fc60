"""A brushed mask over a whole acne cluster on a real photo, healed by each set of weights and by Telea.

    python tests/bench/make_brush_figure.py --weights NAME=W [--weights NAME=W ...] [--without-hold]
                                            [--name acne04_0010.jpg] [--out resources/docs/brush_figure.png]

What a photographer does when the predicted mask is patchy: brush over the whole cluster. The
brushed mask is the predicted mask of the first weights above 0.15, grown by 2 mm and softened
(0.7 mm), the same stroke for every column; each set of weights paints it over its own predicted
mask, as the program's brush does (``app.maskedit.paint``), and renders that through the engine API
(Retoucher.analyze -> render(mask) -> composite at strength 1); Telea inpainting heals the stroke.
``--without-hold`` adds the first weights with the tone hold of clean skin under the brush turned
off (``Retoucher.tone_sigma = 0``: the fill as it comes, which takes the brush border's tone).
The crop (220 px at 100 %, shown at 150 %) is the densest part of the mask. The photo is read in
place from ../shared/data/acne-faces; only the figure is committed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from engine.imageio import from_float, load_image, save_image, to_float
from engine.retoucher import Retoucher
from engine.training.baselines import telea_heal
from app.maskedit import paint
from make_acne_figure import CROP, DATA, ROOT, densest  # the same photos, crop size and crop choice


def brushed_mask(predicted: np.ndarray, px_per_mm: float) -> np.ndarray:
    """The predicted mask above 0.15, grown by 2 mm and softened: a brush over the whole cluster."""
    k = int(round(px_per_mm * 2)) * 2 + 1
    m = cv2.dilate((predicted > 0.15).astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return cv2.GaussianBlur(m.astype(np.float32), (0, 0), px_per_mm * 0.7)


def load_models(weights: list[str], without_hold: bool = False, anchor: bool = False) -> list[tuple[str, Retoucher]]:
    """``NAME=PATH`` weights loaded on the CPU; ``without_hold``: the first ones again, second, with
    the tone hold of clean skin under the brush off (``Retoucher.tone_sigma = 0``); ``anchor``: the
    first ones again with G's output layer zeroed, so that the fill is the classical fill G is
    anchored on (engine.model.fill.anchor_fill, with the tone hold): what G itself adds or takes away."""
    models = [(n, Retoucher.load(p, device="cpu")) for n, p in (w.split("=", 1) for w in weights)]
    name, path = weights[0].split("=", 1)
    if anchor:
        plain = Retoucher.load(path, device="cpu")
        with torch.no_grad():
            plain.model.synthesis.out.weight.zero_()
            plain.model.synthesis.out.bias.zero_()
        models.insert(1, (f"{name}, anchor alone", plain))
    if without_hold:
        plain = Retoucher.load(path, device="cpu")
        plain.tone_sigma = 0.0
        models.insert(1, (f"{name}, tone hold off", plain))
    return models


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", action="append", required=True, help="NAME=PATH (repeat); the first one's mask is brushed")
    ap.add_argument("--without-hold", action="store_true", help="a column for the first weights without the tone hold")
    ap.add_argument("--name", default="acne04_0010.jpg")
    ap.add_argument("--out", type=Path, default=ROOT / "resources" / "docs" / "brush_figure.png")
    args = ap.parse_args()
    photo = load_image(DATA / args.name).pixels
    models = load_models(args.weights, args.without_hold)
    first = models[0][1].analyze(photo)
    mask = brushed_mask(first.mask, first.plan.px_per_mm)
    y, x = densest(mask, CROP)
    sl = (slice(y, y + CROP), slice(x, x + CROP))
    shown = paint(first.mask, mask)
    panels = [("photo (100 %)", photo), ("brushed mask", from_float(np.dstack([shown] * 3), np.uint8))]
    for name, r in models:
        a = first if r is models[0][1] else r.analyze(photo)
        panels.append((name, r.composite(photo, r.render(a, paint(a.mask, mask)), 1.0)))
    panels.append(("Telea", from_float(telea_heal(to_float(photo), mask, first.plan.px_per_mm), np.uint8)))
    tiles = []
    for label, img in panels:
        tile = cv2.resize(np.ascontiguousarray(img[sl]), None, fx=1.5, fy=1.5, interpolation=cv2.INTER_NEAREST)
        head = np.full((24, tile.shape[1], 3), 255, np.uint8)
        cv2.putText(head, label, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.concatenate([head, tile], 0))
        tiles.append(np.full((tiles[-1].shape[0], 4, 3), 255, np.uint8))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_image(args.out, np.concatenate(tiles[:-1], 1))
    print(f"{args.name}: crop at x={x}, y={y}; {args.out}")


if __name__ == "__main__":
    main()
