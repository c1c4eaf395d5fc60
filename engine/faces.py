"""Offline face finding with YuNet (OpenCV's ``cv2.FaceDetectorYN``).

:func:`detect` returns one :class:`Face` per face: its box, YuNet's five landmarks and score, all
in full-resolution pixel coordinates, and the face's physical scale (:attr:`Face.px_per_mm`).
The model file ships in ``resources/models/yunet/`` (MIT; see its LICENSE and SOURCE.md) and is
found through :func:`engine.paths.yunet_path`.

How it searches (faces from about 1 % of the photo's long side up to the whole frame; a 24 MP
photo with faces takes 0.35-0.47 s on the 2-core development machine while it is busy with
other work, 0.65 s without a face; the fine pass is about two thirds of it):

* a *coarse* pass on a copy with the long side at :data:`COARSE_LONG_SIDE` px (a face cut by
  the frame may get a box reaching past the image: it is clipped, and :attr:`Face.face_width`
  keeps the whole width);
* a *fine* pass on a copy with the long side at :data:`FINE_LONG_SIDE` px, for small faces
  (YuNet finds faces down to about 10 px; a face 1 % of the long side is 19 px there), which
  keeps only faces narrower than :data:`FINE_MAX_FACE` px in the coarse copy. Only for photos
  with a long side of at least 1.5 x the coarse copy's;
* when no face is found with a score of at least :data:`CONFIDENT_SCORE`: the coarse copy turned
  by 90, 270 and 180 degrees (photos whose orientation was lost, faces lying down; YuNet also
  finds a turned face upright, but with a lower score and its landmarks placed as if upright).
  A photo has one orientation: the best face's; faces found in another need
  :data:`CONFIDENT_SCORE`;
* when nothing is found on a photo with salt-and-pepper noise (more than :data:`NOISY` of the
  coarse copy's pixels): the coarse passes again on a median-filtered copy;
* when nothing at all is found: the coarse copy rotated by +-45 degrees (YuNet itself finds
  heads tilted by up to about 45 degrees; this catches a few more).

Detections from all passes are merged (the best first; one overlapping it by IoU >
:data:`MERGE_IOU`, or lying mostly inside it, is a duplicate), and kept when YuNet's score is at
least :data:`SCORE_THRESHOLD` and the landmarks have a face's geometry (mouth below the eyes,
nose not above them, eye distance plausible for the box). A face with an eye outside the photo
(mostly a cheek or chin close-up) needs :data:`CUT_FACE_SCORE`.

YuNet's landmarks drift towards an upright face's on a tilted head (the eyes stay level while
the head is tilted): the largest :data:`REFINE_FACES` faces are looked at again on small copies
turned by 0 and +-30 degrees, and take the landmarks of the copy YuNet is surest about
(:func:`_refine`).

:class:`cv2.FaceDetectorYN` objects are not thread-safe: each thread gets its own (up to five,
one per input size: changing a detector's input size costs about as much as a detection; they
hold about 200 MB per thread after a 24 MP photo).
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, replace

import cv2
import numpy as np

from engine.errors import RetouchError
from engine.paths import yunet_path

__all__ = [
    "Box", "Face", "detect",
    "SCORE_THRESHOLD", "COARSE_LONG_SIDE", "FINE_LONG_SIDE", "EYE_DISTANCE_MM", "FACE_WIDTH_MM",
]

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive ends), full-resolution pixels
Point = tuple[float, float]

#: YuNet score a face needs. YuNet's own default, 0.9, misses most turned, cut and noisy faces:
#: of the 800 ACNE04 face photos it finds 22 % at 0.9; this search finds 94.8 % at 0.6 (94.9 %
#: at 0.5, 92.4 % at 0.7), and "faces" in 28 % of 200 acne close-ups at 0.6 (31.5 % at 0.5,
#: 24.5 % at 0.7; most of them are real partial faces: a nose and mouth, a mosaic tile).
SCORE_THRESHOLD = 0.6
#: A face with an eye outside the photo (mostly a cheek or chin close-up) needs this score.
CUT_FACE_SCORE = 0.85
#: Without a face of at least this score, turned copies are searched too (see the module doc).
CONFIDENT_SCORE = 0.9
#: Quarter turns (counter-clockwise) searched then, and the score a face found there needs
#: (searching harder finds more false faces on skin close-ups).
QUARTER_TURNS: tuple[tuple[int, float], ...] = ((1, 0.6), (3, 0.6), (2, 0.6))
#: A face found on a turned copy replaces an upright duplicate only when its score is this much higher.
TURNED_HANDICAP = 0.05
#: When nothing is found and more than this share of the coarse copy's pixels is impulse noise,
#: the search is run again on a median-filtered copy (ACNE04's noisy photos: 62 of 97 misses found).
NOISY = 0.005
#: When nothing is found at all: rotations (degrees, counter-clockwise) and the score they need.
TILTS: tuple[tuple[float, float], ...] = ((45, 0.7), (-45, 0.7))
#: Long side (px) of the coarse copy (YuNet's training resolution is about 640).
COARSE_LONG_SIDE = 640
#: Long side (px) of the fine copy that finds small faces ...
FINE_LONG_SIDE = 1920
#: ... narrower than this in the coarse copy (px): larger ones are the coarse pass's (YuNet
#: finds false "faces" a few hundred px wide in skin textures at the fine scale).
FINE_MAX_FACE = 48
#: Detections overlapping by more than this IoU (or with more than ``_CONTAIN`` of the smaller
#: inside the other) are one face.
MERGE_IOU = 0.3
_CONTAIN = 0.6
#: The landmarks of the largest this many faces are refined (see :func:`_refine`).
REFINE_FACES = 8
REFINE_TURN = 30.0
_REFINE_SIZE = 192  # side of the small copy of a face ...
_REFINE_FACE = 72  # ... and the face's width in it

#: Adult interpupillary distance (mm), and the face width (mm) that YuNet's box spans: on
#: frontal portraits the box is 2.16-2.2 eye distances wide (median over 3,600 SCUT-FBP5500 and
#: 1,100 CelebAMask-HQ portraits), 2.2 x 63 ~ 140.
EYE_DISTANCE_MM = 63.0
FACE_WIDTH_MM = 140.0


@dataclass(frozen=True)
class Face:
    """One detected face, in full-resolution pixel coordinates."""

    box: Box  #: x0, y0, x1, y1 (exclusive ends), clipped to the image
    #: Five (x, y) points, YuNet's order: right eye, left eye, nose tip, right and left mouth corner
    #: (the person's right: on the image's left for an upright frontal face).
    landmarks: tuple[Point, ...]
    score: float  #: YuNet's confidence, 0..1
    #: The face's own width in px: YuNet's box before clipping to the image, measured in the
    #: face's own upright frame (for a tilted or turned head). ``None``: the box's width.
    face_width: float | None = None

    @property
    def eye_distance(self) -> float:
        """Pixels between the two eye landmarks."""
        (ax, ay), (bx, by) = self.landmarks[0], self.landmarks[1]
        return math.hypot(ax - bx, ay - by)

    @property
    def width(self) -> float:
        """Face width in px (see :attr:`face_width`)."""
        return float(self.face_width) if self.face_width else float(self.box[2] - self.box[0])

    @property
    def px_per_mm(self) -> float:
        """Pixels per millimetre on the face: the larger of eye distance / 63 mm and face width /
        140 mm. On a frontal face the two agree within a few % (YuNet's box is 2.16-2.2 eye
        distances wide there); a head turned away foreshortens the eye distance much more than
        the box (ACNE04's three-quarter views: box / eye distance 2.7 in the median), so the larger,
        less foreshortened estimate is used."""
        return max(self.eye_distance / EYE_DISTANCE_MM, self.width / FACE_WIDTH_MM)


# -- the model ----------------------------------------------------------------------------------

_local = threading.local()
_PER_THREAD = 5  # detectors kept per thread (one per input size)


def _load() -> cv2.FaceDetectorYN:
    path = yunet_path()
    if not path.is_file():
        raise RetouchError(
            f"The face detector model is missing ({path}); reinstall the application "
            "(or restore resources/models/yunet/ from the repository)."
        )
    try:
        return cv2.FaceDetectorYN.create(str(path), "", (320, 320), 0.3, 0.3, 5000)
    except cv2.error as exc:
        detail = str(exc).strip().splitlines()[-1].strip()
        raise RetouchError(
            f"The face detector model {path} could not be loaded; the file is damaged: reinstall the "
            f"application (OpenCV: {detail})."
        ) from None


def _run(bgr: np.ndarray) -> np.ndarray:
    """YuNet's rows (x, y, w, h, 5 landmarks, score) for an 8-bit BGR image, on this thread's
    detector for that image size."""
    h, w = bgr.shape[:2]
    path = yunet_path()
    cache: dict | None = getattr(_local, "detectors", None)
    if cache is None or _local.path != path:
        cache = _local.detectors = {}
        _local.path = path
    det = cache.pop((w, h), None)
    if det is None:
        # a full cache hands its least recently used detector over (loading costs more)
        det = cache.pop(next(iter(cache))) if len(cache) >= _PER_THREAD else _load()
        det.setInputSize((w, h))
    cache[(w, h)] = det  # most recently used last
    _, rows = det.detect(np.ascontiguousarray(bgr))
    return np.zeros((0, 15), np.float32) if rows is None else rows


# -- image preparation ----------------------------------------------------------------------------


def _check(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise RetouchError(f"Face detection needs an HxWx3 RGB image, not one of shape {shape}.")
    if image.dtype not in (np.uint8, np.uint16):
        raise RetouchError(f"Face detection needs an 8- or 16-bit image, not {image.dtype}.")
    if min(image.shape[:2]) < 1:
        raise RetouchError("Face detection needs a non-empty image.")


def _shrink(image: np.ndarray, long_side: int) -> np.ndarray:
    """``image`` with its long side at most ``long_side`` (area-averaged; a bilinear
    pre-reduction to twice the target size keeps it fast on 24-60 MP photos)."""
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    if scale >= 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if scale < 0.5:
        image = cv2.resize(image, (2 * size[0], 2 * size[1]), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _to_bgr8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint16:
        img = cv2.convertScaleAbs(img, alpha=1.0 / 257.0)
    return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)


# -- passes ------------------------------------------------------------------------------------------


@dataclass
class _Raw:
    corners: np.ndarray  # 4x2 box corners in full-res coordinates (a turned rectangle on rotated passes)
    landmarks: np.ndarray  # 5x2, full-res
    score: float
    face_width: float  # full-res px, in the face's own (pass) frame
    turns: int = 0  # the pass's quarter turns (its orientation)
    rank: float = 0.0  # what picks among duplicates (the score, less a handicap on turned passes)


def _affine(m: np.ndarray) -> np.ndarray:
    return np.vstack([np.asarray(m, np.float64), [0.0, 0.0, 1.0]])


def _rows_to_raws(rows: np.ndarray, to_full: np.ndarray, px: float, turns: int = 0) -> list[_Raw]:
    """YuNet rows from a pass image, mapped to full resolution by the 3x3 ``to_full``; ``px``:
    full-res pixels per pass pixel."""
    out = []
    for r in rows:
        x, y, w, h = (float(v) for v in r[:4])
        pts = np.vstack([[[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.asarray(r[4:14], np.float64).reshape(5, 2)])
        mapped = pts @ to_full[:2, :2].T + to_full[:2, 2]
        out.append(_Raw(mapped[:4], mapped[4:], float(r[14]), w * px, turns, float(r[14])))
    return out


def _pass(small: np.ndarray, scale: float, *, turns: int = 0, angle: float = 0.0) -> list[_Raw]:
    """Detect on ``small`` (the photo at ``scale``) turned by ``turns`` x 90 degrees or rotated by
    ``angle`` degrees (both counter-clockwise); detections in full-resolution coordinates."""
    img = small
    fwd = _affine([[scale, 0, 0], [0, scale, 0]])  # full res -> pass image
    h, w = img.shape[:2]
    k = turns % 4
    if k:
        img = np.rot90(img, k)
        rot = {1: [[0, 1, 0], [-1, 0, w]], 2: [[-1, 0, w], [0, -1, h]], 3: [[0, -1, h], [1, 0, 0]]}[k]
        fwd = _affine(rot) @ fwd  # np.rot90 as a map of continuous coordinates
    if angle:
        m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
        c, s = abs(m[0, 0]), abs(m[0, 1])
        ow, oh = int(round(w * c + h * s)), int(round(w * s + h * c))
        m[0, 2] += (ow - w) / 2.0
        m[1, 2] += (oh - h) / 2.0
        img = cv2.warpAffine(img, m, (ow, oh), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
        fwd = _affine(m) @ fwd
    return _rows_to_raws(_run(img), np.linalg.inv(fwd), 1.0 / scale, k)


def _upright_copy(r: _Raw, copies: list[tuple[np.ndarray, float]], turn: float) -> tuple[np.ndarray, np.ndarray, float]:
    """A small copy of the face at ``r``, turned by ``turn`` degrees (counter-clockwise) about its
    centre; returns (copy, 3x3 map from the copy to full resolution, full-res px per copy px)."""
    src, scale = copies[0]
    for img, s in copies:  # the largest copy in which the face is at most about twice the size it gets here
        if r.face_width * s <= 2.5 * _REFINE_FACE and s > scale:
            src, scale = img, s
    k = _REFINE_FACE / max(r.face_width * scale, 1.0)
    cx, cy = (float(v) for v in np.mean(r.corners, axis=0) * scale)
    m = cv2.getRotationMatrix2D((cx, cy), turn, k)
    m[0, 2] += _REFINE_SIZE / 2.0 - cx
    m[1, 2] += _REFINE_SIZE / 2.0 - cy
    copy = cv2.warpAffine(src, m, (_REFINE_SIZE, _REFINE_SIZE), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    return copy, np.linalg.inv(_affine(m) @ _affine([[scale, 0, 0], [0, scale, 0]])), 1.0 / (scale * k)


def _look_again(r: _Raw, copies: list[tuple[np.ndarray, float]], turn: float) -> _Raw | None:
    """The face at ``r`` found on a small copy turned by ``turn`` degrees (``None``: not found)."""
    copy, to_full, px = _upright_copy(r, copies, turn)
    centre = np.mean(r.corners, axis=0)
    best = None
    for f in _rows_to_raws(_run(copy), to_full, px):  # the detection at the centre, about the expected size
        near = np.hypot(*(np.mean(f.corners, axis=0) - centre)) < 0.3 * r.face_width
        if near and 0.6 < f.face_width / r.face_width < 1.6 and (best is None or f.score > best.score):
            best = f
    return best


def _tilt(landmarks: np.ndarray) -> float:
    """Tilt of the eye line, degrees counter-clockwise as seen."""
    dx, dy = landmarks[1] - landmarks[0]
    return -math.degrees(math.atan2(dy, dx))


def _refine(r: _Raw, copies: list[tuple[np.ndarray, float]]) -> _Raw:
    """Landmarks YuNet places well: its landmarks drift towards an upright face's on a tilted
    head (the eye line stays within about 15 degrees of level), so the face is looked at again
    on small copies turned by 0 and +-:data:`REFINE_TURN` degrees from the orientation it was
    found in, and takes the landmarks of the best score's copy (on the astronaut photo tilted by
    45 degrees: 0.17 instead of 0.8 eye distances off at worst)."""
    base = 90.0 * r.turns
    tries = [(t, _look_again(r, copies, base + t)) for t in (0.0, REFINE_TURN, -REFINE_TURN)]
    tries = [(t, f) for t, f in tries if f is not None and _face_like(f)]
    if not tries:
        return r
    best = max(tries, key=lambda tf: tf[1].score)[1]
    return replace(r, landmarks=best.landmarks, face_width=best.face_width)


# -- merging and checks ---------------------------------------------------------------------------


def _aabb(corners: np.ndarray) -> tuple[float, float, float, float]:
    return (float(corners[:, 0].min()), float(corners[:, 1].min()), float(corners[:, 0].max()), float(corners[:, 1].max()))


def _overlap(a, b) -> tuple[float, float]:
    """(IoU, intersection over the smaller box) of two float boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    union = area_a + area_b - inter
    small = min(area_a, area_b)
    return (inter / union if union > 0 else 0.0), (inter / small if small > 0 else 0.0)


