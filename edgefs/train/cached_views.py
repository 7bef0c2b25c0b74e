"""The augmented views of a training image that the cached trunk features are computed from.

:func:`views_of` gives each image, its mirror and random crops with colour jitter
(:func:`colour_view`); :func:`scene_views_of` shows it as a camera does, a card in front of
another image's clutter (:func:`scene_view`). Both are seeded, so a feature cache made from
them is made again the same way (:mod:`edgefs.train.cached_features`).
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def colour_view(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop (60-100% of the area, aspect 3/4..4/3), flip and colour jitter of uint8 ``(S, S, 3)``."""
    s = img.shape[0]
    area = rng.uniform(0.6, 1.0) * s * s
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    w = min(s, round(math.sqrt(area * aspect)))
    h = min(s, round(math.sqrt(area / aspect)))
    x0, y0 = int(rng.integers(0, s - w + 1)), int(rng.integers(0, s - h + 1))
    out = cv2.resize(img[y0 : y0 + h, x0 : x0 + w], (s, s), interpolation=cv2.INTER_AREA if w > s else cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    f = out.astype(np.float32)
    grey = f @ np.array([0.299, 0.587, 0.114], np.float32)
    f = grey[..., None] + (f - grey[..., None]) * rng.uniform(0.6, 1.4)  # saturation
    f = (f - f.mean()) * rng.uniform(0.7, 1.3) + f.mean() * rng.uniform(0.7, 1.3)  # contrast, brightness
    return np.clip(f, 0, 255).astype(np.uint8)


def scene_view(img: np.ndarray, clutter: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 ``(S, S, 3)`` as a camera sees it: a card in a scene; ``clutter`` another image for the background.

    The card covers 50-90% of the side, stretched up to 4:3 either way, turned up to 15 degrees and
    tilted (each corner moved up to 6% of the card), off centre; behind it a piece of ``clutter``
    (20-50% of its area) scaled up, out of focus and dimmed; then a light gradient with a colour
    cast, a Gaussian or a motion blur, and sensor noise. Generic camera nuisances, so that features
    of an object enrolled from a camera frame depend less on what is around it.
    """
    s = img.shape[0]
    side = max(8, round(s * math.sqrt(rng.uniform(0.2, 0.5))))
    x0, y0 = (int(v) for v in rng.integers(0, s - side + 1, 2))
    bg = cv2.resize(clutter[y0 : y0 + side, x0 : x0 + side], (s, s), interpolation=cv2.INTER_LINEAR)
    bg = cv2.GaussianBlur(bg, (0, 0), rng.uniform(1.5, 4.0)).astype(np.float32)
    bg = np.clip(bg * rng.uniform(0.5, 1.0) + rng.uniform(0, 60, 3).astype(np.float32), 0, 255).astype(np.uint8)
    scale = rng.uniform(0.5, 0.9) * s
    stretch = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    w, h = scale * math.sqrt(stretch), scale / math.sqrt(stretch)
    corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]], np.float32) / 2
    corners += rng.uniform(-0.06, 0.06, (4, 2)).astype(np.float32) * scale
    angle = math.radians(rng.uniform(-15, 15))
    turn = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], np.float32)
    reach = np.abs(corners @ turn.T).max(axis=0)
    centre = s / 2 + rng.uniform(-1, 1, 2) * np.maximum(s / 2 - reach, 0)
    dst = (corners @ turn.T + centre).astype(np.float32)
    src = np.array([[0, 0], [s, 0], [s, s], [0, s]], np.float32)
    out = cv2.warpPerspective(img, cv2.getPerspectiveTransform(src, dst), (s, s), dst=bg,
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT)
    ys, xs = np.mgrid[0:s, 0:s].astype(np.float32) / s - 0.5
    light = rng.uniform(0, 2 * math.pi)
    gain = rng.uniform(0.7, 1.2) * (1 + rng.uniform(0, 0.5) * (xs * math.cos(light) + ys * math.sin(light)))
    f = out.astype(np.float32) * gain[:, :, None] * (1 + rng.uniform(-0.08, 0.08, 3)).astype(np.float32)
    kind = rng.random()
    if kind < 0.4:
        f = cv2.GaussianBlur(f, (0, 0), rng.uniform(0.5, 1.5))
    elif kind < 0.7:
        k = int(rng.integers(3, 10))
        f = cv2.blur(f, (k, 1) if rng.random() < 0.5 else (1, k))
    f += rng.normal(0, rng.uniform(0, 5), f.shape).astype(np.float32)
    return np.clip(f, 0, 255).astype(np.uint8)


def scene_views_of(images: np.ndarray, views: int, seed: int) -> np.ndarray:
    """uint8 ``(N, S, S, 3)`` -> ``(N, views, S, S, 3)`` of :func:`scene_view`, clutter from the other images."""
    rng = np.random.default_rng([seed, 1])
    out = np.empty((len(images), views, *images.shape[1:]), np.uint8)
    for i, img in enumerate(images):
        for v in range(views):
            other = int(rng.integers(len(images) - 1)) if len(images) > 1 else 0
            other += int(len(images) > 1 and other >= i)
            out[i, v] = scene_view(img, images[other], rng)
    return out


def views_of(images: np.ndarray, views: int, seed: int) -> np.ndarray:
    """uint8 ``(N, S, S, 3)`` -> ``(N, views, S, S, 3)``: the image, its mirror, then random views."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(images), views, *images.shape[1:]), np.uint8)
    for i, img in enumerate(images):
        out[i, 0] = img
        if views > 1:
            out[i, 1] = img[:, ::-1]
        for v in range(2, views):
            out[i, v] = colour_view(img, rng)
    return out
