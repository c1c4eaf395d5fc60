"""A generated stand-in portrait (no real photo needed): for the self-test, screenshots, benchmarks
and tests. A skin-coloured face ellipse with eyes, brows and mouth, mild skin texture, and a few
dark and red spots whose centres are returned so callers know where the blemishes are."""
from __future__ import annotations

import cv2
import numpy as np


def synthetic_portrait(width: int = 2048, height: int = 1536, seed: int = 0,
                       spots: int = 12) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Return (RGB uint8 image HxWx3, [(x, y, radius), ...] of the painted spots)."""
    rng = np.random.default_rng(seed)
    s = min(width, height) / 1000.0
    # Background: a soft vertical gradient.
    g = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    img = (np.array([58, 66, 84], np.float32) * (1 - g) + np.array([24, 28, 38], np.float32) * g)
    img = np.repeat(np.repeat(img, 1, axis=0), width, axis=1).copy()
    cx, cy = width // 2, int(height * 0.52)
    ax, ay = int(300 * s), int(400 * s)
    # Neck and shoulders.
    cv2.rectangle(img, (cx - int(120 * s), cy + int(300 * s)), (cx + int(120 * s), height), (200, 150, 122), -1)
    cv2.ellipse(img, (cx, height + int(150 * s)), (int(520 * s), int(330 * s)), 0, 0, 360, (70, 90, 130), -1)
    # Face with mild shading.
    face = np.zeros((height, width), np.uint8)
    cv2.ellipse(face, (cx, cy), (ax, ay), 0, 0, 360, 255, -1)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    shade = 1.0 - 0.18 * (((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)
    skin = np.array([224, 172, 142], np.float32)[None, None, :] * shade[:, :, None]
    f = (face > 0)[:, :, None]
    img = np.where(f, skin, img)
    # Hair.
    cv2.ellipse(img, (cx, cy - int(300 * s)), (int(320 * s), int(170 * s)), 0, 180, 360, (52, 36, 28), -1)
    # Eyes, brows, nose, mouth.
    for sx in (-1, 1):
        ex, ey = cx + sx * int(115 * s), cy - int(70 * s)
        cv2.ellipse(img, (ex, ey), (int(55 * s), int(24 * s)), 0, 0, 360, (245, 245, 240), -1)
        cv2.circle(img, (ex, ey), int(20 * s), (70, 48, 30), -1)
        cv2.circle(img, (ex, ey), int(9 * s), (10, 10, 10), -1)
        cv2.ellipse(img, (ex, ey - int(60 * s)), (int(70 * s), int(14 * s)), 0, 180, 360, (60, 40, 30), max(int(10 * s), 1))
    cv2.ellipse(img, (cx, cy + int(60 * s)), (int(25 * s), int(40 * s)), 0, 0, 180, (190, 130, 105), max(int(4 * s), 1))
    cv2.ellipse(img, (cx, cy + int(175 * s)), (int(95 * s), int(30 * s)), 0, 0, 360, (180, 80, 85), -1)
    # Mild texture on the skin.
    noise = cv2.GaussianBlur(rng.normal(0, 6, (height, width)).astype(np.float32), (0, 0), max(1.2 * s, 0.6))
    img = img + np.where(f, noise[:, :, None], 0)
    # Blemishes: dark and red spots on the cheeks and forehead.
    out: list[tuple[int, int, int]] = []
    zones = [(-160, 60, 70), (160, 60, 70), (0, -220, 110), (-80, 250, 40), (90, 250, 40)]
    for i in range(spots):
        zx, zy, zr = zones[i % len(zones)]
        x = int(cx + (zx + rng.uniform(-zr, zr)) * s)
        y = int(cy + (zy + rng.uniform(-zr * 0.6, zr * 0.6)) * s)
        r = max(int(rng.uniform(6, 13) * s), 2)
        colour = (120, 70, 55) if i % 2 else (200, 70, 70)
        m = 3 * r
        x0, y0, x1, y1 = max(x - m, 0), max(y - m, 0), min(x + m + 1, width), min(y + m + 1, height)
        spot = np.zeros((y1 - y0, x1 - x0), np.float32)
        cv2.circle(spot, (x - x0, y - y0), r, 1.0, -1)
        spot = cv2.GaussianBlur(spot, (0, 0), r * 0.4)[:, :, None]
        roi = img[y0:y1, x0:x1]
        img[y0:y1, x0:x1] = roi * (1 - 0.85 * spot) + np.array(colour, np.float32) * 0.85 * spot
        out.append((x, y, r))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), out
