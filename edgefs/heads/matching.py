"""Matching head (Vinyals et al. 2016): attention over every stored shot."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edgefs.heads.base import HEADS, Head, KeepsShots
from edgefs.heads.reference import l2_normalize, row_dots, softmax


@HEADS.register("matching")
class MatchingHead(KeepsShots, Head):
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
        self._init_shots()  # unit rows

    def _on_add(self, indices: list[int], shots: list[np.ndarray]) -> None:
        for idx, emb in zip(indices, shots, strict=True):
            self._keep_shots(idx, emb)

    def _on_append(self, idx: int, shots: np.ndarray) -> None:
        self._keep_shots(idx, shots)

    def _on_remove(self, idx: int) -> None:
        self._forget_shots(idx)

    def probabilities(self, queries: np.ndarray) -> np.ndarray:
        """float ``(Q, D)`` -> float32 ``(Q, C)`` class probabilities (rows sum to 1)."""
        return self._probabilities(self._check_queries(queries))

    def _probabilities(self, q: np.ndarray) -> np.ndarray:
        attn = softmax(np.float32(self.temperature) * row_dots(l2_normalize(q), self._support))  # (Q, S)
        # Sum each class's attention: O(Q S), where a one-hot (S, C) product would be O(S C) memory.
        c, labels = len(self.classes), self._support_labels
        return np.stack([np.bincount(labels, weights=row, minlength=c) for row in attn]).astype(np.float32)

    def _scores(self, q: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(self._probabilities(q), np.float32(1e-30))).astype(np.float32)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return self._shots_state()

    def _load_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        self._restore_shots(arrays, "matching head support")
