"""Reconstruction decoder R (clean-face prior) and synthesis decoder G."""
from __future__ import annotations

import torch
from torch import nn

from engine.model.config import ModelConfig
from engine.model.fill import TEXTURE_MM, anchor_fill, gaussian_blur
from engine.model.layers import ConvAct, ResBlock, Up, mask_to


class ReconstructionDecoder(nn.Module):
    """R: image x̃ from the quantised 1/8-resolution codes alone (no skips: the prior must do the work)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c = cfg.dec_channels
        self.inp = nn.Sequential(nn.Conv2d(cfg.code_dim, c[0], 3, 1, 1), ResBlock(c[0]))
        self.ups = nn.Sequential(Up(c[0], c[1]), Up(c[1], c[2]), Up(c[2], c[3], residual=False))
        self.out = nn.Conv2d(c[3], 3, 3, 1, 1)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.out(self.ups(self.inp(codes))))


class SynthesisDecoder(nn.Module):
    """G: the retouched image from the transformer's token frames.

    The frames are fused on the 1/8 grid and upsampled; at each finer level the encoder features
    enter as skips gated by (1 − mask) with the mask appended, so normal skin keeps its native
    detail and imperfection regions are synthesised from the selective-attention output.

    With ``config.anchor`` (the default) G predicts a residual on the classical fill of the masked
    region (:func:`engine.model.fill.anchor_fill`), which also enters the last skip, so it learns
    what the fill gets wrong; its output layer starts at zero, so an untrained G returns the
    classical fill. ``config.colour_lock_mm`` keeps the fill's local colour (G adds texture and
    edges only). Without it (the paper's form, an ablation) G predicts a residual on x. The
    returned image is the composite x + m ⊗ (synthesis − x): pixels with mask 0 are exactly x.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c, e = cfg.dec_channels, cfg.enc_channels
        self.fuse = nn.Sequential(nn.Conv2d(len(cfg.frames) * cfg.token_dim, c[0], 1), ResBlock(c[0]))
        self.ups = nn.ModuleList([Up(c[0], c[1]), Up(c[1], c[2]), Up(c[2], c[3], residual=False)])
        self.anchor = cfg.anchor
        self.texture_sigma = TEXTURE_MM * cfg.work_px_per_mm
        self.lock_sigma = cfg.colour_lock_mm * cfg.work_px_per_mm if cfg.anchor else 0.0
        a = 3 if cfg.anchor else 0
        self.skips = nn.ModuleList([ConvAct(e[2] + 1 + c[1], c[1]), ConvAct(e[1] + 1 + c[2], c[2]), ConvAct(e[0] + 1 + c[3] + a, c[3])])
        self.out = nn.Conv2d(c[3], 3, 3, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, frames: torch.Tensor, feats: list[torch.Tensor], x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (composite image, raw synthesis) for frames (B,S,D,h,w), encoder feats, input x, pixel mask."""
        b, s, d, h, w = frames.shape
        y = self.fuse(frames.reshape(b, s * d, h, w))
        base = x
        if self.anchor:
            with torch.no_grad():
                base = anchor_fill(x.float(), mask.float(), self.texture_sigma).to(x.dtype)
        for up, skip, level in zip(self.ups, self.skips, (2, 1, 0)):
            y = up(y)
            f = feats[level]
            m = mask_to(mask, f.shape[-2:])
            parts = [f * (1.0 - m), m, y] + ([base * 2.0 - 1.0] if self.anchor and level == 0 else [])
            y = skip(torch.cat(parts, 1))
        correction = self.out(y)
        if self.lock_sigma > 0:  # the fill's colour stays: only G's detail above that scale is added
            correction = correction - gaussian_blur(correction, self.lock_sigma)
        synth = (base + correction).clamp(0.0, 1.0)
        return x + mask * (synth - x), synth
