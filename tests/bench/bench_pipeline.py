"""Benchmark the full-resolution pipeline on this machine.

    python tests/bench/bench_pipeline.py [--weights W] [--device cpu|cuda|auto] [--tiles] [--repeat N]

Times (median of --repeat runs, after one warm-up):
  * analyze (face finding + encoder + prior + mask net) and a full retouch of a 512x512 face crop;
  * render() for an edited mask (a brush stroke): transformer + decoder only;
  * the strength re-composite of a 24-megapixel (6000x4000) photo with one face;
  * that 24-MP photo end to end (analyze + render + composite; loading/decoding the file is NOT
    included), and optionally (--tiles) the no-face path that tiles the whole 24-MP photo;
  * peak memory (ru_maxrss of the process, and the tracemalloc peak of NumPy allocations during the
    24-MP end-to-end run).

The photos are generated (skin-coloured noise with a few spots); the face position is given to
the pipeline (the OpenCV detector still runs on every photo, so its cost is included).
Without bundled weights a freshly initialised small model is used, with its last decoder layer
perturbed so that the correction is not empty (speed is the same as for trained weights).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import faces as faces_mod  # noqa: E402
from engine.model.checkpoint import save_model  # noqa: E402
from engine.model.config import ModelConfig  # noqa: E402
from engine.model.retouchformer import RetouchFormer  # noqa: E402
from engine.paths import default_weights_path  # noqa: E402
from engine.retoucher import Retoucher  # noqa: E402


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    base = np.array([200, 158, 133], np.int16)
    for y in range(0, h, 512):  # in strips, to keep the generator's own memory small
        noise = rng.integers(-8, 9, size=(min(512, h - y), w, 1), dtype=np.int16)
        img[y : y + 512] = np.clip(base + noise, 0, 255).astype(np.uint8)
    return img


class T(float):
    """Wall seconds that print with the process CPU seconds beside them (shows CPU contention)."""

    cpu: float = 0.0

    def __format__(self, spec: str) -> str:
        return f"{float(self):{spec or '.3f'}} s (cpu {self.cpu:.2f} s)"


def _time(fn, repeat: int) -> tuple[T, object]:
    out = fn()  # warm-up
    walls, cpus = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    res = T(statistics.median(walls))
    res.cpu = statistics.median(cpus)
    return res, out


def _with_face(box):
    real = faces_mod._real_detect if hasattr(faces_mod, "_real_detect") else faces_mod.detect_faces
    faces_mod._real_detect = real  # type: ignore[attr-defined]

    def detect(image, **kw):
        real(image, **kw)  # pay for the detector
        return [box] if box is not None else []

    faces_mod.detect_faces = detect


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tiles", action="store_true", help="also time the no-face 24-MP tiled path (slow)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    weights = Path(args.weights) if args.weights else default_weights_path()
    if weights.is_file():
        which = f"weights {weights}"
    else:
        torch.manual_seed(0)
        model = RetouchFormer(ModelConfig.preset("small"))
        with torch.no_grad():
            model.synthesis.out.weight.normal_(0.0, 0.02)
        weights = Path(tempfile.mkdtemp()) / "small-fresh.safetensors"
        save_model(model, weights)
        which = "a freshly initialised small model (no bundled weights yet)"
    r = Retoucher.load(weights, device=args.device)
    print(f"model: {which}; config '{r.config.name}' at {r.config.image_size}px; device: {r.device_label}; "
          f"torch {torch.__version__}; median of {args.repeat} after a warm-up")

    # -- a 512x512 face crop --------------------------------------------------------------------
    crop = _photo(512, 512, 1)
    _with_face((130, 130, 382, 382))
    t_an, a = _time(lambda: r.analyze(crop), args.repeat)
    t_full, _ = _time(lambda: r.retouch(crop), args.repeat)
    edited = a.mask.copy()
    edited[240:250, 200:300] = 1.0  # a brush stroke
    t_render, _ = _time(lambda: r.render(a, edited), args.repeat)
    print(f"512x512 face crop : analyze (mask prediction) {t_an:.3f} | full retouch {t_full:.3f} | "
          f"render (edited mask) {t_render:.3f}")

    # -- a 24-MP photo with one face ------------------------------------------------------------
    photo = _photo(4000, 6000, 2)
    face = (2400, 1200, 3600, 2400)
    _with_face(face)
    tracemalloc.start()
    c0 = time.process_time()
    t0 = time.perf_counter()
    a = r.analyze(photo)
    t1 = time.perf_counter()
    c = r.render(a)
    t2 = time.perf_counter()
    out = r.composite(photo, c, 1.0)
    t3 = time.perf_counter()
    e2e_cpu = time.process_time() - c0
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    t_comp, _ = _time(lambda: r.composite(photo, c, 0.7), args.repeat)
    t_render24, _ = _time(lambda: r.render(a, None), args.repeat)
    stroke = a.mask.copy()
    fx0, fy0, fx1, fy1 = face
    stroke[(fy0 + fy1) // 2 : (fy0 + fy1) // 2 + 30, fx0 + 300 : fx0 + 700] = 1.0
    t_edit24, _ = _time(lambda: r.render(a, stroke), args.repeat)
    e2e = t3 - t0
    print(f"24 MP (6000x4000), 1 face (crop {a.regions[0][2] - a.regions[0][0]} px): end to end {e2e:.3f} s (cpu {e2e_cpu:.2f} s) "
          f"(analyze {t1 - t0:.3f} + render {t2 - t1:.3f} + composite {t3 - t2:.3f}; file loading not included)")
    print(f"24 MP strength re-composite: {t_comp:.3f} | render (edited mask, 1 face): {t_edit24:.3f} | "
          f"re-render (predicted mask, cached synthesis): {t_render24:.3f}")
    print(f"24 MP "
          f"correction stored: {c.nbytes / 1e6:.1f} MB in {len(c.patches)} box(es)")
    print(f"NumPy/Python peak during the 24-MP run (tracemalloc): {traced / 2**20:.0f} MiB "
          f"(the photo itself is {photo.nbytes / 2**20:.0f} MiB, the output another {out.nbytes / 2**20:.0f} MiB)")
    del out

    if args.tiles:
        _with_face(None)
        t0 = time.perf_counter()
        a = r.analyze(photo)
        c = r.render(a)
        r.composite(photo, c, 1.0)
        print(f"24 MP, no face ({a.message}): end to end {time.perf_counter() - t0:6.3f} s")

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of the process (ru_maxrss): {peak:.0f} MiB")
    print("wall times are medians; 'cpu' is the process CPU time (about 2x wall when both cores are free, "
          "much less than that when other processes compete for them)")
    print("targets on the 2-core CPU: render < 1 s per face, 24-MP re-composite < 0.3 s, 24-MP end to end < 10 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