def _merge(raws: list[_Raw]) -> list[_Raw]:
    """One detection per face (the best ranked), best first."""
    kept: list[tuple[_Raw, tuple]] = []
    for r in sorted(raws, key=lambda r: r.rank, reverse=True):
        box = _aabb(r.corners)
        if all(u <= MERGE_IOU and c <= _CONTAIN for u, c in (_overlap(box, b) for _, b in kept)):
            kept.append((r, box))
    return [r for r, _ in kept]


def _face_like(r: _Raw) -> bool:
    """Landmarks with a face's geometry, in the face's own frame (eyes level): the mouth clearly
    below the eyes, the nose not above them, the eyes neither too close nor too far apart for the box."""
    re, le, nose, rm, lm = r.landmarks
    eyes = le - re
    ed = float(np.hypot(*eyes))
    if ed < 1e-3 or not 1.2 < r.face_width / ed < 6.0:
        return False
    down = np.array([-eyes[1], eyes[0]]) / ed  # perpendicular to the eye line, towards the mouth
    mid = (re + le) / 2
    return float(((rm + lm) / 2 - mid) @ down) > 0.5 * ed and float((nose - mid) @ down) > 0.0


def _plausible(r: _Raw, shape: tuple[int, int]) -> bool:
    """Face-like, and both eyes inside the photo unless YuNet is sure."""
    h, w = shape
    if r.score < CUT_FACE_SCORE and not all(0 <= x <= w and 0 <= y <= h for x, y in r.landmarks[:2]):
        return False
    return _face_like(r)


