"""GStreamer camera sources (``gst:``, ``csi:``, ``rtsp://``) against an OpenCV built with GStreamer.

Real pipelines and a real RTSP server; every frame that comes back is checked (size, dtype, the
SMPTE colour bars of ``videotestsrc`` in RGB order, progress from frame to frame). Run by
``.ci/lane-gstreamer.sh``, which uses Debian's python3-opencv; pip's opencv-python has no
GStreamer, so elsewhere these tests skip (and with ``EDGEFS_GSTREAMER_LANE=1``, set by the
lane, they fail instead of skipping).

What stands in for what: the Jetson CSI camera is ``videotestsrc``. The test takes the very
pipeline edgefs generates for ``csi:0?...`` and swaps, by string transformation, the NVIDIA
parts for plain GStreamer ones (``nvarguscamerasrc`` -> ``videotestsrc``, ``memory:NVMM`` ->
system memory, ``nvvidconv flip-method=N`` -> ``videoflip`` + ``videoconvert`` +
``videoscale``), so a change in the generated pipeline's shape breaks the test. Nothing here
runs on a Jetson. The RTSP server is gst-rtsp-server in a child process bound to 127.0.0.1
(interleaved TCP only, no UDP ports) that quits by itself after a minute or two.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from edgefs.camera import CaptureThread, Frame, Source, SourceError, open_source
from edgefs.camera.sources.video import CsiSource, GStreamerSource, StreamSource, gst_launch_command, opencv_has

HAVE_GSTREAMER = opencv_has("GStreamer")
IN_LANE = os.environ.get("EDGEFS_GSTREAMER_LANE") == "1"
NO_GSTREAMER = ("needs OpenCV built with GStreamer (cv2.getBuildInformation(): Video I/O GStreamer: NO here; "
                "pip's opencv-python has none): run .ci/lane-gstreamer.sh, which uses Debian's python3-opencv")

pytestmark = pytest.mark.gstreamer


def require(ok: bool, reason: str) -> None:
    """Skip when ``ok`` is false; in the GStreamer lane, fail: there a missing piece is a broken lane."""
    if not ok:
        if IN_LANE:
            pytest.fail(f"GStreamer lane: {reason}")
        pytest.skip(reason)


@pytest.fixture(autouse=True)
def _opencv_with_gstreamer() -> None:
    require(HAVE_GSTREAMER, NO_GSTREAMER)


# ---- what videotestsrc draws ---------------------------------------------------------------
# The top two thirds of pattern=smpte: seven bars, in RGB (this videotestsrc draws them at 100%).
SMPTE_BARS = {"white": (255, 255, 255), "yellow": (255, 255, 0), "cyan": (0, 255, 255), "green": (0, 255, 0),
              "magenta": (255, 0, 255), "red": (255, 0, 0), "blue": (0, 0, 255)}


def smpte_row(width: int) -> np.ndarray:
    """One row of the bars, ``(width, 3)`` RGB; videotestsrc starts bar ``i`` at pixel ``floor(i * width / 7)``."""
    colours = np.array(list(SMPTE_BARS.values()), np.float32)
    return colours[(7 * (np.arange(width) + 1) - 1) // width]


def bar_names(image: np.ndarray) -> list[str]:
    """The colour of each of the seven bars at a third of the height (each channel read as on or off)."""
    h, w = image.shape[:2]
    names = {colour: name for name, colour in SMPTE_BARS.items()}
    row = image[h // 3 - 2: h // 3 + 3].astype(np.float32)
    out = []
    for i in range(7):
        lo, hi = int((i + 0.3) * w / 7), int((i + 0.7) * w / 7)
        mean = row[:, lo:hi].reshape(-1, 3).mean(axis=0)
        out.append(names.get(tuple(255 if c > 128 else 0 for c in mean), f"unknown {mean.round()}"))
    return out


def scroll(image: np.ndarray) -> tuple[int, float]:
    """How far ``videotestsrc horizontal-speed=S`` has moved the bars left (pixels, ``0..W-1``), and the
    mean absolute error of the row at a third of the height against the bars moved that far."""
    w = image.shape[1]
    row = image[image.shape[0] // 3].astype(np.float32)
    ref = smpte_row(w)
    errors = [float(np.abs(np.roll(ref, -s, axis=0) - row).mean()) for s in range(w)]
    best = int(np.argmin(errors))
    return best, errors[best]


def check_frame(frame: Frame, height: int, width: int) -> None:
    image = frame.image
    assert image.shape == (height, width, 3), image.shape
    assert image.dtype == np.uint8 and image.flags.c_contiguous


def frames_from(cap: CaptureThread, n: int, timeout: float = 15.0) -> list[Frame]:
    """``n`` frames handed over by a running capture thread (fails after ``timeout`` s)."""
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout
    while len(frames) < n:
        assert time.monotonic() < deadline, f"{len(frames)} of {n} frames in {timeout} s; status {cap.status}"
        frame = cap.get(timeout=0.5)
        if frame is not None:
            frames.append(frame)
    return frames


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.02)


def capture(source: Source, statuses: list[str] | None = None, **kwargs: object) -> CaptureThread:
    """A capture thread made the way the camera loop makes one (edgefs.camera.loop.Pipeline)."""
    arrived = threading.Event()
    on_status = statuses.append if statuses is not None else None
    return CaptureThread(source, on_status=on_status, on_frame=arrived.set, **kwargs)  # type: ignore[arg-type]


# ---- gst: ----------------------------------------------------------------------------------
def test_gst_videotestsrc_gives_rgb_smpte_bars_and_its_rate() -> None:
    source = open_source("gst:videotestsrc is-live=true pattern=smpte ! "
                         "video/x-raw,width=320,height=240,framerate=30/1", name="bars")
    assert isinstance(source, GStreamerSource) and source.live
    assert source.pipeline.endswith("appsink drop=true max-buffers=1 sync=false")  # edgefs added the tail
    statuses: list[str] = []
    with capture(source, statuses) as cap:
        frames = frames_from(cap, 10)
        assert cap.state == "running"
    assert source.fps == pytest.approx(30.0)  # from the caps, through CAP_PROP_FPS
    for frame in frames:
        check_frame(frame, 240, 320)
        assert frame.source == "bars" and frame.label is None
        assert bar_names(frame.image) == list(SMPTE_BARS), "colours wrong (BGR not turned to RGB?)"
    assert [f.index for f in frames] == sorted({f.index for f in frames})
    assert statuses[0] == "running" and "stopped" in statuses


def test_gst_live_frames_move_on_and_come_at_the_source_rate() -> None:
    # horizontal-speed=4: each frame the bars move 4 px left, so a frame tells its own number.
    source = open_source("gst:videotestsrc is-live=true pattern=smpte horizontal-speed=4 ! "
                         "video/x-raw,width=320,height=240,framerate=30/1")
    with capture(source) as cap:
        frames = frames_from(cap, 20)
    shifts = []
    for frame in frames:
        shift, error = scroll(frame.image)
        assert error < 3, f"frame {frame.index} is not the bars moved along (error {error:.1f})"
        assert shift % 4 == 0
        shifts.append(shift // 4)
    steps = np.diff(np.unwrap(shifts, period=320 // 4)).round().astype(int)  # the bars come round every 80 frames
    assert (steps >= 1).all(), f"a frame came twice or out of order: source frame numbers {shifts}"
    elapsed = frames[-1].timestamp - frames[0].timestamp
    produced = int(steps.sum())
    # A live source at 30 FPS: the frames it made in between took their time to make.
    assert elapsed >= produced / 30 * 0.7, (elapsed, produced)


def test_gst_not_live_hands_over_every_frame_then_ends() -> None:
    """A pipeline with an end (a file, num-buffers=N) opened with live=False: every frame, in order, then
    the end of the stream, even for a slow reader (edgefs appends an appsink that does not drop)."""
    n = 30
    source = open_source(f"gst:videotestsrc num-buffers={n} pattern=smpte horizontal-speed=2 ! "
                         "video/x-raw,width=128,height=96", live=False)
    assert not source.live and "drop=false" in source.pipeline
    statuses: list[str] = []
    frames: list[Frame] = []
    with capture(source, statuses) as cap:
        for frame in cap:
            frames.append(frame)
            time.sleep(0.01)  # slower than the pipeline
        assert cap.state == "ended"
    assert [f.index for f in frames] == list(range(n))
    for i, frame in enumerate(frames):
        check_frame(frame, 96, 128)
        shift, error = scroll(frame.image)
        assert (shift, error < 3) == (2 * i, True), f"frame {i}: moved {shift} px, error {error:.1f}"
    assert statuses[-1] == "ended" and not any(s.startswith("reconnecting") for s in statuses)


def test_gst_live_pipeline_that_ends_is_an_error_and_is_reopened() -> None:
    """EOS of a live source: read() raises SourceError (retryable; no hang), the capture thread says it is
    reconnecting and reopens the pipeline, and frame indices count on."""
    pipeline = ("gst:videotestsrc is-live=true num-buffers=5 pattern=smpte ! "
                "video/x-raw,width=64,height=48,framerate=30/1")
    source = open_source(pipeline, name="short")
    with source:
        started = time.monotonic()
        with pytest.raises(SourceError, match="stopped delivering frames; it will be reopened") as err:
            for _ in range(50):
                frame = source.read()
                assert frame is not None
                check_frame(frame, 48, 64)
        assert err.value.retryable and time.monotonic() - started < 5
    statuses: list[str] = []
    source = open_source(pipeline, name="short")
    with capture(source, statuses, backoff=(0.05, 0.2)) as cap:
        wait_until(lambda: cap.stats.reconnects >= 2, 20, "two reopens after the end of the pipeline")
        frames = frames_from(cap, 2)
        assert cap.alive
    assert not cap.alive, "the capture thread did not stop"
    reconnecting = [s for s in statuses if s.startswith("reconnecting")]
    assert reconnecting and "the GStreamer pipeline of short stopped delivering frames" in reconnecting[0]
    assert cap.stats.frames > 5 and cap.stats.errors >= 2  # frames of the reopened pipelines were read
    assert frames[0].index < frames[1].index  # numbered on across reopens
    for frame in frames:
        check_frame(frame, 48, 64)


def test_gst_pipeline_that_cannot_start_says_what_to_try() -> None:
    source = open_source("gst:videotestsrc ! video/x-raw,format=NOPE ! appsink")
    try_this = "run it on its own to see why: gst-launch-1.0 videotestsrc ! video/x-raw,format=NOPE ! fakesink"
    with pytest.raises(SourceError, match=re.escape(try_this) + "$"):
        source.open()


# ---- csi: ----------------------------------------------------------------------------------
# nvvidconv's flip-method numbers and the same operations as GStreamer's video-direction (videoflip).
FLIP_NAMES = {0: "identity", 1: "90l", 2: "180", 3: "90r", 4: "horiz", 5: "ur-ll", 6: "vert", 7: "ul-lr"}
# Undo each flip on the output (numpy), to compare it with the bars as the sensor saw them.
UNFLIP = {
    0: lambda a: a,
    1: lambda a: np.rot90(a, -1),
    2: lambda a: np.rot90(a, 2),
    3: lambda a: np.rot90(a, 1),
    4: lambda a: a[:, ::-1],
    5: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    6: lambda a: a[::-1],
    7: lambda a: a.transpose(1, 0, 2),
}


def without_nvidia(pipeline: str) -> str:
    """edgefs's CSI pipeline with its Jetson-only elements swapped for plain GStreamer ones that make the
    same caps: nvarguscamerasrc -> videotestsrc (live SMPTE bars), NVMM -> system memory, nvvidconv's
    flip, scale and copy -> videoflip ! videoconvert ! videoscale. Fails if the pipeline's shape changed."""
    head = re.match(r"nvarguscamerasrc sensor-id=\d+ ! video/x-raw\(memory:NVMM\),(width=\d+,height=\d+,"
                    r"framerate=\d+/1,format=NV12) ! nvvidconv flip-method=(\d) ! ", pipeline)
    assert head, f"the CSI pipeline no longer looks as this test expects: {pipeline}"
    rest = pipeline[head.end():]
    assert re.fullmatch(r"video/x-raw,width=\d+,height=\d+,format=BGRx ! videoconvert ! video/x-raw,format=BGR"
                        r" ! appsink drop=true max-buffers=1 sync=false", rest), rest
    flip = FLIP_NAMES[int(head.group(2))]
    swapped = (f"videotestsrc is-live=true pattern=smpte ! video/x-raw,{head.group(1)} ! "
               f"videoflip video-direction={flip} ! videoconvert ! videoscale ! {rest}")
    assert not re.search(r"nvargus|nvvidconv|NVMM", swapped)
    return swapped


