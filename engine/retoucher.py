"""The engine API used by the GUI, the command line and batch, and the run-time path in order::

    photo = imageio.load_image(path)                 # 1. load the photo (engine.imageio)
    r = Retoucher.load()                             #    bundled model, CUDA when present
    a = r.analyze(photo.pixels)                      # 2. find faces (engine.faces)
                                                     # 3. plan regions + working scale (engine.regions)
                                                     # 4a. per region: encoder + prior + mask net
    c = r.render(a, mask)                            # 4b. per region: transformer + decoder for a mask
                                                     # 5. full-resolution correction (engine.pipeline)
    out = r.composite(photo.pixels, c, 0.7)          # 6. composite at a strength (engine.compositor)
    imageio.save_image(path_out, out, ...)           # 7. save, atomically (engine.imageio)

``analyze`` keeps each region's encoder state, so a brush stroke re-runs only the transformer and
synthesis decoder of the regions whose mask changed. Inside a changed region the new synthesis is
used only around the changed pixels (a few working pixels of feathering), so an edit changes the
result where the mask changed and nowhere else.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import torch

from engine import faces as _faces
from engine import pipeline as pl
from engine import regions as rg
from engine.compositor import Correction, composite as _composite
from engine.errors import Cancelled, ImageError, RetouchError
from engine.model.checkpoint import load_model
from engine.model.config import ModelConfig
from engine.model.retouchformer import Encoded, RetouchFormer
from engine.paths import default_weights_path
from engine.skin import skin_colour

__all__ = ["Retoucher", "Analysis", "Correction", "resolve_device"]

CancelFn = Callable[[], bool] | None
ProgressFn = Callable[[float, str], None] | None

#: Two masks "differ" at a pixel when they differ by more than one 8-bit step.
CHANGE_TOLERANCE = 1.0 / 255.0
#: Long side of the low-resolution copy on which skin-coloured pixels are found (tile planning).
SKIN_MAP_SIDE = 512


@dataclass(eq=False)
class _RegionState:
    region: rg.Region
    enc: Encoded
    x_n: np.ndarray  # working-scale input, n x n x 3 float32
    mask_n: np.ndarray  # predicted working-scale mask, n x n float32
    gain_n: np.ndarray  # detail gain, n x n float32
    pred_delta_n: np.ndarray | None = None  # raw synthesis - input for the predicted mask (lazy)


@dataclass(eq=False)
class Analysis:
    """What :meth:`Retoucher.analyze` found. ``mask`` is the full-resolution predicted mask.

    The analysis keeps a reference to the analysed image (it must not be modified in place
    while the analysis is in use) and each region's encoder state for :meth:`Retoucher.render`.
    """

    mask: np.ndarray
    plan: rg.Plan
    image: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    states: list[_RegionState] = field(default_factory=list, repr=False)
    # Regions added by render() for brush strokes outside every planned region (kept for later renders).
    extras: list[_RegionState] = field(default_factory=list, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.mask.shape[0]), int(self.mask.shape[1]))

    @property
    def message(self) -> str:
        """One sentence for the status bar: faces found, the scale, the tiles."""
        return self.plan.message

    @property
    def faces(self) -> list[_faces.Face]:
        return self.plan.faces

    @property
    def regions(self) -> list[tuple[int, int, int, int]]:
        return [r.box for r in self.plan.regions]

    @property
    def blemish_size(self) -> float:
        """Pixels across a typical blemish at the scale the photo was worked at."""
        return self.plan.blemish_size


def resolve_device(device: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; "cpu"; "cuda" / "cuda:N" (must exist)."""
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise RetouchError(f"Device '{device}' was requested but no CUDA GPU is available; use --device cpu or auto.")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RetouchError(f"Device '{device}' does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s).")
        return dev
    raise RetouchError(f"Unknown device '{device}'; choose auto, cpu or cuda.")


