"""Sources read through ``cv2.VideoCapture``: V4L2 cameras, GStreamer (Jetson CSI), network streams, video files.

All of them hand over RGB (OpenCV decodes to BGR; it is converted here) and
raise :class:`~edgefs.camera.sources.SourceError` with what to check when the
device cannot be opened or stops delivering. A file's end is the end of the
stream (``read() -> None``); a camera or stream that returns no frame has failed
(a :class:`~edgefs.camera.capture.CaptureThread` reopens it with backoff).
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import sys
from abc import abstractmethod
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from edgefs.camera.sources import Source, SourceError, SourceOptions, register_source

_TO_RGB = {2: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}


def bgr_to_rgb(image: np.ndarray) -> np.ndarray:
    """OpenCV's uint8 BGR ``(H, W, 3)`` (or grey ``(H, W)``, BGRA ``(H, W, 4)``) -> a new RGB ``(H, W, 3)`` array."""
    channels = 2 if image.ndim == 2 else image.shape[2]
    if channels == 1:
        image, channels = image[:, :, 0], 2
    return cv2.cvtColor(image, _TO_RGB[channels])


@functools.cache
def opencv_has(backend: str) -> bool:
    """Whether this OpenCV build has a video I/O backend, e.g. ``"GStreamer"`` or ``"FFMPEG"``."""
    info = cv2.getBuildInformation()
    match = re.search(rf"^\s*{re.escape(backend)}:\s*(\S+)", info, re.MULTILINE | re.IGNORECASE)
    return bool(match) and match.group(1).upper() not in ("NO", "OFF")


class CaptureSource(Source):
    """A source read with ``cv2.VideoCapture``; subclasses say how to make the capture."""

    def __init__(self, name: str, *, live: bool, fps: float | None = None, pace_fps: float | None = None,
                 uri: str = "") -> None:
        super().__init__(name, live=live, fps=fps, pace_fps=pace_fps, uri=uri)
        self._cap: cv2.VideoCapture | None = None

    @abstractmethod
    def _make_capture(self) -> cv2.VideoCapture:
        """A new ``cv2.VideoCapture`` (opened or not)."""

    @abstractmethod
    def _cannot_open(self) -> SourceError:
        """The error for a capture that did not open: what to check."""

    def _no_frame(self) -> tuple[np.ndarray, str | None] | None:
        """``cap.read()`` gave nothing: None for the end of a file; cameras and streams raise."""
        raise SourceError(f"{self.name} stopped delivering frames (disconnected?); it will be reopened")

    def _after_open(self, cap: cv2.VideoCapture) -> None:
        """Settings once the capture is open (resolution, seeking)."""

    def _open(self) -> None:
        cap = self._make_capture()
        if not cap.isOpened():
            cap.release()
            raise self._cannot_open()
        reported = cap.get(cv2.CAP_PROP_FPS)
        if self.fps is None and 0 < reported < 1000:
            self.fps = float(reported)
        self._cap = cap
        self._after_open(cap)

    def _grab(self) -> np.ndarray | None:
        assert self._cap is not None
        try:
            ok, image = self._cap.read()
        except cv2.error as exc:
            raise SourceError(f"{self.name}: OpenCV failed to read a frame ({exc})") from exc
        return image if ok and image is not None and image.size else None

    def _next(self) -> tuple[np.ndarray, str | None] | None:
        image = self._grab()
        if image is None:
            return self._no_frame()
        return bgr_to_rgb(image), None

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


