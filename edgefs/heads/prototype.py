"""Prototype head, NumPy reference: class means, then squared Euclidean or cosine.

This is the rule a ProtoNet is trained with and what the device runs; episodic
evaluation uses it too, so reported accuracy is the device's accuracy.
"""

from __future__ import annotations

import numpy as np

from edgefs.errors import EdgefsError


def class_means(embeddings: np.ndarray, labels: np.ndarray, ways: int) -> np.ndarray:
    """Args: embeddings float ``(S, D)``, labels int ``(S,)`` in 0..ways-1.

    Returns: float32 ``(ways, D)`` per-class means.
    """
    sums = np.zeros((ways, embeddings.shape[1]), np.float64)
    np.add.at(sums, labels, embeddings)
    counts = np.bincount(labels, minlength=ways)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0).tolist()
        raise EdgefsError(f"classes {missing} have no support embeddings; every class needs at least one shot")
    return (sums / counts[:, None]).astype(np.float32)


def prototype_logits(
    queries: np.ndarray, prototypes: np.ndarray, distance: str = "euclidean", temperature: float = 1.0
) -> np.ndarray:
    """Scores of each query against each prototype (higher is closer).

    Args:
        queries: float ``(Q, D)``.
        prototypes: float ``(C, D)``.
        distance: ``"euclidean"`` (negative squared distance, Snell et al.) or
            ``"cosine"`` (cosine similarity times ``temperature``).
        temperature: scale applied to the scores.

    Returns:
        float32 ``(Q, C)``.
    """
    q = queries.astype(np.float32, copy=False)
    p = prototypes.astype(np.float32, copy=False)
    if distance == "euclidean":
        # -|q - p|^2 = 2 q.p - |q|^2 - |p|^2, written as a matmul (same as the device kernel).
        d2 = (q * q).sum(1, keepdims=True) - 2.0 * q @ p.T + (p * p).sum(1)[None, :]
        return (-temperature * d2).astype(np.float32)
    if distance == "cosine":
        qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        pn = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
        return (temperature * (qn @ pn.T)).astype(np.float32)
    raise EdgefsError(f"unknown distance {distance!r}; use 'euclidean' or 'cosine'")
