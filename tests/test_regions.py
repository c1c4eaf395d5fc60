"""Region planning: the working scale comes from the faces (or the user), every skin area is covered."""
from __future__ import annotations

import numpy as np
import pytest

from engine import regions as rg
from tests.test_pipeline import fake_face

WORK = 1.6  # px/mm the model works at


def test_face_scale_sets_the_working_resolution() -> None:
    """The same face twice as large in the photo runs on a crop twice as large (photo pixels)
    at the same working resolution: a blemish reaches the model at the same size."""
    small = rg.plan_regions((2000, 3000), [fake_face((1000, 600, 1280, 880))], WORK, skin=np.zeros((4, 6), bool))
    large = rg.plan_regions((4000, 6000), [fake_face((2000, 1200, 2560, 1760))], WORK, skin=np.zeros((4, 6), bool))
    (fs,), (fl,) = small.regions, large.regions
    assert fs.kind == fl.kind == "face"
    assert fl.side == pytest.approx(2 * fs.side, abs=2)
    assert fl.n == fs.n
    # 280 px face = 2 px/mm -> the crop (1.75 face widths = 245 mm) is 392 px at 1.6 px/mm
    assert small.px_per_mm == pytest.approx(2.0)
    assert fs.n == 400 and fs.scale == pytest.approx(0.8, abs=0.02)
    assert small.blemish_size == pytest.approx(6.0)
    assert small.message.startswith("1 face found; blemish size 6 px (from the faces)")


def test_each_face_at_its_own_scale() -> None:
    near, far = fake_face((100, 100, 700, 700)), fake_face((1500, 300, 1650, 450))
    plan = rg.plan_regions((1200, 2000), [near, far], WORK, skin=np.zeros((6, 10), bool))
    a, b = plan.regions
    # both faces reach the model at the same px/mm: their working sizes differ far less than their photo sizes
    assert a.side / b.side == pytest.approx(4.0, rel=0.02)
    assert a.n / a.side == pytest.approx(WORK / near.px_per_mm, rel=0.05)
    assert b.n / b.side == pytest.approx(WORK / far.px_per_mm, rel=0.15)


def test_user_blemish_size_overrides_the_faces() -> None:
    face = fake_face((1000, 600, 1280, 880))
    auto = rg.plan_regions((2000, 3000), [face], WORK, skin=np.zeros((4, 6), bool))
    user = rg.plan_regions((2000, 3000), [face], WORK, blemish_size=12.0, skin=np.zeros((4, 6), bool))
    assert user.source == "user" and user.px_per_mm == pytest.approx(4.0)
    assert user.regions[0].side == auto.regions[0].side
    assert user.regions[0].n < auto.regions[0].n  # coarser: blemishes are larger in the photo than the face suggests
    assert "blemish size 12 px (as set)" in user.message
    with pytest.raises(ValueError):
        rg.plan_regions((2000, 3000), [face], WORK, blemish_size=0.0)


def test_tiles_cover_skin_beside_faces_and_skip_the_rest() -> None:
    shape = (2000, 3000)
    skin = np.zeros((200, 300), bool)
    skin[:, 150:] = True  # skin on the right half only (a bare shoulder, say)
    plan = rg.plan_regions(shape, [], WORK, blemish_size=12.0, skin=skin)
    tiles = plan.regions
    assert tiles and all(r.kind == "tile" and r.tier == 1 for r in tiles)
    assert all(r.box[2] > 1500 for r in tiles)  # nothing planned over the left half
    cover = np.zeros(shape, bool)
    for x0, y0, x1, y1 in (r.box for r in tiles):
        cover[y0:y1, x0:x1] = True
    assert cover[:, 1500:].all()
    assert plan.message.startswith("No face found; blemish size 12 px (as set);")


def test_default_scale_without_faces_and_a_tile_budget() -> None:
    plan = rg.plan_regions((900, 1200), [], WORK)
    assert plan.source == "default" and plan.px_per_mm == pytest.approx(900 / rg.NO_FACE_FIELD_MM)
    # a huge photo at a fine scale would need hundreds of tiles: they are planned coarser, and the message says so
    big = rg.plan_regions((8000, 12000), [], WORK, blemish_size=3.0)
    assert len(big.regions) <= rg.MAX_TILES
    assert big.tile_scale < WORK / 1.0 and "of the working scale" in big.message


def test_extra_regions_only_where_nothing_covers() -> None:
    shape = (600, 800)
    face = rg.plan_regions(shape, [fake_face((300, 200, 460, 360))], WORK, skin=np.zeros((6, 8), bool)).regions
    changed = np.zeros((60, 80), bool)  # a 10x coarser grid
    changed[25:30, 37:42] = True  # inside the face crop: nothing new
    assert rg.extra_regions(changed, 10, face, shape, 1.0) == []
    changed[2:5, 2:6] = True  # top left corner, far from the face
    extra = rg.extra_regions(changed, 10, face, shape, 1.0)
    assert len(extra) == 1 and extra[0].kind == "extra" and extra[0].tier == 1
    x0, y0, x1, y1 = extra[0].box
    assert x0 <= 20 and y0 <= 20 and x1 >= 60 and y1 >= 50


def test_a_lone_unsure_face_does_not_set_the_photo_scale() -> None:
    unsure = fake_face((400, 300, 440, 340), score=0.62)  # a made-up 'face' in a close-up of skin
    plan = rg.plan_regions((1200, 1600), [unsure], WORK)
    assert plan.source == "default" and plan.px_per_mm == pytest.approx(1200 / rg.NO_FACE_FIELD_MM)
    assert plan.regions[0].kind == "face"  # it still gets its own crop
    sure = rg.plan_regions((1200, 1600), [fake_face((400, 300, 680, 580), score=0.95), unsure], WORK)
    assert sure.source == "faces" and sure.px_per_mm == pytest.approx(2.0)


def test_tiles_stay_around_sure_faces() -> None:
    """With a face the detector is sure of, the skin tiles cover its surroundings (neck,
    shoulders), not the far corners of a skin-coloured photo; tiles are never upscaled."""
    shape = (3000, 4000)
    face = fake_face((1800, 600, 2200, 1000))
    plan = rg.plan_regions(shape, [face], WORK, skin=np.ones((30, 40), bool))
    crop = plan.regions[0]
    tiles = [r for r in plan.regions if r.kind == "tile"]
    assert tiles and all(r.n <= r.side for r in tiles)
    reach = rg.NEIGHBOURHOOD * crop.side
    for t in tiles:
        assert t.box[0] < crop.crop[2] + reach and t.box[2] > crop.crop[0] - reach
        assert t.box[1] < crop.crop[3] + 1.5 * reach and t.box[3] > crop.crop[1] - reach
    assert not any(t.box[0] == 0 and t.box[1] == 0 for t in tiles)  # the top-left corner is left alone
