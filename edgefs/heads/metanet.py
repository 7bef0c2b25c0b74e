"""MetaNet head (after Munkhdalai & Yu 2017): fast weights generated at enrollment, slow weights learned, NumPy only.

Slow weights (learned across tasks, in the spec): a representation layer
``h(e) = relu(q_w @ normalize(e) + q_b)`` and the meta-learner ``G``. Fast weights (made
on the device from a class's shots): the class's output row
``w_c = mean_i G(m_i)``, where ``m_i`` is the meta-information of shot ``i``: the gradient,
with respect to the class's output row, of that shot's one-vs-rest logistic loss at a
zero row, which for a linear layer is ``-h(e_i) / 2`` and needs no backward pass.
``G(m) = g2 @ relu(g1 @ m + g1_b) + g_scale * m``. A query's logit for class ``c`` is
``temperature * cos(h(q), w_c)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edgefs.errors import EdgefsError
from edgefs.heads.base import Head
from edgefs.heads.reference import l2_normalize
from edgefs.heads.spec import HEADS

#: Spec arrays: slow representation layer, then the meta-learner that maps gradients to fast weights.
METANET_ARRAYS = ("q_w", "q_b", "g1", "g1_b", "g2", "g_scale")


def default_metanet(dim: int) -> dict[str, np.ndarray]:
    """The untrained module: ``h`` = ReLU of the unit embedding, ``G(m) = -2m`` (fast row = mean ``h``).

    With it the head is a cosine nearest-class-mean classifier on rectified unit embeddings.
    """
    return {"q_w": np.eye(dim, dtype=np.float32), "q_b": np.zeros(dim, np.float32),
            "g1": np.zeros((0, dim), np.float32), "g1_b": np.zeros(0, np.float32),
            "g2": np.zeros((dim, 0), np.float32), "g_scale": np.array([-2.0], np.float32)}


def check_metanet(arrays: Mapping[str, np.ndarray], dim: int) -> dict[str, np.ndarray]:
    """Validate MetaNet arrays for ``dim``-d embeddings; float32 copies.

    Raises:
        EdgefsError: missing or unknown arrays, shapes that do not fit, non-finite values.
    """
    if set(arrays) != set(METANET_ARRAYS):
        raise EdgefsError(f"metanet head spec has arrays {sorted(arrays)}; it needs exactly "
                          f"{', '.join(METANET_ARRAYS)}. Re-export the head spec from a 'metanet' checkpoint")
    out = {k: np.asarray(arrays[k], np.float32) for k in METANET_ARRAYS}
    h = out["q_w"].shape[0] if out["q_w"].ndim == 2 else -1
    g = out["g1"].shape[0] if out["g1"].ndim == 2 else -1
    expected = {"q_w": (h, dim), "q_b": (h,), "g1": (g, h), "g1_b": (g,), "g2": (h, g), "g_scale": (1,)}
    for name, shape in expected.items():
        if out[name].shape != shape or h < 1:
            raise EdgefsError(f"metanet head spec array {name!r} has shape {out[name].shape}, expected {shape} "
                              f"for {dim}-d embeddings; the spec was made for another backbone or is damaged")
        if not np.isfinite(out[name]).all():
            raise EdgefsError(f"metanet head spec array {name!r} holds NaN or inf; re-export the head spec")
    return out


def metanet_features(embeddings: np.ndarray, q_w: np.ndarray, q_b: np.ndarray) -> np.ndarray:
    """Slow representation ``h``: float ``(R, D)`` -> float32 ``(R, H)``."""
    return np.maximum(l2_normalize(embeddings) @ q_w.T + q_b, np.float32(0.0)).astype(np.float32)


def fast_weights(h: np.ndarray, g1: np.ndarray, g1_b: np.ndarray, g2: np.ndarray, g_scale: np.ndarray) -> np.ndarray:
    """Per-shot fast-weight rows ``G(-h / 2)``: float32 ``(R, H)`` -> float32 ``(R, H)``."""
    m = np.float32(-0.5) * h  # d/dw softplus(-w . h) at w = 0
    out = np.float32(g_scale[0]) * m
    if g1.shape[0]:
        out = out + np.maximum(m @ g1.T + g1_b, np.float32(0.0)) @ g2.T
    return out.astype(np.float32)


@HEADS.register("metanet", rank=7)
class MetaNetHead(Head):
    """Meta Networks head: a class's output row is a fast weight generated from its shots' loss gradients.

    Munkhdalai and Yu, "Meta Networks", ICML 2017: slow weights learned across tasks, fast
    weights produced by a meta-learner from the support set's loss gradients. Here the
    fast weights are the output layer's rows (module docstring); the paper's
    representation-level fast weights and its per-example memory of fast weights are left
    out, so enrolling a class touches that class's row only.

    Args:
        dim: embedding size ``D``.
        temperature: logit scale on cosines (learned).
        threshold: unknown when the best cosine to a class mean is below it.
    """

    head_type = "metanet"
    supports_center = False  # the slow weights were trained on raw features

    def __init__(self, dim: int, *, temperature: float = 10.0, threshold: float = -1.0) -> None:
        super().__init__(dim, temperature=temperature, threshold=threshold)
        self.module = default_metanet(self.dim)
        self._fast_sums = np.zeros((0, self.hidden), np.float32)

    @property
    def hidden(self) -> int:
        return int(self.module["q_w"].shape[0])

    def _use_spec_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        if arrays:
            self.module = check_metanet(arrays, self.dim)
            self._fast_sums = np.zeros((0, self.hidden), np.float32)

    def fast(self, shots: np.ndarray) -> np.ndarray:
        """Fast-weight rows of float32 ``(K, D)`` shots: ``(K, H)``."""
        m = self.module
        return fast_weights(metanet_features(shots, m["q_w"], m["q_b"]), m["g1"], m["g1_b"], m["g2"], m["g_scale"])

    def _on_add(self, indices: list[int], shots: list[np.ndarray]) -> None:
        rows = np.stack([self.fast(emb).sum(0) for emb in shots])
        self._fast_sums = np.concatenate([self._fast_sums, rows.astype(np.float32)])

    def _on_append(self, idx: int, shots: np.ndarray) -> None:
        self._fast_sums[idx] += self.fast(shots).sum(0)

    def _on_remove(self, idx: int) -> None:
        self._fast_sums = np.delete(self._fast_sums, idx, axis=0)

    @property
    def fast_rows(self) -> np.ndarray:
        """float32 ``(C, H)`` each class's fast weight (mean over its shots)."""
        return (self._fast_sums / self._counts[:, None].astype(np.float32)).astype(np.float32)

    def _scores(self, q: np.ndarray) -> np.ndarray:
        h = metanet_features(q, self.module["q_w"], self.module["q_b"])
        return (np.float32(self.temperature) * (l2_normalize(h) @ l2_normalize(self.fast_rows).T)).astype(np.float32)

    fork_copies_arrays = True  # a class's fast-weight row is summed in place

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"fast_sums": self._fast_sums.copy()}

    def _row_arrays(self, idx: int) -> dict[str, np.ndarray]:
        return {"fast_sums": self._fast_sums[idx].copy()}

    def _load_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        fast = np.asarray(arrays.get("fast_sums"), np.float32)
        if fast.shape != (len(self.classes), self.hidden) or not np.isfinite(fast).all():
            raise EdgefsError(f"saved metanet fast weights {fast.shape} do not fit its {len(self.classes)} classes "
                              f"of width {self.hidden}; rebuild the head from the stored samples")
        self._fast_sums = fast