def _accepted(raws: list[_Raw], shape: tuple[int, int]) -> list[_Raw]:
    return _merge([r for r in raws if _plausible(r, shape)])


def _face(r: _Raw, shape: tuple[int, int]) -> Face | None:
    h, w = shape
    x0, y0, x1, y1 = _aabb(r.corners)
    box = (max(0, int(math.floor(x0))), max(0, int(math.floor(y0))), min(w, int(math.ceil(x1))), min(h, int(math.ceil(y1))))
    if box[2] <= box[0] or box[3] <= box[1]:
        return None
    return Face(box, tuple((float(x), float(y)) for x, y in r.landmarks), float(r.score), float(r.face_width))


# -- public API ----------------------------------------------------------------------------------


def _search(coarse: np.ndarray, fine: np.ndarray | None, c_scale: float, shape: tuple[int, int], threshold: float) -> list[_Raw]:
    """The upright coarse and fine passes, and the quarter turns when no face is sure."""
    w = shape[1]
    raws = _pass(coarse, c_scale)
    if fine is not None:  # the fine pass is for the faces too small for the coarse one
        raws += [r for r in _pass(fine, fine.shape[1] / w) if r.face_width * c_scale < FINE_MAX_FACE]
    raws = [r for r in raws if r.score >= threshold]
    faces = _accepted(raws, shape)
    if not any(f.score >= CONFIDENT_SCORE for f in faces):
        for turns, least in QUARTER_TURNS:
            for r in _pass(coarse, c_scale, turns=turns):
                if r.score >= max(threshold, least):
                    r.rank = r.score - TURNED_HANDICAP
                    raws.append(r)
        faces = _accepted(raws, shape)
        if faces:  # one orientation per photo: the best face's
            faces = [f for f in faces if f.turns == faces[0].turns or f.score >= CONFIDENT_SCORE]
    return faces


