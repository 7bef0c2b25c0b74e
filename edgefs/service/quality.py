"""The enrollment quality gate: reject blurry shots and near-duplicates, saying why.

A class enrolled from five copies of one blurry frame is one shot, not five, and
drags its prototype towards motion blur. Blur is measured as the variance of the
Laplacian of the grey image (high for sharp edges, low for smooth blur); a shot
is a near-duplicate when its embedding's cosine similarity to an earlier shot of
the same class (or an already stored one) is above ``max_similarity``.

Sharpness is measured at the resolution the shot's content really has
(:func:`shot_sharpness`): the frame as the engine sees it when fitting it to the
input shrinks it (a camera frame, where blur that survives the shrink is blur the
model sees), and the frame at its own resolution when fitting would enlarge it.
Enlarging interpolates, which lowers the variance of the Laplacian by roughly the
square of the factor or more (a sharp 64 px photo upscaled to 224 px scored
16.9): that is smoothness added by the resize, not blur in the shot, so it must
not count against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from edgefs.errors import EdgefsError
from edgefs.runtime.preprocess import FitMode, fit_frame


@dataclass
class QualityConfig:
    """Thresholds of the gate.

    Attributes:
        min_sharpness: smallest accepted variance of the Laplacian, measured at the
            smaller of the shot's own resolution and the model's input size
            (:func:`shot_sharpness`; 0 turns the blur check off). Camera frames of a textured object
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


def fit_scale(height: int, width: int, size: int | tuple[int, int], mode: str) -> float:
    """How much fitting a ``height x width`` frame to ``size`` in ``mode`` scales its content (> 1: enlarges)."""
    th, tw = (size, size) if isinstance(size, (int, np.integer)) else size
    sy, sx = th / height, tw / width
    return min(sy, sx) if mode == "letterbox" else max(sy, sx)


def shot_sharpness(frame: np.ndarray, size: int | tuple[int, int], mode: FitMode = "center_crop",
                   input_order: str = "RGB") -> float:
    """Variance of the Laplacian of a shot at the resolution its content has, never enlarged.

    Args:
        frame: uint8 ``(H, W)`` or ``(H, W, C)`` image as read (any size).
        size: the engine's input side (or ``(h, w)``).
        mode: the preprocessing fit mode (:mod:`edgefs.runtime.preprocess`).
        input_order: ``"RGB"`` or ``"BGR"``.

    Returns:
        the sharpness of the frame fitted to ``size`` when that shrinks it (or keeps
        its size), else of the same region fitted at the frame's own scale.
    """
    image = np.asarray(frame)
    scale = fit_scale(image.shape[0], image.shape[1], size, mode)
    th, tw = (size, size) if isinstance(size, (int, np.integer)) else size
    if scale > 1.0:  # the engine would enlarge it: measure the same region without the enlargement
        th, tw = max(1, round(th / scale)), max(1, round(tw / scale))
    return sharpness(fit_frame(image, (th, tw), mode=mode, input_order=input_order))


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def gate_shots(
    images: np.ndarray,
    embeddings: np.ndarray,
    config: QualityConfig,
    existing: np.ndarray | None = None,
    names: list[str] | None = None,
    sharpness_values: np.ndarray | None = None,
) -> GateResult:
    """Apply the gate to ``K`` shots of one class.

    Args:
        images: uint8 ``(K, H, W, C)`` at the model's input size.
        embeddings: float32 ``(K, D)`` of those images.
        config: thresholds.
        existing: float32 ``(M, D)`` shots the class already has (``--append``), or None.
        names: a label per shot for messages (file names), or None.
        sharpness_values: float ``(K,)`` sharpness per shot measured by the caller on the
            frames as read (:func:`shot_sharpness`); None: measured on ``images``.

    Returns:
        :class:`GateResult`; shots are compared with earlier *kept* shots, so of two
        duplicates the first is kept.
    """
    if len(images) != len(embeddings):
        raise EdgefsError(f"{len(images)} images but {len(embeddings)} embeddings")
    labels = names or [f"shot {i}" for i in range(len(images))]
    if sharpness_values is None:
        sharp = np.asarray([sharpness(im) for im in images], np.float64)
    else:
        sharp = np.asarray(sharpness_values, np.float64).reshape(-1)
        if len(sharp) != len(images):
            raise EdgefsError(f"{len(images)} images but {len(sharp)} sharpness values")
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
