"""Small NumPy building blocks for heads that train a hidden layer on the device (DEN, progressive).

Full-batch gradient descent with momentum on a few hundred stored shots: every function
is deterministic for the same inputs and seed, so a head rebuilt from the stored samples
is the head that was saved.
"""

from __future__ import annotations

import numpy as np

from edgefs.heads.reference import l2_normalize, softmax


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy and its gradient.

    Args:
        logits: float32 ``(N, C)``.
        labels: int ``(N,)`` in ``0..C-1``.

    Returns:
        ``(loss, dlogits)``: the mean loss and float32 ``(N, C)`` d loss / d logits.
    """
    p = softmax(logits.astype(np.float32))
    n = len(labels)
    loss = float(-np.mean(np.log(np.maximum(p[np.arange(n), labels], 1e-12))))
    grad = p.copy()
    grad[np.arange(n), labels] -= 1.0
    return loss, (grad / np.float32(max(n, 1))).astype(np.float32)


def init_rows(rows: int, dim: int, seed: int) -> np.ndarray:
    """float32 ``(rows, dim)`` He-initialised weights from a seeded generator (relu units on unit inputs)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, dim)) * np.sqrt(2.0 / dim)).astype(np.float32)


def imprint_rows(hidden: np.ndarray, labels: np.ndarray, classes: list[int], scale: float) -> np.ndarray:
    """Output rows imprinted in hidden space: ``scale`` times each class's normalised mean activation.

    Args:
        hidden: float32 ``(N, H)`` activations of the stored shots.
        labels: int ``(N,)`` class index of each shot.
        classes: the class indices to imprint, each present in ``labels``.
        scale: row norm.

    Returns:
        float32 ``(len(classes), H)``.
    """
    means = np.stack([hidden[labels == c].mean(axis=0) for c in classes])
    return (np.float32(scale) * l2_normalize(means)).astype(np.float32)


class Momentum:
    """Heavy-ball SGD over a dict of named float32 arrays, with a per-array mask of what may change.

    Args:
        lr: learning rate.
        momentum: heavy-ball coefficient.
    """

    def __init__(self, lr: float, momentum: float) -> None:
        self.lr, self.momentum = np.float32(lr), np.float32(momentum)
        self.velocity: dict[str, np.ndarray] = {}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray],
             masks: dict[str, np.ndarray] | None = None) -> None:
        """Update ``params`` in place; ``masks[name]`` (broadcastable, 0/1) freezes entries where 0."""
        for name, g in grads.items():
            if masks is not None and name in masks:
                g = g * masks[name]
            v = self.velocity.get(name)
            v = g if v is None or v.shape != g.shape else self.momentum * v + g
            self.velocity[name] = v
            params[name] -= self.lr * v
