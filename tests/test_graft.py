"""`python -m engine.training.graft`: a tone hold that reads a footprint mask net of its own."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.model import ModelConfig, RetouchFormer, load_model, save_model
from engine.training.graft import main as graft_main


@pytest.fixture(scope="module")
def donor(tmp_path_factory) -> Path:
    """Tiny weights of their own (another mask net) with a mask calibration the hold should take."""
    torch.manual_seed(7)
    model = RetouchFormer(ModelConfig.preset("tiny", mask_tophat_mm=4.0, mask_gain=1.5))
    with torch.no_grad():  # a mask net that finds more than the fresh one's "no imperfection"
        model.masknet.ema.out.bias.fill_(-0.5)
    path = tmp_path_factory.mktemp("donor") / "donor.safetensors"
    save_model(model, path)
    return path


def _grafted(tiny_weights: str, donor: Path, tmp_path: Path) -> Path:
    tmp_path.mkdir(exist_ok=True)
    out = tmp_path / "grafted.safetensors"
    assert graft_main([tiny_weights, "--hold-from", str(donor), "--out", str(out)]) == 0
    return out


def test_graft_keeps_the_weights_and_adds_the_donors_mask_net_for_the_hold(tiny_weights, donor, tmp_path) -> None:
    base, giver = load_model(tiny_weights), load_model(donor)
    g = load_model(_grafted(tiny_weights, donor, tmp_path))
    c = g.config
    assert c.hold_net and (c.hold_tophat_mm, c.hold_floor, c.hold_gain, c.hold_dilate_mm) == (4.0, 0.0, 1.5, 0.0)
    assert (c.mask_tophat_mm, c.mask_gain) == (base.config.mask_tophat_mm, base.config.mask_gain)  # the fill's mask as it was
    own = g.state_dict()
    for name, t in base.state_dict().items():
        assert torch.equal(own[name], t), name
    for name, t in giver.masknet.ema.state_dict().items():
        assert torch.equal(own["hold_masknet." + name], t), name
    assert not any(p.requires_grad for p in g.hold_masknet.parameters())  # grafted, never trained
    again = load_model(_grafted(tiny_weights, _grafted(tiny_weights, donor, tmp_path), tmp_path / "twice"))  # from grafted weights:
    assert again.config == c and all(torch.equal(t, own[k]) for k, t in again.state_dict().items())  # what their hold reads
    assert "mask net (H̄) of donor" in g.checkpoint_info["hold_net"] and "hold net of grafted" in again.checkpoint_info["hold_net"]
    assert not g.reads_tone_as_is()
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        enc = g.encode(x)
        want = giver.calibrate(torch.sigmoid(giver.masknet.ema(x, enc.recon)))  # the donor's net through the donor's calibration
        assert torch.allclose(enc.hold, want, atol=1e-6) and (want - enc.mask).abs().max() > 0.05
        assert torch.allclose(g.hold_reading(x, enc.recon, enc.mask), enc.hold)
        assert torch.equal(enc.mask, base.encode(x).mask)
        assert base.encode(x).hold is None and torch.equal(base.hold_reading(x, enc.recon, enc.mask), base.tone_reading(enc.mask))


def test_the_retouchers_tone_hold_reads_the_hold_net(tiny_weights, donor, tmp_path, make_portrait) -> None:
    """Through the run-time path: each region's hold reads the hold net on the photo (kept off the
    features, as the mask is), the prediction and its retouch stay the base weights', and a brushed
    retouch moves only by what the hold reads."""
    from engine.retoucher import Retoucher

    img, _ = make_portrait(512, 384, seed=1)
    plain = Retoucher.load(tiny_weights, device="cpu")
    r = Retoucher.load(str(_grafted(tiny_weights, donor, tmp_path)), device="cpu")
    a, b = r.analyze(img), plain.analyze(img)
    assert a.states and len(a.states) == len(b.states)
    np.testing.assert_array_equal(a.mask, b.mask)
    for s, p in zip(a.states, b.states):
        assert p.tone_n is None  # (the plain weights' hold reads their prediction)
        with torch.inference_mode():
            want = r.model.hold_prediction(s.enc.x, s.enc.recon)[0, 0].numpy()
        free = np.abs(s.enc.mask[0, 0].numpy() - s.mask_n) < 1e-7  # where nothing keeps the mask off
        assert free.mean() > 0.5
        np.testing.assert_allclose(s.tone_n[free], want[free], atol=1e-6)
        assert np.all(s.tone_n <= want + 1e-6)
        assert np.abs(s.tone_n - s.mask_n).max() > 0.05  # it reads something else than the fill's mask
    np.testing.assert_array_equal(r.composite(img, r.render(a, a.mask), 1.0), plain.composite(img, plain.render(b, b.mask), 1.0))
    brush = np.zeros(img.shape[:2], np.float32)
    brush[150:260, 180:330] = 1.0
    brush = np.maximum(brush, a.mask)
    held = r.composite(img, r.render(a, brush), 1.0).astype(np.float32)
    base = plain.composite(img, plain.render(b, brush), 1.0).astype(np.float32)
    assert np.abs(held - base)[150:260, 180:330].mean() > 0.05
    extra = np.zeros(img.shape[:2], np.float32)
    extra[:, :] = 1.0
    r.render(a, extra)  # strokes everywhere: regions outside the planned ones read the hold net too
    for s in a.extras:
        with torch.inference_mode():
            want = r.model.hold_prediction(s.enc.x, s.enc.recon)[0, 0].numpy()
        assert np.all(s.tone_n <= want + 1e-6) and np.abs(s.tone_n - s.mask_n).max() > 0.05


def test_graft_refuses_to_overwrite_an_input_and_a_mask_net_of_another_shape(tiny_weights, donor, tmp_path, capsys) -> None:
    before = Path(tiny_weights).read_bytes()
    assert graft_main([tiny_weights, "--hold-from", str(donor), "--out", tiny_weights]) == 2
    assert Path(tiny_weights).read_bytes() == before
    other = tmp_path / "other.safetensors"
    save_model(RetouchFormer(ModelConfig.preset("tiny", mask_channels=(8, 8, 16, 32))), other)
    assert graft_main([tiny_weights, "--hold-from", str(other), "--out", str(tmp_path / "x.safetensors")]) == 1
    assert "mask net" in capsys.readouterr().err and not (tmp_path / "x.safetensors").exists()


def test_mask_with_hold_shows_and_fills_the_stronger_of_the_two_masks(tiny_weights, donor, tmp_path, make_portrait) -> None:
    """--mask-with-hold: the mask the program shows and fills is, pixel by pixel, the stronger of
    the weights' own and the hold net's; without it, the weights' own (the test above)."""
    from engine.retoucher import Retoucher

    with pytest.raises(ValueError, match="hold net"):
        ModelConfig.preset("tiny", mask_with_hold=True)
    out = tmp_path / "shown.safetensors"
    assert graft_main([tiny_weights, "--hold-from", str(donor), "--out", str(out), "--mask-with-hold"]) == 0
    base, g = load_model(tiny_weights), load_model(out)
    assert g.config.mask_with_hold and "where it is the stronger" in g.checkpoint_info["hold_net"]
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        enc, own = g.encode(x), base.encode(x)
        assert torch.equal(enc.mask, torch.maximum(own.mask, enc.hold))
        assert (enc.mask - own.mask).max() > 0.05 and (enc.mask >= own.mask).all()
    img, _ = make_portrait(512, 384, seed=2)
    a = Retoucher.load(str(out), device="cpu").analyze(img)
    b = Retoucher.load(tiny_weights, device="cpu").analyze(img)
    assert np.all(a.mask >= b.mask - 1e-6) and (a.mask - b.mask).max() > 0.05
