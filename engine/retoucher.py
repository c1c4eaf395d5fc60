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
synthesis decoder, and only on the part of a region the edit reaches.

How far an edit reaches. The transformer attends within 16 x 16-token windows (128 working px)
that shift by half a window every other block, so after its 4 blocks a token influences tokens
up to 39 tokens (312 working px) away: in practice the whole region. The decoder's GroupNorm
statistics are taken over its whole input too. One run over the whole region would therefore let
every stroke move every other edit a little, and a stroke could not be rendered without
rendering the whole region again. So the engine synthesises edits locally: the edited working
pixels are grouped into clusters (pixels closer than 34 px together: engine.pipeline.edit_clusters),
and each cluster is synthesised on a crop of the region's encoder state, the cluster plus
:data:`~engine.pipeline.EDIT_MARGIN` (32) working pixels of context on the token grid, with its
own edits laid over the predicted mask. On held-out synthetic pairs with every blemish brushed,
this is better than one run over the whole region (PSNR inside the blemishes 28.71 against
28.47 dB; the model was trained on 128-px crops). The synthesis is used within
:data:`~engine.pipeline.EDIT_FEATHER` (3) working pixels of the edited pixels, on top of the
prediction's synthesis. A stroke therefore changes the correction only where it changed the
mask and inside the box of the cluster it belongs to (its own pixels grown by 3 working pixels,
plus the clusters within 34 px that it joins, or splits when erasing), widened by 1 working pixel
of bilinear upsampling; at 24 MP a face works at about 1/15 of the photo's resolution (a working
pixel is about 15 photo pixels). ``render(a, mask, since=c, rect=r)`` uses this: it recomputes
that part only, returns it as a partial correction (``Correction.rect``), and gives exactly what a
full render gives there (tests/test_pipeline.py checks it).
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np
import torch

from engine import faces as _faces
from engine import pipeline as pl
from engine import regions as rg
from engine.compositor import Box, Correction, clip_box, composite as _composite
from engine.errors import Cancelled, ImageError, RetouchError
from engine.model.checkpoint import load_model
from engine.model.config import ModelConfig
from engine.model.fill import TONE_MM, anchor_fill_np, hold_tone_np
from engine.model.retouchformer import Encoded, RetouchFormer
from engine.paths import default_weights_path
from engine.features import protection, under_eyes
from engine.skin import skin_colour

__all__ = ["Retoucher", "Analysis", "Correction", "RenderPlan", "resolve_device"]

CancelFn = Callable[[], bool] | None
ProgressFn = Callable[[float, str], None] | None

#: Two masks "differ" at a pixel when they differ by more than one 8-bit step.
CHANGE_TOLERANCE = 1.0 / 255.0
#: Long side of the low-resolution copy on which skin-coloured pixels are found (tile planning).
SKIN_MAP_SIDE = 512
#: Edit-cluster syntheses remembered per region (a stroke re-synthesises only what it changed).
SYNTH_MEMO = 48
#: Context (working px) around a stroke for the classical fill shown while the model runs.
FILL_MARGIN = 16


@dataclass(eq=False)
class _RegionState:
    region: rg.Region
    enc: Encoded
    x_n: np.ndarray  # working-scale input, n x n x 3 float32
    mask_n: np.ndarray  # the mask edits are laid over, n x n float32 (the prediction; see base_for_extra)
    gain_n: np.ndarray  # detail gain, n x n float32
    pred_delta_n: np.ndarray | None = None  # raw synthesis - input for the predicted mask (lazy)
    pred_mask_n: np.ndarray | None = None  # mask of that synthesis (None: the mask net's own)
    hold_n: np.ndarray | None = None  # where the tone hold applies, n x n float32 (0 below the eyes; None: everywhere)
    tone_n: np.ndarray | None = None  # what the tone hold reads (RetouchFormer.tone_reading or the hold net's; None: mask_n)
    memo: OrderedDict = field(default_factory=OrderedDict)  # edit crop -> (mask crop, synthesis - input)

    @property
    def tone_pred(self) -> np.ndarray:
        """The prediction as the tone hold under a brush reads it."""
        return self.mask_n if self.tone_n is None else self.tone_n


