"""Support-set adaptation: NumPy references of the fits that run at enrollment (float32, no PyTorch).

Two adaptations, each fitted on the stored shots of the enrolled classes with the
nearest-centroid loss (the loss a cosine prototype head classifies by), each starting
again from its initial value at every refit, so its result depends only on what is
enrolled and not on the order of enrollment (no drift of old classes by construction):

* :func:`align_fit`: a linear map of the embedding space (URL's pre-classifier
  alignment, Li et al. 2021), ``z = e (I + dA)^T``, full or low-rank ``dA = U V^T``;
* :func:`film_fit` on a :class:`LastLayer`: a per-channel scale and shift of the
  backbone's last layer (for EfficientNet-Lite the 1x1 head convolution with its folded
  batch-norm, then ReLU6, the mean over positions, the power transform and the centre),
  fitted from the features at that layer's input, so the backbone's trunk is never run
  again; optionally the convolution's weights too (``lr_weight``).

Shapes: ``n`` samples (shots, or views of shots), ``P`` positions of the last layer's
input map, ``K`` its channels, ``D`` the embedding size, ``C`` classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgefs.errors import EdgefsError
from edgefs.heads.reference import softmax

_EPS = np.float32(1e-12)
POWER_EPS = np.float32(1e-6)  # the backbone's offset before the power transform (EfficientNetLite.pool)


def _labels(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    if y.shape != (n,) or n == 0:
        raise EdgefsError(f"adaptation needs one label per sample: {y.shape} labels for {n} samples")
    y = y.astype(np.int64)
    counts = np.bincount(y)
    if (counts == 0).any():
        raise EdgefsError("adaptation labels must be 0..C-1 with every class present")
    return y, counts


def ncc_loss_grad(emb: np.ndarray, labels: np.ndarray, temperature: float) -> tuple[float, np.ndarray]:
    """Nearest-centroid loss of ``emb`` against its own class centroids, and its gradient.

    Every sample is scored by ``temperature`` times its cosine to each class's prototype
    (the normalised mean of the class's normalised samples, itself included) and the
    loss is the mean cross-entropy. With one sample per class the loss only pushes the
    classes apart; the views of a shot give it the within-class spread it needs.

    Args:
        emb: float32 ``(n, D)``.
        labels: int ``(n,)`` in ``0..C-1``, every class present.
        temperature: the cosine scale.

    Returns:
        ``(loss, d loss / d emb float32 (n, D))``.
    """
    e = np.asarray(emb, np.float32)
    y, counts = _labels(labels, len(e))
    n = len(e)
    t = np.float32(temperature)
    norm = np.maximum(np.linalg.norm(e, axis=1, keepdims=True), _EPS)
    z = e / norm
    member = np.zeros((len(counts), n), np.float32)  # (C, n) one-hot: a product instead of np.add.at
    member[y, np.arange(n)] = 1.0
    means = (member @ z) / counts[:, None].astype(np.float32)
    pnorm = np.maximum(np.linalg.norm(means, axis=1, keepdims=True), _EPS)
    protos = means / pnorm
    prob = softmax(t * (z @ protos.T))
    loss = float(-np.mean(np.log(np.maximum(prob[np.arange(n), y], 1e-30))))
    g = prob
    g[np.arange(n), y] -= 1.0
    g /= np.float32(n)
    dz = t * (g @ protos)
    dprotos = t * (g.T @ z)
    dmeans = (dprotos - protos * np.sum(dprotos * protos, axis=1, keepdims=True)) / pnorm
    dz += dmeans[y] / counts[y][:, None].astype(np.float32)
    de = (dz - z * np.sum(dz * z, axis=1, keepdims=True)) / norm
    return loss, de.astype(np.float32)


@dataclass(frozen=True)
class Alignment:
    """``z = e + (e V) U^T`` with ``U`` ``(D, r)`` and ``V = vt^T`` ``(D, r)`` (kept as ``vt``, ``(r, D)``
    contiguous, so one query is two matrix-vector products). Low-rank: ``r`` is the rank; the full
    map's change from the identity has the same form with ``vt`` the fitted samples themselves
    (``(n, D)``: gradient descent on a full map from the identity never leaves their span)."""

    u: np.ndarray
    vt: np.ndarray

    def apply(self, emb: np.ndarray) -> np.ndarray:
        e = np.asarray(emb, np.float32)
        if e.shape[0] == 1:  # matrix-vector products: BLAS's matrix path with one row is several times slower
            return (e[0] + self.u @ (self.vt @ e[0]))[None, :].astype(np.float32)
        return (e + (e @ self.vt.T) @ self.u.T).astype(np.float32)

    def matrix(self) -> np.ndarray:
        """float32 ``(D, D)``: the map ``A`` with ``z = e A^T``."""
        return (np.eye(self.vt.shape[1], dtype=np.float32) + self.u @ self.vt).astype(np.float32)


def align_fit(emb: np.ndarray, labels: np.ndarray, *, temperature: float = 10.0, steps: int = 20,
              lr: float = 0.5, rank: int | None = None, seed: int = 0) -> Alignment:
    """URL-style alignment fitted on the samples by gradient descent on :func:`ncc_loss_grad`.

    Full map (``rank=None``): ``A = I`` at the start and ``A -= lr * dZ^T E`` at each step,
    computed in the samples' span (``A = I + M^T E``, ``M`` of shape ``(n, D)``), so a step costs
    ``O(n^2 D)`` instead of ``O(n D^2)``: the same iterates. Low-rank: ``U = 0`` and a fixed random
    ``V`` of unit columns at the start, both updated.

    Args:
        emb: float32 ``(n, D)``.
        labels: int ``(n,)``.
        temperature: the loss's cosine scale.
        steps: plain gradient steps.
        lr: their size.
        rank: ``None`` for the full ``D x D`` map, else the rank of the change.
        seed: the random ``V`` of the low-rank form.
    """
    e = np.asarray(emb, np.float32)
    d = e.shape[1]
    lr32 = np.float32(lr)
    if rank is None:
        gram = e @ e.T
        m = np.zeros_like(e)  # (n, D): A - I = m^T e
        for _ in range(int(steps)):
            _, dz = ncc_loss_grad(e + gram @ m, labels, temperature)
            m -= lr32 * dz
        return Alignment(np.ascontiguousarray(m.T), e.copy())
    v = np.random.default_rng(seed).standard_normal((d, int(rank))).astype(np.float32)
    v /= np.linalg.norm(v, axis=0, keepdims=True)
    u = np.zeros((d, int(rank)), np.float32)
    for _ in range(int(steps)):
        ev = e @ v
        _, dz = ncc_loss_grad(e + ev @ u.T, labels, temperature)
        du = dz.T @ ev
        dv = e.T @ (dz @ u)
        u -= lr32 * du
        v -= lr32 * dv
    return Alignment(u, np.ascontiguousarray(v.T))


@dataclass(frozen=True)
class LastLayer:
    """The backbone's last layer as the device runs it: ``(n, P, K)`` input map -> ``(n, D)`` embedding.

    ``pre = x W^T + b`` (a 1x1 convolution with its batch-norm folded in), then
    ``act = clip(gamma * pre + beta, 0, clip)`` (ReLU6 for EfficientNet-Lite), the mean over
    the ``P`` positions, ``(mean + POWER_EPS) ** power`` when ``power`` is not 1, minus ``center``.
    ``gamma = 1``, ``beta = 0`` is the backbone as exported.
    """

    weight: np.ndarray  # float32 (D, K)
    bias: np.ndarray  # float32 (D,)
    power: float = 1.0
    clip: float = 6.0
    center: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(self.weight.shape[0])

    def pre(self, x: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
        """float ``(n, P, K)`` -> float32 ``(n, P, D)`` pre-activations."""
        w = self.weight if weight is None else weight
        x = np.asarray(x, np.float32)
        if x.ndim != 3 or x.shape[2] != w.shape[1]:
            raise EdgefsError(f"the last layer takes (n, positions, {w.shape[1]}) features, got {x.shape}")
        return (x @ w.T + self.bias).astype(np.float32)

    def embed_pre(self, pre: np.ndarray, gamma: np.ndarray | None = None,
                  beta: np.ndarray | None = None) -> np.ndarray:
        """Pre-activations ``(n, P, D)`` -> embeddings float32 ``(n, D)``."""
        a = pre if gamma is None else pre * gamma
        a = a if beta is None else a + beta
        m = np.clip(a, 0.0, self.clip).mean(axis=1)
        if self.power != 1.0:
            m = (m + POWER_EPS) ** np.float32(self.power)
        if self.center is not None:
            m = m - self.center
        return m.astype(np.float32)

    def embed(self, x: np.ndarray, gamma: np.ndarray | None = None, beta: np.ndarray | None = None,
              weight: np.ndarray | None = None) -> np.ndarray:
        return self.embed_pre(self.pre(x, weight), gamma, beta)

    def backward(self, pre: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                 demb: np.ndarray) -> np.ndarray:
        """d loss / d (gamma * pre + beta), float32 ``(n, P, D)``, from d loss / d embedding."""
        a = pre * gamma + beta
        m = np.clip(a, 0.0, self.clip).mean(axis=1)
        dm = demb
        if self.power != 1.0:
            p = np.float32(self.power)
            dm = demb * p * (m + POWER_EPS) ** (p - 1)
        inside = (a > 0) & (a < self.clip)
        return (inside * (dm[:, None, :] / np.float32(pre.shape[1]))).astype(np.float32)


def layer_stats(layer: LastLayer, pre: np.ndarray) -> np.ndarray:
    """float16 ``(n, 3, D)``: per channel, the mean over positions of the pre-activations inside
    ``(0, clip)``, the fraction of positions inside, and the fraction at or above ``clip``.

    With the positions' activation pattern held fixed, the pooled feature of a scaled and shifted
    layer is ``gamma * s[0] + beta * s[1] + clip * s[2]``: exact at ``gamma = 1``, ``beta = 0``
    (the exported layer) and with the exact gradient there. Three numbers per channel per
    sample instead of the ``P x K`` input map, so the stored shots of every class can be
    refitted at each enrollment (:func:`film_fit_stats`).
    """
    inside = (pre > 0) & (pre < layer.clip)
    count = np.float32(pre.shape[1])
    return np.stack([np.where(inside, pre, 0).sum(1) / count, inside.sum(1) / count,
                     (pre >= layer.clip).sum(1) / count], axis=1).astype(np.float16)


def stats_embed(layer: LastLayer, stats: np.ndarray, gamma: np.ndarray | None = None,
                beta: np.ndarray | None = None) -> np.ndarray:
    """Embeddings float32 ``(n, D)`` from :func:`layer_stats` under the fixed activation pattern."""
    s = np.asarray(stats, np.float32)
    m = s[:, 0] * (1 if gamma is None else gamma) + s[:, 1] * (0 if beta is None else beta) + layer.clip * s[:, 2]
    m = np.maximum(m, 0)
    if layer.power != 1.0:
        m = (m + POWER_EPS) ** np.float32(layer.power)
    return (m if layer.center is None else m - layer.center).astype(np.float32)


def film_fit_stats(layer: LastLayer, stats: np.ndarray, labels: np.ndarray, *, temperature: float = 10.0,
                   steps: int = 20, lr_gamma: float | np.ndarray = 1.0,
                   lr_beta: float | np.ndarray = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`film_fit` (scale and shift only) on :func:`layer_stats`, the activation pattern held fixed.

    Each step costs O(n D) instead of O(n P D). Returns ``(gamma, beta)`` float32 ``(D,)``.
    """
    s = np.asarray(stats, np.float32)
    d = layer.dim
    gamma = np.ones(d, np.float32)
    beta = np.zeros(d, np.float32)
    lg, lb = np.asarray(lr_gamma, np.float32), np.asarray(lr_beta, np.float32)
    p = np.float32(layer.power)
    for _ in range(int(steps)):
        m = np.maximum(s[:, 0] * gamma + s[:, 1] * beta + layer.clip * s[:, 2], 0)
        _, demb = ncc_loss_grad(stats_embed(layer, s, gamma, beta), labels, temperature)
        dm = demb * (p * (m + POWER_EPS) ** (p - 1)) if layer.power != 1.0 else demb
        gamma -= lg * np.einsum("nd,nd->d", dm, s[:, 0])
        beta -= lb * np.einsum("nd,nd->d", dm, s[:, 1])
    return gamma, beta


def film_fit(layer: LastLayer, x: np.ndarray, labels: np.ndarray, *, temperature: float = 10.0, steps: int = 20,
             lr_gamma: float | np.ndarray = 1.0, lr_beta: float | np.ndarray = 1.0,
             lr_weight: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel scale and shift (and optionally the weights) of ``layer`` fitted on the samples.

    Gradient descent on :func:`ncc_loss_grad` of ``layer.embed(x, gamma, beta, weight)``
    from ``gamma = 1``, ``beta = 0`` and the layer's own weights. The learning rates may be
    per parameter (float32 ``(D,)``, as Meta-SGD learns them).

    Args:
        layer: the last layer.
        x: float ``(n, P, K)`` its input for every sample.
        labels: int ``(n,)``.
        temperature: the loss's cosine scale.
        steps: gradient steps.
        lr_gamma: step size of the scale.
        lr_beta: step size of the shift.
        lr_weight: step size of the 1x1 convolution's weights (0: kept as exported; the fit
            then computes the pre-activations once).

    Returns:
        ``(gamma (D,), beta (D,), weight (D, K))`` float32.
    """
    x = np.asarray(x, np.float32)
    d = layer.dim
    gamma = np.ones(d, np.float32)
    beta = np.zeros(d, np.float32)
    weight = layer.weight.astype(np.float32).copy()
    lg, lb, lw = (np.asarray(v, np.float32) for v in (lr_gamma, lr_beta, lr_weight))
    pre = layer.pre(x, weight)
    flat_x = x.reshape(-1, x.shape[2])
    for _ in range(int(steps)):
        if lr_weight:
            pre = layer.pre(x, weight)
        _, demb = ncc_loss_grad(layer.embed_pre(pre, gamma, beta), labels, temperature)
        da = layer.backward(pre, gamma, beta, demb)
        dgamma = np.einsum("npd,npd->d", da, pre, dtype=np.float32)
        dbeta = da.sum(axis=(0, 1), dtype=np.float32)
        if lr_weight:
            weight -= lw * ((da * gamma).reshape(-1, d).T @ flat_x)
        gamma -= lg * dgamma
        beta -= lb * dbeta
    return gamma, beta, weight