@register_source
class V4L2Source(CaptureSource):
    """A USB/V4L2 camera by index or device path, with ``CAP_V4L2`` on Linux (the default backend elsewhere).

    Options: ``width``, ``height``, ``fps`` (asked of the driver; it may pick the
    nearest mode it has), ``fourcc`` (e.g. ``MJPG``, which many USB cameras need for
    high resolutions at 30 FPS), ``buffer`` (driver buffers; default 1 so the frame
    read is the newest, not one queued seconds ago).
    """

    schemes = ("v4l2",)
    uri_forms = ("0 | /dev/video0 | v4l2:0?width=640&height=480&fps=30&fourcc=MJPG   a USB/V4L2 camera",)

    def __init__(self, device: int | str, *, name: str, uri: str, width: int | None = None,
                 height: int | None = None, fps: float | None = None, fourcc: str | None = None,
                 buffer: int = 1) -> None:
        super().__init__(name, live=True, fps=None, uri=uri)
        self.device = device
        self.width, self.height, self.request_fps = width, height, fps
        self.fourcc = fourcc
        self.buffer = buffer

    @classmethod
    def from_uri(cls, target: str, options: SourceOptions, *, uri: str, name: str | None) -> V4L2Source:
        text = target.strip()
        if re.fullmatch(r"\d+", text):
            device: int | str = int(text)
        elif re.fullmatch(r"/dev/video\d+", text) or text.startswith("/dev/"):
            device = text
        else:
            raise SourceError(f"v4l2 source {uri!r}: expected a camera index (0) or a device path (/dev/video0)",
                              retryable=False)
        fourcc = options.text("fourcc")
        if fourcc is not None and len(fourcc) != 4:
            raise SourceError(f"fourcc {fourcc!r} of {uri!r} must have 4 characters, e.g. MJPG or YUYV",
                              retryable=False)
        return cls(device, name=name or uri, uri=uri, width=options.integer("width", minimum=1),
                   height=options.integer("height", minimum=1), fps=options.number("fps", minimum=0.1),
                   fourcc=fourcc, buffer=options.integer("buffer", 1, minimum=1) or 1)

    def _describe(self) -> str:
        return f"/dev/video{self.device}" if isinstance(self.device, int) else str(self.device)

    def _make_capture(self) -> cv2.VideoCapture:
        if isinstance(self.device, str) and not Path(self.device).exists():
            raise SourceError(f"camera {self.device} does not exist (unplugged?); list cameras with "
                              "'ls /dev/video*' or 'v4l2-ctl --list-devices'")
        backend = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        return cv2.VideoCapture(self.device, backend)

    def _cannot_open(self) -> SourceError:
        return SourceError(
            f"cannot open camera {self._describe()}: check that it is plugged in ('ls /dev/video*', "
            "'v4l2-ctl --list-devices'), that your user is in the 'video' group, and that no other "
            "program is using it"
        )

    def _after_open(self, cap: cv2.VideoCapture) -> None:
        if self.fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.fourcc))
        if self.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.request_fps:
            cap.set(cv2.CAP_PROP_FPS, self.request_fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, self.buffer)
        reported = cap.get(cv2.CAP_PROP_FPS)
        if 0 < reported < 1000:
            self.fps = float(reported)

    def _no_frame(self) -> tuple[np.ndarray, str | None] | None:
        raise SourceError(f"camera {self._describe()} returned no frame: unplugged, or taken by another "
                          "program? ('v4l2-ctl --list-devices'); it will be reopened")


# nvvidconv flip-methods that turn the image by 90 degrees (width and height trade places).
_TURNING_FLIPS = (1, 3, 5, 7)