@pytest.mark.parametrize(("uri", "flip", "out_hw"), [
    ("csi:0?width=640&height=480&fps=30&out=320x240", 0, (240, 320)),
    ("csi:1?width=320&height=240&fps=15&flip=2", 2, (240, 320)),
    ("csi:0?width=320&height=240&fps=30&flip=4&out=160x120", 4, (120, 160)),
    ("csi:0?width=320&height=240&fps=30&flip=1", 1, (320, 240)),  # turned: portrait by default
    ("csi:0?width=640&height=360&fps=30&flip=3&out=180x320", 3, (320, 180)),
    ("csi:0?width=320&height=240&fps=30&flip=7", 7, (320, 240)),
])
def test_csi_pipeline_with_a_test_source_gives_the_size_asked_upright(uri: str, flip: int,
                                                                      out_hw: tuple[int, int]) -> None:
    csi = open_source(uri)
    assert isinstance(csi, CsiSource)
    sensor = uri.split(":")[1].split("?")[0]
    assert csi.pipeline.startswith(f"nvarguscamerasrc sensor-id={sensor} ! ")
    fps = float(re.search(r"fps=(\d+)", uri).group(1))  # type: ignore[union-attr]
    source = GStreamerSource(without_nvidia(csi.pipeline), name=uri, uri=uri)
    with capture(source) as cap:
        frames = frames_from(cap, 8)
    assert source.fps == pytest.approx(fps)
    for frame in frames:
        check_frame(frame, *out_hw)
        upright = np.ascontiguousarray(UNFLIP[flip](frame.image))
        assert bar_names(upright) == list(SMPTE_BARS), f"flip-method={flip}: bars {bar_names(upright)}"
    elapsed = frames[-1].timestamp - frames[0].timestamp
    assert elapsed >= (len(frames) - 1) / fps * 0.7  # the sensor's rate, not faster


