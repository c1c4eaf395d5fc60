"""Pixel-level discriminator D with the soft mask injected into several layers."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from engine.model.config import ModelConfig
from engine.model.layers import mask_to


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.utils.spectral_norm(nn.Conv2d(cin + 1, cout, 4 if stride == 2 else 3, stride, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv(torch.cat([x, mask_to(mask, x.shape[-2:])], 1)), 0.2)


class PixelDiscriminator(nn.Module):
    """D(image, mask) -> per-pixel real/fake logits (B, 1, H, W).

    A small encoder-decoder; the mask is concatenated to the input of every encoder and decoder
    layer, so D knows where imperfections were predicted.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c = cfg.disc_channels
        self.enc = nn.ModuleList([_Block(3, c[0], 1), _Block(c[0], c[1], 2), _Block(c[1], c[2], 2)])
        self.dec = nn.ModuleList([_Block(c[2] + c[1], c[1], 1), _Block(c[1] + c[0], c[0], 1)])
        self.out = nn.Conv2d(c[0] + 1, 1, 3, 1, 1)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        feats = []
        x = image * 2.0 - 1.0
        for block in self.enc:
            x = block(x, mask)
            feats.append(x)
        feats.pop()
        for block in self.dec:
            skip = feats.pop()
            x = block(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], 1), mask)
        return self.out(torch.cat([x, mask_to(mask, x.shape[-2:])], 1))
