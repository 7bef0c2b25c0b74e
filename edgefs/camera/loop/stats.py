"""The camera loop's figures: stage times, frame and accuracy counters, CPU time, and the run's summary.

:class:`StatsMixin` is the part of :class:`edgefs.camera.loop.Pipeline` that keeps them: the loop
counts each classified frame (:meth:`StatsMixin._score` compares its label with the source's
ground truth where the source knows it), and :meth:`StatsMixin.summary` turns the counts into the
:class:`RunSummary` that ``edgefs run`` prints and writes as JSON.

Device side: no torch (DESIGN.md rule 1).
"""

from __future__ import annotations

import itertools
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefs.store.validate import REJECT_LABEL

if TYPE_CHECKING:
    from edgefs.camera.capture import CaptureThread
    from edgefs.camera.loop.enrollment import LiveEnrollment
    from edgefs.camera.loop.loop import RunConfig

# The label of a rejected frame: the name the store refuses for a class, so it never means one.
UNKNOWN = REJECT_LABEL
# Per frame: capture (the source's grab/decode/render, on its thread) and total (capture to the
# head's result). Per batch: wait (for frames), preprocess, embed, head, post (smoothing, events, JSONL).
STAGES = ("capture", "wait", "preprocess", "embed", "head", "post", "total")


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


class StatsMixin:
    """The counters of a :class:`edgefs.camera.loop.Pipeline` run, and the summary made of them.

    Attributes:
        times: :class:`StageTimes` of the run.
        frames, batches: frames classified and engine calls made.
        per_source_frames: frames classified per source.
        max_age_ms: the oldest a frame was when its batch started.
        labelled, correct, raw_correct: frames with ground truth, and those the smoothed (raw) label
            got right (a class not enrolled must be called unknown).
        known, known_correct: ground-truth frames of enrolled classes, and those the head ranked first.
        unknown, unknown_rejections: ground-truth frames of classes not enrolled, and those called unknown.
        loop_cpu_s, engine_call_cpu_s: the loop thread's CPU time outside and inside the engine call.
    """

    # What the loop holds (edgefs.camera.loop.loop.Pipeline)
    cfg: RunConfig
    captures: list[CaptureThread]
    t_start: float
    stopped_by: str
    enrolled: list[str]
    enroll_failures: dict[str, str]
    unfinished: LiveEnrollment | None
    summary_error: str | None

    def _init_stats(self, sources: int) -> None:
        self.times = StageTimes()
        self.correct = 0
        self.raw_correct = 0  # the same count for the label before smoothing
        self.labelled = 0
        self.known_correct = 0
        self.known = 0
        self.unknown_rejections = 0
        self.unknown = 0
        self.frames = 0
        self.max_age_ms = 0.0
        self.per_source_frames = [0] * sources
        self.batches = 0
        self.loop_cpu_s = 0.0  # the loop thread's CPU time outside the engine call
        self.engine_call_cpu_s = 0.0  # the loop thread's CPU time inside it (engine threads not counted)
        self._cpu_start = self._cpu_end = time.process_time()

    def _score(self, truth: str, label: str, raw: str, classes: list[str], top1: str) -> None:
        """Count a frame whose ground truth is ``truth``: ``label`` smoothed, ``raw`` before smoothing,
        ``top1`` the head's first class; ``classes`` the head's classes."""
        self.labelled += 1
        enrolled = truth in classes
        expected = truth if enrolled else UNKNOWN
        self.correct += int(label == expected)
        self.raw_correct += int(raw == expected)
        if enrolled:
            self.known += 1
            self.known_correct += int(top1 == truth)
        else:
            self.unknown += 1
            self.unknown_rejections += int(label == UNKNOWN)

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
