"""Model configuration: one dataclass, stored inside every checkpoint."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

Attention = Literal["selective", "global"]
Tokens = Literal["multi", "single"]


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and ablation switches of RetouchFormer.

    ``preset("paper")`` follows the paper (512² input, 512-d tokens, K = 1024, 7 blocks, 8 heads,
    16×16-token windows over 4 scales). ``preset("small")`` is the default that ships: trainable on
    a 2-core CPU in hours and fast at inference.
    """

    name: str = "small"
    image_size: int = 256  # native resolution the model runs at (square)
    enc_channels: tuple[int, ...] = (16, 32, 64, 128)  # full res, 1/2, 1/4, 1/8
    token_levels: tuple[int, ...] = (1, 2, 3)  # encoder levels that become token frames
    token_dim: int = 160
    heads: int = 4
    depth: int = 4
    mlp_ratio: float = 2.0
    window: int = 16  # attention window in tokens (token grid is 1/8 of the image)
    codebook_size: int = 512  # K
    code_dim: int = 64
    commitment: float = 0.25
    mask_channels: tuple[int, ...] = (16, 32, 48, 96)
    dec_channels: tuple[int, ...] = (128, 64, 32, 16)  # 1/8, 1/4, 1/2, full
    disc_channels: tuple[int, ...] = (32, 64, 128)
    ema_decay: float = 0.99
    attention: Attention = "selective"
    tokens: Tokens = "multi"
    prior: bool = True
    # G predicts its correction on top of the classical fill (engine.model.fill); False: on top of
    # the blemished pixels, as in the paper (an ablation). The presets set True; the field's
    # default is False so that checkpoints written before it existed load as they were trained.
    anchor: bool = False
    # Physical scale the model works at: pixels per millimetre of skin (a face about 14 cm wide is
    # about 224 px wide at 1.6). The pipeline brings every face (and the rest of the photo) to it.
    # The presets set 1.6; the default, 1.0, is the scale of checkpoints written before it existed
    # (SCUT-FBP5500 faces at 256 px).
    work_px_per_mm: float = 1.0
    # Calibration of the predicted mask, fitted on validation faces after training
    # (engine.training.calibrate): the broad haze under the peaks (a morphological opening
    # ``mask_tophat_mm`` wide) is taken away, values below ``mask_floor`` are dropped and the
    # rest stretched back to 0..1. 0 switches either off. ``mask_gain`` then multiplies what is
    # left (clipped at 1): a mask net trained to estimate the blemishes' blend weight φ
    # (``retouch train --iou-form minmax``) says 0.2 on a papule's halo, which the fill needs
    # stronger to take the halo away. ``mask_dilate_mm`` last spreads each pixel's strength that
    # far around it (a grey dilation): a blend-weight mask is strongest at a spot's core and fades
    # over its rim, which the fill needs as strong as the core to take the whole spot away.
    mask_tophat_mm: float = 0.0
    mask_floor: float = 0.0
    mask_gain: float = 1.0
    mask_dilate_mm: float = 0.0
    # The tone hold under a brush (engine.model.fill.hold_tone) reads the prediction for where the
    # skin is clean. A mask net trained through the fill (``retouch train --mask-fill``) and
    # calibrated without a top-hat lays a faint haze over a whole cluster of spots, which that
    # reading would take for blemish, and the hold let go of the clean skin under the brush (paler
    # or darker patches). With ``hold_tophat_mm`` > 0 the hold reads the prediction with the haze
    # under its peaks (an opening that many millimetres wide) taken away; 0: as it is. Such a mask
    # is also weaker than a footprint over a spot's dark halo, which the hold then counts as clean
    # skin, and it holds the brushed spots and the skin between them a little darker:
    # ``hold_floor`` drops what is left of the haze below it, ``hold_gain`` multiplies the rest
    # (clipped at 1) and ``hold_dilate_mm`` grows each pixel's strength that far around it, as
    # ``mask_floor``, ``mask_gain`` and ``mask_dilate_mm`` do for the fill (0, 1 and 0: as it is).
    # They change the hold only, never the mask the fill is handed.
    hold_tophat_mm: float = 0.0
    hold_floor: float = 0.0
    hold_gain: float = 1.0
    hold_dilate_mm: float = 0.0
    # With ``hold_net`` the hold reads a mask net of its own (RetouchFormer.hold_masknet, frozen,
    # run on the same [x, x̃] as H̄) instead of H̄'s prediction, through the hold_* settings above.
    # The fill wants a blend weight, which is faint over a spot's dark halo; the hold wants to know
    # where the skin is clean, which a footprint net (trained with the product-form Jaccard term
    # and the full confidence term, as the stage-7 mask net was) marks out to the halo. A footprint
    # net read by the hold kept the brushed spots of later fills as light as the shipped weights
    # keep theirs (model card, twenty-fifth session; ``python -m engine.training.graft``).
    hold_net: bool = False
    # With ``mask_with_hold`` (a hold net needed) the mask the fill is handed and the program shows
    # is, pixel by pixel, the stronger of H̄'s calibrated prediction and the hold net's reading: a
    # mask net trained as a blend weight is faint over spots the footprint net marks in full, and
    # with no brush those spots stay half filled (model card, twenty-sixth session). Off: H̄'s alone.
    mask_with_hold: bool = False
    # With ``anchor``: G may change the anchor's texture and edges but not the local colour of the
    # fill: the part of its correction below this scale (a Gaussian this many millimetres wide) is
    # taken away, so a filled spot keeps the colour of the skin around it (no paler or yellower
    # patches from a learned skin tone). 0: off (checkpoints written before it existed).
    colour_lock_mm: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    TOKEN_STRIDE = 8  # the token grid is 1/8 of the image
    #: Fields that change what the model computes but none of its parameters: a training run
    #: resumes with them changed, and calibration sets them after training.
    SETTINGS = ("mask_tophat_mm", "mask_floor", "mask_gain", "mask_dilate_mm", "hold_tophat_mm", "hold_floor", "hold_gain", "hold_dilate_mm", "mask_with_hold", "colour_lock_mm")

    def structure(self) -> dict[str, Any]:
        """The configuration without :data:`SETTINGS`: what the parameters depend on."""
        return {k: v for k, v in self.to_dict().items() if k not in self.SETTINGS}

    def __post_init__(self) -> None:
        if self.attention not in ("selective", "global"):
            raise ValueError(f"attention must be 'selective' or 'global', not {self.attention!r}")
        if self.tokens not in ("multi", "single"):
            raise ValueError(f"tokens must be 'multi' or 'single', not {self.tokens!r}")
        if self.token_dim % self.heads:
            raise ValueError("token_dim must be divisible by heads")
        if len(self.enc_channels) != 4 or len(self.dec_channels) != 4:
            raise ValueError("enc_channels and dec_channels need 4 levels (1, 1/2, 1/4, 1/8)")
        if self.image_size % (self.TOKEN_STRIDE * 2):
            raise ValueError("image_size must be a multiple of 16")
        if not self.work_px_per_mm > 0:
            raise ValueError("work_px_per_mm must be positive")
        for part in ("mask", "hold"):  # the fill's calibration and the tone hold's reading: the same four settings
            tophat, floor, gain, dilate = (getattr(self, f"{part}_{k}") for k in ("tophat_mm", "floor", "gain", "dilate_mm"))
            if not tophat >= 0.0:
                raise ValueError(f"{part}_tophat_mm must not be negative")
            if not 0.0 <= floor < 1.0:
                raise ValueError(f"{part}_floor must be in [0, 1)")
            if not gain >= 1.0:
                raise ValueError(f"{part}_gain must be at least 1")
            if not dilate >= 0.0:
                raise ValueError(f"{part}_dilate_mm must not be negative")
        if self.mask_with_hold and not self.hold_net:
            raise ValueError("mask_with_hold needs a hold net (hold_net: python -m engine.training.graft)")
        if not self.colour_lock_mm >= 0.0:
            raise ValueError("colour_lock_mm must not be negative")

    @property
    def frames(self) -> tuple[int, ...]:
        """Encoder levels used as token frames (single-scale ablation keeps only the deepest)."""
        return self.token_levels if self.tokens == "multi" else (3,)

    @staticmethod
    def preset(name: str, **overrides: Any) -> "ModelConfig":
        current = dict(anchor=True, work_px_per_mm=1.6, colour_lock_mm=4.0)
        presets: dict[str, dict[str, Any]] = {
            "small": dict(current),
            "paper": dict(
                current,
                name="paper",
                image_size=512,
                enc_channels=(64, 128, 256, 512),
                token_levels=(0, 1, 2, 3),
                token_dim=512,
                heads=8,
                depth=7,
                mlp_ratio=4.0,
                window=16,
                codebook_size=1024,
                code_dim=256,
                mask_channels=(32, 64, 128, 256),
                dec_channels=(512, 256, 128, 64),
                disc_channels=(64, 128, 256),
            ),
            # A tiny model used by fast tests only.
            "tiny": dict(
                current,
                name="tiny",
                image_size=64,
                enc_channels=(8, 12, 16, 24),
                token_dim=32,
                heads=2,
                depth=2,
                window=4,
                codebook_size=32,
                code_dim=16,
                mask_channels=(8, 8, 16, 16),
                dec_channels=(24, 16, 12, 8),
                disc_channels=(8, 16, 16),
                work_px_per_mm=0.5,  # small regions: fast tests
            ),
        }
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        return dataclasses.replace(ModelConfig(), **{**presets[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(ModelConfig)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        values = dict(data)
        for key in ("enc_channels", "token_levels", "mask_channels", "dec_channels", "disc_channels"):
            if key in values:
                values[key] = tuple(values[key])
        return ModelConfig(**values)

    @staticmethod
    def from_json(text: str) -> "ModelConfig":
        return ModelConfig.from_dict(json.loads(text))
