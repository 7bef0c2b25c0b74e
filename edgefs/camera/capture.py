"""A capture thread per source: reads frames into a latest-frame slot (or a queue), reopens failed sources.

A live camera produces frames whether or not anyone is ready for them; a reader
that falls behind must see the newest frame, not a backlog. :class:`CaptureThread`
reads its source on a daemon thread and keeps only the newest unread frame (a
newer frame replaces an unread one, which is counted as dropped). A file or
folder should be processed fully instead: for a source that is not live the
thread hands frames over through a bounded queue and waits while it is full, so
nothing is dropped.

When ``read()`` (or ``open()``) raises :class:`~edgefs.camera.sources.SourceError`
the thread reopens the source with exponential backoff and says so in
:attr:`CaptureThread.status`; no error ever leaves the thread. An error that
reopening cannot fix (``SourceError.retryable`` False: a missing file) ends it
as ``failed`` at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from edgefs.camera.sources import Frame, Source, SourceError

log = logging.getLogger("edgefs.camera")

STATES = ("starting", "running", "reconnecting", "ended", "failed", "stopped")


def backoff_delay(attempt: int, backoff: tuple[float, float]) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (1, 2, ...): ``first * 2**(attempt-1)``, at most ``cap``."""
    first, cap = backoff
    return min(cap, first * 2.0 ** max(0, attempt - 1))


@dataclass(frozen=True)
class CaptureStats:
    """Counters of one capture thread (a snapshot).

    Attributes:
        frames: frames read from the source.
        delivered: frames handed over by :meth:`CaptureThread.get`.
        dropped: frames replaced in the latest-frame slot before anyone took them.
        reconnects: successful reopens after a failure.
        errors: failures seen (of ``read()`` and of reopen attempts).
        fps: the rate frames arrived at over the last second or so (0 before two frames).
        last_error: the message of the last failure, or None.
    """

    frames: int = 0
    delivered: int = 0
    dropped: int = 0
    reconnects: int = 0
    errors: int = 0
    fps: float = 0.0
    last_error: str | None = None