def jetson_csi_pipeline(sensor_id: int = 0, width: int = 1280, height: int = 720, fps: int = 30,
                        flip: int = 0, out_size: tuple[int, int] | None = None) -> str:
    """The GStreamer pipeline for a Jetson CSI camera (IMX219, IMX477...) through ``nvarguscamerasrc``.

    ``nvarguscamerasrc`` hands NV12 frames in NVMM (GPU) memory; ``nvvidconv`` scales
    and flips them on the VIC and copies them to system memory as BGRx;
    ``videoconvert`` drops the x; ``appsink drop=true max-buffers=1`` keeps only the
    newest frame so a slow reader never sees a stale one. For example::

        nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1,format=NV12
          ! nvvidconv flip-method=0 ! video/x-raw,width=1280,height=720,format=BGRx
          ! videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false

    It needs OpenCV built with GStreamer (JetPack's system OpenCV, ``python3-opencv``,
    is; the ``opencv-python`` wheels from PyPI are not) and the ``nvargus-daemon``
    service running (``sudo systemctl restart nvargus-daemon`` when the camera hangs).

    Args:
        sensor_id: the CSI port (0 or 1 on most carrier boards).
        width, height, fps: a sensor mode the camera has (``gst-inspect-1.0 nvarguscamerasrc``).
        flip: ``nvvidconv`` flip-method (0 none, 1 rotate 90 counter-clockwise, 2 rotate 180,
            3 rotate 90 clockwise, 4 horizontal flip, 5 upper-right diagonal, 6 vertical flip,
            7 upper-left diagonal).
        out_size: ``(width, height)`` of the frames handed over, scaled to on the VIC (default:
            the sensor size, turned for the flip-methods that turn the image by 90 degrees,
            1 3 5 7, so that a camera mounted sideways gives upright frames that are not squashed).
    """
    if not 0 <= flip <= 7:
        raise ValueError(f"flip-method {flip} of nvvidconv must be 0..7")
    ow, oh = out_size or ((height, width) if flip in _TURNING_FLIPS else (width, height))
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM),width={width},height={height},framerate={fps}/1,format=NV12 ! "
        f"nvvidconv flip-method={flip} ! video/x-raw,width={ow},height={oh},format=BGRx ! "
        "videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false"
    )


# Appended to a pipeline without an appsink. Live: keep only the newest frame (a slow reader never
# sees a stale one). Not live (a file): drop nothing; a full appsink holds the pipeline back instead.
_APPSINK_TAIL = " ! videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false"
_APPSINK_TAIL_ALL_FRAMES = " ! videoconvert ! video/x-raw,format=BGR ! appsink drop=false max-buffers=2 sync=false"


@functools.cache
def _gstreamer_library() -> ctypes.CDLL | None:
    """libgstreamer, initialised: the library OpenCV's GStreamer backend runs on (one per process);
    None where it cannot be loaded (no GStreamer, or not Linux)."""
    try:
        lib = ctypes.CDLL("libgstreamer-1.0.so.0")
        lib.gst_init_check.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        lib.gst_init_check.restype = ctypes.c_int
        lib.gst_element_factory_find.argtypes = [ctypes.c_char_p]
        lib.gst_element_factory_find.restype = ctypes.c_void_p
        lib.gst_object_unref.argtypes = [ctypes.c_void_p]
        return lib if lib.gst_init_check(None, None, None) else None
    except (OSError, AttributeError):
        return None


_ELEMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def gst_missing_elements(pipeline: str) -> list[str] | None:
    """The elements ``pipeline`` names that this GStreamer does not have (none: ``[]``), or None where
    GStreamer cannot be asked.

    Why ask: OpenCV (4.6 at least) waits forever on a pipeline whose source element does not
    exist (``csi:0`` on a machine without ``nvarguscamerasrc``) instead of failing. Only the first
    word of each ``!``-separated part is read (caps and pad references such as ``demux.`` are
    skipped), so an element this misses is left for OpenCV to refuse, as before.
    """
    lib = _gstreamer_library()
    if lib is None:
        return None
    missing = []
    for part in pipeline.split("!"):
        words = part.split()
        if not words or not _ELEMENT_NAME.fullmatch(words[0]):
            continue
        factory = lib.gst_element_factory_find(words[0].encode())
        if factory:
            lib.gst_object_unref(factory)
        elif words[0] not in missing:
            missing.append(words[0])
    return missing


_SHELL_SPECIAL = re.compile(r"[()<>;&|$`\\*?\[\]{}~#]")


