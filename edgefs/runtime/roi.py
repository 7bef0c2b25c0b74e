"""The region of interest: the part of a camera frame that is embedded.

A user holds an object in front of a camera; it rarely fills the frame. The
engine resizes whatever it is given to its square input, so a small object in a
wide frame becomes a few pixels among background. A :class:`Roi` names a
rectangle in fractions of the frame (so one setting fits any resolution); the
camera loop crops every frame to it before the engine's resize, at
classification and at live enrollment alike, and draws it on the display frame
so the user knows where to hold the object.

Text forms (``--roi``): ``full`` (the whole frame), ``0.6`` (centred, 60% of
each side), ``cx,cy,w,h`` (centre and size, all fractions of the frame).

Device side: numpy and OpenCV only (DESIGN.md rule 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgefs.errors import ConfigError

ROI_HELP = ("region of interest embedded from each frame: 'full', a centred fraction of each side "
            "('0.6'), or 'cx,cy,w,h' in fractions of the frame")


@dataclass(frozen=True)
class Roi:
    """A centred (or placed) rectangle, in fractions of the frame: what is embedded.

    Attributes:
        cx, cy: the centre, as fractions of the frame's width and height (0..1).
        w, h: the size, as fractions of the frame's width and height (0 < w, h <= 1).
            A rectangle that reaches past an edge is clipped to the frame.
    """

    cx: float = 0.5
    cy: float = 0.5
    w: float = 1.0
    h: float = 1.0

    def __post_init__(self) -> None:
        for name in ("cx", "cy", "w", "h"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f"roi {name} must be a finite number, got {value!r}")
        if not (0.0 <= self.cx <= 1.0 and 0.0 <= self.cy <= 1.0):
            raise ConfigError(f"roi centre must lie in the frame (0..1), got {self.cx:g},{self.cy:g}")
        if not (0.0 < self.w <= 1.0 and 0.0 < self.h <= 1.0):
            raise ConfigError(f"roi width and height must be fractions in (0, 1], got {self.w:g},{self.h:g}")

    @classmethod
    def parse(cls, text: str) -> Roi:
        """``"full"``, ``"0.6"`` (centred, 60% of each side) or ``"cx,cy,w,h"``.

        Raises:
            ConfigError: any other text; the message gives the accepted forms.
        """
        s = str(text).strip().lower()
        if s == "full":
            return cls()
        if not s:
            raise ConfigError(f"an empty roi; {ROI_HELP}")
        parts = [p.strip() for p in s.split(",")]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ConfigError(f"cannot read roi {text!r}; {ROI_HELP}") from None
        if len(values) == 1:
            return cls(0.5, 0.5, values[0], values[0])
        if len(values) == 4:
            return cls(*values)
        raise ConfigError(f"roi {text!r} has {len(values)} numbers; {ROI_HELP}")

    @property
    def is_full(self) -> bool:
        """The whole frame: nothing to crop or draw."""
        return self.w >= 1.0 and self.h >= 1.0 and self.cx == 0.5 and self.cy == 0.5

    def box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Pixel box ``(x0, y0, x1, y1)`` of a ``height`` x ``width`` frame, clipped, at least 1x1."""
        x0 = round((self.cx - self.w / 2) * width)
        x1 = round((self.cx + self.w / 2) * width)
        y0 = round((self.cy - self.h / 2) * height)
        y1 = round((self.cy + self.h / 2) * height)
        x0, y0 = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
        x1, y1 = max(min(x1, width), x0 + 1), max(min(y1, height), y0 + 1)
        return x0, y0, x1, y1

    def crop(self, frame: np.ndarray) -> np.ndarray:
        """uint8 ``(H, W, C)`` (or ``(H, W)``) -> the rectangle, a view of ``frame`` (no copy)."""
        x0, y0, x1, y1 = self.box(frame.shape[0], frame.shape[1])
        return frame[y0:y1, x0:x1]

    def draw(self, frame: np.ndarray, color: tuple[int, int, int] = (0, 255, 255), thickness: int = 2) -> None:
        """Draw the rectangle in place on a display frame (uint8 ``(H, W, 3)``); nothing for ``full``."""
        if self.is_full:
            return
        import cv2

        x0, y0, x1, y1 = self.box(frame.shape[0], frame.shape[1])
        cv2.rectangle(frame, (x0, y0), (x1 - 1, y1 - 1), color, thickness, cv2.LINE_AA)

    def to_text(self) -> str:
        """The form :meth:`parse` reads back: ``full``, ``0.6`` or ``cx,cy,w,h``."""
        if self.is_full:
            return "full"
        if self.cx == 0.5 and self.cy == 0.5 and self.w == self.h:
            return f"{self.w:g}"
        return f"{self.cx:g},{self.cy:g},{self.w:g},{self.h:g}"
