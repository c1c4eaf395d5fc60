"""`retouch eval`: the model against the classical tools a photographer could use without it.

On synthetic pairs built from held-out portraits (a fixed ~10 % of the clean portraits that
training never sees, engine.training.data.is_holdout), report the mean over images of
- PSNR and SSIM of the whole image,
- PSNR inside the blemish region (true mask > 0.2),
- Soft-IoU of the predicted mask (sum of minima over sum of maxima),
for each model given and for three baselines: the untouched input, edge-preserving skin
smoothing (bilateral, engine.training.baselines.bilateral_smooth) and classical spot healing (spot
detection + OpenCV inpainting, engine.training.baselines.spot_heal).

--by-kind repeats the evaluation once per blemish kind of the synthesiser (papules, dark spots,
scars, redness, under-eye circles, each alone), to show where a model's mask falls short.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from engine.training import baselines, metrics
from engine.training.data import DEFAULT_DATA, eval_pairs
from engine.model import load_model
from engine.paths import default_weights_path
from engine.training.skin import skin_mask
from engine.training.synth import BLEMISH_KINDS, SynthConfig

DEFAULT_CLEAN = DEFAULT_DATA / "faces"
BLEMISH_THRESHOLD = 0.2

Method = Callable[[list[np.ndarray]], list[tuple[np.ndarray, np.ndarray | None]]]


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="retouch eval", description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", default=[], metavar="NAME=WEIGHTS", help="a model to evaluate (repeatable); default: the bundled model")
    p.add_argument("--clean", type=Path, default=DEFAULT_CLEAN, help="folder of clean portraits (its held-out part is used)")
    p.add_argument("--count", type=int, default=200, help="number of held-out portraits")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--json", type=Path, help="write the table as JSON")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--by-kind", action="store_true", help="also evaluate each blemish kind on its own")
    return p


def model_method(path: Path, batch: int = 8) -> tuple[Method, int]:
    model = load_model(path)

    def run(raws: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        out: list[tuple[np.ndarray, np.ndarray | None]] = []
        for i in range(0, len(raws), batch):
            x = torch.from_numpy(np.stack(raws[i : i + batch])).permute(0, 3, 1, 2).contiguous()
            with torch.inference_mode():
                res = model(x)
            for img, m in zip(res.image, res.mask):
                out.append((img.permute(1, 2, 0).numpy(), m[0].numpy()))
        return out

    return run, model.config.image_size


def baseline_methods() -> dict[str, Method]:
    return {
        "input (untouched)": lambda raws: [(r, None) for r in raws],
        "bilateral skin smoothing": lambda raws: [(baselines.bilateral_smooth(r, skin_mask(r)), None) for r in raws],
        "spot healing (detect + inpaint)": lambda raws: [baselines.spot_heal(r) for r in raws],
    }


def score(results: list[tuple[np.ndarray, np.ndarray | None]], cleans: list[np.ndarray], masks: list[np.ndarray]) -> dict[str, float | None]:
    ps, ss, pin, iou = [], [], [], []
    for (out, pred), clean, true in zip(results, cleans, masks):
        ps.append(metrics.psnr(out, clean))
        ss.append(metrics.ssim(out, clean))
        region = true > BLEMISH_THRESHOLD
        if region.any():
            pin.append(metrics.psnr(out, clean, mask=region))
        if pred is not None:
            iou.append(metrics.soft_iou(pred, true))

    def mean(v: list[float]) -> float | None:
        finite = [x for x in v if np.isfinite(x)]
        return float(np.mean(finite)) if finite else None

    return {"psnr": mean(ps), "ssim": mean(ss), "psnr_blemish": mean(pin), "soft_iou": mean(iou)}


def evaluate(
    models: dict[str, Path], clean_dir: Path, count: int, seed: int, with_baselines: bool = True, synth: SynthConfig | None = None
) -> dict[str, dict[str, float | None]]:
    methods: dict[str, Method] = baseline_methods() if with_baselines else {}
    size = None
    for name, path in models.items():
        methods[name], s = model_method(path)
        if size not in (None, s):
            raise SystemExit("all models in one evaluation must share the native resolution")
        size = s
    pairs = list(eval_pairs(clean_dir, size or 256, count, seed, synth))
    if not pairs:
        raise SystemExit(f"no held-out portraits found in {clean_dir}")
    raws = [p[1] for p in pairs]
    cleans = [p[2] for p in pairs]
    masks = [p[3] for p in pairs]
    table: dict[str, dict[str, float | None]] = {}
    for name, method in methods.items():
        t0 = time.perf_counter()
        table[name] = score(method(raws), cleans, masks)
        table[name]["seconds_per_image"] = (time.perf_counter() - t0) / len(raws)
        print(f"evaluated {name}", file=sys.stderr)
    table["_meta"] = {"images": len(pairs), "size": size or 256, "seed": seed, "blemish_threshold": BLEMISH_THRESHOLD}  # type: ignore[assignment]
    return table


def _fmt(v: float | None, digits: int) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def markdown(table: dict[str, dict[str, float | None]]) -> str:
    f = _fmt
    lines = [
        "| method | PSNR (dB) | SSIM | PSNR in blemishes (dB) | Soft-IoU of mask | s / image |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        if name.startswith("_"):
            continue
        lines.append(
            f"| {name} | {f(row['psnr'], 2)} | {f(row['ssim'], 4)} | {f(row['psnr_blemish'], 2)} | {f(row['soft_iou'], 3)} | {f(row['seconds_per_image'], 3)} |"
        )
    return "\n".join(lines)


def markdown_by_kind(tables: dict[str, dict[str, dict[str, float | None]]]) -> str:
    """One row per blemish kind and method: PSNR inside the blemishes and the mask's Soft-IoU."""
    f = _fmt
    lines = ["| blemish kind (alone) | method | PSNR in blemishes (dB) | Soft-IoU of mask |", "|---|---|---|---|"]
    for kind, table in tables.items():
        for name, row in table.items():
            if not name.startswith("_"):
                lines.append(f"| {kind} | {name} | {f(row['psnr_blemish'], 2)} | {f(row['soft_iou'], 3)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models: dict[str, Path] = {}
    for item in args.model or [f"RetouchFormer small (bundled)={default_weights_path()}"]:
        name, _, path = item.rpartition("=")
        models[name or Path(path).stem] = Path(path)
    table = evaluate(models, args.clean, args.count, args.seed, not args.no_baselines)
    print(markdown(table))
    if args.by_kind:
        kinds = {k: evaluate(models, args.clean, args.count, args.seed, not args.no_baselines, SynthConfig.only(k)) for k in BLEMISH_KINDS}
        print()
        print(markdown_by_kind(kinds))
        table["_by_kind"] = kinds  # type: ignore[assignment]
    if args.json:
        from engine.imageio import atomic_write_bytes

        atomic_write_bytes(args.json, json.dumps(table, indent=2).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