def gst_launch_command(pipeline: str) -> str:
    """A shell command that runs ``pipeline`` on its own with ``gst-launch-1.0`` (gstreamer1.0-tools).

    ``appsink`` (only an application can empty it) becomes a bare ``fakesink``: appsink's
    properties (``drop=true max-buffers=1``) are not fakesink's, and gst-launch refuses
    them. Words the shell would choke on, such as the caps ``video/x-raw(memory:NVMM),...``,
    are single-quoted (words that have quotes of their own are left as written).
    """
    text = re.sub(r"\bappsink\b(?:\s+[\w-]+=\S+)*", "fakesink", pipeline.strip())
    words = [word if word == "!" or not _SHELL_SPECIAL.search(word) or "'" in word or '"' in word
             else f"'{word}'" for word in text.split()]
    return "gst-launch-1.0 " + " ".join(words)


@register_source
class GStreamerSource(CaptureSource):
    """Any GStreamer pipeline, opened with ``cv2.CAP_GSTREAMER``.

    The pipeline should end in ``appsink``; when it does not, ``videoconvert !
    video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false`` is
    appended (``drop=false max-buffers=2`` when not live, so that every frame of a
    file is handed over). For a Jetson CSI camera use ``csi:0`` (:class:`CsiSource`) or the
    pipeline from :func:`jetson_csi_pipeline`. Needs OpenCV built with GStreamer
    (``cv2.getBuildInformation()`` lists it under Video I/O); the PyPI wheels are
    built without it. A pipeline naming an element GStreamer does not have is refused
    before OpenCV sees it (:func:`gst_missing_elements`: OpenCV would wait on it forever).

    Options (keyword arguments only: the pipeline text is passed on untouched):
    ``live`` (default True; False for a ``filesrc`` pipeline whose end is the end of
    the stream).
    """

    schemes = ("gst",)
    uri_forms = ("gst:PIPELINE   a GStreamer pipeline ending in appsink (OpenCV built with GStreamer)",)
    parses_query = False

    def __init__(self, pipeline: str, *, name: str, uri: str, live: bool = True) -> None:
        super().__init__(name, live=live, uri=uri)
        text = pipeline.strip()
        if not text:
            raise SourceError(f"{uri!r}: the GStreamer pipeline is empty; e.g. gst:videotestsrc ! appsink",
                              retryable=False)
        self.pipeline = text if "appsink" in text else text + (_APPSINK_TAIL if live else _APPSINK_TAIL_ALL_FRAMES)

    @classmethod
    def from_uri(cls, target: str, options: SourceOptions, *, uri: str, name: str | None) -> GStreamerSource:
        return cls(target, name=name or uri, uri=uri, live=bool(options.flag("live", True)))

    def _make_capture(self) -> cv2.VideoCapture:
        if not opencv_has("GStreamer"):
            raise SourceError(
                f"{self.name} needs OpenCV built with GStreamer, and this one ({cv2.__version__}) is not "
                "(cv2.getBuildInformation(), Video I/O). On a Jetson use JetPack's OpenCV (python3-opencv) "
                "instead of the opencv-python wheel: pip uninstall opencv-python opencv-python-headless",
                retryable=False,
            )
        missing = gst_missing_elements(self.pipeline)
        if missing:
            where = ("; nvarguscamerasrc and nvvidconv come with JetPack on a Jetson (nvidia-l4t-gstreamer): "
                     "there is no CSI camera elsewhere" if any(name.startswith("nv") for name in missing) else
                     "; install the GStreamer plugin package that has it (gstreamer1.0-plugins-good, -bad, "
                     "-ugly or gstreamer1.0-libav on Debian/Ubuntu), or check the name")
            raise SourceError(
                f"GStreamer has no element {', '.join(missing)} for the pipeline of {self.name} (check with "
                f"'gst-inspect-1.0 {missing[0]}'){where}", retryable=False,
            )
        return cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER)

    def _cannot_open(self) -> SourceError:
        return SourceError(
            f"GStreamer could not start the pipeline {self.pipeline!r} (for a CSI camera check that "
            "nvargus-daemon runs, sudo systemctl restart nvargus-daemon, and that the sensor mode exists); "
            f"run it on its own to see why: {gst_launch_command(self.pipeline)}"
        )

    def _no_frame(self) -> tuple[np.ndarray, str | None] | None:
        if not self.live:
            return None
        raise SourceError(f"the GStreamer pipeline of {self.name} stopped delivering frames; it will be reopened")


