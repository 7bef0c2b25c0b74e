"""Growable row arrays for the device heads: one contiguous, preallocated buffer per array.

A head's per-class arrays (running sums, similarity prototypes, fine-tuned weights) and
per-shot arrays (kept shots) grow one class at a time. Concatenating at every enrollment
copies the whole ``(C, D)`` matrix each time (O(C D) per class, seconds in total at
10,000 classes); :class:`Rows` keeps spare capacity instead and doubles it when full, so
adding a class costs O(D) amortised, and the rows stay one C-contiguous matrix that a
single matrix-vector product scores.

Copy-on-write between forks: :meth:`Rows.fork` shares the buffer with the original, so
``Classifier`` can update a copy of its live head without copying the matrix while the
camera loop keeps reading the original. Rows below the original's count are never written
through a fork (:meth:`Rows.writable` copies the buffer first); rows appended past it go
into the shared buffer only while no other holder has written there (a high-water mark
shared by the forks), so a reader of the original never sees a change.
"""

from __future__ import annotations

import numpy as np


class Rows:
    """A growing ``(n, *tail)`` array over a preallocated buffer.

    Args:
        tail: the shape of one row, e.g. ``(D,)`` for a class row, ``()`` for a count.
        dtype: element type.
        data: initial rows (copied), or None for none.
    """

    __slots__ = ("_buf", "_mark", "_shared", "n")

    def __init__(self, tail: tuple[int, ...], dtype: np.typing.DTypeLike, data: np.ndarray | None = None) -> None:
        rows = np.zeros((0, *tail), dtype) if data is None else np.array(data, dtype=dtype, copy=True)
        if rows.shape[1:] != tuple(tail):
            raise ValueError(f"rows of shape {rows.shape[1:]} given for a {tuple(tail)} row array")
        self._buf = np.ascontiguousarray(rows)
        self.n = len(rows)
        self._mark = [self.n]  # highest row any holder of this buffer has written
        self._shared = False

    @property
    def view(self) -> np.ndarray:
        """The ``n`` rows (a view of the buffer: do not write through it; see :meth:`writable`)."""
        return self._buf[: self.n]

    @property
    def capacity(self) -> int:
        return len(self._buf)

    def _regrow(self, rows: int) -> None:
        cap = max(rows, 2 * len(self._buf), 16)
        buf = np.zeros((cap, *self._buf.shape[1:]), self._buf.dtype)
        buf[: self.n] = self._buf[: self.n]
        self._buf, self._mark, self._shared = buf, [self.n], False

    def extend(self, rows: np.ndarray) -> int:
        """Append ``rows`` ``(k, *tail)``; returns the index of the first. Amortised O(k) (doubling)."""
        k = len(rows)
        if self.n + k > len(self._buf) or self._mark[0] != self.n:
            self._regrow(self.n + k)  # full, or another holder already wrote past our rows
        self._buf[self.n : self.n + k] = rows
        start, self.n = self.n, self.n + k
        self._mark[0] = self.n
        return start

    def writable(self) -> np.ndarray:
        """The ``n`` rows for writing in place; a buffer shared with a fork is copied first (O(n))."""
        if self._shared:
            buf = np.zeros_like(self._buf)
            buf[: self.n] = self._buf[: self.n]
            self._buf, self._mark, self._shared = buf, [self.n], False
        return self._buf[: self.n]

    def delete(self, index: int | np.ndarray) -> None:
        """Drop rows (an index or a boolean keep-mask's complement given as indices); a new buffer."""
        kept = np.delete(self._buf[: self.n], index, axis=0)
        self._buf = np.zeros((max(len(kept), 16), *self._buf.shape[1:]), self._buf.dtype)
        self._buf[: len(kept)] = kept
        self.n, self._mark, self._shared = len(kept), [len(kept)], False

    def fork(self) -> Rows:
        """A holder of the same rows sharing this buffer (copy-on-write, see the module docstring)."""
        self._shared = True
        other = Rows.__new__(Rows)
        other._buf, other.n, other._mark, other._shared = self._buf, self.n, self._mark, True
        return other

    def __deepcopy__(self, memo: dict) -> Rows:
        return Rows(self._buf.shape[1:], self._buf.dtype, self.view)
