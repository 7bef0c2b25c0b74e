"""Each source's label smoothed over its recent frames, with hysteresis, started afresh at a scene cut.

Device side: no torch (DESIGN.md rule 1).
"""

from __future__ import annotations

from collections import Counter, deque

import numpy as np

from edgefs.errors import EdgefsError

DEFAULT_SMOOTH = 5


class LabelSmoother:
    """Confidence-weighted vote over a source's recent labels, with hysteresis, that starts
    afresh when the scene cuts.

    A vote lags a change of object by a few frames, and a camera that cuts from one object
    to the next (a switcher, a pan, an object swapped in quickly) would show the old label
    over the new object for those frames. So when a frame's embedding is given, the
    smoother watches how far each frame's embedding moves from the previous one (cosine
    distance): a step more than ``cut_ratio`` times the median of the last
    ``CUT_HISTORY`` steps is a cut, and the window is cleared before the frame is added.
    Frame-to-frame steps within a scene are small and alike (sensor noise, motion), a cut
    is an order of magnitude larger; an object brought in slowly does not trigger it and
    is voted in as before.

    Args:
        window: frames remembered.
        margin: the shown label switches only when another label's share of the
            weight beats the shown one's by at least this (0..1).
        cut_ratio: a step this many times the recent median is a cut; None: never cut.
    """

    CUT_HISTORY = 30  # steps in the running median
    CUT_WARMUP = 10  # steps seen before any cut is called

    def __init__(self, window: int = 5, margin: float = 0.2, cut_ratio: float | None = 8.0) -> None:
        if window < 1 or not 0.0 <= margin < 1.0:
            raise EdgefsError(f"smoothing needs window >= 1 and 0 <= margin < 1, got {window} and {margin}")
        if cut_ratio is not None and not cut_ratio > 1.0:
            raise EdgefsError(f"the scene-cut ratio must be above 1, got {cut_ratio}")
        self.recent: deque[tuple[str, float]] = deque(maxlen=window)
        self.margin = margin
        self.current: str | None = None
        self.cut_ratio = cut_ratio
        self.steps: deque[float] = deque(maxlen=self.CUT_HISTORY)
        self.previous: np.ndarray | None = None  # the last frame's unit embedding
        self.cuts = 0

    def _is_cut(self, embedding: np.ndarray) -> bool:
        v = np.asarray(embedding, np.float32).ravel()
        v = v / max(float(np.linalg.norm(v)), 1e-12)
        step = None if self.previous is None or self.previous.shape != v.shape else \
            max(0.0, 1.0 - float(self.previous @ v))
        self.previous = v
        if step is None:
            return False
        cut = len(self.steps) >= self.CUT_WARMUP and step > self.cut_ratio * max(float(np.median(self.steps)), 1e-6)
        self.steps.append(step)
        return cut

    def update(self, label: str, confidence: float, embedding: np.ndarray | None = None) -> tuple[str, float]:
        """Add a frame's label (and its embedding, to notice cuts); return the shown label and
        its share of the window."""
        if embedding is not None and self.cut_ratio is not None and self.recent.maxlen != 1 \
                and self._is_cut(embedding):
            self.recent.clear()
            self.current = None
            self.cuts += 1
        self.recent.append((label, max(float(confidence), 1e-6)))
        weight: Counter[str] = Counter()
        for lab, c in self.recent:
            weight[lab] += c
        total = sum(weight.values())
        best, best_w = weight.most_common(1)[0]
        switch = self.current is not None and self.current in weight and \
            (best_w - weight[self.current]) / total >= self.margin
        if self.current is None or self.current not in weight or switch:
            self.current = best
        return self.current, weight[self.current] / total

    def reset(self) -> None:
        self.recent.clear()
        self.current = None
        self.steps.clear()
        self.previous = None
