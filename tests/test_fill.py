"""The classical fill G is anchored on: right colour, skin texture kept, and the untrained model returns it."""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import torch

from engine.model import ModelConfig, RetouchFormer
from engine.model.fill import TEXTURE_MM, anchor_fill, anchor_fill_np, gaussian_blur, push_pull, source_weight
from engine.skin import foreign_colour_t
from engine.training.metrics import mean_delta_e, srgb_to_lab


def _skin_with_spot(seed: int = 0, size: int = 96) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Textured skin (pores), the same skin with a red papule, and the papule's mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = np.stack([0.80 + 0.0008 * xx, 0.62 + 0.0005 * yy, 0.54 * np.ones_like(xx)], -1)
    grain = cv2.GaussianBlur(rng.normal(0, 0.03, (size, size)).astype(np.float32), (0, 0), 0.7)[..., None]
    clean = np.clip(base + grain, 0, 1).astype(np.float32)
    d = np.sqrt((yy - size / 2) ** 2 + (xx - size / 2) ** 2)
    alpha = np.clip(1.2 - d / 6.0, 0, 1).astype(np.float32)
    red = clean * np.array([0.95, 0.65, 0.68], np.float32)
    raw = clean + alpha[..., None] * (red - clean)
    return clean, raw.astype(np.float32), alpha


def test_push_pull_keeps_known_pixels_and_fills_holes_smoothly() -> None:
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(1, 3, 64, 64).contiguous()
    w = torch.ones(1, 1, 64, 64)
    w[..., 24:40, 24:40] = 0
    out = push_pull(ramp, w)
    assert torch.equal(out[w.expand_as(out) == 1], ramp[w.expand_as(ramp) == 1])
    hole = (out - ramp)[..., 24:40, 24:40]
    assert hole.abs().max() < 0.08  # a hole in a ramp is filled close to the ramp


def test_filled_spot_has_the_colour_of_the_skin_around_it() -> None:
    """No pale, yellow or grey patch: the filled papule matches the clean skin (CIEDE2000 below 2,
    about the smallest difference a viewer notices; lightness within 1.5 units), where the blemished
    photo is far off."""
    clean, raw, alpha = _skin_with_spot()
    fill = anchor_fill_np(raw, alpha)
    spot = alpha > 0.5
    assert mean_delta_e(raw, clean, spot) > 8.0
    assert mean_delta_e(fill, clean, spot) < 2.0
    lab = lambda im: srgb_to_lab(im)[spot].mean(axis=0)  # noqa: E731
    assert abs(lab(fill)[0] - lab(clean)[0]) < 1.5
    # blended in through a mask that covers the spot, nothing of it is left
    brushed = cv2.dilate(spot.astype(np.float32), np.ones((5, 5), np.uint8))
    out = raw + brushed[..., None] * (anchor_fill_np(raw, brushed) - raw)
    assert mean_delta_e(out, clean, spot) < 2.0


def _rgb(*colours: tuple[float, float, float]) -> torch.Tensor:
    return torch.tensor(colours, dtype=torch.float32).T.reshape(1, 3, 1, -1)


def test_no_skin_has_the_colours_a_fill_leaves_out_whatever_the_light() -> None:
    """Skin under daylight, tungsten (orange), shade (cool) and flash, pale to dark, and a red
    papule are never foreign; a white collar, a grey wall, black hair, a blue shirt and green
    leaves always are."""
    skin = _rgb((0.87, 0.68, 0.58), (0.55, 0.36, 0.25), (0.30, 0.19, 0.13), (0.95, 0.62, 0.25),
                (0.72, 0.66, 0.68), (0.96, 0.90, 0.86), (0.80, 0.40, 0.40))
    other = _rgb((0.95, 0.95, 0.94), (0.55, 0.56, 0.58), (0.08, 0.06, 0.05), (0.20, 0.30, 0.60), (0.25, 0.55, 0.20))
    assert not foreign_colour_t(skin).any()
    assert foreign_colour_t(other).all()


