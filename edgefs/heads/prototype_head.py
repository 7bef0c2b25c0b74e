"""Prototype head (Snell et al. 2017): class means, squared Euclidean or cosine scores."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgefs.errors import EdgefsError
from edgefs.heads.base import HEADS, Head
from edgefs.heads.prototype import prototype_logits
from edgefs.heads.reference import classify


@HEADS.register("prototype")
class PrototypeHead(Head):
    """Nearest class mean, the rule a ProtoNet is trained with.

    Snell, Swersky and Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017.
    Shots are averaged as they come (no per-shot normalisation, as in training).

    Args:
        dim: embedding size ``D``.
        distance: ``"euclidean"`` (logits ``-temperature * |q - mean|^2``, the ProtoNet
            default) or ``"cosine"`` (logits ``temperature * cos(q, mean)``, via
            :func:`edgefs.heads.reference.classify`).
        temperature: logit scale; default 1 for Euclidean, 10 for cosine.
        threshold: unknown when the best cosine to a class mean is below it.
    """

    head_type = "prototype"
    params_accepted = ("distance",)
    normalize_shots = False

    def __init__(self, dim: int, *, distance: str = "euclidean", temperature: float | None = None,
                 threshold: float = -1.0) -> None:
        if distance not in ("euclidean", "cosine"):
            raise EdgefsError(f"unknown distance {distance!r}; use 'euclidean' or 'cosine'")
        if temperature is None:
            temperature = 1.0 if distance == "euclidean" else 10.0
        super().__init__(dim, temperature=temperature, threshold=threshold)
        self.distance = distance

    def hyperparams(self) -> dict[str, Any]:
        return {**super().hyperparams(), "distance": self.distance}

    def means(self) -> np.ndarray:
        """float32 ``(C, D)`` raw class means."""
        return (self._sums / self._counts[:, None].astype(np.float32)).astype(np.float32)

    def _scores(self, q: np.ndarray) -> np.ndarray:
        if self.distance == "cosine":
            return prototype_logits(q, self._protos, "cosine", self.temperature)
        return prototype_logits(q, self.means(), "euclidean", self.temperature)

    def _classify(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self.distance == "cosine":
            return classify(q, self._protos, self.temperature, k, self.threshold)
        return super()._classify(q, k)