def run_in_shell(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", f"timeout 20 {command}"], capture_output=True, text=True, timeout=30)


def test_csi_pipeline_command_to_try_runs_in_a_shell() -> None:
    """The gst-launch-1.0 command a failed pipeline's error suggests parses in bash (the NVMM caps quoted)
    and in gst-launch (appsink's properties go with it); with the NVIDIA elements swapped it runs."""
    require(shutil.which("gst-launch-1.0") is not None, "gst-launch-1.0 (Debian's gstreamer1.0-tools) is missing")
    csi = open_source("csi:0?width=320&height=240&fps=30&flip=2&out=160x120")
    assert isinstance(csi, CsiSource)
    command = gst_launch_command(csi.pipeline)
    assert "'video/x-raw(memory:NVMM),width=320,height=240,framerate=30/1,format=NV12'" in command
    assert command.endswith("format=BGR ! fakesink")
    run = run_in_shell(command)
    assert run.returncode != 0 and 'no element "nvarguscamerasrc"' in run.stderr + run.stdout, run
    swapped = without_nvidia(csi.pipeline).replace("videotestsrc ", "videotestsrc num-buffers=10 ", 1)
    run = run_in_shell(gst_launch_command(swapped))
    assert run.returncode == 0, run


def within(seconds: float, call: Callable[[], object]) -> object:
    """``call()``, on a daemon thread: fails the test if it has not returned after ``seconds`` (a hang)."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still blocked after {seconds} s (OpenCV waits forever on some pipelines)")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


@pytest.mark.parametrize(("uri", "missing"), [("csi:0", "nvarguscamerasrc, nvvidconv"),
                                               ("gst:nosuchsrc ! videoconvert", "nosuchsrc")])
def test_missing_element_is_refused_at_once_not_waited_on(uri: str, missing: str) -> None:
    """OpenCV 4.6 waits forever on a pipeline whose source element does not exist (csi:0 on a machine without
    nvarguscamerasrc); edgefs asks GStreamer first and refuses it, for good (reopening cannot help)."""
    with pytest.raises(SourceError, match=f"GStreamer has no element {missing} ") as err:
        within(10, open_source(uri).open)
    assert not err.value.retryable
    statuses: list[str] = []
    cap = capture(open_source(uri), statuses).start()
    wait_until(lambda: cap.state == "failed", 10, "the capture thread to give up")
    assert cap.stop(timeout=5) and statuses[-1].startswith(f"failed: GStreamer has no element {missing}")


def test_csi_turning_flip_keeps_an_explicit_out_size_and_refuses_unknown_flips() -> None:
    assert "width=360,height=640,format=BGRx" in open_source("csi:0?width=640&height=360&flip=3").pipeline
    assert "width=640,height=360,format=BGRx" in open_source("csi:0?width=640&height=360&flip=3&out=640x360").pipeline
    with pytest.raises(SourceError, match=r"0\.\.7") as err:
        open_source("csi:0?flip=8")
    assert not err.value.retryable


# ---- RTSP ----------------------------------------------------------------------------------
RTSP_SERVER = r"""
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer

port, lifetime = sys.argv[1], float(sys.argv[2])
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
# Live SMPTE bars moving 2 px left a frame, 320x240 at 15 FPS; rtpjpegpay takes 4:2:0 JPEG only.
raw = ("videotestsrc is-live=true pattern=smpte horizontal-speed=2 ! "
       "video/x-raw,format=I420,width=320,height=240,framerate=15/1")
encoders = {
    "/mjpeg": "jpegenc quality=90 ! rtpjpegpay name=pay0 pt=26",
    "/h264": ("x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! "
              "rtph264pay name=pay0 pt=96 config-interval=1"),
}
for path, encoder in encoders.items():
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( {raw} ! {encoder} )")
    factory.set_shared(True)
    factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)  # RTP inside the RTSP connection: no UDP ports
    server.get_mount_points().add_factory(path, factory)
