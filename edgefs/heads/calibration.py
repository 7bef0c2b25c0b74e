"""The leave-one-out unknown threshold, kept up to date as classes change instead of recomputed.

:func:`edgefs.heads.openset.calibrate_threshold` reads every enrolled shot and scores it
against every class: O(N C D) per change, the cost that made enrollment slow down with
every class already enrolled. A shot's leave-one-out score is ``max(own, other)``:

* ``own``, its cosine to its class's mean without it, follows from the class's running sum
  and count, which the head keeps (a sufficient statistic): it changes only when that class
  changes, and is recomputed from the head's row then (O(shots of the class x D));
* ``other``, its best cosine to any *other* class's prototype, changes when any class is
  added (a running max: one product with the new prototype), appended to or removed (the
  shots whose best other class it was are rescored against every class).

:class:`LooCalibrator` keeps both for a bounded sample of the shots: all of them while the
store holds at most ``capacity`` shots (then the threshold is that of the full
recomputation, up to float32 rounding), and a uniform reservoir sample of ``capacity``
shots beyond that (Vitter's algorithm R), whose ``1 - target_tpr`` quantile estimates the
full one: with 2,048 shots and ``target_tpr = 0.95`` the sampled quantile lies within about
+-1.4 points of rank (3 standard errors) of the full one. An update then costs
O(capacity x D) plus O(C x D) per shot that enters the sample.

The state (store sample ids, best other score and class) travels with the head state;
the sample's embeddings are read back from the store by id when it is next needed.

Shots enrolled as the mean of several views (:mod:`edgefs.service.views`) are summed by the head as
means but scored here as a camera frame is, one view (their ``singles``): scoring the means
would put the threshold where no single frame reaches it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from edgefs.heads.base import Head
from edgefs.heads.openset import threshold_from_scores
from edgefs.heads.reference import l2_normalize, row_dots
from edgefs.heads.rows import Rows

#: Shots kept for calibration; below this the threshold equals the full recomputation.
DEFAULT_CAPACITY = 2048
#: Names of the arrays :meth:`LooCalibrator.arrays` saves with the head state.
STATE_ARRAYS = ("calib_ids", "calib_other", "calib_other_class", "calib_seen")


class LooCalibrator:
    """Leave-one-out scores of a bounded sample of the enrolled shots, updated per change.

    Args:
        capacity: the most shots kept (see the module docstring).
        seed: the reservoir's random seed.

    Shapes: ``r <= capacity`` kept shots, ``D`` embedding size, ``C`` classes of the head.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY, seed: int = 0) -> None:
        self.capacity = int(capacity)
        self.rng = np.random.default_rng(seed)
        self.seen = 0  # shots offered to the reservoir, net of removed classes
        self.ids = np.zeros(0, np.int64)  # store sample ids (-1 when not stored)
        self.cls = np.zeros(0, np.int32)  # class index in the head
        self._q: Rows | None = None  # unit rows, as queries are scored (grown by doubling)
        self._s: Rows | None = None  # the shots as the head sums them (None: the same as q)
        self.own = np.zeros(0, np.float32)  # cosine to the own class's mean without the shot
        self.other = np.zeros(0, np.float32)  # best cosine to another class's prototype
        self.other_class = np.zeros(0, np.int32)  # which class (-1: none)

    @property
    def q(self) -> np.ndarray:
        return np.zeros((0, 0), np.float32) if self._q is None else self._q.view

    @property
    def s(self) -> np.ndarray:
        return self.q if self._s is None else self._s.view

    # ---- building -----------------------------------------------------------------------------
    def _rows(self, head: Head, embeddings: np.ndarray,
              singles: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(q, s)``: unit query rows (of ``singles`` where given) and the rows the head sums."""
        t = head.transform(np.asarray(embeddings, np.float32))
        s = l2_normalize(t) if head.normalize_shots else t
        q = l2_normalize(t) if singles is None else l2_normalize(head.transform(np.asarray(singles, np.float32)))
        return q, s

    def _start(self, head: Head, separate: bool) -> None:
        """Row buffers for ``head``'s shots; ``separate``: queries differ from the summed rows."""
        if self._q is None:
            self._q = Rows((head.dim,), np.float32)
        if self._s is None and (separate or not head.normalize_shots):
            self._s = Rows((head.dim,), np.float32, self._q.view.copy())  # until now the same as q

    def _best_other(self, head: Head, q: np.ndarray, cls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Best cosine of unit rows ``q`` ``(k, D)`` to the prototypes of classes other than ``cls``."""
        if len(head.classes) < 2 or not len(q):
            return np.full(len(q), -1.0, np.float32), np.full(len(q), -1, np.int32)
        cos = row_dots(q, head.prototypes).copy()  # (k, C)
        cos[np.arange(len(q)), cls] = -np.inf
        best = cos.argmax(axis=1).astype(np.int32)
        return cos[np.arange(len(q)), best].astype(np.float32), best

    def _own(self, head: Head, rows: np.ndarray) -> np.ndarray:
        """Leave-one-out cosines of kept shots ``rows`` to their own class, from the head's sums."""
        c = self.cls[rows]
        counts = head._counts[c].astype(np.float32)
        loo = l2_normalize((head._sums[c] - self.s[rows]) / np.maximum(counts - 1, 1)[:, None])
        return (self.q[rows] * loo).sum(axis=1).astype(np.float32)

    def _keep(self, head: Head, embeddings: np.ndarray, cls: np.ndarray, ids: np.ndarray,
              singles: np.ndarray | None = None) -> None:
        """Offer shots to the reservoir (after the head holds their class): algorithm R, in order."""
        self._start(head, singles is not None)
        assert self._q is not None
        room = max(self.capacity - len(self.ids), 0)
        n = min(room, len(embeddings))
        winner: dict[int, int] = {}  # slot -> shot replacing it (a later shot wins, as in sequence)
        self.seen += n
        for i in range(n, len(embeddings)):
            self.seen += 1
            j = int(self.rng.integers(self.seen))
            if j < self.capacity:
                winner[j] = i
        chosen = np.concatenate([np.arange(n), np.array(list(winner.values()), np.int64)]).astype(np.int64)
        if not chosen.size:
            return
        q, s = self._rows(head, embeddings[chosen], None if singles is None else singles[chosen])
        c = cls[chosen].astype(np.int32)
        other, other_class = self._best_other(head, q, c)
        new_ids = ids[chosen].astype(np.int64)
        slots = np.array(list(winner.keys()), np.int64)
        if n:
            first = len(self.ids)
            self.ids = np.concatenate([self.ids, new_ids[:n]])
            self.cls = np.concatenate([self.cls, c[:n]])
            self.other = np.concatenate([self.other, other[:n]])
            self.other_class = np.concatenate([self.other_class, other_class[:n]])
            self.own = np.concatenate([self.own, np.zeros(n, np.float32)])
            self._q.extend(q[:n])
            if self._s is not None:
                self._s.extend(s[:n])
            slots = np.concatenate([np.arange(first, first + n), slots]).astype(np.int64)
            new_ids, c, other, other_class = new_ids[n:], c[n:], other[n:], other_class[n:]
            q, s = q[n:], s[n:]
            placed = np.arange(first, first + n)
        else:
            placed = np.zeros(0, np.int64)
        replaced = slots[len(placed):]
        if replaced.size:
            self.ids[replaced], self.cls[replaced] = new_ids, c
            self.other[replaced], self.other_class[replaced] = other, other_class
            self._q.writable()[replaced] = q
            if self._s is not None:
                self._s.writable()[replaced] = s
        touched = np.concatenate([placed, replaced]).astype(np.int64)
        self.own[touched] = self._own(head, touched)

    def _realign(self, head: Head) -> None:
        """Rescore every kept shot in the space of a head that re-maps it at each change
        (``head.refits_globally``): O(r x (n + C) x D) for ``n`` shots the head's map was fitted on."""
        if not getattr(head, "refits_globally", False) or not len(self.ids):
            return
        zq = head.align(self.q)  # type: ignore[attr-defined]
        zs = zq if self._s is None else head.align(self.s)  # type: ignore[attr-defined]
        sums = head.aligned_sums  # type: ignore[attr-defined]
        counts = head._counts[self.cls].astype(np.float32)
        loo = l2_normalize((sums[self.cls] - zs) / np.maximum(counts - 1, 1)[:, None])
        self.own = (zq * loo).sum(axis=1).astype(np.float32)
        if len(head.classes) < 2:
            self.other = np.full(len(self.ids), -1.0, np.float32)
            self.other_class = np.full(len(self.ids), -1, np.int32)
            return
        cos = row_dots(zq, head.aligned_prototypes).copy()  # type: ignore[attr-defined]
        cos[np.arange(len(zq)), self.cls] = -np.inf
        self.other_class = cos.argmax(axis=1).astype(np.int32)
        self.other = cos[np.arange(len(zq)), self.other_class].astype(np.float32)

    def rebuild(self, head: Head, embeddings: np.ndarray, labels: np.ndarray, ids: np.ndarray | None = None,
                singles: np.ndarray | None = None) -> None:
        """Start again from every stored shot (float ``(N, D)``, class indices ``(N,)``, store ids, and
        float ``(N, D)`` single views where the embeddings are view means)."""
        self.__init__(self.capacity)  # type: ignore[misc]
        ids = np.full(len(labels), -1, np.int64) if ids is None else np.asarray(ids, np.int64)
        embeddings = np.asarray(embeddings, np.float32)
        singles = _floats(singles)
        if singles is not None and np.array_equal(singles, embeddings):
            singles = None  # every shot is one view: one set of rows serves both (half the memory)
        self._keep(head, embeddings, np.asarray(labels, np.int32), ids, singles)
        self._realign(head)

    # ---- updates (call after the head changed) --------------------------------------------------
    def _rescore(self, head: Head, rows: np.ndarray) -> None:
        if rows.size:
            self.other[rows], self.other_class[rows] = self._best_other(head, self.q[rows], self.cls[rows])

    def added(self, head: Head, idx: int, embeddings: np.ndarray, ids: np.ndarray | None = None,
              singles: np.ndarray | None = None) -> None:
        """Class ``idx`` was enrolled from float ``(K, D)`` shots (store ids or None; their single views
        where the shots are view means)."""
        if len(self.ids):
            cos = self.q @ head.prototypes[idx]
            better = cos > self.other
            self.other[better], self.other_class[better] = cos[better], idx
        ids = np.full(len(embeddings), -1, np.int64) if ids is None else np.asarray(ids, np.int64)
        self._keep(head, np.asarray(embeddings, np.float32), np.full(len(embeddings), idx, np.int32), ids,
                   _floats(singles))
        self._realign(head)

    def appended(self, head: Head, idx: int, embeddings: np.ndarray, ids: np.ndarray | None = None,
                 singles: np.ndarray | None = None) -> None:
        """Shots were added to class ``idx``: its prototype moved (arguments as :meth:`added`)."""
        if len(self.ids):
            cos = self.q @ head.prototypes[idx]
            mine = self.cls == idx
            better = (cos > self.other) & ~mine
            fell = (self.other_class == idx) & (cos < self.other)
            self.other[better], self.other_class[better] = cos[better], idx
            self._rescore(head, np.flatnonzero(fell))
            self.own[mine] = self._own(head, np.flatnonzero(mine))  # its sum and count changed
        ids = np.full(len(embeddings), -1, np.int64) if ids is None else np.asarray(ids, np.int64)
        self._keep(head, np.asarray(embeddings, np.float32), np.full(len(embeddings), idx, np.int32), ids,
                   _floats(singles))
        self._realign(head)

    def removed(self, head: Head, idx: int, shots: int) -> None:
        """Class ``idx`` (``shots`` shots) was removed from ``head``; later indices moved down by one."""
        keep = self.cls != idx
        self.seen = max(self.seen - int(shots), int(keep.sum()))
        for name in ("ids", "cls", "own", "other", "other_class"):
            setattr(self, name, getattr(self, name)[keep])
        if self._q is not None:
            self._q = Rows((self._q.view.shape[1],), np.float32, self._q.view[keep])
        if self._s is not None:
            self._s = Rows((self._s.view.shape[1],), np.float32, self._s.view[keep])
        lost = self.other_class == idx
        self.cls = (self.cls - (self.cls > idx)).astype(np.int32)
        self.other_class = (self.other_class - (self.other_class > idx)).astype(np.int32)
        self._rescore(head, np.flatnonzero(lost))
        self._realign(head)

    # ---- the threshold ------------------------------------------------------------------------
    def scores(self, head: Head) -> tuple[np.ndarray, np.ndarray]:
        """``(known, negative)`` as :func:`edgefs.heads.openset.loo_scores` gives for the kept shots: O(r)."""
        multi = head._counts[self.cls] >= 2
        return np.maximum(self.own, self.other)[multi].astype(np.float32), self.other.astype(np.float32)

    def threshold(self, head: Head, target_tpr: float = 0.95) -> float:
        """The leave-one-out threshold (:func:`edgefs.heads.openset.calibrate_threshold`, ``"loo"``).

        Raises:
            EdgefsError: nothing to calibrate from yet (one class with one shot).
        """
        known, negative = self.scores(head)
        return threshold_from_scores(known, negative, len(head.classes), "loo", target_tpr)

    # ---- persistence --------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """What the store saves with the head (ids, best other score and class; no embeddings)."""
        return {"calib_ids": self.ids.copy(), "calib_other": self.other.copy(),
                "calib_other_class": self.other_class.copy(), "calib_seen": np.array([self.seen], np.int64)}

    def restore(self, head: Head, arrays: Mapping[str, np.ndarray],
                fetch: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]) -> bool:
        """Take saved :meth:`arrays`; ``fetch(ids)`` returns the shots' float32 ``(r, D)`` embeddings, their
        single views (the same rows where the embeddings are single views) and their head class indices
        ``(r,)``. False (nothing changed) when the arrays are absent or do not fit."""
        try:
            ids = np.asarray(arrays["calib_ids"], np.int64)
            other = np.asarray(arrays["calib_other"], np.float32)
            other_class = np.asarray(arrays["calib_other_class"], np.int32)
            seen = int(np.asarray(arrays["calib_seen"]).reshape(-1)[0])
        except (KeyError, IndexError, ValueError, TypeError):
            return False
        if not (ids.shape == other.shape == other_class.shape) or (ids < 0).any() or len(ids) > self.capacity:
            return False
        emb, singles, cls = fetch(ids)
        if (emb.shape != (len(ids), head.dim) or singles.shape != emb.shape or cls.shape != ids.shape
                or (other_class >= len(head.classes)).any()):
            return False
        separate = not np.array_equal(singles, emb)
        q, s = self._rows(head, emb, singles if separate else None)
        self._q = Rows((head.dim,), np.float32, q)
        self._s = None if head.normalize_shots and not separate else Rows((head.dim,), np.float32, s)
        self.ids, self.cls, self.other, self.other_class = ids, cls.astype(np.int32), other, other_class
        self.own = self._own(head, np.arange(len(ids))) if len(ids) else np.zeros(0, np.float32)
        self.seen = max(seen, len(ids))
        self._realign(head)
        return True


def _floats(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.asarray(a, np.float32)
