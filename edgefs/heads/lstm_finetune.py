"""Fine-tune head whose optimiser is a learned coordinate-wise LSTM (Ravi & Larochelle 2017), NumPy only.

Same model and start as the SGD fine-tune head: a linear softmax layer
``logits = normalize(e) @ W.T + b`` whose rows start imprinted (``temperature`` times the
class's normalised mean, bias 0), refitted over every stored shot at each update. The
``steps`` updates are made by a small LSTM applied to every coordinate ``theta`` of ``W``
and ``b`` independently, with its own state per coordinate (:func:`lstm_finetune`):

* layer 1, an LSTM cell of width ``H`` over the preprocessed gradient and loss
  (Andrychowicz et al. 2016: ``(log|v| / p, sign v)`` above ``exp(-p)``, ``(-1, exp(p) v)``
  below, ``p = 10``);
* layer 2, the meta-learner cell: input gate ``i = sigmoid(w_i . [h, theta, i_prev] + b_i)``,
  forget gate ``f = sigmoid(w_f . [h, theta, f_prev] + b_f)``, and the update
  ``theta <- f * theta - scale * i * grad`` (the cell state is the parameter).

With ``f = 1`` and a constant ``i`` this is SGD; the LSTM learns when to take larger or
smaller steps and when to shrink weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edgefs.errors import EdgefsError
from edgefs.heads.base import ShotKeepingHead
from edgefs.heads.reference import l2_normalize, softmax
from edgefs.heads.spec import HEADS

#: Spec arrays of the learned optimiser, in the order :func:`lstm_finetune` takes them.
LSTM_ARRAYS = ("lstm_wx", "lstm_wh", "lstm_b", "gate_w", "gate_b", "log_scale")
PREPROCESS_P = 10.0


def preprocess(v: np.ndarray) -> np.ndarray:
    """Andrychowicz et al.'s two-channel scaling of gradients and losses: float ``(R,)`` -> float32 ``(R, 2)``."""
    v = np.asarray(v, np.float32)
    big = np.abs(v) >= np.float32(np.exp(-PREPROCESS_P))
    safe = np.where(big, np.abs(v), np.float32(1.0))
    first = np.where(big, np.log(safe) / np.float32(PREPROCESS_P), np.float32(-1.0))
    second = np.where(big, np.sign(v), np.float32(np.exp(PREPROCESS_P)) * v)
    return np.stack([first, second], axis=1).astype(np.float32)


def default_lstm_optimizer(hidden: int = 8, lr: float = 10.0) -> dict[str, np.ndarray]:
    """Arrays of an untrained optimiser that is plain SGD with rate ``lr``: forget gate ~1, input gate 1/2."""
    return {"lstm_wx": np.zeros((4 * hidden, 4), np.float32), "lstm_wh": np.zeros((4 * hidden, hidden), np.float32),
            "lstm_b": np.zeros(4 * hidden, np.float32),
            "gate_w": np.zeros((2, hidden + 2), np.float32), "gate_b": np.array([0.0, 8.0], np.float32),
            "log_scale": np.array([np.log(2.0 * lr)], np.float32)}


