"""Procedural colour images: a data source that needs no files, for parity checks and mean features.

Each image is a smooth random colour field (low-frequency noise, upsampled) with a
few filled shapes and strokes in random colours on it: edges, flat regions,
gradients and colour, as in photos of objects, and the same for a seed on any
machine. ``edgefs export --pretrained`` uses them when no data folder is given.
"""

from __future__ import annotations

import cv2
import numpy as np

PROCEDURAL = "procedural"


def procedural_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """``count`` uint8 ``(size, size, 3)`` RGB images, deterministic for ``seed``.

    Returns:
        uint8 ``(count, size, size, 3)``.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        cells = int(rng.integers(2, 9))
        field = rng.uniform(0, 255, (cells, cells, 3)).astype(np.float32)
        image = cv2.resize(field, (size, size), interpolation=cv2.INTER_CUBIC)
        image = np.clip(image, 0, 255).astype(np.uint8)
        for _ in range(int(rng.integers(1, 6))):
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            cx, cy = (int(v) for v in rng.integers(0, size, 2))
            r = int(rng.integers(max(2, size // 12), max(3, size // 3)))
            kind = int(rng.integers(0, 3))
            if kind == 0:
                cv2.circle(image, (cx, cy), r, colour, -1, lineType=cv2.LINE_AA)
            elif kind == 1:
                cv2.rectangle(image, (cx - r, cy - r // 2), (cx + r, cy + r // 2), colour, -1)
            else:
                x2, y2 = (int(v) for v in rng.integers(0, size, 2))
                cv2.line(image, (cx, cy), (x2, y2), colour, max(1, size // 40), lineType=cv2.LINE_AA)
        out[i] = image
    return out
