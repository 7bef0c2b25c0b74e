"""Matching head (Vinyals et al. 2016): attention over every stored shot."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edgefs.errors import EdgefsError
from edgefs.heads.base import HEADS, Head
from edgefs.heads.reference import l2_normalize, softmax


@HEADS.register("matching")
class MatchingHead(Head):
    """Class probability = summed softmax attention of the query over that class's shots.

    Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016 (without
    full-context embeddings). Attention is ``softmax_s(temperature * cos(q, x_s))``
    over all ``S`` stored shots; :meth:`scores` returns its log per class.

    Args:
        dim: embedding size ``D``.
        temperature: attention sharpness (default 10).
        threshold: unknown when the best cosine to a class mean is below it.
    """

    head_type = "matching"
    normalize_shots = True

    def __init__(self, dim: int, *, temperature: float = 10.0, threshold: float = -1.0) -> None:
        super().__init__(dim, temperature=temperature, threshold=threshold)
        self._support = np.zeros((0, self.dim), np.float32)  # (S, D) unit rows
        self._support_labels = np.zeros(0, np.int32)  # (S,)

    def _on_add(self, indices: list[int], shots: list[np.ndarray]) -> None:
        for idx, emb in zip(indices, shots, strict=True):
            self._on_append(idx, emb)

    def _on_append(self, idx: int, shots: np.ndarray) -> None:
        self._support = np.concatenate([self._support, l2_normalize(shots)])
        self._support_labels = np.concatenate([self._support_labels, np.full(len(shots), idx, np.int32)])

    def _on_remove(self, idx: int) -> None:
        keep = self._support_labels != idx
        self._support = self._support[keep]
        labels = self._support_labels[keep]
        self._support_labels = (labels - (labels > idx)).astype(np.int32)

    def probabilities(self, queries: np.ndarray) -> np.ndarray:
        """float ``(Q, D)`` -> float32 ``(Q, C)`` class probabilities (rows sum to 1)."""
        q = self._check_queries(queries)
        attn = softmax(np.float32(self.temperature) * (l2_normalize(q) @ self._support.T))  # (Q, S)
        onehot = np.zeros((len(self._support_labels), len(self.classes)), np.float32)
        onehot[np.arange(len(self._support_labels)), self._support_labels] = 1.0
        return attn @ onehot

    def scores(self, queries: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(self.probabilities(queries), np.float32(1e-30))).astype(np.float32)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"support": self._support.copy(), "support_labels": self._support_labels.copy()}

    def _load_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        support = np.asarray(arrays.get("support"), np.float32)
        labels = np.asarray(arrays.get("support_labels"), np.int32)
        c = len(self.classes)
        if (support.ndim != 2 or support.shape[1] != self.dim or labels.shape != (support.shape[0],)
                or (labels.size and (labels.min() < 0 or labels.max() >= c))
                or (np.bincount(labels, minlength=c) != self._counts).any()):
            raise EdgefsError("saved matching head support does not fit its classes; rebuild it from the samples")
        self._support, self._support_labels = support, labels