@register_source
class CsiSource(GStreamerSource):
    """A Jetson CSI camera: ``csi:SENSOR_ID?width=1280&height=720&fps=30&flip=0&out=640x360``.

    Builds the pipeline of :func:`jetson_csi_pipeline` (see it for what it needs).
    """

    schemes = ("csi",)
    uri_forms = ("csi:0?width=1280&height=720&fps=30&flip=0&out=640x360   a Jetson CSI camera (nvarguscamerasrc)",)
    parses_query = True

    @classmethod
    def from_uri(cls, target: str, options: SourceOptions, *, uri: str, name: str | None) -> CsiSource:
        sensor = target.strip() or "0"
        if not sensor.isdigit():
            raise SourceError(f"{uri!r}: the CSI sensor id must be a number (csi:0)", retryable=False)
        fps = options.integer("fps", 30, minimum=1) or 30
        flip = options.integer("flip", 0, minimum=0) or 0
        if flip > 7:
            raise SourceError(f"flip={flip} of {uri!r}: nvvidconv's flip-method is 0..7 (0 none, 1 rotate 90 "
                              "counter-clockwise, 2 rotate 180, 3 rotate 90 clockwise, 4 horizontal flip, "
                              "5 upper-right diagonal, 6 vertical flip, 7 upper-left diagonal)", retryable=False)
        pipeline = jetson_csi_pipeline(
            int(sensor), options.integer("width", 1280, minimum=1) or 1280,
            options.integer("height", 720, minimum=1) or 720, fps, flip, options.size("out"),
        )
        source = cls(pipeline, name=name or uri, uri=uri)
        source.fps = float(fps)
        return source


