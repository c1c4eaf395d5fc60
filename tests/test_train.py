"""`retouch train` end to end on generated data: every data source, logs, grids, checkpoints, resume."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.training.data import TrainingData, eval_pairs, is_holdout, list_images
from engine.training.metrics import soft_iou
from engine.imageio import from_float, save_image
from engine.training.losses import feature_space, perceptual, soft_iou_minmax, soft_jaccard, spot_tone, tone_shift
from engine.model import ModelConfig, RetouchFormer, load_model
from engine.training.train import GeneratorStep, brushed, build_parser, train
from engine.training import losses
from tests.test_synth import make_face


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    clean, raw, paired = root / "clean", root / "raw", root / "pairs"
    for d in (clean, raw, paired / "raw", paired / "retouched"):
        d.mkdir(parents=True)
    for i in range(6):
        face = make_face(96, seed=i)
        save_image(clean / f"c{i}.png", from_float(face, np.uint8))
        noisy = np.clip(face + np.random.default_rng(i).normal(0, 0.03, face.shape), 0, 1)
        save_image(raw / f"r{i}.jpg", from_float(noisy, np.uint8))
        spot = face.copy()
        spot[40:46, 40:46] = (0.6, 0.2, 0.2)
        save_image(paired / "raw" / f"p{i}.png", from_float(spot, np.uint8))
        save_image(paired / "retouched" / f"p{i}.png", from_float(face, np.uint8))
    return {"clean": clean, "raw": raw, "paired": paired, "root": root}


def _args(dataset: dict[str, Path], run: Path, steps: int, *extra: str):
    return build_parser().parse_args(
        [
            "--run", str(run), "--preset", "tiny", "--steps", str(steps), "--batch", "2", "--unpaired-batch", "1",
            "--crop", "48", "--adv-start", "2", "--log-every", "1", "--ckpt-every", "2", "--grid-every", "2",
            "--threads", "1", "--clean", str(dataset["clean"]), "--raw", str(dataset["raw"]),
            "--paired", str(dataset["paired"]), *extra,
        ]
    )


def test_training_logs_checkpoints_and_resumes(dataset, tmp_path) -> None:
    run = tmp_path / "run"
    out = train(_args(dataset, run, 4, "--stop-at", "2"))
    model = load_model(out)
    assert model.config == ModelConfig.preset("tiny")
    assert model.checkpoint_info["step"] == 2
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    for key in ("prior", "rec", "mask_reg", "mask_bce", "x2y", "fill", "mask_unpaired"):
        assert key in log[-1] and np.isfinite(log[-1][key]), key
    assert "adv_g" not in log[-1]  # the adversarial terms start at --adv-start
    assert (run / "grids" / "step0000002.png").exists()
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["step"] == 2 and state["opt_g"]["state"] and "np_rng" in state
    # resume: continues at step 3, not from scratch
    train(_args(dataset, run, 4))
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert np.isfinite(log[-1]["adv_g"]) and np.isfinite(log[-1]["d"])
    assert load_model(run / "model.safetensors").checkpoint_info["step"] == 4


def test_resumed_run_matches_uninterrupted_run(dataset, tmp_path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    train(_args(dataset, a, 4))
    train(_args(dataset, b, 4, "--stop-at", "2"))  # as if interrupted after step 2
    assert load_model(b / "model.safetensors").checkpoint_info["step"] == 2
    train(_args(dataset, b, 4))
    ma, mb = load_model(a / "model.safetensors"), load_model(b / "model.safetensors")
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-5), k


def test_resume_refuses_a_different_config(dataset, tmp_path) -> None:
    run = tmp_path / "run"
    train(_args(dataset, run, 2))
    with pytest.raises(SystemExit, match="different model configuration"):
        train(_args(dataset, run, 4, "--set", "attention=global"))
    # a setting that no parameter depends on may change between segments
    train(_args(dataset, run, 3, "--set", "colour_lock_mm=2.5"))
    assert load_model(run / "model.safetensors").config.colour_lock_mm == 2.5
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()][-1] == 3


def test_init_starts_a_new_run_from_earlier_weights(dataset, tmp_path) -> None:
    first = tmp_path / "first"
    train(_args(dataset, first, 2))
    before = load_model(first / "model.safetensors").state_dict()
    for source in (first / "last.pt", first / "model.safetensors"):
        run = tmp_path / f"ft_{source.suffix[1:]}"
        train(_args(dataset, run, 1, "--init", str(source), "--conf", "0.25", "--lr", "0"))
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == [1]  # a fresh schedule, not a resume at step 2
        after = load_model(run / "model.safetensors").state_dict()
        # lr 0: the generator weights are exactly those it started from (only H̄'s EMA moves)
        for k, v in before.items():
            if not k.startswith("masknet.ema."):
                assert torch.equal(v, after[k]), k
    with pytest.raises(SystemExit, match="different model configuration"):
        train(_args(dataset, tmp_path / "bad", 1, "--init", str(first / "last.pt"), "--set", "attention=global"))
    with pytest.raises(SystemExit, match="does not exist"):
        train(_args(dataset, tmp_path / "missing", 1, "--init", str(tmp_path / "nope.safetensors")))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((first / "last.pt").read_bytes()[:1000])
    with pytest.raises(SystemExit, match="not a readable training state"):
        train(_args(dataset, tmp_path / "cut", 1, "--init", str(truncated)))


def test_mask_only_stage_trains_only_the_mask_net(dataset, tmp_path) -> None:
    first = tmp_path / "first"
    train(_args(dataset, first, 2))
    before = load_model(first / "model.safetensors").state_dict()
    run = tmp_path / "mask"
    train(_args(dataset, run, 2, "--init", str(first / "last.pt"), "--only", "mask", "--lr", "1e-3"))
    after = load_model(run / "model.safetensors").state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert changed and all(k.startswith("masknet.") for k in changed), sorted(changed)[:5]
    assert any(k.startswith("masknet.online.") for k in changed) and any(k.startswith("masknet.ema.") for k in changed)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert {"mask_reg", "mask_bce", "mask_iou", "mask_unpaired"} <= set(log[-1])
    assert not {"rec", "x2y", "adv_g", "d"} & set(log[-1])  # nothing else is trained, D neither
    assert (run / "grids" / "step0000002.png").exists()
    state = torch.load(run / "last.pt", weights_only=False)
    # the history goes on from the run it started from, and the new segment says what it trained
    first_history = torch.load(first / "last.pt", weights_only=False)["history"]
    assert state["history"][: len(first_history)] == first_history and len(state["history"]) == len(first_history) + 1
    assert state["history"][-1]["to_step"] == 2 and "--only mask" in state["history"][-1]["stage"]
    assert state["step"] == 2 and len(state["opt_g"]["param_groups"][0]["params"]) == len(list(load_model(run / "model.safetensors").masknet.online.parameters()))
    # resuming the stage as a whole-model run would hand Adam the wrong parameters: a clear refusal
    with pytest.raises(SystemExit, match="--only mask"):
        train(_args(dataset, run, 3))
    # resumed as it was started, it goes on; only the segment that began the stage names it
    train(_args(dataset, run, 3, "--only", "mask", "--lr", "1e-3"))
    history = torch.load(run / "last.pt", weights_only=False)["history"]
    assert history[-1]["from_step"] == 2 and "stage" not in history[-1] and "stage" in history[-2]


def test_mask_fill_term_trains_only_the_mask_net_and_is_refused_outside_a_mask_stage(dataset, tmp_path) -> None:
    first = tmp_path / "first"
    train(_args(dataset, first, 2))
    before = load_model(first / "model.safetensors").state_dict()
    run = tmp_path / "mask"
    train(_args(dataset, run, 2, "--init", str(first / "last.pt"), "--only", "mask", "--lr", "1e-3", "--mask-fill", "10"))
    after = load_model(run / "model.safetensors").state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    # T and G run for H's sake, but only H (and H̄ by EMA) moves
    assert changed and all(k.startswith("masknet.") for k in changed), sorted(changed)[:5]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(entry["mask_fill"]) and entry["mask_fill"] > 0 for entry in log)
    assert "--mask-fill 10" in torch.load(run / "last.pt", weights_only=False)["history"][-1]["stage"]
    with pytest.raises(SystemExit, match="--only mask"):
        train(_args(dataset, tmp_path / "all", 1, "--mask-fill", "10"))


def test_mask_fill_term_raises_the_mask_where_the_fill_heals_and_lowers_it_where_it_harms() -> None:
    """The end-to-end mask term's gradient on H's logits: on a spot that the (frozen) fill heals the
    mask is pushed up; on clean textured skin, where any fill only loses the skin's own grain, down."""
    torch.manual_seed(0)
    model = RetouchFormer(ModelConfig.preset("tiny")).eval()
    args = build_parser().parse_args(["--only", "mask", "--mask-fill", "10"])
    step = GeneratorStep(model, args)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    skin = torch.tensor([0.8, 0.6, 0.5])[None, :, None, None]
    grain = 0.06 * (torch.rand(1, 1, 64, 64) - 0.5)
    clean = (skin + grain * (xx >= 40)).expand(1, 3, 64, 64).clone()  # smooth on the left, grainy on the right
    spot = (((yy - 32) ** 2 + (xx - 16) ** 2) <= 16).float()[None, None]
    photo = clean * (1 - 0.6 * spot)  # a dark spot on the smooth side
    logits = torch.zeros(1, 1, 64, 64, requires_grad=True)  # H says 0.5 everywhere
    with torch.no_grad():
        feats = model.encoder(photo)
        recon = model.prior(feats, photo).recon
    out: dict[str, torch.Tensor] = {}
    step._fill_through_mask(clean, photo, spot, feats, recon, logits, out)
    out["mask_fill"].backward()
    g = logits.grad[0, 0]
    assert g[spot[0, 0] > 0].mean() < 0  # heal the spot: more mask
    assert g[:, 44:][(xx[:, 44:] < 60) & (yy[:, 44:] > 4) & (yy[:, 44:] < 60)].mean() > 0  # keep the grain: less mask


