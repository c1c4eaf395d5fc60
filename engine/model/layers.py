"""Small building blocks shared by the networks."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def norm(channels: int) -> nn.GroupNorm:
    groups = 8 if channels % 8 == 0 else (4 if channels % 4 == 0 else 1)
    return nn.GroupNorm(groups, channels)


class ConvAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2), norm(cout), nn.SiLU(inplace=True))


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int | None = None) -> None:
        super().__init__()
        cout = cout or cin
        self.body = nn.Sequential(
            norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, 1, 1), norm(cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, 1, 1)
        )
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class Down(nn.Sequential):
    """Strided-conv downsampling by 2 followed by a residual block."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 4, 2, 1), ResBlock(cout))


class Up(nn.Module):
    """Nearest-neighbour upsampling by 2, then a conv and (except at full resolution, where it is
    too costly for CPU training) a residual block."""

    def __init__(self, cin: int, cout: int, residual: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1)
        self.res = ResBlock(cout) if residual else nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res(self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest")))


def mask_to(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bring a (B,1,H,W) soft mask to ``size`` keeping small blemishes visible (max-pooling)."""
    if mask.shape[-2:] == size:
        return mask
    if mask.shape[-2] >= size[0] and mask.shape[-1] >= size[1]:
        return F.adaptive_max_pool2d(mask, size)
    return F.interpolate(mask, size=size, mode="bilinear", align_corners=False)
