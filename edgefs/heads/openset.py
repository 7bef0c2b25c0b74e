"""Open-set rejection: pick the unknown threshold from the enrolled shots, and measure it.

A query is unknown when its best cosine to any class's similarity prototype (the
renormalised mean of its L2-normalised shots, :mod:`edgefs.heads.base`) is below a
threshold. :func:`calibrate_threshold` chooses that threshold without any unknown
examples, by leave-one-out over the enrolled shots.
"""

from __future__ import annotations

import numpy as np

from edgefs.errors import EdgefsError
from edgefs.heads.reference import l2_normalize

METHODS = ("loo", "youden")


def loo_scores(embeddings: np.ndarray, labels: np.ndarray, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out similarity scores of the enrolled shots.

    Args:
        embeddings: float ``(N, D)`` shots.
        labels: int ``(N,)`` class ids (any integers).
        normalize: L2-normalise each shot before averaging (as every head but the
            prototype head does).

    Returns:
        ``(known float32 (P,), negative float32 (N,))``. ``known``: for each shot of a
        class with at least 2 shots, its best cosine to all prototypes with its own class's
        prototype rebuilt without it: what an enrolled-class query scores. ``negative``:
        for every shot, its best cosine to the *other* classes' prototypes: what a query
        of a class that is not enrolled but resembles it scores. A 1-shot class has no
        leave-one-out prototype, so its shot only yields a negative.
    """
    x = np.asarray(embeddings, np.float32)
    y = np.asarray(labels)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise EdgefsError(f"calibration needs (N, D) embeddings with N labels, got {x.shape} and {y.shape}")
    if not np.isfinite(x).all():
        raise EdgefsError("calibration embeddings contain NaN or inf; drop those shots")
    classes, y = np.unique(y, return_inverse=True)
    shots = l2_normalize(x) if normalize else x
    c = len(classes)
    sums = np.zeros((c, x.shape[1]), np.float32)
    np.add.at(sums, y, shots)
    counts = np.bincount(y, minlength=c).astype(np.float32)
    q = l2_normalize(x)
    cos = q @ l2_normalize(sums / counts[:, None]).T  # (N, C)
    rows = np.arange(len(y))
    own_loo = l2_normalize((sums[y] - shots) / np.maximum(counts[y] - 1, 1)[:, None])
    own = (q * own_loo).sum(axis=1)
    others = cos.copy()
    others[rows, y] = -np.inf
    other_best = others.max(axis=1) if c > 1 else np.full(len(y), -1.0, np.float32)
    multi = counts[y] >= 2
    known = np.maximum(own, other_best)[multi]
    return known.astype(np.float32), other_best.astype(np.float32)


def calibrate_threshold(embeddings: np.ndarray, labels: np.ndarray, method: str = "loo",
                        target_tpr: float = 0.95, normalize: bool = True) -> float:
    """Choose the unknown threshold from enrolled shots alone.

    Args:
        embeddings: float ``(N, D)`` shots of the enrolled classes.
        labels: int ``(N,)`` their classes.
        method: ``"loo"``: the highest threshold that still accepts ``target_tpr`` of the
            leave-one-out known scores (:func:`loo_scores`); when no class has 2 shots,
            the threshold that rejects ``target_tpr`` of the negatives (nearest other
            class) instead. ``"youden"``: the threshold maximising TPR - FPR between the
            known and negative scores (trades acceptance for rejection of look-alikes).
        target_tpr: fraction of known samples to keep, in ``(0, 1]``.
        normalize: as in :func:`loo_scores`.

    Returns:
        Threshold on cosine similarity; a query with ``best_sim < threshold`` is unknown.
    """
    if method not in METHODS:
        raise EdgefsError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    if not 0.0 < target_tpr <= 1.0:
        raise EdgefsError(f"target_tpr must lie in (0, 1], got {target_tpr}")
    known, negative = loo_scores(embeddings, labels, normalize)
    return threshold_from_scores(known, negative, len(np.unique(labels)), method, target_tpr)


def threshold_from_scores(known: np.ndarray, negative: np.ndarray, classes: int, method: str = "loo",
                          target_tpr: float = 0.95) -> float:
    """:func:`calibrate_threshold` from leave-one-out scores already computed (:func:`loo_scores`).

    Args:
        known: float32 ``(P,)`` leave-one-out scores of shots of classes with 2+ shots.
        negative: float32 ``(N,)`` best cosine of every shot to the other classes.
        classes: how many classes the shots belong to.
        method, target_tpr: as :func:`calibrate_threshold`.
    """
    if known.size == 0:
        if classes < 2:
            raise EdgefsError("cannot calibrate from one class with one shot; enroll more shots or classes")
        # Negative-only signal: reject target_tpr of the look-alikes. Rejection is
        # ``best_sim < threshold``, so the threshold sits just above the quantile
        # (nearest 1-shot classes see each other: their negatives come in equal pairs).
        cut = np.float32(np.quantile(negative, target_tpr, method="higher"))
        return float(np.nextafter(cut, np.float32(np.inf)))
    if method == "loo":
        ordered = np.sort(known)
        drop = int(np.floor((1.0 - target_tpr) * len(ordered) + 1e-9))
        return float(ordered[min(drop, len(ordered) - 1)])
    candidates = np.unique(np.concatenate([known, negative]))
    tpr = 1.0 - np.searchsorted(np.sort(known), candidates, side="left") / len(known)
    fpr = 1.0 - np.searchsorted(np.sort(negative), candidates, side="left") / len(negative)
    return float(candidates[int(np.argmax(tpr - fpr))])


def auroc(scores_known: np.ndarray, scores_unknown: np.ndarray) -> float:
    """Area under the ROC of "known scores higher than unknown" (Mann-Whitney U, ties count 1/2).

    Args:
        scores_known: float ``(P,)``.
        scores_unknown: float ``(M,)``.

    Returns:
        AUROC in ``[0, 1]``; 1 when every known score is above every unknown one.
    """
    pos = np.asarray(scores_known, np.float64).ravel()
    neg = np.asarray(scores_unknown, np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise EdgefsError("AUROC needs at least one known and one unknown score")
    both = np.concatenate([pos, neg])
    order = np.argsort(both, kind="stable")
    ranks = np.empty(both.size, np.float64)
    sorted_vals = both[order]
    # Average ranks over ties.
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], both.size]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))