def _skin_above_collar(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Textured skin with a white collar along the bottom (rows 70 on) and a brushed patch that
    reaches down to the collar (rows 50-69)."""
    clean, _, _ = _skin_with_spot(size=size)
    img = clean.copy()
    img[70:] = np.array([0.95, 0.95, 0.94], np.float32)
    mask = np.zeros((size, size), np.float32)
    mask[50:70, 30:66] = 1.0
    return img, mask


def test_a_fill_beside_a_white_collar_takes_the_colour_of_the_skin() -> None:
    """The brushed patch above a collar is filled with the skin's colour, not paled towards the
    white (what classical push-pull and the model's anchor did before: a pale patch)."""
    img, mask = _skin_above_collar()
    fill = anchor_fill_np(img, mask)
    patch = mask > 0.5
    lab = lambda im: srgb_to_lab(im)[patch].mean(axis=0)  # noqa: E731
    skin_only = img.copy()
    skin_only[70:] = img[44:70][::-1]  # the same skin mirrored where the collar was
    assert abs(lab(fill)[0] - lab(skin_only)[0]) < 1.5
    assert mean_delta_e(fill, skin_only, patch) < 2.0
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    w = source_weight(x)
    assert float(w[..., 75:, :].max()) == 0.0 and float(w[..., :65, :].min()) == 1.0


def test_in_an_image_without_skin_every_pixel_is_a_source() -> None:
    """A grey-and-blue image with no skin at all (or a cast no rule takes) fills as before: from
    every pixel around, not from nothing."""
    rng = np.random.default_rng(3)
    img = np.clip(0.5 + rng.normal(0, 0.005, (64, 64, 3)), 0, 1).astype(np.float32)
    img[:, 32:] = np.array([0.2, 0.3, 0.6], np.float32)
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    assert torch.equal(source_weight(x), torch.ones_like(x[:, :1]))
    mask = np.zeros((64, 64), np.float32)
    mask[24:40, 8:24] = 1.0
    fill = anchor_fill_np(img, mask)
    assert np.abs(fill[26:38, 10:22] - 0.5).max() < 0.06


def test_fill_keeps_skin_texture_inside_a_brushed_area() -> None:
    """A brushed area over clean skin keeps its grain (no flat, plastic patch)."""
    clean, _, _ = _skin_with_spot()
    mask = np.zeros(clean.shape[:2], np.float32)
    mask[30:66, 30:66] = 1.0
    out = anchor_fill_np(clean, mask)

    def grain(im):
        g = cv2.cvtColor(im, cv2.COLOR_RGB2GRAY)
        return (g - cv2.GaussianBlur(g, (0, 0), 1.5))[34:62, 34:62].std()

    assert grain(out) > 0.6 * grain(clean)


def test_untrained_model_returns_the_classical_fill() -> None:
    """G's output layer starts at zero: with a mask, the model's result is the classical fill
    blended in through the mask, and pixels outside the mask are the input."""
    torch.manual_seed(0)
    model = RetouchFormer(ModelConfig.preset("tiny")).eval()
    clean, raw, alpha = _skin_with_spot(size=64)
    x = torch.from_numpy(raw).permute(2, 0, 1)[None]
    m = torch.from_numpy(alpha)[None, None]
    with torch.inference_mode():
        out = model(x, m).image
        expected = x + m * (anchor_fill(x, m, TEXTURE_MM * model.config.work_px_per_mm) - x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert torch.equal(out[m.expand_as(out) == 0], x[m.expand_as(x) == 0])


def test_colour_lock_keeps_the_fill_colour_and_lets_texture_through() -> None:
    """With ``colour_lock_mm`` G cannot move the local colour of the fill (no paler or yellower
    patches): a uniform correction from G is taken away entirely, fine detail passes."""
    torch.manual_seed(0)
    model = RetouchFormer(ModelConfig.preset("tiny")).eval()
    assert model.config.colour_lock_mm > 0
    clean, raw, alpha = _skin_with_spot(size=64)
    x = torch.from_numpy(raw).permute(2, 0, 1)[None]
    m = torch.from_numpy(alpha)[None, None]
    with torch.inference_mode():
        fill = anchor_fill(x, m, TEXTURE_MM * model.config.work_px_per_mm)
        model.synthesis.out.bias.copy_(torch.tensor([0.08, 0.06, 0.02]))  # "lighter, yellower"
        locked = model.synthesize(model.encode(x), m)[1]
        torch.testing.assert_close(locked, fill, atol=1e-5, rtol=0)
        free = RetouchFormer(dataclasses.replace(model.config, colour_lock_mm=0.0)).eval()
        free.load_state_dict(model.state_dict())
        assert (free.synthesize(free.encode(x), m)[1] - fill).mean() > 0.04  # without the lock: a pale patch
        # fine detail (a checkerboard correction) goes through the lock almost unchanged
        model.synthesis.out.bias.zero_()
        model.synthesis.out.weight.zero_()
        y = model.synthesis
        checker = ((torch.arange(64)[:, None] + torch.arange(64)[None]) % 2).float() * 0.1 - 0.05
        hp = checker - gaussian_blur(checker[None, None], y.lock_sigma)[0, 0]
        assert (hp - checker).abs().mean() < 0.2 * checker.abs().mean()


def _blushed_cluster(size: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Textured skin that is redder and darker in the middle (a flushed cheek), five red papules on
    the flush, a brush over the whole cluster; (clean, raw, brush, each papule's mask)."""
    clean, _, _ = _skin_with_spot(seed=3, size=size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2
    flush = np.exp(-((yy - c) ** 2 + (xx - c) ** 2) / (2 * 30.0**2))[..., None]
    clean = np.clip(clean * (1.0 - flush * np.array([0.08, 0.24, 0.20], np.float32)), 0, 1).astype(np.float32)
    raw, spots = clean.copy(), []
    for sy, sx in ((c - 14, c - 12), (c + 10, c - 16), (c, c + 4), (c - 18, c + 16), (c + 16, c + 14)):
        alpha = np.clip(1.2 - np.sqrt((yy - sy) ** 2 + (xx - sx) ** 2) / 4.0, 0, 1).astype(np.float32)
        raw = raw + alpha[..., None] * (clean * np.array([0.95, 0.65, 0.68], np.float32) - raw)
        spots.append(alpha)
    brush = np.zeros((size, size), np.float32)
    brush[int(c) - 34 : int(c) + 34, int(c) - 34 : int(c) + 34] = 1.0
    brush = cv2.GaussianBlur(brush, (0, 0), 1.5)
    return clean, raw.astype(np.float32), brush, spots


def test_clean_skin_under_a_broad_brush_keeps_its_tone_and_the_spots_are_still_filled() -> None:
    """The fill of a broad brush takes the border's colour: over a flushed cheek, a pale patch.
    The tone hold puts the photo's own tone back on the clean skin under the brush (within 0.5 L*,
    where the plain fill is over 1 L* off), and the papules, which the mask net marks, come out
    closer to the clean skin than with the plain fill."""
    from engine.model.fill import TONE_MM, hold_tone_np

    clean, raw, brush, spots = _blushed_cluster()
    pred = np.maximum.reduce(spots)
    sigma = TONE_MM * 1.6
    fill = anchor_fill_np(raw, brush)
    held = hold_tone_np(raw, fill, brush, pred, sigma)
    blend = lambda synth: raw + brush[..., None] * (synth - raw)  # noqa: E731
    between = (brush > 0.9) & (pred < 0.02)
    L = lambda im: srgb_to_lab(im)[..., 0]  # noqa: E731
    assert abs(L(blend(fill))[between].mean() - L(clean)[between].mean()) > 1.0
    assert abs(L(blend(held))[between].mean() - L(clean)[between].mean()) < 0.5
    spot = pred > 0.5
    assert mean_delta_e(raw, clean, spot) > 8.0
    assert mean_delta_e(blend(held), clean, spot) < min(2.0, mean_delta_e(blend(fill), clean, spot))
    # outside the brush nothing changes once blended in, and a fill that is already right stays so
    assert np.array_equal(blend(held)[brush == 0], raw[brush == 0])
    same = hold_tone_np(clean, clean, brush, np.zeros_like(pred), sigma)
    assert np.abs(same - clean).max() < 1e-5


def test_a_spot_the_mask_net_missed_is_still_filled_under_the_tone_hold() -> None:
    """A photographer brushes over a papule the mask net did not see: its own colour is a local
    outlier of the photo and hardly enters the tone, so it is filled as without the hold."""
    from engine.model.fill import TONE_MM, hold_tone_np

    clean, raw, brush, spots = _blushed_cluster()
    pred = np.maximum.reduce(spots[1:])  # the first papule missed
    held = hold_tone_np(raw, anchor_fill_np(raw, brush), brush, pred, TONE_MM * 1.6)
    out = raw + brush[..., None] * (held - raw)
    missed = spots[0] > 0.5
    assert mean_delta_e(raw, clean, missed) > 8.0
    plain = raw + brush[..., None] * (anchor_fill_np(raw, brush) - raw)
    assert mean_delta_e(out, clean, missed) < min(2.0, mean_delta_e(plain, clean, missed) + 0.5)


def test_a_brush_over_skin_with_no_spot_found_evens_it_out() -> None:
    """A brush over a flush (or an under-eye circle) in which the mask net found no spot: its tone
    is off the skin's around the brush, so the tone hold stays out of the way there, and the brush
    replaces the flush with the skin around it."""
    from engine.model.fill import TONE_MM, hold_tone_np

    clean, _, brush, _ = _blushed_cluster()  # the flushed skin without its papules
    fill = anchor_fill_np(clean, brush)
    held = hold_tone_np(clean, fill, brush, np.zeros(brush.shape, np.float32), TONE_MM * 1.6)
    flush = np.s_[54:74, 54:74]  # the middle of the flush, 0.1-0.15 off the skin around the brush
    assert np.abs(held[flush] - fill[flush]).max() < 0.005
    centre = brush > 0.9
    L = lambda im: srgb_to_lab(im)[..., 0]  # noqa: E731
    assert L(clean + brush[..., None] * (held - clean))[centre].mean() > L(clean)[centre].mean() + 1.0  # evened: lighter
    assert L(clean + brush[..., None] * (held - clean))[flush].mean() > L(clean)[flush].mean() + 2.5


def test_the_tone_hold_applies_only_where_keep_lets_it() -> None:
    """``keep`` scales the hold pixel by pixel: 0 leaves the fill as it comes (the program passes
    0 below the eyes), 1 is the hold in full, as without ``keep``; in between, part of the way."""
    from engine.model.fill import TONE_MM, hold_tone_np

    _, raw, brush, spots = _blushed_cluster()
    pred = np.maximum.reduce(spots)
    sigma = TONE_MM * 1.6
    fill = anchor_fill_np(raw, brush)
    held = hold_tone_np(raw, fill, brush, pred, sigma)
    assert np.abs(held - fill).max() > 0.02  # the hold moves this fill
    ones, zeros = np.ones(brush.shape, np.float32), np.zeros(brush.shape, np.float32)
    assert np.abs(hold_tone_np(raw, fill, brush, pred, sigma, ones) - held).max() < 1e-6
    assert np.abs(hold_tone_np(raw, fill, brush, pred, sigma, zeros) - fill).max() < 1e-6
    keep = ones.copy()
    keep[:, : brush.shape[1] // 2] = 0.0  # the hold off on the left half only
    part = hold_tone_np(raw, fill, brush, pred, sigma, keep)
    left, right = np.s_[:, : brush.shape[1] // 2], np.s_[:, brush.shape[1] // 2 :]
    assert np.abs(part[left] - fill[left]).max() < 1e-6 and np.abs(part[right] - held[right]).max() < 1e-6
    half = hold_tone_np(raw, fill, brush, pred, sigma, ones * 0.5)
    np.testing.assert_allclose(half, np.clip(fill + 0.5 * (held - fill), 0, 1), atol=1e-5)


def test_a_hazy_prediction_lets_go_of_the_tone_unless_the_hold_reads_it_without_the_haze() -> None:
    """A mask net trained through the fill lays a haze (0.5 here) over a whole cluster of spots: the
    hold, reading it as blemish, lets the clean skin under a broad brush take the border's tone
    (over 1 L* off). Read with the haze under the peaks taken away (RetouchFormer.tophat, as the
    program does with ModelConfig.hold_tophat_mm), the tone holds again (within 0.5 L*)."""
    from engine.model.fill import TONE_MM, hold_tone_np

    clean, raw, brush, spots = _blushed_cluster()
    pred = np.maximum.reduce(spots)
    hazy = np.maximum(pred, cv2.GaussianBlur(0.5 * (brush > 0.5).astype(np.float32), (0, 0), 6.0)).astype(np.float32)
    model = RetouchFormer(ModelConfig.preset("small"))
    with torch.inference_mode():
        read = model.tophat(torch.from_numpy(hazy)[None, None], 12.0)[0, 0].numpy()
    assert read[pred > 0.5].mean() > 0.3 and read[(brush > 0.9) & (pred < 0.02)].mean() < 0.05  # spots kept, haze gone
    sigma = TONE_MM * 1.6
    fill = anchor_fill_np(raw, brush)
    between = (brush > 0.9) & (pred < 0.02)
    L = lambda im: srgb_to_lab(im)[..., 0]  # noqa: E731

    def off(p: np.ndarray) -> float:
        held = hold_tone_np(raw, fill, brush, p, sigma)
        return abs(L(raw + brush[..., None] * (held - raw))[between].mean() - L(clean)[between].mean())

    assert off(hazy) > 1.0 and off(read) < 0.5
    # the top-hat leaves a prediction with no haze nearly as it is (the shipped weights' case)
    with torch.inference_mode():
        again = model.tophat(torch.from_numpy(pred)[None, None], 12.0)[0, 0].numpy()
    assert np.abs(again - pred).max() < 0.02


def test_the_tone_hold_reaches_the_spots_found_and_skin_that_matches_the_brush_border() -> None:
    """``hold_reach`` is 1 at and around a spot the mask net found and 0 far from it. A fill paler
    than the skin along a long brush: next to the spot, the photo's tone comes back; far from it,
    too, where the photo's tone matches the skin around the brush (``border_match``: clean skin),
    but not over a flush at the far end, which the brush is to even out."""
    from engine.model.fill import TONE_MM, border_match, gaussian_blur, hold_reach, hold_tone_np

    sigma = TONE_MM * 1.6
    h, w = 96, 240  # a long brush over the upper third
    pred = np.zeros((h, w), np.float32)
    pred[20:28, 20:28] = 0.9  # one spot found, at the left end
    reach = hold_reach(torch.from_numpy(pred)[None, None], sigma)[0, 0].numpy()
    assert reach.min() >= 0.0 and reach.max() <= 1.0
    assert reach[24, 24] == 1.0 and reach[24, 36] == 1.0  # the spot and 5 mm around it
    assert reach[24, 60:].max() == 0.0  # from 20 mm out, none
    none = hold_reach(torch.zeros(1, 1, h, w), sigma)
    assert float(none.max()) == 0.0
    rng = np.random.default_rng(3)
    x = np.clip(np.array([0.72, 0.56, 0.48], np.float32) + rng.normal(0, 0.01, (h, w, 3)), 0, 1).astype(np.float32)  # skin
    fill = np.clip(x + 0.05, 0, 1).astype(np.float32)  # a fill paler than the skin all along
    brush = np.zeros((h, w), np.float32)
    brush[8:40, 8:232] = 1.0
    held = hold_tone_np(x, fill, brush, pred, sigma)
    assert np.abs(held[24, 28:37] - x[24, 28:37]).mean() < 0.01  # next to the spot: the photo's tone
    assert np.abs(held[24, 80:230] - x[24, 80:230]).mean() < 0.01  # far from it, clean skin: the same
    # a flush at the far end, 0.12 off the skin around the brush in green and blue
    ramp = np.clip((np.arange(w, dtype=np.float32) - 150.0) / 20.0, 0.0, 1.0)
    flushed = np.clip(x - (brush * ramp)[..., None] * np.array([0.0, 0.12, 0.10], np.float32), 0, 1).astype(np.float32)
    photo = torch.from_numpy(flushed).permute(2, 0, 1)[None]
    match = border_match(photo, gaussian_blur(photo, sigma), torch.from_numpy(brush)[None, None], sigma)[0, 0].numpy()
    assert match[24, 80:120].min() > 0.9 and match[24, 180:220].max() < 0.05
    held = hold_tone_np(flushed, fill, brush, pred, sigma)
    assert np.abs(held[24, 80:120] - flushed[24, 80:120]).mean() < 0.01  # clean skin: the photo's tone
    assert np.abs(held[24, 180:220] - fill[24, 180:220]).max() < 0.005  # the flush: the fill as it comes