def test_fill_only_stage_trains_the_fill_and_leaves_the_mask_as_it_was(dataset, tmp_path) -> None:
    first = tmp_path / "first"
    train(_args(dataset, first, 2))
    before = load_model(first / "model.safetensors").state_dict()
    run = tmp_path / "fill"
    train(_args(dataset, run, 2, "--init", str(first / "last.pt"), "--only", "fill", "--lr", "1e-3", "--adv-start", "1", "--hold-tone", "10"))
    model = load_model(run / "model.safetensors")
    after = model.state_dict()
    changed = {k.split(".")[0] for k, v in before.items() if not torch.equal(v, after[k])}
    # the fill learns; E, the prior and both mask nets (H̄ gets no EMA step from a frozen H) stay bit for bit
    assert changed == {"tokens", "transformer", "synthesis"}, changed
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert {"x2y", "fill", "hold_tone", "adv_g", "d"} <= set(log[-1])  # the fill's terms, and D trains beside it
    assert not {"prior", "rec", "mask_reg", "mask_bce", "mask_iou", "mask_unpaired"} & set(log[-1])
    state = torch.load(run / "last.pt", weights_only=False)
    assert "--only fill" in state["history"][-1]["stage"] and state["only"] == "fill"
    fill_params = sum(1 for part in (model.tokens, model.transformer, model.synthesis) for _ in part.parameters())
    assert len(state["opt_g"]["param_groups"][0]["params"]) == fill_params
    with pytest.raises(SystemExit, match="--only fill"):  # not to be resumed as another kind of stage
        train(_args(dataset, run, 3, "--only", "mask"))


def test_fill_outside_term_is_logged_only_when_asked(dataset, tmp_path) -> None:
    train(_args(dataset, tmp_path / "off", 1))
    train(_args(dataset, tmp_path / "on", 1, "--fill-outside", "10"))
    off = json.loads((tmp_path / "off" / "log.jsonl").read_text().splitlines()[-1])
    on = json.loads((tmp_path / "on" / "log.jsonl").read_text().splitlines()[-1])
    assert "fill_outside" not in off and on["fill_outside"] > 0
    assert on["x2y"] == pytest.approx(off["x2y"])  # same data and weights at step 1: only the new term differs


@pytest.mark.parametrize("flag", ["--hold-tone", "--spot-tone", "--own-tone"])
def test_real_photo_tone_terms_are_logged_only_when_asked(dataset, tmp_path, flag) -> None:
    key = flag[2:].replace("-", "_")
    train(_args(dataset, tmp_path / "off", 1))
    train(_args(dataset, tmp_path / "on", 1, flag, "10"))
    off = json.loads((tmp_path / "off" / "log.jsonl").read_text().splitlines()[-1])
    on = json.loads((tmp_path / "on" / "log.jsonl").read_text().splitlines()[-1])
    assert key not in off and np.isfinite(on[key]) and on[key] >= 0
    assert on["x2y"] == pytest.approx(off["x2y"])  # same data and weights at step 1: only the new term differs
    stage = torch.load(tmp_path / "on" / "last.pt", map_location="cpu", weights_only=False)["history"][-1]["stage"]
    assert (f"{flag} 10" in stage) == (flag != "--hold-tone")  # the stage says it trained with the term
    assert "--tone-reach" not in stage  # the default reach goes unsaid