def _check_cancel(cancel: CancelFn) -> None:
    if cancel is not None and cancel():
        raise Cancelled()


def _report(progress: ProgressFn, fraction: float, message: str) -> None:
    if progress is not None:
        progress(float(min(1.0, max(0.0, fraction))), message)


class Retoucher:
    """A loaded RetouchFormer plus the full-resolution pipeline around it."""

    def __init__(self, model: RetouchFormer, device: torch.device) -> None:
        self.model = model.eval()
        self._device = device
        self.n = int(model.config.image_size)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def load(cls, weights: str | Path | None = None, device: str = "auto") -> "Retoucher":
        """Load ``weights`` (default: the bundled small model) on ``device`` ("auto", "cpu", "cuda").

        Raises WeightsError for a missing or mismatched file and RetouchError for a bad device.
        """
        dev = resolve_device(device)
        path = Path(weights) if weights is not None else default_weights_path()
        model = load_model(path, device=dev)
        for p in model.parameters():
            p.requires_grad_(False)
        r = cls(model, dev)
        if dev.type == "cuda":
            r._warm_up()
        return r

    @property
    def device(self) -> str:
        return self._device.type

    @property
    def device_label(self) -> str:
        if self._device.type == "cuda":
            return f"GPU: {torch.cuda.get_device_name(self._device)}"
        return f"CPU ({torch.get_num_threads()} threads)"

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def _warm_up(self) -> None:
        x = torch.full((1, 3, self.n, self.n), 0.5, device=self._device)
        with torch.inference_mode():
            enc = self.model.encode(x)
            with self._autocast():
                self.model.synthesize(enc)
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        """Half precision for the transformer + decoder on CUDA (the encoder, the prior's
        nearest-code search and the mask net stay in float32, where fp16 could change results)."""
        if self._device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                yield
        else:
            yield

    # -- model calls --------------------------------------------------------------------------
    def _tensor(self, arr: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(arr))
        t = t.permute(2, 0, 1)[None] if t.ndim == 3 else t[None, None]
        return t.to(self._device, torch.float32)

    def _synth_delta(self, state: _RegionState, mask_n: np.ndarray | None) -> np.ndarray:
        with torch.inference_mode(), self._autocast():
            _, synth = self.model.synthesize(state.enc, None if mask_n is None else self._tensor(mask_n))
        y = synth[0].float().permute(1, 2, 0).cpu().numpy()
        return (y - state.x_n).astype(np.float32)

    # -- analyse ------------------------------------------------------------------------------
    def _analyze_region(self, image: np.ndarray, region: rg.Region) -> _RegionState:
        """Crop, bring to the working scale, run encoder + prior + mask net, measure the detail."""
        crop = pl.extract_crop(image, region)
        x_n = pl.to_work(crop, region.n)
        with torch.inference_mode():
            enc = self.model.encode(self._tensor(x_n))
        mask_n = enc.mask[0, 0].float().cpu().numpy()
        if region.kind != "face":  # away from faces, keep the mask on skin-coloured pixels
            near = cv2.dilate(skin_colour(x_n).astype(np.uint8), np.ones((5, 5), np.uint8))
            mask_n = mask_n * cv2.GaussianBlur(near.astype(np.float32), (5, 5), 1.0)
        gain_n = pl.detail_gain(crop, x_n, mask_n)
        return _RegionState(region, enc, x_n, mask_n, gain_n)

    @staticmethod
    def _skin_map(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        f = min(1.0, SKIN_MAP_SIDE / max(h, w))
        small = cv2.resize(image, (max(8, round(w * f)), max(8, round(h * f))), interpolation=cv2.INTER_AREA)
        if small.dtype == np.uint16:
            small = (small >> 8).astype(np.uint8)
        return skin_colour(small)

    def analyze(
        self,
        image: np.ndarray,
        *,
        blemish_size: float | None = None,
        cancel: CancelFn = None,
        progress: ProgressFn = None,
    ) -> Analysis:
        """Find the faces, plan the regions at the working scale (``blemish_size``: pixels across a
        typical 3 mm blemish, to override the scale taken from the faces), run encoder + prior +
        mask net per region and assemble the full-resolution predicted mask."""
        image = pl.check_image(image)
        shape = image.shape[:2]
        _check_cancel(cancel)
        _report(progress, 0.0, "Looking for faces")
        found = _faces.detect(image)  # looked up at call time (tests may replace it)
        _check_cancel(cancel)
        try:
            plan = rg.plan_regions(shape, found, self.config.work_px_per_mm, blemish_size, self._skin_map(image))
        except ValueError as exc:
            raise RetouchError(str(exc)) from None
        states: list[_RegionState] = []
        n = len(plan.regions)
        for i, region in enumerate(plan.regions):
            _check_cancel(cancel)
            _report(progress, 0.05 + 0.9 * i / max(1, n), f"Analysing {'face' if region.kind == 'face' else 'skin tile'} {i + 1} of {n}")
            states.append(self._analyze_region(image, region))
        _check_cancel(cancel)
        mask = pl.assemble_mask(shape, plan.regions, [s.mask_n for s in states])
        _report(progress, 1.0, plan.message)
        return Analysis(mask, plan, image, states)

    # -- render -------------------------------------------------------------------------------
    def _check_mask(self, a: Analysis, mask: np.ndarray | None) -> np.ndarray:
        if mask is None:
            return a.mask
        if not isinstance(mask, np.ndarray) or mask.ndim != 2:
            raise ImageError(f"The mask must be a 2-D (HxW) array, got shape {getattr(mask, 'shape', None)}.")
        if mask.shape != a.shape:
            raise ImageError(
                f"The mask is {mask.shape[1]}x{mask.shape[0]} but the photo is {a.shape[1]}x{a.shape[0]}; "
                "masks must have exactly the photo's size."
            )
        if mask.dtype != np.float32:
            mask = mask.astype(np.float32)
        if not np.isfinite(mask).all():
            raise ImageError("The mask contains invalid values (NaN or infinity).")
        return np.clip(mask, 0.0, 1.0)

    def _region_delta_n(self, a: Analysis, state: _RegionState, mask: np.ndarray, edited: bool) -> np.ndarray:
        """Working-scale correction of one planned region for ``mask`` (full resolution)."""
        if state.pred_delta_n is None:
            state.pred_delta_n = self._synth_delta(state, None)
        if not edited:
            return state.pred_delta_n
        x0, y0, x1, y1 = state.region.box
        changed = np.abs(mask[y0:y1, x0:x1] - a.mask[y0:y1, x0:x1]) > CHANGE_TOLERANCE
        if not changed.any():
            return state.pred_delta_n
        changed_n = pl.mask_to_work(changed.astype(np.float32), state.region) > 0
        del changed
        user_n = pl.mask_to_work(mask[y0:y1, x0:x1], state.region, fill=state.mask_n)
        m_in = np.where(changed_n, user_n, state.mask_n).astype(np.float32)
        new = self._synth_delta(state, m_in)
        # Use the new synthesis around the changed pixels only (1 working pixel grown, then softened).
        c = cv2.dilate(changed_n.astype(np.float32), np.ones((3, 3), np.uint8))
        c = np.maximum(cv2.GaussianBlur(c, (5, 5), 1.0), changed_n)
        return state.pred_delta_n + c[..., None] * (new - state.pred_delta_n)

    @staticmethod
    def _changed_small(mask: np.ndarray, pred: np.ndarray, f: int) -> np.ndarray:
        """Where ``mask`` and ``pred`` differ by more than one 8-bit step, on a grid ``f`` times
        coarser (a cell is True if any of its pixels changed)."""
        h, w = mask.shape
        changed = cv2.compare(cv2.absdiff(mask, pred), CHANGE_TOLERANCE, cv2.CMP_GT)  # uint8 0/255
        if f == 1:
            return changed > 0
        changed = cv2.copyMakeBorder(changed, 0, -h % f, 0, -w % f, cv2.BORDER_CONSTANT, value=0)
        if f > 15:  # an area average of one 255 among f*f pixels would round to 0 in uint8
            changed = changed.astype(np.float32)
        small = cv2.resize(changed, (changed.shape[1] // f, changed.shape[0] // f), interpolation=cv2.INTER_AREA)
        return small > 0

    def _add_extras(self, a: Analysis, mask: np.ndarray) -> None:
        """Analyse regions, once, for edited mask pixels that no region fully covers (strokes
        painted where no face crop or skin tile was planned)."""
        h, w = a.shape
        f = max(1, int(np.ceil(max(h, w) / 1024)))
        small = self._changed_small(mask, a.mask, f)
        if not small.any():
            return
        known = [s.region for s in a.states + a.extras]
        for region in rg.extra_regions(small, f, known, a.shape, a.plan.tile_scale):
            a.extras.append(self._analyze_region(a.image, region))

    def render(self, a: Analysis, mask: np.ndarray | None = None, *, cancel: CancelFn = None) -> Correction:
        """Correction for ``mask`` (full-resolution HxW float32 in [0, 1]; None = the prediction).

        Re-runs only the transformer + synthesis decoder, and only for regions whose mask changed.
        Strokes painted outside every planned region get regions of their own (analysed once,
        then kept in the Analysis); they correct only the edited pixels the other regions do not
        fully cover.
        """
        if not isinstance(a, Analysis) or a.image is None:
            raise RetouchError("render() needs the Analysis returned by analyze().")
        m = self._check_mask(a, mask)
        edited = mask is not None
        if edited:
            _check_cancel(cancel)
            self._add_extras(a, m)
        states = a.states + (a.extras if edited else [])
        results: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = []
        only: list[np.ndarray | None] = []
        for state in states:
            _check_cancel(cancel)
            x0, y0, x1, y1 = state.region.box
            if not m[y0:y1, x0:x1].any():
                results.append(None)
                only.append(None)
                continue
            if state.region.kind == "extra":  # only the edited pixels
                sel = np.abs(m[y0:y1, x0:x1] - a.mask[y0:y1, x0:x1]) > CHANGE_TOLERANCE
                delta_n = self._synth_delta(state, pl.mask_to_work(m[y0:y1, x0:x1], state.region))
                only.append(sel.astype(np.float32))
            else:
                delta_n = self._region_delta_n(a, state, m, edited)
                only.append(None)
            results.append((state.x_n, delta_n, state.gain_n))
        _check_cancel(cancel)
        return pl.assemble_correction(a.image, m, [s.region for s in states], results, only)

    # -- conveniences ---------------------------------------------------------------------------
    @staticmethod
    def composite(image: np.ndarray, c: Correction, strength: float) -> np.ndarray:
        """``image`` with ``strength`` x the correction (same shape and dtype; no model)."""
        return _composite(image, c, strength)

    def predict_mask(self, image: np.ndarray, *, blemish_size: float | None = None, cancel: CancelFn = None, progress: ProgressFn = None) -> np.ndarray:
        """The full-resolution predicted imperfection mask (float32 HxW in [0, 1])."""
        return self.analyze(image, blemish_size=blemish_size, cancel=cancel, progress=progress).mask

    def retouch(
        self,
        image: np.ndarray,
        mask: np.ndarray | None = None,
        strength: float = 1.0,
        *,
        blemish_size: float | None = None,
        cancel: CancelFn = None,
        progress: ProgressFn = None,
    ) -> np.ndarray:
        """Analyse, render and composite in one call; returns an image of the same shape and dtype."""
        a = self.analyze(image, blemish_size=blemish_size, cancel=cancel, progress=progress)
        return _composite(image, self.render(a, mask, cancel=cancel), strength)