if server.attach(None) == 0:
    sys.exit("cannot listen on 127.0.0.1:" + port)
print(server.get_bound_port(), flush=True)
loop = GLib.MainLoop()
GLib.timeout_add(int(lifetime * 1000), loop.quit)  # quits by itself
loop.run()
"""


class RtspServer:
    """gst-rtsp-server in a child process on 127.0.0.1 (port 0: any free one), ended on stop() or by itself."""

    def __init__(self, port: int = 0, lifetime: float = 120.0) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", RTSP_SERVER, str(port), str(lifetime)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline().strip() if ready else ""  # type: ignore[union-attr]
        if not line.isdigit():
            self.stop()
            err = self.proc.stderr.read()[-2000:] if self.proc.stderr else ""
            require(False, f"the RTSP server (gst-rtsp-server through python3-gi) did not start: {err.strip()}")
        self.port = int(line)

    def url(self, path: str) -> str:
        return f"rtsp://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def rtsp_server() -> Iterator[RtspServer]:
    require(HAVE_GSTREAMER, NO_GSTREAMER)
    server = RtspServer()
    yield server
    server.stop()


@pytest.fixture
def own_rtsp_server() -> Iterator[RtspServer]:
    """A server for one test, which may pause or kill it."""
    require(HAVE_GSTREAMER, NO_GSTREAMER)
    server = RtspServer(lifetime=60)
    yield server
    if server.proc.poll() is None:
        server.resume()
    server.stop()


DEPAY = {"/mjpeg": "rtpjpegdepay ! jpegdec", "/h264": "rtph264depay ! avdec_h264"}


def rtspsrc(url: str, path: str) -> str:
    return f"gst:rtspsrc location={url} protocols=tcp latency=0 ! {DEPAY[path]}"


def check_moving_bars(frames: list[Frame], width: int = 320) -> None:
    """Every frame is the server's bars, and they move on. Through a lossy codec the error is looser: this
    MJPEG path also turns 255/0 into about 235/12 (video range taken for full range), a mean error of 17."""
    shifts = []
    for frame in frames:
        check_frame(frame, 240, width)
        shift, error = scroll(frame.image)
        assert error < 25, f"frame {frame.index} does not look like the bars moved along (error {error:.1f})"
        assert bar_names(np.roll(frame.image, shift, axis=1)) == list(SMPTE_BARS)
        shifts.append(shift)
    steps = np.diff(np.unwrap(shifts, period=width)).round().astype(int)
    assert (steps >= 1).all(), f"a frame came twice, or the stream stood still: bars moved by {shifts} px"


@pytest.mark.parametrize("path", ["/mjpeg", "/h264"])
def test_rtsp_through_a_gst_rtspsrc_pipeline(rtsp_server: RtspServer, path: str) -> None:
    source = open_source(rtspsrc(rtsp_server.url(path), path), name=f"rtspsrc {path}")
    with capture(source) as cap:
        frames = frames_from(cap, 12)
        assert cap.state == "running"
    check_moving_bars(frames)
    assert source.fps == pytest.approx(15.0)


@pytest.mark.parametrize("path", ["/mjpeg", "/h264"])
def test_rtsp_url_through_edgefs_stream_source(rtsp_server: RtspServer, path: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``rtsp://`` is read by OpenCV's FFmpeg backend (Debian's python3-opencv has it beside GStreamer)."""
    require(opencv_has("FFMPEG"), "this OpenCV has no FFmpeg backend, which edgefs's rtsp:// source uses")
    monkeypatch.delenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", raising=False)  # transport=tcp sets it; put it back after
    source = open_source(rtsp_server.url(path), transport="tcp", timeout=5)
    assert isinstance(source, StreamSource) and source.live
    with capture(source) as cap:
        frames = frames_from(cap, 12)
        assert cap.state == "running"
    check_moving_bars(frames)


