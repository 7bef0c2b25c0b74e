"""Capture threads: latest-frame dropping, the blocking queue, end of stream, reconnect with backoff, stop()."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgefs.camera import Source, SourceError, open_source
from edgefs.camera.capture import CaptureThread, backoff_delay
from edgefs.camera.sources import SourceOptions
from edgefs.camera.sources.flaky import FlakySource

FAST = (0.01, 0.04)


def write_classes(root: Path) -> Path:
    for c, name in enumerate(["a", "b", "c"]):
        (root / name).mkdir(parents=True)
        for i in range(2):
            img = np.full((24, 24), 255, np.uint8)
            cv2.circle(img, (12, 12), 4 + 2 * c + i, 0, 2)
            cv2.imwrite(str(root / name / f"{i}.png"), img)
    return root


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_classes(tmp_path / "classes")


def synthetic_uri(data: Path, **options: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"size": "48x32", **options}.items())
    return f"synthetic:{data}?{query}"


def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff_delay(a, (0.1, 2.0)) for a in range(1, 8)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])


def test_latest_frame_slot_drops_unread_frames(data: Path) -> None:
    source = open_source(synthetic_uri(data, frames=300))
    cap = CaptureThread(source, blocking=False).start()
    wait_for(lambda: cap.state == "ended")
    assert not cap.ended  # the newest frame is still unread
    last = cap.get(timeout=0)
    assert last is not None and last.index == 299
    assert cap.get(timeout=0) is None and cap.ended
    stats = cap.stats
    assert stats.frames == 300 and stats.delivered == 1 and stats.dropped == 299
    assert cap.status == "ended" and not source.is_open


def test_latest_frame_slot_with_a_slow_reader_on_a_live_source(data: Path) -> None:
    with CaptureThread(open_source(synthetic_uri(data, fps=200))) as cap:
        got = []
        for _ in range(4):
            time.sleep(0.03)  # slower than the camera: frames in between are dropped
            frame = cap.get(timeout=1)
            assert frame is not None
            got.append(frame.index)
        stats = cap.stats
    assert got == sorted(got) and got[-1] - got[0] > 3
    assert stats.dropped > 0 and stats.frames >= stats.delivered + stats.dropped
    assert cap.state == "stopped"


def test_blocking_mode_hands_over_every_frame_in_order(data: Path) -> None:
    cap = CaptureThread(open_source(synthetic_uri(data, frames=40)), queue_size=2)
    assert cap.blocking  # not live -> no frame may be dropped
    indices = []
    for frame in cap:
        indices.append(frame.index)
        if len(indices) % 10 == 0:
            time.sleep(0.02)  # the reader stalls: the thread must wait, not drop
    assert indices == list(range(40))
    assert cap.stats.dropped == 0 and cap.ended and cap.status == "ended"


def test_video_file_end_of_stream(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (32, 32))
    for i in range(12):
        writer.write(np.full((32, 32, 3), 20 * i, np.uint8))
    writer.release()
    with CaptureThread(open_source(path)) as cap:
        frames = list(cap)
    assert [f.index for f in frames] == list(range(12))
    assert cap.ended and cap.get(timeout=1.0) is None  # returns at once, does not wait out the timeout


def test_flaky_source_fails_mid_stream_and_comes_back(data: Path) -> None:
    statuses: list[str] = []
    source = open_source(f"flaky:fail_after=5,fail_opens=2:{synthetic_uri(data, frames=15, hold=4)}")
    assert isinstance(source, FlakySource) and not source.live
    cap = CaptureThread(source, backoff=FAST, on_status=statuses.append)
    frames = list(cap)
    assert [f.index for f in frames] == list(range(15))  # nothing lost, nothing repeated
    reference = open_source(synthetic_uri(data, frames=15, hold=4))
    assert [f.label for f in frames] == [reference.label_at(i) for i in range(15)]
    assert statuses[0] == "running" and statuses[-1] == "ended"
    reconnecting = [s for s in statuses if s.startswith("reconnecting")]
    assert [s.split(",")[0] for s in reconnecting] == [f"reconnecting (attempt {a}" for a in (1, 2, 3)]
    assert "simulated disconnect after 5 frames" in reconnecting[0]
    assert statuses[-2] == "running"
    stats = cap.stats
    assert stats.reconnects == 1 and stats.errors == 3


def test_flaky_video_file_resumes_at_the_right_frame(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (32, 32))
    if not writer.isOpened():
        pytest.skip("this OpenCV cannot write mp4v")
    for i in range(30):
        writer.write(np.full((32, 32, 3), 8 * i, np.uint8))
    writer.release()
    source = open_source(f"flaky:{path}", fail_after=7, fail_opens=1, repeat=0)  # fails every 7 frames
    frames = list(CaptureThread(source, backoff=FAST))
    assert [round(float(f.image.mean()) / 8) for f in frames] == list(range(30))
    assert source.failures == 4


def test_reconnect_off_fails_with_the_reason(data: Path) -> None:
    source = open_source(f"flaky:fail_after=3:{synthetic_uri(data, frames=10)}")
    cap = CaptureThread(source, reconnect=False).start()
    frames = list(cap)
    assert len(frames) == 3 and cap.failed and cap.ended
    assert cap.status.startswith("failed: ") and "simulated disconnect" in cap.status


def test_gives_up_after_max_attempts(data: Path) -> None:
    source = open_source(f"flaky:fail_after=2,fail_opens=100:{synthetic_uri(data, frames=10)}")
    cap = CaptureThread(source, backoff=FAST, max_attempts=3).start()
    wait_for(lambda: cap.failed)
    assert cap.failed and "gave up after 3 reconnect attempts" in cap.status
    assert cap.stats.errors == 4 and cap.stats.reconnects == 0


def test_errors_reopening_cannot_fix_fail_at_once(tmp_path: Path) -> None:
    path = tmp_path / "gone.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (16, 16))
    writer.write(np.zeros((16, 16, 3), np.uint8))
    writer.release()
    source = open_source(path)
    path.unlink()  # gone between naming the source and opening it
    cap = CaptureThread(source, backoff=(5.0, 5.0)).start()
    wait_for(lambda: cap.ended, timeout=2.0)  # no 5 s backoff: retrying cannot help
    assert cap.failed and "gone.avi" in cap.status and cap.stats.errors == 1


class _Crashy(Source):
    """Raises a non-SourceError once (a bug in a source) and counts opens."""

    def __init__(self) -> None:
        super().__init__("crashy", live=False)
        self.opens = 0
        self.n = 0

    @classmethod
    def from_uri(cls, target: str, options: SourceOptions, *, uri: str, name: str | None) -> Source:
        raise NotImplementedError

    def _open(self) -> None:
        self.opens += 1

    def _next(self) -> tuple[np.ndarray, str | None] | None:
        self.n += 1
        if self.n == 3:
            raise ZeroDivisionError("a bug")
        return (np.zeros((4, 4, 3), np.uint8), None) if self.n < 6 else None

    def _close(self) -> None:
        pass


def test_unexpected_errors_never_escape_the_thread() -> None:
    source = _Crashy()
    cap = CaptureThread(source, backoff=FAST)
    frames = list(cap)
    assert len(frames) == 4 and source.opens == 2
    assert cap.stats.reconnects == 1 and "ZeroDivisionError: a bug" in (cap.stats.last_error or "")


def test_stop_ends_a_live_source_promptly(data: Path) -> None:
    source = open_source(synthetic_uri(data, fps=0.5))  # a frame every 2 s: stop() must cut the wait
    cap = CaptureThread(source).start()
    assert cap.get(timeout=2.0) is not None  # the first frame comes at once
    start = time.monotonic()
    assert cap.stop(timeout=1.0)
    assert time.monotonic() - start < 1.0
    assert not cap.alive and cap.state == "stopped" and cap.ended and not source.is_open
    assert cap.get(timeout=0.5) is None


def test_a_capture_starts_once_and_checks_its_arguments(data: Path) -> None:
    source = open_source(synthetic_uri(data, frames=2))
    with pytest.raises(ValueError, match="backoff"):
        CaptureThread(source, backoff=(0.0, 1.0))
    cap = CaptureThread(source).start()
    with pytest.raises(RuntimeError, match="started already"):
        cap.start()
    cap.stop()
    assert CaptureThread(source).stop()  # never started: nothing to wait for


def test_source_errors_are_edgefs_errors() -> None:
    from edgefs.errors import EdgefsError

    assert issubclass(SourceError, EdgefsError)
    assert SourceError("x").retryable
