"""Fine-tuned linear head: imprint the new class, then a few SGD steps over all stored shots."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from edgefs.errors import EdgefsError
from edgefs.heads.base import ShotKeepingHead
from edgefs.heads.reference import finetune_gram, l2_normalize, row_dots, softmax
from edgefs.heads.rows import Rows
from edgefs.heads.spec import HEADS

PENALTIES = ("l2", "ewc", "none")
#: Which rows an update refits: every class's over every shot, the changed classes' rows over their
#: shots and a bounded replay of their nearest classes', or the first while the store is small.
SCOPES = ("all", "local", "auto")


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


def finetune_rows(x: np.ndarray, labels: np.ndarray, w0: np.ndarray, b0: np.ndarray, fixed: np.ndarray,
                  lr: float | np.ndarray, lr_b: float, steps: int, momentum: float, l2: float,
                  ewc: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """SGD with momentum on ``T`` rows of a softmax-linear layer, the other columns' logits fixed.

    Minimises ``mean CE([x W^T + b, fixed], y) + (l2/2) sum(F * (W - w0)^2)`` over ``W`` float32
    ``(T, D)`` and ``b`` ``(T,)`` from ``w0``, ``b0`` (``F`` = 1, or the diagonal Fisher with
    ``ewc``): :func:`edgefs.heads.reference.finetune` restricted to some rows (NumPy only; the
    problem is small: the changed classes' shots plus a bounded replay).

    Args:
        x: float32 ``(n, D)`` unit shots.
        labels: int32 ``(n,)`` columns in ``0..T+F-1``; the first ``T`` are the trained rows.
        w0, b0: float32 ``(T, D)``, ``(T,)`` start and anchor.
        fixed: float32 ``(n, F)`` logits of the frozen classes.
        lr: scalar or a per-parameter float32 ``(1, D)`` rate; lr_b, steps, momentum, l2: as ``finetune``.

    Returns:
        ``(W float32 (T, D), b float32 (T,))``.
    """
    t = w0.shape[0]
    y = np.zeros((len(x), t + fixed.shape[1]), np.float32)
    y[np.arange(len(x)), labels] = 1.0
    n = np.float32(max(len(x), 1))
    lr_w = np.asarray(lr, np.float32)
    mom, lrb = np.float32(momentum), np.float32(lr_b)
    w, b = w0.astype(np.float32).copy(), b0.astype(np.float32).copy()
    pen: float | np.ndarray = np.float32(l2)
    if ewc and l2:
        # diagonal_fisher's rule on the trained rows, with the frozen classes in the softmax.
        p = softmax(np.concatenate([x @ w.T + b, fixed], axis=1))[:, :t]
        fisher = ((p * (1.0 - p)).T @ (x * x)) / n
        mean = float(fisher.mean())
        pen = np.float32(l2) * (fisher / mean if mean > 0 else np.ones_like(fisher)).astype(np.float32)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    for _ in range(int(steps)):
        g = (softmax(np.concatenate([x @ w.T + b, fixed], axis=1)) - y)[:, :t] / n  # (n, T)
        vw = mom * vw + (g.T @ x + pen * (w - w0))
        vb = mom * vb + g.sum(axis=0)
        w = w - lr_w * vw
        b = b - lrb * vb
    return w.astype(np.float32), b.astype(np.float32)


@HEADS.register("finetune", rank=5)
class FinetuneHead(ShotKeepingHead):
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

    Which rows an update refits (``scope``): ``"all"`` refits every row over every stored shot (the
    two modes above; an update costs O(steps x N^2 x C) in the Gram form, so it grows with the
    square of the store: seconds at 1,000 classes, unusable at 10,000). ``"local"`` refits only the
    changed classes' rows, over their shots plus a bounded replay of at most ``replay`` shots of
    their ``neighbours`` nearest classes (by prototype cosine), whose rows and biases stay as they
    are and enter the softmax as fixed logits: O(C D) to find the neighbours plus O(steps x
    (K + replay) x D), flat in the number of classes. The rows of classes that were not changed
    are never touched, so nothing already enrolled can drift; what it costs in accuracy against
    the full refit is measured in tools/bench_forgetting.py. ``"auto"`` (default) refits everything
    while the head holds at most ``full_max_shots`` shots and locally beyond.

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
        scope: ``"all"``, ``"local"`` or ``"auto"`` (see above).
        replay: shots of the neighbouring classes replayed by a local refit.
        neighbours: nearest classes whose shots are replayed by a local refit.
        full_max_shots: the most stored shots ``"auto"`` refits all rows for.
    """

    head_type = "finetune"
    params_accepted = ("lr", "lr_b", "steps", "momentum", "l2", "penalty", "refit", "scope", "replay",
                       "neighbours", "full_max_shots")
    normalize_shots = True
    #: The fine-tune routine, with reference.finetune_gram's signature (the CUDA head swaps in its kernel).
    solver: ClassVar[Callable[..., tuple[np.ndarray, np.ndarray]]] = staticmethod(finetune_gram)

    def __init__(self, dim: int, *, temperature: float = 10.0, threshold: float = -1.0, lr: float = 0.5,
                 lr_b: float | None = None, steps: int = 50, momentum: float = 0.9, l2: float = 0.001,
                 penalty: str = "l2", refit: bool = True, scope: str = "auto", replay: int = 256,
                 neighbours: int = 16, full_max_shots: int = 256) -> None:
        super().__init__(dim, temperature=temperature, threshold=threshold)
        if penalty not in PENALTIES:
            raise EdgefsError(f"unknown penalty {penalty!r}; use one of {', '.join(PENALTIES)}")
        if scope not in SCOPES:
            raise EdgefsError(f"unknown fine-tune scope {scope!r}; use one of {', '.join(SCOPES)}")
        if int(replay) < 0 or int(neighbours) < 0 or int(full_max_shots) < 0:
            raise EdgefsError("finetune head needs replay, neighbours and full_max_shots >= 0")
        self.scope, self.replay, self.neighbours = scope, int(replay), int(neighbours)
        self.full_max_shots = int(full_max_shots)
        if steps < 0 or lr <= 0 or not 0 <= momentum < 1 or l2 < 0:
            raise EdgefsError("finetune head needs steps >= 0, lr > 0, 0 <= momentum < 1 and l2 >= 0")
        self.lr, self.steps, self.momentum, self.l2, self.penalty = float(lr), int(steps), float(momentum), \
            float(l2), penalty
        self.lr_b = float(lr if lr_b is None else lr_b)
        self.refit = bool(refit)
        self._r_weight = Rows((self.dim,), np.float32)  # W (C, D)
        self._r_bias = Rows((), np.float32)  # b (C,)
        #: Classes whose rows the last update changed (None: all of them).
        self.changed_rows: set[int] | None = set()
        self._w_init: np.ndarray | None = None  # (D,) meta-learned start row
        self._b_init: np.ndarray | None = None  # () meta-learned start bias
        self._lr_param: np.ndarray | None = None  # (D,) Meta-SGD per-parameter rate

    @property
    def weight(self) -> np.ndarray:
        """float32 ``(C, D)`` weights (a view: assign to replace them)."""
        return self._r_weight.view

    @weight.setter
    def weight(self, value: np.ndarray) -> None:
        self._r_weight = Rows((self.dim,), np.float32, value)

    @property
    def bias(self) -> np.ndarray:
        """float32 ``(C,)`` biases (a view: assign to replace them)."""
        return self._r_bias.view

    @bias.setter
    def bias(self, value: np.ndarray) -> None:
        self._r_bias = Rows((), np.float32, value)

    def hyperparams(self) -> dict[str, Any]:
        return {**super().hyperparams(), "lr": self.lr, "lr_b": self.lr_b, "steps": self.steps,
                "momentum": self.momentum, "l2": self.l2, "penalty": self.penalty, "refit": self.refit,
                "scope": self.scope, "replay": self.replay, "neighbours": self.neighbours,
                "full_max_shots": self.full_max_shots}

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
        self._r_weight.extend(np.stack([r for r, _ in rows]))
        self._r_bias.extend(np.array([b for _, b in rows], np.float32))
        super()._on_add(indices, shots)  # the shots, as unit rows, are replayed at every update
        self._update(indices)

    def _on_append(self, idx: int, shots: np.ndarray) -> None:
        super()._on_append(idx, shots)
        self._update([idx])

    def _on_remove(self, idx: int) -> None:
        # Old rows stay as trained: dropping a class only removes its logit.
        self._r_weight.delete(idx)
        self._r_bias.delete(idx)
        super()._on_remove(idx)
        self.changed_rows = set()

    def local(self) -> bool:
        """Whether the next update refits only the changed rows (``scope``, and ``"auto"``'s size rule)."""
        return self.scope == "local" or (self.scope == "auto" and len(self._support) > self.full_max_shots)

    def _update(self, changed: list[int]) -> None:
        if self.local():
            for idx in changed:  # one class at a time: a joint refit of many rows costs their square
                self._fit_rows([idx])
            self.changed_rows = set(changed)
        else:
            self._fit()
            self.changed_rows = None

    def _fit_rows(self, changed: list[int]) -> None:
        """Refit the rows ``changed`` over their shots and a bounded replay of their nearest classes'."""
        train = np.asarray(changed, np.int64)
        c = len(self.classes)
        near: np.ndarray = np.zeros(0, np.int64)
        if self.neighbours and c > len(train):
            sims = row_dots(self._protos[train], self._protos).max(axis=0)  # (C,) best cosine to a changed one
            sims[train] = -np.inf
            m = min(self.neighbours, c - len(train))
            near = np.argpartition(-sims, m - 1)[:m].astype(np.int64)
        labels = self._support_labels
        own = np.flatnonzero(np.isin(labels, train))
        replay = np.zeros(0, np.int64)
        if len(near) and self.replay:
            pool = np.flatnonzero(np.isin(labels, near))
            # Spread the budget over the neighbours: each one's first shots, round-robin.
            rank = np.zeros(len(pool), np.int64)
            for cls in near:
                mine = labels[pool] == cls
                rank[mine] = np.arange(int(mine.sum()))
            replay = pool[np.argsort(rank, kind="stable")[: self.replay]]
        rows = np.concatenate([own, replay])
        x = self._support[rows]
        cols = np.concatenate([train, near])
        column = {int(k): j for j, k in enumerate(cols)}
        y = np.array([column[int(k)] for k in labels[rows]], np.int32)
        if self.refit:
            starts = [self._init_row(int(i)) for i in train]
            w0 = np.stack([r for r, _ in starts]).astype(np.float32)
            b0 = np.array([b for _, b in starts], np.float32)
        else:
            w0, b0 = self.weight[train].copy(), self.bias[train].copy()
        fixed = (x @ self.weight[near].T + self.bias[near]).astype(np.float32)  # (n, |near|)
        lr: float | np.ndarray = self.lr if self._lr_param is None else self._lr_param[None, :]
        w, b = finetune_rows(x, y, w0, b0, fixed, lr, self.lr_b, self.steps, self.momentum,
                             0.0 if self.penalty == "none" else self.l2, self.penalty == "ewc")
        weight, bias = self._r_weight.writable(), self._r_bias.writable()
        weight[train], bias[train] = w, b

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
        return {"weight": self.weight.copy(), "bias": self.bias.copy(), **super()._state_arrays(),
                **self._global_arrays()}

    def _row_arrays(self, idx: int) -> dict[str, np.ndarray]:
        return {"weight": self.weight[idx].copy(), "bias": np.asarray(self.bias[idx], np.float32)}

    def _global_arrays(self) -> dict[str, np.ndarray]:
        arrays = {}
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
        super()._load_arrays(arrays)
        self.weight, self.bias = weight, bias
        self._set_meta(arrays.get("w_init"), arrays.get("b_init"), arrays.get("lr_param"))
