"""Imprinted-weights head (Qi et al. 2018): normalised shot means as cosine classifier weights."""

from __future__ import annotations

import numpy as np

from edgefs.heads.base import Head
from edgefs.heads.reference import classify, l2_normalize, row_dots
from edgefs.heads.spec import HEADS


@HEADS.register("imprint", rank=1)
class ImprintHead(Head):
    """Each class's weight is the renormalised mean of its L2-normalised shots.

    Qi, Brown and Lowe, "Low-Shot Learning with Imprinted Weights", CVPR 2018.
    Logits are ``temperature * cos(q, w_c)``; classification is
    :func:`edgefs.heads.reference.classify` (the CUDA kernel's reference).

    Args:
        dim: embedding size ``D``.
        temperature: logit scale (default 10).
        threshold: unknown when the best cosine is below it.
    """

    head_type = "imprint"
    normalize_shots = True

    @property
    def weights(self) -> np.ndarray:
        """float32 ``(C, D)`` unit-norm classifier weights."""
        return self._protos

    def _scores(self, q: np.ndarray) -> np.ndarray:
        return (self.temperature * row_dots(l2_normalize(q), self._protos)).astype(np.float32)

    def _classify(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return classify(q, self._protos, self.temperature, k, self.threshold)
