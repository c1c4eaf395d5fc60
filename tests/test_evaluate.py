"""`retouch eval` end to end: held-out pairs, the three baselines, a model, JSON and the per-kind table."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.training import evaluate, metrics
from engine.training.data import eval_pairs, is_holdout
from engine.imageio import from_float, save_image
from engine.model import ModelConfig, RetouchFormer, save_model
from engine.training.synth import BLEMISH_KINDS, SynthConfig
from tests.test_synth import make_face


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    faces = root / "faces"
    faces.mkdir()
    i = held = 0
    while held < 2:  # two held-out portraits and one training portrait that must be ignored
        name = Path(f"face{i}.png")
        if is_holdout(name):
            save_image(faces / name, from_float(make_face(96, seed=i), np.uint8))
            held += 1
        elif not any(not is_holdout(p) for p in faces.iterdir()):
            save_image(faces / name, from_float(make_face(96, seed=i), np.uint8))
        i += 1
    torch.manual_seed(0)
    weights = save_model(RetouchFormer(ModelConfig.preset("tiny")), root / "tiny.safetensors")
    return {"faces": faces, "weights": weights, "root": root}


def test_eval_reports_model_and_baselines(setup, capsys) -> None:
    out = setup["root"] / "table.json"
    argv = ["--model", f"tiny={setup['weights']}", "--clean", str(setup["faces"]), "--count", "5", "--json", str(out), "--threads", "1"]
    assert evaluate.main(argv) == 0
    table = json.loads(out.read_text())
    assert table["_meta"]["images"] == 2 and table["_meta"]["px_per_mm"] == 0.5  # held-out only, at the model's scale
    assert set(table) == {"_meta", "input (untouched)", "bilateral skin smoothing", "spot healing (detect + inpaint)", "tiny"}
    pairs = list(eval_pairs(setup["faces"], 0.5, 5))
    expected = np.mean([metrics.psnr(raw, clean) for _, raw, clean, _ in pairs])
    assert table["input (untouched)"]["psnr"] == pytest.approx(expected)
    expected_de = np.mean([metrics.mean_delta_e(raw, clean, m > evaluate.BLEMISH_THRESHOLD) for _, raw, clean, m in pairs])
    assert table["input (untouched)"]["delta_e_blemish"] == pytest.approx(expected_de)
    assert table["input (untouched)"]["soft_iou"] is None  # no mask to score
    assert 0.0 <= table["tiny"]["soft_iou"] <= 1.0
    assert 0.0 <= table["spot healing (detect + inpaint)"]["soft_iou"] <= 1.0
    printed = capsys.readouterr().out
    assert "| tiny |" in printed and "| input (untouched) |" in printed


def test_paired_differences_image_by_image() -> None:
    """--against: the mean per-image difference, its 95 % interval, and the images a method wins;
    images without a figure on either side are left out, and a lower colour error counts as better."""
    table = {
        "_meta": {},
        "ref": {"per_image": {"psnr": [30.0, 31.0, 32.0, 33.0], "psnr_blemish": [20.0, None, 22.0, 23.0], "delta_e_blemish": [5.0, 5.0, 5.0, 5.0], "soft_iou": [None] * 4}},
        "a": {"per_image": {"psnr": [31.0, 31.5, 31.0, 35.0], "psnr_blemish": [21.0, 25.0, None, 24.0], "delta_e_blemish": [4.0, 6.0, 4.5, 4.0], "soft_iou": [0.2, 0.3, 0.1, 0.4]}},
    }
    d = evaluate.paired(table, "ref")
    assert list(d) == ["a"]  # the reference is not compared with itself
    psnr = d["a"]["psnr"]
    diffs = np.array([1.0, 0.5, -1.0, 2.0])
    assert psnr["mean"] == pytest.approx(diffs.mean()) and psnr["images"] == 4 and psnr["better"] == 3
    assert psnr["ci95"] == pytest.approx(1.96 * diffs.std(ddof=1) / 2.0)
    inside = d["a"]["psnr_blemish"]
    assert inside["images"] == 2 and inside["mean"] == pytest.approx(1.0) and inside["better"] == 2
    assert d["a"]["delta_e_blemish"]["better"] == 3  # lower is better for the colour error
    assert d["a"]["soft_iou"] is None  # the reference predicts no mask
    printed = evaluate.markdown_paired({"": d}, "ref")
    assert "| a | +0.62 ± " in printed and "(3/4 better)" in printed
    with pytest.raises(SystemExit, match="no method called"):
        evaluate.paired(table, "missing")
    one = evaluate.paired({k: {"per_image": {f: v[:1] for f, v in r["per_image"].items()}} for k, r in table.items() if k != "_meta"}, "ref")
    assert one["a"]["psnr"]["ci95"] is None  # one image gives no interval
    assert "| a | +1.00 (1/1 better) |" in evaluate.markdown_paired({"": one}, "ref")


def test_eval_against_a_reference(setup, capsys) -> None:
    out = setup["root"] / "against.json"
    base = ["--model", f"tiny={setup['weights']}", "--clean", str(setup["faces"]), "--count", "2", "--threads", "1"]
    with pytest.raises(SystemExit, match="no method called 'nope'"):  # refused before anything runs
        evaluate.main(base + ["--against", "nope"])
    assert evaluate.main(base + ["--against", "input (untouched)", "--json", str(out)]) == 0
    table = json.loads(out.read_text())
    assert table["_paired"]["against"] == "input (untouched)"
    diffs = table["_paired"]["table"]
    assert set(diffs) == {"bilateral skin smoothing", "spot healing (detect + inpaint)", "tiny"}
    for name, row in diffs.items():  # every image has a whole-image PSNR: mean of differences = difference of means
        assert row["psnr"]["images"] == 2
        assert row["psnr"]["mean"] == pytest.approx(table[name]["psnr"] - table["input (untouched)"]["psnr"])
    assert len(table["tiny"]["per_image"]["psnr"]) == 2
    assert "| difference from input (untouched), image by image |" in capsys.readouterr().out


def test_eval_by_kind(setup, capsys) -> None:
    out = setup["root"] / "kinds.json"
    argv = ["--model", f"tiny={setup['weights']}", "--clean", str(setup["faces"]), "--count", "2", "--json", str(out), "--no-baselines", "--by-kind"]
    assert evaluate.main(argv) == 0
    kinds = json.loads(out.read_text())["_by_kind"]
    assert list(kinds) == list(BLEMISH_KINDS)
    for kind, table in kinds.items():
        assert set(table) == {"_meta", "tiny"}, kind
    printed = capsys.readouterr().out
    assert all(f"| {k} | tiny |" in printed for k in BLEMISH_KINDS)
    # the per-kind pairs really hold only that kind: papules alone differ from dark spots alone
    a = next(eval_pairs(setup["faces"], 0.5, 1, synth=SynthConfig.only("papules")))
    b = next(eval_pairs(setup["faces"], 0.5, 1, synth=SynthConfig.only("dark_spots")))
    assert not np.array_equal(a[3], b[3])


def test_eval_with_the_true_mask_against_classical_healing(setup, capsys) -> None:
    """Every method is handed the exact mask. The untrained model (G's output layer is zero)
    returns exactly its anchor, the classical fill: both rows agree."""
    out = setup["root"] / "true.json"
    argv = ["--model", f"tiny={setup['weights']}", "--clean", str(setup["faces"]), "--count", "2", "--true-mask", "--json", str(out)]
    assert evaluate.main(argv) == 0
    table = json.loads(out.read_text())
    assert table["_meta"]["true_mask"] is True
    assert {"Telea inpainting", "median blend", "classical fill (the model's anchor)", "frequency-separation heal", "tiny"} < set(table)
    anchor, model = table["classical fill (the model's anchor)"], table["tiny"]
    assert model["psnr_blemish"] == pytest.approx(anchor["psnr_blemish"], abs=0.01)
    assert model["delta_e_blemish"] == pytest.approx(anchor["delta_e_blemish"], abs=0.01)
    assert model["soft_iou"] is None  # handed the mask, it predicts none
    # classical healing changes the blemishes: no method is exactly the input there
    assert all(table[k]["psnr_blemish"] != table["input (untouched)"]["psnr_blemish"] for k in ("Telea inpainting", "median blend"))
    assert "| Telea inpainting |" in capsys.readouterr().out


def test_eval_at_face_sizes_runs_the_whole_pipeline(setup, capsys) -> None:
    out = setup["root"] / "sizes.json"
    argv = ["--model", f"tiny={setup['weights']}", "--clean", str(setup["faces"]), "--count", "1", "--face-size", "60,120", "--json", str(out), "--against", "input (untouched)"]
    assert evaluate.main(argv) == 0
    tables = json.loads(out.read_text())["_face_sizes"]
    paired = json.loads(out.read_text())["_paired"]["face_sizes"]
    assert list(paired) == ["60", "120"] and all(list(p) == ["tiny"] for p in paired.values())
    assert list(tables) == ["60", "120"]
    small, large = tables["60"], tables["120"]
    assert large["_meta"]["image_side"] >= 1.8 * small["_meta"]["image_side"]
    for t in (small, large):
        assert set(t) == {"_meta", "input (untouched)", "tiny"}
        assert 0.0 <= t["tiny"]["soft_iou"] <= 1.0 and t["input (untouched)"]["soft_iou"] is None
    printed = capsys.readouterr().out
    assert "| 60 |" in printed and "| 120 |" in printed
    assert "| face width (px) | difference from input (untouched), image by image |" in printed and "| 120 | tiny |" in printed
    with pytest.raises(SystemExit):
        evaluate.main(["--face-size", "big", "--clean", str(setup["faces"])])


def test_calibrate_picks_a_mask_floor_on_validation_faces(setup, capsys, tmp_path) -> None:
    from engine.model import load_model
    from engine.training import calibrate

    out = tmp_path / "calibrated.safetensors"
    assert calibrate.main([str(setup["weights"]), "--clean", str(setup["faces"]), "--count", "2", "--offset", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    chosen = printed.split("chosen: top-hat ")[1].split("\n")[0]  # "8 mm, floor 0.00, gain 1.00, dilation 0.0 mm"
    tophat, floor, gain = float(chosen.split(" mm")[0]), float(chosen.split("floor ")[1].split(",")[0]), float(chosen.split("gain ")[1].split(",")[0])
    assert chosen.endswith("dilation 0.0 mm")
    assert printed.count("\n| ") == len(calibrate.FLOORS) * len(calibrate.TOPHATS_MM) * len(calibrate.GAINS) + 1  # the untouched photos, one row per setting
    model = load_model(out)
    assert (model.config.mask_tophat_mm, model.config.mask_floor, model.config.mask_gain) == (tophat, floor, gain) and gain == 1.0
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        raw = torch.sigmoid(model.mask_logits(x, model.encode(x).recon, ema=True))
        torch.testing.assert_close(model.encode(x).mask, model.calibrate(raw, floor, tophat))
    # the top-hat takes away a broad haze and keeps a spot standing out of it
    spot = torch.full((1, 1, 64, 64), 0.3)
    spot[..., 30:34, 30:34] = 0.9
    top = model.calibrate(spot, 0.0, 8.0 / model.config.work_px_per_mm)
    assert top[0, 0, 0, 0] == 0 and top[0, 0, 31, 31] > 0.8


def test_calibration_grid_can_be_narrowed_and_a_gain_strengthens_the_mask(setup, capsys, tmp_path) -> None:
    from engine.model import load_model
    from engine.training import calibrate

    out = tmp_path / "gain.safetensors"
    args = [str(setup["weights"]), "--clean", str(setup["faces"]), "--count", "2", "--offset", "0", "--out", str(out)]
    assert calibrate.main(args + ["--tophats", "0", "--floors", "0", "--gains", "1,2,3"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 0 | 0.00 |")]
    assert [line.split(" | ")[2] for line in rows] == ["1.00", "2.00", "3.00"]  # exactly the settings asked for
    model = load_model(out)
    assert model.config.mask_gain in (1.0, 2.0, 3.0) and model.config.mask_tophat_mm == 0.0
    # the gain multiplies what the top-hat and floor leave, clipped at 1; a mask of 0 stays 0
    m = torch.tensor([0.0, 0.1, 0.3, 0.6]).reshape(1, 1, 2, 2)
    torch.testing.assert_close(model.calibrate(m, 0.0, 0.0, 2.0), torch.tensor([0.0, 0.2, 0.6, 1.0]).reshape(1, 1, 2, 2))
    with pytest.raises(SystemExit):
        calibrate.main(args + ["--gains", "0.5"])
    with pytest.raises(ValueError, match="mask_gain"):
        type(model.config).preset("tiny", mask_gain=0.5)


def test_a_calibrated_dilation_spreads_a_spots_strength_over_its_rim(setup, capsys, tmp_path) -> None:
    from engine.model import load_model
    from engine.training import calibrate

    out = tmp_path / "dilated.safetensors"
    args = [str(setup["weights"]), "--clean", str(setup["faces"]), "--count", "2", "--offset", "0", "--out", str(out)]
    assert calibrate.main(args + ["--tophats", "0", "--floors", "0", "--gains", "1", "--dilates", "0,2"]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| 0 | 0.00 | 1.00 |")]
    assert [line.split(" | ")[3] for line in rows] == ["0.0", "2.0"]  # one row per dilation asked for
    model = load_model(out)
    chosen = float(printed.split("dilation ")[-1].split(" mm")[0])
    assert model.config.mask_dilate_mm == chosen and chosen in (0.0, 2.0)
    # a 2-px spot of 0.8 with a rim of 0.3: the dilation carries the core's 0.8 out as far as it
    # reaches and no further, and never weakens any pixel
    ppm = model.config.work_px_per_mm
    m = torch.zeros(1, 1, 32, 32)
    m[..., 10:22, 10:22] = 0.3
    m[..., 15:17, 15:17] = 0.8
    r = 3
    d = model.calibrate(m, 0.0, 0.0, 1.0, r / ppm)
    assert torch.all(d >= m)
    assert torch.all(d[..., 15 - r:17 + r, 15 - r:17 + r] == 0.8)
    assert d[0, 0, 15 - r - 1, 16] == pytest.approx(0.3) and d[0, 0, 5, 5] == 0
    torch.testing.assert_close(model.calibrate(m, 0.0, 0.0, 1.0, 0.0), m)
    with pytest.raises(SystemExit):
        calibrate.main(args + ["--dilates", "-1"])
    with pytest.raises(ValueError, match="mask_dilate_mm"):
        type(model.config).preset("tiny", mask_dilate_mm=-1.0)


def test_calibration_choice_never_harms_the_whole_photo() -> None:
    from engine.training.calibrate import LEVEL_DB, choose

    untouched = (41.0, 25.0)
    table = {(0.0, 0.0): (40.0, 29.0, 0.3),   # best inside, but worse than untouched overall
             (4.0, 0.0): (41.5, 27.0, 0.2),   # safe, more taken out of the blemishes
             (8.0, 0.0): (42.0, 26.0, 0.1)}   # safest, but leaves more of them
    assert choose(table, untouched) == (4.0, 0.0)
    # a setting level in the blemishes (within LEVEL_DB) that leaves the whole photo better wins
    level = {**table, (12.0, 0.0): (41.2, 27.0 + 0.5 * LEVEL_DB, 0.2)}
    assert choose(level, untouched) == (4.0, 0.0)
    # one clearly ahead in the blemishes still wins over a better whole photo
    ahead = {**table, (12.0, 0.0): (41.2, 27.0 + 2 * LEVEL_DB, 0.2)}
    assert choose(ahead, untouched) == (12.0, 0.0)
    # nothing safe: the best sum of the two
    assert choose({k: (v[0] - 5, v[1], v[2]) for k, v in table.items()}, untouched) == (0.0, 0.0)


def _validation(cand_in: float, cand_whole: float, whole_diff: tuple[float, float] | None) -> dict:
    """validation.json as ship_weights.sh writes it (one face width, the candidate against the bundled weights)."""
    table = {
        "input (untouched)": {"psnr": 44.0, "psnr_blemish": 25.5},
        "bundled": {"psnr": 45.0, "psnr_blemish": 27.7},
        "candidate": {"psnr": cand_whole, "psnr_blemish": cand_in},
        "_meta": {"images": 40},
    }
    paired = {}
    if whole_diff is not None:
        paired = {"face_sizes": {"400": {"candidate": {"psnr": {"mean": whole_diff[0], "ci95": whole_diff[1], "images": 40, "better": 10}}}}}
    return {"_face_sizes": {"400": table}, "_paired": paired}


@pytest.mark.parametrize(
    "cand_in, cand_whole, whole_diff, true_cand, wins",
    [
        (27.9, 45.1, (0.1, 0.2), 29.8, True),     # more out of the blemishes both ways, the whole photo level
        (27.6, 45.1, (0.1, 0.2), 29.8, False),    # less out of the blemishes through the pipeline
        (27.9, 45.1, (0.1, 0.2), 29.6, False),    # less with the exact mask
        (27.9, 45.1, (0.1, 0.2), 29.7, True),     # the same with the exact mask (a mask-only stage leaves the fill as it was)
        (27.9, 43.9, (-1.1, 0.3), 29.8, False),   # the whole photo worse than untouched
        (27.9, 44.6, (-0.4, 0.24), 29.8, False),  # the whole photo worse than the bundled weights beyond the noise
        (27.9, 44.9, (-0.1, 0.24), 29.8, True),   # ... within it
        (27.9, 44.9, None, 29.8, True),           # no image-by-image table: that condition is not judged
    ],
)
def test_ship_verdict(tmp_path, capsys, cand_in, cand_whole, whole_diff, true_cand, wins) -> None:
    from engine.training import ship

    (tmp_path / "validation.json").write_text(json.dumps(_validation(cand_in, cand_whole, whole_diff)))
    (tmp_path / "validation_true_mask_bundled.json").write_text(json.dumps({"bundled": {"psnr_blemish": 29.7}}))
    (tmp_path / "validation_true_mask_candidate.json").write_text(json.dumps({"candidate": {"psnr_blemish": true_cand}}))
    assert ship.main([str(tmp_path)]) == (0 if wins else ship.LOSES)
    printed = capsys.readouterr().out
    assert ("FAILS" in printed) is not wins
    assert ("do not ship it" in printed) is not wins


def test_ship_verdict_needs_the_validation_tables(tmp_path) -> None:
    from engine.training import ship

    with pytest.raises(SystemExit, match="validation.json is missing"):
        ship.main([str(tmp_path)])
    (tmp_path / "validation.json").write_text("{not json")
    with pytest.raises(SystemExit, match="cannot be read"):
        ship.main([str(tmp_path)])


def test_the_brush_benchmarks_tone_spread_sees_blotches_not_grain(monkeypatch) -> None:
    """brush_lightness.py's evenness figure: skin grain finer than its 0.5-mm Gaussian barely
    counts, nor does the face's shading; brown dots 1.5 mm wide (a blotchy fill) raise it, and an even
    fill lowers it."""
    import cv2

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent / "bench"))
    from brush_lightness import spread

    px_per_mm = 4.0
    rng = np.random.default_rng(0)
    skin = np.full((120, 120, 3), (200, 150, 130), np.float32)
    grain = skin + rng.normal(0, 6, skin.shape[:2])[..., None]  # pores: one-pixel noise
    blotchy = grain.copy()
    for y, x in rng.integers(10, 110, (60, 2)):
        cv2.circle(blotchy, (int(x), int(y)), 3, (170, 120, 90), -1)  # brown dots 1.5 mm wide
    region = np.ones(skin.shape[:2], bool)
    as_u8 = lambda a: np.clip(a, 0, 255).astype(np.uint8)  # noqa: E731
    flat, grainy, dots = (spread(as_u8(a), region, px_per_mm) for a in (skin, grain, blotchy))
    assert flat == pytest.approx(0.0, abs=1e-3)
    assert grainy < 1.0 < dots  # ΔE: grain below what an eye sees at 100 %, the dots above
    assert dots > 1.5 * spread(as_u8(cv2.GaussianBlur(blotchy, (0, 0), 4)), region, px_per_mm)  # evened out
    shaded = skin - np.linspace(0, 60, 120, dtype=np.float32)[None, :, None]  # the face turning away from the light
    assert spread(as_u8(shaded), region, px_per_mm) < 0.5


def test_the_far_brush_benchmark_brushes_skin_away_from_the_spots_and_leaves_the_hold_as_it_was(app_retoucher, make_portrait, monkeypatch) -> None:
    """brush_far.py: its disc (12 mm across) lies on the face, on skin, away from every spot the
    mask net found; its four fills differ only under the disc's footprint, and the program's column
    is what ``Retoucher.render`` gives with the hold as shipped, which the script puts back after
    turning parts of it off (the border match, then the whole hold) for the other columns."""
    import cv2

    import engine.model.fill as fill
    from app.maskedit import paint

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent / "bench"))
    from brush_far import FILLS, fills, place_disc

    r = app_retoucher
    img, _ = make_portrait(1024, 768, seed=0)
    a = r.analyze(img)
    ppm = a.plan.px_per_mm
    disc, (cx, cy), far = place_disc(img, a)
    x0, y0, x1, y1 = [g for g in a.plan.regions if g.kind == "face"][0].box
    assert x0 <= cx < x1 and y0 <= cy < y1
    inside = disc > 0.5
    assert abs(inside.sum() / (np.pi * (6.0 * ppm) ** 2) - 1.0) < 0.15
    assert far > 3.0 and a.mask[inside].max() < 0.15
    match, sigma = fill.border_match, r.tone_sigma
    outs = fills(r, img, a, disc)
    assert list(outs) == list(FILLS) and fill.border_match is match and r.tone_sigma == sigma
    program = r.composite(img, r.render(a, paint(a.mask, disc)), 1.0)
    assert np.array_equal(outs[FILLS[0]], program)
    plain = r.composite(img, r.render(a, a.mask.copy()), 1.0)
    away = cv2.dilate((disc > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) == 0
    for out in outs.values():
        assert np.array_equal(out[away], plain[away] if out is not outs[FILLS[3]] else img[away])
