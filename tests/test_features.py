"""Eyes, brows, nostrils and lips are kept out of the predicted mask (never out of a brushed one)."""
from __future__ import annotations

import numpy as np
import torch

from engine import faces as faces_mod
from engine.model import ModelConfig, RetouchFormer, save_model
from engine.retoucher import Retoucher
from engine.features import protection
from engine.faces import Face
from tests.test_pipeline import FACE, _skin, fake_face


def test_features_are_protected_and_cheeks_are_not() -> None:
    face = fake_face((100, 100, 300, 300))  # eyes at (160, 180), (240, 180); nose (200, 220); mouth corners y=260
    p = protection([face], (0, 0, 400, 400), 400)
    assert p is not None and p.shape == (400, 400)
    for x, y in [(160, 180), (240, 180), (160, 151), (200, 228), (200, 266)]:  # eyes, a brow, nostrils, lips
        assert p[y, x] > 0.99, (x, y)
    for x, y in [(125, 225), (275, 225), (200, 120)]:  # cheeks, forehead
        assert p[y, x] < 0.01, (x, y)
    # at a lower resolution and for a crop elsewhere, the same places
    half = protection([face], (0, 0, 400, 400), 200)
    assert half[90, 80] > 0.99 and half[112, 62] < 0.01
    assert protection([face], (1000, 1000, 1200, 1200), 100) is None


def test_protection_turns_with_a_rolled_head() -> None:
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    base = fake_face((100, 100, 300, 300))
    rot = tuple((200 + c * (x - 200) - s * (y - 200), 200 + s * (x - 200) + c * (y - 200)) for x, y in base.landmarks)
    p = protection([Face(base.box, rot, 0.9)], (0, 0, 400, 400), 400)
    for x, y in rot[:3]:
        assert p[int(round(y)), int(round(x))] > 0.99
    # the brow above the right eye, along the rotated "up"
    bx, by = rot[0][0] + 0.36 * 80 * s, rot[0][1] - 0.36 * 80 * c
    assert p[int(round(by)), int(round(bx))] > 0.9


def test_predicted_mask_leaves_the_eyes_alone(monkeypatch, tmp_path) -> None:
    torch.manual_seed(0)
    model = RetouchFormer(ModelConfig.preset("tiny"))
    with torch.no_grad():
        model.masknet.ema.out.bias.fill_(2.0)  # a mask net that flags everything
    path = save_model(model, tmp_path / "eager.safetensors")
    monkeypatch.setattr(faces_mod, "detect", lambda image, **kw: [fake_face(FACE)])
    r = Retoucher.load(path, device="cpu")
    a = r.analyze(_skin())
    face = fake_face(FACE)
    (ex, ey), (mx, my) = face.landmarks[0], ((face.landmarks[3][0] + face.landmarks[4][0]) / 2, face.landmarks[3][1])
    assert a.mask[int(ey), int(ex)] < 0.05 and a.mask[int(my), int(mx)] < 0.05
    assert a.mask[int(ey) + 40, int(ex) - 25] > 0.5  # the cheek below the eye keeps the prediction
    # a brushed mask is used as it is, eyes included
    user = np.zeros_like(a.mask)
    user[int(ey) - 3 : int(ey) + 3, int(ex) - 3 : int(ex) + 3] = 1.0
    c = r.render(a, user)
    assert any(p.box[0] <= ex < p.box[2] and p.box[1] <= ey < p.box[3] for p in c.patches)


def test_the_skin_below_each_eye_is_placed_by_the_landmarks() -> None:
    """under_eyes: the skin just below each eye (where a dark circle lies), not the cheek further
    down, the nose or the bridge between the eyes; it turns with a rolled head like the features."""
    from engine.features import under_eyes

    face = fake_face((100, 100, 300, 300))  # eyes at (160, 180), (240, 180); eye distance 80 (91 for the face's width)
    z = under_eyes([face], (0, 0, 400, 400), 400)
    assert z is not None and z.shape == (400, 400)
    for x, y in [(160, 192), (140, 192), (180, 192), (240, 192), (240, 200)]:
        assert z[y, x] > 0.99, (x, y)
    for x, y in [(160, 225), (125, 225), (200, 220), (200, 192), (160, 150)]:  # cheek, nose, bridge, brow
        assert z[y, x] < 0.01, (x, y)
    assert under_eyes([face], (1000, 1000, 1200, 1200), 100) is None
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    rot = tuple((200 + c * (x - 200) - s * (y - 200), 200 + s * (x - 200) + c * (y - 200)) for x, y in face.landmarks)
    zr = under_eyes([Face(face.box, rot, 0.9)], (0, 0, 400, 400), 400)
    d = 200 / 2.2
    for ex, ey in rot[:2]:  # 0.15 d below each eye along the rotated "down"
        assert zr[int(round(ey + 0.15 * d * c)), int(round(ex - 0.15 * d * s))] > 0.99
