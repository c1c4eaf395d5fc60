"""Soft-mask U-Net H on [x, x̃], and its EMA twin H̄."""
from __future__ import annotations

import copy

import torch
from torch import nn

from engine.model.config import ModelConfig
from engine.model.layers import ConvAct, Down, Up


class MaskUNet(nn.Module):
    """H(x, x̃) -> per-pixel imperfection logits (B, 1, H, W)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c = cfg.mask_channels
        self.stem = ConvAct(6, c[0])
        self.downs = nn.ModuleList([Down(c[0], c[1]), Down(c[1], c[2]), Down(c[2], c[3])])
        self.ups = nn.ModuleList([Up(c[3], c[2]), Up(c[2], c[1]), Up(c[1], c[0], residual=False)])
        self.merge = nn.ModuleList([ConvAct(2 * c[2], c[2]), ConvAct(2 * c[1], c[1]), ConvAct(2 * c[0], c[0])])
        self.out = nn.Conv2d(c[0], 1, 3, 1, 1)
        nn.init.constant_(self.out.bias, -3.0)  # start near "no imperfection"

    def forward(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(torch.cat([x, recon], 1) * 2.0 - 1.0)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up, merge in zip(self.ups, self.merge):
            y = merge(torch.cat([up(y), skips.pop()], 1))
        return self.out(y)


class TwoStreamMask(nn.Module):
    """H (trained by gradients) and H̄ (its exponential moving average, used at inference)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.online = MaskUNet(cfg)
        self.ema = copy.deepcopy(self.online)
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay = cfg.ema_decay

    @torch.no_grad()
    def ema_update(self, decay: float | None = None) -> None:
        """θ_H̄ ← μ θ_H̄ + (1 − μ) θ_H (buffers are copied)."""
        mu = self.decay if decay is None else decay
        for p_ema, p in zip(self.ema.parameters(), self.online.parameters()):
            p_ema.mul_(mu).add_(p.detach(), alpha=1.0 - mu)
        for b_ema, b in zip(self.ema.buffers(), self.online.buffers()):
            b_ema.copy_(b)
