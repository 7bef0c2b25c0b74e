"""Dynamically expandable network head (Yoon et al. 2018) on frozen backbone embeddings, NumPy only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edgefs.errors import EdgefsError
from edgefs.heads.base import ShotKeepingHead
from edgefs.heads.mlp import Momentum, imprint_rows, init_rows, softmax_cross_entropy
from edgefs.heads.reference import l2_normalize
from edgefs.heads.spec import HEADS

#: State arrays besides the stored shots: hidden layer, output layer, each unit's birth update.
DEN_ARRAYS = ("w1", "b1", "w2", "b2", "born")


@HEADS.register("den", rank=9)
class DENHead(ShotKeepingHead):
    """A one-hidden-layer network whose hidden layer grows as classes are enrolled.

    Yoon, Yang, Lee and Hwang, "Lifelong Learning with Dynamically Expandable Networks",
    ICLR 2018, for class-incremental enrollment on frozen embeddings. With ``x`` a stored
    shot (unit norm, scaled by ``sqrt(D)``), ``h = relu(W1 x + b1)`` (``H`` units) and
    ``logits = W2 h + b2``. Each update (one :meth:`add_classes` call, or an :meth:`append`)
    is a task; its new classes ``N`` get output rows imprinted in hidden space, then:

    1. **Selective retraining.** Only ``W2[N]`` trains, with an L1 proximal step, on every
       stored shot (the device keeps them: old classes are replayed so that the shared
       softmax stays calibrated); the hidden units with a non-zero weight to a new class
       (at most ``select`` of them) form the subnetwork whose incoming weights then train
       with ``W2[N]``. Output rows of earlier classes never change.
    2. **Expansion.** If the new shots' loss is still above ``loss_threshold``, ``expand``
       units are added (up to ``max_hidden``), trained with a group-lasso penalty on their
       incoming weights, and the ones left without a weight to a new class are pruned.
    3. **Split / duplication.** A retrained unit whose incoming weights moved by more than
       ``drift`` (relative L2) is split: the original gets its old weights back (earlier
       classes read it as before) and a copy with the new weights serves the new classes.

    Unlike the prototype and ``refit`` fine-tune heads, the result depends on the order of
    updates; a head rebuilt from the stored samples (all classes as one update) is a
    valid head of the same samples, not the incremental history.

    Args:
        dim: embedding size ``D``.
        temperature: scale of imprinted output rows.
        threshold: unknown when the best cosine to a class mean is below it.
        hidden: units created at the first update.
        expand: units added per expansion.
        max_hidden: the hidden layer never grows beyond this.
        loss_threshold: mean cross-entropy of the new shots above which the layer expands.
        drift: relative change of a unit's incoming weights above which it is split.
        select: largest fraction of the hidden units retrained per update.
        steps: gradient steps per training phase.
        lr: learning rate; ``momentum``: heavy-ball coefficient.
        l1: L1 weight on the new output rows (selection); ``group``: group-lasso weight on
            new units (expansion).
        seed: seeds the weights of every unit created.
    """

    head_type = "den"
    params_accepted = ("hidden", "expand", "max_hidden", "loss_threshold", "drift", "select", "steps", "lr",
                       "momentum", "l1", "group", "seed")
    normalize_shots = True

    def __init__(self, dim: int, *, temperature: float = 10.0, threshold: float = -1.0, hidden: int = 64,
                 expand: int = 16, max_hidden: int = 256, loss_threshold: float = 0.05, drift: float = 0.05,
                 select: float = 0.5, steps: int = 40, lr: float = 0.05, momentum: float = 0.9,
                 l1: float = 1e-3, group: float = 1e-3, seed: int = 0) -> None:
        super().__init__(dim, temperature=temperature, threshold=threshold)
        if not (0 < int(hidden) <= int(max_hidden)) or int(expand) < 0 or int(steps) < 0:
            raise EdgefsError("den head needs 0 < hidden <= max_hidden, expand >= 0 and steps >= 0")
        if lr <= 0 or not 0 <= momentum < 1 or min(l1, group, loss_threshold, drift) < 0 or not 0 < select <= 1:
            raise EdgefsError("den head needs lr > 0, 0 <= momentum < 1, 0 < select <= 1 and non-negative "
                              "l1, group, loss_threshold and drift")
        self.hidden, self.expand, self.max_hidden = int(hidden), int(expand), int(max_hidden)
        self.loss_threshold, self.drift, self.select = float(loss_threshold), float(drift), float(select)
        self.steps, self.lr, self.momentum = int(steps), float(lr), float(momentum)
        self.l1, self.group, self.seed = float(l1), float(group), int(seed)
        self.w1 = np.zeros((0, self.dim), np.float32)  # (H, D)
        self.b1 = np.zeros(0, np.float32)  # (H,)
        self.w2 = np.zeros((0, 0), np.float32)  # (C, H)
        self.b2 = np.zeros(0, np.float32)  # (C,)
        self.born = np.zeros(0, np.int32)  # (H,) update at which each unit was created
        self.updates = 0
        #: What the last update did: selected, expanded, pruned, split units and the new shots' loss.
        self.last_update: dict[str, Any] = {}

    def hyperparams(self) -> dict[str, Any]:
        return {**super().hyperparams(), "hidden": self.hidden, "expand": self.expand,
                "max_hidden": self.max_hidden, "loss_threshold": self.loss_threshold, "drift": self.drift,
                "select": self.select, "steps": self.steps, "lr": self.lr, "momentum": self.momentum,
                "l1": self.l1, "group": self.group, "seed": self.seed}

    @property
    def units(self) -> int:
        """Current hidden-layer width ``H``."""
        return int(self.w1.shape[0])

    # ---- the network ------------------------------------------------------------------
    def _inputs(self, unit_rows: np.ndarray) -> np.ndarray:
        # Unit rows scaled so each coordinate has variance about 1 (He initialisation's premise).
        return (unit_rows * np.float32(np.sqrt(self.dim))).astype(np.float32)

    def _hidden(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x @ self.w1.T + self.b1, np.float32(0.0))

    def _new_units(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        w = init_rows(count, self.dim, self.seed * 1_000_003 + self.units * 7919 + self.updates)
        return w, np.zeros(count, np.float32)

    def _grow(self, w: np.ndarray, b: np.ndarray) -> None:
        self.w1 = np.concatenate([self.w1, w])
        self.b1 = np.concatenate([self.b1, b])
        self.w2 = np.concatenate([self.w2, np.zeros((self.w2.shape[0], len(w)), np.float32)], axis=1)
        self.born = np.concatenate([self.born, np.full(len(w), self.updates, np.int32)])

    def _train(self, x: np.ndarray, y: np.ndarray, new: np.ndarray, units: np.ndarray, train_hidden: bool,
               group_units: np.ndarray | None = None) -> None:
        """Gradient steps on every stored shot; only ``W2[new]``/``b2[new]`` and (``train_hidden``) the
        incoming weights of ``units`` change. L1 prox on ``W2[new]``; group lasso on ``group_units``."""
        params = {"w1": self.w1, "b1": self.b1, "w2": self.w2, "b2": self.b2}
        row_mask = np.zeros((len(self.b2), 1), np.float32)
        row_mask[new] = 1.0
        unit_mask = np.zeros((self.units, 1), np.float32)
        unit_mask[units] = 1.0
        masks = {"w2": row_mask, "b2": row_mask[:, 0], "w1": unit_mask, "b1": unit_mask[:, 0]}
        opt = Momentum(self.lr, self.momentum)
        shrink = np.float32(self.lr * self.l1)
        for _ in range(self.steps):
            pre = x @ self.w1.T + self.b1
            h = np.maximum(pre, np.float32(0.0))
            _, dlogits = softmax_cross_entropy(h @ self.w2.T + self.b2, y)
            grads = {"w2": dlogits.T @ h, "b2": dlogits.sum(axis=0)}
            if train_hidden:
                dpre = (dlogits @ self.w2) * (pre > 0)
                grads["w1"], grads["b1"] = dpre.T @ x, dpre.sum(axis=0)
                if group_units is not None and self.group > 0:
                    norms = np.linalg.norm(self.w1[group_units], axis=1, keepdims=True)
                    grads["w1"][group_units] += np.float32(self.group) * self.w1[group_units] / np.maximum(norms, 1e-12)
            opt.step(params, {k: v.astype(np.float32) for k, v in grads.items()}, masks)
            if shrink > 0:
                rows = self.w2[new]
                self.w2[new] = np.sign(rows) * np.maximum(np.abs(rows) - shrink, np.float32(0.0))

    def _loss(self, x: np.ndarray, y: np.ndarray) -> float:
        return softmax_cross_entropy(self._hidden(x) @ self.w2.T + self.b2, y)[0]

    def _update(self, new_classes: list[int]) -> None:
        """One DEN task: the classes ``new_classes`` are new (or got new shots)."""
        self.updates += 1
        x, y = self._inputs(self._support), self._support_labels
        if self.units == 0:
            self._grow(*self._new_units(self.hidden))
        new = np.asarray(new_classes, np.int64)
        h = self._hidden(x)
        scale = self.temperature / max(float(np.median(np.linalg.norm(h, axis=1))), 1e-6)
        self.w2[new] = imprint_rows(h, y, list(new), scale)
        self.b2[new] = 0.0
        is_new = np.isin(y, new)
        info: dict[str, Any] = {"update": self.updates, "units_before": self.units}
        if len(self.classes) < 2:  # one class: nothing to discriminate yet
            self.last_update = {**info, "units_after": self.units}
            return
        # 1. selective retraining: sparse new rows pick the units, then those units retrain.
        self._train(x, y, new, np.zeros(0, np.int64), train_hidden=False)
        weight = np.abs(self.w2[new]).sum(axis=0)
        chosen = np.flatnonzero(weight > 0)
        cap = max(1, int(self.select * self.units))
        chosen = chosen[np.argsort(-weight[chosen], kind="stable")[:cap]]
        before_w1, before_b1 = self.w1.copy(), self.b1.copy()
        self._train(x, y, new, chosen, train_hidden=True)
        loss = self._loss(x[is_new], y[is_new])
        info.update(selected=len(chosen), loss_after_selective=loss, expanded=0, pruned=0, split=0)
        # 2. dynamic expansion while the new task's loss stays high.
        if loss > self.loss_threshold and self.expand and self.units < self.max_hidden:
            count = min(self.expand, self.max_hidden - self.units)
            first = self.units
            self._grow(*self._new_units(count))
            before_w1 = np.concatenate([before_w1, self.w1[first:]])
            before_b1 = np.concatenate([before_b1, self.b1[first:]])
            added = np.arange(first, self.units)
            self._train(x, y, new, added, train_hidden=True, group_units=added)
            useless = added[np.abs(self.w2[new][:, added]).max(axis=0) <= 1e-6]
            self._drop_units(useless)
            before_w1, before_b1 = np.delete(before_w1, useless, 0), np.delete(before_b1, useless)
            info.update(expanded=int(count), pruned=len(useless))
            loss = self._loss(x[is_new], y[is_new])
        # 3. split units that drifted: the old weights serve the old classes, a copy the new ones.
        old_units = np.flatnonzero(self.born < self.updates)
        moved = np.linalg.norm(np.c_[self.w1 - before_w1, self.b1 - before_b1][old_units], axis=1)
        size = np.linalg.norm(np.c_[before_w1, before_b1][old_units], axis=1)
        drifted = old_units[moved > self.drift * np.maximum(size, 1e-12)]
        room = max(0, self.max_hidden - self.units)
        drifted = drifted[np.argsort(-moved[np.searchsorted(old_units, drifted)], kind="stable")[:room]]
        if len(drifted):
            copies_w, copies_b = self.w1[drifted].copy(), self.b1[drifted].copy()
            self.w1[drifted], self.b1[drifted] = before_w1[drifted], before_b1[drifted]
            first = self.units
            self._grow(copies_w, copies_b)
            copies = np.arange(first, self.units)
            self.w2[np.ix_(new, copies)] = self.w2[np.ix_(new, drifted)]
            self.w2[np.ix_(new, drifted)] = 0.0
            self._train(x, y, new, np.zeros(0, np.int64), train_hidden=False)
            info["split"] = len(drifted)
            loss = self._loss(x[is_new], y[is_new])
        self.last_update = {**info, "loss": loss, "units_after": self.units}

    def _drop_units(self, units: np.ndarray) -> None:
        if len(units):
            self.w1 = np.delete(self.w1, units, 0)
            self.b1 = np.delete(self.b1, units)
            self.w2 = np.delete(self.w2, units, 1)
            self.born = np.delete(self.born, units)

    # ---- head hooks -------------------------------------------------------------------
    def _on_add(self, indices: list[int], shots: list[np.ndarray]) -> None:
        self.w2 = np.concatenate([self.w2, np.zeros((len(indices), self.units), np.float32)])
        self.b2 = np.concatenate([self.b2, np.zeros(len(indices), np.float32)])
        super()._on_add(indices, shots)
        self._update(indices)

    def _on_append(self, idx: int, shots: np.ndarray) -> None:
        super()._on_append(idx, shots)
        self._update([idx])

    def _on_remove(self, idx: int) -> None:
        # Hidden units stay (other classes may read them); only the class's output row goes.
        self.w2 = np.delete(self.w2, idx, 0)
        self.b2 = np.delete(self.b2, idx)
        super()._on_remove(idx)

    def _scores(self, q: np.ndarray) -> np.ndarray:
        h = self._hidden(self._inputs(l2_normalize(q)))
        return (h @ self.w2.T + self.b2).astype(np.float32)

    # ---- persistence ------------------------------------------------------------------
    fork_copies_arrays = True  # units are retrained, split and grown in place

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {**self._global_arrays(), **super()._state_arrays()}

    def _global_arrays(self) -> dict[str, np.ndarray]:
        # Saved whole at each commit: growing or splitting a unit changes every class's output row.
        return {"w1": self.w1.copy(), "b1": self.b1.copy(), "w2": self.w2.copy(), "b2": self.b2.copy(),
                "born": self.born.copy(), "updates": np.array(self.updates, np.int64)}

    def _load_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        missing = [k for k in (*DEN_ARRAYS, "updates") if k not in arrays]
        if missing:
            raise EdgefsError(f"saved den head lacks {missing}; rebuild the head from the stored samples")
        w1, b1 = np.asarray(arrays["w1"], np.float32), np.asarray(arrays["b1"], np.float32)
        w2, b2 = np.asarray(arrays["w2"], np.float32), np.asarray(arrays["b2"], np.float32)
        born = np.asarray(arrays["born"], np.int32)
        h, c = w1.shape[0], len(self.classes)
        if (w1.shape != (h, self.dim) or b1.shape != (h,) or w2.shape != (c, h) or b2.shape != (c,)
                or born.shape != (h,) or h > self.max_hidden
                or not all(np.isfinite(a).all() for a in (w1, b1, w2, b2))):
            raise EdgefsError(f"saved den head arrays do not fit {c} classes and dim {self.dim}; "
                              "rebuild the head from the stored samples")
        super()._load_arrays(arrays)
        self.w1, self.b1, self.w2, self.b2, self.born = w1, b1, w2, b2, born
        self.updates = int(np.asarray(arrays["updates"]))
