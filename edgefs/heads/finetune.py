"""Fine-tuned linear head: imprint the new class, then a few SGD steps over all stored shots."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from edgefs.errors import EdgefsError
from edgefs.heads.base import HEADS, Head, KeepsShots
from edgefs.heads.reference import finetune_gram, l2_normalize, softmax

PENALTIES = ("l2", "ewc", "none")


def diagonal_fisher(support: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Diagonal Fisher information of a softmax-linear layer on its stored shots.

    With labels drawn from the model, ``E[(dlog p_y / dW_cd)^2] = p_c (1 - p_c) x_d^2``,
    averaged over shots and scaled to mean 1 (so ``l2`` keeps its meaning).

    Args:
        support: float32 ``(N, D)``.
        weights: float32 ``(C, D)``.
        bias: float32 ``(C,)``.

    Returns:
        float32 ``(C, D)``.
    """
    p = softmax(support @ weights.T + bias)  # (N, C)
    fisher = ((p * (1.0 - p)).T @ (support * support)) / np.float32(max(len(support), 1))
    mean = float(fisher.mean())
    return (fisher / mean if mean > 0 else np.ones_like(fisher)).astype(np.float32)


@HEADS.register("finetune")
class FinetuneHead(KeepsShots, Head):
    """Linear softmax head ``logits = q_n W^T + b`` on unit-norm embeddings, fine-tuned on device.

    Every class's row starts from its initial value (Qi et al. 2018 imprinting:
    ``temperature`` times its normalised mean; or the spec's meta-learned
    ``w_init``/``b_init``), and :func:`edgefs.heads.reference.finetune_gram` runs over
    the stored shots of *all* enrolled classes, so old classes are replayed at every
    update. Two ways to keep them:

    * ``refit=True`` (default): each update starts again from the initial rows and pulls
      towards them. The result depends only on the enrolled shots, not on the order of
      the updates: enrolling classes one task at a time gives exactly what fitting them all
      at once gives (no forgetting by construction; tools/bench_forgetting.py).
    * ``refit=False``: each update continues from the current weights and pulls towards
      them. Over many updates the old rows drift (about a point of accuracy after 10
      tasks in tools/bench_forgetting.py), which the penalty only slows.

    ``penalty="l2"`` pulls every weight towards its anchor with ``l2``; ``"ewc"`` weights
    that pull by the diagonal Fisher on the stored shots (Kirkpatrick et al. 2017; the Gram
    form is then not exact, so the plain loop runs); ``"none"`` has no pull.

    Args:
        dim: embedding size ``D``.
        temperature: scale of imprinted rows (cosine logits times this).
        threshold: unknown when the best cosine to a class mean is below it.
        lr: weight learning rate (a per-parameter ``(D,)`` array may come from the spec).
        lr_b: bias learning rate; defaults to ``lr``.
        steps: SGD steps per update.
        momentum: heavy-ball coefficient.
        l2: keep-old penalty weight; small by default because every stored shot is replayed
            at each update (tools/bench_forgetting.py: larger pulls cost accuracy).
        penalty: ``"l2"``, ``"ewc"`` or ``"none"``.
        refit: start every update from the initial rows (order-independent) rather than
            from the current weights.
    """

    head_type = "finetune"
    params_accepted = ("lr", "lr_b", "steps", "momentum", "l2", "penalty", "refit")
    normalize_shots = True
    #: The fine-tune routine, with reference.finetune_gram's signature (the CUDA head swaps in its kernel).
    solver: ClassVar[Callable[..., tuple[np.ndarray, np.ndarray]]] = staticmethod(finetune_gram)

    def __init__(self, dim: int, *, temperature: float = 10.0, threshold: float = -1.0, lr: float = 0.5,
                 lr_b: float | None = None, steps: int = 50, momentum: float = 0.9, l2: float = 0.001,
                 penalty: str = "l2", refit: bool = True) -> None:
        super().__init__(dim, temperature=temperature, threshold=threshold)
        if penalty not in PENALTIES:
            raise EdgefsError(f"unknown penalty {penalty!r}; use one of {', '.join(PENALTIES)}")
        if steps < 0 or lr <= 0 or not 0 <= momentum < 1 or l2 < 0:
            raise EdgefsError("finetune head needs steps >= 0, lr > 0, 0 <= momentum < 1 and l2 >= 0")
        self.lr, self.steps, self.momentum, self.l2, self.penalty = float(lr), int(steps), float(momentum), \
            float(l2), penalty
        self.lr_b = float(lr if lr_b is None else lr_b)
        self.refit = bool(refit)
        self.weight = np.zeros((0, self.dim), np.float32)  # W (C, D)
        self.bias = np.zeros(0, np.float32)  # b (C,)
        self._init_shots()  # (N, D) unit rows, replayed at every update
        self._w_init: np.ndarray | None = None  # (D,) meta-learned start row
        self._b_init: np.ndarray | None = None  # () meta-learned start bias
        self._lr_param: np.ndarray | None = None  # (D,) Meta-SGD per-parameter rate

    def hyperparams(self) -> dict[str, Any]:
        return {**super().hyperparams(), "lr": self.lr, "lr_b": self.lr_b, "steps": self.steps,
                "momentum": self.momentum, "l2": self.l2, "penalty": self.penalty, "refit": self.refit}

    def _use_spec_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        extra = sorted(set(arrays) - {"w_init", "b_init", "lr"})
        if extra:
            raise EdgefsError(f"finetune head spec has unknown arrays {extra}; known: w_init, b_init, lr")
        self._set_meta(arrays.get("w_init"), arrays.get("b_init"), arrays.get("lr"))

    def _set_meta(self, w_init: np.ndarray | None, b_init: np.ndarray | None, lr: np.ndarray | None) -> None:
        for name, a, size in (("w_init", w_init, self.dim), ("b_init", b_init, 1), ("lr", lr, self.dim)):
            if a is not None and (np.asarray(a).size != size or not np.isfinite(a).all()):
                raise EdgefsError(f"finetune spec array {name!r} must hold {size} finite values, "
                                  f"got shape {np.shape(a)}")
        self._w_init = None if w_init is None else np.asarray(w_init, np.float32).reshape(self.dim)
        self._b_init = None if b_init is None else np.asarray(b_init, np.float32).reshape(())
        self._lr_param = None if lr is None else np.asarray(lr, np.float32).reshape(self.dim)

    # ---- updates --------------------------------------------------------------------
    def _init_row(self, idx: int) -> tuple[np.ndarray, np.float32]:
        imprinted = np.float32(self.temperature) * self._protos[idx]
        row = imprinted if self._w_init is None else self._w_init.copy()
        return row, np.float32(0.0 if self._b_init is None else self._b_init)

    def _on_add(self, indices: list[int], shots: list[np.ndarray]) -> None:
        rows = [self._init_row(i) for i in indices]
        self.weight = np.concatenate([self.weight, np.stack([r for r, _ in rows])])
        self.bias = np.concatenate([self.bias, np.array([b for _, b in rows], np.float32)])
        for idx, emb in zip(indices, shots, strict=True):
            self._keep_shots(idx, emb)
        self._fit()

    def _on_append(self, idx: int, shots: np.ndarray) -> None:
        self._keep_shots(idx, shots)
        self._fit()

    def _on_remove(self, idx: int) -> None:
        # Old rows stay as trained: dropping a class only removes its logit.
        self.weight = np.delete(self.weight, idx, axis=0)
        self.bias = np.delete(self.bias, idx)
        self._forget_shots(idx)

    def _fit(self) -> None:
        """Fine-tune W, b on every stored shot, from and anchored to the initial rows (``refit``)
        or from and anchored to the current weights."""
        if self.refit:
            rows = [self._init_row(i) for i in range(len(self.classes))]
            w0 = np.stack([r for r, _ in rows]).astype(np.float32)
            b0 = np.array([b for _, b in rows], np.float32)
        else:
            w0, b0 = self.weight, self.bias
        lr: float | np.ndarray = self.lr
        if self._lr_param is not None:
            lr = np.broadcast_to(self._lr_param, w0.shape).astype(np.float32)
        l2: float | np.ndarray = self.l2
        if self.penalty == "none":
            l2 = 0.0
        elif self.penalty == "ewc":
            l2 = np.float32(self.l2) * diagonal_fisher(self._support, w0, b0)
        self.weight, self.bias = self.solver(self._support, self._support_labels, w0, b0, lr, self.lr_b,
                                             self.steps, self.momentum, l2)

    # ---- inference ------------------------------------------------------------------
    def _scores(self, q: np.ndarray) -> np.ndarray:
        return (l2_normalize(q) @ self.weight.T + self.bias).astype(np.float32)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"weight": self.weight.copy(), "bias": self.bias.copy(), **self._shots_state()}
        for name, a in (("w_init", self._w_init), ("b_init", self._b_init), ("lr_param", self._lr_param)):
            if a is not None:
                arrays[name] = a.copy()
        return arrays

    def _load_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        c = len(self.classes)
        weight = np.asarray(arrays.get("weight"), np.float32)
        bias = np.asarray(arrays.get("bias"), np.float32)
        if weight.shape != (c, self.dim) or bias.shape != (c,):
            raise EdgefsError(f"saved finetune head weights {weight.shape} and bias {bias.shape} do not fit its "
                              f"{c} classes; rebuild the head from the samples")
        self._restore_shots(arrays, "finetune head support")
        self.weight, self.bias = weight, bias
        self._set_meta(arrays.get("w_init"), arrays.get("b_init"), arrays.get("lr_param"))
