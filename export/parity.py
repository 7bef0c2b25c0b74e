"""Parity at export: the ONNX graph in ONNX Runtime against the PyTorch backbone, on real images.

Both run the same uint8 ``(B, S, S, 3)`` RGB batches; each image's embedding is
compared by its largest absolute difference and its cosine similarity. The
comparison runs once per batch size (1 and a larger one), so a graph that is
only right at the traced batch size is caught.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from edgefs.export.onnx_export import ExportError

from edgefs._lazy import require
from edgefs.backbones import Backbone
from edgefs.data.images import open_split, read_image
from edgefs.errors import DataError
from edgefs.runtime.bundle import INPUT_NAME, OUTPUT_NAME

DEFAULT_BATCH_SIZES = (1, 16)


def parity_images(data: str | Path | Sequence[str | Path], split: str, size: int, count: int,
                  seed: int = 0) -> np.ndarray:
    """``count`` real images spread over the classes of one split, as the camera would give them.

    Classes are visited in a seeded random order, one image from each in turn, so
    that a small ``count`` still covers many classes. Several sources (the domain
    folders a checkpoint was trained on) share ``count`` between them, in turn.

    Args:
        data: a data source as :func:`edgefs.data.images.open_split` reads it, or a list of them.
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: the backbone's input side; images are resized to ``size x size``.
        count: how many images (fewer if the split holds fewer).
        seed: the selection seed.

    Returns:
        uint8 ``(N, size, size, 3)`` RGB, ``N = min(count, images in the split)``.
    """
    if not isinstance(data, str | Path):
        sources = list(data)
        if not sources:
            raise DataError("no data source given for the parity images; pass --data DIR")
        shares = [count // len(sources) + (i < count % len(sources)) for i in range(len(sources))]
        parts = [parity_images(s, split, size, n, seed) for s, n in zip(sources, shares, strict=True) if n > 0]
        return np.concatenate(parts)
    try:  # at native size first: reading a whole split at e.g. 224 px would take gigabytes
        images = open_split(data, split, channels=3, size=None)  # type: ignore[arg-type]
    except DataError:
        # Images of mixed sizes need a size; any other refusal is raised again by this call.
        images = open_split(data, split, channels=3, size=size)
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(images.labels == c)) for c in rng.permutation(images.num_classes)]
    order = [int(idx[r]) for r in range(max(map(len, per_class), default=0)) for idx in per_class if r < len(idx)]
    chosen = order[:count]
    if images.images.shape[1:3] == (size, size):
        return np.ascontiguousarray(images.images[chosen])
    if images.paths:  # decode the chosen files at the input size, as open_split(size=size) would
        return np.stack([read_image(images.paths[i], 3, size) for i in chosen])
    native = images.images.shape[1]
    interp = cv2.INTER_AREA if native > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(images.images[i], (size, size), interpolation=interp) for i in chosen])


@dataclass
class ParityReport:
    """ONNX Runtime vs PyTorch on the same images.

    Attributes:
        rows: one per batch size: ``{"batch", "images", "max_abs_diff", "min_cosine",
            "mean_cosine"}``.
        summary: the same figures over every row (``"batch": "all"``).
        provider: the ONNX Runtime execution provider used.
        data: where the images came from (``{"data", "split", "seed"}``).
    """

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    provider: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def min_cosine(self) -> float:
        return float(self.summary["min_cosine"])

    @property
    def max_abs_diff(self) -> float:
        return float(self.summary["max_abs_diff"])

    def to_json(self) -> dict[str, Any]:
        return {"provider": self.provider, "data": self.data, "rows": self.rows, "summary": self.summary}

    def table(self) -> str:
        """A markdown table: one row per batch size, then the summary."""
        lines = ["| batch | images | max abs diff | min cosine | 1 - min cosine | mean cosine |",
                 "|---|---|---|---|---|---|"]
        for row in [*self.rows, self.summary]:
            lines.append(f"| {row['batch']} | {row['images']} | {row['max_abs_diff']:.3g} | "
                         f"{row['min_cosine']:.7f} | {1.0 - row['min_cosine']:.2g} | {row['mean_cosine']:.7f} |")
        return "\n".join(lines)


def _figures(batch: int | str, max_abs: np.ndarray, cosine: np.ndarray) -> dict[str, Any]:
    return {"batch": batch, "images": int(cosine.size), "max_abs_diff": float(max_abs.max()),
            "min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean())}


def compare(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image figures for two float ``(N, D)`` embedding arrays.

    Returns:
        ``(max_abs_diff float64 (N,), cosine float64 (N,))``; two all-zero rows count as cosine 1.
    """
    a, b = reference.astype(np.float64), candidate.astype(np.float64)
    max_abs = np.abs(a - b).max(axis=1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    cosine = np.where(both_zero, 1.0, (a * b).sum(axis=1) / np.maximum(norms, 1e-30))
    return max_abs, cosine


def check_parity(
    backbone: Backbone,
    onnx_path: str | Path,
    images: np.ndarray,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
) -> ParityReport:
    """Run ``images`` through PyTorch and ONNX Runtime (CPU) at each batch size and compare.

    Args:
        backbone: the PyTorch backbone, put in eval mode.
        onnx_path: its exported graph (input ``images``, output ``embeddings``).
        images: uint8 ``(N, S, S, 3)`` RGB, N >= 1.
        batch_sizes: chunk sizes to run at; include 1 and one larger.

    Returns:
        the figures; deciding pass/fail is the caller's.
    """
    ort = require("onnxruntime", install="pip install 'edgefs[train]'", why="the export parity check")
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or len(images) == 0:
        raise ValueError(f"parity images must be uint8 (N, S, S, 3) with N >= 1, got {images.dtype}{images.shape}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    provider = "CPUExecutionProvider"
    session = ort.InferenceSession(str(onnx_path), options, providers=[provider])
    backbone.eval()
    rows, all_abs, all_cos = [], [], []
    for batch in batch_sizes:
        abs_parts, cos_parts = [], []
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch]
            with torch.inference_mode():
                expected = backbone(torch.from_numpy(chunk)).numpy()
            (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: chunk})
            if got.shape != expected.shape:
                raise ExportError(f"ONNX Runtime returned {got.shape} for a batch of {len(chunk)}, "
                                 f"PyTorch {expected.shape}")
            max_abs, cosine = compare(expected, got)
            abs_parts.append(max_abs)
            cos_parts.append(cosine)
        max_abs, cosine = np.concatenate(abs_parts), np.concatenate(cos_parts)
        rows.append(_figures(int(batch), max_abs, cosine))
        all_abs.append(max_abs)
        all_cos.append(cosine)
    summary = _figures("all", np.concatenate(all_abs), np.concatenate(all_cos))
    summary["images"] = len(images)  # distinct images, each run once per batch size
    return ParityReport(rows, summary, provider)
