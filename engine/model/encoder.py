"""Multi-scale encoder E and the multi-scale token projection."""
from __future__ import annotations

import torch
from torch import nn

from engine.model.config import ModelConfig
from engine.model.layers import ConvAct, Down, ResBlock


class Encoder(nn.Module):
    """E: four levels at full, 1/2, 1/4 and 1/8 resolution."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c = cfg.enc_channels
        self.stem = ConvAct(3, c[0])
        self.down = nn.ModuleList([Down(c[0], c[1]), Down(c[1], c[2]), nn.Sequential(Down(c[2], c[3]), ResBlock(c[3]))])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x * 2.0 - 1.0)]
        for stage in self.down:
            feats.append(stage(feats[-1]))
        return feats


class TokenProjection(nn.Module):
    """Turns chosen encoder levels into token "frames" on the 1/8 grid, each projected to the token width.

    Level ``l`` (resolution 1/2^l) is brought to 1/8 by a strided convolution with kernel = stride
    = 2^(3-l); each frame also gets a learned scale embedding. Output: (B, S, D, h, w).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.levels = cfg.frames
        self.proj = nn.ModuleList()
        for level in self.levels:
            k = 2 ** (3 - level)
            self.proj.append(nn.Conv2d(cfg.enc_channels[level], cfg.token_dim, k, k))
        self.scale_embed = nn.Parameter(torch.zeros(len(self.levels), cfg.token_dim, 1, 1))
        nn.init.trunc_normal_(self.scale_embed, std=0.02)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        frames = [p(feats[lvl]) + self.scale_embed[i] for i, (lvl, p) in enumerate(zip(self.levels, self.proj))]
        return torch.stack(frames, dim=1)