@dataclass(frozen=True, eq=False)
class _Work:
    """One region's working-scale view of a mask (immutable; shared between renders)."""

    changed: np.ndarray  # bool n x n: where the mask differs from the prediction
    user: np.ndarray  # float32 n x n: the mask, max-pooled
    delta: np.ndarray | None  # float32 n x n x 3: the region's correction; None = the prediction's


@dataclass(eq=False)
class _Record:
    """What a render leaves in ``Correction.work`` for the next, incremental one."""

    analysis: "Analysis"
    works: dict


@dataclass(eq=False)
class RenderPlan:
    """Everything :meth:`Retoucher.run_render` needs, taken from the mask by
    :meth:`Retoucher.plan_render` (so the mask may change once the plan is made)."""

    analysis: "Analysis"
    mask: np.ndarray | None  # full render: the (clipped) mask, None = the prediction; partial: the mask over rect
    rect: Box | None = None  # partial: the part of the photo the result covers
    since: _Record | None = None
    fill: bool = False
    maps: dict = field(default_factory=dict)  # partial: region state -> refreshed (changed, user)
    windows: dict = field(default_factory=dict)  # partial: region state -> working box the edit reaches
    new_extras: list = field(default_factory=list)  # regions to analyse for strokes outside every region


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
        #: Scale (working px) of the tone that clean skin under a brush keeps
        #: (engine.model.fill.hold_tone); 0 turns the hold off (benchmarks compare with it; set
        #: it before ``analyze``: an analysis remembers its edits' syntheses).
        self.tone_sigma = TONE_MM * float(model.config.work_px_per_mm)

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

    def _pred_delta(self, state: _RegionState) -> np.ndarray:
        """The region's synthesis (minus its input) for its predicted mask, computed once."""
        if state.pred_delta_n is None:
            state.pred_delta_n = self._synth_delta(state, None if state.pred_mask_n is None else self._tensor(state.pred_mask_n))
        return state.pred_delta_n

    def _synth_delta(self, state: _RegionState, mask: torch.Tensor | None, crop: Box | None = None) -> np.ndarray:
        """Synthesis - input of the transformer + decoder, for the whole region or a crop of its encoder state."""
        enc = state.enc if crop is None else self._crop_encoded(state.enc, crop)
        with torch.inference_mode(), self._autocast():
            _, synth = self.model.synthesize(enc, mask)
        y = synth[0].float().permute(1, 2, 0).cpu().numpy()
        x0, y0, x1, y1 = crop if crop is not None else (0, 0, state.region.n, state.region.n)
        return (y - state.x_n[y0:y1, x0:x1]).astype(np.float32)

    @staticmethod
    def _crop_encoded(enc: Encoded, crop: Box) -> Encoded:
        x0, y0, x1, y1 = crop  # multiples of the token stride (8)
        t = ModelConfig.TOKEN_STRIDE
        return Encoded(
            enc.x[..., y0:y1, x0:x1],
            [f[..., y0 >> lvl : y1 >> lvl, x0 >> lvl : x1 >> lvl] for lvl, f in enumerate(enc.feats)],
            enc.frames[..., y0 // t : y1 // t, x0 // t : x1 // t],
            enc.recon[..., y0:y1, x0:x1],
            enc.mask[..., y0:y1, x0:x1],
            None if enc.hold is None else enc.hold[..., y0:y1, x0:x1],
        )

    def _cluster_synth(self, state: _RegionState, crop: Box, m_crop: np.ndarray) -> np.ndarray:
        """Synthesis - input over ``crop`` for the working mask ``m_crop`` there (remembered per crop)."""
        hit = state.memo.get(crop)
        if hit is not None and np.array_equal(hit[0], m_crop):
            state.memo.move_to_end(crop)
            return hit[1]
        out = self._synth_delta(state, self._tensor(m_crop), crop)
        if self.tone_sigma > 0:  # clean skin under the brush keeps the photo's tone
            x0, y0, x1, y1 = crop
            x = state.x_n[y0:y1, x0:x1]
            keep = None if state.hold_n is None else state.hold_n[y0:y1, x0:x1]
            out = hold_tone_np(x, x + out, m_crop, state.tone_pred[y0:y1, x0:x1], self.tone_sigma, keep) - x
        state.memo[crop] = (m_crop.copy(), out)
        while len(state.memo) > SYNTH_MEMO:
            state.memo.popitem(last=False)
        return out

    def _edit_delta(self, state: _RegionState, changed: np.ndarray, user: np.ndarray, cancel: CancelFn) -> np.ndarray | None:
        """The region's working-scale correction for a mask (``changed``/``user``, see
        :func:`engine.pipeline.edit_maps`): the prediction's synthesis, and each cluster of edits'
        own synthesis around it. None when nothing was edited (the prediction's)."""
        if not changed.any():
            return None
        pred = self._pred_delta(state)
        labels, clusters = pl.edit_clusters(changed)
        new = pred.copy()
        for cl in clusters:
            _check_cancel(cancel)
            x0, y0, x1, y1 = cl.crop  # the model sees this cluster's edits over the prediction
            own = changed[y0:y1, x0:x1] & (labels[y0:y1, x0:x1] == cl.label)
            m_in = np.where(own, user[y0:y1, x0:x1], state.mask_n[y0:y1, x0:x1]).astype(np.float32)
            syn = self._cluster_synth(state, cl.crop, m_in)
            bx0, by0, bx1, by1 = cl.box
            sel = labels[by0:by1, bx0:bx1] == cl.label
            part = new[by0:by1, bx0:bx1]
            part[sel] = syn[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0][sel]
        c = pl.edit_blend(changed)
        return (pred + c[..., None] * (new - pred)).astype(np.float32)

    # -- analyse ------------------------------------------------------------------------------
    def _analyze_region(self, image: np.ndarray, region: rg.Region, faces: Sequence[_faces.Face] = ()) -> _RegionState:
        """Crop, bring to the working scale, run encoder + prior + mask net, measure the detail.

        The predicted mask is kept off the eyes, brows, nostrils and lips of ``faces``
        (engine.features), and away from faces off pixels without a skin colour. The tone hold
        under a brush is turned off below their eyes (``hold_n``)."""
        crop = pl.extract_crop(image, region)
        x_n = pl.to_work(crop, region.n)
        with torch.inference_mode():
            enc = self.model.encode(self._tensor(x_n))
        allowed = None  # where the mask may be, 0..1 (None: everywhere)
        if region.kind != "face":  # away from faces, keep the mask on skin-coloured pixels
            near = cv2.dilate(skin_colour(x_n).astype(np.uint8), np.ones((5, 5), np.uint8))
            allowed = cv2.GaussianBlur(near.astype(np.float32), (5, 5), 1.0)
        keep_off = protection(faces, region.crop, region.n)
        if keep_off is not None:
            allowed = 1.0 - keep_off if allowed is None else allowed * (1.0 - keep_off)
        mask_n = enc.mask[0, 0].float().cpu().numpy()
        if allowed is not None:
            mask_n = mask_n * allowed
        gain_n = pl.detail_gain(crop, x_n, mask_n)
        below_eyes = under_eyes(faces, region.crop, region.n)
        hold_n = None if below_eyes is None else 1.0 - below_eyes
        if enc.hold is None:
            tone_n = self._tone_reading(mask_n)
        else:  # the weights' own hold net read the photo (ModelConfig.hold_net), kept where the mask may be
            tone_n = enc.hold[0, 0].float().cpu().numpy()
            if allowed is not None:
                tone_n = tone_n * allowed
        return _RegionState(region, enc, x_n, mask_n, gain_n, hold_n=hold_n, tone_n=tone_n)

    def _tone_reading(self, mask_n: np.ndarray) -> np.ndarray | None:
        """``mask_n`` as the tone hold reads it when the weights say so (ModelConfig.hold_tophat_mm,
        hold_floor, hold_gain, hold_dilate_mm: RetouchFormer.tone_reading), else None (the hold
        reads ``mask_n`` itself)."""
        if self.model.reads_tone_as_is():
            return None
        with torch.inference_mode():
            return self.model.tone_reading(self._tensor(mask_n))[0, 0].float().cpu().numpy()

    def _analyze_extra(self, a: "Analysis", region: rg.Region) -> _RegionState:
        """A region for strokes outside every planned one: edits there are laid over the
        analysis's mask (not this region's own prediction), as in the rest of the photo."""
        state = self._analyze_region(a.image, region)
        x0, y0, x1, y1 = region.box
        state.mask_n = pl.mask_to_work(a.mask[y0:y1, x0:x1], region)
        state.pred_mask_n = state.mask_n
        if state.enc.hold is None:  # the hold reads the mask the edits are laid over (a hold net reads the photo)
            state.tone_n = self._tone_reading(state.mask_n)
        return state

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
            states.append(self._analyze_region(image, region, plan.faces))
        _check_cancel(cancel)
        mask = pl.assemble_mask(shape, plan.regions, [s.mask_n for s in states])
        _report(progress, 1.0, plan.message)
        return Analysis(mask, plan, image, states)

    # -- render -------------------------------------------------------------------------------
    def _check_mask(self, a: Analysis, mask: np.ndarray | None, full: bool = True) -> np.ndarray:
        if mask is None:
            return a.mask
        if not isinstance(mask, np.ndarray) or mask.ndim != 2:
            raise ImageError(f"The mask must be a 2-D (HxW) array, got shape {getattr(mask, 'shape', None)}.")
        if mask.shape != a.shape:
            raise ImageError(
                f"The mask is {mask.shape[1]}x{mask.shape[0]} but the photo is {a.shape[1]}x{a.shape[0]}; "
                "masks must have exactly the photo's size."
            )
        if not full:
            return mask
        if mask.dtype != np.float32:
            mask = mask.astype(np.float32)
        if not np.isfinite(mask).all():
            raise ImageError("The mask contains invalid values (NaN or infinity).")
        return np.clip(mask, 0.0, 1.0)

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

    def _extra_regions(self, a: Analysis, mask: np.ndarray, rect: Box | None = None) -> list[rg.Region]:
        """Regions to analyse for edited mask pixels (inside ``rect``, default: anywhere) that no
        region fully covers (strokes painted where no face crop or skin tile was planned)."""
        h, w = a.shape
        f = max(1, int(np.ceil(max(h, w) / 1024)))
        if rect is None:
            small = self._changed_small(mask, a.mask, f)
        else:  # the same cells, computed for the part of the photo under rect only
            x0, y0, x1, y1 = rect
            x0, y0, x1, y1 = x0 // f * f, y0 // f * f, min(w, -(-x1 // f) * f), min(h, -(-y1 // f) * f)
            small = np.zeros((-(-h // f), -(-w // f)), bool)
            part = self._changed_small(np.ascontiguousarray(mask[y0:y1, x0:x1]), np.ascontiguousarray(a.mask[y0:y1, x0:x1]), f)
            small[y0 // f : y0 // f + part.shape[0], x0 // f : x0 // f + part.shape[1]] = part
        if not small.any():
            return []
        known = [s.region for s in a.states + a.extras]
        if rect is not None and not self._uncovered(small, f, known, a.shape, (x0, y0, x1, y1)):
            return []  # the usual case, decided on the cells under rect only
        return rg.extra_regions(small, f, known, a.shape, a.plan.tile_scale)

    @staticmethod
    def _uncovered(small: np.ndarray, f: int, known: list[rg.Region], shape: tuple[int, int], cells: Box) -> bool:
        """Whether an edited cell inside ``cells`` (a box on the photo, on the f-grid) is not fully
        covered by the known regions, by the rule of engine.regions.extra_regions."""
        from engine.compositor import coverage

        x0, y0, x1, y1 = cells
        gx0, gy0 = max(0, x0 - f), max(0, y0 - f)  # one cell more around: the rule grows the gaps by a cell
        gx1, gy1 = min(small.shape[1] * f, x1 + f), min(small.shape[0] * f, y1 + f)
        cover = coverage([r.crop for r in known], [r.ramp for r in known], shape, (gx0, gy0, gx1, gy1), f)
        gaps = cv2.dilate((cover < 0.999).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        i0, j0 = (y0 - gy0) // f, (x0 - gx0) // f
        part = small[y0 // f : -(-y1 // f), x0 // f : -(-x1 // f)]
        return bool((part & gaps[i0 : i0 + part.shape[0], j0 : j0 + part.shape[1]]).any())

    @staticmethod
    def _maps(a: Analysis, state: _RegionState, mask: np.ndarray, origin: tuple[int, int], window: Box | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The region's (changed, user) working maps over ``window`` from ``mask``, an array whose
        pixel (0, 0) is the photo's pixel ``origin`` (x, y) and which covers the region's box."""
        x0, y0, x1, y1 = state.region.box
        ox, oy = origin
        return pl.edit_maps(mask[y0 - oy : y1 - oy, x0 - ox : x1 - ox], a.mask[y0:y1, x0:x1], state.region, window, CHANGE_TOLERANCE)

    def plan_render(
        self, a: Analysis, mask: np.ndarray | None = None, *, since: Correction | None = None, rect: Box | None = None,
        fill: bool = False,
    ) -> RenderPlan:
        """The cheap first half of :meth:`render`: read what the render needs from ``mask`` (which
        may be edited again as soon as this returns; the GUI calls it on its own thread and
        :meth:`run_render` in a worker). See :meth:`render` for the arguments."""
        return self._plan(a, mask, since, rect, fill)

    def _plan(self, a: Analysis, mask: np.ndarray | None, since: Correction | None, rect: Box | None, fill: bool) -> RenderPlan:
        if not isinstance(a, Analysis) or a.image is None:
            raise RetouchError("render() needs the Analysis returned by analyze().")
        rec = getattr(since, "work", None)
        if mask is None or rect is None or not isinstance(rec, _Record) or rec.analysis is not a:
            if fill:
                raise RetouchError("A fill preview needs the previous correction (since=) and the edited rectangle (rect=).")
            return RenderPlan(a, None if mask is None else self._check_mask(a, mask))
        self._check_mask(a, mask, full=False)
        r = clip_box(rect, a.shape)
        if r is None:
            return RenderPlan(a, np.zeros((0, 0), np.float32), (0, 0, 0, 0), rec, fill)
        plan = RenderPlan(a, None, r, rec, fill)
        reach: list[Box | None] = [r]
        for state in a.states + a.extras:
            if state not in rec.works:  # a region added since: computed whole, from the mask over its box
                if not fill:
                    reach.append(state.region.box)
                continue
            win = pl.work_window(state.region, r)
            if win is None:
                continue
            wx0, wy0, wx1, wy1 = win
            changed, user = self._maps(a, state, mask, (0, 0), win)
            old = rec.works[state]
            ch, us = old.changed.copy(), old.user.copy()
            ch[wy0:wy1, wx0:wx1] = changed
            us[wy0:wy1, wx0:wx1] = user
            plan.maps[state] = (ch, us)
            plan.windows[state] = win
            n = state.region.n
            boxes: list[Box | None] = [pl.intersect_box(pl.grow(win, pl.EDIT_FEATHER + 1), (0, 0, n, n))]
            if not fill:  # the clusters the edit joins (or splits, or touches) are synthesised again
                labels, clusters = pl.edit_clusters(ch)
                nx0, ny0, nx1, ny1 = pl.intersect_box(pl.grow(win, pl.EDIT_JOIN + 1), (0, 0, n, n))  # type: ignore[misc]
                hit = set(np.unique(labels[ny0:ny1, nx0:nx1]).tolist())
                boxes += [cl.box for cl in clusters if cl.label in hit]
            wb = pl.union_box(boxes)
            if wb is not None:
                reach.append(pl.photo_reach(state.region, wb))
        if not fill:
            plan.new_extras = self._extra_regions(a, mask, r)
            reach += [e.box for e in plan.new_extras]
        x0, y0, x1, y1 = plan.rect = clip_box(pl.union_box(reach), a.shape)  # type: ignore[misc]
        m = mask[y0:y1, x0:x1].astype(np.float32, copy=True)
        if not np.isfinite(m).all():
            raise ImageError("The mask contains invalid values (NaN or infinity).")
        np.clip(m, 0.0, 1.0, out=m)
        plan.mask = m
        return plan

    def run_render(self, plan: RenderPlan, *, cancel: CancelFn = None) -> Correction:
        """The model half of :meth:`render` for a plan from :meth:`plan_render` (reads no mask)."""
        a = plan.analysis
        if plan.rect is None:
            return self._render_full(a, plan.mask, cancel)
        if plan.rect[2] <= plan.rect[0] or plan.rect[3] <= plan.rect[1]:
            return Correction(a.shape, a.image.dtype, [], [s.region.box for s in a.states + a.extras], plan.rect,
                              None if plan.fill else plan.since)
        return self._render_part(plan, cancel)

    def _render_full(self, a: Analysis, m: np.ndarray | None, cancel: CancelFn) -> Correction:
        edited = m is not None
        if edited:
            _check_cancel(cancel)
            for region in self._extra_regions(a, m):
                a.extras.append(self._analyze_extra(a, region))
        mm = a.mask if m is None else m
        states = a.states + (a.extras if edited else [])
        works: dict = {}
        results: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = []
        only: list[np.ndarray | None] = []
        for state in states:
            _check_cancel(cancel)
            x0, y0, x1, y1 = state.region.box
            if edited:
                changed, user = self._maps(a, state, m, (0, 0))
            else:
                changed = np.zeros((state.region.n,) * 2, bool)
                user = np.zeros((state.region.n,) * 2, np.float32)
            delta = self._edit_delta(state, changed, user, cancel)
            works[state] = _Work(changed, user, delta)
            if not mm[y0:y1, x0:x1].any():
                results.append(None)
                only.append(None)
                continue
            results.append((state.x_n, self._pred_delta(state) if delta is None else delta, state.gain_n))
            only.append(self._only(a, state, mm, (0, 0), state.region.box))
        _check_cancel(cancel)
        c = pl.assemble_correction(a.image, mm, [s.region for s in states], results, only)
        c.work = _Record(a, works)
        return c

    @staticmethod
    def _only(a: Analysis, state: _RegionState, mask: np.ndarray, origin: tuple[int, int], sub: Box) -> np.ndarray | None:
        """For a region added for strokes outside the planned ones: its edited pixels over
        ``sub`` (it corrects only those); None for the planned regions."""
        if state.region.kind != "extra":
            return None
        x0, y0, x1, y1 = sub
        ox, oy = origin
        return (np.abs(mask[y0 - oy : y1 - oy, x0 - ox : x1 - ox] - a.mask[y0:y1, x0:x1]) > CHANGE_TOLERANCE).astype(np.float32)

    def _render_part(self, plan: RenderPlan, cancel: CancelFn) -> Correction:
        a, rec, r = plan.analysis, plan.since, plan.rect
        assert rec is not None and r is not None and plan.mask is not None
        origin = (r[0], r[1])
        works = dict(rec.works)
        deltas: dict = {}
        if not plan.fill:
            for region in plan.new_extras:
                _check_cancel(cancel)
                a.extras.append(self._analyze_extra(a, region))
            for state in a.states + a.extras:
                if state not in works:  # its box lies inside rect (see _plan)
                    _check_cancel(cancel)
                    changed, user = self._maps(a, state, plan.mask, origin)
                    works[state] = _Work(changed, user, self._edit_delta(state, changed, user, cancel))
            for state, (changed, user) in plan.maps.items():
                _check_cancel(cancel)
                works[state] = _Work(changed, user, self._edit_delta(state, changed, user, cancel))
        else:
            for state, (changed, user) in plan.maps.items():
                if state.pred_delta_n is not None:
                    deltas[state] = self._fill_delta(state, works[state], changed, user, plan.windows[state])
        states = [s for s in a.states + a.extras if s in works]
        results: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = []
        only: list[np.ndarray | None] = []
        for state in states:
            sub = pl.intersect_box(state.region.box, r)
            delta = deltas.get(state, works[state].delta)
            empty = sub is None or not plan.mask[sub[1] - r[1] : sub[3] - r[1], sub[0] - r[0] : sub[2] - r[0]].any()
            if empty or (delta is None and state.pred_delta_n is None and plan.fill):
                results.append(None)
                only.append(None)
                continue
            results.append((state.x_n, self._pred_delta(state) if delta is None else delta, state.gain_n))
            only.append(self._only(a, state, plan.mask, origin, sub))
        _check_cancel(cancel)
        c = pl.assemble_correction(a.image, plan.mask, [s.region for s in states], results, only, rect=r)
        c.work = None if plan.fill else _Record(a, works)
        return c

    def _fill_delta(self, state: _RegionState, old: _Work, changed: np.ndarray, user: np.ndarray, win: Box) -> np.ndarray:
        """The previous correction with the classical fill (the model's anchor) in place of the
        synthesis around the edit in ``win``: what the GUI shows while the model runs."""
        n = state.region.n
        fw = pl.intersect_box(pl.grow(win, pl.EDIT_FEATHER + 1 + FILL_MARGIN), (0, 0, n, n))
        inner = pl.intersect_box(pl.grow(win, pl.EDIT_FEATHER), (0, 0, n, n))
        pred = state.pred_delta_n
        delta = (pred if old.delta is None else old.delta).copy()
        if fw is None or inner is None:
            return delta
        fx0, fy0, fx1, fy1 = fw
        ch = changed[fy0:fy1, fx0:fx1]
        m_in = np.where(ch, user[fy0:fy1, fx0:fx1], state.mask_n[fy0:fy1, fx0:fx1]).astype(np.float32)
        x = state.x_n[fy0:fy1, fx0:fx1]
        filled = anchor_fill_np(x, m_in, float(self.model.synthesis.texture_sigma))
        if self.tone_sigma > 0:
            keep = None if state.hold_n is None else state.hold_n[fy0:fy1, fx0:fx1]
            filled = hold_tone_np(x, filled, m_in, state.tone_pred[fy0:fy1, fx0:fx1], self.tone_sigma, keep)
        filled = filled - x
        c = pl.edit_blend(ch)
        ix0, iy0, ix1, iy1 = inner
        sl = (slice(iy0 - fy0, iy1 - fy0), slice(ix0 - fx0, ix1 - fx0))
        p = pred[iy0:iy1, ix0:ix1]
        delta[iy0:iy1, ix0:ix1] = p + c[sl][..., None] * (filled[sl] - p)
        return delta

    def render(
        self,
        a: Analysis,
        mask: np.ndarray | None = None,
        *,
        since: Correction | None = None,
        rect: Box | None = None,
        fill: bool = False,
        cancel: CancelFn = None,
    ) -> Correction:
        """Correction for ``mask`` (full-resolution HxW float32 in [0, 1]; None = the prediction).

        Re-runs only the transformer + synthesis decoder, and only for regions whose mask changed
        (each cluster of edits on a crop of its own: see the module's docstring). Strokes painted
        outside every planned region get regions of their own (analysed once, then kept in the
        Analysis); they correct only the edited pixels the other regions do not fully cover.

        Incremental (a brush stroke): ``since`` is a correction rendered earlier from this
        analysis and ``rect`` (x0, y0, x1, y1) a box that contains every pixel where ``mask``
        differs from the mask ``since`` was rendered from. The result then covers only the part
        of the photo the change can affect (its ``rect``; merge it with ``since.update(result)``)
        and equals that part of a full render exactly. ``fill=True`` gives, in tens of
        milliseconds, the same with the classical fill the model is anchored on in place of the
        model's synthesis around the edit (a preview shown while the model runs; not to merge).
        """
        return self.run_render(self._plan(a, mask, since, rect, fill), cancel=cancel)

    # -- conveniences ---------------------------------------------------------------------------
    @staticmethod
    def composite(image: np.ndarray, c: Correction, strength: float, rect: Box | None = None) -> np.ndarray:
        """``image`` with ``strength`` x the correction (same shape and dtype; no model); with
        ``rect``, that part of it only."""
        return _composite(image, c, strength, rect)

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
