"""Parity: every check that an exported graph or engine embeds as its reference does.

At export, the ONNX graph in ONNX Runtime against the PyTorch backbone, on real images
(:func:`check_parity`): both run the same uint8 ``(B, S, S, 3)`` RGB batches; each image's
embedding is compared by its largest absolute difference and its cosine similarity, once per
batch size (1 and a larger one), so a graph that is only right at the traced batch size is
caught. For INT8 bundles and TensorRT engines, what they share beside the per-image cosines
(:func:`edgefs.runtime.selfcheck.cosines`): nearest-prototype agreement on held-out episodes
(:func:`episode_agreement`) and seeded synthetic images where no real ones are at hand
(:func:`synthetic_images`).

PyTorch (and the ONNX exporter) are imported only by :func:`check_parity`: ``edgefs quantize``
and ``edgefs build-engine`` use the rest without them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edgefs._lazy import require
from edgefs.data.images import open_split, read_image
from edgefs.errors import DataError
from edgefs.runtime.bundle import INPUT_NAME, OUTPUT_NAME

if TYPE_CHECKING:
    from edgefs.backbones import Backbone

DEFAULT_BATCH_SIZES = (1, 16)
#: Held-out episodes of the agreement check (:func:`episode_agreement`).
EPISODES = 200


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
    import torch
    from edgefs.export.onnx_export import ExportError

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


def synthetic_images(count: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """uint8 ``(count, H, W, 3)``: seeded gradients, rectangles and noise, for parity when no real
    images are at hand (recorded as such in the header)."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((count, h, w, 3), np.uint8)
    for i in range(count):
        base = rng.uniform(0, 255, 3) + rng.uniform(-1, 1, 3) * (xx[..., None] / w * 120 + yy[..., None] / h * 80)
        image = base + rng.normal(0, 12, (h, w, 3))
        for _ in range(3):
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            image[y0:y0 + rng.integers(2, h // 2 + 2), x0:x0 + rng.integers(2, w // 2 + 2)] = rng.uniform(0, 255, 3)
        out[i] = np.clip(image, 0, 255).astype(np.uint8)
    return out


def episode_agreement(
    reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray, distance: str = "euclidean",
    ways: int = 5, shots: int = 1, episodes: int = EPISODES, seed: int = 0,
) -> dict[str, Any] | None:
    """Nearest-prototype classification on held-out episodes with both sets of embeddings.

    Args:
        reference, candidate: float ``(N, D)`` embeddings of the same images (ONNX Runtime, TensorRT).
        labels: int ``(N,)`` classes of the images.
        distance: ``"euclidean"`` or ``"cosine"`` (the bundle head's).
        ways, shots: per episode; every other image of a chosen class is a query.

    Returns:
        ``{"episodes", "ways", "shots", "queries", "top1_agreement", "accuracy_reference",
        "accuracy_candidate"}``, or None when fewer than 2 classes have ``shots + 1`` images.
    """
    counts = np.bincount(labels)
    usable = np.flatnonzero(counts >= shots + 1)
    if len(usable) < 2:
        return None
    ways = min(ways, len(usable))
    rng = np.random.default_rng(seed)
    agree = total = right_ref = right_cand = 0
    for _ in range(episodes):
        classes = rng.choice(usable, ways, replace=False)
        support, query, query_y = [], [], []
        for way, c in enumerate(classes):
            idx = rng.permutation(np.flatnonzero(labels == c))
            support.append(idx[:shots])
            query.extend(idx[shots:])
            query_y.extend([way] * (len(idx) - shots))
        q, y = np.asarray(query), np.asarray(query_y)
        preds = []
        for emb in (reference, candidate):
            protos = np.stack([emb[s].mean(0) for s in support])
            if distance == "cosine":
                a = emb[q] / np.maximum(np.linalg.norm(emb[q], axis=1, keepdims=True), 1e-12)
                p = protos / np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)
                preds.append((a @ p.T).argmax(1))
            else:
                preds.append(((emb[q][:, None, :] - protos[None]) ** 2).sum(-1).argmin(1))
        agree += int((preds[0] == preds[1]).sum())
        right_ref += int((preds[0] == y).sum())
        right_cand += int((preds[1] == y).sum())
        total += len(q)
    return {"episodes": episodes, "ways": int(ways), "shots": shots, "queries": total,
            "top1_agreement": agree / total, "accuracy_reference": right_ref / total,
            "accuracy_candidate": right_cand / total}
