"""Give weights a tone hold that reads a footprint mask net of its own (ModelConfig.hold_net).

    python -m engine.training.graft WEIGHTS --hold-from DONOR --out OUT

OUT is WEIGHTS with DONOR's mask net (its H̄) as ``hold_masknet`` and DONOR's mask calibration
(``mask_tophat_mm``, ``mask_floor``, ``mask_gain``, ``mask_dilate_mm``) as the hold's reading
(``hold_tophat_mm``, ``hold_floor``, ``hold_gain``, ``hold_dilate_mm``): the hold then reads, on
WEIGHTS' own reconstruction, what DONOR shows as its mask. A DONOR that has a hold net itself gives
that one, with its reading (so grafting from shipped weights always hands on what their hold
reads). WEIGHTS' fill, mask net and mask calibration are left as they are; with
``--mask-with-hold`` the mask shown and filled is, pixel by pixel, the stronger of WEIGHTS' and the
hold net's (ModelConfig.mask_with_hold).

Why: a mask net trained to estimate the blend weight (``--iou-form minmax``) is faint over a spot's
dark halo, and the tone hold under a brush, reading it, counts the halo as clean skin and holds the
brushed spots darker (model card, twenty-fourth session). The footprint net of the shipped stage-7
weights marks the halo; read by the hold of later fills it kept their brushed spots as light as the
shipped weights keep theirs (twenty-fifth session).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from engine.errors import WeightsError
from engine.model import load_model, save_model
from engine.model.retouchformer import RetouchFormer


def graft(weights: str | Path, donor: str | Path, mask_with_hold: bool = False) -> RetouchFormer:
    """``weights`` with ``donor``'s H̄ as the tone hold's own mask net, read through ``donor``'s
    calibration; with ``mask_with_hold`` the mask shown and filled also takes that net's reading
    where it is the stronger (ModelConfig.mask_with_hold)."""
    base, giver = load_model(weights), load_model(donor)
    if base.config.mask_channels != giver.config.mask_channels:
        raise WeightsError(f"{Path(donor).name}'s mask net ({giver.config.mask_channels}) is not the shape {Path(weights).name} can hold ({base.config.mask_channels}).")
    g = giver.config
    if g.hold_net:  # what the donor's own hold reads
        net, reading = giver.hold_masknet, (g.hold_tophat_mm, g.hold_floor, g.hold_gain, g.hold_dilate_mm)
        source = f"the hold net of {Path(donor).name}, read as it reads it"
    else:  # the donor's mask as it shows it
        net, reading = giver.masknet.ema, (g.mask_tophat_mm, g.mask_floor, g.mask_gain, g.mask_dilate_mm)
        source = f"the mask net (H̄) of {Path(donor).name}, read through its calibration"
    cfg = dataclasses.replace(base.config, hold_net=True, mask_with_hold=mask_with_hold, **dict(zip(("hold_tophat_mm", "hold_floor", "hold_gain", "hold_dilate_mm"), reading)))
    model = RetouchFormer(cfg)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("hold_masknet.") for k in missing), (missing, unexpected)
    model.hold_masknet.load_state_dict(net.state_dict())
    model.checkpoint_info = {**getattr(base, "checkpoint_info", {}), "hold_net": source + (", and shown with H̄'s mask where it is the stronger" if mask_with_hold else "")}
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.training.graft", description=__doc__.split("\n")[0])
    ap.add_argument("weights", type=Path, help="the weights whose fill and mask are kept")
    ap.add_argument("--hold-from", type=Path, required=True, help="the weights whose mask net the tone hold reads (e.g. the shipped resources/models/small.safetensors)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--mask-with-hold", action="store_true", help="the mask shown and filled is the stronger of H̄'s and the hold net's, pixel by pixel (spots H̄ marks faintly are filled in full)")
    args = ap.parse_args(argv)
    if args.out.resolve() in (args.weights.resolve(), args.hold_from.resolve()):
        print("--out must be a new file: the inputs are never overwritten", file=sys.stderr)
        return 2
    try:
        model = graft(args.weights, args.hold_from, args.mask_with_hold)
    except WeightsError as exc:
        print(exc, file=sys.stderr)
        return 1
    save_model(model, args.out, extra=model.checkpoint_info)
    c = model.config
    shown = "; the mask shown and filled takes it where it is the stronger" if c.mask_with_hold else ""
    print(f"{args.out}: the hold reads {args.hold_from.name}'s mask net (top-hat {c.hold_tophat_mm:g} mm, floor {c.hold_floor:g}, gain {c.hold_gain:g}, dilation {c.hold_dilate_mm:g} mm){shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