def check_lstm_optimizer(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Validate the optimiser's arrays; float32 copies.

    Raises:
        EdgefsError: missing or unknown arrays, inconsistent shapes, non-finite values.
    """
    if set(arrays) != set(LSTM_ARRAYS):
        raise EdgefsError(f"lstm_finetune head spec has arrays {sorted(arrays)}; it needs exactly "
                          f"{', '.join(LSTM_ARRAYS)}. Re-export the head spec from an 'lstm_meta' checkpoint")
    out = {k: np.asarray(arrays[k], np.float32) for k in LSTM_ARRAYS}
    h = out["lstm_wh"].shape[1] if out["lstm_wh"].ndim == 2 else -1
    expected = {"lstm_wx": (4 * h, 4), "lstm_wh": (4 * h, h), "lstm_b": (4 * h,), "gate_w": (2, h + 2),
                "gate_b": (2,), "log_scale": (1,)}
    for name, shape in expected.items():
        if out[name].shape != shape or h < 1:
            raise EdgefsError(f"lstm_finetune head spec array {name!r} has shape {out[name].shape}, expected "
                              f"{shape}; the spec is damaged, export it again")
        if not np.isfinite(out[name]).all():
            raise EdgefsError(f"lstm_finetune head spec array {name!r} holds NaN or inf; re-export the head spec")
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (np.float32(1.0) / (np.float32(1.0) + np.exp(-x))).astype(np.float32)


def lstm_finetune(support: np.ndarray, labels: np.ndarray, w0: np.ndarray, b0: np.ndarray,
                  optimizer: Mapping[str, np.ndarray], steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` LSTM-optimiser updates of a linear softmax layer on unit shots (mean cross-entropy).

    Args:
        support: float32 ``(N, D)`` unit rows.
        labels: int ``(N,)`` in ``0..C-1``.
        w0: float32 ``(C, D)`` start rows.
        b0: float32 ``(C,)`` start bias.
        optimizer: the :data:`LSTM_ARRAYS`.
        steps: updates.

    Returns:
        ``(W float32 (C, D), b float32 (C,))``.
    """
    c, d = w0.shape
    n = len(support)
    onehot = np.zeros((n, c), np.float32)
    onehot[np.arange(n), labels] = 1.0
    theta = np.concatenate([w0.reshape(-1), b0]).astype(np.float32)  # (P,) all coordinates
    p = theta.size
    hdim = optimizer["lstm_wh"].shape[1]
    h, cell = np.zeros((p, hdim), np.float32), np.zeros((p, hdim), np.float32)
    gate_i, gate_f = np.zeros(p, np.float32), np.zeros(p, np.float32)
    wx, wh, bb = optimizer["lstm_wx"], optimizer["lstm_wh"], optimizer["lstm_b"]
    gw, gb = optimizer["gate_w"], optimizer["gate_b"]
    scale = np.float32(np.exp(optimizer["log_scale"][0]))
    for _ in range(int(steps)):
        w, b = theta[: c * d].reshape(c, d), theta[c * d :]
        prob = softmax(support @ w.T + b)
        loss = -np.log(np.maximum((prob * onehot).sum(1), np.float32(1e-30))).mean(dtype=np.float32)
        err = (prob - onehot) / np.float32(n)
        grad = np.concatenate([(err.T @ support).reshape(-1), err.sum(0)]).astype(np.float32)
        x = np.concatenate([preprocess(grad), np.broadcast_to(preprocess(np.array([loss]))[0], (p, 2))], axis=1)
        z = x @ wx.T + h @ wh.T + bb  # (P, 4H): input, forget, cell, output
        zi, zf, zg, zo = np.split(z, 4, axis=1)
        cell = _sigmoid(zf) * cell + _sigmoid(zi) * np.tanh(zg)
        h = (_sigmoid(zo) * np.tanh(cell)).astype(np.float32)
        gate_i = _sigmoid(np.concatenate([h, theta[:, None], gate_i[:, None]], axis=1) @ gw[0] + gb[0])
        gate_f = _sigmoid(np.concatenate([h, theta[:, None], gate_f[:, None]], axis=1) @ gw[1] + gb[1])
        theta = (gate_f * theta - scale * gate_i * grad).astype(np.float32)
    return theta[: c * d].reshape(c, d).copy(), theta[c * d :].copy()


@HEADS.register("lstm_finetune", rank=8)
class LSTMFinetuneHead(ShotKeepingHead):
    """Linear softmax head fine-tuned on the device by a learned LSTM optimiser (module docstring).

    Ravi and Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017;
    Andrychowicz et al., "Learning to learn by gradient descent by gradient descent",
    NeurIPS 2016. Every update (add, append, remove) refits from the imprinted rows over
    every stored shot, so the head depends on the enrolled shots only, not on the order
    of updates (as the SGD fine-tune head with ``refit=True``).

    Args:
        dim: embedding size ``D``.
        temperature: scale of the imprinted start rows (learned).
        threshold: unknown when the best cosine to a class mean is below it.
        steps: LSTM updates per refit.
    """

    head_type = "lstm_finetune"
    params_accepted = ("steps",)
    normalize_shots = True
    supports_center = False  # the optimiser was meta-trained on uncentred unit embeddings

    def __init__(self, dim: int, *, temperature: float = 10.0, threshold: float = -1.0, steps: int = 5) -> None:
        super().__init__(dim, temperature=temperature, threshold=threshold)
        if isinstance(steps, bool) or int(steps) != steps or steps < 0:
            raise EdgefsError(f"lstm_finetune head steps must be a whole number >= 0, got {steps!r}")
        self.steps = int(steps)
        self.optimizer = default_lstm_optimizer()
        self.weight = np.zeros((0, self.dim), np.float32)
        self.bias = np.zeros(0, np.float32)

    def hyperparams(self) -> dict[str, Any]:
        return {**super().hyperparams(), "steps": self.steps}

    def _use_spec_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        if arrays:
            self.optimizer = check_lstm_optimizer(arrays)

    def _fit(self) -> None:
        self.changed_rows: set[int] | None = None  # every row is refitted: the store saves them all
        w0 = np.float32(self.temperature) * self._protos
        b0 = np.zeros(len(self.classes), np.float32)
        if not len(self.classes):
            self.weight, self.bias = w0, b0
            return
        self.weight, self.bias = lstm_finetune(self._support, self._support_labels, w0, b0, self.optimizer,
                                               self.steps)

    def _on_add(self, indices: list[int], shots: list[np.ndarray]) -> None:
        super()._on_add(indices, shots)
        self._fit()

    def _on_append(self, idx: int, shots: np.ndarray) -> None:
        super()._on_append(idx, shots)
        self._fit()

    def _on_remove(self, idx: int) -> None:
        super()._on_remove(idx)
        self._fit()

    def _scores(self, q: np.ndarray) -> np.ndarray:
        return (l2_normalize(q) @ self.weight.T + self.bias).astype(np.float32)

    fork_copies_arrays = True

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight.copy(), "bias": self.bias.copy(), **super()._state_arrays()}

    def _row_arrays(self, idx: int) -> dict[str, np.ndarray]:
        return {"weight": self.weight[idx].copy(), "bias": np.asarray(self.bias[idx], np.float32)}

    def _load_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        c = len(self.classes)
        weight = np.asarray(arrays.get("weight"), np.float32)
        bias = np.asarray(arrays.get("bias"), np.float32)
        if weight.shape != (c, self.dim) or bias.shape != (c,) or not np.isfinite(weight).all():
            raise EdgefsError(f"saved lstm_finetune weights {weight.shape} and bias {bias.shape} do not fit its "
                              f"{c} classes; rebuild the head from the stored samples")
        super()._load_arrays(arrays)
        self.weight, self.bias = weight, bias
