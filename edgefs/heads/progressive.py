"""Progressive-network head (Rusu et al. 2016): one small column per domain on frozen embeddings, NumPy only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edgefs.errors import EdgefsError
from edgefs.heads.base import ShotKeepingHead
from edgefs.heads.mlp import Momentum, imprint_rows, init_rows, softmax_cross_entropy
from edgefs.heads.reference import l2_normalize
from edgefs.heads.spec import HEADS

#: State arrays besides the stored shots.
PROGRESSIVE_ARRAYS = ("col_w", "col_b", "lateral", "out_w", "out_b")


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of float ``(N, C)``, float32."""
    z = logits - logits.max(axis=1, keepdims=True)
    return (z - np.log(np.exp(z).sum(axis=1, keepdims=True))).astype(np.float32)


@HEADS.register("progressive", rank=10)
class ProgressiveHead(ShotKeepingHead):
    """A column per domain; earlier columns stay frozen, later ones read them through lateral weights.

    Rusu, Rabinowitz, Desjardins, Soyer, Kirkpatrick, Kavukcuoglu, Pascanu and Hadsell,
    "Progressive Neural Networks", arXiv:1606.04671, 2016, on frozen backbone embeddings.
    A class's domain is the text of its name before the first ``separator``
    (``"kitchen/mug"`` -> ``kitchen``; a name without one belongs to the domain ``""``);
    domains get columns in the order their first class was enrolled. Column ``k`` is
    ``h_k = relu(W_k x + b_k + sum_{j<k} U_kj h_j)`` (``width`` units, ``x`` the unit-norm
    shot times ``sqrt(D)``), and its classes' logits are ``V h_k + c``, trained by
    cross-entropy over that domain's classes on its stored shots only.

    Enrolling into domain ``k`` retrains column ``k`` and the columns after it (they read
    it) from their seeded initial weights; columns before ``k`` never change, so earlier
    domains cannot be forgotten, and the head depends only on the stored shots and the
    order of the domains (a head rebuilt from the samples equals the enrolled one).

    Classification over all enrolled classes factorises ``p(c | x) = p(c | x, domain)
    p(domain | x)``: the column's softmax within the domain, times a softmax over domains
    of ``domain_temperature`` times the best cosine to one of the domain's class means.
    ``laterals=False`` gives independent columns (separate heads, for comparison).

    Args:
        dim: embedding size ``D``.
        temperature: scale of the imprinted output rows.
        threshold: unknown when the best cosine to a class mean is below it.
        width: hidden units per column.
        steps: gradient steps per column fit; ``lr``, ``momentum``: the optimiser.
        separator: splits a class name into domain and class.
        laterals: connect each column to the earlier ones.
        domain_temperature: sharpness of ``p(domain | x)``.
        seed: seeds each column's initial weights (with its index).
    """

    head_type = "progressive"
    params_accepted = ("width", "steps", "lr", "momentum", "separator", "laterals", "lateral_scale",
                       "domain_temperature", "seed")
    normalize_shots = True

    def __init__(self, dim: int, *, temperature: float = 10.0, threshold: float = -1.0, width: int = 32,
                 steps: int = 60, lr: float = 0.05, momentum: float = 0.9, separator: str = "/",
                 laterals: bool = True, lateral_scale: float = 0.1, domain_temperature: float = 20.0,
                 seed: int = 0) -> None:
        super().__init__(dim, temperature=temperature, threshold=threshold)
        if (int(width) < 1 or int(steps) < 0 or lr <= 0 or not 0 <= momentum < 1 or domain_temperature <= 0
                or lateral_scale < 0):
            raise EdgefsError("progressive head needs width >= 1, steps >= 0, lr > 0, 0 <= momentum < 1 "
                              "domain_temperature > 0 and lateral_scale >= 0")
        if not isinstance(separator, str) or not separator:
            raise EdgefsError(f"progressive head separator must be non-empty text, got {separator!r}")
        self.width, self.steps, self.lr, self.momentum = int(width), int(steps), float(lr), float(momentum)
        self.separator, self.laterals, self.lateral_scale = separator, bool(laterals), float(lateral_scale)
        self.domain_temperature, self.seed = float(domain_temperature), int(seed)
        self.col_w = np.zeros((0, self.width, self.dim), np.float32)  # (K, H, D)
        self.col_b = np.zeros((0, self.width), np.float32)  # (K, H)
        self.lateral = np.zeros((0, 0, self.width, self.width), np.float32)  # (K, K, H, H), [k, j] for j < k
        self.out_w = np.zeros((0, self.width), np.float32)  # (C, H)
        self.out_b = np.zeros(0, np.float32)  # (C,)

    def hyperparams(self) -> dict[str, Any]:
        return {**super().hyperparams(), "width": self.width, "steps": self.steps, "lr": self.lr,
                "momentum": self.momentum, "separator": self.separator, "laterals": self.laterals,
                "lateral_scale": self.lateral_scale,
                "domain_temperature": self.domain_temperature, "seed": self.seed}

    # ---- domains ----------------------------------------------------------------------
    def domain_of(self, name: str) -> str:
        """The domain (column) a class name belongs to."""
        return name.split(self.separator, 1)[0] if self.separator in name else ""

    @property
    def domains(self) -> list[str]:
        """Domains in column order (first enrollment)."""
        return list(dict.fromkeys(self.domain_of(n) for n in self.classes))

    def _class_columns(self) -> np.ndarray:
        """int64 ``(C,)``: each class's column."""
        order = {d: k for k, d in enumerate(self.domains)}
        return np.array([order[self.domain_of(n)] for n in self.classes], np.int64)

    # ---- the network ------------------------------------------------------------------
    def _inputs(self, unit_rows: np.ndarray) -> np.ndarray:
        return (unit_rows * np.float32(np.sqrt(self.dim))).astype(np.float32)

    def _columns(self, x: np.ndarray, upto: int) -> list[np.ndarray]:
        """Hidden activations ``[(N, H)] * upto`` of columns ``0..upto-1`` for inputs ``x``."""
        hs: list[np.ndarray] = []
        for k in range(upto):
            pre = x @ self.col_w[k].T + self.col_b[k]
            for j in range(k):
                pre = pre + (np.float32(self.lateral_scale) * hs[j]) @ self.lateral[k, j].T
            hs.append(np.maximum(pre, np.float32(0.0)))
        return hs

    def _fit_column(self, k: int) -> None:
        """Train column ``k`` (and its classes' output rows) from its seeded start; earlier columns frozen."""
        cols = self._class_columns()
        mine = np.flatnonzero(cols == k)
        rows = np.isin(self._support_labels, mine)
        x = self._inputs(self._support[rows])
        y = np.searchsorted(mine, self._support_labels[rows])  # 0..len(mine)-1
        self.col_w[k] = init_rows(self.width, self.dim, self.seed * 1_000_003 + k)
        self.col_b[k] = 0.0
        self.lateral[k] = 0.0
        frozen = [np.float32(self.lateral_scale) * h for h in self._columns(x, k)]
        params = {"w": self.col_w[k], "b": self.col_b[k], "lat": self.lateral[k],
                  "v": np.zeros((len(mine), self.width), np.float32), "c": np.zeros(len(mine), np.float32)}

        def hidden() -> tuple[np.ndarray, np.ndarray]:
            pre = x @ params["w"].T + params["b"]
            for j in range(k if self.laterals else 0):
                pre = pre + frozen[j] @ params["lat"][j].T
            return pre, np.maximum(pre, np.float32(0.0))

        _, h = hidden()
        scale = self.temperature / max(float(np.median(np.linalg.norm(h, axis=1))), 1e-6)
        params["v"][:] = imprint_rows(h, y, list(range(len(mine))), scale)
        opt = Momentum(self.lr, self.momentum)
        for _ in range(self.steps if len(mine) > 1 else 0):  # one class: nothing to discriminate
            pre, h = hidden()
            _, dlogits = softmax_cross_entropy(h @ params["v"].T + params["c"], y)
            dpre = (dlogits @ params["v"]) * (pre > 0)
            grads = {"v": dlogits.T @ h, "c": dlogits.sum(axis=0), "w": dpre.T @ x, "b": dpre.sum(axis=0)}
            if self.laterals and k:
                lat = np.zeros_like(params["lat"])
                for j in range(k):
                    lat[j] = dpre.T @ frozen[j]
                grads["lat"] = lat
            opt.step(params, {n: g.astype(np.float32) for n, g in grads.items()})
        self.out_w[mine], self.out_b[mine] = params["v"], params["c"]

    def _refit_from(self, first: int) -> None:
        """Rebuild the column arrays for the current domains and refit columns ``first..K-1``."""
        n = len(self.domains)
        keep = min(first, self.col_w.shape[0], n)
        col_w = np.zeros((n, self.width, self.dim), np.float32)
        col_b = np.zeros((n, self.width), np.float32)
        lateral = np.zeros((n, n, self.width, self.width), np.float32)
        col_w[:keep], col_b[:keep] = self.col_w[:keep], self.col_b[:keep]
        lateral[:keep, :keep] = self.lateral[:keep, :keep]
        self.col_w, self.col_b, self.lateral = col_w, col_b, lateral
        for k in range(keep, n):
            self._fit_column(k)

    # ---- head hooks -------------------------------------------------------------------
    def _on_add(self, indices: list[int], shots: list[np.ndarray]) -> None:
        self.out_w = np.concatenate([self.out_w, np.zeros((len(indices), self.width), np.float32)])
        self.out_b = np.concatenate([self.out_b, np.zeros(len(indices), np.float32)])
        super()._on_add(indices, shots)
        self._refit_from(int(self._class_columns()[indices].min()))

    def _on_append(self, idx: int, shots: np.ndarray) -> None:
        super()._on_append(idx, shots)
        self._refit_from(int(self._class_columns()[idx]))

    def remove(self, name: str) -> None:
        # The removed class's column, known only before it is gone (its domain may vanish with it).
        self._removed_column = int(self._class_columns()[self.index(name)])
        super().remove(name)

    def _on_remove(self, idx: int) -> None:
        self.out_w = np.delete(self.out_w, idx, 0)
        self.out_b = np.delete(self.out_b, idx)
        super()._on_remove(idx)
        self._refit_from(self._removed_column)

    # ---- inference --------------------------------------------------------------------
    def column_logits(self, queries: np.ndarray) -> np.ndarray:
        """float ``(Q, D)`` -> float32 ``(Q, C)``: each class's logit from its own column (within-domain)."""
        return self._column_logits(self._check_queries(queries))

    def _column_logits(self, q: np.ndarray) -> np.ndarray:
        hs = self._columns(self._inputs(l2_normalize(q)), len(self.domains))
        cols = self._class_columns()
        out = np.empty((len(q), len(self.classes)), np.float32)
        for k, h in enumerate(hs):
            mine = cols == k
            out[:, mine] = h @ self.out_w[mine].T + self.out_b[mine]
        return out

    def _scores(self, q: np.ndarray) -> np.ndarray:
        logits = self._column_logits(q)
        cols = self._class_columns()
        sims = l2_normalize(q) @ self._protos.T  # (Q, C)
        n = len(self.domains)
        best = np.stack([sims[:, cols == k].max(axis=1) for k in range(n)], axis=1)  # (Q, K)
        log_domain = log_softmax(np.float32(self.domain_temperature) * best)
        out = np.empty_like(logits)
        for k in range(n):
            mine = cols == k
            out[:, mine] = log_softmax(logits[:, mine]) + log_domain[:, k : k + 1]
        return out

    # ---- persistence ------------------------------------------------------------------
    fork_copies_arrays = True

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {**self._global_arrays(), **super()._state_arrays()}

    def _global_arrays(self) -> dict[str, np.ndarray]:
        # Saved whole at each commit: enrolling into a domain refits its column and every later one.
        return {"col_w": self.col_w.copy(), "col_b": self.col_b.copy(), "lateral": self.lateral.copy(),
                "out_w": self.out_w.copy(), "out_b": self.out_b.copy()}

    def _load_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        missing = [k for k in PROGRESSIVE_ARRAYS if k not in arrays]
        if missing:
            raise EdgefsError(f"saved progressive head lacks {missing}; rebuild the head from the stored samples")
        a = {k: np.asarray(arrays[k], np.float32) for k in PROGRESSIVE_ARRAYS}
        n, c, h = len(self.domains), len(self.classes), self.width
        shapes = {"col_w": (n, h, self.dim), "col_b": (n, h), "lateral": (n, n, h, h), "out_w": (c, h), "out_b": (c,)}
        for name, shape in shapes.items():
            if a[name].shape != shape or not np.isfinite(a[name]).all():
                raise EdgefsError(f"saved progressive head array {name!r} is {a[name].shape}, expected {shape} for "
                                  f"{n} domains and {c} classes; rebuild the head from the stored samples")
        super()._load_arrays(arrays)
        self.col_w, self.col_b, self.lateral = a["col_w"], a["col_b"], a["lateral"]
        self.out_w, self.out_b = a["out_w"], a["out_b"]