def test_spot_tone_reach_takes_the_tone_of_a_few_rims_inside_a_cluster() -> None:
    """Inside a dense cluster the clean skin is a thin rim between the spots, far below a fifth of the
    Gaussian's weight: by default such a spot has no reference and pays nothing for a smudge; with a
    lower ``reach`` the rim's tone is its reference, and a fill in that tone pays nothing again."""
    torch.manual_seed(0)
    skin_tone = torch.tensor([0.8, 0.6, 0.5])[None, :, None, None]
    ref = skin_tone + 0.02 * torch.rand(1, 3, 64, 64)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    r2 = (yy - 32) ** 2 + (xx - 32) ** 2
    spots = (r2 < 144).float()[None, None]  # a cluster 24 px across, marked as one spot by a hazy mask
    rim = ((r2 >= 144) & (r2 < 169)).float()[None, None]  # and one pixel of clean skin round it
    photo = ref - 0.12 * spots
    smudge = ref - 0.06 * spots
    assert spot_tone(smudge, photo, spots, rim, 1.6, 3.2).item() == 0.0  # a fifth of the weight: not reached
    low = spot_tone(smudge, photo, spots, rim, 1.6, 3.2, reach=0.02).item()
    assert low == pytest.approx(0.06, abs=0.015)
    assert spot_tone(ref.clone(), photo, spots, rim, 1.6, 3.2, reach=0.02).item() < 0.3 * low


def test_tone_reach_is_said_in_the_stage(dataset, tmp_path) -> None:
    train(_args(dataset, tmp_path / "reach", 1, "--spot-tone", "10", "--tone-reach", "0.02"))
    stage = torch.load(tmp_path / "reach" / "last.pt", map_location="cpu", weights_only=False)["history"][-1]["stage"]
    assert "--spot-tone 10 --tone-reach 0.02" in stage


def test_tone_held_judges_the_brushed_spots_after_the_programs_tone_hold(dataset, tmp_path, monkeypatch) -> None:
    """--tone-held: --spot-tone is taken on the brushed fill after the run-time tone hold (the
    hold's own output is what the term is handed; without the flag the hold is not run), the
    other terms are unchanged, and the stage says so."""
    import engine.training.train as tr

    held_out, judged, preds = [], [], []
    real_hold, real_spot = tr.hold_tone, tr.losses.spot_tone

    def hold_spy(x, synth, mask, pred, sigma, keep=None):
        preds.append(pred)
        held_out.append(real_hold(x, synth, mask, pred, sigma, keep))
        assert sigma == pytest.approx(tr.TONE_MM * ModelConfig.preset("tiny").work_px_per_mm)  # the program's hold
        return held_out[-1]

    def spot_spy(out, *rest, **kw):
        judged.append(out)
        return real_spot(out, *rest, **kw)

    monkeypatch.setattr(tr, "hold_tone", hold_spy)
    monkeypatch.setattr(tr.losses, "spot_tone", spot_spy)
    with pytest.raises(SystemExit, match="give --spot-tone too"):  # alone it would do nothing
        train(_args(dataset, tmp_path / "alone", 1, "--tone-held"))
    train(_args(dataset, tmp_path / "raw", 1, "--spot-tone", "10"))
    assert not held_out and judged
    judged.clear()
    train(_args(dataset, tmp_path / "held", 1, "--spot-tone", "10", "--tone-held"))
    assert len(held_out) == 1 and any(o is held_out[0] for o in judged)
    raw = json.loads((tmp_path / "raw" / "log.jsonl").read_text().splitlines()[-1])
    held = json.loads((tmp_path / "held" / "log.jsonl").read_text().splitlines()[-1])
    assert held["x2y"] == pytest.approx(raw["x2y"]) and np.isfinite(held["spot_tone"])
    stage = torch.load(tmp_path / "held" / "last.pt", map_location="cpu", weights_only=False)["history"][-1]["stage"]
    assert "--spot-tone 10 --tone-held" in stage
    assert "--tone-held" not in torch.load(tmp_path / "raw" / "last.pt", map_location="cpu", weights_only=False)["history"][-1]["stage"]
    # a reading of its own (ModelConfig.hold_floor, hold_gain, hold_dilate_mm): the hold is handed
    # the model's tone_reading of its prediction, and the stage names the reading
    import engine.model.retouchformer as rf

    settings, readings = [], []
    real_reading = rf.RetouchFormer.tone_reading

    def reading_spy(self, mask):
        settings.append((self.config.hold_floor, self.config.hold_gain, self.config.hold_dilate_mm))
        readings.append(real_reading(self, mask))
        return readings[-1]

    monkeypatch.setattr(rf.RetouchFormer, "tone_reading", reading_spy)
    held_out.clear()
    train(_args(dataset, tmp_path / "read", 1, "--spot-tone", "10", "--tone-held", "--set", "hold_floor=0.2", "--set", "hold_gain=3", "--set", "hold_dilate_mm=1.25"))
    assert settings[0] == (0.2, 3.0, 1.25) and len(held_out) == 1 and preds[-1] is readings[0]
    stage = torch.load(tmp_path / "read" / "last.pt", map_location="cpu", weights_only=False)["history"][-1]["stage"]
    assert "--tone-held (hold reading: top-hat 0 mm, floor 0.2, gain 3, dilation 1.25 mm)" in stage


