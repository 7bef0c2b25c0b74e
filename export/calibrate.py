"""The calibration side of :func:`edgefs.export.quantize.quantize_bundle`: how many images, read how, judged how.

:func:`_split_counts` and :func:`_clamped` decide how many images calibrate and how many are held
out for the parity check; :func:`_reader` hands the calibration batches to ONNX Runtime one at a
time; :class:`CalibrationStats` (and :func:`calibration_warnings`) looks at them for signs that
they are not the camera's domain.

No PyTorch: this runs on a workstation or on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from edgefs.runtime.bundle import INPUT_NAME, Manifest
from edgefs.runtime.calibration import CalibrationSource


def _reader(quantization: Any, batches: Callable[[], Iterator[np.ndarray]]) -> Any:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over uint8 camera batches.

    ``batches`` gives a fresh iterator at each (re)start: ONNX Runtime asks for one batch at a
    time, so only the batch in hand is in memory, whatever the number of calibration images.
    """

    class Reader(quantization.CalibrationDataReader):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            self._it: Iterator[np.ndarray] = batches()

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {INPUT_NAME: batch}

        def rewind(self) -> None:
            self._it = batches()

    return Reader()


class CalibrationStats:
    """What :func:`calibration_warnings` judges, gathered one batch at a time.

    Sums, not the images: per-pixel sums and sums of squares (the spread over images),
    a grey count, and the sum of the unit embeddings (the mean pairwise cosine is
    ``(|sum u|^2 - sum |u|^2) / (n (n - 1))``), so memory does not grow with the images.
    """

    def __init__(self) -> None:
        self.n = 0
        self.grey = 0
        self._sum: np.ndarray | None = None
        self._sumsq: np.ndarray | None = None
        self._unit_sum: np.ndarray | None = None
        self._unit_sq = 0.0

    def add(self, images: np.ndarray, fp32_embeddings: np.ndarray) -> None:
        """Count a batch: uint8 ``(B, H, W, 3)`` images and their float ``(B, D)`` FP32 embeddings."""
        x = images.astype(np.int16)
        grey = (np.abs(x[..., 0] - x[..., 1]).max(axis=(1, 2)) <= 2) & \
               (np.abs(x[..., 1] - x[..., 2]).max(axis=(1, 2)) <= 2)
        self.grey += int(grey.sum())
        flat = images.reshape(len(images), -1).astype(np.float64)
        self._sum = flat.sum(0) if self._sum is None else self._sum + flat.sum(0)
        self._sumsq = (flat**2).sum(0) if self._sumsq is None else self._sumsq + (flat**2).sum(0)
        e = fp32_embeddings.astype(np.float64)
        unit = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        self._unit_sum = unit.sum(0) if self._unit_sum is None else self._unit_sum + unit.sum(0)
        self._unit_sq += float((unit**2).sum())
        self.n += len(images)

    def warnings(self, manifest: Manifest) -> list[str]:
        """One sentence per problem: grey images for a colour backbone, near-identical images
        (a covered lens, one static scene), or near-identical embeddings."""
        out: list[str] = []
        n = self.n
        colour = int(manifest.backbone.get("in_channels", 3)) == 3
        if colour and n and self.grey / n > 0.5:
            out.append(f"{self.grey} of {n} calibration images are grey, but the backbone takes colour: the INT8 "
                       "ranges fit grey images and colour frames may be clipped; calibrate on colour frames of the "
                       "camera")
        if n >= 2 and self._sum is not None and self._sumsq is not None:
            mean = self._sum / n
            spread = float(np.sqrt(np.maximum(self._sumsq / n - mean**2, 0.0)).mean())
            if spread < 4.0:
                out.append("the calibration images are nearly identical (pixel spread below 4 grey levels): a "
                           "covered lens or one static scene; calibrate on varied frames of the camera's domain")
        if n >= 2 and self._unit_sum is not None:
            mean_off = (float(self._unit_sum @ self._unit_sum) - self._unit_sq) / (n * (n - 1))
            if mean_off > 0.97:
                out.append(f"the calibration images look alike to the model (mean pairwise cosine {mean_off:.3f}): "
                           "the INT8 ranges fit one kind of picture; calibrate on the variety the camera will see")
        return out


def calibration_warnings(images: np.ndarray, fp32_embeddings: np.ndarray, manifest: Manifest) -> list[str]:
    """Signs that the calibration images are not the camera's domain (:class:`CalibrationStats`).

    Args:
        images: uint8 ``(N, H, W, 3)`` calibration images as the engine sees them.
        fp32_embeddings: float32 ``(N, D)`` their FP32 embeddings.
        manifest: the parent bundle's manifest (is the backbone a colour one?).

    Returns:
        one sentence per problem: grey images for a colour backbone, near-identical images
        (a covered lens, one static scene), or near-identical embeddings.
    """
    stats = CalibrationStats()
    stats.add(images, fp32_embeddings)
    return stats.warnings(manifest)


def _clamped(asked: int, most: int, flag: str, limit: str, log: Callable[[str], None]) -> int:
    """``asked``, or ``most`` with a note where it is over the limit (the count is an upper bound already:
    a shorter folder gives fewer)."""
    if asked <= most:
        return asked
    log(f"note: {flag} {asked} is over the limit of {most} (edgefs.limits.{limit}); using {most}")
    return most


def _split_counts(source: CalibrationSource, calib_images: int, parity_images: int) -> tuple[int, int]:
    """How many images calibrate and how many are held out, leaving a quarter for parity where short."""
    total = len(source)
    if source.kind == "video":
        return min(calib_images, total), parity_images
    held = min(parity_images, max(total // 4, 0))
    return min(calib_images, total - held), held
