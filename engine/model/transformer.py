"""Transformer T: a stack of selective self-attention blocks (SSAB) over multi-scale token frames."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from engine.model.attention import SelectiveSelfAttention
from engine.model.config import ModelConfig


class SSAB(nn.Module):
    """Selective self-attention followed by a feed-forward layer gated by the same token weights.

    Gating the feed-forward by w keeps the paper's rule that normal-skin tokens pass through:
    f_out = f̂ + w ⊗ FFN(LN(f̂)) (selective) or f̂ + FFN(LN(f̂)) (global ablation).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, selective: bool) -> None:
        super().__init__()
        self.attn = SelectiveSelfAttention(dim, heads, selective)
        hidden = int(dim * mlp_ratio)
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.selective = selective

    def forward(self, tokens: torch.Tensor, weights: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        f = self.attn(tokens, weights, key_padding)
        return f + (self.ffn(f) * weights if self.selective else self.ffn(f))


def _windows(x: torch.Tensor, win: int) -> torch.Tensor:
    """(B, S, C, H, W) with H, W multiples of win -> (B * nW, S * win * win, C)."""
    b, s, c, h, w = x.shape
    x = x.view(b, s, c, h // win, win, w // win, win)
    x = x.permute(0, 3, 5, 1, 4, 6, 2)  # b, nh, nw, s, win, win, c
    return x.reshape(b * (h // win) * (w // win), s * win * win, c)


def _unwindows(t: torch.Tensor, shape: tuple[int, int, int, int, int], win: int) -> torch.Tensor:
    b, s, c, h, w = shape
    t = t.view(b, h // win, w // win, s, win, win, c).permute(0, 3, 6, 1, 4, 2, 5)
    return t.reshape(b, s, c, h, w)


class Transformer(nn.Module):
    """T: ``depth`` SSAB blocks over all frames jointly, within (alternately shifted) spatial windows."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.window = cfg.window
        selective = cfg.attention == "selective"
        self.blocks = nn.ModuleList(SSAB(cfg.token_dim, cfg.heads, cfg.mlp_ratio, selective) for _ in range(cfg.depth))

    def forward(self, frames: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """frames (B, S, D, h, w); weights (B, 1, h, w) in [0, 1]. Returns frames of the same shape."""
        b, s, d, h, w = frames.shape
        win = min(self.window, h, w)
        ph, pw = (-h) % win, (-w) % win
        wts = weights[:, None].expand(b, s, 1, h, w)
        pad = torch.zeros(b, s, 1, h, w, dtype=frames.dtype, device=frames.device)
        if ph or pw:
            frames = F.pad(frames, (0, pw, 0, ph))
            wts = F.pad(wts, (0, pw, 0, ph))
            pad = F.pad(pad, (0, pw, 0, ph), value=1.0)
        shape = tuple(frames.shape)
        for i, block in enumerate(self.blocks):
            shift = win // 2 if (i % 2 and min(shape[-2:]) > win) else 0
            if shift:
                frames, wts, pad = (torch.roll(t, (-shift, -shift), dims=(-2, -1)) for t in (frames, wts, pad))
            tok = block(_windows(frames, win), _windows(wts, win), _windows(pad, win)[..., 0] > 0.5)
            frames = _unwindows(tok, shape, win)
            if shift:
                frames, wts, pad = (torch.roll(t, (shift, shift), dims=(-2, -1)) for t in (frames, wts, pad))
        return frames[..., :h, :w]