def test_a_hold_net_is_grafted_never_trained_and_tone_held_reads_it(dataset, tmp_path, tiny_weights, monkeypatch) -> None:
    """ModelConfig.hold_net: a run with one starts from weights that have it (python -m
    engine.training.graft), never from a fresh one; --tone-held's hold reads it, as the program's
    does, the stage names it, and its weights leave the stage as they came."""
    import engine.training.train as tr
    from engine.training.graft import main as graft_main

    with pytest.raises(SystemExit, match="grafted from other weights"):
        train(_args(dataset, tmp_path / "fresh", 1, "--set", "hold_net=true"))
    with pytest.raises(SystemExit, match="--set: mask_with_hold needs a hold net"):
        train(_args(dataset, tmp_path / "shown", 1, "--set", "mask_with_hold=true"))
    with pytest.raises(SystemExit, match="--set: mask_gain must be at least 1"):
        train(_args(dataset, tmp_path / "gain", 1, "--set", "mask_gain=0.5"))
    with pytest.raises(SystemExit, match="has no hold net"):
        train(_args(dataset, tmp_path / "plain", 1, "--init", tiny_weights, "--set", "hold_net=true"))
    grafted = tmp_path / "grafted.safetensors"
    assert graft_main([tiny_weights, "--hold-from", tiny_weights, "--out", str(grafted)]) == 0
    before = load_model(grafted).hold_masknet.state_dict()
    preds, nets = [], []
    real_hold, real_net = tr.hold_tone, RetouchFormer.hold_prediction

    def hold_spy(x, synth, mask, pred, sigma, keep=None):
        preds.append(pred)
        return real_hold(x, synth, mask, pred, sigma, keep)

    def net_spy(self, x, recon):
        nets.append(real_net(self, x, recon))
        return nets[-1]

    monkeypatch.setattr(tr, "hold_tone", hold_spy)
    monkeypatch.setattr(RetouchFormer, "hold_prediction", net_spy)
    out = train(_args(dataset, tmp_path / "held", 2, "--init", str(grafted), "--set", "hold_net=true", "--spot-tone", "10", "--tone-held"))
    assert len(preds) == 2 and all(any(p is n for n in nets) for p in preds)
    after = load_model(out).hold_masknet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    stage = torch.load(tmp_path / "held" / "last.pt", map_location="cpu", weights_only=False)["history"][-1]["stage"]
    assert "--tone-held (hold reading: the hold net, top-hat 0 mm" in stage
    shown = ("--init", str(grafted), "--set", "hold_net=true", "--fill-mask", "calibrated", "--set", "mask_gain=1.5", "--set", "mask_with_hold=true")
    train(_args(dataset, tmp_path / "shown", 3, *shown, "--stop-at", "1"))  # G under the mask with the hold net's: named, and kept on resuming
    stage = torch.load(tmp_path / "shown" / "last.pt", map_location="cpu", weights_only=False)["history"][-1]["stage"]
    assert "--fill-mask calibrated (top-hat 0 mm, floor 0, gain 1.5, the hold net's where stronger)" in stage
    with pytest.raises(SystemExit, match="the hold net's where stronger"):
        train(_args(dataset, tmp_path / "shown", 3, *shown[:-2]))
    train(_args(dataset, tmp_path / "shown", 3, *shown))
    assert torch.load(tmp_path / "shown" / "last.pt", map_location="cpu", weights_only=False)["step"] == 3


def test_own_tone_trains_the_fill_on_the_raw_photos(dataset, tmp_path) -> None:
    """--own-tone holds the fill under H̄'s own mask on the raw-only photos: a stage that trains no
    fill, or one without those photos, is refused rather than run without the term."""
    with pytest.raises(SystemExit, match="not --only mask"):
        train(_args(dataset, tmp_path / "mask", 1, "--only", "mask", "--own-tone", "10"))
    with pytest.raises(SystemExit, match="--no-unpaired"):
        train(_args(dataset, tmp_path / "paired", 1, "--no-unpaired", "--own-tone", "10"))


