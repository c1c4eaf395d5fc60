"""Parameter count and forward time of the `small` and `paper` configurations.

    python tests/bench/bench_model.py [--threads N] [--repeat R] [--device cpu|cuda]

Times the whole forward (encoder, prior, mask net, transformer, decoder) of one image at the
configuration's native resolution and at 512×512, after one warm-up run, as the median of
--repeat runs.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from engine.model import ModelConfig, PixelDiscriminator, RetouchFormer


def time_forward(model: RetouchFormer, size: int, repeat: int, device: str) -> float:
    x = torch.rand(1, 3, size, size, device=device)
    times = []
    with torch.inference_mode():
        model(x)
        for _ in range(repeat):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, device {args.device}")
    print("| config | params (G+H+prior) | D params | native | forward @ native | forward @ 512² |")
    print("|---|---|---|---|---|---|")
    for name in ("small", "paper"):
        cfg = ModelConfig.preset(name)
        model = RetouchFormer(cfg).to(args.device).eval()
        disc = PixelDiscriminator(cfg)
        native = time_forward(model, cfg.image_size, args.repeat, args.device)
        at512 = native if cfg.image_size == 512 else time_forward(model, 512, args.repeat, args.device)
        print(
            f"| {name} | {model.parameter_count() / 1e6:.2f} M | {sum(p.numel() for p in disc.parameters()) / 1e6:.2f} M |"
            f" {cfg.image_size}² | {native:.3f} s | {at512:.3f} s |"
        )


if __name__ == "__main__":
    main()
