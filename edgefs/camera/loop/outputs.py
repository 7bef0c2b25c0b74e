"""The camera loop's outputs: the window (and its keys), the annotated video, the JSONL events and the
summary file; and the check, before a run starts, that each of them can be written.

:class:`OutputsMixin` is the part of :class:`edgefs.camera.loop.Pipeline` that writes them.

Device side: no torch (DESIGN.md rule 1).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import cv2
import numpy as np

from edgefs.camera.loop.stats import UNKNOWN, RunSummary, StageTimes
from edgefs.camera.sources import Frame
from edgefs.errors import EdgefsError
from edgefs.fileio import atomic_write_text
from edgefs.runtime.roi import Roi

if TYPE_CHECKING:
    from edgefs.camera.capture import CaptureThread
    from edgefs.camera.loop.enrollment import LiveEnrollment
    from edgefs.camera.loop.loop import RunConfig


def annotate(image: np.ndarray, event: dict[str, Any], fps: float, stage_p50_ms: dict[str, float],
             status: str = "", roi: Roi | None = None) -> np.ndarray:
    """The annotated view of a frame (BGR, a new array): label and confidence, top-k, FPS and
    per-stage p50 latency, and a status line (enrollment, reconnects).

    Args:
        image: uint8 ``(H, W, 3)`` RGB, as captured.
        event: the loop's event for the frame (``label``, ``confidence``, ``top``).
        fps: frames per second to show.
        stage_p50_ms: ``preprocess``/``embed``/``head`` -> p50 milliseconds (missing ones left out).
        status: a line shown at the bottom in red ("" for none).
        roi: the region of interest, drawn (None: not drawn).
    """
    img = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if roi is not None:
        roi.draw(img)
    h, w = img.shape[:2]
    scale = max(0.4, w / 640)
    color = (0, 200, 0) if event["label"] != UNKNOWN else (0, 165, 255)
    cv2.putText(img, f"{event['label']} {event['confidence']:.2f}", (8, int(28 * scale)),
                cv2.FONT_HERSHEY_SIMPLEX, 0.9 * scale, color, 2, cv2.LINE_AA)
    y = int(50 * scale)
    for name, p in event["top"]:
        cv2.putText(img, f"{name}: {p:.2f}", (8, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
        y += int(18 * scale)
    stage = " ".join(f"{s} {stage_p50_ms[s]:.1f}" for s in ("preprocess", "embed", "head") if s in stage_p50_ms)
    cv2.putText(img, f"{fps:.1f} FPS | ms {stage}", (8, h - 10), cv2.FONT_HERSHEY_SIMPLEX,
                0.45 * scale, (255, 255, 0), 1, cv2.LINE_AA)
    if status:
        cv2.putText(img, status, (8, h - int(30 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale,
                    (0, 0, 255), 1, cv2.LINE_AA)
    return img


def display_available() -> bool:
    """True when a window can be shown: a display exists and OpenCV was built with a GUI."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    info = cv2.getBuildInformation()
    gui = next((line for line in info.splitlines() if "GUI:" in line), "")
    return "NONE" not in gui.upper()