def test_spot_tone_wants_a_filled_spot_in_the_tone_of_the_skin_around_it() -> None:
    """A filled spot that keeps part of its darkness (a smudge) pays the difference from the skin's
    local tone; one filled in that tone pays nothing, whatever its grain; skin far from it is no
    reference, and a dark hole far off the skin's tone (a nostril) is no blemish."""
    torch.manual_seed(0)
    skin_tone = torch.tensor([0.8, 0.6, 0.5])[None, :, None, None]
    ref = skin_tone + 0.02 * torch.rand(1, 3, 64, 64)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    spots = (((yy - 32) ** 2 + (xx - 32) ** 2) < 16).float()[None, None]
    skin = ((((yy - 32) ** 2 + (xx - 32) ** 2) < 100).float()[None, None] - spots).clamp(0, 1)
    photo = ref - 0.12 * spots  # the dark spot itself (some 10 L* below the skin)
    healed = ref.clone()
    assert spot_tone(healed, photo, spots, skin, 1.6, 3.2).item() < 0.01
    smudge = ref - 0.06 * spots
    assert spot_tone(smudge, photo, spots, skin, 1.6, 3.2).item() == pytest.approx(0.06, abs=0.01)
    checker = ((torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2 * 2 - 1).float() * 0.05
    assert spot_tone(ref + checker * spots, photo, spots, skin, 1.6, 3.2).item() < 0.015  # grain, not tone
    nostril = ref - 0.4 * spots  # far darker than any blemish: not one
    assert spot_tone(smudge, nostril, spots, skin, 1.6, 3.2).item() == 0.0
    far = torch.zeros_like(skin)
    far[..., :8, :8] = 1
    assert spot_tone(smudge, photo, spots, far, 1.6, 3.2).item() == 0.0  # no skin near the spot: no reference
    x = smudge.clone().requires_grad_(True)
    spot_tone(x, photo, spots, skin, 1.6, 3.2).backward()
    assert x.grad[..., 32, 32].sum() < 0  # lighter is better
    assert x.grad[..., 5, 5].abs().sum() == 0  # away from the spot: no gradient


def test_real_check_photos_are_not_trained_on(tmp_path) -> None:
    from engine.training.data import REAL_CHECKS, raw_images

    for name in (REAL_CHECKS[0], "acne04_9999.jpg"):
        save_image(tmp_path / name, np.zeros((16, 16, 3), np.uint8))
    assert [p.name for p in raw_images(tmp_path)] == ["acne04_9999.jpg"]


def test_minmax_jaccard_is_the_evaluations_soft_iou_and_wants_the_blend_weight_not_the_footprint() -> None:
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    phi = (0.8 * torch.exp(-((yy - 32) ** 2 + (xx - 32) ** 2) / 60.0))[None, None]  # a soft spot
    phi = torch.where(phi > 0.01, phi, torch.zeros_like(phi))
    footprint = (phi > 0.05).float()
    evaluated = lambda p: soft_iou(p[0, 0].numpy(), phi[0, 0].numpy())  # noqa: E731
    # the loss is one minus the evaluation's Soft-IoU (up to the +1 that keeps empty masks finite)
    for p in (phi, footprint, 0.5 * phi, torch.zeros_like(phi)):
        assert 1.0 - soft_iou_minmax(p, phi).item() == pytest.approx(evaluated(p), abs=0.02)
    assert soft_iou_minmax(phi, phi).item() == pytest.approx(0.0, abs=1e-6)
    # the product form prefers the footprint to the blend weight itself; the min/max form does not
    assert soft_jaccard(footprint, phi) < soft_jaccard(phi, phi)
    assert soft_iou_minmax(phi, phi) < soft_iou_minmax(footprint, phi)
    # its gradient lowers a mask that says too much and raises one that says too little
    over = (phi + 0.05 + 0.3 * footprint).clamp(0, 1).requires_grad_(True)  # haze, and too strong on the spot
    soft_iou_minmax(over, phi).backward()
    assert (over.grad > 0).all()
    under = (0.5 * phi).requires_grad_(True)
    soft_iou_minmax(under, phi).backward()
    assert (under.grad[phi > 0] < 0).all()


def test_mask_terms_take_the_minmax_form_when_asked(dataset, tmp_path) -> None:
    first = {}
    for form in ("product", "minmax"):  # the same data and weights: only the Jaccard term's form differs
        run = tmp_path / form
        train(_args(dataset, run, 1, "--only", "mask", "--iou-form", form))
        first[form] = json.loads((run / "log.jsonl").read_text().splitlines()[0])
        stage = torch.load(run / "last.pt", weights_only=False)["history"][-1]["stage"]
        assert ("--iou-form minmax" in stage) == (form == "minmax")
    assert first["product"]["mask_reg"] == pytest.approx(first["minmax"]["mask_reg"])
    assert first["product"]["mask_iou"] != pytest.approx(first["minmax"]["mask_iou"])


def test_tone_shift_sees_a_pale_patch_not_texture_or_what_lies_outside() -> None:
    torch.manual_seed(0)
    ref = 0.5 + 0.1 * torch.rand(1, 3, 64, 64)
    region = torch.zeros(1, 1, 64, 64)
    region[..., 16:48, 16:48] = 1
    pale = ref + 0.05 * region
    assert tone_shift(pale, ref, region, 3.0).item() == pytest.approx(0.05, rel=0.02)
    checker = ((torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2 * 2 - 1).float() * 0.05
    textured = ref + checker * region  # grain changed, tone kept
    assert tone_shift(textured, ref, region, 3.0).item() < 0.005
    spot_removed = ref + 0.2 * (1 - region)  # a brighter fill just outside the clean skin: not its business
    assert tone_shift(spot_removed, ref, region, 3.0).item() == pytest.approx(0.0, abs=1e-6)
    x = pale.clone().requires_grad_(True)
    tone_shift(x, ref, region, 3.0).backward()
    assert x.grad[..., 20:40, 20:40].abs().sum() > 0 and x.grad[..., :10, :10].abs().sum() == 0


def test_brushed_mask_covers_the_spots_grown_and_clean_skin_between() -> None:
    torch.manual_seed(0)
    teacher = torch.zeros(2, 1, 96, 96)
    teacher[:, :, 40:44, 40:44] = 0.8
    teacher[:, :, 70, 70] = 0.1  # below the brush's threshold: kept as it is, not grown
    brush = brushed(teacher, 1.6)
    assert brush.shape == teacher.shape and 0 <= brush.min() and brush.max() <= 1
    assert (brush >= teacher).all()
    assert (brush[:, :, 40:44, 40:44] > 0.9).all() and (brush[:, :, 42, 46] > 0.5).all()  # grown by >= 1 mm
    clean = (brush > 0.9) & (teacher < 0.05)
    assert clean.sum() > 100  # there is clean skin under the brush for --hold-tone to hold
    assert (brush < 0.1).float().mean() > 0.3  # not a brush over everything


def test_ablation_switches_train(dataset, tmp_path) -> None:
    for extra in (["--set", "tokens=single"], ["--set", "prior=false"], ["--no-unpaired"]):
        out = train(_args(dataset, tmp_path / "_".join(extra), 1, *extra))
        cfg = load_model(out).config
        if "prior=false" in extra:
            assert cfg.prior is False
        if "tokens=single" in extra:
            assert cfg.tokens == "single"


def test_ablation_script_trains_the_chosen_variants_and_refuses_unknown_ones(dataset, tmp_path) -> None:
    script = Path(__file__).resolve().parent / "bench" / "run_ablations.sh"
    extra = f"--preset tiny --crop 48 --batch 2 --clean {dataset['clean']} --raw {dataset['raw']}"
    env = {**os.environ, "PYTHON": sys.executable, "EXTRA": extra, "EVAL": "0", "VARIANTS": "full no-unpaired"}
    root = tmp_path / "abl"
    done = subprocess.run(["bash", str(script), "1", str(root)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in root.iterdir()) == ["full", "no-unpaired"]
    for name in ("full", "no-unpaired"):
        assert load_model(root / name / "model.safetensors").config == ModelConfig.preset("tiny")
        assert json.loads((root / name / "log.jsonl").read_text().splitlines()[-1])["step"] == 1
    bad = subprocess.run(["bash", str(script), "1", str(tmp_path / "bad")], env={**env, "VARIANTS": "full no-prior2"},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown variant: no-prior2" in bad.stderr
    assert not (tmp_path / "bad").exists()  # refused before anything trained


def test_training_data_mixes_sources_and_respects_gamma(dataset) -> None:
    data = TrainingData(64, 48, [dataset["clean"]], [dataset["paired"]], [dataset["raw"]], gamma=0.5)
    d = data.describe()
    n_clean = len([p for p in list_images(dataset["clean"]) if not is_holdout(p)])
    assert d["synthetic_pairs"] == round(0.5 * n_clean)
    assert d["real_pairs"] == 3 and d["raw_only"] == 6 + 3
    batch = next(data.batches(3, 2, np.random.default_rng(0)))
    assert batch.raw.shape == (3, 48, 48, 3) and batch.mask.shape == (3, 48, 48)
    assert batch.clean.shape[0] >= 3 and batch.unpaired.shape == (2, 48, 48, 3)
    assert 0 <= batch.mask.min() and batch.mask.max() <= 1 and batch.mask.max() > 0


def test_holdout_split_is_fixed_and_disjoint(tmp_path) -> None:
    names = [Path(f"img{i}.jpg") for i in range(2000)]
    held = [p for p in names if is_holdout(p)]
    assert 120 < len(held) < 280  # about 10 %
    assert held == [p for p in names if is_holdout(p)]


def test_eval_pairs_are_deterministic(dataset) -> None:
    folder = dataset["root"] / "holdout"
    folder.mkdir(exist_ok=True)
    i = 0
    while len([p for p in list_images(folder) if is_holdout(p)] if folder.exists() else []) < 2:
        name = f"h{i}.png"
        if is_holdout(Path(name)):
            save_image(folder / name, from_float(make_face(96, seed=i), np.uint8))
        i += 1
    a = list(eval_pairs(folder, 64, 2))
    b = list(eval_pairs(folder, 64, 2))
    assert len(a) == 2 and all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))


def test_perceptual_feature_space_sees_texture_not_just_colour() -> None:
    torch.manual_seed(0)
    y = torch.rand(1, 3, 32, 32)
    blurred = torch.nn.functional.avg_pool2d(y, 3, 1, 1)
    shifted = (y + 0.02).clamp(0, 1)
    assert len(feature_space(y)) == 9
    assert perceptual(y, y) == 0
    # a smeared image is far in V even though its L1 error is similar to a small colour shift
    assert perceptual(y, blurred) > 10 * perceptual(y, shifted)


def test_committed_state_resumes_exactly_and_is_compact(dataset, tmp_path) -> None:
    """A run with --state writes the compact state at every checkpoint; a new run directory (a
    new session) resumes from it and ends where an uninterrupted run ends (up to the float16
    rounding of the committed weights)."""
    from engine.training.state import load_state

    state = tmp_path / "state.pt"
    train(_args(dataset, tmp_path / "first", 4, "--stop-at", "2", "--state", str(state)))
    saved = torch.load(state, weights_only=False)
    assert saved["compact"] and saved["step"] == 2 and "opt_g" not in saved
    saved.update(torch.load(tmp_path / "state-optim.pt", weights_only=False))  # the optimisers' half
    assert all(t.dtype == torch.float16 for t in saved["model"].values() if t.is_floating_point())
    moments = [v for s in saved["opt_g"]["state"].values() for k, v in s.items() if k != "step"]
    assert moments and all(t.dtype == torch.bfloat16 for t in moments)
    assert saved["history"][-1]["to_step"] == 2
    full = load_state(tmp_path / "first" / "last.pt")
    # the committed state's weights, to evaluate or ship when the run directory is gone
    from engine.training import state as state_cli

    assert state_cli.main(["weights", str(state), str(tmp_path / "w" / "model.safetensors")]) == 0
    exported, trained = load_model(tmp_path / "w" / "model.safetensors"), load_model(tmp_path / "first" / "model.safetensors")
    for (name, a), b in zip(exported.state_dict().items(), trained.state_dict().values()):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3, msg=name)  # float16 in the state
    assert exported.config == trained.config and exported.checkpoint_info["step"] == 2
    assert state.stat().st_size + (tmp_path / "state-optim.pt").stat().st_size < 0.7 * (tmp_path / "first" / "last.pt").stat().st_size
    # the next session: a fresh run directory, the committed state
    train(_args(dataset, tmp_path / "second", 4, "--state", str(state)))
    resumed = load_model(tmp_path / "second" / "model.safetensors")
    train(_args(dataset, tmp_path / "straight", 4))
    straight = load_model(tmp_path / "straight" / "model.safetensors")
    for (name, a), b in zip(resumed.state_dict().items(), straight.state_dict().values()):
        torch.testing.assert_close(a, b, atol=5e-3, rtol=5e-3, msg=name)
    assert [h["to_step"] for h in torch.load(state, weights_only=False)["history"]] == [2, 4]
    assert full["step"] == 2


def test_one_command_resumes_a_stage_and_starts_the_next_once_it_is_over(dataset, tmp_path) -> None:
    """The model card's command (--state S --init S) resumes the committed stage while it runs and
    starts a new stage from it once it is over (or trains other parts), the history going on."""
    state = tmp_path / "state.pt"
    train(_args(dataset, tmp_path / "mask", 2, "--only", "mask", "--state", str(state)))  # a finished mask-only stage
    assert torch.load(state, weights_only=False)["only"] == "mask"
    whole = ("--state", str(state), "--init", str(state), "--ckpt-every", "1")
    train(_args(dataset, tmp_path / "s1", 3, *whole, "--stop-at", "1"))  # next session: a new whole-model stage
    log = [json.loads(line)["step"] for line in (tmp_path / "s1" / "log.jsonl").read_text().splitlines()]
    assert log == [1]
    saved = torch.load(state, weights_only=False)
    assert saved["only"] == "all" and saved["step"] == 1
    train(_args(dataset, tmp_path / "s2", 3, *whole))  # the session after: the same command resumes it
    log = [json.loads(line)["step"] for line in (tmp_path / "s2" / "log.jsonl").read_text().splitlines()]
    assert log == [2, 3]
    history = torch.load(state, weights_only=False)["history"]
    assert [(h["from_step"], h["to_step"]) for h in history] == [(0, 2), (0, 1), (1, 3)]
    assert "--only mask" in history[0]["stage"] and "--only all" in history[1]["stage"] and "stage" not in history[2]
    # a later session reuses an old run directory whose last.pt is behind the committed state: the
    # committed state counts (here: its stage is over, so a new one starts from it), not the stale stage
    train(_args(dataset, tmp_path / "mask", 4, *whole, "--stop-at", "1"))
    history = torch.load(state, weights_only=False)["history"]
    assert [(h["from_step"], h["to_step"]) for h in history] == [(0, 2), (0, 1), (1, 3), (0, 1)]
    assert "--only all" in history[3]["stage"]
    assert torch.load(tmp_path / "mask" / "last.pt", weights_only=False)["only"] == "all"


def test_init_across_the_anchor_change(dataset, tmp_path) -> None:
    """Weights of a model without the anchored fill warm-start one with it: matching tensors are
    copied, the last skip gains zero-weighted input channels, and G's output starts at zero (the
    network returns the classical fill until it has learnt something)."""
    from engine.model import RetouchFormer, save_model

    torch.manual_seed(1)
    old = RetouchFormer(ModelConfig.preset("tiny", anchor=False))
    with torch.no_grad():
        old.synthesis.out.weight.normal_(0, 0.1)
    save_model(old, tmp_path / "old.safetensors")
    run = tmp_path / "new"
    train(_args(dataset, run, 1, "--init", str(tmp_path / "old.safetensors"), "--lr", "0"))
    new = load_model(run / "model.safetensors").state_dict()
    before = old.state_dict()
    assert torch.equal(new["encoder.stem.0.weight"], before["encoder.stem.0.weight"])
    skip = "synthesis.skips.2.0.weight"
    c_old = before[skip].shape[1]
    assert new[skip].shape[1] == c_old + 3
    assert torch.equal(new[skip][:, :c_old], before[skip]) and not new[skip][:, c_old:].any()
    assert not new["synthesis.out.weight"].any() and not new["synthesis.out.bias"].any()


def test_fit_to_time_ends_the_cosine_when_the_window_does(dataset, tmp_path, monkeypatch) -> None:
    """--fit-to-time (a GPU window of unknown speed): after a probe of a few steps the schedule's
    length becomes what the rest of --max-minutes allows, the learning rate reaches its floor at the
    last step before the time is up, and running the command again finds the stage over."""
    import types

    from engine.training import train as train_mod

    clock = {"now": 1000.0}

    def tick() -> float:  # every reading of the clock is one second later: a steady, known speed
        clock["now"] += 1.0
        return clock["now"]

    monkeypatch.setattr(train_mod, "time", types.SimpleNamespace(time=tick, strftime=train_mod.time.strftime))
    monkeypatch.setattr(train_mod.FitToTime, "WARMUP", 2)
    monkeypatch.setattr(train_mod.FitToTime, "PROBE", 5)
    run = tmp_path / "window"
    extra = ("--max-minutes", "1", "--fit-to-time", "--lr", "1e-3", "--ckpt-every", "1000", "--grid-every", "1000")
    train(_args(dataset, run, 1000, *extra))
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    last = log[-1]
    assert 10 < last["step"] < 60  # fitted: far short of --steps 1000, beyond the probe
    assert last["time"] < 60  # ended by its (fitted) length, inside the window
    assert last["lr"] == pytest.approx(1e-3 * 0.05, rel=1e-3)  # the cosine's floor at the last step
    assert log[10]["lr"] > 0.5e-3  # and not before
    assert [r["step"] for r in log] == list(range(1, last["step"] + 1))
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["step"] == last["step"] == state["sched_g"]["T_max"]
    # the same command again: the fitted length is kept, so there is nothing left to train
    train(_args(dataset, run, 1000, *extra))
    assert len((run / "log.jsonl").read_text().splitlines()) == len(log)
    assert torch.load(run / "last.pt", weights_only=False)["step"] == last["step"]
    with pytest.raises(SystemExit, match="give both"):
        train(_args(dataset, tmp_path / "no-window", 10, "--fit-to-time"))


def test_pack_and_parallel_training_as_on_a_gpu_window(dataset, tmp_path) -> None:
    """The GPU window's two commands, on the CPU with a few steps: a pack of the portraits at the
    working scale within a size budget, then training from it with batches made in worker
    processes, resuming from and writing the committed state."""
    from engine.training import pack

    out = tmp_path / "new" / "pack.npz"  # its folder is made
    assert pack.main(["--out", str(out), "--clean", str(dataset["clean"]), "--raw", str(dataset["raw"]), "--preset", "tiny", "--budget-mib", "1"]) == 0
    loaded = pack.Pack(out)
    assert loaded.meta["px_per_mm"] == ModelConfig.preset("tiny").work_px_per_mm
    assert len(loaded.cleans) == len([p for p in dataset["clean"].iterdir() if not is_holdout(p)]) and len(loaded.raws) == 6
    assert all(c.dtype == np.uint8 and c.shape[:2] == s.shape for c, s in zip(loaded.cleans, loaded.skins))
    # a tight budget keeps an evenly spaced subset
    small = pack.build([dataset["clean"]], [dataset["raw"]], 0.5, budget_mib=0.02, log=lambda m: None)
    assert 0 < len(small["clean_offsets"]) - 1 < len(loaded.cleans)
    state = tmp_path / "state.pt"
    run = tmp_path / "gpu"
    args = build_parser().parse_args([
        "--run", str(run), "--preset", "tiny", "--steps", "3", "--batch", "2", "--unpaired-batch", "1", "--crop", "48",
        "--pack", str(out), "--workers", "2", "--amp", "--state", str(state), "--ckpt-every", "3", "--log-every", "1", "--threads", "1",
    ])
    train(args)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["x2y"]) for r in log)
    assert torch.load(state, weights_only=False)["step"] == 3
    # the model card's GPU command on a state whose stage is over: a new stage from it, on the pack
    again = build_parser().parse_args([
        "--run", str(tmp_path / "gpu2"), "--preset", "tiny", "--steps", "2", "--batch", "2", "--unpaired-batch", "1", "--crop", "48",
        "--pack", str(out), "--workers", "2", "--amp", "--state", str(state), "--init", str(state), "--conf", "0.25", "--adv-start", "0",
        "--fill-outside", "10", "--hold-tone", "10", "--iou-form", "minmax", "--ckpt-every", "2", "--log-every", "1", "--threads", "1",
    ])
    train(again)
    log = [json.loads(line) for line in (tmp_path / "gpu2" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["hold_tone"]) and np.isfinite(r["mask_iou"]) for r in log)
    history = torch.load(state, weights_only=False)["history"]
    assert [h["to_step"] for h in history] == [3, 2] and "--iou-form minmax" in history[-1]["stage"]
    from engine.training.state import load_state, optimiser_path

    optimiser_path(state).unlink()  # half a state: one clear sentence, not a KeyError
    with pytest.raises(SystemExit, match="optimisers' half"):
        load_state(state)
    with pytest.raises(SystemExit, match="not a readable training pack"):
        pack.Pack(tmp_path / "nope.npz")


