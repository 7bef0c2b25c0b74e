"""Siamese head (Koch et al. 2015): weighted L1 verification score, nearest stored shot wins."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edgefs.errors import EdgefsError
from edgefs.heads.base import ShotKeepingHead
from edgefs.heads.spec import HEADS

# |q - s| of one chunk of queries is (rows, S, D) float32; keep a chunk near 32 MiB.
_CHUNK_BYTES = 32 * 2**20


def check_siamese_arrays(arrays: Mapping[str, np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate the spec's ``weight`` and ``bias`` against the embedding size.

    Returns:
        ``(weight float32 (D,), bias float32 (1,))``.

    Raises:
        EdgefsError: missing or unknown arrays, shapes that do not fit ``dim`` (the message
            names the array's shape and the expected one), or non-finite values.
    """
    if set(arrays) != {"weight", "bias"}:
        raise EdgefsError(f"siamese head spec has arrays {sorted(arrays)}; it needs exactly bias, weight. "
                          "Re-export the head spec from a 'siamese' checkpoint")
    weight = np.asarray(arrays["weight"], np.float32)
    bias = np.asarray(arrays["bias"], np.float32)
    for name, a, shape in (("weight", weight, (dim,)), ("bias", bias, (1,))):
        if a.shape != shape:
            raise EdgefsError(f"siamese head spec array {name!r} has shape {a.shape}, but {dim}-d embeddings "
                              f"need {shape}; the spec was made for another backbone or is damaged")
        if not np.isfinite(a).all():
            raise EdgefsError(f"siamese head spec array {name!r} holds NaN or inf; re-export the head spec")
    return weight, bias


def siamese_logits(a: np.ndarray, b: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Verification logits ``bias + sum_j weight_j |a_j - b_j|`` of every pair.

    ``sigmoid`` of a logit is the probability that the two images show the same class.

    Args:
        a: float32 ``(A, D)``.
        b: float32 ``(B, D)``.
        weight: float32 ``(D,)``; negative where a difference speaks against "same".
        bias: float32 ``(1,)``.

    Returns:
        float32 ``(A, B)``.
    """
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    out = np.empty((a.shape[0], b.shape[0]), np.float32)
    rows = max(1, _CHUNK_BYTES // max(1, b.shape[0] * b.shape[1] * 4))
    for s in range(0, a.shape[0], rows):
        out[s : s + rows] = np.abs(a[s : s + rows, None, :] - b[None]) @ weight + bias[0]
    return out


def siamese_scores(
    queries: np.ndarray, support: np.ndarray, support_labels: np.ndarray, classes: int,
    weight: np.ndarray, bias: np.ndarray,
) -> np.ndarray:
    """Class score = the highest verification logit of the query against that class's shots.

    Args:
        queries: float32 ``(Q, D)``.
        support: float32 ``(S, D)``.
        support_labels: int ``(S,)`` in ``0..classes-1``, every class present.
        classes: ``C``.
        weight: float32 ``(D,)``.
        bias: float32 ``(1,)``.

    Returns:
        float32 ``(Q, C)``.
    """
    pair = siamese_logits(queries, support, weight, bias)  # (Q, S)
    out = np.full((pair.shape[0], classes), -np.inf, np.float32)
    np.maximum.at(out.T, np.asarray(support_labels, np.intp), pair.T)
    if np.isinf(out).any():
        raise EdgefsError("a class has no stored shots; every class needs at least one")
    return out


@HEADS.register("siamese", rank=4)
class SiameseHead(ShotKeepingHead):
    """Nearest stored shot under the learned weighted-L1 verification score.

    Koch, Zemel and Salakhutdinov, "Siamese Neural Networks for One-shot Image
    Recognition", ICML Deep Learning Workshop 2015: ``p(same) = sigmoid(bias + sum_j
    weight_j |q_j - s_j|)``; a query takes the class of the shot it most likely matches.
    :meth:`scores` returns, per class, the best verification logit. Shots are kept raw
    (as trained); without spec arrays ``weight = -1`` (plain L1 nearest neighbour).

    Args:
        dim: embedding size ``D``.
        temperature: scale applied to the logits (1 as trained).
        threshold: unknown when the best cosine to a class mean is below it.
    """

    head_type = "siamese"
    normalize_shots = False
    supports_center = False  # the learned arrays were trained on raw features

    def __init__(self, dim: int, *, temperature: float = 1.0, threshold: float = -1.0) -> None:
        super().__init__(dim, temperature=temperature, threshold=threshold)
        self.weight = -np.ones(self.dim, np.float32)
        self.bias = np.zeros(1, np.float32)

    def _use_spec_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        if arrays:
            self.weight, self.bias = check_siamese_arrays(arrays, self.dim)

    def _scores(self, q: np.ndarray) -> np.ndarray:
        raw = siamese_scores(q, self._support, self._support_labels, len(self.classes), self.weight, self.bias)
        return (np.float32(self.temperature) * raw).astype(np.float32)