def check_writable(path: Path, flag: str) -> None:
    """Make sure ``path`` can be written before a run starts, so no output is lost at its end.

    Creates the parent folder and a file beside ``path`` (removed again); ``path`` itself is
    left as it is.

    Raises:
        EdgefsError: naming ``flag``, the path and the reason.
    """
    if path.is_dir():
        raise EdgefsError(f"{flag} {path} is a folder; give a file name")
    existing = next((p for p in path.parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise EdgefsError(f"cannot write {flag} {path}: {existing} is a file, not a folder; choose another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise EdgefsError(f"cannot write {flag} {path}: {exc.strerror or exc}; choose a path in a folder "
                          "you can write to") from None


class OutputsMixin:
    """The window, the recording, the JSONL events and the summary file of a
    :class:`edgefs.camera.loop.Pipeline` run.

    Attributes:
        events_out: where JSONL events go (None: nowhere).
        writer: the video being recorded (opened with the first frame).
        status_line: the last source state, shown at the bottom of the window.
    """

    # What the loop holds (edgefs.camera.loop.loop.Pipeline)
    cfg: RunConfig
    captures: list[CaptureThread]
    times: StageTimes
    frames: int
    t_start: float
    enrollment: LiveEnrollment | None
    summary_error: str | None
    stop: Callable[..., None]
    command: Callable[[str], None]

    def _init_outputs(self) -> None:
        self.events_out: IO[str] | None = None
        self.writer: cv2.VideoWriter | None = None
        self.status_line = ""
        self._overlay_stats: dict[str, dict[str, float]] = {}
        self._overlay_stats_at = -1e9

    def _open_events(self) -> IO[str] | None:
        """Where the JSONL events go (``--jsonl``); returns the file this run opened (to close), else None."""
        if self.cfg.jsonl == "-":
            self.events_out = sys.stdout
        elif self.cfg.jsonl:
            Path(self.cfg.jsonl).parent.mkdir(parents=True, exist_ok=True)
            own_events = self.events_out = open(self.cfg.jsonl, "w", encoding="utf-8")  # noqa: SIM115
            return own_events
        return None

    def _close_outputs(self, own_events: IO[str] | None) -> None:
        """The end of the run: the JSONL file this run opened, the video and the window."""
        if own_events is not None:
            own_events.close()
        if self.writer is not None:
            self.writer.release()
        if self.cfg.display:
            cv2.destroyAllWindows()

    def _write_events(self, events: list[dict[str, Any]]) -> None:
        """A batch's events as JSONL, one write per batch."""
        if self.events_out is not None:
            self.events_out.write("".join(json.dumps(e) + "\n" for e in events))

    def _write_summary(self, summary: RunSummary) -> None:
        """``--summary-json``; a failure is kept for :meth:`problem` (the run is over, its summary text
        is printed first)."""
        if self.cfg.summary_json:
            try:
                atomic_write_text(Path(self.cfg.summary_json), json.dumps(summary.to_json(), indent=2))
            except OSError as exc:  # the run is over: say so after the summary text, do not lose it
                self.summary_error = f"cannot write --summary-json {self.cfg.summary_json}: {exc.strerror or exc}"

    def _overlay(self, frame: Frame, event: dict[str, Any]) -> np.ndarray:
        elapsed = max(time.monotonic() - self.t_start, 1e-6)
        now = time.monotonic()
        if now - self._overlay_stats_at > 1.0:  # percentiles once a second, not per frame
            self._overlay_stats, self._overlay_stats_at = self.times.summary(), now
        status = self.enrollment.status(time.monotonic()) if self.enrollment else self.status_line
        return annotate(frame.image, event, self.frames / elapsed,
                        {s: v["p50"] for s, v in self._overlay_stats.items()}, status, self.cfg.roi)

    def _output(self, frame: Frame, event: dict[str, Any]) -> None:
        """The window and the recording (JSONL is written per batch in :meth:`_process`)."""
        if not (self.writer is not None or self.cfg.display or self.cfg.record):
            return
        img = self._overlay(frame, event)
        if self.cfg.record:
            if self.writer is None:
                h, w = img.shape[:2]
                fps = self.captures[0].source.fps or 30.0
                self.writer = cv2.VideoWriter(self.cfg.record, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                if not self.writer.isOpened():
                    raise EdgefsError(f"cannot write video {self.cfg.record}; use a .mp4 or .avi path")
            self.writer.write(img)
        if self.cfg.display:
            cv2.imshow(f"edgefs: {frame.source}", img)
            key = cv2.waitKey(1) & 0xFF
            if key in (ord("q"), 27):
                self.stop("q key")
            elif key == ord("e") and self.enrollment is None:
                self._prompt_enrollment()

    def _prompt_enrollment(self) -> None:
        """The 'e' key: ask for a label on the terminal; the window keeps running meanwhile."""
        def ask() -> None:
            try:
                name = input("label to enroll (empty to cancel): ").strip()
            except EOFError:
                return
            if name:
                self.command(f"enroll {name}")

        threading.Thread(target=ask, daemon=True).start()
