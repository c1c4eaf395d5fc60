"""`retouch train`: one joint, semi-supervised training stage (../shared/paper/SPEC.md).

    min_{P,R}   L_prior + L_con^rec
    min_H       L_H̄ + L_H             (H̄ = EMA of H, μ = 0.99, updated every step)
    min_{E,T,G} L_prior + L_con^rec + L_con^x2y + L_adv^syn
    max_D       L_adv^disc

Deviations, each for a stated reason:
- V(·) is engine.training.losses.feature_space (Laplacian pyramid + gradients), not VGG-19: pretrained VGG
  weights cannot be downloaded here.
- The mask terms: L_H̄ (regression of the soft mask to φ) is applied to the online net H, and the
  confidence term uses the full binary cross-entropy against 1{φ > 0.05}; H̄ receives only EMA
  updates and serves as the teacher for the unpaired term λ·BCE(σ(H(x_u)), σ(H̄(x_u))). The
  one-sided terms as printed (only −log σ(H) on positives) are minimised by predicting 1 everywhere.
  Its weight is --conf. (A binary target on soft blemish edges pushes H to over-predict: the
  shipped model's mask of 0.5 means a true blend weight of about 0.2, and its Soft-IoU against
  φ stays near 0.2 however well it finds the spots. Neither weakening the term (--conf 0.25) nor
  a mask-only stage without it (--only mask --conf 0, with a gain on the estimate for the fill)
  did better on validation faces; see the model card.)
- A soft-Jaccard term on σ(H) against φ is added to the mask losses (--iou): blemishes cover a few
  per cent of a face, and per-pixel terms alone give timid masks. In its product form (the default)
  it too rewards the footprint; --iou-form minmax takes the evaluation's Soft-IoU itself
  (Σ min / Σ max), whose optimum is φ, and with --conf 0 H learns the blend weight; the calibration
  (engine.training.calibrate --gains) then gives the fill the strength it needs.
- --hold-tone: on the unpaired raw photos the fill is also run under a brushed mask (brushed()), and
  the local tone of the clean skin under the brush is held to the photo's (losses.tone_shift): a
  photographer's brush covers clean skin between spots, and only real photos show whether the fill
  leaves a pale patch there (synthetic clean skin is the target; --fill-outside holds it).
- --clean-tone: on the synthetic pairs, the clean skin under the mask G is handed (above 0.9 where φ
  marks no blemish: a brush over the true blemishes, --fill-mask runtime or mixed, or an
  overshooting prediction) keeps the clean face's local tone (losses.tone_shift), as --hold-tone
  does on real photos. --fill-outside holds it too, but as an L1 of the raw synthesis, where a
  paler patch of half an L* weighs next to nothing beside the grain; fills after stage 19 left the
  clean skin under a broad brush on synthetic faces about half an L* paler than the shipped ones
  (model card, twenty-sixth session).
- --spot-tone: under the same brush the spots in it are held to the tone of the clean skin around them
  (losses.spot_tone): synthetic spots are blends toward the clean target, a real brown mark is not, and
  fills trained on synthetic pairs alone left dark smudges where brushed real acne had been (model card).
- --own-tone: the spots are held to the same tone (of the same clean skin under that brush) under
  the mask H̄ predicts, with no brush, as a photo opens: a hazy prediction over a cluster marks few
  of its tokens as skin to fill from, and the fill under it took the tone of the cluster (blotches
  of brown with yellowish dots where the spots were, model card, twenty-first session), which the
  brushed mask of --spot-tone does not show. Taken from all the skin the mask leaves alone, that
  tone included shadows and hair near the spots, and the fills went dark.
- --tone-reach: both terms count a spot only where that clean skin carries enough of the 2-mm
  Gaussian's weight near it (a fifth by default). Under the hazy masks of the mask stages trained
  through the fill, the clean skin inside a dense cluster is a few rims between the spots: on the
  twelve check photos under 2 % of the weight at the median spot pixel, so the default leaves the
  clusters, where the darker fills are, out of both terms (model card, twenty-second session).
- --tone-held: --spot-tone judges the brushed spots as the program shows them, after its tone hold
  (engine.model.fill.hold_tone, which puts back the tone of the clean skin under a brush above
  4 mm). Without it the term also pays for the fill's tone above 4 mm under broad brushes (the
  anchor's push-pull, 3 L* darker than the skin between the spots on the twelve check photos),
  which the colour lock keeps G from changing and the hold puts right at run time (model card,
  twenty-third session). The hold reads H̄'s prediction as the weights say
  (RetouchFormer.hold_reading: hold_tophat_mm, hold_floor, hold_gain, hold_dilate_mm, set with
  --set; or the weights' own hold net, ModelConfig.hold_net), the same reading as at run time; a
  reading beyond the top-hat is named in the stage.
- --mask-fill (mask-only stages): the mask terms above pull H toward φ, but the mask is the fill's
  blend weight, and the weight that heals best is not φ (through the pipeline the exact φ loses to a
  stronger mask on flat brown spots; model card, twentieth session). The term hands H's own
  prediction, calibrated as at run time, to the frozen T and G and takes the composite's L1 against
  the clean face near the blemishes and over the crop: H learns, pixel by pixel, where the fill helps.
- The transformer is trained with the true mask φ on half of the paired samples and with H̄'s
  prediction on the other half, so that it learns from exact masks (as a user's brushed mask is)
  and from predicted ones. --fill-mask runtime gives G the masks it is handed at run time instead:
  H̄'s prediction calibrated as the shipped weights calibrate it (the run's --set mask_tophat_mm,
  mask_floor and mask_gain), and in place of φ a brush over the true blemishes (brushed() of φ's
  footprint). A mask that estimates the blend weight φ says 0.2 on a papule's halo, and under
  such a mask the composite cannot reach the clean skin that the fill term asks of the synthesis:
  G learned for masks it never gets once the calibration's gain has made them strong.
  --fill-mask mixed keeps φ on half of those samples (the blend weight is what the evaluation's
  "exact mask" hands G, and G trained under brushes alone did worse under partial masks).
  --fill-mask calibrated keeps φ on all of them and calibrates only the prediction (no brushes;
  model card, stages 13 and 14).

Runs on CPU or CUDA; under torchrun it uses DistributedDataParallel with no code change.
Checkpoints (model, discriminator, optimisers, schedulers, step, RNG) are written atomically to
RUN_DIR/last.pt and resumed automatically; the generator is exported to RUN_DIR/model.safetensors.
--init starts a new run (fresh optimisers, schedule and step count) from an earlier run's weights,
for a warm restart with a new learning rate, crop size or loss weights. --only makes it a
refinement stage of one part: 'mask' trains H alone, 'fill' the token projection, T and G (with D
beside them) while E, the prior, H and H̄ stay as they were, so the mask a photographer sees does
not move while the fill learns (at larger crops, say). --max-minutes stops with a checkpoint after a
wall time; with --fit-to-time a new stage measures its speed over its first steps and fits the
cosine schedule to that time, so that a GPU window of unknown speed ends annealed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from engine.training import losses
from engine.training.data import DEFAULT_DATA, Batch, TrainingData
from engine.training.pack import Pack
from engine.training.state import load_state, save_state
from engine.errors import WeightsError
from engine.model import ModelConfig, PixelDiscriminator, RetouchFormer, load_safetensors, save_model, transfer_weights
from engine.model.fill import TONE_MM, gaussian_blur, hold_tone
from engine.model.layers import mask_to



def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="retouch train", description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, default=Path("runs/small"), help="run directory (checkpoints, logs, grids)")
    p.add_argument("--preset", default="small", help="model preset: small | paper")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a ModelConfig field (e.g. attention=global)")
    p.add_argument("--clean", type=Path, action="append", default=None, help="folder(s) of clean portraits (synthetic pairs + y_u)")
    p.add_argument("--paired", type=Path, action="append", default=[], help="folder(s) with raw/ and retouched/ of matching names (FFHQR layout)")
    p.add_argument("--raw", type=Path, action="append", default=None, help="folder(s) of raw photos with real imperfections (x_u)")
    p.add_argument("--no-unpaired", action="store_true", help="ablation: train without raw-only images")
    p.add_argument("--gamma", type=float, default=1.0, help="share of paired data γ (paper: 0.01, 0.1, 0.2, 1)")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--unpaired-batch", type=int, default=2)
    p.add_argument("--crop", type=int, default=128, help="training crop size (the model is fully convolutional)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--eta", type=float, default=10.0, help="η: L1 weight of L_con^rec")
    p.add_argument("--zeta", type=float, default=10.0, help="ζ: L1 weight of L_con^x2y")
    p.add_argument("--lam", type=float, default=0.5, help="λ: weight of the unpaired mask term")
    p.add_argument("--iou", type=float, default=1.0, help="weight of the soft-Jaccard mask term (0: off)")
    p.add_argument("--iou-form", choices=["product", "minmax"], default="product", help="the Jaccard term's form: 'product' (Σ pφ / Σ (p + φ − pφ), pushes toward the footprint) or 'minmax' (Σ min / Σ max, the evaluation's Soft-IoU, whose optimum is φ itself)")
    p.add_argument("--conf", type=float, default=1.0, help="weight of the binary confidence term of L_H on paired data")
    p.add_argument("--only", choices=["all", "mask", "fill"], default="all", help="'mask': a refinement stage that trains only the mask net H (and H̄ by EMA); 'fill': one that trains only the fill (token projection, transformer T, synthesis G; and D), with E, the prior and H, H̄ frozen, so the mask stays as it was")
    p.add_argument("--init", type=Path, help="start a new run from these weights (model .safetensors, or a run's last.pt for the discriminator too)")
    p.add_argument("--state", type=Path, help="the committed training state (e.g. resources/training/state.pt): resumed from when the run has no last.pt yet, rewritten (compact) at every checkpoint")
    p.add_argument("--fill-outside", type=float, default=0.0, help="L1 weight of the raw synthesis against y outside the blemishes (robustness to masks that are too wide)")
    p.add_argument("--hold-tone", type=float, default=0.0, help="L1 weight of the tone shift (local mean over 2 mm) of clean skin under a brushed mask on the raw-only photos (no pale patches where a brush covers clean skin between spots)")
    p.add_argument("--clean-tone", type=float, default=0.0, help="L1 weight of the tone shift (local mean over 2 mm) of the clean skin under the mask G is handed on the synthetic pairs (above 0.9 where φ marks no blemish), against the clean face")
    p.add_argument("--spot-tone", type=float, default=0.0, help="L1 weight of the filled spots' tone against the clean skin around them under a brushed mask on the raw-only photos (local means over 1 and 2 mm: no dark smudge where a brushed spot was)")
    p.add_argument("--own-tone", type=float, default=0.0, help="L1 weight of the filled spots' tone against the clean skin around them under H̄'s own calibrated prediction on the raw-only photos, with no brush (local means over 1 and 2 mm, the skin's taken where a brush over the prediction would reach: no blotch where a spot the mask found was)")
    p.add_argument("--tone-reach", type=float, default=losses.TONE_REACH, help="--spot-tone and --own-tone count a spot only where the clean skin near it carries at least this share of the 2-mm Gaussian's weight (default %(default)s; inside a dense cluster under a hazy mask the skin is a few rims between the spots, far below that)")
    p.add_argument("--tone-held", action="store_true", help="--spot-tone judges the brushed spots after the program's tone hold (engine.model.fill.hold_tone), as a photographer sees them: the hold puts back the tone of the clean skin under the brush above 4 mm, which the colour lock keeps G from changing, so only the spots' tone against that skin is left to pay for")
    p.add_argument("--mask-fill", type=float, default=0.0, help="with --only mask: L1 weight of the fill's composite under H's own calibrated prediction (T and G as they are) against the clean face, near the blemishes and over the whole crop: the mask learns where the fill helps, pixel by pixel (the evaluation's PSNR through the pipeline, made a loss)")
    p.add_argument("--adv", type=float, default=0.05, help="weight of the adversarial term for the generator")
    p.add_argument("--adv-start", type=int, default=1000, help="step at which the adversarial terms start")
    p.add_argument("--gt-mask-prob", type=float, default=0.5)
    p.add_argument("--fill-mask", choices=["phi", "calibrated", "runtime", "mixed"], default="phi", help="the masks G is trained under: 'phi' (the true blend weight on --gt-mask-prob of the paired samples, H̄'s raw prediction on the rest and on the raw photos), 'runtime' (the masks of run time: a brush over the true blemishes, and H̄'s prediction calibrated by the run's --set mask_tophat_mm/mask_floor/mask_gain/mask_dilate_mm) or 'mixed' (as 'runtime', but half of the true-mask samples keep φ); 'calibrated': φ as with 'phi', the prediction calibrated as with 'runtime'")
    p.add_argument("--device", default="auto")
    p.add_argument("--pack", type=Path, help="train from a training pack (python -m engine.training.pack) instead of the data folders")
    p.add_argument("--workers", type=int, default=0, help="processes that make batches (blemish synthesis) beside the training loop; 0: in the loop (exactly reproducible resumes)")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA (the prior's nearest-code search stays float32)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--grid-every", type=int, default=500)
    p.add_argument("--max-minutes", type=float, default=0, help="stop (with a checkpoint) after this wall time; run again to resume")
    p.add_argument("--fit-to-time", action="store_true", help="with --max-minutes, for a new run or stage: after the first steps, the schedule's length (--steps) becomes the steps the remaining time allows at the measured speed, so that the cosine ends when the time does (a GPU window of unknown speed)")
    p.add_argument("--stop-at", type=int, default=0, help="stop (with a checkpoint) after this step; run again to resume")
    return p


def _config(args: argparse.Namespace) -> ModelConfig:
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:  # numbers, true/false and lists are JSON; anything else is a plain string
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    try:
        return ModelConfig.preset(args.preset, **overrides)
    except (TypeError, ValueError) as exc:  # an unknown key or a value out of bounds: say which, no traceback
        raise SystemExit(f"--set: {exc}") from None


FOOTPRINT = 0.02  # φ above this is a blemish (the fill term's region); --fill-mask runtime brushes over it
TONE_SIGMA_MM = 2.0  # --hold-tone compares local means over about this radius of clean skin
SPOT_SIGMA_MM = 1.0  # --spot-tone: a filled spot's local mean is taken over about this radius
SPOT = 0.5  # --spot-tone: H̄'s (shown) mask above this, under the brush, is a spot
NEAR_MM = 1.0  # --mask-fill: the blemishes and this far around them are where the fill is judged most
# a run with a hold net (ModelConfig.hold_net) that does not start from weights that have one
HOLD_NET_GRAFTED = ("--set hold_net=true: the tone hold's own mask net is grafted from other weights (python -m engine.training.graft), "
                    "never trained; start from weights that have one (--init, with their --set hold_tophat_mm/hold_floor/hold_gain/hold_dilate_mm).")


def brushed(teacher: torch.Tensor, px_per_mm: float, threshold: float = 0.15) -> torch.Tensor:
    """The mask a photographer brushes on a real photo: H̄'s spots (above ``threshold``) grown by 1-3 mm, plus
    strokes over skin with no spot under them, softened at the edge; never below H̄'s own mask.
    (The brush of tests/bench/brush_lightness.py grows the predicted spots by 2 mm.) With the true
    blend weight φ and a low threshold: a brush over the true blemishes (--fill-mask runtime)."""
    b, _, h, w = teacher.shape
    grow = int(round(px_per_mm * float(torch.empty(()).uniform_(1.0, 3.0))))
    spots = F.max_pool2d((teacher > threshold).float(), 2 * grow + 1, stride=1, padding=grow)
    cell = max(2, int(round(6 * px_per_mm)))  # strokes about 6 mm across
    noise = torch.rand(b, 1, max(1, h // cell), max(1, w // cell), device=teacher.device)
    strokes = (F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False) > 0.75).float()
    soft = gaussian_blur(torch.maximum(spots, strokes), 0.7 * px_per_mm)
    return torch.maximum(soft, teacher)


class GeneratorStep(nn.Module):
    """All generator-side losses of one step in a single forward (so DDP can wrap it)."""

    def __init__(self, model: RetouchFormer, args: argparse.Namespace) -> None:
        super().__init__()
        self.model, self.args = model, args

    def forward(self, y: torch.Tensor, xa: torch.Tensor, phi: torch.Tensor, xu: torch.Tensor | None, use_gt: torch.Tensor) -> dict[str, torch.Tensor]:
        m, a = self.model, self.args
        if a.only == "mask":
            return self._mask_only(y, xa, phi, xu)
        fill_only = a.only == "fill"
        frozen = torch.no_grad() if fill_only else contextlib.nullcontext()  # --only fill: E and the prior as they are
        out: dict[str, torch.Tensor] = {}
        if not fill_only:  # L_prior + L_con^rec on clean images y
            feats_y = m.encoder(y)
            prior_y = m.prior(feats_y, y)
            out["prior"] = prior_y.loss
            out["rec"] = losses.content(y, prior_y.recon, a.eta) if m.config.prior else y.new_zeros(())
        # paired: mask terms and L_con^x2y
        with frozen:
            feats = m.encoder(xa)
            recon = m.prior(feats, xa).recon.detach()
        if not fill_only:
            self._mask_losses(xa, phi, recon, out)
        with torch.no_grad():
            pred = self._shown(torch.sigmoid(m.mask_logits(xa, recon, ema=True)), xa, recon)
            truth = phi
            if a.fill_mask in ("runtime", "mixed"):  # a brush over the true blemishes: on every such sample, or on half of them
                brush = brushed(phi, m.config.work_px_per_mm, FOOTPRINT)
                pick = torch.rand(phi.shape[0], 1, 1, 1, device=phi.device) < (0.5 if a.fill_mask == "mixed" else 1.0)
                truth = torch.where(pick, brush, phi)
        used = torch.where(use_gt[:, None, None, None], truth, pred)
        frames = m.transformer(m.tokens(feats), m.token_weights(used, feats[3]))
        ya_hat, synth = m.synthesis(frames, feats, xa, used)
        y_a = y[: xa.shape[0]]
        out["x2y"] = losses.content(y_a, ya_hat, a.zeta)
        # the raw synthesis must be clean wherever there really is an imperfection
        region = (phi > FOOTPRINT).float()
        out["fill"] = a.zeta * losses.masked_l1(synth, y_a, region)
        if a.clean_tone:  # no paler patch on the clean skin under a mask that covers it (a brush, an overshoot)
            covered = ((used > 0.9) & (phi <= FOOTPRINT)).float()
            out["clean_tone"] = a.clean_tone * losses.tone_shift(ya_hat, y_a, covered, TONE_SIGMA_MM * m.config.work_px_per_mm)
        if a.fill_outside:  # and clean skin stays as it is wherever a (predicted or brushed) mask overshoots
            out["fill_outside"] = a.fill_outside * losses.masked_l1(synth, y_a, 1.0 - region)
        out["y_hat"], out["used_mask"], out["synth"] = ya_hat, used, synth
        # unpaired raw images: mask consistency with the EMA teacher, and outputs for the adversary
        if xu is not None:
            with frozen:
                fu = m.encoder(xu)
                ru = m.prior(fu, xu).recon.detach()
            teacher = self._shown(self._unpaired_mask(xu, ru, out, train_mask=not fill_only), xu, ru)
            tu = m.tokens(fu)  # one token projection for the teacher's fill and the brushed one
            fr = m.transformer(tu, m.token_weights(teacher, fu[3]))
            out["yu_hat"], _ = m.synthesis(fr, fu, xu, teacher)
            out["xu_mask"] = teacher
            if a.hold_tone or a.spot_tone or a.own_tone:  # a brush over whole clusters, as a photographer paints one on a real photo
                px = m.config.work_px_per_mm
                brush = brushed(teacher, px)
                # the skin the brush covers that H̄ calls clean: the tone a filled spot should take (the
                # skin near the spots, not hair, a shadow or the background the mask leaves alone)
                clean = ((brush > 0.9) & (teacher < 0.05)).float()
                spots = ((brush > 0.9) & (teacher > SPOT)).float()
                if a.own_tone:  # with no brush, the spots H̄'s own mask fills take that tone (no blotch where they were)
                    out["own_tone"] = a.own_tone * losses.spot_tone(out["yu_hat"], xu, spots, clean, SPOT_SIGMA_MM * px, TONE_SIGMA_MM * px, reach=a.tone_reach)
            if a.hold_tone or a.spot_tone:
                fb = m.transformer(tu, m.token_weights(brush, fu[3]))
                yu_b, _ = m.synthesis(fb, fu, xu, brush)
                if a.hold_tone:  # must not leave a pale patch on the clean skin it covers
                    out["hold_tone"] = a.hold_tone * losses.tone_shift(yu_b, xu, clean, TONE_SIGMA_MM * px)
                if a.spot_tone:  # and the spots under it take the tone of that skin (no dark smudge where they were)
                    if a.tone_held:  # as the program shows them: after its tone hold under the brush
                        yu_b = hold_tone(xu, yu_b, brush, m.hold_reading(xu, ru, teacher), TONE_MM * px)
                    out["spot_tone"] = a.spot_tone * losses.spot_tone(yu_b, xu, spots, clean, SPOT_SIGMA_MM * px, TONE_SIGMA_MM * px, reach=a.tone_reach)
        return out

    def _shown(self, mask: torch.Tensor, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """H̄'s mask of ``x`` as G is handed it: raw with --fill-mask phi, else as at run time (RetouchFormer.shown_mask)."""
        return mask if self.args.fill_mask == "phi" else self.model.shown_mask(mask, x, recon)

    def _mask_losses(self, xa: torch.Tensor, phi: torch.Tensor, recon: torch.Tensor, out: dict[str, torch.Tensor]) -> torch.Tensor:
        m, a = self.model, self.args
        logits = m.mask_logits(xa, recon, ema=False)
        out["mask_reg"] = (torch.sigmoid(logits) - phi).pow(2).mean()  # L_H̄ (on H, see module doc)
        out["mask_bce"] = a.conf * losses.soft_bce(logits, (phi > 0.05).float())  # L_H, paired part
        jaccard = losses.soft_iou_minmax if a.iou_form == "minmax" else losses.soft_jaccard
        out["mask_iou"] = a.iou * jaccard(torch.sigmoid(logits), phi)
        return logits

    def _unpaired_mask(self, xu: torch.Tensor, ru: torch.Tensor, out: dict[str, torch.Tensor], train_mask: bool = True) -> torch.Tensor:
        """H̄'s mask of the raw photos xu, and (``train_mask``) H's consistency term with it."""
        m, a = self.model, self.args
        with torch.no_grad():
            teacher = torch.sigmoid(m.mask_logits(xu, ru, ema=True))
        if train_mask:
            out["mask_unpaired"] = a.lam * losses.soft_bce(m.mask_logits(xu, ru, ema=False), teacher)
        return teacher

    def _mask_only(self, y: torch.Tensor, xa: torch.Tensor, phi: torch.Tensor, xu: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The refinement stage (--only mask): E, P and R run without gradients; only H learns."""
        m = self.model
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            feats = m.encoder(xa)
            recon = m.prior(feats, xa).recon
            ru = m.prior(m.encoder(xu), xu).recon if xu is not None else None
        logits = self._mask_losses(xa, phi, recon, out)
        out["used_mask"] = torch.sigmoid(logits).detach()
        if self.args.mask_fill:
            self._fill_through_mask(y[: xa.shape[0]], xa, phi, feats, recon, logits, out)
        if xu is not None:
            self._unpaired_mask(xu, ru, out)
        return out

    def _fill_through_mask(self, y_a: torch.Tensor, xa: torch.Tensor, phi: torch.Tensor, feats: list[torch.Tensor], recon: torch.Tensor, logits: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
        """--mask-fill: H's own prediction, calibrated as at run time, handed to T and G (whose
        weights the stage does not train); their composite against the clean face, near the
        blemishes and over the whole crop. The gradient reaches H through the blend weight
        (composite = x + m (synthesis − x)) and the attention's token weights: a pixel's mask rises
        where the fill is closer to the clean skin than the photo is and falls where it is not."""
        m = self.model
        mask = m.shown_mask(torch.sigmoid(logits), xa, recon)
        frames = m.transformer(m.tokens(feats), m.token_weights(mask, feats[3]))
        y_hat, _ = m.synthesis(frames, feats, xa, mask)
        r = int(round(NEAR_MM * m.config.work_px_per_mm))
        near = F.max_pool2d((phi > FOOTPRINT).float(), 2 * r + 1, 1, r)
        out["mask_fill"] = self.args.mask_fill * (losses.masked_l1(y_hat, y_a, near) + (y_hat - y_a).abs().mean())
        out["used_mask"], out["y_hat"] = mask.detach(), y_hat.detach()


class _BatchStream(torch.utils.data.IterableDataset):
    """Endless batches for a DataLoader: each worker process draws from its own generator."""

    def __init__(self, data: TrainingData, batch: int, unpaired: int, seed: int) -> None:
        super().__init__()
        self.data, self.batch, self.unpaired, self.seed = data, batch, unpaired, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info is not None else 0])
        return self.data.batches(self.batch, self.unpaired, rng)


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _to(arr: np.ndarray, dev: torch.device) -> torch.Tensor:
    t = torch.from_numpy(arr)
    t = t.permute(0, 3, 1, 2) if t.ndim == 4 else t[:, None]
    return t.contiguous().to(dev, non_blocking=True)


def _grid(path: Path, batch: Batch, out: dict[str, torch.Tensor]) -> None:
    """PNG grid, one row per sample: raw | predicted/used mask | output | target."""
    from engine.imageio import from_float, save_image

    rows = []
    n = min(4, batch.raw.shape[0])
    for i in range(n):
        m = out["used_mask"][i, 0].detach().cpu().numpy()
        rows.append(
            np.concatenate(
                [batch.raw[i], np.repeat(m[..., None], 3, 2), out["y_hat"][i].detach().permute(1, 2, 0).cpu().numpy(), batch.clean[i]], 1
            )
        )
    save_image(path, from_float(np.concatenate(rows, 0), np.uint8))


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _apply_checkpoint(state: dict[str, Any], cfg: ModelConfig, model: RetouchFormer, disc: PixelDiscriminator, refusal: str) -> dict[str, Any]:
    """Put a loaded state's weights into ``model`` and ``disc`` (same configuration only); returns the state.
    (States are loaded on the CPU: the optimisers move theirs to the parameters, the RNG state must stay there.)"""
    if ModelConfig.from_dict(state.get("config") or {}).structure() != cfg.structure():  # fields added since: their defaults
        raise SystemExit(refusal)  # (settings such as colour_lock_mm may change between segments)
    model.load_state_dict(state["model"])
    disc.load_state_dict(state["disc"])
    return state


def _fill_mask_flags(args: argparse.Namespace, cfg: ModelConfig) -> str:
    """The --fill-mask part of a stage's description ("" for the default): a stage resumes only with the same."""
    if args.fill_mask == "phi":
        return ""
    dilation = f", dilation {cfg.mask_dilate_mm:g} mm" if cfg.mask_dilate_mm else ""  # stages begun before it existed read as before
    held = ", the hold net's where stronger" if cfg.mask_with_hold else ""  # (ModelConfig.mask_with_hold: RetouchFormer.shown_mask)
    return f" --fill-mask {args.fill_mask} (top-hat {cfg.mask_tophat_mm:g} mm, floor {cfg.mask_floor:g}, gain {cfg.mask_gain:g}{dilation}{held})"


