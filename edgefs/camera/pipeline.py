"""The real-time loop: sources -> latest frames -> one batch -> engine -> head -> smoothing -> outputs.

One capture thread per source keeps only the newest frame of a live camera
(older ones are dropped and counted); file and folder sources hand over every
frame. Each capture thread also fits its frames to the engine's input
(:meth:`Pipeline.prepare_image`, the loop's one preprocessing step) while the
engine works on the other core, and wakes the loop, which sleeps on one event
instead of polling. The loop takes whatever frames are ready (waiting up to
``batch_wait_ms`` for the other cameras' when asked), stacks them into one
batch, embeds it once, classifies it, smooths each source's labels over its
recent frames with hysteresis, and writes JSONL events (one write per batch), an
annotated window or video, and a summary at the end: stage timers (capture,
wait, preprocess, embed, head, post, capture-to-result) and CPU time per frame.

Live enrollment (``--enroll NAME``, a stdin command or a key in the window)
collects shots from a source's frames as they pass through the loop (the
embeddings are already computed), gates them, and commits the new class in a
worker thread: classification never stops, and the class is live from the
frame after the commit.

Device side: no torch (DESIGN.md rule 1).
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, TypeVar

import cv2
import numpy as np

from edgefs.camera.capture import CaptureThread
from edgefs.camera.limits import MAX_LIVE_SHOTS, MAX_SMOOTH
from edgefs.camera.sources import Frame, open_source
from edgefs.errors import EdgefsError
from edgefs.fileio import atomic_write_text, check_output_not_input
from edgefs.runtime.roi import Roi
from edgefs.service.classifier import Classifier, EnrollResult
from edgefs.service.options import EngineOptions
from edgefs.service.quality import sharpness
from edgefs.store import store_files
from edgefs.store.validate import REJECT_LABEL, check_name

# The label of a rejected frame: the name the store refuses for a class, so it never means one.
UNKNOWN = REJECT_LABEL
# Per frame: capture (the source's grab/decode/render, on its thread) and total (capture to the
# head's result). Per batch: wait (for frames), preprocess, embed, head, post (smoothing, events, JSONL).
STAGES = ("capture", "wait", "preprocess", "embed", "head", "post", "total")
DEFAULT_SMOOTH = 5
#: Images per call when the loop embeds a live enrollment's other shot views, between two batches.
#: Measured with tools/bench_live_enroll.py (4 cameras at 30 FPS, EfficientNet-Lite0 at 224 px, one
#: CPU thread, 7 views, reports/live-enroll): 1 keeps the frames classified during the commit at
#: p99 13.5 ms and drops none (commit 348 ms); 4 gave p99 51 ms and 4 dropped frames.
VIEWS_PER_CALL = 1
T = TypeVar("T")


@dataclass
class RunConfig:
    """What ``edgefs run`` does.

    Attributes:
        sources: source URIs (:func:`edgefs.camera.sources.open_source`).
        k: classes reported per frame (top-k).
        smooth: frames in each source's smoothing window (1: no smoothing); None: the store's
            saved setting (``edgefs serve``'s settings page), else 5.
        switch_margin: hysteresis; the shown label changes only when another label's
            share of the window beats the current one's by this much.
        jsonl: write one JSON event per frame here (``-`` for stdout).
        record: write the annotated stream to this video file.
        display: show a window (None: when a display exists and OpenCV has a GUI).
        max_frames: stop after this many frames in all (None: until the sources end).
        duration_s: stop after this many seconds.
        enroll: enroll this label live from ``enroll_source`` at the start.
        shots: shots per live enrollment.
        enroll_source: index of the source to enroll from.
        enroll_interval_s: least time between two shots of one enrollment.
        enroll_delay_s: countdown before the first shot.
        commands: read commands from stdin (``enroll NAME [SHOTS]``, ``remove NAME``, ``quit``).
        summary_json: write the end-of-run summary here.
        open_timeout_s: give up on a source that has not opened after this many seconds
            of attempts (None: keep trying); one that opened once is always reconnected.
        batch_wait_ms: once a frame is ready, wait up to this long for the other live
            sources' frames so that one engine call takes them all (0: embed what is ready
            at once). Each millisecond adds to the latency of the first frame.
        roi: the region of each frame that is embedded, at classification and live
            enrollment alike (:class:`edgefs.runtime.roi.Roi`); drawn in the window. None: the
            one saved with the store (``edgefs serve``'s settings), else the whole frame.
    """

    sources: list[str]
    k: int = 3
    smooth: int | None = None
    switch_margin: float = 0.2
    jsonl: str | None = None
    record: str | None = None
    display: bool | None = False
    max_frames: int | None = None
    duration_s: float | None = None
    enroll: str | None = None
    shots: int = 5
    enroll_source: int = 0
    enroll_interval_s: float = 0.2
    enroll_delay_s: float = 0.0
    commands: bool = False
    summary_json: str | None = None
    open_timeout_s: float | None = 10.0
    roi: Roi | None = None
    source_options: dict[str, Any] = field(default_factory=dict)
    batch_wait_ms: float = 0.0


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


class StageTimes:
    """Per-stage latencies in milliseconds, for the p50/p99 summary.

    A device runs for days: each stage keeps its most recent ``window`` samples (the
    percentiles describe those) and a count of all of them.

    Args:
        window: samples kept per stage.
    """

    def __init__(self, window: int = 100_000) -> None:
        self.ms: dict[str, deque[float]] = {s: deque(maxlen=window) for s in STAGES}
        self.count: Counter[str] = Counter()

    def add(self, stage: str, ms: float) -> None:
        self.ms[stage].append(ms)
        self.count[stage] += 1

    def recent(self, stage: str, n: int) -> list[float]:
        """The newest ``n`` samples of ``stage``, oldest first; safe to call from another thread
        (the copy is made in C under the GIL, so the loop cannot change the deque meanwhile)."""
        return list(itertools.islice(reversed(self.ms[stage]), n))[::-1]

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for stage, values in self.ms.items():
            if values:
                a = np.asarray(values)
                out[stage] = {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
                              "mean": float(a.mean()), "n": self.count[stage]}
        return out


@dataclass
class ShotRecord:
    """One frame offered to a live enrollment: taken, or refused with the reason.

    ``image`` is the engine input (uint8 ``(H, W, 3)`` RGB), kept for a viewer's thumbnail;
    ``accepted`` is None until the commit's gate (near-duplicates) has judged a taken shot.
    """

    index: int
    time: float
    image: np.ndarray
    accepted: bool | None
    reason: str = ""


#: refused frames recorded per enrollment for viewers (a blurry stream refuses every frame)
MAX_REFUSED_RECORDS = 24


@dataclass
class LiveEnrollment:
    """Shots being collected for one label from one source."""

    name: str
    shots: int
    source: int
    interval_s: float
    start_at: float
    images: list[np.ndarray] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)
    sharpness: list[float] = field(default_factory=list)
    last_shot: float = -1e9
    rejected: list[str] = field(default_factory=list)
    append: bool = False
    #: every shot taken or refused, in order, for a viewer: :class:`ShotRecord`
    records: list[ShotRecord] = field(default_factory=list)
    last_refused: float = -1e9
    #: ``countdown``, ``collecting``, ``committing``, ``done`` or ``failed``
    phase: str = "countdown"
    message: str = ""
    #: held-out frames: one embedding half-way between two shots, never enrolled; the automatic
    #: threshold is kept low enough to accept them (:meth:`Classifier.set_floor`)
    checks: list[np.ndarray] = field(default_factory=list)
    last_check: float = -1e9
    #: taken shots nearly the same view as an earlier one (cosine >= TOO_ALIKE), set at the commit
    too_alike: int = 0
    #: what the commit did to the unknown threshold, for the viewer ("" when nothing)
    threshold_note: str = ""

    def status(self, now: float) -> str:
        if now < self.start_at:
            return f"enrolling {self.name!r}: starting in {self.start_at - now:.1f} s"
        return f"enrolling {self.name!r}: shot {len(self.images)}/{self.shots}"


@dataclass
class RunSummary:
    """What a run did, printed at the end and written as JSON."""

    frames: int
    seconds: float
    fps: float
    dropped: int
    reconnects: int
    stages_ms: dict[str, dict[str, float]]
    max_age_ms: float
    accuracy: float | None
    accuracy_frames: int
    known_top1: float | None
    known_frames: int
    unknown_rejected: float | None
    unknown_frames: int
    enrolled: list[str]
    per_source: dict[str, dict[str, Any]]
    stopped_by: str
    batches: int = 0
    cpu_ms_per_frame: dict[str, float] = field(default_factory=dict)
    raw_accuracy: float | None = None

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def text(self) -> str:
        lines = [f"run: {self.frames} frames in {self.seconds:.1f} s = {self.fps:.1f} FPS; "
                 f"dropped {self.dropped} stale frames; {self.reconnects} reconnects; stopped by {self.stopped_by}"]
        if self.accuracy is not None:
            lines.append(f"accuracy against ground truth: {100 * self.accuracy:.2f}% of {self.accuracy_frames} "
                         "labelled frames (smoothed label; frames of classes not enrolled must be 'unknown')"
                         + ("" if self.raw_accuracy is None else
                            f"; {100 * self.raw_accuracy:.2f}% per frame before smoothing"))
        if self.known_top1 is not None:
            lines.append(f"enrolled classes, closed-set top-1 per frame: {100 * self.known_top1:.2f}% "
                         f"of {self.known_frames} frames")
        if self.unknown_rejected is not None:
            lines.append(f"classes not enrolled, called 'unknown': {100 * self.unknown_rejected:.2f}% "
                         f"of {self.unknown_frames} frames")
        lines.append("stage          p50 ms   p99 ms")
        for stage, s in self.stages_ms.items():
            lines.append(f"{stage:<12} {s['p50']:>8.2f} {s['p99']:>8.2f}")
        lines.append(f"oldest frame at processing: {self.max_age_ms:.1f} ms")
        if self.cpu_ms_per_frame:
            c = self.cpu_ms_per_frame
            lines.append(f"CPU per frame: process {c['process']:.2f} ms, capture {c['capture']:.2f} ms, "
                         f"loop {c['loop']:.2f} ms "
                         f"(outside the engine call); {self.frames / max(self.batches, 1):.2f} frames per batch")
        for name, st in self.per_source.items():
            lines.append(f"source {name}: {st['frames']} frames, {st['dropped']} dropped, status {st['status']}")
        if self.enrolled:
            lines.append(f"enrolled during the run: {', '.join(self.enrolled)}")
        return "\n".join(lines)


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


# The camera loop's engine defaults where the backend takes them. ONNX Runtime's idle threads spin by
# default: with 2 engine threads on 2 cores that cost 6.1 instead of 3.9 ms of CPU per frame at 4 x 30 FPS
# (Lite0 160 px INT8, tools/bench_loop.py, load average 17; 11.9 against 9.6 at load 30), CPU the capture
# threads need.
LOOP_ENGINE_DEFAULTS: dict[str, Any] = {"allow_spinning": False}


def loop_threads() -> int:
    """Engine threads for the camera loop: every core but one, which capture, decoding and the
    loop itself need (on 2 cores, 1 engine thread halves p99 latency: tools/bench_pipeline.py)."""
    return max(1, (os.cpu_count() or 2) - 1)


def display_available() -> bool:
    """True when a window can be shown: a display exists and OpenCV was built with a GUI."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    info = cv2.getBuildInformation()
    gui = next((line for line in info.splitlines() if "GUI:" in line), "")
    return "NONE" not in gui.upper()


def _read_commands(out: queue.Queue[str]) -> None:
    for line in sys.stdin:
        out.put(line.strip())


class Pipeline:
    """The camera loop over a :class:`Classifier`; see the module docstring.

    Args:
        classifier: the opened classifier (engine, head, store).
        config: :class:`RunConfig`.
        log: receives status lines (enrollment, reconnects).
    """

    def __init__(self, classifier: Classifier, config: RunConfig, log: Callable[[str], None] = print) -> None:
        if not config.sources:
            raise EdgefsError("no sources given; pass at least one, e.g. synthetic:data/glyphs28/test or 0")
        self.clf = classifier
        self.cfg = config
        self.log = log
        if not config.batch_wait_ms >= 0:
            raise EdgefsError(f"batch_wait_ms must be >= 0 milliseconds, got {config.batch_wait_ms}")
        # Set by a capture thread when it has a frame (or changes state): the loop sleeps on it.
        self._ready = threading.Event()
        self.captures = [
            CaptureThread(source, open_timeout=config.open_timeout_s,
                          on_status=lambda status, name=source.name: self._on_status(name, status),
                          on_frame=self._wake, prepare=self._prepare_on_arrival)
            for source in (open_source(uri, **config.source_options) for uri in config.sources)
        ]
        saved = classifier.settings() if config.smooth is None or config.roi is None else {}
        if config.smooth is None:
            smooth = saved.get("smooth", DEFAULT_SMOOTH)
            ok = isinstance(smooth, int) and not isinstance(smooth, bool) and 1 <= smooth <= MAX_SMOOTH
            if not ok:
                log(f"the smoothing window saved with the store is not usable ({smooth!r}); using {DEFAULT_SMOOTH}")
            config.smooth = smooth if ok else DEFAULT_SMOOTH
        if config.roi is None:
            saved_roi = saved.get("roi", "full")
            try:
                config.roi = Roi.parse(str(saved_roi))
            except EdgefsError as exc:
                log(f"the region of interest saved with the store is not usable ({exc}); using the whole frame")
                config.roi = Roi()
        self.smoothers = [LabelSmoother(config.smooth, config.switch_margin) for _ in self.captures]
        self.times = StageTimes()
        self.enrollment: LiveEnrollment | None = None
        self.enrolled: list[str] = []
        self.enroll_failures: dict[str, str] = {}
        self.unfinished: LiveEnrollment | None = None  # an enrollment still collecting when the run ended
        self.summary_error: str | None = None
        self._enroll_thread: threading.Thread | None = None
        self._commands: queue.Queue[str] = queue.Queue()
        self._calls: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()
        self.listeners: list[Callable[[int, Frame, dict[str, Any]], None]] = []
        self.last_enrollment: LiveEnrollment | None = None
        self.t_start = time.monotonic()
        self._stop = threading.Event()
        self._stop_reason = "stop request"
        self._presenting: int | None = None  # the source showing the object being enrolled (present())
        self._loop_ended = threading.Event()  # the loop no longer runs submitted calls: the engine is free
        self.events_out: IO[str] | None = None
        self.writer: cv2.VideoWriter | None = None
        self.correct = 0
        self.raw_correct = 0  # the same count for the label before smoothing
        self.labelled = 0
        self.known_correct = 0
        self.known = 0
        self.unknown_rejections = 0
        self.unknown = 0
        self.frames = 0
        self.max_age_ms = 0.0
        self.per_source_frames = [0] * len(self.captures)
        self.batches = 0
        self.loop_cpu_s = 0.0  # the loop thread's CPU time outside the engine call
        self.engine_call_cpu_s = 0.0  # the loop thread's CPU time inside it (engine threads not counted)
        self._cpu_start = self._cpu_end = time.process_time()
        self.status_line = ""
        self._overlay_stats: dict[str, dict[str, float]] = {}
        self._overlay_stats_at = -1e9

    # ---- control --------------------------------------------------------------------
    def _on_status(self, name: str, status: str) -> None:
        """A capture thread's state changed (reconnecting, running, ended): show it."""
        self.status_line = f"{name}: {status}"
        self._ready.set()  # an ended source must wake a loop that waits for frames
        if not status.startswith(("running", "ended", "stopped")):
            self.log(f"source {self.status_line}")

    def stop(self, reason: str = "stop request") -> None:
        """Ask the loop to finish after the current batch (thread-safe); ``reason`` is the summary's
        "stopped by"."""
        if not self._stop.is_set():
            self._stop_reason = reason
        self._stop.set()
        self._ready.set()

    def command(self, line: str) -> None:
        """Queue a command as if typed on stdin: ``enroll NAME [SHOTS]``, ``remove NAME``, ``quit``."""
        self._commands.put(line)
        self._ready.set()

    def start_enrollment(self, name: str, shots: int | None = None, source: int | None = None,
                         delay_s: float | None = None, append: bool = False,
                         interval_s: float | None = None) -> LiveEnrollment:
        """Begin collecting shots for ``name`` (the loop keeps classifying meanwhile).

        With ``append`` the shots are added to the enrolled class ``name``. Call on the loop's
        thread (a command, or :meth:`submit` from another thread).
        """
        name = name.strip()
        if not name:
            raise EdgefsError("enrollment needs a label")
        check_name(name)
        if self.enrollment is not None:
            raise EdgefsError(f"already enrolling {self.enrollment.name!r}; wait for it to finish")
        if name in self.clf.classes and not append:
            raise EdgefsError(f"class {name!r} is already enrolled; remove it first, or append shots to it")
        if append and name not in self.clf.classes:
            raise EdgefsError(f"class {name!r} is not enrolled, so there is nothing to append to")
        src = self.cfg.enroll_source if source is None else source
        if not 0 <= src < len(self.captures):
            raise EdgefsError(f"enroll source {src} does not exist; there are {len(self.captures)} sources")
        delay = self.cfg.enroll_delay_s if delay_s is None else delay_s
        count = int(shots or self.cfg.shots)
        if not 1 <= count <= MAX_LIVE_SHOTS:
            raise EdgefsError(f"a live enrollment takes 1 to {MAX_LIVE_SHOTS} shots, got {count}")
        interval = self.cfg.enroll_interval_s if interval_s is None else interval_s
        self.enrollment = LiveEnrollment(name, count, src, interval, time.monotonic() + delay, append=append)
        self.last_enrollment = self.enrollment
        self.log(f"enrolling {name!r} from source {src}: {self.enrollment.shots} shots"
                 + (" (appended to the class)" if append else ""))
        source_ = self.captures[src].source
        if source_.present(name):  # a rendered camera plays the user holding the object up
            self._presenting = src
            self.log(f"  {source_.name} shows {name!r} until the enrollment ends, as a user would hold it up")
        return self.enrollment

    def _release_presented(self) -> None:
        """The enrollment a rendered camera showed its object for has ended: back to its rounds."""
        if self._presenting is not None and self.enrollment is None:
            self.captures[self._presenting].source.present(None)
            self._presenting = None

    def cancel_enrollment(self) -> bool:
        """Stop collecting shots (nothing is written); False when none is collecting. Loop thread."""
        e = self.enrollment
        if e is None or self._enroll_thread is not None:
            return False  # a commit under way finishes
        e.phase, e.message = "failed", "cancelled; nothing was written"
        self.enrollment = None
        return True

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the loop's thread between two batches; its result or exception comes in the future.

        How other threads (the web app) change the loop's state without locks on the hot path.
        """
        future: Future[T] = Future()
        self._calls.put((fn, future))
        self._ready.set()  # a loop waiting on quiet sources runs it now, not at its next 50 ms look
        return future

    def add_listener(self, fn: Callable[[int, Frame, dict[str, Any]], None]) -> None:
        """Call ``fn(source_index, frame, event)`` on the loop's thread after each classified frame. It must
        return at once (keep a reference, nothing more): the loop waits for it."""
        self.listeners.append(fn)

    def set_roi(self, roi: Roi) -> None:
        """A new region of interest, from the next frame prepared (any thread: one attribute swap)."""
        self.cfg.roi = roi

    def set_smoothing(self, window: int, margin: float | None = None) -> None:
        """New smoothing for every source (loop thread): the windows start empty."""
        margin = self.cfg.switch_margin if margin is None else margin
        smoothers = [LabelSmoother(window, margin) for _ in self.captures]  # checks the values first
        self.cfg.smooth, self.cfg.switch_margin = window, margin
        self.smoothers = smoothers

    def _handle_commands(self) -> None:
        while True:
            try:
                fn, future = self._calls.get_nowait()
            except queue.Empty:
                break
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except Exception as exc:  # handed to the caller, who reports it
                    future.set_exception(exc)
        while True:
            try:
                line = self._commands.get_nowait()
            except queue.Empty:
                return
            parts = line.split()
            try:
                if not parts:
                    continue
                if parts[0] == "quit":
                    self.stop()
                elif parts[0] == "enroll" and len(parts) >= 2:
                    shots = int(parts[2]) if len(parts) > 2 else None
                    self.start_enrollment(parts[1], shots)
                elif parts[0] == "remove" and len(parts) == 2:
                    self.clf.remove(parts[1])
                    self.log(f"removed {parts[1]!r}")
                else:
                    self.log(f"unknown command {line!r}; use: enroll NAME [SHOTS] | remove NAME | quit")
            except (EdgefsError, ValueError) as exc:
                self.log(f"command {line!r} failed: {exc}")

    # ---- enrollment during the run ----------------------------------------------------
    def _collect_shot(self, index: int, batch_image: np.ndarray, embedding: np.ndarray, now: float,
                      frame_image: np.ndarray | None = None) -> None:
        e = self.enrollment
        if e is None or e.source != index or now < e.start_at:
            return
        if self._enroll_thread is not None:
            return  # the previous class is still committing
        since = now - e.last_shot
        if since < e.interval_s:
            if e.images and since >= e.interval_s / 2 and e.last_check < e.last_shot:
                e.checks.append(embedding.copy())  # a held-out frame, half-way to the next shot
                e.last_check = now
            return
        # The classifier's rule: measured on the frame as captured, never on an enlargement of it.
        e.phase = "collecting"
        sharp = self.clf.shot_sharpness(frame_image, "RGB") if frame_image is not None else sharpness(batch_image)
        if self.clf.quality.min_sharpness > 0 and sharp < self.clf.quality.min_sharpness:
            reason = f"frame too blurry (sharpness {sharp:.1f} < {self.clf.quality.min_sharpness:g})"
            e.rejected.append(reason)
            refused = sum(r.accepted is False for r in e.records)
            if now - e.last_refused >= e.interval_s and refused < MAX_REFUSED_RECORDS:
                e.records.append(ShotRecord(len(e.records), time.time(), batch_image.copy(), False, reason))
                e.last_refused = now
            return
        e.images.append(batch_image.copy())
        e.embeddings.append(embedding.copy())
        e.sharpness.append(sharp)
        e.records.append(ShotRecord(len(e.records), time.time(), e.images[-1], None))
        e.last_shot = now
        if len(e.images) >= e.shots:
            e.phase = "committing"
            self._enroll_thread = threading.Thread(target=self._commit_enrollment, args=(e,), daemon=True)
            self._enroll_thread.start()

    def _commit_enrollment(self, e: LiveEnrollment) -> None:
        try:
            names = [f"shot {i}" for i in range(len(e.images))]
            result: EnrollResult = self.clf.enroll_embedded(
                e.name, np.stack(e.images), np.stack(e.embeddings), names=names, append=e.append,
                source=self.cfg.sources[e.source], problems=e.rejected[:5], sharpness=e.sharpness,
                embed=self._embed_on_loop)
            self.enrolled.append(e.name)
            self._judge_taken(e, result.rejected)
            e.too_alike = too_alike(np.stack(e.embeddings))
            message = result.summary() + self._hold_out(e)
            if e.too_alike:
                message += (f"\n  {e.too_alike} of {len(e.embeddings)} shots were nearly the same view as an earlier "
                            "one: move or turn the object between shots, so that it is recognised in other poses")
            e.phase, e.message = "done", message
            self.log(message)
            self._record_roi(e.name)
        except EdgefsError as exc:
            self.enroll_failures[e.name] = str(exc)
            self._judge_taken(e, str(exc).splitlines())
            e.phase, e.message = "failed", f"nothing was written: {exc}"
            self.log(f"enrollment of {e.name!r} failed, nothing was written: {exc}")
        finally:
            self.enrollment = None
            self._enroll_thread = None

    def _record_roi(self, name: str) -> None:
        """Note with the store the region of interest ``name`` was enrolled with, so that changing it later
        can say which classes were enrolled with another one (:func:`classes_with_other_roi`)."""
        if self.clf.store is None or self.cfg.roi is None:
            return
        try:
            saved = self.clf.settings().get(CLASS_ROI_SETTING, {})
            rois = {k: v for k, v in saved.items() if k in self.clf.classes} if isinstance(saved, dict) else {}
            self.clf.save_settings(**{CLASS_ROI_SETTING: {**rois, name: self.cfg.roi.to_text()}})
        except EdgefsError as exc:  # the class is enrolled; the note is a courtesy
            self.log(f"the region of interest of {name!r} was not noted with the store: {exc}")

    def _hold_out(self, e: LiveEnrollment) -> str:
        """After a commit: keep the automatic threshold low enough that the class's held-out frames
        (:attr:`LiveEnrollment.checks`) that it ranks first are accepted. Returns a line for the
        message when the threshold had to come down, else ""."""
        clf = self.clf
        if len(e.checks) < 2 or clf.threshold_mode != "auto" or clf.store is None:
            return ""
        head = clf.head
        result = head.classify(np.stack(e.checks), 1)
        own = [float(s) for idx, s in zip(result.top_idx[:, 0].tolist(), result.best_sim.tolist(), strict=True)
               if head.classes[idx] == e.name]
        if not own:
            return ""
        try:
            lowered = clf.set_floor(e.name, min(own))
        except EdgefsError as exc:  # the class was enrolled; the floor is a refinement
            self.log(f"the threshold floor of {e.name!r} was not saved: {exc}")
            return ""
        if not lowered:
            return ""
        e.threshold_note = f"unknown threshold now cosine < {clf.threshold:.3f}, {clf.threshold_note}"
        return "\n  " + e.threshold_note

    def _embed_on_loop(self, batch: np.ndarray) -> np.ndarray:
        """Embed engine inputs for the commit worker (a shot's other views, :mod:`edgefs.service.views`) on the
        loop's thread, between two batches: the engine has one user (a TensorRT context is not
        thread-safe). A few images per call (:data:`VIEWS_PER_CALL`), so the stream is classified in
        between; once the loop has ended, directly on the worker's thread."""
        return np.concatenate([self._embed_piece(batch[i:i + VIEWS_PER_CALL])
                               for i in range(0, len(batch), VIEWS_PER_CALL)])

    def _embed_piece(self, piece: np.ndarray) -> np.ndarray:
        future = self.submit(lambda: self.clf.embed(piece))
        while True:
            try:
                return future.result(timeout=0.05)
            except FutureTimeout:
                if self._loop_ended.is_set() and future.cancel():
                    return self.clf.embed(piece)

    @staticmethod
    def _judge_taken(e: LiveEnrollment, reasons: list[str]) -> None:
        """Mark each taken shot accepted, or refused with the gate's reason (which names it "shot N")."""
        taken = [r for r in e.records if r.accepted is None]
        for i, record in enumerate(taken):
            why = next((r.strip().split(": ", 1)[-1] for r in reasons if r.strip().startswith(f"shot {i}:")), "")
            record.accepted, record.reason = (False, why) if why else (True, "")

    # ---- the loop -------------------------------------------------------------------
    def _take_ready(self, got: list[tuple[int, Frame]]) -> None:
        """Add the ready frame of every source not yet in ``got`` (no waiting)."""
        have = {i for i, _ in got}
        for i, cap in enumerate(self.captures):
            if i not in have:
                frame = cap.get(timeout=0.0)
                if frame is not None:
                    got.append((i, frame))

    def _gather(self) -> list[tuple[int, Frame]]:
        """Ready frames, at most one per source: waits for the first (woken by the capture threads,
        no polling), then up to ``batch_wait_ms`` for the other live sources to join the batch."""
        got: list[tuple[int, Frame]] = []
        self._ready.clear()  # cleared before looking: a frame put after the look sets it again
        self._take_ready(got)
        if not got:
            if all(c.ended for c in self.captures):
                return []
            # Bounded so that commands, --duration and stop() are seen while every source is quiet.
            self._ready.wait(0.05)
            self._ready.clear()
            self._take_ready(got)
            if not got:
                return []
        wait_s = self.cfg.batch_wait_ms / 1e3
        if wait_s > 0:
            deadline = time.monotonic() + wait_s
            while len(got) < len(self.captures):
                missing = [c for i, c in enumerate(self.captures) if i not in {j for j, _ in got}]
                if not any(c.source.live and not c.ended for c in missing):
                    break  # only finished or file sources are missing: nothing worth waiting for
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._ready.wait(remaining):
                    break
                self._ready.clear()
                self._take_ready(got)
        got.sort(key=lambda item: item[0])
        return got

    def _wake(self) -> None:
        self._ready.set()

    def events(self) -> Iterator[dict[str, Any]]:
        """Run the loop, yielding one event per classified frame; ends when the run does."""
        self._loop_ended.clear()
        self.stopped_by = "end of sources"
        try:
            # Inside the try: a refused --enroll (checked before any capture thread starts) or a
            # failing start still stops every thread that did start before the error reaches the user.
            if self.cfg.enroll:
                self.start_enrollment(self.cfg.enroll)
            for cap in self.captures:
                cap.start()
            if self.cfg.commands:
                threading.Thread(target=_read_commands, args=(self._commands,), daemon=True).start()
            self.t_start = time.monotonic()
            self._cpu_start = time.process_time()
            while not self._stop.is_set():
                self._handle_commands()
                self._release_presented()
                if self.cfg.duration_s is not None and time.monotonic() - self.t_start >= self.cfg.duration_s:
                    self.stopped_by = "duration"
                    break
                if self.cfg.max_frames is not None and self.frames >= self.cfg.max_frames:
                    self.stopped_by = "frame limit"
                    break
                t_wait, c_wait = time.perf_counter(), time.thread_time()
                ready = self._gather()
                self.loop_cpu_s += time.thread_time() - c_wait
                if not ready:
                    if all(c.ended for c in self.captures):
                        break
                    continue
                yield from self._process(ready, t_wait)
            else:
                self.stopped_by = self._stop_reason
        except KeyboardInterrupt:
            self.stopped_by = "Ctrl-C"
        finally:
            self._cpu_end = time.process_time()
            for cap in self.captures:
                cap.stop()
            self._loop_ended.set()
            if self._enroll_thread is not None:
                self._enroll_thread.join(timeout=10.0)  # let a started commit finish
            if self.enrollment is not None and self._enroll_thread is None:
                self.unfinished = self.enrollment

    def prepare_image(self, image: np.ndarray) -> np.ndarray:
        """The one preprocessing step of the loop: a captured uint8 RGB frame ``(H, W, 3)`` -> the
        engine's input uint8 ``(h, w, 3)`` (fit to the bundle's input size). A crop of the frame
        belongs here. Runs on the capture threads (in parallel with the engine) and, for a frame that
        came without it, on the loop thread."""
        return self.clf.prepare([self.cfg.roi.crop(image)], "RGB")[0]  # the region of interest: a view

    def _prepare_on_arrival(self, frame: Frame) -> Frame:
        return replace(frame, prepared=self.prepare_image(frame.image))

    def prepare(self, frames: list[Frame]) -> np.ndarray:
        """Frames -> the engine's uint8 batch ``(B, h, w, 3)``: what the capture threads prepared,
        stacked; :meth:`prepare_image` for any frame that arrived without it."""
        shape = (*self.clf.bundle.manifest.input_size, 3)
        batch = np.empty((len(frames), *shape), np.uint8)
        for i, f in enumerate(frames):
            ready = f.prepared is not None and f.prepared.shape == shape
            batch[i] = f.prepared if ready else self.prepare_image(f.image)
        return batch

    def _process(self, ready: list[tuple[int, Frame]], t_wait: float) -> Iterator[dict[str, Any]]:
        started = time.monotonic()
        c0, t0 = time.thread_time(), time.perf_counter()
        batch = self.prepare([f for _, f in ready])
        c1, t1 = time.thread_time(), time.perf_counter()
        emb = self.clf.embed(batch)
        c2, t2 = time.thread_time(), time.perf_counter()
        head = self.clf.head  # one consistent head for the batch, even if an enrollment commits meanwhile
        have_classes = bool(head.classes)
        result = head.classify(emb, self.cfg.k) if have_classes else None
        t3 = time.perf_counter()
        now = time.monotonic()
        wall = time.time()
        events = []
        if result is not None:
            # Whole-batch conversions once: per-element float()/int() calls cost more than the head.
            top_idx, top_prob = result.top_idx.tolist(), result.top_prob.tolist()
            best_sims = result.best_sim.tolist()
        for j, (i, frame) in enumerate(ready):
            latency = (now - frame.timestamp) * 1e3
            self.max_age_ms = max(self.max_age_ms, (started - frame.timestamp) * 1e3)
            self.times.add("capture", frame.read_ms)
            self.times.add("total", latency)
            self._collect_shot(i, batch[j], emb[j], now, self.cfg.roi.crop(frame.image))
            if result is not None:
                raw = result.labels[j] or UNKNOWN
                conf = top_prob[j][0]
                top = [(head.classes[c], round(p, 4)) for c, p in zip(top_idx[j], top_prob[j], strict=True)]
                best_sim = best_sims[j]
            else:
                raw, conf, top, best_sim = UNKNOWN, 0.0, [], -1.0
            label, share = self.smoothers[i].update(raw, conf, emb[j])
            if frame.label is not None and result is not None:
                self.labelled += 1
                enrolled = frame.label in head.classes
                expected = frame.label if enrolled else UNKNOWN
                self.correct += int(label == expected)
                self.raw_correct += int(raw == expected)
                if enrolled:
                    self.known += 1
                    self.known_correct += int(head.classes[top_idx[j][0]] == frame.label)
                else:
                    self.unknown += 1
                    self.unknown_rejections += int(label == UNKNOWN)
            self.frames += 1
            self.per_source_frames[i] += 1
            events.append({"frame": frame.index, "time": round(wall, 4), "source": frame.source, "source_index": i,
                           "label": label, "confidence": round(conf if label == raw else share, 4),
                           "raw_label": raw, "top": top, "best_sim": round(best_sim, 4),
                           "latency_ms": round(latency, 2), "truth": frame.label})
        if self.events_out is not None:  # one write per batch
            self.events_out.write("".join(json.dumps(e) + "\n" for e in events))
        t4 = time.perf_counter()
        self.loop_cpu_s += (c1 - c0) + (time.thread_time() - c2)
        self.engine_call_cpu_s += c2 - c1
        self.times.add("wait", (t0 - t_wait) * 1e3)
        self.times.add("preprocess", (t1 - t0) * 1e3)
        self.times.add("embed", (t2 - t1) * 1e3)
        self.times.add("head", (t3 - t2) * 1e3)
        self.times.add("post", (t4 - t3) * 1e3)
        self.batches += 1
        for (i, frame), event in zip(ready, events, strict=True):
            yield event
            self._output(frame, event)
            for listen in self.listeners:
                listen(i, frame, event)

    # ---- outputs --------------------------------------------------------------------
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

    # ---- the whole run --------------------------------------------------------------
    def run(self) -> RunSummary:
        """Run to the end (sources end, limits, ``quit``, Ctrl-C) and return the summary."""
        own_events = None
        if self.cfg.jsonl == "-":
            self.events_out = sys.stdout
        elif self.cfg.jsonl:
            Path(self.cfg.jsonl).parent.mkdir(parents=True, exist_ok=True)
            own_events = self.events_out = open(self.cfg.jsonl, "w", encoding="utf-8")  # noqa: SIM115
        try:
            with stop_on_signals(self):
                for _ in self.events():
                    pass
        finally:
            if own_events is not None:
                own_events.close()
            if self.writer is not None:
                self.writer.release()
            if self.cfg.display:
                cv2.destroyAllWindows()
        summary = self.summary()
        if self.cfg.summary_json:
            try:
                atomic_write_text(Path(self.cfg.summary_json), json.dumps(summary.to_json(), indent=2))
            except OSError as exc:  # the run is over: say so after the summary text, do not lose it
                self.summary_error = f"cannot write --summary-json {self.cfg.summary_json}: {exc.strerror or exc}"
        return summary

    def problem(self) -> str | None:
        """Why the run did not do what was asked, or None: no frame at all from sources that
        failed or ended, or an ``enroll`` that enrolled nothing. ``edgefs run`` exits non-zero."""
        if self.frames == 0 and self.stopped_by in ("end of sources", "duration"):
            states = "; ".join(f"{cap.source.name}: {cap.status}" for cap in self.captures)
            if self.stopped_by == "duration":
                return f"no frame came in {self.cfg.duration_s:g} s; {states}"
            return f"no frame was classified; {states}"
        name = self.cfg.enroll
        if name and name not in self.enrolled:
            if name in self.enroll_failures:
                return f"enrolled nothing: {self.enroll_failures[name]}"
            e = self.unfinished
            usable = len(e.images) if e is not None and e.name == name else 0
            needed = e.shots if e is not None else self.cfg.shots
            source = self.cfg.enroll_source
            frames = self.per_source_frames[source] if source < len(self.per_source_frames) else 0
            why = ("the source ended" if self.stopped_by == "end of sources"
                   else f"the run stopped ({self.stopped_by})")
            rejected = f"; rejected: {', '.join(e.rejected[:3])}" if e is not None and e.rejected else ""
            return (f"enrolled nothing: {why} after {frames} frames with {usable} usable "
                    f"shot{'' if usable == 1 else 's'} of the {needed} needed{rejected}. Give a longer source, "
                    "or fewer --shots")
        return self.summary_error

    def summary(self) -> RunSummary:
        seconds = time.monotonic() - self.t_start
        per_source = {}
        names = [cap.source.name for cap in self.captures]
        for i, (cap, n) in enumerate(zip(self.captures, self.per_source_frames, strict=True)):
            stats = cap.stats
            # Two sources may have the same URI: the index keeps them apart.
            key = cap.source.name if names.count(cap.source.name) == 1 else f"{cap.source.name} #{i}"
            per_source[key] = {"index": i, "frames": n, "dropped": int(stats.dropped),
                               "reconnects": int(stats.reconnects), "status": cap.status}
        return RunSummary(
            frames=self.frames, seconds=seconds, fps=self.frames / max(seconds, 1e-9),
            dropped=sum(s["dropped"] for s in per_source.values()),
            reconnects=sum(s["reconnects"] for s in per_source.values()),
            stages_ms=self.times.summary(), max_age_ms=self.max_age_ms,
            accuracy=self.correct / self.labelled if self.labelled else None, accuracy_frames=self.labelled,
            known_top1=self.known_correct / self.known if self.known else None, known_frames=self.known,
            unknown_rejected=self.unknown_rejections / self.unknown if self.unknown else None,
            unknown_frames=self.unknown,
            enrolled=list(self.enrolled), per_source=per_source, stopped_by=self.stopped_by,
            batches=self.batches, cpu_ms_per_frame=self.cpu_per_frame(),
            raw_accuracy=self.raw_correct / self.labelled if self.labelled else None,
        )

    def cpu_per_frame(self) -> dict[str, float]:
        """CPU milliseconds per classified frame: ``process`` (every thread of this process: capture,
        decode, engine threads, the loop), ``loop`` (the loop thread outside the engine call: waiting,
        preprocessing, head, smoothing, output), ``capture`` (the capture threads: grab, decode or
        render, and fitting to the engine's input, per frame *captured*, dropped ones included; counted
        once they have stopped) and ``engine_call`` (the loop thread inside it; an
        engine with its own threads spends most of its time there instead). Less sensitive to other
        processes' load than wall times. Empty before any frame."""
        if not self.frames:
            return {}
        end = self._cpu_end if self._cpu_end > self._cpu_start else time.process_time()
        capture = sum(c.cpu_s for c in self.captures)  # finished threads only (0 while they run)
        captured = max(1, sum(c.stats.frames for c in self.captures))
        return {"process": (end - self._cpu_start) * 1e3 / self.frames,
                "capture": capture * 1e3 / captured,
                "loop": self.loop_cpu_s * 1e3 / self.frames,
                "engine_call": self.engine_call_cpu_s * 1e3 / self.frames}


#: The store setting noting the region of interest each class was enrolled with, live.
CLASS_ROI_SETTING = "class_roi"


def classes_with_other_roi(settings: Mapping[str, Any], classes: list[str], roi: Roi) -> dict[str, str]:
    """The enrolled classes noted with a region of interest other than ``roi``: name -> theirs."""
    saved = settings.get(CLASS_ROI_SETTING, {})
    if not isinstance(saved, dict):
        return {}
    now = roi.to_text()
    return {n: str(saved[n]) for n in classes if n in saved and str(saved[n]) != now}


#: Two shots of one live enrollment with a cosine at or above this are nearly the same view.
TOO_ALIKE = 0.95


def too_alike(embeddings: np.ndarray) -> int:
    """How many of ``(K, D)`` shot embeddings are nearly the same view as an earlier one."""
    x = embeddings.astype(np.float32).reshape(len(embeddings), -1)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sims = np.tril(x @ x.T, k=-1)
    return int((sims >= TOO_ALIKE).any(axis=1).sum())


#: Signals that end a run as Ctrl-C does: SIGTERM (systemd's, Docker's and Kubernetes' stop) and
#: SIGHUP (the terminal or SSH session went away).
STOP_SIGNALS = ("SIGTERM", "SIGHUP")


@contextmanager
def stop_on_signals(pipeline: Pipeline) -> Iterator[None]:
    """While the loop runs, SIGTERM and SIGHUP ask it to stop after the current batch, as Ctrl-C does:
    capture threads stopped, a started enrollment commit finished, the JSONL and video closed, the
    summary printed and ``--summary-json`` written, exit status 0. A second such signal ends the
    process at once (the store is power-cut safe, so that loses at most the enrollment in flight).

    A signal the process was told to ignore stays ignored (``nohup`` ignores SIGHUP). Signal handlers
    belong to the main thread; called on another thread this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, _frame: object) -> None:
        signal.signal(signum, signal.SIG_DFL)  # the next one is not caught: a stuck stop can still be ended
        pipeline.stop(signal.Signals(signum).name)

    previous: dict[int, Any] = {}
    for name in STOP_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is None or signal.getsignal(sig) is signal.SIG_IGN:
            continue
        previous[sig] = signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def open_pipeline(
    bundle: str | Path,
    store: str | Path,
    config: RunConfig,
    *,
    options: EngineOptions | None = None,
    log: Callable[[str], None] = print,
    empty_hint: str = "Enroll with 'edgefs enroll', --enroll NAME or --commands",
) -> Iterator[Pipeline]:
    """Check the outputs, open the classifier and the sources: the camera loop, ready to :meth:`Pipeline.run`.

    ``edgefs run`` runs it as it is; ``edgefs serve`` runs the same loop with its web app attached.
    ``options``: the engine and head (:class:`edgefs.service.options.EngineOptions`); threads left
    unset are :func:`loop_threads`, and the engine takes :data:`LOOP_ENGINE_DEFAULTS` where they
    do not say otherwise.

    Raises:
        EdgefsError: an output that cannot be written (checked before anything runs), a bad bundle,
            store or source.
    """
    inputs: dict[str, str | Path | None] = {**store_files(store), "the bundle": bundle}
    for uri in config.sources:
        if Path(uri).exists():  # a video file or an image folder given by path
            inputs[f"the source {uri}"] = uri
    outputs = [(flag, path) for flag, path in (("--jsonl", config.jsonl), ("--summary-json", config.summary_json),
                                               ("--record", config.record)) if path and path != "-"]
    for flag, path in outputs:
        check_writable(Path(path), flag)  # first: "is a folder" says more than "holds the store"
        check_output_not_input(path, inputs, flag=flag)  # e.g. --jsonl classes.db would replace the store
    written = [Path(p).resolve() for _, p in outputs]
    if len(set(written)) < len(written):
        raise EdgefsError("--jsonl, --summary-json and --record must be different files; give each its own path")
    if config.display is None:
        config.display = display_available()
    options = options or EngineOptions()
    options = replace(options, threads=options.threads or loop_threads())
    with Classifier.open(bundle, store, options=options, log=log, engine_defaults=LOOP_ENGINE_DEFAULTS) as clf:
        if not clf.classes and not config.enroll and not config.commands:
            log(f"warning: the store has no classes yet: every frame is 'unknown'. {empty_hint}")
        yield Pipeline(clf, config, log=log)


def run(
    bundle: str | Path,
    store: str | Path,
    config: RunConfig,
    *,
    options: EngineOptions | None = None,
    log: Callable[[str], None] = print,
) -> RunSummary:
    """``edgefs run``: open the classifier and the sources, run the loop, print and return the summary.

    ``options``: the engine and head, as :func:`open_pipeline` takes them.

    Raises:
        EdgefsError: an output that cannot be written (checked before anything runs); after the
            summary is printed, a run that classified no frame or enrolled nothing of ``enroll``.
    """
    with open_pipeline(bundle, store, config, options=options, log=log) as pipeline:
        summary = pipeline.run()
    log(summary.text())
    problem = pipeline.problem()
    if problem:
        raise EdgefsError(problem)
    return summary


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
