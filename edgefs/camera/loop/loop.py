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

The loop's other jobs live beside it: :mod:`edgefs.camera.loop.enrollment` (live enrollment and
commands), :mod:`edgefs.camera.loop.outputs` (window, video, JSONL), :mod:`edgefs.camera.loop.stats`
(stage times, counters, the summary), :mod:`edgefs.camera.loop.smoothing` (each source's label
smoothing) and :mod:`edgefs.camera.loop.signals` (SIGTERM and SIGHUP).

Device side: no torch (DESIGN.md rule 1).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edgefs.camera.capture import CaptureThread
from edgefs.camera.limits import MAX_SMOOTH
from edgefs.camera.loop.enrollment import EnrollmentMixin
from edgefs.camera.loop.outputs import OutputsMixin, check_writable, display_available
from edgefs.camera.loop.signals import stop_on_signals
from edgefs.camera.loop.smoothing import DEFAULT_SMOOTH, LabelSmoother
from edgefs.camera.loop.stats import UNKNOWN, RunSummary, StatsMixin
from edgefs.camera.sources import Frame, open_source
from edgefs.errors import EdgefsError
from edgefs.fileio import check_output_not_input
from edgefs.runtime.roi import Roi
from edgefs.service.classifier import Classifier
from edgefs.service.options import EngineOptions
from edgefs.store import store_files

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


# The camera loop's engine defaults where the backend takes them. ONNX Runtime's idle threads spin by
# default: with 2 engine threads on 2 cores that cost 6.1 instead of 3.9 ms of CPU per frame at 4 x 30 FPS
# (Lite0 160 px INT8, tools/bench_loop.py, load average 17; 11.9 against 9.6 at load 30), CPU the capture
# threads need.
LOOP_ENGINE_DEFAULTS: dict[str, Any] = {"allow_spinning": False}


def loop_threads() -> int:
    """Engine threads for the camera loop: every core but one, which capture, decoding and the
    loop itself need (on 2 cores, 1 engine thread halves p99 latency: tools/bench_pipeline.py)."""
    return max(1, (os.cpu_count() or 2) - 1)


class Pipeline(EnrollmentMixin, OutputsMixin, StatsMixin):
    """The camera loop over a :class:`Classifier`; see the module docstring. Live enrollment and commands,
    the outputs and the run's figures are its mixins' (:class:`EnrollmentMixin`, :class:`OutputsMixin`,
    :class:`StatsMixin`).

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
        self._init_stats(len(self.captures))
        self._init_enrollment()
        self._init_outputs()
        self.summary_error: str | None = None
        self._calls: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()
        self.listeners: list[Callable[[int, Frame, dict[str, Any]], None]] = []
        self.t_start = time.monotonic()
        self._stop = threading.Event()
        self._stop_reason = "stop request"
        self._loop_ended = threading.Event()  # the loop no longer runs submitted calls: the engine is free

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
        """Between two batches: the calls other threads submitted, then the queued commands."""
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
        self._run_commands()

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
                self._read_stdin()
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
                self._score(frame.label, label, raw, head.classes, head.classes[top_idx[j][0]])
            self.frames += 1
            self.per_source_frames[i] += 1
            events.append({"frame": frame.index, "time": round(wall, 4), "source": frame.source, "source_index": i,
                           "label": label, "confidence": round(conf if label == raw else share, 4),
                           "raw_label": raw, "top": top, "best_sim": round(best_sim, 4),
                           "latency_ms": round(latency, 2), "truth": frame.label})
        self._write_events(events)  # one write per batch
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

    # ---- the whole run --------------------------------------------------------------
    def run(self) -> RunSummary:
        """Run to the end (sources end, limits, ``quit``, Ctrl-C) and return the summary."""
        own_events = self._open_events()
        try:
            with stop_on_signals(self):
                for _ in self.events():
                    pass
        finally:
            self._close_outputs(own_events)
        summary = self.summary()
        self._write_summary(summary)
        return summary


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
