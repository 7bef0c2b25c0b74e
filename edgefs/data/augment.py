"""Training augmentation with NumPy and OpenCV (no torchvision).

Glyph-style variation: affine (rotation, scale, shear, shift), stroke thickness,
elastic warp and sensor noise. Also the class-level rotation of the ProtoNet and
MAML papers, where each 90-degree rotation of a character is a new class.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edgefs.data.images import ImageSet


@dataclass
class AugmentConfig:
    """Strengths of each augmentation; zero turns one off.

    Attributes:
        rotate: max rotation in degrees (uniform in +-rotate).
        scale: max relative scale change (uniform in 1 +- scale).
        shear: max shear (uniform in +-shear, as a fraction of the side).
        shift: max translation as a fraction of the side.
        stroke: probability of thickening or thinning strokes by one pixel.
        elastic: elastic displacement in pixels at the image's resolution.
        noise: standard deviation of additive Gaussian noise in grey levels.
    """

    rotate: float = 10.0
    scale: float = 0.12
    shear: float = 0.15
    shift: float = 0.08
    stroke: float = 0.3
    elastic: float = 1.0
    noise: float = 4.0


class Augment:
    """Applies :class:`AugmentConfig` to uint8 ``(B, H, W, C)`` batches."""

    def __init__(self, config: AugmentConfig, seed: int = 0) -> None:
        self.config = config
        self.rng = np.random.default_rng(seed)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Args: images uint8 ``(B, H, W, C)``. Returns: a new uint8 array of the same shape."""
        return np.stack([self.one(img) for img in images])

    def one(self, img: np.ndarray) -> np.ndarray:
        c, rng = self.config, self.rng
        h, w = img.shape[:2]
        out = img
        if c.rotate or c.scale or c.shear or c.shift:
            angle = rng.uniform(-c.rotate, c.rotate)
            scale = rng.uniform(1 - c.scale, 1 + c.scale)
            m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
            shear = rng.uniform(-c.shear, c.shear)
            m[0, 1] += shear
            m[0, 2] += -shear * h / 2 + rng.uniform(-c.shift, c.shift) * w
            m[1, 2] += rng.uniform(-c.shift, c.shift) * h
            out = cv2.warpAffine(out, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if c.elastic:
            out = self._elastic(out, c.elastic)
        if c.stroke and rng.random() < c.stroke:
            kernel = np.ones((2, 2), np.uint8)
            # Ink is dark on a light background: eroding the image thickens strokes.
            out = cv2.erode(out, kernel) if rng.random() < 0.5 else cv2.dilate(out, kernel)
        if c.noise:
            noisy = out.astype(np.float32) + rng.normal(0, c.noise, out.shape).astype(np.float32)
            out = np.clip(noisy, 0, 255).astype(np.uint8)
        return out.reshape(img.shape)

    def _elastic(self, img: np.ndarray, alpha: float) -> np.ndarray:
        h, w = img.shape[:2]
        sigma = max(h, w) / 8
        dx = cv2.GaussianBlur(self.rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), sigma)
        dy = cv2.GaussianBlur(self.rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), sigma)
        norm = alpha / max(float(np.abs(dx).max()), float(np.abs(dy).max()), 1e-6)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        return cv2.remap(img, xs + dx * norm, ys + dy * norm, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def expand_rotations(data: ImageSet, turns: int = 4) -> ImageSet:
    """Each class rotated by 90 degrees k times (k < ``turns``) becomes a new class.

    Args:
        data: images of square size.
        turns: 1 (no change) to 4.

    Returns:
        An :class:`ImageSet` with ``turns * num_classes`` classes; class
        ``r * num_classes + c`` is class ``c`` rotated ``r`` quarter turns.
    """
    if turns <= 1:
        return data
    if not 1 <= turns <= 4:
        raise ValueError(f"turns must be in 1..4, got {turns}")
    images = [np.rot90(data.images, k, axes=(1, 2)) for k in range(turns)]
    labels = [data.labels + k * data.num_classes for k in range(turns)]
    names = [f"{n}@rot{90 * k}" if k else n for k in range(turns) for n in data.class_names]
    groups = [f"{g}@rot{90 * k}" if k else g for k in range(turns) for g in data.class_groups]
    return ImageSet(
        np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), names, groups,
        list(data.paths) * turns, data.root,
    )
