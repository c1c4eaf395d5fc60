"""Selective self-attention (the paper's SSAB core) and its global-attention ablation."""
from __future__ import annotations

import math

import torch
from torch import nn


class SelectiveSelfAttention(nn.Module):
    """Imperfection tokens ask, normal-skin tokens answer.

    With pre-normalised tokens n = LN(f) and token weights w = f_H in [0, 1]::

        Q  = W_q (n ⊗ w)       + b_q
        K  = W_k (n ⊗ (1 − w)) + b_k
        V  = W_v (n ⊗ (1 − w)) + b_v
        Δf = W_o softmax(Q Kᵀ / √d) V           (multi-head)
        f̂  = f ⊗ (1 − w) + Δf ⊗ w

    Tokens of weight 0 pass through unchanged; a token of weight 1 contributes nothing but biases
    to the keys and values, so its own features affect only its own output.

    ``selective=False`` gives the paper's "global attention" ablation: ordinary self-attention on
    every token with a residual connection, ignoring the weights.
    """

    def __init__(self, dim: int, heads: int, selective: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError("dim must be divisible by heads")
        self.dim, self.heads, self.selective = dim, heads, selective
        self.norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.dim // self.heads).transpose(1, 2)

    def forward(
        self, tokens: torch.Tensor, weights: torch.Tensor | None = None, key_padding: torch.Tensor | None = None
    ) -> torch.Tensor:
        """tokens (B,N,D), weights (B,N,1) in [0,1]; key_padding (B,N) True where a token is padding."""
        n = self.norm(tokens)
        if self.selective:
            if weights is None:
                raise ValueError("selective attention needs token weights")
            q_in, kv_in = n * weights, n * (1.0 - weights)
        else:
            q_in = kv_in = n
        q, k, v = self._split(self.q(q_in)), self._split(self.k(kv_in)), self._split(self.v(kv_in))
        attn_mask = None
        if key_padding is not None:
            attn_mask = torch.zeros(key_padding.shape, dtype=q.dtype, device=q.device)
            attn_mask = attn_mask.masked_fill(key_padding, float("-inf"))[:, None, None, :]
        delta = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=1.0 / math.sqrt(q.shape[-1]))
        delta = self.out(delta.transpose(1, 2).reshape(tokens.shape))
        if self.selective:
            return tokens * (1.0 - weights) + delta * weights
        return tokens + delta