def test_rtsp_server_restart_is_reconnected(own_rtsp_server: RtspServer) -> None:
    """The server goes away mid-stream and comes back on the same port: the capture thread reports the drop,
    keeps trying, and frames flow again."""
    port = own_rtsp_server.port
    statuses: list[str] = []
    source = open_source(rtspsrc(own_rtsp_server.url("/h264"), "/h264"), name="cam")
    with capture(source, statuses, backoff=(0.1, 0.5)) as cap:
        frames_from(cap, 3)
        own_rtsp_server.stop()
        wait_until(lambda: cap.state == "reconnecting", 15, "the capture to notice the server is gone")
        again = RtspServer(port=port, lifetime=60)
        try:
            wait_until(lambda: cap.stats.reconnects >= 1 and cap.state == "running", 20, "a reconnect")
            later = frames_from(cap, 5)
        finally:
            again.stop()
    check_moving_bars(later)
    assert any("stopped delivering frames" in s for s in statuses if s.startswith("reconnecting")), statuses


def test_stalled_rtsp_stream_fails_within_its_timeout(own_rtsp_server: RtspServer,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The server stops sending but keeps the connection (SIGSTOP): edgefs's rtsp:// source raises after
    ``timeout`` s instead of hanging, so the capture thread can reopen it. (The timeout bounds the open too,
    and FFmpeg probes this H.264 stream for about 2 s: a timeout under that opens a capture that gives
    no frame.)"""
    require(opencv_has("FFMPEG"), "this OpenCV has no FFmpeg backend, which edgefs's rtsp:// source uses")
    monkeypatch.delenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", raising=False)
    timeout = 3.0
    source = open_source(own_rtsp_server.url("/h264"), transport="tcp", timeout=timeout)
    with source:
        for _ in range(3):
            assert source.read() is not None
        own_rtsp_server.pause()
        started = time.monotonic()
        with pytest.raises(SourceError, match="stopped sending frames"):
            for _ in range(500):  # frames already buffered come first
                assert source.read() is not None
        assert time.monotonic() - started < timeout + 3
