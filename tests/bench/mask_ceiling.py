"""What Soft-IoU against the synthetic blend weight can reach, and where a model's mask stands.

    python tests/bench/mask_ceiling.py [--weights resources/models/small.safetensors] [--count 16]

Soft-IoU (engine.training.metrics.soft_iou) compares the predicted mask with the exact blend
weight φ of the synthetic blemishes, which is soft (a spot's rim is 0.05). This prints, on
validation portraits (held out, after the evaluation's first 200: ``--offset``):

* ceilings of masks that know the truth: the exact footprint (φ > 0.2, binary) and the visible
  difference abs(raw − clean) scaled to its maximum;
* the model's mask (raw H̄ and calibrated): Soft-IoU, and as a detector at 0.5 its recall of
  blemish pixels (φ > 0.2) and its precision (what it marks that is inside a blemish, φ > 0.02);
* the best fixed remapping ``scale · mask ** power`` of the raw mask (fitted on the same faces,
  so an upper bound for any calibration of the mask's strength alone);
* what the model's retouch changes, abs(x − ŷ), scaled to its maximum and over the best fixed
  contrast (with an exact fill it would be the visible difference above).
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.model import load_model  # noqa: E402
from engine.training import metrics  # noqa: E402
from engine.training.calibrate import SEED  # noqa: E402
from engine.training.data import eval_pairs  # noqa: E402
from engine.training.evaluate import DEFAULT_CLEAN  # noqa: E402

POWERS = (1.0, 1.5, 2.0, 3.0)
SCALES = (0.2, 0.3, 0.5, 0.7, 1.0)
CONTRASTS = (0.04, 0.08, 0.16, 0.24, 0.32, 0.48)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", type=Path, default=Path("resources/models/small.safetensors"))
    p.add_argument("--count", type=int, default=16)
    p.add_argument("--offset", type=int, default=200)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    model = load_model(a.weights)
    rows: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        rows.setdefault(key, []).append(value)

    n = 0
    for _, raw, clean, true in eval_pairs(DEFAULT_CLEAN, model.config.work_px_per_mm, a.count, SEED, offset=a.offset):
        n += 1
        visible = np.abs(raw - clean).max(2)
        add("ceiling: exact footprint (φ > 0.2), binary", metrics.soft_iou((true > 0.2).astype(np.float32), true))
        add("ceiling: visible difference abs(raw − clean) / its maximum", metrics.soft_iou(visible / max(float(visible.max()), 1e-6), true))
        x = torch.from_numpy(raw).permute(2, 0, 1)[None].contiguous()
        with torch.inference_mode():
            enc = model.encode(x)
            raw_mask = torch.sigmoid(model.mask_logits(x, enc.recon, ema=True))[0, 0].numpy()
            change = (model.synthesize(enc)[0] - x).abs().amax(1)[0].numpy()  # what the retouch changes
        add("model: raw H̄", metrics.soft_iou(raw_mask, true))
        add("model: calibrated (as shipped)", metrics.soft_iou(enc.mask[0, 0].numpy(), true))
        add("model: its own change abs(x − ŷ) / its maximum", metrics.soft_iou(change / max(float(change.max()), 1e-6), true))
        for c in CONTRASTS:
            add(f"change {c}", metrics.soft_iou(np.clip(change / c, 0.0, 1.0), true))
        marked = raw_mask > 0.5
        add("model at 0.5: recall of blemish pixels (φ > 0.2)", float((marked & (true > 0.2)).sum() / max((true > 0.2).sum(), 1)))
        add("model at 0.5: precision (marked pixels inside a blemish, φ > 0.02)", float((marked & (true > 0.02)).sum() / max(marked.sum(), 1)))
        for power, scale in itertools.product(POWERS, SCALES):
            add(f"remap {scale} · mask ** {power}", metrics.soft_iou(scale * raw_mask**power, true))
    def best(prefix: str) -> tuple[str, float]:
        """The setting (key without ``prefix``) with the highest mean among rows named ``prefix ...``."""
        means = {k[len(prefix):]: float(np.mean(v)) for k, v in rows.items() if k.startswith(prefix)}
        key = max(means, key=means.get)
        return key, means[key]

    print(f"| {a.weights.name}, {n} validation portraits (offset {a.offset}) | Soft-IoU against φ, or share |\n|---|---|")
    for k, v in rows.items():
        if not k.startswith(("remap ", "change ")):
            print(f"| {k} | {np.mean(v):.3f} |")
    remap, value = best("remap ")
    print(f"| model: best fixed remapping of the raw mask ({remap}) | {value:.3f} |")
    contrast, value = best("change ")
    print(f"| model: its own change over a fixed contrast, abs(x − ŷ) / {contrast}, clipped to 1 | {value:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
