"""Training losses that do not need a pretrained network.

The paper's perceptual term uses VGG-19 features, which cannot be downloaded here. V(·) below
is a fixed, offline feature space: a 3-level Laplacian pyramid of the image plus the Sobel
gradients of each level. It weighs edges and fine texture (pores, grain) the way a perceptual
loss does, so ||V(y) − V(ŷ)||² penalises smeared skin that a plain L1 tolerates.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.model.fill import gaussian_blur

_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


def _blur_down(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2)


def feature_space(x: torch.Tensor, levels: int = 3) -> list[torch.Tensor]:
    """V(x): Laplacian bands and Sobel gradients at ``levels`` scales (list of tensors)."""
    c = x.shape[1]
    kx = _SOBEL.to(x)[None, None].repeat(c, 1, 1, 1)
    ky = kx.transpose(-1, -2)
    out: list[torch.Tensor] = []
    cur = x
    for _ in range(levels):
        low = _blur_down(cur)
        band = cur - F.interpolate(low, size=cur.shape[-2:], mode="bilinear", align_corners=False)
        out.append(band)
        out.append(F.conv2d(F.pad(cur, (1, 1, 1, 1), mode="replicate"), kx, groups=c))
        out.append(F.conv2d(F.pad(cur, (1, 1, 1, 1), mode="replicate"), ky, groups=c))
        cur = low
    return out


def perceptual(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """||V(a) − V(b)||² averaged over features (optionally weighted per pixel at full scale)."""
    total = a.new_zeros(())
    for fa, fb in zip(feature_space(a), feature_space(b)):
        d = (fa - fb).pow(2)
        if weight is not None:
            d = d * F.interpolate(weight, size=d.shape[-2:], mode="area")
        total = total + d.mean() * 100.0
    return total


def content(y: torch.Tensor, y_hat: torch.Tensor, l1_weight: float) -> torch.Tensor:
    """L_con = w ||y − ŷ||₁ + ||V(y) − V(ŷ)||² (η = ζ = 10 in the paper)."""
    return l1_weight * (y - y_hat).abs().mean() + perceptual(y, y_hat)


def soft_jaccard(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − Σ min-like overlap / Σ union per image (differentiable Soft-IoU), averaged over the batch.

    Blemishes cover a few per cent of a face, so per-pixel BCE alone is dominated by clean skin
    and yields timid masks; this term scores the mask as the evaluation does (Soft-IoU).
    """
    inter = (prob * target).flatten(1).sum(1)
    union = (prob + target - prob * target).flatten(1).sum(1)
    return (1.0 - (inter + 1.0) / (union + 1.0)).mean()


def soft_iou_minmax(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − Σ min(p, φ) / Σ max(p, φ) per image (the evaluation's Soft-IoU itself), averaged over the batch.

    Its optimum is the target: where the mask says more than φ only the union grows, where it says
    less only the intersection is missing. The product form (:func:`soft_jaccard`) rewards saying 1
    wherever φ > 0 while the overlap is low, so with it (and the binary confidence term) the mask
    learns the blemishes' footprint, whose Soft-IoU against a soft φ is at most about 0.3.
    """
    inter = torch.minimum(prob, target).flatten(1).sum(1)
    union = torch.maximum(prob, target).flatten(1).sum(1)
    return (1.0 - (inter + 1.0) / (union + 1.0)).mean()


def masked_l1(out: torch.Tensor, ref: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Mean |out − ref| over the pixels of ``region`` (B, 1, H, W weights), all channels."""
    return ((out - ref).abs() * region).sum() / (out.shape[1] * region.sum()).clamp_min(1.0)


def _local_mean(img: torch.Tensor, region: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The local mean of ``img`` over ``region`` pixels only (a Gaussian of ``sigma`` pixels, normalised
    convolution), and the region's Gaussian weight there."""
    den = gaussian_blur(region, sigma)
    return gaussian_blur(img * region, sigma) / den.clamp_min(1e-3), den


def tone_shift(out: torch.Tensor, ref: torch.Tensor, region: torch.Tensor, sigma: float) -> torch.Tensor:
    """Mean |local mean of (out − ref)| over ``region``, the local mean a Gaussian of ``sigma``
    pixels taken over region pixels only (normalised convolution).

    It sees a shift of tone or colour (a pale or dark patch) but not texture: grain, pores and small
    spots inside the region may change freely, and nothing outside the region (a spot removed next
    to it) enters the mean.
    """
    shift, den = _local_mean(out - ref, region, sigma)
    where = region * (den > 0.2).float()
    return (shift.abs() * where).sum() / (out.shape[1] * where.sum()).clamp_min(1.0)


TONE_REACH = 0.2  # spot_tone's default: the least share of the skin's Gaussian weight near a spot for it to count


def spot_tone(out: torch.Tensor, ref: torch.Tensor, spots: torch.Tensor, skin: torch.Tensor, spot_sigma: float, skin_sigma: float, limit: float = 0.2, reach: float = TONE_REACH) -> torch.Tensor:
    """Mean |local mean of ``out`` over ``spots`` − local mean of ``ref`` over ``skin``| on the spots
    (each local mean a normalised Gaussian convolution, of ``spot_sigma`` and ``skin_sigma`` pixels).

    A healed spot takes the tone of the clean skin around it: a fill that keeps part of a brown
    spot's darkness (a smudge) or leaves it paler than the skin pays, its texture below
    ``spot_sigma`` does not. Spots with little skin near them (less than ``reach`` of the Gaussian's
    weight: a fifth by default) do not count, nor do "spots" that in ``ref`` differ from that skin by
    more than ``limit`` in a channel (a nostril, an eye, hair or a black border a mask marked: no
    blemish to heal). Inside a dense cluster under a hazy mask the clean skin is a few rims between
    the spots, far below a fifth of the weight: a lower ``reach`` takes their tone there too.
    """
    tone, den = _local_mean(ref, skin, skin_sigma)
    blemish = ((_local_mean(ref, spots, spot_sigma)[0] - tone).abs().amax(1, keepdim=True) < limit).float()
    where = spots * (den > reach).float() * blemish
    return ((_local_mean(out, spots, spot_sigma)[0] - tone).abs() * where).sum() / (out.shape[1] * where.sum()).clamp_min(1.0)


def soft_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target)


def adversarial_d(real_logits: torch.Tensor, real_target: torch.Tensor, fake_logits: torch.Tensor, fake_target: torch.Tensor) -> torch.Tensor:
    """Pixel-level discriminator loss: per-pixel targets (1 = real skin, 0 = fake/blemish pixels)."""
    return soft_bce(real_logits, real_target) + soft_bce(fake_logits, fake_target)


def adversarial_g(fake_logits: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss on the synthesised region: make D call those pixels real."""
    per_pixel = F.softplus(-fake_logits)
    return (per_pixel * region).sum() / region.sum().clamp_min(1.0)
