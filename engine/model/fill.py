"""The classical fill that the synthesis decoder G is anchored on.

A photographer's healing tools replace a blemish with the colour of the skin around it and keep
the skin's texture (frequency separation: heal the low frequencies, keep or carry over the high
ones). :func:`anchor_fill` does the same, differentiably and in a few milliseconds:

1. The photo is split into a low band (Gaussian blur of ``sigma`` px) and the texture above it.
2. The low band inside the mask is filled from the surrounding skin by *push-pull* (normalised
   convolution on an image pyramid): every level averages the known pixels (weight ``(1 - mask)^8``:
   blemish pixels count for little or nothing; pixels of a colour no skin has, such as a white
   collar, black hair or the white of an eye, count for nothing unless the image holds next to no
   skin: :func:`source_weight`), and the fill is read from the finest level that knows enough, so small
   spots take the colour right around them and large patches a smooth blend.
3. The texture is kept where it looks like the surrounding skin and turned down where it is
   stronger than the skin's own grain (the blemish's rim, a pustule's head): its local energy is
   compared with the grain energy filled in from the surroundings the same way.

G then predicts a correction *on top of* this fill (zero-initialised, so an untrained network
returns the classical fill) and learns what the fill gets wrong: texture, soft edges, highlights.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from engine.skin import foreign_colour_t

__all__ = ["anchor_fill", "anchor_fill_np", "border_match", "hold_reach", "hold_tone", "hold_tone_np", "push_pull", "known_weight", "source_weight", "gaussian_blur", "TEXTURE_MM", "REACH_MM", "TONE_MM"]

_EPS = 1e-6
#: Scale (mm of skin) below which the photo's detail counts as texture: pores, fine grain.
TEXTURE_MM = 0.625
#: Farthest a fill fetches colour from (mm of skin): a brushed patch 2-3 cm across still fills
#: from its border, a hazy mask over a whole cheek never pulls in hair or background.
REACH_MM = 12.0
#: Scale (mm of skin) of the tone that clean skin under a brush keeps (:func:`hold_tone`): above
#: the size of a spot, below that of a cheek's shading. 2 mm scored as well on synthetic faces but
#: kept a dark spot the mask net missed as a grey blot on a real photo (acne04_0029); 6 mm was worse.
TONE_MM = 4.0
#: Local contrast (RGB, against the photo's own tone at :data:`TONE_MM`) at which a pixel counts
#: e^-1 as much in the tone under a brush: a spot the mask net missed (0.1 off the skin around it,
#: some 10 L*) counts a fifth, a stronger one almost nothing, skin grain and pores nearly fully.
#: 0.08 rather than 0.04 (which counted a pixel 8 levels off only half) lets more of the grain
#: count: synthetic faces under a brush +0.25 dB over the whole photo (39 of 40 faces), real photos
#: 0.17 L* against 0.22 in absolute value; 0.12-0.16 added 0.04-0.05 dB more, inside the noise,
#: and let a missed spot count for more; 0.06 was between (model card, sixteenth session).
TONE_CONTRAST = 0.08
#: Share of clean skin (weighted) within the tone's window from which the tone is trusted fully; a
#: brush over one spot and a hair of skin around it changes nothing.
TONE_FULL = 0.05
#: The hold is for the skin between spots the mask net found (mask above :data:`TONE_SPOT`): it
#: applies fully where spots cover this share of the tone's window (one 2-mm spot: within about
#: 4 mm of it) and fades out beyond. A brush over skin with no spot found in it (an under-eye
#: circle, a flush) still replaces its tone with the skin's around it: that is what it is for.
TONE_NEAR = 0.02
TONE_SPOT = 0.15
#: Further from any spot found, the hold still applies where the photo's clean tone under the brush
#: (at :data:`TONE_MM`) lies near the tone of the skin around the brush (the classical fill's
#: colour): within this (RGB, the largest channel's difference) it counts e^-1, at half of it
#: about four fifths. That skin is clean, and the fill alone leaves it paler (G's own tone: on 40
#: synthetic faces under a broad brush, far from the spots found, +0.58 L* as the fill comes, +0.50
#: with the hold near them only, -0.08 with this); a flush or an under-eye circle, off the skin
#: around it, is still evened out. In a first form of the match, 0.04 left +0.18 there, 0.06 -0.04
#: and 0.08 -0.22 (model card, twenty-eighth session). The cost: a brush laid exactly over a faint
#: broad blemish the mask net missed keeps part of its tone (0.2 dB in the blemishes, 0.04: 0.15).
TONE_MATCH = 0.06
#: Share of an image's pixels that must have a skin's colour for a fill to take its colour from
#: them only (:func:`source_weight`); below it (no skin at all, a cast no rule takes), every pixel.
SKIN_PRESENT = 0.05


def known_weight(mask: torch.Tensor) -> torch.Tensor:
    """How much a pixel's own colour can be trusted: 1 on clean skin, falling fast inside the mask.

    ``(1 - mask) ** 8``: a blemish's faint halo (mask 0.1-0.3) must count little, or its colour
    leaks into the fill (measured on synthetic blemishes at the working scale: the fourth power
    gave +0.6 dB in the blemishes but a larger colour error, CIEDE2000 5.17 against 5.07; the
    16th power was worse on both).
    """
    m = (1.0 - mask).clamp(0.0, 1.0).square()
    m = m.square()
    return m.square()


def source_weight(x: torch.Tensor) -> torch.Tensor:
    """Which pixels of ``x`` (B, 3, H, W) a fill may take colour from: (B, 1, H, W) in [0, 1].

    0 on colours no skin has (:func:`engine.skin.foreign_colour_t`: a white collar or shirt under
    the jaw, dark hair, the white of an eye, a grey wall), 1 elsewhere; in an image with next to no
    skin (:data:`SKIN_PRESENT`) every pixel counts, as without this weight.
    """
    skin = (~foreign_colour_t(x)).to(x.dtype)
    present = (skin.mean((-2, -1), keepdim=True) / SKIN_PRESENT).clamp(0.0, 1.0)
    return skin + (1.0 - skin) * (1.0 - present)


def _kernel(sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    r = max(1, int(np.ceil(3.0 * sigma)))
    t = torch.arange(-r, r + 1, device=device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with reflected borders."""
    if sigma <= 0:
        return x
    c = x.shape[1]
    k = _kernel(sigma, x.device, x.dtype)
    r = (k.numel() - 1) // 2
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    y = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(y, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def push_pull(values: torch.Tensor, weight: torch.Tensor, reach: float | None = None, own: torch.Tensor | None = None) -> torch.Tensor:
    """Fill (B, C, H, W) ``values`` where ``weight`` (B, 1, H, W) in [0, 1] is low from where it is high.

    Push: a pyramid of weighted sums (2x2 averages), ``reach`` pixels deep at most (None: to a
    single pixel). Pull: from the coarsest level down, each level's normalised average is used
    as far as that level knows enough (its mean weight, doubled, capped at 1), the upsampled
    coarser result elsewhere. Where even the coarsest level knows nothing, the values keep their
    own average there, weighted by ``own`` (B, 1, H, W; None: unweighted): a fill never fetches
    colour from further than ``reach`` (across the face, from hair or background). Where the
    weight is 1 the value is unchanged.
    """
    levels = 64 if reach is None else max(1, int(np.ceil(np.log2(max(2.0, reach)))))
    o = torch.ones_like(weight) if own is None else own
    pyramid = [(values * weight, weight, values * o, o, values)]
    while min(pyramid[-1][1].shape[-2:]) > 1 and len(pyramid) <= levels:
        pyramid.append(tuple(F.avg_pool2d(t, 2, ceil_mode=True) for t in pyramid[-1]))
    c, w, vo, o, v = pyramid[-1]
    a = (2.0 * w).clamp(0.0, 1.0)
    # too little known even here: its own average (where ``own`` is 0 throughout, the plain one)
    mean = torch.where(o > _EPS, vo / o.clamp_min(_EPS), v)
    out = a * (c / w.clamp_min(_EPS)) + (1.0 - a) * mean
    for c, w, *_ in reversed(pyramid[:-1]):
        up = F.interpolate(out, size=c.shape[-2:], mode="bilinear", align_corners=False)
        a = (2.0 * w).clamp(0.0, 1.0)
        out = a * (c / w.clamp_min(_EPS)) + (1.0 - a) * up
    return torch.where(weight >= 1.0, values, out)


def anchor_fill(x: torch.Tensor, mask: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """The classical fill of ``x`` (B, 3, H, W) in [0, 1] under ``mask`` (B, 1, H, W) in [0, 1].

    Returns the filled image everywhere (the caller blends it in through the mask). ``sigma`` is
    the texture scale in pixels (:data:`TEXTURE_MM` at the image's scale: 1 px at 1.6 px/mm);
    colour is fetched from at most :data:`REACH_MM` away.
    """
    reach = REACH_MM / TEXTURE_MM * sigma
    src = source_weight(x)
    w = known_weight(mask) * src
    low = gaussian_blur(x, sigma)
    texture = x - low
    low_fill = push_pull(low, w, reach, own=src)
    energy = gaussian_blur(texture.square().mean(1, keepdim=True), 2.0 * sigma)
    grain = push_pull(energy, w, reach, own=src)
    gain = ((grain + 1e-6) / (energy + 1e-6)).sqrt().clamp(max=1.0)
    return (low_fill + gain * texture).clamp(0.0, 1.0)


def hold_reach(pred: torch.Tensor, sigma: float) -> torch.Tensor:
    """Where :func:`hold_tone` applies for the spots found, 0..1 (B, 1, H, W): in full near the
    spots ``pred`` found (above :data:`TONE_SPOT`, covering :data:`TONE_NEAR` of the Gaussian window
    of ``sigma`` px), fading to 0 further out, where a brush over skin with no spot found in it is
    left to even the skin out unless its tone matches the skin's around the brush
    (:func:`border_match`)."""
    return (gaussian_blur((pred.float() > TONE_SPOT).float(), sigma) / TONE_NEAR).clamp(0.0, 1.0)


def border_match(x: torch.Tensor, tone: torch.Tensor, mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """Where ``tone`` (B, 3, H, W), the photo's clean tone under a brushed ``mask`` at ``sigma`` px,
    matches the tone of the skin around the brush, 0..1 (B, 1, H, W): 1 where they agree, e^-1 at
    :data:`TONE_MATCH` apart. The skin around the brush is the photo pulled in from outside the
    mask, from skin only (:func:`push_pull`, :func:`source_weight`, as the classical fill takes
    its colour, but from however far the brush's border is), at the same scale (Gaussian of
    ``sigma``, taken after the pull, so the border does not carry the brushed skin's tone in)."""
    src = source_weight(x)
    around = gaussian_blur(push_pull(x, known_weight(mask) * src, None, own=src), sigma)
    off = (tone - around).abs().amax(1, keepdim=True)
    return torch.exp(-((off / TONE_MATCH) ** 2))


def hold_tone(x: torch.Tensor, synth: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor, sigma: float, keep: torch.Tensor | None = None) -> torch.Tensor:
    """``synth`` (B, 3, H, W), a fill of ``x`` under a brushed ``mask``, with the tone of the clean
    skin under the brush put back: the tone is the photo's where the mask net sees clean skin.

    A photographer brushes over a whole cluster of spots, and the brush covers clean skin between
    them. The fill takes its colour from the brush's border (the anchor's push-pull, which G keeps
    under the colour lock), so a broad brush over skin that is redder, darker or paler than its
    border leaves a patch of the border's tone (on twelve real acne photos 1.1 L* on average in
    absolute value, up to 2.2 L* paler: tests/bench/brush_lightness.py). Here the difference
    between photo and fill is averaged (Gaussian of ``sigma`` px: :data:`TONE_MM`) over the
    brushed pixels that ``pred``, the mask net's own prediction, calls clean and that are no local
    outliers of the photo (:data:`TONE_CONTRAST`), and added back near the spots ``pred`` found
    (:data:`TONE_NEAR`): the tone above that scale is the photo's, the spots below it are still
    filled. Where the brush covers little clean skin (:data:`TONE_FULL`), the fill stays as it is;
    so it does where no spot was found nearby and the photo's tone there is off the skin's around
    the brush (:func:`border_match`: a flush, a shadow the brush is meant to even out), while
    clean skin that matches it keeps the photo's tone there too (the fill alone would leave it
    paler). ``keep`` (B, 1, H, W) in [0, 1], when given, scales the hold
    pixel by pixel: the program passes 0 below the eyes (:func:`engine.features.under_eyes`), where
    a brush is meant to take a dark circle's tone away and spots at the lash line would otherwise
    keep it.
    """
    x, synth = x.float(), synth.float()
    d = x - synth
    local = (x - gaussian_blur(x, sigma)).abs().amax(1, keepdim=True)
    w = mask.float() * known_weight(pred.float()) * torch.exp(-((local / TONE_CONTRAST) ** 2))
    num, den = gaussian_blur(d * w, sigma), gaussian_blur(w, sigma)
    tone = gaussian_blur(x * w, sigma) / den.clamp_min(_EPS)  # the photo's clean tone under the brush
    near = torch.maximum(hold_reach(pred, sigma), border_match(x, tone, mask.float(), sigma))
    if keep is not None:
        near = near * keep.float()
    shift = num / den.clamp_min(_EPS) * (den / TONE_FULL).clamp(0.0, 1.0) * near
    return (synth + shift).clamp(0.0, 1.0)


def _nchw(a: np.ndarray) -> torch.Tensor:
    """A float32 HxWx3 image or HxW mask as a (1, C, H, W) tensor (the NumPy wrappers below)."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return t.permute(2, 0, 1)[None] if t.ndim == 3 else t[None, None]


def hold_tone_np(image: np.ndarray, synth: np.ndarray, mask: np.ndarray, pred: np.ndarray, sigma: float, keep: np.ndarray | None = None) -> np.ndarray:
    """:func:`hold_tone` for float32 HxWx3 ``image`` and ``synth`` and HxW masks (NumPy in and out)."""
    with torch.inference_mode():
        y = hold_tone(_nchw(image), _nchw(synth), _nchw(mask), _nchw(pred), sigma, None if keep is None else _nchw(keep))
    return y[0].permute(1, 2, 0).numpy().copy()


def anchor_fill_np(image: np.ndarray, mask: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """:func:`anchor_fill` for one float32 HxWx3 image in [0, 1] and an HxW mask (NumPy in, NumPy out)."""
    with torch.inference_mode():
        y = anchor_fill(_nchw(image), _nchw(mask), sigma)
    return y[0].permute(1, 2, 0).numpy().copy()