class CaptureThread:
    """Reads ``source`` on a daemon thread; :meth:`get` hands over the newest frame (or the next, in order).

    Args:
        source: the source (opened by the thread if it is not open yet; closed by the
            thread when it finishes).
        reconnect: reopen the source after a failure (else the thread ends as ``failed``).
        backoff: ``(first, cap)`` seconds: wait ``first`` before the first reopen
            attempt, doubling each failed attempt up to ``cap``.
        max_attempts: give up (``failed``) after this many failed reopen attempts in a
            row; None: never give up.
        open_timeout: give up (``failed``) on a source that has never opened once this
            many seconds have passed since the first attempt; None: keep trying. A source
            that opened once is reconnected as ``max_attempts`` says, whatever this is:
            a camera that was there will likely come back, one that never opened will not.
        blocking: hand over every frame through a queue of ``queue_size`` frames,
            waiting while it is full; default: True for sources that are not live.
        queue_size: the queue's size in blocking mode.
        on_status: called (on the capture thread) with the status text whenever it changes.
        prepare: applied to every frame on the capture thread before it is handed over
            (the camera loop fits it to the engine's input there, in parallel with the
            engine); if it raises, the frame is handed over as read.
        on_frame: called (on the capture thread, no lock held) after each frame is put in
            the slot or queue: a reader of several captures waits on one event instead of
            polling each (:class:`edgefs.camera.loop.Pipeline`).

    Use::

        with CaptureThread(open_source("0")) as cap:
            while not cap.ended:
                frame = cap.get(timeout=0.1)
                if frame is None:
                    print(cap.status)  # e.g. "reconnecting (attempt 3, next in 0.8 s): ..."
                    continue
                ...
    """

    def __init__(self, source: Source, *, reconnect: bool = True, backoff: tuple[float, float] = (0.1, 2.0),
                 max_attempts: int | None = None, open_timeout: float | None = None,
                 blocking: bool | None = None, queue_size: int = 4,
                 on_status: Callable[[str], None] | None = None,
                 on_frame: Callable[[], None] | None = None,
                 prepare: Callable[[Frame], Frame] | None = None) -> None:
        first, cap = backoff
        if first <= 0 or cap < first:
            raise ValueError(f"backoff must be (first, cap) with 0 < first <= cap, got {backoff}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.source = source
        self.reconnect = reconnect
        self.backoff = (float(first), float(cap))
        self.max_attempts = max_attempts
        if open_timeout is not None and not open_timeout > 0:
            raise ValueError(f"open_timeout must be > 0 seconds or None, got {open_timeout}")
        self.open_timeout = open_timeout
        self.opened_once = False
        self._first_try = 0.0
        self._open_attempts = 0
        self.blocking = (not source.live) if blocking is None else blocking
        self.capacity = queue_size if self.blocking else 1
        self.on_status = on_status
        self.on_frame = on_frame
        self.prepare = prepare
        self._frames: deque[Frame] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = "starting"
        self._reason: str | None = None
        self._attempt = 0
        self._retry_at = 0.0
        self._counts = {"frames": 0, "delivered": 0, "dropped": 0, "reconnects": 0, "errors": 0}
        self._rate_start = 0.0
        self._rate_frames = 0
        self._fps = 0.0
        self._last_status = ""
        # CPU seconds the thread spent reading after the first open (grab, decode, render), set
        # when it finishes; the first open (a synthetic camera draws its backgrounds) is left out.
        self.cpu_s = 0.0
        self._cpu_opened = 0.0

    # ---- control -------------------------------------------------------------------------
    def start(self) -> CaptureThread:
        """Start reading (once); returns self."""
        if self._thread is not None:
            raise RuntimeError(f"the capture thread of {self.source.name} was started already")
        self._thread = threading.Thread(target=self._run, name=f"capture {self.source.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop reading and wait up to ``timeout`` s for the thread; the thread closes the source.

        Returns:
            True when the thread has finished; False when a ``read()`` is still blocked
            (a stalled stream: the daemon thread closes the source when it returns).
        """
        self._stop.set()
        self.source.interrupt()
        with self._cond:
            self._cond.notify_all()
        if self._thread is None:
            self._set_state("stopped")
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("capture %s: read() still blocked %.1f s after stop(); leaving the daemon thread",
                        self.source.name, timeout)
            return False
        return True

    def __enter__(self) -> CaptureThread:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- consumer side ---------------------------------------------------------------------
    def get(self, timeout: float | None = None) -> Frame | None:
        """The next frame: the newest unread one (live) or the oldest queued one (blocking).

        Args:
            timeout: seconds to wait for a frame; 0 does not wait; None waits until a
                frame comes or the capture ends.

        Returns:
            A frame, or None when none came in time or none will come (:attr:`ended`).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._frames:
                if self._state in ("ended", "failed", "stopped"):
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            frame = self._frames.popleft()
            self._counts["delivered"] += 1
            self._cond.notify_all()  # room in the queue
            return frame

    def __iter__(self) -> Iterator[Frame]:
        """Every frame :meth:`get` hands over, until the capture ends (starts it if needed)."""
        if self._thread is None:
            self.start()
        while True:
            frame = self.get(timeout=0.5)
            if frame is not None:
                yield frame
            elif self.ended:
                return

    @property
    def state(self) -> str:
        """One of ``starting running reconnecting ended failed stopped``."""
        return self._state

    @property
    def ended(self) -> bool:
        """No frame will come any more: the stream ended (or failed, or was stopped) and none is left unread."""
        with self._cond:
            return self._state in ("ended", "failed", "stopped") and not self._frames

    @property
    def failed(self) -> bool:
        """The source failed and will not be reopened (``reconnect`` off, ``max_attempts``, or not retryable)."""
        return self._state == "failed"

    @property
    def alive(self) -> bool:
        """The thread is running."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def status(self) -> str:
        """A line for the user: ``running``, ``reconnecting (attempt 3, next in 0.8 s): <reason>``,
        ``ended``, ``failed: <reason>``, ``stopped``, ``starting``."""
        state = self._state
        if state == "reconnecting":
            wait = max(0.0, self._retry_at - time.monotonic())
            return f"reconnecting (attempt {self._attempt}, next in {wait:.2g} s): {self._reason}"
        if state == "failed":
            return f"failed: {self._reason}"
        return state

    @property
    def stats(self) -> CaptureStats:
        """A snapshot of the counters."""
        with self._cond:
            return CaptureStats(**self._counts, fps=self._fps, last_error=self._reason)

    # ---- the thread -------------------------------------------------------------------------
    def _set_state(self, state: str, reason: str | None = None) -> None:
        with self._cond:
            self._state = state
            if reason is not None:
                self._reason = reason
            self._cond.notify_all()
        text = self.status
        if text != self._last_status:
            self._last_status = text
            if state in ("reconnecting", "failed") and self.on_status is None:
                # With a callback, the owner shows the status (once, its own way).
                log.warning("capture %s: %s", self.source.name, text)
            if self.on_status is not None:
                try:
                    self.on_status(text)
                except Exception:  # a broken callback must not kill the capture
                    log.exception("capture %s: the on_status callback failed", self.source.name)

    def _run(self) -> None:
        try:
            if self._open_first():
                self._loop()
        finally:
            self.cpu_s = time.thread_time() - self._cpu_opened
            try:
                self.source.close()
            except Exception:
                log.exception("capture %s: closing the source failed", self.source.name)
            if self._stop.is_set() and self._state not in ("ended", "failed"):
                self._set_state("stopped")

    def _open_first(self) -> bool:
        self._first_try = time.monotonic()
        self._open_attempts = 1
        try:
            self.source.open()
        except Exception as exc:  # every failure goes through _recover
            return self._recover(exc)
        self.opened_once = True
        self._cpu_opened = time.thread_time()
        self._set_state("running")
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.source.read()
            except Exception as exc:  # never let a source kill the program
                if self._stop.is_set() or not self._recover(exc):
                    return
                continue
            if frame is None:
                self._set_state("ended")
                return
            if self._stop.is_set():
                return  # read() was cut short by stop(): nobody wants this frame
            if self.prepare is not None:
                try:
                    frame = self.prepare(frame)
                except Exception:  # the reader prepares it again and reports the problem itself
                    log.debug("capture %s: prepare failed on frame %d", self.source.name, frame.index, exc_info=True)
            self._put(frame)
            if self.on_frame is not None:
                self.on_frame()

    def _put(self, frame: Frame) -> None:
        now = time.monotonic()
        with self._cond:
            if self.blocking:
                while len(self._frames) >= self.capacity and not self._stop.is_set():
                    self._cond.wait(0.1)
                if self._stop.is_set():
                    return
            elif self._frames:
                self._frames.clear()
                self._counts["dropped"] += 1
            self._frames.append(frame)
            self._counts["frames"] += 1
            if self._rate_frames == 0:
                self._rate_start = now
            self._rate_frames += 1
            if now - self._rate_start >= 1.0:
                self._fps = (self._rate_frames - 1) / (now - self._rate_start)
                self._rate_start, self._rate_frames = now, 1
            self._cond.notify_all()

    def _recover(self, exc: BaseException) -> bool:
        """After a failure: reopen with backoff until it works (True) or the thread must end (False)."""
        while True:
            reason = str(exc) if isinstance(exc, SourceError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, SourceError):
                log.error("capture %s: unexpected error from the source", self.source.name, exc_info=exc)
            with self._cond:
                self._counts["errors"] += 1
            retryable = getattr(exc, "retryable", True)
            if not self.reconnect or not retryable:
                self._set_state("failed", reason)
                return False
            self._attempt += 1
            if self.max_attempts is not None and self._attempt > self.max_attempts:
                self._set_state("failed", f"gave up after {self.max_attempts} reconnect attempts: {reason}")
                return False
            delay = backoff_delay(self._attempt, self.backoff)
            if not self.opened_once and self.open_timeout is not None:
                waited = time.monotonic() - self._first_try
                if waited >= self.open_timeout:
                    self._set_state("failed", f"never opened: gave up after {self._open_attempts} attempts in "
                                              f"{waited:.1f} s: {reason}")
                    return False
                delay = min(delay, self.open_timeout - waited)  # the last attempt falls at the deadline
            self._retry_at = time.monotonic() + delay
            self._set_state("reconnecting", reason)
            if self._stop.wait(delay):
                return False
            self._open_attempts += 1
            try:
                self.source.reopen()
            except Exception as again:  # counted and retried
                exc = again
                continue
            with self._cond:
                self._counts["reconnects"] += 1
            self.opened_once = True
            self._attempt = 0
            self._set_state("running")
            return True