def _hold_reading(cfg: ModelConfig) -> str:
    """The tone hold's reading that --tone-held trains under, when it is more than a top-hat (stages
    begun before ``hold_floor``, ``hold_gain`` and ``hold_dilate_mm`` existed read as before)."""
    if (cfg.hold_floor, cfg.hold_gain, cfg.hold_dilate_mm, cfg.hold_net) == (0.0, 1.0, 0.0, False):
        return ""
    net = "the hold net, " if cfg.hold_net else ""
    return f" (hold reading: {net}top-hat {cfg.hold_tophat_mm:g} mm, floor {cfg.hold_floor:g}, gain {cfg.hold_gain:g}, dilation {cfg.hold_dilate_mm:g} mm)"


def _stage_over(state: dict[str, Any], only: str) -> bool:
    """Whether a committed state is a stage that a run with ``--only only`` cannot go on with:
    its schedule has ended, or it trains other parameters (e.g. a mask-only stage). With
    ``--init`` given as well, such a state starts a new stage instead of being resumed, so one
    command serves every session (resume while a stage runs, a new stage once it is over)."""
    t_max = state.get("sched_g", {}).get("T_max")
    return state.get("only", "all") != only or (t_max is not None and state["step"] >= t_max)


def _initialise(model: RetouchFormer, disc: PixelDiscriminator, path: Path, cfg: ModelConfig, loaded: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Load the weights of an earlier run into a new one (fresh optimisers, schedule and step);
    returns the earlier run's training history (a run's last.pt keeps it, weights alone do not).
    ``loaded``: the state at ``path``, when the caller has read it already."""
    if loaded is None and not path.is_file():
        raise SystemExit(f"--init: {path} does not exist.")
    if loaded is None and path.suffix == ".safetensors":  # weights only: as far as they fit (a warm start across an architecture change)
        try:
            tensors, meta = load_safetensors(path)
        except WeightsError as exc:
            raise SystemExit(f"--init: {exc}") from None
        fresh = transfer_weights(model, tensors)
        if json.loads(meta.get("config", "{}")).get("anchor", False) != cfg.anchor:
            # G's output was a residual on something else: start it at zero (the classical fill, or x)
            nn.init.zeros_(model.synthesis.out.weight)
            nn.init.zeros_(model.synthesis.out.bias)
            print("--init: the synthesis decoder's output layer starts at zero (anchor changed)", file=sys.stderr)
        if len(fresh) == len(model.state_dict()):
            raise SystemExit(f"--init: no tensor of {path.name} fits this model configuration.")
        if cfg.hold_net and any(name.startswith("hold_masknet.") for name in fresh):
            raise SystemExit(f"--init: {path.name} has no hold net. " + HOLD_NET_GRAFTED)
        if fresh:
            print(f"--init: {len(fresh)} tensors keep their fresh initialisation (e.g. {fresh[0]})", file=sys.stderr)
        return []
    state = loaded if loaded is not None else load_state(path)
    _apply_checkpoint(state, cfg, model, disc, f"--init: {path} was trained with a different model configuration.")
    return list(state.get("history", []))


class FitToTime:
    """--fit-to-time: measure the speed over steps WARMUP..WARMUP+PROBE of a new run, then give the
    cosine schedule (and the run) the length that the rest of --max-minutes allows, less MARGIN for
    the checkpoints, so that the learning rate has come down when the time is up."""

    WARMUP, PROBE, MARGIN = 10, 30, 0.93

    def __init__(self, args: argparse.Namespace, step: int, started: float) -> None:
        self.args, self.first, self.started, self.t0 = args, step, started, None

    def due(self, step: int) -> bool:
        if step == self.first + self.WARMUP:
            self.t0 = time.time()
        return step == self.first + self.WARMUP + self.PROBE

    def apply(self, step: int, schedulers: tuple[Any, ...], dev: torch.device | None) -> None:
        now = time.time()
        rate = self.PROBE / max(now - self.t0, 1e-6)
        left = self.args.max_minutes * 60 - (now - self.started)
        total = step + max(1, int(rate * left * self.MARGIN))
        if dev is not None:  # every rank takes the same length (the shortest)
            t = torch.tensor(float(total), device=dev)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
            total = int(t.item())
        for sched in schedulers:  # the recursive cosine goes on from here towards the new end
            sched.T_max = sched.last_epoch + total - step
        self.args.steps = total


def train(args: argparse.Namespace) -> Path:
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = 0
    if distributed:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank = torch.distributed.get_rank()
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
            args.device = f"cuda:{local}"
    if args.mask_fill and args.only != "mask":
        raise SystemExit("--mask-fill trains the mask net through the fill: it is a term of a mask-only stage (--only mask).")
    if args.own_tone and (args.only == "mask" or args.no_unpaired):
        raise SystemExit("--own-tone trains the fill on the raw-only photos: it needs them (no --no-unpaired) and a stage that trains the fill (not --only mask).")
    if args.clean_tone and args.only == "mask":
        raise SystemExit("--clean-tone trains the fill: it is not a term of a mask-only stage (--only mask).")
    if args.tone_held and not args.spot_tone:
        raise SystemExit("--tone-held judges the brushed spots of --spot-tone after the tone hold: give --spot-tone too.")
    if args.fit_to_time and not args.max_minutes:
        raise SystemExit("--fit-to-time fits the schedule to --max-minutes: give both.")
    dev = _device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    cfg = _config(args)
    if args.fill_mask != "phi" and (cfg.mask_tophat_mm, cfg.mask_floor, cfg.mask_gain, cfg.mask_dilate_mm) == (0.0, 0.0, 1.0, 0.0):
        raise SystemExit(f"--fill-mask {args.fill_mask} trains G under the calibrated mask: give the calibration it is to be "
                         "shipped with, e.g. --set mask_tophat_mm=12 --set mask_gain=1.5 (and the same on every resume).")
    torch.manual_seed(args.seed + rank)
    model = RetouchFormer(cfg).to(dev)
    disc = PixelDiscriminator(cfg).to(dev)
    parts: list[nn.Module] = {  # what the stage trains
        "mask": [model.masknet.online],
        "fill": [model.tokens, model.transformer, model.synthesis],
    }.get(args.only, [model])
    gen_params = [p for part in parts for p in part.parameters() if p.requires_grad]
    if args.only != "all":  # what the stage does not train takes no gradient (--mask-fill runs T and G for H)
        trained = {id(p) for p in gen_params}
        for p in model.parameters():
            p.requires_grad_(id(p) in trained)
    opt_g = torch.optim.Adam(gen_params, lr=args.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=args.lr, betas=(0.5, 0.999))
    sched_g = torch.optim.lr_scheduler.CosineAnnealingLR(opt_g, T_max=args.steps, eta_min=args.lr * 0.05)
    sched_d = torch.optim.lr_scheduler.CosineAnnealingLR(opt_d, T_max=args.steps, eta_min=args.lr * 0.05)
    rng = np.random.default_rng(args.seed + 1000 * rank)
    step = 0
    fitted_steps = None  # the run's length when --fit-to-time set it
    ckpt = run / "last.pt"
    history: list[dict[str, Any]] = []
    committed = args.state if args.state is not None and args.state.exists() else None
    source = ckpt if ckpt.exists() else committed
    state = load_state(source) if source is not None else None
    if source == ckpt and committed is not None:
        other = load_state(committed)
        if (other["step"], other.get("history")) != (state["step"], state.get("history")):
            # every checkpoint writes both: a difference means the committed state moved on without this
            # run directory (a GPU window, another session, a state restored from git), and it is what counts
            print(f"{ckpt} is not the committed state {committed} (step {state['step']} against {other['step']}): "
                  f"going on from {committed}", file=sys.stderr)
            source, state = committed, other
    init_state = None  # the --init file's state, when it is the one read here
    if state is not None and source == args.state and args.init is not None and _stage_over(state, args.only):
        print(f"{args.state} holds a finished stage (or one that trains other parts): a new stage starts from {args.init}", file=sys.stderr)
        init_state = state if Path(args.init) == args.state else None
        state = None  # --init below; the new stage's checkpoints rewrite --state
    if state is not None:
        refusal = f"{source} was trained with a different model configuration; use a new --run directory (or another --state)."
        _apply_checkpoint(state, cfg, model, disc, refusal)
        history = list(state.get("history", []))
        trained = state.get("only", "all")
        if trained != args.only:  # the optimiser holds other parameters
            raise SystemExit(
                f"{source} is a stage that trains --only {trained}; continue it with --only {trained}, "
                f"or start a new stage from it with --init {source} and a new --run directory."
            )
        began = next((h["stage"] for h in reversed(history) if "stage" in h), "")
        theirs = re.search(r" --fill-mask \S+ \([^)]*\)", began)
        if (theirs.group(0) if theirs else "") != _fill_mask_flags(args, cfg):  # G's masks would change mid-stage
            raise SystemExit(
                f"{source} is a stage begun with{theirs.group(0) if theirs else ' --fill-mask phi'}; resume it with the same "
                "--fill-mask and --set mask_tophat_mm/mask_floor/mask_gain/mask_dilate_mm/mask_with_hold (or start a new stage with --init)."
            )
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        sched_g.load_state_dict(state["sched_g"])
        sched_d.load_state_dict(state["sched_d"])
        step = state["step"]
        if state.get("fitted_steps"):  # a schedule fitted to a time window (--fit-to-time) keeps its length
            args.steps = fitted_steps = int(state["fitted_steps"])
        rng = np.random.default_rng()
        rng.bit_generator.state = state["np_rng"]
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["py_rng"])
        if rank == 0:
            print(f"resumed from {source} at step {step}", file=sys.stderr)
    elif args.init is not None:
        history = _initialise(model, disc, Path(args.init), cfg, init_state)
        if rank == 0:
            print(f"initialised from {args.init}", file=sys.stderr)
    elif cfg.hold_net:
        raise SystemExit(HOLD_NET_GRAFTED)
    clean = args.clean if args.clean is not None else [DEFAULT_DATA / "faces", DEFAULT_DATA / "faces-hq"]
    raw = [] if args.no_unpaired else (args.raw if args.raw is not None else [DEFAULT_DATA / "acne-faces"])
    if args.pack is not None:
        data = TrainingData.from_pack(Pack(args.pack), args.crop, args.gamma, not args.no_unpaired, seed=args.seed)
        if abs(data.px_per_mm - cfg.work_px_per_mm) > 1e-6:
            raise SystemExit(f"{args.pack} was made at {data.px_per_mm} px/mm, the model works at {cfg.work_px_per_mm}; make the pack again.")
    else:
        data = TrainingData(cfg.work_px_per_mm, args.crop, clean, args.paired, raw, args.gamma, seed=args.seed)
    if rank == 0:
        print(f"data: {data.describe()}  model: {model.parameter_count() / 1e6:.2f} M params  device: {dev}", file=sys.stderr)
    gstep: nn.Module = GeneratorStep(model, args)
    dstep: nn.Module = disc
    if distributed:
        ids = [dev.index] if dev.type == "cuda" else None
        gstep = nn.parallel.DistributedDataParallel(gstep, device_ids=ids, find_unused_parameters=True)
        dstep = nn.parallel.DistributedDataParallel(disc, device_ids=ids)
    log = open(run / "log.jsonl", "a", encoding="utf-8") if rank == 0 else None
    started, start_step = time.time(), step
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    segment = {"date": time.strftime("%Y-%m-%d"), "from_step": step, "to_step": step, "hours": 0.0, "device": where, "crop": args.crop, "batch": args.batch}
    if step == 0:  # a new stage (or run): say what it trains
        segment["stage"] = f"--only {args.only} --conf {args.conf} --iou {args.iou}" + (f" --iou-form {args.iou_form}" if args.iou_form != "product" else "") + _fill_mask_flags(args, cfg) + (f" --clean-tone {args.clean_tone:g}" if args.clean_tone else "") + (f" --spot-tone {args.spot_tone:g}" if args.spot_tone else "") + (f" --own-tone {args.own_tone:g}" if args.own_tone else "") + (f" --tone-reach {args.tone_reach:g}" if (args.spot_tone or args.own_tone) and args.tone_reach != losses.TONE_REACH else "") + (" --tone-held" + _hold_reading(cfg) if args.spot_tone and args.tone_held else "") + (f" --mask-fill {args.mask_fill:g}" if args.mask_fill else "") + f" --lr {args.lr}" + (f", from {Path(args.init).name}" if args.init is not None else "")
    history.append(segment)
    n_unpaired = 0 if args.no_unpaired else args.unpaired_batch
    if args.workers > 0:  # batches made in worker processes, each with its own generator
        stream = _BatchStream(data, args.batch, n_unpaired, args.seed + 7919 * step + 104729 * rank)
        batches = iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=args.workers, prefetch_factor=4, persistent_workers=True))
    else:
        batches = data.batches(args.batch, n_unpaired, rng)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if (args.amp and dev.type == "cuda") else contextlib.nullcontext()
    model.train()
    fit = FitToTime(args, step, started) if (args.fit_to_time and step == 0) else None  # (--max-minutes checked above)
    while step < args.steps:
        batch = next(batches)
        y, xa, phi = _to(batch.clean, dev), _to(batch.raw, dev), _to(batch.mask, dev)
        xu = _to(batch.unpaired, dev) if batch.unpaired is not None else None
        use_gt = torch.from_numpy(rng.random(xa.shape[0]) < args.gt_mask_prob).to(dev)
        with amp:
            out = gstep(y, xa, phi, xu, use_gt)
        adv_on = step >= args.adv_start and args.only != "mask"
        loss_names = ["prior", "rec", "mask_reg", "mask_bce", "mask_iou", "x2y", "fill", "fill_outside", "clean_tone", "hold_tone", "spot_tone", "own_tone", "mask_unpaired", "mask_fill"]
        g_loss = sum(out[k] for k in loss_names if k in out)
        if adv_on:  # L_adv^syn through D (not its DDP wrapper: D is not updated here)
            with amp:
                fake_logits = disc(out["y_hat"], out["used_mask"])
            out["adv_g"] = args.adv * losses.adversarial_g(fake_logits, (out["used_mask"] > 0.1).float())
            if "yu_hat" in out:
                with amp:
                    ul = disc(out["yu_hat"], out["xu_mask"])
                out["adv_g"] = out["adv_g"] + args.adv * losses.adversarial_g(ul, (out["xu_mask"] > 0.1).float())
            g_loss = g_loss + out["adv_g"]
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        torch.nn.utils.clip_grad_norm_(gen_params, 1.0)
        opt_g.step()
        sched_g.step()
        if args.only != "fill":  # (H is frozen in a fill stage: H̄ stays as it is too)
            model.ema_update()
        if adv_on:  # L_adv^disc: real clean pixels vs. synthesised and blemish pixels
            opt_d.zero_grad(set_to_none=True)
            m_used = out["used_mask"].detach()
            n = xa.shape[0]
            # one D forward over real | synthesised | raw (DDP allows one forward per backward)
            with amp:
                logits = dstep(torch.cat([y[:n], out["y_hat"].detach(), xa]), m_used.repeat(3, 1, 1, 1)).float()
            real, fake_hat, fake_raw = logits.split(n)
            d_loss = (
                losses.soft_bce(real, torch.ones_like(real))
                + losses.soft_bce(fake_hat, (m_used <= 0.1).float())
                + losses.soft_bce(fake_raw, (phi <= 0.02).float())
            )
            d_loss.backward()
            opt_d.step()
            out["d"] = d_loss.detach()
            sched_d.step()
        step += 1
        if fit is not None and fit.due(step):
            fit.apply(step, (sched_g, sched_d), dev if distributed else None)
            fit, fitted_steps = None, args.steps
            if rank == 0:
                print(f"\nthe schedule fits the time left: {args.steps} steps", file=sys.stderr)
        stop = bool(args.max_minutes and (time.time() - started) > args.max_minutes * 60) or step == args.stop_at
        if distributed:  # every rank stops at the same step, or the others would wait forever
            flag = torch.tensor(float(stop), device=dev)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = bool(flag.item())
        if rank == 0:
            scalars = {k: float(v.detach()) for k, v in out.items() if torch.is_tensor(v) and v.ndim == 0}
            if step % args.log_every == 0 or step == args.steps:
                elapsed = time.time() - started
                rate = (step - start_step) / max(elapsed, 1e-6)
                eta = (args.steps - step) / max(rate, 1e-9)
                log.write(json.dumps({"step": step, "time": round(elapsed, 1), "lr": sched_g.get_last_lr()[0], **scalars}) + "\n")
                log.flush()
                bar = "#" * int(30 * step / args.steps)
                main = " ".join(f"{k}={v:.4f}" for k, v in scalars.items())
                print(f"\r[{bar:<30}] {step}/{args.steps} {rate:.2f} it/s ETA {eta / 60:.0f} min  {main}", end="", file=sys.stderr, flush=True)
            if step % args.grid_every == 0:
                if "y_hat" not in out:  # mask-only stage: show what the frozen T and G make of the mask
                    with torch.no_grad():
                        out["y_hat"] = model(xa, out["used_mask"]).image
                (run / "grids").mkdir(exist_ok=True)
                _grid(run / "grids" / f"step{step:07d}.png", batch, out)
            if step % args.ckpt_every == 0 or step == args.steps or stop:
                segment.update(to_step=step, hours=round((time.time() - started) / 3600.0, 3))
                full = {
                    "config": cfg.to_dict(),
                    "model": model.state_dict(),
                    "disc": disc.state_dict(),
                    "opt_g": opt_g.state_dict(),
                    "opt_d": opt_d.state_dict(),
                    "sched_g": sched_g.state_dict(),
                    "sched_d": sched_d.state_dict(),
                    "step": step,
                    "np_rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(),
                    "py_rng": random.getstate(),
                    "history": history,
                    "only": args.only,
                    **({"fitted_steps": fitted_steps} if fitted_steps else {}),
                }
                _atomic_torch_save(full, ckpt)
                if args.state is not None:
                    save_state(full, args.state)
                save_model(model, run / "model.safetensors", extra={"step": step, "args": {k: str(v) for k, v in vars(args).items()}})
            if stop:
                print(f"\nstopped at step {step}; run the same command to resume", file=sys.stderr)
        if stop:
            break
    if log:
        log.close()
        print(file=sys.stderr)
    if distributed:
        torch.distributed.destroy_process_group()
    return run / "model.safetensors"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = train(args)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