def _red_spots(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n 64-px skin patches (clean y, blemished xa) with one soft red spot of blend weight φ."""
    torch.manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    phi = (0.6 * torch.exp(-((yy - 30) ** 2 + (xx - 34) ** 2) / 40.0))[None, None].repeat(n, 1, 1, 1)
    phi = torch.where(phi > 0.01, phi, torch.zeros_like(phi))
    y = 0.5 + 0.05 * torch.rand(n, 3, 64, 64)
    return y, y + phi * torch.tensor([0.3, -0.2, -0.2])[None, :, None, None], phi


def _g_step(mode: str, y: torch.Tensor, xa: torch.Tensor, phi: torch.Tensor, use_gt: torch.Tensor):
    """One generator step of a fresh tiny model (calibrated: 4 mm top-hat, gain 2) under --fill-mask
    ``mode``: (its outputs, H̄'s raw mask of xa, the model)."""
    args = build_parser().parse_args(["--preset", "tiny", "--fill-mask", mode, "--set", "mask_tophat_mm=4", "--set", "mask_gain=2"])
    model = RetouchFormer(ModelConfig.preset("tiny", mask_tophat_mm=4.0, mask_gain=2.0))
    with torch.no_grad():
        out = GeneratorStep(model, args)(y, xa, phi, None, use_gt)
        raw = torch.sigmoid(model.mask_logits(xa, model.prior(model.encoder(xa), xa).recon, ema=True))
    return out, raw, model


def test_fill_mask_runtime_hands_g_the_masks_of_run_time() -> None:
    """--fill-mask runtime: G trains under the calibrated prediction and a brush over the true
    blemishes (what the program hands it), not under the raw estimate and the blend weight φ."""
    y, xa, phi = _red_spots(2, seed=0)
    use_gt = torch.tensor([True, False])
    used = {}
    for mode in ("phi", "runtime"):
        out, raw, model = _g_step(mode, y, xa, phi, use_gt)
        used[mode] = out["used_mask"]
        if mode == "phi":  # as trained so far: φ itself, and the raw estimate
            assert torch.equal(used[mode][0], phi[0]) and torch.allclose(used[mode][1], raw[1])
        else:  # the calibrated estimate (top-hat and gain), and a brush that covers every blemished pixel
            assert torch.allclose(used[mode][1], model.calibrate(raw)[1:2][0])
            assert not torch.allclose(used[mode][1], raw[1])
            assert (used[mode][0][phi[0] > 0.02] > 0.9).all() and (phi[0][phi[0] > 0.02] < 0.9).any()
    assert np.isfinite(out["x2y"].item()) and np.isfinite(out["fill"].item())


def test_fill_mask_runtime_refuses_a_run_without_the_calibration(dataset, tmp_path) -> None:
    with pytest.raises(SystemExit, match="mask_tophat_mm"):
        train(_args(dataset, tmp_path / "r", 1, "--fill-mask", "runtime"))
    train(_args(dataset, tmp_path / "r", 1, "--fill-mask", "runtime", "--set", "mask_tophat_mm=4", "--set", "mask_gain=1.5", "--init", str(train(_args(dataset, tmp_path / "a", 1)))))
    stage = torch.load(tmp_path / "r" / "last.pt", weights_only=False)["history"][-1]["stage"]
    assert "--fill-mask runtime (top-hat 4 mm, floor 0, gain 1.5)" in stage


def test_fill_mask_mixed_keeps_phi_on_some_true_mask_samples_and_brushes_the_others() -> None:
    y, xa, phi = _red_spots(8, seed=1)
    used = _g_step("mixed", y, xa, phi, torch.ones(8, dtype=torch.bool))[0]["used_mask"]
    kept = [bool(torch.equal(used[i], phi[i])) for i in range(8)]
    brushed_rows = [bool((used[i][phi[i] > 0.02] > 0.9).all()) for i in range(8)]
    assert any(kept) and any(brushed_rows) and all(k != b for k, b in zip(kept, brushed_rows))


def test_a_fill_mask_stage_resumes_only_with_the_same_masks(dataset, tmp_path) -> None:
    run = tmp_path / "run"
    flags = ("--fill-mask", "mixed", "--set", "mask_tophat_mm=4", "--set", "mask_gain=1.5")
    train(_args(dataset, run, 3, *flags, "--stop-at", "1"))
    for other in ((), ("--fill-mask", "runtime", "--set", "mask_tophat_mm=4", "--set", "mask_gain=1.5"),
                  ("--fill-mask", "mixed", "--set", "mask_tophat_mm=8", "--set", "mask_gain=1.5"),
                  (*flags, "--set", "mask_dilate_mm=1")):
        with pytest.raises(SystemExit, match="--fill-mask mixed"):
            train(_args(dataset, run, 3, *other))
    train(_args(dataset, run, 3, *flags))
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 3
    plain = tmp_path / "plain"  # and a stage begun without it refuses one
    train(_args(dataset, plain, 3, "--stop-at", "1"))
    with pytest.raises(SystemExit, match="--fill-mask phi"):
        train(_args(dataset, plain, 3, *flags))


def test_g_is_handed_the_mask_of_run_time_with_the_hold_nets_where_it_is_the_stronger() -> None:
    """Weights whose shown mask takes the hold net's reading (ModelConfig.mask_with_hold): G trains
    under that mask, as the program hands it (RetouchFormer.shown_mask), not under H̄'s alone."""
    y, xa, phi = _red_spots(2, seed=3)
    args = build_parser().parse_args(["--preset", "tiny", "--fill-mask", "calibrated", "--set", "mask_tophat_mm=4", "--set", "mask_gain=2"])
    model = RetouchFormer(ModelConfig.preset("tiny", mask_tophat_mm=4.0, mask_gain=2.0, hold_net=True, mask_with_hold=True))
    with torch.no_grad():
        model.hold_masknet.out.bias.fill_(1.0)  # a hold net that marks more than H̄ does
        used = GeneratorStep(model, args)(y, xa, phi, None, torch.tensor([True, False]))["used_mask"]
        recon = model.prior(model.encoder(xa), xa).recon
        own = model.calibrate(torch.sigmoid(model.mask_logits(xa, recon, ema=True)))
        shown = torch.maximum(own, model.hold_prediction(xa, recon))
    assert torch.equal(used[0], phi[0]) and torch.allclose(used[1], shown[1])
    assert (shown[1] - own[1]).max() > 0.05


def test_clean_tone_holds_the_clean_skin_under_a_brush_on_the_synthetic_pairs(dataset, tmp_path) -> None:
    """--clean-tone: the tone shift of G's output against the clean face, where the mask G is handed
    covers skin φ calls clean (the brush of --fill-mask runtime), and nowhere else."""
    y, xa, phi = _red_spots(2, seed=4)
    args = build_parser().parse_args(["--preset", "tiny", "--fill-mask", "runtime", "--clean-tone", "30", "--set", "mask_tophat_mm=4", "--set", "mask_gain=2"])
    model = RetouchFormer(ModelConfig.preset("tiny", mask_tophat_mm=4.0, mask_gain=2.0))
    torch.manual_seed(0)
    with torch.no_grad():
        out = GeneratorStep(model, args)(y, xa, phi, None, torch.tensor([True, True]))
    covered = ((out["used_mask"] > 0.9) & (phi <= 0.02)).float()
    assert covered.sum() > 50  # the brush reaches past the blemishes
    want = 30 * losses.tone_shift(out["y_hat"], y, covered, 2.0 * model.config.work_px_per_mm)
    assert out["clean_tone"].item() > 0 and torch.allclose(out["clean_tone"], want)
    paler = out["y_hat"] + 0.05 * covered  # a pale patch there costs more
    assert losses.tone_shift(paler, y, covered, 2.0 * model.config.work_px_per_mm) > want / 30 + 0.04
    with pytest.raises(SystemExit, match="--clean-tone"):
        train(_args(dataset, tmp_path / "m", 1, "--only", "mask", "--clean-tone", "10"))
    run = tmp_path / "r"
    train(_args(dataset, run, 1, "--clean-tone", "10"))
    assert "--clean-tone 10" in torch.load(run / "last.pt", weights_only=False)["history"][-1]["stage"]


def test_fill_mask_calibrated_keeps_phi_and_calibrates_the_prediction() -> None:
    y, xa, phi = _red_spots(2, seed=2)
    out, raw, model = _g_step("calibrated", y, xa, phi, torch.tensor([True, False]))
    used = out["used_mask"]
    assert torch.equal(used[0], phi[0])
    assert torch.allclose(used[1], model.calibrate(raw)[1]) and not torch.allclose(used[1], raw[1])
