"""`retouch eval`: the model against the classical tools a photographer could use without it.

On synthetic pairs built from held-out portraits (a fixed ~10 % of the clean portraits that
training never sees, engine.training.data.is_holdout), brought to the model's working scale and
given blemishes sized in millimetres, report the mean over images of

- PSNR and SSIM of the whole image,
- PSNR inside the blemish region (true mask > 0.2) and the mean CIEDE2000 colour error there,
- Soft-IoU of the predicted mask (sum of minima over sum of maxima), where a method predicts one.

Three tables:

- the default: methods that find the blemishes themselves: the untouched input, edge-preserving
  skin smoothing (bilateral), classical spot healing (spot detection + Telea inpainting), and
  each model with its own predicted mask;
- ``--true-mask``: every method is handed the exact blemish mask: each model, OpenCV's Telea
  inpainting, a median blend toward the surrounding skin, the classical fill the model is
  anchored on (engine.model.fill), and a frequency-separation heal;
- ``--face-size 250,500,1000``: the same held-out faces rescaled so the face is about that many
  pixels wide (upscaled when the source is smaller), blemishes in millimetres at that size, run
  through the whole run-time pipeline (face detection, working scale, full-resolution
  correction: engine.retoucher) with the predicted mask.

``--by-kind`` repeats the default table once per blemish kind of the synthesiser. ``--offset N``
skips the first N held-out portraits (validation of training runs uses portraits the
evaluation does not).

``--against NAME`` adds a paired table: every other method's difference from NAME on the same
images (the mean over images of the per-image difference, with a 95 % interval from its standard
error, and on how many images the method did better). Two models (two checkpoints, an ablation
against the full model) whose interval holds zero differ by no more than the images' noise.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from engine.model import load_model
from engine.paths import default_weights_path
from engine.training import baselines, metrics
from engine.training.data import DEFAULT_DATA, centre_crop, eval_pairs, holdout_paths, load_at_scale
from engine.skin import skin_mask
from engine.training.synth import BLEMISH_KINDS, FACE_WIDTH_MM, SynthConfig, synthesize

DEFAULT_CLEAN = [DEFAULT_DATA / "faces-hq", DEFAULT_DATA / "faces"]
BLEMISH_THRESHOLD = 0.2

Result = tuple[np.ndarray, np.ndarray | None]  # (output image, predicted mask or None)
#: A method: (raw images, true masks) -> one result per image.
Method = Callable[[list[np.ndarray], list[np.ndarray]], list[Result]]


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="retouch eval", description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", default=[], metavar="NAME=WEIGHTS", help="a model to evaluate (repeatable); default: the bundled model")
    p.add_argument("--clean", type=Path, action="append", default=None, help="folder(s) of clean portraits (their held-out part is used); default: faces-hq and faces")
    p.add_argument("--count", type=int, default=200, help="number of held-out portraits")
    p.add_argument("--offset", type=int, default=0, help="skip this many held-out portraits first (validation uses later ones than the evaluation)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--true-mask", action="store_true", help="hand every method the exact blemish mask (model vs classical healing)")
    p.add_argument("--face-size", metavar="W[,W...]", help="evaluate the whole pipeline on faces rescaled to these widths in pixels, e.g. 250,500,1000")
    p.add_argument("--json", type=Path, help="write the table(s) as JSON")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--by-kind", action="store_true", help="also evaluate each blemish kind on its own")
    p.add_argument("--against", metavar="NAME", help="also print each method's difference from this one (a --model name or a baseline's), image by image, with a 95%% interval")
    return p


def model_method(path: Path, true_mask: bool = False) -> tuple[Method, float]:
    """The model on each whole image at the working scale, with its own mask or the true one."""
    model = load_model(path)

    def run(raws: list[np.ndarray], masks: list[np.ndarray]) -> list[Result]:
        out: list[Result] = []
        for raw, true in zip(raws, masks):
            x = torch.from_numpy(raw).permute(2, 0, 1)[None].contiguous()
            m = torch.from_numpy(true)[None, None] if true_mask else None
            with torch.inference_mode():
                res = model(x, m)
            out.append((res.image[0].permute(1, 2, 0).numpy(), None if true_mask else res.mask[0, 0].numpy()))
        return out

    return run, model.config.work_px_per_mm


def untouched() -> dict[str, Method]:
    """The untouched input, the first row of every table."""
    return {"input (untouched)": lambda raws, _m: [(r, None) for r in raws]}


def baseline_methods() -> dict[str, Method]:
    """Methods that find the blemishes themselves."""
    return {
        **untouched(),
        "bilateral skin smoothing": lambda raws, _m: [(baselines.bilateral_smooth(r, skin_mask(r)), None) for r in raws],
        "spot healing (detect + inpaint)": lambda raws, _m: [baselines.spot_heal(r) for r in raws],
    }


def healing_methods(px_per_mm: float) -> dict[str, Method]:
    """Classical healing handed the true mask."""

    def handed(fn: Callable[..., np.ndarray]) -> Method:
        return lambda raws, masks: [(fn(r, m, px_per_mm), None) for r, m in zip(raws, masks)]

    return {
        **untouched(),
        "Telea inpainting": handed(baselines.telea_heal),
        "median blend": handed(baselines.median_blend),
        "classical fill (the model's anchor)": handed(baselines.anchor_heal),
        "frequency-separation heal": handed(baselines.frequency_separation_heal),
    }


#: The figures kept per image (for --against), in table order; a higher value is better for all but ΔE.
PAIRED = ("psnr", "psnr_blemish", "delta_e_blemish", "soft_iou")
LOWER_IS_BETTER = {"delta_e_blemish"}
#: paired(): method -> figure -> {"mean", "ci95", "images", "better"} (None where there is no figure)
Paired = dict[str, dict[str, dict[str, float | int | None] | None]]


def score(results: list[Result], cleans: list[np.ndarray], masks: list[np.ndarray]) -> dict[str, object]:
    """The mean of each figure over the images, and (under "per_image") the figures of each image
    in order, None where an image has none (no blemish pixel, no predicted mask, an infinite PSNR)."""
    per: dict[str, list[float | None]] = {k: [] for k in ("psnr", "ssim", "psnr_blemish", "delta_e_blemish", "soft_iou")}
    for (out, pred), clean, true in zip(results, cleans, masks):
        per["psnr"].append(metrics.psnr(out, clean))
        per["ssim"].append(metrics.ssim(out, clean))
        region = true > BLEMISH_THRESHOLD
        per["psnr_blemish"].append(metrics.psnr(out, clean, mask=region) if region.any() else None)
        per["delta_e_blemish"].append(metrics.mean_delta_e(out, clean, mask=region) if region.any() else None)
        per["soft_iou"].append(metrics.soft_iou(pred, true) if pred is not None else None)
    per = {k: [float(x) if x is not None and np.isfinite(x) else None for x in v] for k, v in per.items()}

    def mean(v: list[float | None]) -> float | None:
        finite = [x for x in v if x is not None]
        return float(np.mean(finite)) if finite else None

    row: dict[str, object] = {k: mean(v) for k, v in per.items()}
    row["per_image"] = {k: per[k] for k in PAIRED}
    return row


def require_method(reference: str, names: list[str]) -> None:
    """Refuse an --against name that is not one of the table's methods."""
    if reference not in names:
        raise SystemExit(f"--against: no method called {reference!r} in this table (there are: {', '.join(names)})")


