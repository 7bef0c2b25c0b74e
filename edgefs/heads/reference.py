"""NumPy reference functions of the device heads; the CUDA kernels mirror them 1:1.

Every function computes in float32 and returns float32 (indices int32, flags
bool), so a kernel can be compared against it with a tolerance that depends on
summation order only. Shapes: ``S`` shots, ``Q`` queries, ``N`` support
samples, ``C`` classes, ``D`` embedding size.
"""

from __future__ import annotations

import numpy as np

from edgefs.errors import EdgefsError

_EPS = np.float32(1e-12)
# Above this many bytes, the per-class Gram stack of a per-parameter learning rate
# is not materialised; its products are formed through X instead (same iterates).
_GRAM_STACK_BYTES = 256 * 2**20


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero). float ``(R, D)`` -> float32 ``(R, D)``."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax, max-subtracted. float32 ``(R, C)`` -> float32 ``(R, C)``."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z, dtype=np.float32)
    return e / e.sum(axis=1, keepdims=True)


def topk(prob: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest entries of each row, ties broken towards the lower index.

    Selects with ``argpartition`` (O(C) per row) and sorts only the ``k`` selected, so
    ranking 10,000 classes does not sort 10,000 scores; rows where the ``k``-th value is
    tied beyond the selection fall back to a stable sort, so the result is exactly that of
    sorting every score.

    Args:
        prob: float32 ``(Q, C)``.
        k: wanted count; clipped to ``C``.

    Returns:
        ``(top_idx int32 (Q, k), top_val float32 (Q, k))``, best first.
    """
    prob = np.asarray(prob)
    k = min(int(k), prob.shape[1])
    if k <= 0:
        return np.zeros((prob.shape[0], 0), np.int32), np.zeros((prob.shape[0], 0), np.float32)
    if 4 * k >= prob.shape[1]:
        order = np.argsort(-prob, axis=1, kind="stable")[:, :k]  # small C: a sort is as cheap
    else:
        part = np.argpartition(-prob, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(prob, part, axis=1)
        # Order the k by (value desc, index asc): lexsort's last key is the primary one.
        inner = np.lexsort((part, -vals), axis=1)
        order = np.take_along_axis(part, inner, axis=1)
        kth = np.take_along_axis(prob, order[:, -1:], axis=1)
        # A value equal to the k-th outside the selection may have a lower index: redo those rows.
        tied = (prob >= kth).sum(axis=1) > k
        for r in np.flatnonzero(tied):
            order[r] = np.argsort(-prob[r], kind="stable")[:k]
    return order.astype(np.int32), np.take_along_axis(prob, order, axis=1).astype(np.float32)


def row_dots(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``queries @ rows.T`` as float32 ``(Q, C)``, from float32 ``(Q, D)`` and ``(C, D)``.

    One query goes through a matrix-vector product (``rows @ q``): BLAS's matrix-matrix
    path with a single row is several times slower on a busy 2-core CPU (measured 1 ms vs
    10 ms for 10,000 x 1280).
    """
    if queries.shape[0] == 1:
        return (rows @ queries[0])[None, :].astype(np.float32, copy=False)
    return (queries @ rows.T).astype(np.float32, copy=False)


def accumulate_normalize(
    embeddings: np.ndarray, labels: np.ndarray, sums: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """Add shots into per-class running sums (in place) and return normalised means.

    Args:
        embeddings: float32 or float16 ``(S, D)``.
        labels: int32 ``(S,)``, each in ``0..C-1``.
        sums: float32 ``(C, D)``; the rows of ``labels`` grow by their shots, in place.
        counts: int32 ``(C,)``; incremented per shot, in place.

    Returns:
        float32 ``(C, D)``: ``sums / counts`` scaled to unit L2 norm; rows with count 0
        are zeros. Enrolling shots in several calls gives the same result as one call,
        up to float summation order.
    """
    if sums.dtype != np.float32 or counts.dtype != np.int32:
        raise EdgefsError(f"sums must be float32 and counts int32, got {sums.dtype} and {counts.dtype}")
    if embeddings.ndim != 2 or embeddings.shape[1] != sums.shape[1] or labels.shape != (embeddings.shape[0],):
        raise EdgefsError(
            f"embeddings {embeddings.shape} and labels {labels.shape} do not fit sums {sums.shape}; "
            "pass (S, D) embeddings with one label each"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= sums.shape[0]):
        raise EdgefsError(f"labels must lie in 0..{sums.shape[0] - 1}")
    np.add.at(sums, labels, embeddings.astype(np.float32, copy=False))
    counts += np.bincount(labels, minlength=sums.shape[0]).astype(np.int32)
    means = sums / np.maximum(counts, 1).astype(np.float32)[:, None]
    protos = l2_normalize(means)
    protos[counts == 0] = 0.0
    return protos


def classify(
    queries: np.ndarray, weights: np.ndarray, temperature: float, k: int, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cosine classification with temperature softmax, top-k and an unknown flag.

    Args:
        queries: float32 or float16 ``(Q, D)``; L2-normalised here.
        weights: float32 ``(C, D)``, rows L2-normalised.
        temperature: logits are ``temperature * cosine``.
        k: how many classes to return per query; clipped to ``C``.
        threshold: a query is unknown when its best cosine is below it.

    Returns:
        ``top_idx`` int32 ``(Q, k)`` (ties -> lower index), ``top_prob`` float32 ``(Q, k)``,
        ``best_sim`` float32 ``(Q,)`` (max cosine), ``unknown`` bool ``(Q,)``.
    """
    q = l2_normalize(queries)
    w = np.asarray(weights, dtype=np.float32)
    if w.shape[0] == 0:
        # No classes: nothing to rank; every query is unknown.
        n = q.shape[0]
        return (np.zeros((n, 0), np.int32), np.zeros((n, 0), np.float32),
                np.full(n, -np.inf, np.float32), np.ones(n, bool))
    cos = row_dots(q, w)
    prob = softmax(np.float32(temperature) * cos)
    top_idx, top_prob = topk(prob, k)
    best_sim = cos.max(axis=1).astype(np.float32)
    return top_idx, top_prob, best_sim, best_sim < np.float32(threshold)


def _onehot(labels: np.ndarray, classes: int) -> np.ndarray:
    y = np.zeros((labels.shape[0], classes), np.float32)
    y[np.arange(labels.shape[0]), labels] = 1.0
    return y


def _check_finetune(support: np.ndarray, labels: np.ndarray, w0: np.ndarray, b0: np.ndarray) -> None:
    n, d = support.shape
    c = w0.shape[0]
    if w0.shape != (c, d) or b0.shape != (c,) or labels.shape != (n,):
        raise EdgefsError(f"finetune shapes do not agree: support {support.shape}, labels {labels.shape}, "
                          f"w0 {w0.shape}, b0 {b0.shape}; expected (N,D), (N,), (C,D), (C,)")
    if n and (labels.min() < 0 or labels.max() >= c):
        raise EdgefsError(f"finetune labels must lie in 0..{c - 1}")


def finetune(
    support: np.ndarray,
    labels: np.ndarray,
    w0: np.ndarray,
    b0: np.ndarray,
    lr: float | np.ndarray,
    lr_b: float,
    steps: int,
    momentum: float,
    l2: float | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Full-batch SGD with heavy-ball momentum on a linear softmax classifier (plain loop).

    Minimises ``mean CE(X W^T + b, y) + (l2/2) * ||W - w0||^2`` (no penalty on ``b``):
    ``g = grad; v = momentum * v + g; W -= lr * v`` (elementwise when ``lr`` is an array).

    Args:
        support: float32 ``(N, D)``.
        labels: int32 ``(N,)`` in ``0..C-1``.
        w0: float32 ``(C, D)`` start weights and penalty anchor.
        b0: float32 ``(C,)`` start bias.
        lr: float, or float32 ``(C, D)`` per-parameter rates (Meta-SGD).
        lr_b: bias learning rate.
        steps: SGD steps.
        momentum: heavy-ball coefficient in ``[0, 1)``.
        l2: penalty weight; may also be a float32 ``(C, D)`` array of per-parameter
            weights (EWC: ``l2 * Fisher``), in which case the penalty is
            ``sum(l2 * (W - w0)^2) / 2``.

    Returns:
        ``(W float32 (C, D), b float32 (C,))``.
    """
    _check_finetune(support, labels, w0, b0)
    x = np.asarray(support, np.float32)
    w0 = np.asarray(w0, np.float32)
    y = _onehot(labels, w0.shape[0])
    n = np.float32(max(x.shape[0], 1))
    lr_w = np.asarray(lr, np.float32)
    pen = np.asarray(l2, np.float32)
    mom, lrb = np.float32(momentum), np.float32(lr_b)
    w, b = w0.copy(), np.asarray(b0, np.float32).copy()
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    for _ in range(int(steps)):
        g = (softmax(x @ w.T + b) - y) / n  # (N, C)
        vw = mom * vw + (g.T @ x + pen * (w - w0))
        vb = mom * vb + g.sum(axis=0)
        w = w - lr_w * vw
        b = b - lrb * vb
    return w.astype(np.float32), b.astype(np.float32)


def finetune_gram(
    support: np.ndarray,
    labels: np.ndarray,
    w0: np.ndarray,
    b0: np.ndarray,
    lr: float | np.ndarray,
    lr_b: float,
    steps: int,
    momentum: float,
    l2: float | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`finetune`'s iterates computed on the ``N x N`` Gram matrix.

    Every gradient of the loss w.r.t. ``W`` is a combination of support rows, so with a
    scalar ``lr`` the iterates stay ``W_t = w0 + A_t X`` with ``A`` float32 ``(C, N)``:
    logits are ``X w0^T + K A^T + b`` with ``K = X X^T``, and the momentum and penalty
    recursions act on ``A`` (the penalty gradient ``l2 (W - w0)`` is ``l2 A X``). A step
    costs ``O(N^2 C)`` instead of ``O(N D C)``; ``W`` is formed once at the end.

    With a per-parameter ``lr`` array and ``l2 == 0``, ``W_c = w0_c + diag(lr_c) X^T a_c``
    and each class has its own Gram ``K_c = X diag(lr_c) X^T`` (exact; when the ``C`` Grams
    would exceed 256 MiB, or cost more to build than ``steps`` products through ``X``,
    the products are formed as ``X (lr_c * (a_c X))`` instead: same iterates).

    Falls back to the plain loop :func:`finetune` (same result, no speed-up) when the Gram
    form is not exact: a per-parameter ``lr`` together with ``l2 > 0`` (the penalty then
    adds ``lr^2``-weighted terms that leave the span of the support), or an array ``l2``.

    Args and Returns: as :func:`finetune`.
    """
    _check_finetune(support, labels, w0, b0)
    lr_arr = np.asarray(lr, np.float32)
    pen = np.asarray(l2, np.float32)
    per_param = lr_arr.ndim > 0
    if pen.ndim > 0 or (per_param and float(pen) != 0.0):
        return finetune(support, labels, w0, b0, lr, lr_b, steps, momentum, l2)
    x = np.asarray(support, np.float32)
    w0 = np.asarray(w0, np.float32)
    c, n_rows = w0.shape[0], x.shape[0]
    y = _onehot(labels, c)
    n = np.float32(max(n_rows, 1))
    mom, lrb, l2s = np.float32(momentum), np.float32(lr_b), np.float32(pen)
    base = x @ w0.T  # (N, C)
    b = np.asarray(b0, np.float32).copy()
    a = np.zeros((c, n_rows), np.float32)
    va, vb = np.zeros_like(a), np.zeros_like(b)

    if not per_param:
        k = x @ x.T
        lr_s = np.float32(lr_arr)
        for _ in range(int(steps)):
            g = (softmax(base + k @ a.T + b) - y) / n  # (N, C)
            va = mom * va + (g.T + l2s * a)
            vb = mom * vb + g.sum(axis=0)
            a = a - lr_s * va
            b = b - lrb * vb
        return (w0 + a @ x).astype(np.float32), b.astype(np.float32)

    lr_cd = np.broadcast_to(lr_arr, w0.shape).astype(np.float32)
    # Building the C Grams costs ~N/2 steps of products through X: worth it for N < 2 steps.
    if c * n_rows * n_rows * 4 <= _GRAM_STACK_BYTES and n_rows < 2 * int(steps):
        kc = np.einsum("nd,cd,md->cnm", x, lr_cd, x, optimize=True).astype(np.float32)  # (C, N, N)

        def span(a_: np.ndarray) -> np.ndarray:
            return np.einsum("cnm,cm->nc", kc, a_, optimize=True)
    else:

        def span(a_: np.ndarray) -> np.ndarray:
            return x @ (lr_cd * (a_ @ x)).T

    for _ in range(int(steps)):
        g = (softmax(base + span(a) + b) - y) / n
        # W = w0 + diag(lr_c) X^T a_c: the lr is already inside the parameterisation.
        va = mom * va + g.T
        vb = mom * vb + g.sum(axis=0)
        a = a - va
        b = b - lrb * vb
    return (w0 + lr_cd * (a @ x)).astype(np.float32), b.astype(np.float32)
