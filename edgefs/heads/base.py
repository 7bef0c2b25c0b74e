"""The device head contract: enroll classes incrementally, classify embeddings.

Every head keeps, per class, a running sum and count of its shots and the
L2-normalised mean (``similarity prototype``); a query's ``best_sim`` is its
highest cosine to these, whatever the head's own scoring rule, so one open-set
threshold (:mod:`edgefs.heads.openset`) means the same on every head. Adding,
appending to or removing a class touches that class's rows only.

A spec may carry a ``center`` array, float32 ``(D,)``: a mean feature subtracted
from every shot and every query before the head sees them (SimpleShot's CL2N
when the head then L2-normalises). It is applied in one place, on the way in
(:meth:`Head.transform`), so enrollment, classification and ``best_sim`` all see
centred features. Heads whose learned arrays were trained on raw features
(relation, siamese) refuse a centred spec.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from edgefs.errors import EdgefsError
from edgefs.heads.reference import accumulate_normalize, l2_normalize, row_dots, softmax, topk
from edgefs.heads.rows import Rows
from edgefs.heads.spec import HEADS, HeadSpec


@dataclass(frozen=True)
class ClassifyResult:
    """What :meth:`Head.classify` returns for ``Q`` queries.

    Attributes:
        top_idx: int32 ``(Q, k)`` class indices, best first.
        top_prob: float32 ``(Q, k)`` their probabilities.
        best_sim: float32 ``(Q,)`` highest cosine to a class's similarity prototype.
        unknown: bool ``(Q,)``, ``best_sim < threshold``.
        labels: top-1 class name per query, ``None`` where unknown.
    """

    top_idx: np.ndarray
    top_prob: np.ndarray
    best_sim: np.ndarray
    unknown: np.ndarray
    labels: list[str | None]


def check_embeddings(embeddings: Any, dim: int, what: str = "embeddings") -> np.ndarray:
    """Validate a float ``(K, dim)`` array and return it as float32.

    Raises:
        EdgefsError: not 2-D, wrong width, empty, or holding NaN/inf.
    """
    a = np.asarray(embeddings)
    if a.ndim == 1 and a.shape[0] == dim:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] != dim:
        raise EdgefsError(f"{what} have shape {a.shape}; expected (K, {dim}): one row per image, "
                          "from the engine of the bundle this head was built for")
    if a.shape[0] == 0:
        raise EdgefsError(f"{what} are empty; pass at least one embedding")
    if not np.issubdtype(a.dtype, np.floating):
        raise EdgefsError(f"{what} have dtype {a.dtype}; pass float32 or float16 embeddings")
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise EdgefsError(f"{what} contain NaN or inf; check the engine's output (precision overflow?) "
                          "and drop those frames")
    return a


class Head(ABC):
    """A device head: classes enrolled from embeddings, queries classified.

    Subclasses register in :data:`HEADS` under their ``head_type`` and implement
    :meth:`scores` plus the ``_on_*`` hooks for state beyond the prototype statistics.

    Args:
        dim: embedding size ``D``.
        temperature: softmax scale on cosine scores.
        threshold: a query whose ``best_sim`` is below this is unknown; -1 rejects nothing.
    """

    head_type: ClassVar[str]
    #: Hyper-parameters accepted from ``HeadSpec.params`` (besides temperature/threshold).
    params_accepted: ClassVar[tuple[str, ...]] = ()
    #: L2-normalise each shot before it enters the running sum (Qi et al. imprinting).
    normalize_shots: ClassVar[bool] = True
    #: Whether a spec's ``center`` array (a mean feature subtracted on the way in) is accepted.
    supports_center: ClassVar[bool] = True
    #: Whether every change re-maps the whole embedding space (the ``align`` head): the head then
    #: scores in its own space and provides ``align(rows)`` (unit rows in that space),
    #: ``aligned_sums`` and ``aligned_prototypes`` (``(C, D)``), which the leave-one-out calibration
    #: (:mod:`edgefs.heads.calibration`) rescores every kept shot with after each change.
    refits_globally: ClassVar[bool] = False

    def __init__(self, dim: int, *, temperature: float = 10.0, threshold: float = -1.0) -> None:
        if int(dim) <= 0:
            raise EdgefsError(f"embedding size must be positive, got {dim}")
        self.dim = int(dim)
        self.temperature = float(temperature)
        self.threshold = float(threshold)
        self.classes: list[str] = []
        # Per-class rows, preallocated and grown by doubling (edgefs.heads.rows).
        self._r_sums = Rows((self.dim,), np.float32)
        self._r_counts = Rows((), np.int32)
        self._r_protos = Rows((self.dim,), np.float32)
        self.center: np.ndarray | None = None

    # The per-class arrays as plain (C, ...) arrays: views of the row buffers. Assigning one
    # replaces the buffer (a copy); write rows in place only through Rows.writable().
    @property
    def _sums(self) -> np.ndarray:
        return self._r_sums.view

    @_sums.setter
    def _sums(self, value: np.ndarray) -> None:
        self._r_sums = Rows((self.dim,), np.float32, value)

    @property
    def _counts(self) -> np.ndarray:
        return self._r_counts.view

    @_counts.setter
    def _counts(self, value: np.ndarray) -> None:
        self._r_counts = Rows((), np.int32, value)

    @property
    def _protos(self) -> np.ndarray:
        return self._r_protos.view

    @_protos.setter
    def _protos(self, value: np.ndarray) -> None:
        self._r_protos = Rows((self.dim,), np.float32, value)

    def fork(self) -> Head:
        """A copy to update while this head keeps serving readers: O(classes) names, no matrix copy.

        Row buffers are shared copy-on-write (:class:`edgefs.heads.rows.Rows`): adding a class to
        the fork writes past this head's rows; changing an existing row copies the buffer first.
        """
        other = copy.copy(self)
        for key, value in vars(self).items():
            if isinstance(value, Rows):
                setattr(other, key, value.fork())
            elif isinstance(value, list | dict):
                setattr(other, key, copy.copy(value))
            elif self.fork_copies_arrays and isinstance(value, np.ndarray):
                setattr(other, key, value.copy())
        return other

    #: Whether :meth:`fork` copies the head's own ndarray attributes: True for heads that update
    #: them in place (a memory's slots, fast-weight rows); the live head must never see a change
    #: that was not committed.
    fork_copies_arrays: ClassVar[bool] = False

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: HeadSpec, dim: int) -> Head:
        """Build the head a spec names (``Head.from_spec``) or this head from its spec.

        Raises:
            EdgefsError: unknown head type or parameter, or a spec for another head.
        """
        if cls is Head:
            return HEADS.get(spec.head_type).from_spec(spec, dim)
        if spec.head_type != cls.head_type:
            raise EdgefsError(f"spec is for a {spec.head_type!r} head, not {cls.head_type!r}")
        known = {"temperature", "threshold", *cls.params_accepted}
        unknown = sorted(set(spec.params) - known)
        if unknown:
            raise EdgefsError(f"{cls.head_type} head does not understand spec params {unknown}; "
                              f"known: {sorted(known)}. Upgrade edgefs or re-export the head spec")
        head = cls(dim, **spec.params)
        arrays = dict(spec.arrays)
        center = arrays.pop("center", None)
        if center is not None:
            head.set_center(center)
        head._use_spec_arrays(arrays)
        return head

    def set_center(self, center: np.ndarray | None) -> None:
        """Subtract float ``(D,)`` ``center`` from every shot and query from now on (None: no centring).

        Raises:
            EdgefsError: this head type cannot be centred, classes are already enrolled
                (their sums were taken without it), or the array is not ``D`` finite values.
        """
        if center is None:
            self.center = None
            return
        if not self.supports_center:
            raise EdgefsError(f"the {self.head_type} head does not support a 'center' array (its learned "
                              "arrays were trained on raw features); export with --head prototype, imprint, "
                              "matching or finetune, or without centring")
        if self.classes:
            raise EdgefsError("set the center before enrolling classes: enrolled sums were taken without it")
        c = np.asarray(center)
        if c.shape != (self.dim,) or not np.issubdtype(c.dtype, np.floating) or not np.isfinite(c).all():
            raise EdgefsError(f"head 'center' must be {self.dim} finite floats, got {c.dtype}{c.shape}")
        self.center = c.astype(np.float32).copy()

    def transform(self, embeddings: np.ndarray) -> np.ndarray:
        """float32 ``(K, D)`` embeddings as this head sees them: minus ``center`` when it has one."""
        a = np.asarray(embeddings, np.float32)
        return a if self.center is None else (a - self.center).astype(np.float32)

    def _use_spec_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        if arrays:
            raise EdgefsError(f"{self.head_type} head takes no spec arrays, got {sorted(arrays)}")

    # ---- enrollment ---------------------------------------------------------------------
    def index(self, name: str) -> int:
        """Position of class ``name``; EdgefsError naming the enrolled classes if absent."""
        try:
            return self.classes.index(name)
        except ValueError:
            raise EdgefsError(f"no class {name!r}; enrolled: {', '.join(self.classes) or 'none'}") from None

    def shots(self, name: str) -> int:
        """How many shots class ``name`` was enrolled from."""
        return int(self._counts[self.index(name)])

    def add_class(self, name: str, embeddings: np.ndarray) -> None:
        """Enroll a new class from float ``(K, D)`` shots.

        Raises:
            EdgefsError: duplicate or empty name, or invalid embeddings.
        """
        self.add_classes({name: embeddings})

    def add_classes(self, items: Mapping[str, np.ndarray]) -> None:
        """Enroll several new classes, each from float ``(K_i, D)`` shots, as one update."""
        checked: dict[str, np.ndarray] = {}
        for name, emb in items.items():
            if not isinstance(name, str) or not name.strip():
                raise EdgefsError(f"class name must be a non-empty string, got {name!r}")
            if name in self.classes:
                raise EdgefsError(f"class {name!r} is already enrolled; use append() to add shots "
                                  "or remove() it first")
            checked[name] = self.transform(check_embeddings(emb, self.dim, f"shots of {name!r}"))
        if not checked:
            raise EdgefsError("no classes given to enroll")
        first = len(self.classes)
        grow = len(checked)
        # New rows past every reader's: no copy of the existing rows (amortised O(D) per class).
        self._r_sums.extend(np.zeros((grow, self.dim), np.float32))
        self._r_counts.extend(np.zeros(grow, np.int32))
        self._r_protos.extend(np.zeros((grow, self.dim), np.float32))
        for offset, (name, emb) in enumerate(checked.items()):
            self.classes.append(name)
            self._accumulate(first + offset, emb)
        self._on_add(list(range(first, first + grow)), list(checked.values()))

    def append(self, name: str, embeddings: np.ndarray) -> None:
        """Add float ``(K, D)`` shots to an enrolled class."""
        idx = self.index(name)
        emb = self.transform(check_embeddings(embeddings, self.dim, f"shots of {name!r}"))
        for rows in (self._r_sums, self._r_counts, self._r_protos):
            rows.writable()  # an existing row changes: copy a buffer shared with a reader first
        self._accumulate(idx, emb)
        self._on_append(idx, emb)

    def remove(self, name: str) -> None:
        """Forget class ``name``; other classes keep their state untouched."""
        idx = self.index(name)
        self.classes.pop(idx)
        for rows in (self._r_sums, self._r_counts, self._r_protos):
            rows.delete(idx)
        self._on_remove(idx)

    def rename(self, old: str, new: str) -> None:
        """Rename a class; no array changes."""
        idx = self.index(old)
        if new != old and new in self.classes:
            raise EdgefsError(f"cannot rename {old!r} to {new!r}: that name is taken")
        if not isinstance(new, str) or not new.strip():
            raise EdgefsError(f"class name must be a non-empty string, got {new!r}")
        self.classes[idx] = new

    def _accumulate(self, idx: int, emb: np.ndarray) -> None:
        shots = l2_normalize(emb) if self.normalize_shots else emb
        # Views of one row: accumulate_normalize updates them in place.
        row = accumulate_normalize(shots, np.zeros(len(shots), np.int32),
                                   self._sums[idx : idx + 1], self._counts[idx : idx + 1])
        self._protos[idx] = row[0]

    def _on_add(self, indices: list[int], shots: list[np.ndarray]) -> None:  # noqa: B027 - optional hook
        """Hook: classes ``indices`` were appended (float32 shots each ``(K_i, D)``)."""

    def _on_append(self, idx: int, shots: np.ndarray) -> None:  # noqa: B027 - optional hook
        """Hook: float32 ``(K, D)`` shots were added to class ``idx``."""

    def _on_remove(self, idx: int) -> None:  # noqa: B027 - optional hook
        """Hook: class ``idx`` was removed (indices above it moved down by one)."""

    # ---- inference ----------------------------------------------------------------------
    @property
    def prototypes(self) -> np.ndarray:
        """float32 ``(C, D)`` similarity prototypes (unit rows)."""
        return self._protos

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """float ``(Q, D)`` -> float32 ``(Q, C)`` logits (softmax gives the class probabilities)."""
        return self._scores(self._check_queries(queries))

    @abstractmethod
    def _scores(self, q: np.ndarray) -> np.ndarray:
        """:meth:`scores` of float32 ``(Q, D)`` queries already checked and transformed."""

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        """Checked float32 ``(Q, D)`` queries, centred when the head has a center."""
        if not self.classes:
            raise EdgefsError("no classes are enrolled; add_class() before classifying")
        return self.transform(check_embeddings(queries, self.dim, "queries"))

    def _classify(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        top_idx, top_prob = topk(softmax(self._scores(q)), k)
        best_sim = row_dots(l2_normalize(q), self._protos).max(axis=1).astype(np.float32)
        return top_idx, top_prob, best_sim, best_sim < np.float32(self.threshold)

    def classify(self, queries: np.ndarray, k: int = 3) -> ClassifyResult:
        """Rank classes for float ``(Q, D)`` queries; see :class:`ClassifyResult`."""
        if int(k) < 1:
            raise EdgefsError(f"k must be at least 1, got {k}")
        q = self._check_queries(queries)
        top_idx, top_prob, best_sim, unknown = self._classify(q, int(k))
        labels = [None if u else self.classes[int(i)] for i, u in zip(top_idx[:, 0], unknown, strict=True)]
        return ClassifyResult(top_idx, top_prob, best_sim, unknown, labels)

    # ---- persistence --------------------------------------------------------------------
    def hyperparams(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (what ``from_spec`` accepts)."""
        return {"temperature": self.temperature, "threshold": self.threshold}

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """What the store saves: named arrays and JSON params (classes, dim, hyper-params)."""
        arrays = {"sums": self._sums.copy(), "counts": self._counts.copy(), **self._state_arrays()}
        if self.center is not None:
            arrays["center"] = self.center.copy()
        params = {"head_type": self.head_type, "dim": self.dim, "classes": list(self.classes),
                  "hyperparams": self.hyperparams()}
        return arrays, params

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {}

    # ---- persistence per class (the store writes only the changed classes' rows) ---------------
    #: Whether the state's ``support``/``support_labels`` are the stored shots themselves; they are
    #: then not saved per class but restored from the store's samples (:meth:`shots_arrays`).
    keeps_shots: ClassVar[bool] = False

    def class_rows(self, names: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
        """Each named class's part of :meth:`state`: ``sums`` float32 ``(D,)``, ``counts`` int32 ``()``,
        plus the head's own per-class rows (the fine-tune head's ``weight`` and ``bias``)."""
        rows = {}
        for name in names:
            i = self.index(name)
            rows[name] = {"sums": self._sums[i].copy(), "counts": np.asarray(self._counts[i], np.int32),
                          **self._row_arrays(i)}
        return rows

    def _row_arrays(self, idx: int) -> dict[str, np.ndarray]:
        """Hook: head-specific per-class rows of class ``idx`` (first axis of a state array)."""
        return {}

    def global_arrays(self) -> dict[str, np.ndarray]:
        """The arrays of :meth:`state` that are not per class or per shot (the centre feature...)."""
        arrays = {} if self.center is None else {"center": self.center.copy()}
        return {**arrays, **self._global_arrays()}

    def _global_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def state_params(self) -> dict[str, Any]:
        """:meth:`state`'s params without the class list (the store keeps the class order)."""
        return {"head_type": self.head_type, "dim": self.dim, "hyperparams": self.hyperparams()}

    def shots_arrays(self, embeddings: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
        """The ``support``/``support_labels`` state arrays made from the stored shots (float ``(N, D)``,
        class indices ``(N,)``), as :meth:`add_class` keeps them; empty for heads that keep none."""
        if not self.keeps_shots:
            return {}
        x = self.transform(np.asarray(embeddings, np.float32))
        return {"support": l2_normalize(x) if self.normalize_shots else x,
                "support_labels": np.asarray(labels, np.int32)}

    def load_state(self, arrays: Mapping[str, np.ndarray], params: Mapping[str, Any]) -> None:
        """Replace this head's classes and arrays with a saved :meth:`state`.

        Raises:
            EdgefsError: a state of another head type or size, or arrays that do not fit.
        """
        if params.get("head_type") != self.head_type or params.get("dim") != self.dim:
            raise EdgefsError(f"saved head state is {params.get('head_type')!r} with dim {params.get('dim')}; "
                              f"this head is {self.head_type!r} with dim {self.dim}. Rebuild the head "
                              "from the stored samples")
        classes = list(params.get("classes", []))
        c = len(classes)
        sums = np.asarray(arrays.get("sums"))
        counts = np.asarray(arrays.get("counts"))
        if sums.shape != (c, self.dim) or counts.shape != (c,) or len(set(classes)) != c:
            raise EdgefsError(f"saved head state does not fit its {c} classes (sums {sums.shape}, "
                              f"counts {counts.shape}); rebuild the head from the stored samples")
        if c and (counts.min() < 1 or not np.isfinite(sums).all()):
            raise EdgefsError("saved head state has empty classes or non-finite sums; rebuild it")
        saved_center = arrays.get("center")
        if saved_center is not None and self.center is not None:
            if np.asarray(saved_center).shape != self.center.shape or not np.allclose(saved_center, self.center):
                raise EdgefsError("saved head state was centred with another mean feature than this head; "
                                  "rebuild the head from the stored samples")
        elif saved_center is None and self.center is not None:
            raise EdgefsError("saved head state was taken without the center this head subtracts; "
                              "rebuild the head from the stored samples")
        accepted = self.hyperparams()
        for key, value in dict(params.get("hyperparams", {})).items():
            if key not in accepted:
                raise EdgefsError(f"saved head state has unknown hyper-parameter {key!r}; upgrade edgefs")
            setattr(self, key, value)
        if saved_center is not None and self.center is None:
            self.center = np.asarray(saved_center, np.float32).copy()  # a copy of a centred head (to_cuda)
        self.classes = classes
        self._sums = sums.astype(np.float32).copy()
        self._counts = counts.astype(np.int32).copy()
        self._protos = l2_normalize(self._sums / self._counts[:, None].astype(np.float32))
        self._load_arrays(arrays)

    def _load_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:  # noqa: B027 - optional hook
        """Hook: restore arrays added by :meth:`_state_arrays` (classes are already set)."""


def build_head(spec: HeadSpec, dim: int) -> Head:
    """The registered head for ``spec.head_type``, configured from the spec."""
    return Head.from_spec(spec, dim)


class ShotKeepingHead(Head):
    """A head that keeps every shot, not only per-class sums (matching, siamese, den, finetune,
    lstm_finetune, progressive).

    ``_support`` float32 ``(S, D)`` holds the shots in enrollment order (L2-normalised when the
    head's ``normalize_shots`` is set) and ``_support_labels`` int32 ``(S,)`` their class indices;
    they are saved as the state arrays ``support`` and ``support_labels``. The hooks here keep them;
    a subclass that overrides a hook calls ``super()``'s, before or after its own per-class rows.
    """

    keeps_shots: ClassVar[bool] = True

    def __init__(self, dim: int, *, temperature: float = 10.0, threshold: float = -1.0) -> None:
        super().__init__(dim, temperature=temperature, threshold=threshold)
        self._r_support = Rows((self.dim,), np.float32)
        self._r_support_labels = Rows((), np.int32)

    @property
    def _support(self) -> np.ndarray:
        return self._r_support.view

    @_support.setter
    def _support(self, value: np.ndarray) -> None:
        self._r_support = Rows((self.dim,), np.float32, value)

    @property
    def _support_labels(self) -> np.ndarray:
        return self._r_support_labels.view

    @_support_labels.setter
    def _support_labels(self, value: np.ndarray) -> None:
        self._r_support_labels = Rows((), np.int32, value)

    def _keep_shots(self, idx: int, shots: np.ndarray) -> None:
        rows = l2_normalize(shots) if self.normalize_shots else shots
        self._r_support.extend(rows)  # amortised: no copy of the shots already kept
        self._r_support_labels.extend(np.full(len(shots), idx, np.int32))

    def _on_add(self, indices: list[int], shots: list[np.ndarray]) -> None:
        for idx, emb in zip(indices, shots, strict=True):
            self._keep_shots(idx, emb)

    def _on_append(self, idx: int, shots: np.ndarray) -> None:
        self._keep_shots(idx, shots)

    def _on_remove(self, idx: int) -> None:
        gone = np.flatnonzero(self._support_labels == idx)
        labels = np.delete(self._support_labels, gone)
        self._r_support.delete(gone)
        self._support_labels = (labels - (labels > idx)).astype(np.int32)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"support": self._support.copy(), "support_labels": self._support_labels.copy()}

    def _load_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Take ``support``/``support_labels`` from saved arrays after checking they fit the classes."""
        support = np.asarray(arrays.get("support"), np.float32)
        labels = np.asarray(arrays.get("support_labels"), np.int32)
        c = len(self.classes)
        if (support.ndim != 2 or support.shape[1] != self.dim or labels.shape != (support.shape[0],)
                or (labels.size and (labels.min() < 0 or labels.max() >= c))
                or (np.bincount(labels, minlength=c) != self._counts).any()):
            raise EdgefsError(f"saved {self.head_type} head support does not fit its classes; rebuild the head "
                              "from the samples")
        self._support, self._support_labels = support, labels