def paired(table: dict[str, dict], reference: str) -> Paired:
    """Each method's per-image difference from ``reference`` on the images both have a figure for:
    mean, the half-width of its 95 % interval (1.96 standard errors; normal approximation), the
    number of images, and on how many of them the method is better."""
    require_method(reference, [k for k in table if not k.startswith("_")])
    ref = table[reference]["per_image"]
    out: Paired = {}
    for name, row in table.items():
        if name.startswith("_") or name == reference:
            continue
        out[name] = {}
        for key in PAIRED:
            d = np.array([a - b for a, b in zip(row["per_image"][key], ref[key]) if a is not None and b is not None], dtype=np.float64)
            if d.size == 0:
                out[name][key] = None
                continue
            half = 1.96 * float(d.std(ddof=1)) / float(np.sqrt(d.size)) if d.size > 1 else None  # one image: no interval
            better = int(np.sum(d < 0) if key in LOWER_IS_BETTER else np.sum(d > 0))
            out[name][key] = {"mean": float(d.mean()), "ci95": half, "images": int(d.size), "better": better}
    return out


def _models(models: dict[str, Path], true_mask: bool) -> tuple[dict[str, Method], float]:
    methods: dict[str, Method] = {}
    scale = None
    for name, path in models.items():
        methods[name], s = model_method(path, true_mask)
        if scale not in (None, s):
            raise SystemExit("all models in one evaluation must share the working scale (work_px_per_mm)")
        scale = s
    return methods, scale or 1.6


def _run(methods: dict[str, Method], pairs: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, dict[str, float | None]]:
    raws, cleans, masks = [p[1] for p in pairs], [p[2] for p in pairs], [p[3] for p in pairs]
    table: dict[str, dict[str, float | None]] = {}
    for name, method in methods.items():
        t0 = time.perf_counter()
        table[name] = score(method(raws, masks), cleans, masks)
        table[name]["seconds_per_image"] = (time.perf_counter() - t0) / len(raws)
        print(f"evaluated {name}", file=sys.stderr)
    return table


