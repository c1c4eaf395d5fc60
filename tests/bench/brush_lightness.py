"""Does a fill under a brushed mask leave a pale (or dark) patch on real photos? One figure per weights.

    python tests/bench/brush_lightness.py --weights "bundled=resources/models/small.safetensors" \
        --weights "candidate=runs/ship/candidate.safetensors" [--without-hold] [--names acne04_0010.jpg,...]

A photographer brushes over a whole acne cluster (the first weights' predicted mask above 0.15,
grown by 2 mm: ``make_brush_figure.brushed_mask``), so the fill covers clean skin between the
spots as well. The stroke is painted over each weights' own predicted mask, as the program's
brush paints it (``app.maskedit.paint``: the rest of the prediction stays). On that clean skin
(inside the brush, the first weights' predicted mask below 0.05: with this stroke mostly the spots'
rims, within 1 mm of where that mask reaches 0.05) the retouched photo should keep
the photo's lightness: the mean CIELAB L* shift there is printed per photo and per weights
(positive = paler), and beside them for OpenCV's Telea inpainting of the same stroke (the
classical fill a photographer already has); ``--without-hold`` adds the first weights with the
tone hold off, ``--anchor`` the classical fill their G is anchored on (G's output zeroed). Synthetic validation cannot see this (its clean skin is the target); run it before
shipping new weights beside ``ship_weights.sh``. The candidate ships when its mean shift is within
±1 L* and its mean absolute shift is no larger than the bundled weights'.

A second table scores the filled spots themselves (the first weights' predicted mask above 0.5,
inside the brush): their mean L* after the fill minus the photo's clean skin under the brush, the
lightness a healed spot should take. Negative is a dark smudge where a spot was (a fill that kept
brown acne marks: stages 12-14 in the model card), positive a pale one; the candidate's mean absolute
offset should be no larger than the bundled weights'. (The photo's own spots sit at about -3 to -6
L* there, Telea's fill is the classical reference.)

Two more tables do the same without a brush: each weights retouch the photo with their own
predicted mask, as the program does on opening it, and the same pixels are scored (the clean skin
and the spots of the first weights' mask under the brush's footprint). A mask that lays a haze over
a cluster (a mask net trained through the fill, --mask-fill) fills the skin between the spots as
a brush does, without the brush's tone hold: a pale patch there shows as a positive shift.

A last table scores how even the skin under the brush's footprint is left, with no brush: the mean
CIELAB colour difference (ΔE76) of each pixel's local colour (a Gaussian of 0.5 mm: pores and grain
do not count, spots and blotches do) from its neighbourhood's (3 mm: the face's shading does not
count either). The photo's own figure is its acne; a fill that leaves red rings or a blotchy
cluster (brown with yellowish dots where spots were, model card, twenty-first session) scores
higher than one that leaves the cluster even.
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np

from engine.imageio import from_float, load_image, to_float
from engine.training.baselines import telea_heal
from engine.training.data import REAL_CHECKS
from engine.training.metrics import srgb_to_lab
from app.maskedit import paint
from make_brush_figure import DATA, brushed_mask, load_models

# the six of the first measurements, and six more (with six, the mean moved by 0.3-0.5 L* between checkpoints of one run);
# training leaves them out of its raw photos (engine.training.data.REAL_CHECKS)
DEFAULT = ",".join(REAL_CHECKS)


def lightness(rgb: np.ndarray) -> np.ndarray:
    """CIELAB L* (0-100) of an RGB image (the colour conversion of the evaluation's ΔE2000)."""
    return srgb_to_lab(to_float(rgb))[..., 0]


SPREAD_MM = (0.5, 3.0)  # the local colour's Gaussian and the neighbourhood's, in millimetres


def spread(rgb: np.ndarray, region: np.ndarray, px_per_mm: float) -> float:
    """Mean ΔE76 over ``region`` of the local colour (a Gaussian of 0.5 mm) from its neighbourhood's
    (one of 3 mm): spots, rings and blotches count, pores and grain do not, nor does the face's shading."""
    lab = srgb_to_lab(to_float(rgb)).astype(np.float32)
    local, around = (cv2.GaussianBlur(lab, (0, 0), max(mm * px_per_mm, 0.5)) for mm in SPREAD_MM)
    return float(np.linalg.norm((local - around)[region], axis=1).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", action="append", required=True, help="NAME=PATH (repeat); the first one's mask is brushed")
    ap.add_argument("--without-hold", action="store_true", help="a column for the first weights without the tone hold")
    ap.add_argument("--anchor", action="store_true", help="a column for the first weights' classical anchor fill alone (G's output zeroed)")
    ap.add_argument("--names", default=DEFAULT, help="comma-separated file names in ../shared/data/acne-faces")
    args = ap.parse_args()
    models = load_models(args.weights, args.without_hold, args.anchor)
    shifts: dict[str, list[float]] = {n: [] for n, _ in models}
    shifts["Telea"] = []
    spots_off: dict[str, list[float]] = {"photo": [], **{n: [] for n in shifts}}  # filled spots against the skin
    own: dict[str, list[float]] = {n: [] for n, _ in models}  # the same, each weights' own prediction, no brush
    own_spots: dict[str, list[float]] = {n: [] for n, _ in models}
    even: dict[str, list[float]] = {"photo": [], **{n: [] for n, _ in models}}  # the footprint's tone spread, no brush
    measured: list[str] = []
    print("| photo | " + " | ".join(f"{n}: L* shift on clean skin under the brush" for n in shifts) + " |")
    print("|---|" + "---|" * len(shifts))
    for name in [n.strip() for n in args.names.split(",") if n.strip()]:
        photo = load_image(DATA / name).pixels
        first = models[0][1].analyze(photo)
        mask = brushed_mask(first.mask, first.plan.px_per_mm)
        between = (mask > 0.9) & (first.mask < 0.05)
        if not between.any():
            print(f"| {name} | " + " | ".join("n/a" for _ in shifts) + " |")
            continue
        photo_l = lightness(photo)
        before = photo_l[between].mean()
        measured.append(name)
        spots = (mask > 0.9) & (first.mask > 0.5)
        spots_off["photo"].append(float(photo_l[spots].mean() - before) if spots.any() else np.nan)
        footprint = mask > 0.9
        even["photo"].append(spread(photo, footprint, first.plan.px_per_mm))
        cells = []
        for n, r in models:
            a = first if r is models[0][1] else r.analyze(photo)
            result = lightness(r.composite(photo, r.render(a, paint(a.mask, mask)), 1.0))
            after = result[between].mean()
            shifts[n].append(float(after - before))
            spots_off[n].append(float(result[spots].mean() - before) if spots.any() else np.nan)
            cells.append(f"{after - before:+.2f}")
            opened = r.composite(photo, r.render(a), 1.0)  # as the program shows the photo on opening it
            plain = lightness(opened)
            own[n].append(float(plain[between].mean() - before))
            own_spots[n].append(float(plain[spots].mean() - before) if spots.any() else np.nan)
            even[n].append(spread(opened, footprint, first.plan.px_per_mm))
        telea = from_float(telea_heal(to_float(photo), mask, first.plan.px_per_mm), photo.dtype)
        telea_l = lightness(telea)
        shifts["Telea"].append(float(telea_l[between].mean() - before))
        spots_off["Telea"].append(float(telea_l[spots].mean() - before) if spots.any() else np.nan)
        cells.append(f"{shifts['Telea'][-1]:+.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    print("| mean (mean absolute) | " + " | ".join(f"{np.mean(v):+.2f} ({np.mean(np.abs(v)):.2f})" for v in shifts.values()) + " |")
    print("\n| photo | " + " | ".join(f"{n}: filled spots' L* minus the clean skin's" for n in spots_off) + " |")
    print("|---|" + "---|" * len(spots_off))
    for i, name in enumerate(measured):
        print(f"| {name} | " + " | ".join("n/a" if np.isnan(v[i]) else f"{v[i]:+.2f}" for v in spots_off.values()) + " |")
    print("| mean (mean absolute) | " + " | ".join(f"{np.nanmean(v):+.2f} ({np.nanmean(np.abs(v)):.2f})" for v in spots_off.values()) + " |")
    print("\n| photo (no brush: each weights' own predicted mask) | " + " | ".join(f"{n}: L* shift on the clean skin | {n}: filled spots' L* minus the clean skin's" for n in own) + " |")
    print("|---|" + "---|---|" * len(own))
    for i, name in enumerate(measured):
        print(f"| {name} | " + " | ".join(f"{own[n][i]:+.2f} | " + ("n/a" if np.isnan(own_spots[n][i]) else f"{own_spots[n][i]:+.2f}") for n in own) + " |")
    print("| mean (mean absolute) | " + " | ".join(f"{np.mean(own[n]):+.2f} ({np.mean(np.abs(own[n])):.2f}) | {np.nanmean(own_spots[n]):+.2f} ({np.nanmean(np.abs(own_spots[n])):.2f})" for n in own) + " |")

    print("\n| photo (no brush) | " + " | ".join(f"{n}: tone spread under the footprint (ΔE)" for n in even) + " |")
    print("|---|" + "---|" * len(even))
    for i, name in enumerate(measured):
        print(f"| {name} | " + " | ".join(f"{v[i]:.2f}" for v in even.values()) + " |")
    print("| mean | " + " | ".join(f"{np.mean(v):.2f}" for v in even.values()) + " |")


if __name__ == "__main__":
    main()