def _impulse_noise(bgr: np.ndarray) -> float:
    """Share of pixels far (> 50 levels) from their 3x3 median: salt-and-pepper noise."""
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    return float(np.mean(cv2.absdiff(grey, cv2.medianBlur(grey, 3)) > 50))


def detect(image: np.ndarray, *, threshold: float = SCORE_THRESHOLD) -> list[Face]:
    """Faces in an ``HxWx3`` RGB ``uint8``/``uint16`` image, in full-resolution pixel
    coordinates, in reading order (by the box's top, then left edge)."""
    _check(image)
    image = np.ascontiguousarray(image)
    h, w = image.shape[:2]
    shape = (h, w)
    fine = None
    if max(h, w) >= 1.5 * COARSE_LONG_SIDE:  # small faces: a finer pass (its copy also feeds the coarse one)
        fine = _to_bgr8(_shrink(image, FINE_LONG_SIDE))
        coarse = _shrink(fine, COARSE_LONG_SIDE)
    else:
        coarse = _to_bgr8(_shrink(image, COARSE_LONG_SIDE))
    c_scale = coarse.shape[1] / w
    copies = [(coarse, c_scale)] + ([(fine, fine.shape[1] / w)] if fine is not None else [])

    faces = _search(coarse, fine, c_scale, shape, threshold)
    if not faces and _impulse_noise(coarse) > NOISY:  # salt-and-pepper noise hides faces from YuNet
        coarse = cv2.medianBlur(coarse, 3)
        copies = [(coarse, c_scale)]
        faces = _search(coarse, None, c_scale, shape, threshold)
    if not faces:
        for angle, least in TILTS:
            faces = _accepted([r for r in _pass(coarse, c_scale, angle=angle) if r.score >= max(threshold, least)], shape)
            if faces:
                break
    largest = sorted(range(len(faces)), key=lambda i: faces[i].face_width, reverse=True)[:REFINE_FACES]
    for i in largest:
        faces[i] = _refine(faces[i], copies)
    out = [f for f in (_face(r, shape) for r in faces) if f is not None]
    return sorted(out, key=lambda f: (f.box[1], f.box[0]))

