"""RetouchFormer: E -> (P, R) clean prior -> H̄ soft mask -> T selective attention -> G."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
import torch.nn.functional as F

from engine.model.config import ModelConfig
from engine.model.decoders import ReconstructionDecoder, SynthesisDecoder
from engine.model.encoder import Encoder, TokenProjection
from engine.model.layers import mask_to
from engine.model.masknet import MaskUNet, TwoStreamMask
from engine.model.quantizer import VectorQuantizer
from engine.model.transformer import Transformer


class RetouchOutput(NamedTuple):
    image: torch.Tensor  # retouched (B,3,H,W) in [0,1]
    mask: torch.Tensor  # soft mask used (B,1,H,W) in [0,1]
    recon: torch.Tensor  # clean-prior reconstruction x̃ (B,3,H,W)


class Prior(NamedTuple):
    recon: torch.Tensor
    loss: torch.Tensor  # L_prior term (codebook + commitment)
    indices: torch.Tensor | None


@dataclass
class Encoded:
    """What the encoder and mask net computed for an image: enough to re-run T and G for any mask."""

    x: torch.Tensor
    feats: list[torch.Tensor]
    frames: torch.Tensor
    recon: torch.Tensor
    mask: torch.Tensor  # H̄'s prediction, as shown (RetouchFormer.shown_mask)
    hold: torch.Tensor | None = None  # the hold net's reading (config.hold_net), else None: the hold reads ``mask``


class RetouchFormer(nn.Module):
    """The generator side of RetouchFormer (the discriminator lives in engine.model.discriminator).

    Images are float tensors in [0, 1], RGB, (B, 3, H, W) with H and W multiples of 8.
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or ModelConfig.preset("small")
        self.encoder = Encoder(cfg)
        self.tokens = TokenProjection(cfg)
        if cfg.prior:
            self.pre_quant = nn.Conv2d(cfg.enc_channels[3], cfg.code_dim, 1)
            self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.code_dim, cfg.commitment)
            self.reconstruct = ReconstructionDecoder(cfg)
        self.masknet = TwoStreamMask(cfg)
        if cfg.hold_net:  # the tone hold's own footprint net: grafted from other weights, never trained here
            self.hold_masknet = MaskUNet(cfg).requires_grad_(False)
        self.transformer = Transformer(cfg)
        self.synthesis = SynthesisDecoder(cfg)

    # -- pieces -------------------------------------------------------------------------------
    def prior(self, feats: list[torch.Tensor], x: torch.Tensor) -> Prior:
        """Clean-prior reconstruction x̃ = R(E_ρ(x)); without the prior (ablation) x̃ = x."""
        if not self.config.prior:
            return Prior(x, x.new_zeros(()), None)
        q = self.quantizer(self.pre_quant(feats[3]))
        return Prior(self.reconstruct(q.quantized), q.loss, q.indices)

    def mask_logits(self, x: torch.Tensor, recon: torch.Tensor, ema: bool = True) -> torch.Tensor:
        net = self.masknet.ema if ema else self.masknet.online
        return net(x, recon)

    def ema_update(self, decay: float | None = None) -> None:
        self.masknet.ema_update(decay)

    def encode(self, x: torch.Tensor) -> Encoded:
        """E, the prior and H̄: everything that does not depend on a user-edited mask."""
        self._check_input(x)
        feats = self.encoder(x)
        recon = self.prior(feats, x).recon
        hold = self.hold_prediction(x, recon) if self.config.hold_net else None
        mask = self.shown_mask(torch.sigmoid(self.mask_logits(x, recon, ema=True)), x, recon, hold)
        return Encoded(x, feats, self.tokens(feats), recon, mask, hold)

    def shown_mask(self, raw: torch.Tensor, x: torch.Tensor, recon: torch.Tensor, hold: torch.Tensor | None = None) -> torch.Tensor:
        """H̄'s raw prediction ``raw`` (B, 1, H, W) for ``x`` (reconstruction ``recon``) as the fill
        is handed it and the program shows it: calibrated (:meth:`calibrate`), and with
        ``config.mask_with_hold`` the stronger of that and the hold net's reading (``hold``, its
        :meth:`hold_prediction`, computed here when not given)."""
        mask = self.calibrate(raw)
        if self.config.mask_with_hold:
            mask = torch.maximum(mask, self.hold_prediction(x, recon) if hold is None else hold)
        return mask

    def calibrate(self, mask: torch.Tensor, floor: float | None = None, tophat_mm: float | None = None, gain: float | None = None, dilate_mm: float | None = None) -> torch.Tensor:
        """H̄'s soft mask (B, 1, H, W) with the calibration applied (``config.mask_tophat_mm``,
        ``config.mask_floor``, ``config.mask_gain`` and ``config.mask_dilate_mm`` unless given): a
        faint haze over a whole face is not a blemish, and an estimate of the blend weight is made
        strong enough to fill with, out to the spot's rim."""
        f = self.config.mask_floor if floor is None else floor
        t = self.config.mask_tophat_mm if tophat_mm is None else tophat_mm
        g = self.config.mask_gain if gain is None else gain
        d = self.config.mask_dilate_mm if dilate_mm is None else dilate_mm
        mask = self.tophat(mask, t)
        if f > 0:
            mask = ((mask - f) / (1.0 - f)).clamp(0.0, 1.0)
        if g != 1.0:
            mask = (mask * g).clamp(0.0, 1.0)
        r = int(round(d * self.config.work_px_per_mm))
        if r > 0:  # grey dilation: each pixel takes the strongest value within r working pixels
            mask = F.max_pool2d(mask, 2 * r + 1, 1, r)
        return mask

    def tone_reading(self, mask: torch.Tensor) -> torch.Tensor:
        """H̄'s calibrated prediction (B, 1, H, W) as the tone hold under a brush reads it
        (engine.model.fill.hold_tone's ``pred``): without its haze, ``config.hold_tophat_mm`` wide,
        then floored at ``config.hold_floor``, strengthened by ``config.hold_gain`` and grown by
        ``config.hold_dilate_mm``, in the calibration's order (0, 0, 1 and 0: as it is)."""
        c = self.config
        return self.calibrate(mask, floor=c.hold_floor, tophat_mm=c.hold_tophat_mm, gain=c.hold_gain, dilate_mm=c.hold_dilate_mm)

    def hold_prediction(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """The hold net's prediction (config.hold_net) on [x, x̃] as the tone hold reads it
        (:meth:`tone_reading`: the hold_* settings)."""
        return self.tone_reading(torch.sigmoid(self.hold_masknet(x, recon)))

    def hold_reading(self, x: torch.Tensor, recon: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """What the tone hold under a brush reads for ``x`` (reconstruction ``recon``, H̄'s
        calibrated prediction ``mask``): the hold net's prediction when the weights have one, else
        ``mask`` through :meth:`tone_reading`."""
        return self.hold_prediction(x, recon) if self.config.hold_net else self.tone_reading(mask)

    def reads_tone_as_is(self) -> bool:
        """Whether the tone hold reads H̄'s prediction unchanged (every checkpoint before the
        hold's own reading existed): no hold net and a :meth:`tone_reading` that changes nothing."""
        c = self.config
        return not c.hold_net and c.hold_tophat_mm <= 0 and c.hold_floor <= 0 and c.hold_gain == 1.0 and int(round(c.hold_dilate_mm * c.work_px_per_mm)) <= 0

    def tophat(self, mask: torch.Tensor, mm: float) -> torch.Tensor:
        """``mask`` (B, 1, H, W) with the broad haze under its peaks taken away: a white top-hat,
        what stands out of a morphological opening ``mm`` millimetres wide (0: as it is),
        stretched back to 0..1 over the haze."""
        k = int(round(mm * self.config.work_px_per_mm)) // 2 * 2 + 1 if mm > 0 else 1
        if k <= 1:
            return mask
        haze = F.max_pool2d(-F.max_pool2d(-mask, k, 1, k // 2), k, 1, k // 2)
        return ((mask - haze) / (1.0 - haze).clamp_min(1e-3)).clamp(0.0, 1.0)

    def token_weights(self, mask: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """f_H: the pixel mask brought to the token grid (max-pooled so small blemishes count)."""
        return mask_to(mask, tuple(frames.shape[-2:]))

    def synthesize(self, enc: Encoded, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """T and G for ``mask`` (None: H̄'s prediction). Returns (composite image, raw synthesis)."""
        m = enc.mask if mask is None else self._check_mask(mask, enc.x)
        frames = self.transformer(enc.frames, self.token_weights(m, enc.frames))
        return self.synthesis(frames, enc.feats, enc.x, m)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> RetouchOutput:
        enc = self.encode(x)
        image, _ = self.synthesize(enc, mask)
        return RetouchOutput(image, enc.mask if mask is None else mask, enc.recon)

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _check_input(x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"image height and width must be multiples of 8, got {tuple(x.shape[-2:])}")

    @staticmethod
    def _check_mask(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] != x.shape[0] or mask.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"mask must have shape {(x.shape[0], 1, *x.shape[-2:])}, got {tuple(mask.shape)}")
        return mask.to(x.dtype).clamp(0.0, 1.0)

    def parameter_count(self, trainable_only: bool = False) -> int:
        """Parameters of generator, mask net (H; H̄ is its copy and not counted) and prior."""
        ema = {id(p) for p in self.masknet.ema.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in ema and (p.requires_grad or not trainable_only))
