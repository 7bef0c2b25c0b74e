"""Live enrollment during the camera loop, and the commands that start it.

Live enrollment (``--enroll NAME``, a stdin command, a key in the window or the web app)
collects shots from a source's frames as they pass through the loop (the embeddings are
already computed), gates them, and commits the new class in a worker thread: classification
never stops, and the class is live from the frame after the commit. :class:`EnrollmentMixin`
is the part of :class:`edgefs.camera.loop.Pipeline` that does it, and reads the stdin commands
(``enroll NAME [SHOTS]``, ``remove NAME``, ``quit``).

Device side: no torch (DESIGN.md rule 1).
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefs.camera.limits import MAX_LIVE_SHOTS
from edgefs.errors import EdgefsError
from edgefs.runtime.roi import Roi
from edgefs.service.classifier import Classifier, EnrollResult
from edgefs.service.quality import sharpness
from edgefs.store.validate import check_name

if TYPE_CHECKING:
    from edgefs.camera.capture import CaptureThread
    from edgefs.camera.loop.loop import RunConfig

#: Images per call when the loop embeds a live enrollment's other shot views, between two batches.
#: Measured with tools/bench_live_enroll.py (4 cameras at 30 FPS, EfficientNet-Lite0 at 224 px, one
#: CPU thread, 7 views, reports/live-enroll): 1 keeps the frames classified during the commit at
#: p99 13.5 ms and drops none (commit 348 ms); 4 gave p99 51 ms and 4 dropped frames.
VIEWS_PER_CALL = 1


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


def _read_commands(out: queue.Queue[str]) -> None:
    for line in sys.stdin:
        out.put(line.strip())


class EnrollmentMixin:
    """Live enrollment and the stdin commands of a :class:`edgefs.camera.loop.Pipeline` run.

    Attributes:
        enrollment: the enrollment collecting or committing now, else None.
        last_enrollment: the latest one started (a viewer shows how it went).
        enrolled: the classes enrolled during the run.
        enroll_failures: label -> why its commit wrote nothing.
        unfinished: an enrollment still collecting when the run ended.
    """

    # What the loop holds (edgefs.camera.loop.loop.Pipeline)
    clf: Classifier
    cfg: RunConfig
    log: Callable[[str], None]
    captures: list[CaptureThread]
    _ready: threading.Event
    _loop_ended: threading.Event
    stop: Callable[..., None]
    submit: Callable[[Callable[[], Any]], Future[Any]]

    def _init_enrollment(self) -> None:
        self.enrollment: LiveEnrollment | None = None
        self.enrolled: list[str] = []
        self.enroll_failures: dict[str, str] = {}
        self.unfinished: LiveEnrollment | None = None  # an enrollment still collecting when the run ended
        self._enroll_thread: threading.Thread | None = None
        self._commands: queue.Queue[str] = queue.Queue()
        self.last_enrollment: LiveEnrollment | None = None
        self._presenting: int | None = None  # the source showing the object being enrolled (present())

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

    def _read_stdin(self) -> None:
        """``--commands``: read stdin on a thread of its own, one command a line."""
        threading.Thread(target=_read_commands, args=(self._commands,), daemon=True).start()

    def _run_commands(self) -> None:
        """The commands queued (stdin, :meth:`command`), on the loop's thread."""
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
