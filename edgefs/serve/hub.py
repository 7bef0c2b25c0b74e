"""What the web app shows of the running loop: the annotated view of each source, the latest result, stats.

The camera loop calls :meth:`ViewHub.on_frame` after each classified frame; it
keeps a reference to the frame and its event and returns (the loop waits for
nothing else). Everything else happens on the hub's own thread: once per view
period it draws the overlay and encodes a JPEG of each source's newest frame,
but only for sources someone is watching, and publishes it. A viewer always
gets the newest JPEG when it is ready for one: a slow viewer skips frames
(counted) instead of queueing them, and no viewer at all costs the loop nothing
but the reference. Once a second the hub also samples FPS and per-stage
latency for the live chart and ``/metrics``.

Device side: no torch (DESIGN.md rule 1).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edgefs.camera.loop import STAGES, Pipeline, annotate
from edgefs.camera.sources import Frame

#: seconds of one-per-second samples the live chart can show
HISTORY_S = 300
#: recent frames the per-stage latency quantiles are taken over
QUANTILE_FRAMES = 600
JPEG_QUALITY = 80


def quantiles(values: list[float]) -> dict[str, float]:
    """p50/p90/p99 and the count of ``values`` (empty dict for none)."""
    if not values:
        return {}
    a = np.asarray(values, np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "n": len(values)}


@dataclass
class Published:
    """The newest JPEG of one source: ``version`` counts the JPEGs published for it."""

    version: int = 0
    jpeg: bytes = b""


class ViewHub:
    """Latest frames and results of a :class:`Pipeline`, JPEG views for viewers, and stats.

    Args:
        pipeline: the loop (not yet running, or running).
        view_fps: the most JPEGs per second encoded per watched source.
    """

    def __init__(self, pipeline: Pipeline, view_fps: float = 15.0) -> None:
        self.pipeline = pipeline
        self.view_period = 1.0 / max(view_fps, 0.1)
        self.names = [cap.source.name for cap in pipeline.captures]
        self.latest: list[tuple[Frame, dict[str, Any]] | None] = [None] * len(self.names)
        self.frames = [0] * len(self.names)
        self.last_frame_at: float | None = None  # monotonic time of the newest classified frame
        self.published = [Published() for _ in self.names]
        self.viewers = [0] * len(self.names)
        self.view_skipped = 0
        self.view_encoded = 0
        self.encode_ms: deque[float] = deque(maxlen=QUANTILE_FRAMES)
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_S)
        self.stage_p50: dict[str, float] = {}
        self._encoded_seq = [-1] * len(self.names)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick: asyncio.Future[None] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="edgefs-view", daemon=True)
        self._last_sample = (time.monotonic(), 0)
        pipeline.add_listener(self.on_frame)

    # ---- the loop's side: a reference, nothing more -------------------------------------
    def on_frame(self, i: int, frame: Frame, event: dict[str, Any]) -> None:
        self.latest[i] = (frame, event)
        self.frames[i] += 1
        self.last_frame_at = time.monotonic()

    # ---- lifecycle --------------------------------------------------------------------------
    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the web server's event loop (viewers wait there) and start encoding."""
        self._loop = loop
        self._tick = loop.create_future()
        if not self._thread.is_alive():
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake)

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    # ---- the hub's thread -----------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            if t - self._last_sample[0] >= 1.0:
                self._sample(t)
            published = False
            for i in range(len(self.names)):
                if self.viewers[i] > 0:
                    published |= self._encode(i)
            if published and self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._wake)
            self._stop.wait(max(0.0, self.view_period - (time.monotonic() - t)))

    def _encode(self, i: int) -> bool:
        latest = self.latest[i]
        if latest is None or self.frames[i] == self._encoded_seq[i]:
            return False
        self._encoded_seq[i] = self.frames[i]
        frame, event = latest
        t0 = time.perf_counter()
        e = self.pipeline.enrollment
        status = e.status(time.monotonic()) if e is not None and e.source == i else ""
        fps = self.history[-1]["fps"][i] if self.history else 0.0
        img = annotate(frame.image, event, fps, self.stage_p50, status, self.pipeline.cfg.roi)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            return False
        self.encode_ms.append((time.perf_counter() - t0) * 1e3)
        old = self.published[i]
        self.published[i] = Published(old.version + 1, buf.tobytes())
        self.view_encoded += 1
        return True

    def _sample(self, now: float) -> None:
        then, _ = self._last_sample
        prev = self.history[-1]["frames"] if self.history else [0] * len(self.names)
        frames = list(self.frames)
        dt = max(now - then, 1e-6)
        times = self.pipeline.times
        stages = {s: quantiles(times.recent(s, QUANTILE_FRAMES)) for s in STAGES}
        self.stage_p50 = {s: q["p50"] for s, q in stages.items() if q}
        self.history.append({
            "t": time.time(), "frames": frames, "fps": [(a - b) / dt for a, b in zip(frames, prev, strict=True)],
            "stages": stages,
        })
        self._last_sample = (now, sum(frames))

    # ---- the web server's side ---------------------------------------------------------------
    def _wake(self) -> None:
        if self._tick is not None and not self._tick.done():
            self._tick.set_result(None)
        if self._loop is not None and not self._stop.is_set():
            self._tick = self._loop.create_future()

    async def next_jpeg(self, source: int, after: int, timeout: float = 2.0) -> Published:
        """The newest JPEG of ``source`` with a version above ``after`` (waits up to ``timeout``; the
        returned version equals ``after`` when none came)."""
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            current = self.published[source]
            if current.version > after:
                return current
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._tick is None:
                break
            try:
                await asyncio.wait_for(asyncio.shield(self._tick), remaining)
            except asyncio.TimeoutError:
                break
        return self.published[source]

    def status(self) -> dict[str, Any]:
        """The newest result of every source, FPS and per-stage latency: what the live page shows."""
        last = self.history[-1] if self.history else None
        sources = []
        for i, name in enumerate(self.names):
            cap = self.pipeline.captures[i]
            latest = self.latest[i]
            event = latest[1] if latest is not None else None
            sources.append({
                "index": i, "name": name, "status": cap.status, "frames": self.frames[i],
                "dropped": int(cap.stats.dropped), "reconnects": int(cap.stats.reconnects),
                "fps": last["fps"][i] if last else 0.0,
                # What a rendered camera shows (the synthetic one knows); None for a real camera.
                "scene": cap.source.scene(),
                "result": None if event is None else {
                    k: event[k] for k in ("frame", "label", "confidence", "raw_label", "top", "best_sim",
                                          "latency_ms")},
            })
        return {"sources": sources, "stages_ms": last["stages"] if last else {},
                "classes": len(self.pipeline.clf.classes), "viewers": sum(self.viewers),
                "uptime_s": time.monotonic() - self.pipeline.t_start}