def evaluate(
    models: dict[str, Path],
    clean_dirs: list[Path],
    count: int,
    seed: int,
    with_baselines: bool = True,
    synth: SynthConfig | None = None,
    true_mask: bool = False,
    offset: int = 0,
) -> dict[str, dict[str, float | None]]:
    """One table on held-out pairs at the models' working scale (see the module doc)."""
    mine, scale = _models(models, true_mask)
    methods: dict[str, Method] = {}
    if with_baselines:
        methods.update(healing_methods(scale) if true_mask else baseline_methods())
    methods.update(mine)
    pairs = list(eval_pairs(clean_dirs, scale, count, seed, synth, offset))
    if not pairs:
        raise SystemExit(f"no held-out portraits found in {', '.join(map(str, clean_dirs))}")
    table = _run(methods, pairs)
    table["_meta"] = {"images": len(pairs), "px_per_mm": scale, "seed": seed, "offset": offset, "true_mask": true_mask, "blemish_threshold": BLEMISH_THRESHOLD}  # type: ignore[assignment]
    return table


def face_size_pairs(clean_dirs: list[Path], width: int, count: int, seed: int, offset: int = 0, config: SynthConfig | None = None) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Held-out portraits rescaled so the face is about ``width`` px wide (face width 140 mm),
    with blemishes sized in millimetres at that scale (``config``: of these kinds only); (name,
    raw, clean, mask) as uint8-exact floats."""
    px_per_mm = width / FACE_WIDTH_MM
    out = []
    for i, p in enumerate(holdout_paths(clean_dirs, count, offset)):
        img = centre_crop(load_at_scale(p, px_per_mm), 16, None)
        clean = img.astype(np.float32) / 255.0
        s = synthesize(clean, np.random.default_rng(seed + offset + i), config, px_per_mm=px_per_mm)
        raw = np.round(s.raw * 255.0) / 255.0  # what a photo file holds
        out.append((p.name, raw.astype(np.float32), clean, s.mask))
    return out


def pipeline_method(path: Path) -> Method:
    """The whole run-time path (engine.retoucher.Retoucher) with the predicted mask, on 8-bit photos."""
    from engine.retoucher import Retoucher

    r = Retoucher.load(path, device="cpu")

    def run(raws: list[np.ndarray], _masks: list[np.ndarray]) -> list[Result]:
        out: list[Result] = []
        for raw in raws:
            photo = np.round(raw * 255.0).astype(np.uint8)
            a = r.analyze(photo)
            res = r.composite(photo, r.render(a), 1.0)
            out.append((res.astype(np.float32) / 255.0, a.mask))
        return out

    return run


def evaluate_face_sizes(models: dict[str, Path], clean_dirs: list[Path], widths: list[int], count: int, seed: int, offset: int = 0) -> dict[str, dict[str, dict[str, float | None]]]:
    """One table per face width: the untouched photo and each model through the whole pipeline."""
    tables = {}
    for width in widths:
        pairs = face_size_pairs(clean_dirs, width, count, seed, offset)
        if not pairs:
            raise SystemExit(f"no held-out portraits found in {', '.join(map(str, clean_dirs))}")
        methods = untouched()
        methods.update({name: pipeline_method(path) for name, path in models.items()})
        table = _run(methods, pairs)
        table["_meta"] = {"images": len(pairs), "face_width": width, "image_side": int(pairs[0][1].shape[0]), "seed": seed}  # type: ignore[assignment]
        tables[str(width)] = table
    return tables


def _fmt(v: float | None, digits: int) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def markdown(table: dict[str, dict[str, float | None]]) -> str:
    f = _fmt
    lines = [
        "| method | PSNR (dB) | SSIM | PSNR in blemishes (dB) | ΔE2000 in blemishes | Soft-IoU of mask | s / image |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        if name.startswith("_"):
            continue
        lines.append(
            f"| {name} | {f(row['psnr'], 2)} | {f(row['ssim'], 4)} | {f(row['psnr_blemish'], 2)} | {f(row['delta_e_blemish'], 2)} | {f(row['soft_iou'], 3)} | {f(row['seconds_per_image'], 3)} |"
        )
    return "\n".join(lines)


def difference(d: dict[str, float | int | None] | None, digits: int) -> str:
    """One figure of paired(): "mean ± 95 % interval (better on k/n images)"; no interval from one image."""
    if d is None:
        return "n/a"
    spread = "" if d["ci95"] is None else f" ± {d['ci95']:.{digits}f}"
    return f"{d['mean']:+.{digits}f}{spread} ({d['better']}/{d['images']} better)"


def markdown_paired(groups: dict[str, Paired], reference: str, group_header: str | None = None) -> str:
    """One row per method (and group, e.g. face width, under ``group_header``): its difference from
    ``reference`` image by image (mean ± 95 % interval, and the images on which it is better)."""

    lead = f"| {group_header} " if group_header else ""
    lines = [
        f"{lead}| difference from {reference}, image by image | PSNR (dB) | PSNR in blemishes (dB) | ΔE2000 in blemishes | Soft-IoU of mask |",
        "|---" * (5 + bool(group_header)) + "|",
    ]
    for group, diffs in groups.items():
        for name, row in diffs.items():
            first = f"| {group} " if group_header else ""
            lines.append(f"{first}| {name} | {difference(row['psnr'], 2)} | {difference(row['psnr_blemish'], 2)} | {difference(row['delta_e_blemish'], 2)} | {difference(row['soft_iou'], 3)} |")
    return "\n".join(lines)


def markdown_by_kind(tables: dict[str, dict[str, dict[str, float | None]]]) -> str:
    """One row per blemish kind and method: PSNR and colour error inside the blemishes, Soft-IoU."""
    f = _fmt
    lines = ["| blemish kind (alone) | method | PSNR in blemishes (dB) | ΔE2000 in blemishes | Soft-IoU of mask |", "|---|---|---|---|---|"]
    for kind, table in tables.items():
        for name, row in table.items():
            if not name.startswith("_"):
                lines.append(f"| {kind} | {name} | {f(row['psnr_blemish'], 2)} | {f(row['delta_e_blemish'], 2)} | {f(row['soft_iou'], 3)} |")
    return "\n".join(lines)


def markdown_face_sizes(tables: dict[str, dict[str, dict[str, float | None]]]) -> str:
    f = _fmt
    lines = ["| face width (px) | photo side (px) | method | PSNR (dB) | PSNR in blemishes (dB) | ΔE2000 in blemishes | Soft-IoU of mask | s / image |", "|---|---|---|---|---|---|---|---|"]
    for width, table in tables.items():
        side = table["_meta"]["image_side"]  # type: ignore[index]
        for name, row in table.items():
            if not name.startswith("_"):
                lines.append(
                    f"| {width} | {side} | {name} | {f(row['psnr'], 2)} | {f(row['psnr_blemish'], 2)} | {f(row['delta_e_blemish'], 2)} | {f(row['soft_iou'], 3)} | {f(row['seconds_per_image'], 2)} |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cv2.setNumThreads(max(1, args.threads or 0))
    models: dict[str, Path] = {}
    for item in args.model or [f"RetouchFormer small (bundled)={default_weights_path()}"]:
        name, _, path = item.rpartition("=")
        models[name or Path(path).stem] = Path(path)
    clean = args.clean or DEFAULT_CLEAN
    if args.against:  # say so now, not after the whole evaluation has run
        if args.face_size:
            names = list(untouched())
        elif args.no_baselines:
            names = []
        else:
            names = list(healing_methods(1.0) if args.true_mask else baseline_methods())  # the names only: the scale does not matter
        require_method(args.against, names + list(models))
    out: dict[str, object] = {}
    if args.face_size:
        try:
            widths = [int(w) for w in args.face_size.split(",") if w.strip()]
        except ValueError:
            raise SystemExit(f"--face-size takes whole numbers separated by commas, not {args.face_size!r}") from None
        tables = evaluate_face_sizes(models, clean, widths, args.count, args.seed, args.offset)
        print(markdown_face_sizes(tables))
        out["_face_sizes"] = tables
        if args.against:
            diffs = {w: paired(t, args.against) for w, t in tables.items()}
            print()
            print(markdown_paired(diffs, args.against, "face width (px)"))
            out["_paired"] = {"against": args.against, "face_sizes": diffs}
    else:
        table = evaluate(models, clean, args.count, args.seed, not args.no_baselines, true_mask=args.true_mask, offset=args.offset)
        print(markdown(table))
        out.update(table)
        if args.against:
            diffs = paired(table, args.against)
            print()
            print(markdown_paired({"": diffs}, args.against))
            out["_paired"] = {"against": args.against, "table": diffs}
        if args.by_kind:
            kinds = {
                k: evaluate(models, clean, args.count, args.seed, not args.no_baselines, SynthConfig.only(k), args.true_mask, args.offset)
                for k in BLEMISH_KINDS
            }
            print()
            print(markdown_by_kind(kinds))
            out["_by_kind"] = kinds
    if args.json:
        from engine.imageio import atomic_write_bytes

        atomic_write_bytes(args.json, json.dumps(out, indent=2).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
