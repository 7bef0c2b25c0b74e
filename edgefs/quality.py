"""The enrollment quality gate: reject blurry shots and near-duplicates, saying why.

A class enrolled from five copies of one blurry frame is one shot, not five, and
drags its prototype towards motion blur. Blur is measured as the variance of the
Laplacian of the grey image (high for sharp edges, low for smooth blur); a shot
is a near-duplicate when its embedding's cosine similarity to an earlier shot of
the same class (or an already stored one) is above ``max_similarity``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from edgefs.errors import EdgefsError


@dataclass
class QualityConfig:
    """Thresholds of the gate.

    Attributes:
        min_sharpness: smallest accepted variance of the Laplacian at the model's input
            size (0 turns the blur check off). Camera frames of a textured object
            score hundreds; a defocused frame scores under about 20.
        max_similarity: largest accepted cosine similarity to another shot of the
            class (1.0 turns the duplicate check off).
    """

    min_sharpness: float = 20.0
    max_similarity: float = 0.995


@dataclass
class GateResult:
    """Which shots passed and why the others did not.

    Attributes:
        keep: bool ``(K,)``.
        sharpness: float ``(K,)`` variance of the Laplacian per shot.
        reasons: one message per rejected shot, naming it by index (and name if given).
    """

    keep: np.ndarray
    sharpness: np.ndarray
    reasons: list[str] = field(default_factory=list)


def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of a uint8 ``(H, W)``, ``(H, W, 1)`` or RGB ``(H, W, 3)`` image."""
    if image.ndim == 3:
        image = image[..., 0] if image.shape[2] == 1 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    grey = image
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def gate_shots(
    images: np.ndarray,
    embeddings: np.ndarray,
    config: QualityConfig,
    existing: np.ndarray | None = None,
    names: list[str] | None = None,
) -> GateResult:
    """Apply the gate to ``K`` shots of one class.

    Args:
        images: uint8 ``(K, H, W, C)`` at the model's input size.
        embeddings: float32 ``(K, D)`` of those images.
        config: thresholds.
        existing: float32 ``(M, D)`` shots the class already has (``--append``), or None.
        names: a label per shot for messages (file names), or None.

    Returns:
        :class:`GateResult`; shots are compared with earlier *kept* shots, so of two
        duplicates the first is kept.
    """
    if len(images) != len(embeddings):
        raise EdgefsError(f"{len(images)} images but {len(embeddings)} embeddings")
    labels = names or [f"shot {i}" for i in range(len(images))]
    sharp = np.asarray([sharpness(im) for im in images], np.float64)
    keep = np.ones(len(images), bool)
    reasons = []
    kept = [] if existing is None or not len(existing) else list(_unit(np.asarray(existing, np.float32)))
    unit = _unit(np.asarray(embeddings, np.float32))
    for i in range(len(images)):
        if config.min_sharpness > 0 and sharp[i] < config.min_sharpness:
            keep[i] = False
            reasons.append(f"{labels[i]}: too blurry (sharpness {sharp[i]:.1f} < {config.min_sharpness:g}); "
                           "hold the camera still or move closer")
            continue
        if kept and config.max_similarity < 1.0:
            sim = float(np.max(np.stack(kept) @ unit[i]))
            if sim > config.max_similarity:
                keep[i] = False
                reasons.append(f"{labels[i]}: near-duplicate of another shot (cosine {sim:.4f} > "
                               f"{config.max_similarity:g}); vary the view")
                continue
        kept.append(unit[i])
    return GateResult(keep, sharp, reasons)
