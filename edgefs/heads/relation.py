"""Relation head (Sung et al. 2018): a learned module scores each (query, class mean) pair, NumPy only."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edgefs.errors import EdgefsError
from edgefs.heads.base import Head
from edgefs.heads.spec import HEADS

#: Spec arrays of the relation module, in the order :func:`relation_scores` takes them.
RELATION_ARRAYS = ("linear", "w1", "b1", "w2", "b2")
# Pair features of one chunk of queries are (rows, C, 2D) float32; keep a chunk near 32 MiB.
_CHUNK_BYTES = 32 * 2**20


def default_relation_module(dim: int) -> dict[str, np.ndarray]:
    """The untrained module: no hidden units, linear term ``-|q - p|`` summed (L1 to the class mean).

    A relation head built without learned arrays is therefore a nearest-class-mean
    classifier under L1 distance; :class:`edgefs.methods.relation.RelationNet` starts
    training from this module too.

    Returns:
        float32 arrays ``linear (2D,)``, ``w1 (0, 2D)``, ``b1 (0,)``, ``w2 (0,)``, ``b2 (1,)``.
    """
    linear = np.concatenate([-np.ones(dim, np.float32), np.zeros(dim, np.float32)])
    return {"linear": linear, "w1": np.zeros((0, 2 * dim), np.float32), "b1": np.zeros(0, np.float32),
            "w2": np.zeros(0, np.float32), "b2": np.zeros(1, np.float32)}


def check_relation_module(arrays: Mapping[str, np.ndarray], dim: int) -> dict[str, np.ndarray]:
    """Validate relation module arrays against the embedding size; return them as float32.

    Raises:
        EdgefsError: a missing or unknown array, a shape that does not fit ``dim`` (the
            message names the array's shape and the expected one), or non-finite values.
    """
    names = set(arrays)
    if names != set(RELATION_ARRAYS):
        raise EdgefsError(f"relation head spec has arrays {sorted(names)}; it needs exactly "
                          f"{', '.join(RELATION_ARRAYS)}. Re-export the head spec from a 'relation' checkpoint")
    out = {k: np.asarray(arrays[k], np.float32) for k in RELATION_ARRAYS}
    # The hidden width H is free; w1 fixes it for b1 and w2.
    hidden = out["w1"].shape[0] if out["w1"].ndim == 2 else "H"
    expected = {"linear": (2 * dim,), "w1": (hidden, 2 * dim), "b1": (hidden,), "w2": (hidden,), "b2": (1,)}
    for name, shape in expected.items():
        if out[name].shape != shape:
            want = f"(H, {2 * dim})" if name == "w1" else str(shape)
            raise EdgefsError(f"relation head spec array {name!r} has shape {out[name].shape}, but {dim}-d "
                              f"embeddings need {want}; the spec was made for another backbone or is damaged")
        if not np.isfinite(out[name]).all():
            raise EdgefsError(f"relation head spec array {name!r} holds NaN or inf; re-export the head spec")
    return out


def relation_scores(
    queries: np.ndarray,
    prototypes: np.ndarray,
    linear: np.ndarray,
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
) -> np.ndarray:
    """Relation scores of every (query, class mean) pair.

    With pair features ``f = [|q - p|, q * p]`` (float32 ``(2D,)``), the score is
    ``r(q, p) = linear . f + w2 . relu(w1 f + b1) + b2``: a linear similarity plus a
    one-hidden-layer MLP correction (Sung et al.'s relation module for 1-D embeddings).

    Args:
        queries: float32 ``(Q, D)``.
        prototypes: float32 ``(C, D)`` class means.
        linear: float32 ``(2D,)``.
        w1: float32 ``(H, 2D)``; ``H`` may be 0.
        b1: float32 ``(H,)``.
        w2: float32 ``(H,)``.
        b2: float32 ``(1,)``.

    Returns:
        float32 ``(Q, C)`` logits (higher: more related).
    """
    q = np.asarray(queries, np.float32)
    p = np.asarray(prototypes, np.float32)
    n_q, n_c, d = q.shape[0], p.shape[0], q.shape[1]
    out = np.empty((n_q, n_c), np.float32)
    rows = max(1, _CHUNK_BYTES // max(1, n_c * 2 * d * 4))
    for s in range(0, n_q, rows):
        qc = q[s : s + rows, None, :]  # (R, 1, D)
        feats = np.concatenate([np.abs(qc - p[None]), qc * p[None]], axis=2)  # (R, C, 2D)
        score = feats @ linear + b2[0]
        if w1.shape[0]:
            score = score + np.maximum(feats @ w1.T + b1, np.float32(0.0)) @ w2
        out[s : s + rows] = score
    return out


@HEADS.register("relation", rank=3)
class RelationHead(Head):
    """Class score = the learned relation of the query to the class's mean embedding.

    Sung, Yang, Zhang, Xiang, Torr and Hospedales, "Learning to Compare: Relation Network
    for Few-Shot Learning", CVPR 2018, with the relation module over 1-D embeddings (see
    :func:`relation_scores`). Class means come from the running sums of raw shots, so
    enrollment is incremental; the module's arrays come from the head spec (without them:
    :func:`default_relation_module`, L1 distance to the class mean).

    Args:
        dim: embedding size ``D``.
        temperature: scale applied to the relation scores (1 as trained).
        threshold: unknown when the best cosine to a class mean is below it.
    """

    head_type = "relation"
    normalize_shots = False
    supports_center = False  # the learned arrays were trained on raw features

    def __init__(self, dim: int, *, temperature: float = 1.0, threshold: float = -1.0) -> None:
        super().__init__(dim, temperature=temperature, threshold=threshold)
        self.module = default_relation_module(self.dim)

    def _use_spec_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        if arrays:
            self.module = check_relation_module(arrays, self.dim)

    def means(self) -> np.ndarray:
        """float32 ``(C, D)`` raw class means."""
        return (self._sums / self._counts[:, None].astype(np.float32)).astype(np.float32)

    def _scores(self, q: np.ndarray) -> np.ndarray:
        raw = relation_scores(q, self.means(), *(self.module[k] for k in RELATION_ARRAYS))
        return (np.float32(self.temperature) * raw).astype(np.float32)
