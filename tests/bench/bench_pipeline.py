"""Benchmark the full-resolution pipeline on this machine.

    python tests/bench/bench_pipeline.py [--weights W] [--device cpu|cuda|auto] [--big] [--repeat N]

Times (median of --repeat runs, after one warm-up):
  * analyze (face finding + region planning + encoder + prior + mask net) and a full retouch of a
    512x512 portrait;
  * render() for an edited mask (a brush stroke): transformer + decoder only;
  * the strength re-composite of a 24-megapixel (6000x4000) portrait;
  * that 24-MP photo end to end (analyze + render + composite; loading/decoding the file is NOT
    included), with the time the face detector takes;
  * with --big, a 60-MP (9504x6336) portrait end to end, and the peak memory of the process;
  * peak memory (ru_maxrss of the process, and the tracemalloc peak of NumPy allocations during the
    24-MP end-to-end run).

The portrait is scikit-image's public-domain astronaut photo (``pip install scikit-image``; a
real face, so the real detector and the region planner run), scaled up to the photo size with its
edges extended; without scikit-image a generated skin-coloured photo is used and the face position
is given to the pipeline. Without bundled weights a freshly initialised small model is used.
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


def _portrait(h: int, w: int) -> tuple[np.ndarray, bool]:
    """The astronaut portrait scaled to height ``h`` and extended to width ``w`` (True), or a
    generated photo (False) when scikit-image is not installed."""
    try:
        from skimage import data
    except ImportError:
        return _photo(h, w, 2), False
    import cv2

    face = cv2.resize(data.astronaut(), (h, h), interpolation=cv2.INTER_CUBIC)
    left = (w - h) // 2
    return cv2.copyMakeBorder(face, 0, 0, left, w - h - left, cv2.BORDER_REPLICATE), True


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
    """Give the pipeline a face at ``box`` (for generated photos); the real detector still runs."""
    from engine.faces import Face

    real = faces_mod._real_detect if hasattr(faces_mod, "_real_detect") else faces_mod.detect
    faces_mod._real_detect = real  # type: ignore[attr-defined]

    def detect(image, **kw):
        real(image, **kw)  # pay for the detector
        if box is None:
            return []
        x0, y0, x1, y1 = box
        w, h = x1 - x0, y1 - y0
        pts = ((0.3, 0.4), (0.7, 0.4), (0.5, 0.6), (0.35, 0.8), (0.65, 0.8))
        return [Face(box, tuple((x0 + a * w, y0 + b * h) for a, b in pts), 0.99)]

    faces_mod.detect = detect


def _e2e(r: Retoucher, photo: np.ndarray) -> tuple[float, float, float, float, object, object]:
    c0 = time.process_time()
    t0 = time.perf_counter()
    a = r.analyze(photo)
    t1 = time.perf_counter()
    c = r.render(a)
    t2 = time.perf_counter()
    out = r.composite(photo, c, 1.0)
    t3 = time.perf_counter()
    del out
    return t1 - t0, t2 - t1, t3 - t2, time.process_time() - c0, a, c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--big", action="store_true", help="also run a 60-MP portrait end to end (memory)")
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
    print(f"model: {which}; config '{r.config.name}' working at {r.config.work_px_per_mm} px/mm; device: {r.device_label}; "
          f"torch {torch.__version__}; median of {args.repeat} after a warm-up")

    # -- a 512x512 portrait -----------------------------------------------------------------------
    crop, real = _portrait(512, 512)
    if not real:
        _with_face((130, 130, 382, 382))
    t_an, a = _time(lambda: r.analyze(crop), args.repeat)
    t_full, _ = _time(lambda: r.retouch(crop), args.repeat)
    edited = a.mask.copy()
    edited[300:310, 200:300] = 1.0  # a brush stroke
    t_render, _ = _time(lambda: r.render(a, edited), args.repeat)
    print(f"512x512 portrait ({a.message}): analyze {t_an:.3f} | full retouch {t_full:.3f} | "
          f"render (edited mask) {t_render:.3f}")

    # -- a 24-MP portrait -------------------------------------------------------------------------
    photo, real = _portrait(4000, 6000)
    if not real:
        _with_face((2400, 1200, 3600, 2400))
    t_det, _ = _time(lambda: faces_mod.detect(photo), args.repeat)
    tracemalloc.start()
    t_a, t_r, t_c, e2e_cpu, a, c = _e2e(r, photo)
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    t_comp, _ = _time(lambda: r.composite(photo, c, 0.7), args.repeat)
    t_render24, _ = _time(lambda: r.render(a, None), args.repeat)
    face = next((reg for reg in a.plan.regions if reg.kind == "face"), a.plan.regions[0])
    stroke = a.mask.copy()
    fx0, fy0, fx1, fy1 = face.box
    cy, cx = (fy0 + fy1) // 2, (fx0 + fx1) // 2
    stroke[cy : cy + 30, cx - 200 : cx + 200] = 1.0
    t_edit24, _ = _time(lambda: r.render(a, stroke), args.repeat)
    box = (max(cx - 200, 0), cy, cx + 200, cy + 30)  # what the GUI does after a stroke: only what it changed
    t_stroke24, _ = _time(lambda: r.render(a, stroke, since=c, rect=box), args.repeat)
    work = ", ".join(f"{reg.kind} {reg.side}px->{reg.n}px" for reg in a.plan.regions)
    print(f"24 MP (6000x4000): {a.message}; regions: {work}")
    print(f"24 MP end to end {t_a + t_r + t_c:.3f} s (cpu {e2e_cpu:.2f} s) (analyze {t_a:.3f} incl. face detection {t_det:.3f} "
          f"+ render {t_r:.3f} + composite {t_c:.3f}; file loading not included)")
    print(f"24 MP strength re-composite: {t_comp:.3f} | render (edited mask, stroke on the face): whole photo {t_edit24:.3f}, "
          f"incremental (since the last render, the stroke's box) {t_stroke24:.3f} | "
          f"re-render (predicted mask, cached synthesis): {t_render24:.3f}")
    print(f"24 MP correction stored: {c.nbytes / 1e6:.1f} MB in {len(c.patches)} box(es)")
    print(f"NumPy/Python peak during the 24-MP run (tracemalloc): {traced / 2**20:.0f} MiB "
          f"(the photo itself is {photo.nbytes / 2**20:.0f} MiB, the output another {photo.nbytes / 2**20:.0f} MiB)")
    del photo, a, c

    if args.big:
        photo, real = _portrait(6336, 9504)
        if not real:
            _with_face((3800, 1900, 5700, 3800))
        t_a, t_r, t_c, cpu, a, c = _e2e(r, photo)
        print(f"60 MP (9504x6336): {a.message}; end to end {t_a + t_r + t_c:.3f} s (cpu {cpu:.2f} s) "
              f"(analyze {t_a:.3f} + render {t_r:.3f} + composite {t_c:.3f})")
        del photo, a, c

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of the process (ru_maxrss): {peak:.0f} MiB")
    print("wall times are medians; 'cpu' is the process CPU time (about 2x wall when both cores are free, "
          "much less than that when other processes compete for them)")
    print("targets on the 2-core CPU: render < 1 s per face, 24-MP re-composite < 0.3 s, 24-MP end to end < 10 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