def redact_url(url: str) -> str:
    """``rtsp://user:secret@host/x`` -> ``rtsp://user:***@host/x`` (names go to logs and JSONL)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


@register_source
class StreamSource(CaptureSource):
    """An RTSP or HTTP(S) stream (IP cameras, MJPEG over HTTP, HLS) read with FFmpeg (``cv2.CAP_FFMPEG``).

    Options (keyword arguments only: the URL's own query is passed on untouched):
    ``timeout`` seconds to open and between frames (default 5; a stalled stream
    then fails and is reopened instead of hanging), ``transport`` ``tcp`` or ``udp``
    for RTSP (sets ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` for the whole process; tcp
    helps over lossy Wi-Fi), ``live`` (default True; False for a recorded file over
    HTTP, whose end is then the end of the stream).
    """

    schemes = ("rtsp", "rtsps", "http", "https")
    uri_forms = ("rtsp://[user:pass@]host[:port]/path | http(s)://...   a network stream (FFmpeg)",)
    parses_query = False

    def __init__(self, url: str, *, name: str, uri: str, timeout: float = 5.0, transport: str | None = None,
                 live: bool = True) -> None:
        super().__init__(name, live=live, uri=uri)
        self.url = url
        self.timeout = timeout
        self.transport = transport

    @classmethod
    def from_uri(cls, target: str, options: SourceOptions, *, uri: str, name: str | None) -> StreamSource:
        transport = options.text("transport")
        if transport is not None and transport not in ("tcp", "udp"):
            raise SourceError(f"transport={transport!r} of {redact_url(uri)}: use tcp or udp", retryable=False)
        return cls(target, name=name or redact_url(uri), uri=redact_url(uri),
                   timeout=options.number("timeout", 5.0, minimum=0.1) or 5.0, transport=transport,
                   live=bool(options.flag("live", True)))

    def _make_capture(self) -> cv2.VideoCapture:
        if self.transport:
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = f"rtsp_transport;{self.transport}"
        ms = int(self.timeout * 1000)
        params = []
        for prop in ("CAP_PROP_OPEN_TIMEOUT_MSEC", "CAP_PROP_READ_TIMEOUT_MSEC"):
            if hasattr(cv2, prop):  # OpenCV >= 4.6
                params += [getattr(cv2, prop), ms]
        return cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, params)

    def _cannot_open(self) -> SourceError:
        return SourceError(
            f"cannot open stream {self.name}: check the address and credentials (try it with "
            f"'ffprobe {self.name}'), that the camera is reachable (ping), and for RTSP over a lossy "
            "network try transport=tcp"
        )

    def _no_frame(self) -> tuple[np.ndarray, str | None] | None:
        if not self.live:
            return None
        raise SourceError(f"stream {self.name} stopped sending frames (network drop, or the server closed it); "
                          "it will be reopened")


@register_source
class FileSource(CaptureSource):
    """A video file (``.mp4 .avi .mkv .mov ...``, whatever OpenCV's backends decode).

    Not live by default: every frame is handed over, as fast as it is read, and
    the end of the file is the end of the stream. Options: ``fps`` plays the file
    at that rate (then it is live: it pretends to be a camera), ``realtime=1`` at
    its own rate, ``loop=1`` starts over at the end (frame indices count on),
    ``live`` overrides what ``fps``/``realtime`` imply.

    Reopening (after a failure) resumes at the next frame.
    """

    schemes = ("file",)
    uri_forms = ("clip.mp4 | file:PATH?fps=30&loop=1&realtime=1   a video file (fps= plays it as if live)",)

    def __init__(self, path: str | Path, *, name: str, uri: str, pace_fps: float | None = None,
                 realtime: bool = False, loop: bool = False, live: bool | None = None) -> None:
        paced = bool(pace_fps) or realtime
        super().__init__(name, live=paced if live is None else live, fps=pace_fps, pace_fps=pace_fps, uri=uri)
        self.path = Path(path)
        self.realtime = realtime
        self.loop = loop
        self.frame_count: int | None = None
        self._pos = 0  # next frame of the file

    @classmethod
    def from_uri(cls, target: str, options: SourceOptions, *, uri: str, name: str | None) -> FileSource:
        path = Path(target).expanduser()
        if not path.exists():
            raise SourceError(f"no such video file: {path}; check the path", retryable=False)
        if path.is_dir():
            raise SourceError(f"{path} is a folder, not a video file; give it without 'file:' to read its images",
                              retryable=False)
        return cls(path, name=name or uri, uri=uri, pace_fps=options.number("fps", minimum=0.01),
                   realtime=bool(options.flag("realtime", False)), loop=bool(options.flag("loop", False)),
                   live=options.flag("live"))

    def _make_capture(self) -> cv2.VideoCapture:
        if not self.path.is_file():
            raise SourceError(f"video file {self.path} is gone; check the path", retryable=False)
        return cv2.VideoCapture(str(self.path), cv2.CAP_ANY)

    def _cannot_open(self) -> SourceError:
        return SourceError(
            f"cannot decode video file {self.path}: check it plays ('ffprobe {self.path}'), or convert it "
            f"with 'ffmpeg -i {self.path} -c:v libx264 out.mp4'", retryable=False,
        )

    def _after_open(self, cap: cv2.VideoCapture) -> None:
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = count if count > 0 else None
        if self.realtime and not self.pace_fps:
            self.pace_fps = self.fps or 30.0
        if self._pos:
            self._seek(cap, self._pos)

    def _seek(self, cap: cv2.VideoCapture, pos: int) -> None:
        # Seeking by frame number is exact for intra-only codecs and for FFmpeg (it decodes from the
        # previous key frame); a backend that cannot seek is read forward instead.
        if not cap.set(cv2.CAP_PROP_POS_FRAMES, pos) or int(cap.get(cv2.CAP_PROP_POS_FRAMES)) != pos:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            for _ in range(pos):
                if not cap.grab():
                    break

    def _next(self) -> tuple[np.ndarray, str | None] | None:
        image = self._grab()
        if image is None and self.loop and self._pos > 0:
            assert self._cap is not None
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self._pos = 0
            image = self._grab()
        if image is None:
            return None
        self._pos += 1
        return bgr_to_rgb(image), None
