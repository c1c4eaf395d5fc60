"""Feature dictionary P: nearest-neighbour vector quantisation (VQ-VAE style)."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
import torch.nn.functional as F


class Quantized(NamedTuple):
    quantized: torch.Tensor  # straight-through: forward = nearest code, gradient flows to the input
    indices: torch.Tensor  # (B, H, W) code index
    loss: torch.Tensor  # codebook term + commitment * commitment term (L_prior)


class VectorQuantizer(nn.Module):
    """P = {ρ_1..ρ_K}; ρ* = argmin_k ||z(i,j) − ρ_k||².

    Encoder vectors and dictionary elements are L2-normalised before the search (as in
    ViT-VQGAN): with unbounded features the commitment term of a small CPU-trained model blows up
    in the first hundred steps, and on the unit sphere every element stays in use.
    """

    def __init__(self, num_codes: int, dim: int, commitment: float = 0.25) -> None:
        super().__init__()
        self.codebook = nn.Embedding(num_codes, dim)
        nn.init.normal_(self.codebook.weight)
        self.commitment = commitment

    def codes(self) -> torch.Tensor:
        """The dictionary, each element on the unit sphere."""
        return F.normalize(self.codebook.weight, dim=1)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Indices of the nearest dictionary elements for (unit-normalised) z (B, C, H, W)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        codes = self.codes()
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codes.t() + codes.pow(2).sum(1)[None]
        return dist.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])

    def forward(self, z: torch.Tensor) -> Quantized:
        with torch.autocast(z.device.type, enabled=False):  # the nearest-code search in float32, also under AMP
            z = F.normalize(z.float(), dim=1)
            idx = self.nearest(z)
            q = F.embedding(idx, self.codes()).permute(0, 3, 1, 2)
            loss = F.mse_loss(q, z.detach()) + self.commitment * F.mse_loss(z, q.detach())
            q_st = z + (q - z).detach()
        return Quantized(q_st, idx, loss)
