"""README figure on real photos: photo | predicted mask | retouched | classical healing, 100 % crops.

    python tests/bench/make_acne_figure.py [--weights W] [--names acne04_0012.jpg,...]
                                           [--out resources/docs/acne_figure.png]

Real acne photos from ../shared/data/acne-faces (read in place; only the figure is committed) go
through the same engine API as the GUI and the CLI (Retoucher.analyze -> render -> composite) with
the predicted mask. The last column heals the same predicted mask with OpenCV's Telea inpainting,
so the model is judged against what a photographer already has. Each row is a crop at 100 %
(one photo pixel per figure pixel) around the densest part of the predicted mask; the crops are
also written, unscaled, beside the figure for a closer look.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from engine.imageio import from_float, load_image, save_image, to_float
from engine.retoucher import Retoucher
from engine.training.baselines import telea_heal

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "acne-faces"
DEFAULT = "acne04_0010.jpg,acne04_0070.jpg,acne04_0095.jpg,acne04_0100.jpg"
CROP = 220


def densest(mask: np.ndarray, side: int) -> tuple[int, int]:
    """Top-left corner of the ``side`` x ``side`` window holding the most mask."""
    h, w = mask.shape
    box = cv2.boxFilter(mask, -1, (side, side), normalize=False, borderType=cv2.BORDER_CONSTANT)
    y, x = np.unravel_index(int(np.argmax(box)), box.shape)
    return int(np.clip(y - side // 2, 0, max(0, h - side))), int(np.clip(x - side // 2, 0, max(0, w - side)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=None)
    ap.add_argument("--names", default=DEFAULT, help="comma-separated file names in ../shared/data/acne-faces")
    ap.add_argument("--out", type=Path, default=ROOT / "resources" / "docs" / "acne_figure.png")
    ap.add_argument("--crops", type=Path, default=ROOT / "runs" / "figures" / "acne_crops")
    args = ap.parse_args()
    r = Retoucher.load(args.weights, device="cpu")
    rows = []
    args.crops.mkdir(parents=True, exist_ok=True)
    for name in [n.strip() for n in args.names.split(",") if n.strip()]:
        photo = load_image(DATA / name).pixels
        a = r.analyze(photo)
        out = r.composite(photo, r.render(a), 1.0)
        telea = from_float(telea_heal(to_float(photo), a.mask, a.plan.px_per_mm), np.uint8)
        y, x = densest(a.mask, CROP)
        sl = (slice(y, y + CROP), slice(x, x + CROP))
        mask_rgb = cv2.applyColorMap(from_float(a.mask, np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1]
        panels = [photo[sl], mask_rgb[sl], out[sl], telea[sl]]
        for label, p in zip(("photo", "mask", "retouched", "telea"), panels):
            save_image(args.crops / f"{Path(name).stem}_{label}.png", np.ascontiguousarray(p))
        gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([panels[0], gap, panels[1], gap, panels[2], gap, panels[3]], 1))
        print(f"{name}: {a.message}; crop at x={x}, y={y}")
    width = max(row.shape[1] for row in rows)
    rows = [np.pad(row, ((0, 4), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows]
    head = np.full((26, width, 3), 255, np.uint8)
    for i, label in enumerate(("photo (100 %)", "predicted mask", "retouched", "Telea, same mask")):
        cv2.putText(head, label, (6 + i * (CROP + 4), 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    fig = np.concatenate([head] + rows, 0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_image(args.out, fig)
    print(args.out)


if __name__ == "__main__":
    main()
