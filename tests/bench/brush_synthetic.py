"""A photographer's broad brush on synthetic faces, where the clean face is known.

    python tests/bench/brush_synthetic.py [--weights resources/models/small.safetensors] [--count 40] [--width 500] [--kind under_eye] [--by-region]

Each held-out portrait gets synthetic blemishes (``engine.training.evaluate.face_size_pairs``,
face ``--width`` px wide; ``--kind``: of one kind only, e.g. the broad ``redness`` and
``under_eye``); the brush is their exact mask above 0.15 grown by 2 mm and softened
(``make_brush_figure.brushed_mask``, as a photographer brushes over a cluster), painted over
the model's own predicted mask as the program's brush paints it (``app.maskedit.paint``). The whole
run-time path (``Retoucher.analyze`` → ``render`` with that mask → ``composite``) is scored against
the clean face: PSNR inside the blemishes (exact mask above 0.2), on the clean skin under the brush
(brush above 0.5, exact mask below 0.02) with its mean L* shift there, and over the whole photo.
Three fills of the same brush: the model with the tone hold of clean skin
(``engine.model.fill.hold_tone``, what the program does), the model without it, and Telea's
inpainting; the mean over the faces and each one's difference from the first, image by image
(mean ± 95 % interval). ``--by-region`` adds where on the clean skin under the brush the L* shift
lies, over all the faces' pixels: below the eyes (the program's tone hold is off there), near a
spot the hold's reading found (``engine.model.fill.hold_reach`` at least 0.5: the hold applies) and
further from any (the fill's tone is left as it comes). Real photos under a brush: ``brush_lightness.py``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from engine import pipeline as pl
from engine.model.fill import hold_reach
from engine.retoucher import Analysis, Retoucher
from engine.training.baselines import telea_heal
from engine.training.evaluate import DEFAULT_CLEAN, face_size_pairs
from engine.training.metrics import psnr
from engine.training.synth import BLEMISH_KINDS, FACE_WIDTH_MM, SynthConfig
from app.maskedit import paint
from brush_lightness import lightness
from make_brush_figure import brushed_mask


def clean_under_brush(mask: np.ndarray, brush: np.ndarray) -> np.ndarray:
    """The clean skin under the brush: brush above 0.5, exact mask below 0.02."""
    return (brush > 0.5) & (mask < 0.02)


def scores(out: np.ndarray, clean: np.ndarray, mask: np.ndarray, brush: np.ndarray) -> tuple[float, float, float, float]:
    """(blemishes, clean skin under the brush, L* shift there, whole photo); NaN where a region is empty."""
    spots, between = mask > 0.2, clean_under_brush(mask, brush)
    nan = float("nan")
    shift = float((lightness(out) - lightness(clean))[between].mean()) if between.any() else nan
    return (psnr(out, clean, spots) if spots.any() else nan, psnr(out, clean, between) if between.any() else nan, shift, psnr(out, clean))


PARTS = ("below the eyes", "near a found spot", "far from any")


def hold_parts(r: Retoucher, a: Analysis, region: np.ndarray) -> list[np.ndarray]:
    """``region`` (full-resolution bool) split as :data:`PARTS`: where the tone hold is off below
    the eyes, where it applies near the spots its reading found, and the rest."""
    hold, reach = [], []
    for st in a.states:
        hold.append(np.ones_like(st.mask_n) if st.hold_n is None else st.hold_n)
        with torch.inference_mode():
            reach.append(hold_reach(torch.from_numpy(np.ascontiguousarray(st.tone_pred, np.float32))[None, None], r.tone_sigma)[0, 0].numpy())
    on = pl.assemble_mask(a.shape, a.plan.regions, hold) >= 0.5
    near = pl.assemble_mask(a.shape, a.plan.regions, reach) >= 0.5
    return [region & ~on, region & on & near, region & on & ~near]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", type=Path, default=None, help="model weights (default: the bundled ones)")
    ap.add_argument("--count", type=int, default=40)
    ap.add_argument("--width", type=int, default=500, help="face width in px")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kind", choices=BLEMISH_KINDS, help="blemishes of this kind only (default: the usual mix)")
    ap.add_argument("--by-region", action="store_true", help="also where the clean skin's L* shift lies: below the eyes, near a spot the hold found, further out")
    args = ap.parse_args()
    r = Retoucher.load(args.weights, device="cpu")
    px_per_mm = args.width / FACE_WIDTH_MM
    names = ("model (tone held)", "model (fill as it comes)", "Telea")
    rows: dict[str, list[tuple[float, float, float, float]]] = {n: [] for n in names}
    parts = {n: np.zeros((len(PARTS), 2)) for n in names[:2]}  # per part: summed L* shift, pixels
    for _name, raw, clean, mask in face_size_pairs(DEFAULT_CLEAN, args.width, args.count, args.seed, config=SynthConfig.only(args.kind) if args.kind else None):
        photo = np.round(raw * 255.0).astype(np.uint8)
        brush = brushed_mask(mask, px_per_mm)
        a = r.analyze(photo)
        held = r.composite(photo, r.render(a, paint(a.mask, brush)), 1.0).astype(np.float32) / 255.0
        sigma, r.tone_sigma = r.tone_sigma, 0.0  # the hold off, for a fresh analysis
        b = r.analyze(photo)
        plain = r.composite(photo, r.render(b, paint(b.mask, brush)), 1.0).astype(np.float32) / 255.0
        r.tone_sigma = sigma
        telea = np.round(telea_heal(raw, brush, px_per_mm) * 255.0) / 255.0
        if args.by_region:
            split, reference = hold_parts(r, a, clean_under_brush(mask, brush)), lightness(clean)
            for n, out in zip(names, (held, plain)):
                shift = lightness(out) - reference
                parts[n] += [(shift[p].sum(), p.sum()) for p in split]
        for n, out in zip(names, (held, plain, telea)):
            rows[n].append(scores(out, clean, mask, brush))
    kinds = args.kind or "the usual mix of"
    print(f"{len(rows[names[0]])} held-out faces, {args.width} px wide, {kinds} blemishes brushed (exact mask grown by 2 mm, painted over the predicted mask)\n")
    print("| fill | blemishes (dB) | clean skin under the brush (dB) | L* shift there | whole photo (dB) |")
    print("|---|---|---|---|---|")
    ref = np.array(rows[names[0]])
    for n in names:
        v = np.array(rows[n])
        cells = []
        for j in range(4):  # faces where a region is empty (no blemish survived the crop) left out of that column
            ok = ~np.isnan(v[:, j])
            mean = f"{v[ok, j].mean():.2f}"
            if n != names[0]:
                d = v[ok, j] - ref[ok, j]
                half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
                mean += f" ({d.mean():+.2f} ± {half:.2f}, {int((d > 0).sum())}/{len(d)} higher)"
            cells.append(mean)
        print(f"| {n} | " + " | ".join(cells) + " |")
    if args.by_region:
        total = parts[names[0]][:, 1].sum()
        print("\nThe clean skin under the brush, L* shift by where it lies (all faces' pixels; share of that skin in brackets)\n")
        print("| fill | " + " | ".join(f"{p} ({parts[names[0]][i, 1] / max(total, 1):.0%})" for i, p in enumerate(PARTS)) + " | all |")
        print("|---|" + "---|" * (len(PARTS) + 1))
        for n in names[:2]:
            v = parts[n]
            print(f"| {n} | " + " | ".join(f"{s / c:+.2f}" if c else "n/a" for s, c in v) + f" | {v[:, 0].sum() / max(v[:, 1].sum(), 1):+.2f} |")


if __name__ == "__main__":
    main()
