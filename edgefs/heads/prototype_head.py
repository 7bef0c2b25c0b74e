"""Prototype head (Snell et al. 2017): class means, squared Euclidean or cosine scores."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edgefs.errors import EdgefsError
from edgefs.heads.base import Head
from edgefs.heads.prototype import prototype_logits
from edgefs.heads.reference import classify, row_dots, softmax, topk
from edgefs.heads.rows import Rows
from edgefs.heads.spec import HEADS


@HEADS.register("prototype", rank=0)
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
        # |mean| per class: with the unit prototypes it gives q . mean without a (C, D) means matrix.
        self._r_norms = Rows((), np.float32)

    def hyperparams(self) -> dict[str, Any]:
        return {**super().hyperparams(), "distance": self.distance}

    def means(self) -> np.ndarray:
        """float32 ``(C, D)`` raw class means."""
        return (self._sums / self._counts[:, None].astype(np.float32)).astype(np.float32)

    def _accumulate(self, idx: int, emb: np.ndarray) -> None:
        super()._accumulate(idx, emb)
        norm = np.float32(np.linalg.norm(self._sums[idx]) / np.float32(self._counts[idx]))
        if idx >= self._r_norms.n:
            self._r_norms.extend(np.array([norm], np.float32))
        else:
            self._r_norms.writable()[idx] = norm

    def _on_remove(self, idx: int) -> None:
        self._r_norms.delete(idx)

    def _load_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        norms = np.linalg.norm(self._sums, axis=1) / self._counts.astype(np.float32)
        self._r_norms = Rows((), np.float32, norms.astype(np.float32))

    def _euclidean(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``-temperature |q - mean|^2`` and the cosines, from one product with the unit prototypes:
        ``q . mean = |mean| (q . p)``. float32 ``(Q, C)`` each."""
        qnorm = np.linalg.norm(q, axis=1, keepdims=True).astype(np.float32)
        dots = row_dots(q, self._protos)  # q . p
        m = self._r_norms.view[None, :]
        d2 = qnorm * qnorm - np.float32(2.0) * m * dots + m * m
        cos = dots / np.maximum(qnorm, np.float32(1e-12))
        return (-np.float32(self.temperature) * d2).astype(np.float32), cos.astype(np.float32)

    def _scores(self, q: np.ndarray) -> np.ndarray:
        if self.distance == "cosine":
            return prototype_logits(q, self._protos, "cosine", self.temperature)
        return self._euclidean(q)[0]

    def _classify(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self.distance == "cosine":
            return classify(q, self._protos, self.temperature, k, self.threshold)
        logits, cos = self._euclidean(q)
        top_idx, top_prob = topk(softmax(logits), k)
        best_sim = cos.max(axis=1).astype(np.float32)
        return top_idx, top_prob, best_sim, best_sim < np.float32(self.threshold)
