"""Matching head (Vinyals et al. 2016): attention over every stored shot."""

from __future__ import annotations

import numpy as np

from edgefs.heads.base import ShotKeepingHead
from edgefs.heads.reference import l2_normalize, row_dots, softmax
from edgefs.heads.spec import HEADS


@HEADS.register("matching", rank=2)
class MatchingHead(ShotKeepingHead):
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
