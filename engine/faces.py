"""Offline face finding (OpenCV Haar cascades) and the model's face-crop geometry.

:func:`detect_faces` returns face boxes ``(x0, y0, x1, y1)`` in full-resolution pixel
coordinates. Detection runs on a grey copy downscaled to about 1000 px on the long side (fast on
40-60 MP photos; retried with the histogram equalised when nothing is found), optionally adds
the profile cascade (both directions), and merges duplicates.

:func:`face_crop` turns a face box into the square crop the model expects: the default ``small``
model was trained on SCUT-FBP5500 head-and-shoulder portraits resized to 256x256, in which the
Haar face box is about 0.6-0.7 of the image width (median 0.66 measured on the training images),
centred horizontally and slightly below the middle. The crop reproduces that framing.
"""
from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

from engine.errors import RetouchError

__all__ = ["Box", "detect_faces", "face_crop", "merge_boxes", "DETECT_LONG_SIDE", "FACE_SHARE"]

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive ends)

#: Long side (px) of the grey copy the cascades run on.
DETECT_LONG_SIDE = 1000
#: Share of the crop's side taken by the Haar face box (training framing: ~0.6-0.66).
FACE_SHARE = 0.62
#: Crop centre relative to the face-box centre, as a fraction of the crop side (negative = up).
_CENTER_SHIFT_Y = -0.03

_FRONTAL = "haarcascade_frontalface_default.xml"
_PROFILE = "haarcascade_profileface.xml"


@functools.lru_cache(maxsize=4)
def _cascade(name: str) -> cv2.CascadeClassifier:
    base = Path(getattr(cv2, "data").haarcascades) if hasattr(cv2, "data") else None
    path = (base / name) if base is not None else Path(name)
    if not path.is_file():
        raise RetouchError(
            f"The face detector data {name} is missing from the OpenCV installation ({path}); "
            "reinstall opencv-python-headless."
        )
    clf = cv2.CascadeClassifier(str(path))
    if clf.empty():
        raise RetouchError(f"The face detector data {path} could not be loaded; reinstall opencv-python-headless.")
    return clf


def _grey_small(image: np.ndarray, long_side: int) -> tuple[np.ndarray, float]:
    """8-bit grey copy with the long side at most ``long_side``; returns (grey, scale)."""
    h, w = image.shape[:2]
    scale = min(1.0, long_side / max(h, w))
    small = image
    if scale < 1.0:
        small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    if small.dtype == np.uint16:
        small = cv2.convertScaleAbs(small, alpha=1.0 / 257.0)
    return cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2GRAY), scale


def _iou(a: Box, b: Box) -> tuple[float, float]:
    """(intersection over union, intersection over the smaller box)."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    union = area_a + area_b - inter
    return (inter / union if union else 0.0), (inter / min(area_a, area_b) if min(area_a, area_b) else 0.0)


def merge_boxes(boxes: list[Box], iou: float = 0.3, contain: float = 0.6) -> list[Box]:
    """Merge duplicate detections: boxes overlapping by IoU > ``iou`` or with more than
    ``contain`` of the smaller one inside the other become their average (largest first)."""
    groups: list[list[Box]] = []
    for box in sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True):
        for group in groups:
            u, c = _iou(group[0], box)
            if u > iou or c > contain:
                group.append(box)
                break
        else:
            groups.append([box])
    merged = [tuple(int(round(v)) for v in np.mean(np.array(g, dtype=np.float64), axis=0)) for g in groups]
    return sorted(merged, key=lambda b: (b[1], b[0]))  # type: ignore[return-value]


def detect_faces(image: np.ndarray, *, profile: bool = True, long_side: int = DETECT_LONG_SIDE) -> list[Box]:
    """Find faces in an ``HxWx3`` RGB ``uint8``/``uint16`` image; boxes in full-resolution pixels.

    Faces smaller than about 4 % of the image's short side are ignored (they are too small to
    retouch). ``profile`` also runs OpenCV's profile-face cascade on the image and its mirror.
    """
    h, w = image.shape[:2]
    grey, scale = _grey_small(image, long_side)
    gh, gw = grey.shape
    min_face = max(20, int(0.04 * min(gh, gw)))
    found: list[Box] = []

    def run(clf: cv2.CascadeClassifier, img: np.ndarray, neighbours: int, mirrored: bool, step: float = 1.1) -> None:
        rects = clf.detectMultiScale(img, scaleFactor=step, minNeighbors=neighbours, minSize=(min_face, min_face))
        for x, y, bw, bh in (rects if len(rects) else []):
            x0 = gw - (x + bw) if mirrored else x
            found.append((int(x0), int(y), int(x0 + bw), int(y + bh)))

    frontal = _cascade(_FRONTAL)
    run(frontal, grey, 5, False)
    if not found:  # dark or flat photos: try again with the histogram equalised
        run(frontal, cv2.equalizeHist(grey), 5, False)
    if profile:
        prof = _cascade(_PROFILE)
        run(prof, grey, 6, False, 1.15)  # coarser scale steps: the profile pass is a complement
        run(prof, np.ascontiguousarray(grey[:, ::-1]), 6, True, 1.15)
    out: list[Box] = []
    for x0, y0, x1, y1 in merge_boxes(found):
        box = (
            max(0, int(round(x0 / scale))),
            max(0, int(round(y0 / scale))),
            min(w, int(round(x1 / scale))),
            min(h, int(round(y1 / scale))),
        )
        if box[2] > box[0] and box[3] > box[1]:
            out.append(box)
    return out


def face_crop(box: Box, share: float = FACE_SHARE) -> Box:
    """Square crop around a face box framed like the training portraits.

    The result may extend past the image borders (the pipeline pads by reflection there).
    """
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) / share
    side = max(16, int(round(side)))
    cx = (x0 + x1) / 2.0
    cy = (y0 + y1) / 2.0 + _CENTER_SHIFT_Y * side
    left = int(round(cx - side / 2.0))
    top = int(round(cy - side / 2.0))
    return (left, top, left + side, top + side)
