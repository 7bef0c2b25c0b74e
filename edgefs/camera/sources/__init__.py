"""Camera sources: the :class:`Source` contract, the registry by URI scheme and :func:`open_source`.

A source hands over :class:`Frame` objects one at a time: uint8 RGB images with
the capture time, a per-source index and (for the synthetic camera and labelled
image folders) the ground-truth label. Sources are named by URIs:

==================================  =======================================================
``synthetic:DIR?classes=a,b&fps=30``  renders classes of an ImageFolder (:mod:`.synthetic`)
``0``, ``/dev/video0``, ``v4l2:0``   a USB/V4L2 camera (:mod:`.video`)
``csi:0?width=1280&height=720``      a Jetson CSI camera through GStreamer's nvarguscamerasrc
``gst:PIPELINE``                     any GStreamer pipeline ending in appsink
``rtsp://...``, ``http(s)://...``    a network stream (FFmpeg)
``clip.mp4``, ``file:PATH``          a video file (``fps=`` paces it like a live camera)
``DIR``, ``folder:DIR``              an image folder, sorted; class sub-folders give labels
``flaky:fail_after=N,fail_opens=M:URI``  wraps any source and fails on purpose (demos, tests)
==================================  =======================================================

Options come from the URI's query string (``?key=value&...``, not for network
streams or GStreamer pipelines, whose text is passed on untouched) and from the
keyword arguments of :func:`open_source`, which win. ``name=`` names any source
(default: its URI, with a stream's password hidden). An option a source does not
know is an error that lists the ones it does.

Each kind of source is one module of this package whose class carries
``@register_source`` (it registers the class under each of its ``schemes``);
:data:`SOURCES` imports the modules on its first lookup, so the list of URI forms in
errors and help texts comes from the registry and no list of modules exists.

Device side: NumPy and OpenCV only (DESIGN.md rule 1).
"""

from __future__ import annotations

import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qsl

import numpy as np

from edgefs.errors import EdgefsError
from edgefs.imagefile import IMAGE_SUFFIXES
from edgefs.registry import Registry

# The same suffixes the data readers take (edgefs.data.images); repeated here because the
# device side may not import the workstation's data package (DESIGN.md rule 1).
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".h264", ".ts"})


@dataclass(frozen=True, eq=False)
class Frame:
    """One frame from a source.

    Attributes:
        image: uint8 ``(H, W, 3)`` RGB, C-contiguous; owned by the frame (never reused
            by the source).
        timestamp: ``time.monotonic()`` when the frame was captured.
        index: 0, 1, 2... frames delivered by this source, counting on across reopens.
        source: the source's name.
        label: the ground truth (synthetic camera; image folders laid out as class
            folders), else None.
        read_ms: wall time the source spent producing the frame (grab and decode, or
            render), not counting a paced wait; the camera loop's ``capture`` stage.
        prepared: ``image`` already made into the engine's input by the reader's
            preprocessing (the camera loop does this on the capture thread), or None.
    """

    image: np.ndarray
    timestamp: float
    index: int
    source: str
    label: str | None = None
    read_ms: float = 0.0
    prepared: np.ndarray | None = None


class SourceError(EdgefsError):
    """A source that cannot be opened or stopped delivering; the message says what to check.

    Attributes:
        retryable: False when reopening cannot help (a file that does not exist, a
            build of OpenCV without the needed backend); :class:`CaptureThread` then
            gives up at once instead of retrying.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class SourceOptions:
    """Options of one source (query string and keyword arguments), read with type checks.

    Each getter removes the key it reads; :meth:`finish` refuses the keys no getter
    asked for, naming the ones the source takes.
    """

    def __init__(self, values: Mapping[str, object], where: str) -> None:
        self._values = dict(values)
        self._asked: list[str] = []
        self.where = where

    def _take(self, key: str) -> object | None:
        if key not in self._asked:
            self._asked.append(key)
        return self._values.pop(key, None)

    def given(self, key: str) -> bool:
        """Whether ``key`` was given (without consuming it)."""
        return key in self._values

    def setdefault(self, key: str, value: object) -> None:
        """Give ``key`` a value unless it was given already (keyword arguments win)."""
        self._values.setdefault(key, value)

    def _bad(self, key: str, value: object, expected: str) -> SourceError:
        return SourceError(f"option {key}={value!r} of {self.where} must be {expected}", retryable=False)

    def text(self, key: str, default: str | None = None) -> str | None:
        value = self._take(key)
        return default if value is None else str(value)

    def integer(self, key: str, default: int | None = None, minimum: int | None = None) -> int | None:
        value = self._take(key)
        if value is None:
            return default
        try:
            number = int(str(value))
        except ValueError:
            raise self._bad(key, value, "an integer") from None
        if minimum is not None and number < minimum:
            raise self._bad(key, value, f"an integer >= {minimum}")
        return number

    def number(self, key: str, default: float | None = None, minimum: float | None = None,
               maximum: float | None = None) -> float | None:
        value = self._take(key)
        if value is None:
            return default
        try:
            number = float(str(value))
        except ValueError:
            raise self._bad(key, value, "a number") from None
        if not np.isfinite(number) or (minimum is not None and number < minimum) or (
                maximum is not None and number > maximum):
            lo = "-inf" if minimum is None else f"{minimum:g}"
            hi = "inf" if maximum is None else f"{maximum:g}"
            raise self._bad(key, value, f"a number in [{lo}, {hi}]")
        return number

    def flag(self, key: str, default: bool | None = None) -> bool | None:
        value = self._take(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise self._bad(key, value, "1/0, true/false or yes/no")

    def size(self, key: str, default: tuple[int, int] | None = None) -> tuple[int, int] | None:
        """``WIDTHxHEIGHT`` (or a ``(width, height)`` pair) -> ``(width, height)``."""
        value = self._take(key)
        if value is None:
            return default
        if isinstance(value, (tuple, list)) and len(value) == 2:
            w, h = value
        else:
            match = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", str(value))
            if not match:
                raise self._bad(key, value, "WIDTHxHEIGHT, e.g. 320x240")
            w, h = match.groups()
        if int(w) < 8 or int(h) < 8:
            raise self._bad(key, value, "at least 8x8 pixels")
        return int(w), int(h)

    def names(self, key: str) -> list[str] | None:
        """A comma-separated list (or a list) -> list of non-empty stripped strings."""
        value = self._take(key)
        if value is None:
            return None
        items = value if isinstance(value, (list, tuple)) else str(value).split(",")
        return [str(item).strip() for item in items if str(item).strip()]

    def finish(self) -> None:
        """Raise for options nobody asked for (typos), listing the valid ones."""
        if self._values:
            unknown = ", ".join(sorted(self._values))
            valid = ", ".join(sorted(self._asked)) or "none"
            raise SourceError(f"unknown option(s) {unknown} for {self.where}; valid options: {valid}",
                              retryable=False)


class Source(ABC):
    """Where frames come from: a camera, a stream, a file, a folder or the synthetic camera.

    Subclasses implement :meth:`_open`, :meth:`_next` and :meth:`_close`; this class
    numbers the frames, stamps them, paces sources given a frame rate to play
    (``pace_fps``) and makes :meth:`read` safe to call only while open.

    A source is not thread-safe: one thread reads it (a :class:`CaptureThread`).
    :meth:`interrupt` is the exception: any thread may call it.

    Reopening resumes where reading stopped: the next frame of a file or folder,
    the next frame index of the synthetic camera; cameras and streams go on live.

    Attributes:
        name: the source's name (its URI unless given one).
        live: True for cameras, streams and paced sources (frames go stale: a reader
            that falls behind should drop old ones); False for files and folders
            (every frame can be processed).
        fps: the nominal frame rate if known, else None.
        uri: the URI the source was made from.
    """

    schemes: ClassVar[tuple[str, ...]] = ()
    uri_forms: ClassVar[tuple[str, ...]] = ()  # one line per form, for help and error texts
    parses_query: ClassVar[bool] = True

    def __init__(self, name: str, *, live: bool, fps: float | None = None, pace_fps: float | None = None,
                 uri: str = "") -> None:
        self.name = name
        self.live = live
        self.fps = fps
        self.uri = uri or name
        self.pace_fps = pace_fps
        self._count = 0
        self._opened = False
        self._due: float | None = None
        self._wake = threading.Event()

    @classmethod
    @abstractmethod
    def from_uri(cls, target: str, options: SourceOptions, *, uri: str, name: str | None) -> Source:
        """Make the source (unopened) from the URI without its scheme, and its options."""

    # ---- to implement -----------------------------------------------------------------
    @abstractmethod
    def _open(self) -> None:
        """Acquire the device/file; raise :class:`SourceError` with what to check."""

    @abstractmethod
    def _next(self) -> tuple[np.ndarray, str | None] | None:
        """The next ``(uint8 (H, W, 3) RGB C-contiguous image, label)``, or None at the end."""

    @abstractmethod
    def _close(self) -> None:
        """Release what :meth:`_open` acquired; must not raise."""

    # ---- what a source may know about its scene (the synthetic camera does) ------------
    def present(self, label: str | None) -> bool:
        """Show ``label`` until released with ``None``, as a user holds an object up to enroll it.
        True when this source can (a rendered camera showing that class); a real camera cannot."""
        return False

    def scene(self) -> dict[str, object] | None:
        """What the source shows, when it knows (the synthetic camera): ``showing``, ``held`` ...; else None."""
        return None

    # ---- the contract -------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._opened

    def open(self) -> None:
        """Open the source (a no-op when open).

        Raises:
            SourceError: it cannot be opened; the message says what to check.
        """
        if self._opened:
            return
        self._wake.clear()
        self._due = None
        self._open()
        self._opened = True

    def read(self) -> Frame | None:
        """The next frame, or None at the end of a file, folder or finite synthetic stream.

        A paced source (``fps=`` on a file, folder or the live synthetic camera) waits
        until the frame is due; when the reader is late it hands the frame over at once
        and does not burst to catch up.

        Raises:
            SourceError: the source failed (a camera unplugged, a stream dropped) or is not open.
        """
        if not self._opened:
            raise SourceError(f"source {self.name} is not open; call open() first (or reopen() after a failure)")
        started = time.perf_counter()
        got = self._next()
        if got is None:
            return None
        read_ms = (time.perf_counter() - started) * 1e3
        image, label = got
        if self.pace_fps:
            self._pace(1.0 / self.pace_fps)
        frame = Frame(image, time.monotonic(), self._count, self.name, label, read_ms)
        self._count += 1
        return frame

    def close(self) -> None:
        """Release the source; safe to call twice."""
        if self._opened:
            self._opened = False
            self._close()

    def reopen(self) -> None:
        """Close and open again (after a failure); resumes where reading stopped.

        Raises:
            SourceError: it cannot be opened.
        """
        self.close()
        self.open()

    def interrupt(self) -> None:
        """Cut short a paced wait inside :meth:`read` (from any thread), so a reader can stop."""
        self._wake.set()

    @property
    def frames_delivered(self) -> int:
        """Frames :meth:`read` has returned so far."""
        return self._count

    def _pace(self, period: float) -> None:
        now = time.monotonic()
        if self._due is None:
            self._due = now
        delay = self._due - now
        if delay > 0:
            self._wake.wait(delay)
        elif -delay > period:
            self._due = now  # fell behind by more than a frame: restart the schedule, no catch-up burst
        self._due += period

    def __enter__(self) -> Source:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self._opened else "closed"
        return f"{type(self).__name__}({self.name!r}, live={self.live}, fps={self.fps}, {state})"


#: Source classes by URI scheme; finds the modules of this package (they import this one) on first lookup.
SOURCES: Registry[type[Source]] = Registry("camera source", package="edgefs.camera.sources")


def register_source(cls: type[Source]) -> type[Source]:
    """Class decorator: register ``cls`` under each of its ``schemes`` (duplicates refused)."""
    for scheme in cls.schemes:
        SOURCES.register(scheme)(cls)
    return cls


def source_forms() -> list[str]:
    """One line per URI form of every registered source, for help and error texts."""
    seen: list[type[Source]] = []
    for scheme in SOURCES:
        cls = SOURCES.get(scheme)
        if cls not in seen:
            seen.append(cls)
    return [form for cls in seen for form in cls.uri_forms]


def _forms_text() -> str:
    return "valid sources:\n  " + "\n  ".join(source_forms())


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):(.*)$", re.DOTALL)  # 2+ letters: not a drive letter


def split_query(target: str) -> tuple[str, dict[str, str]]:
    """``"path?a=1&b=2"`` -> ``("path", {"a": "1", "b": "2"})``; a path that exists as given is kept whole."""
    if "?" not in target or Path(target).exists():
        return target, {}
    base, _, query = target.partition("?")
    try:
        # '+' is literal here (class names such as greek/U+03B1), not a form-encoded space.
        pairs = parse_qsl(query.replace("+", "%2B"), keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise SourceError(f"cannot read the options {query!r}: write them as ?key=value&key=value",
                          retryable=False) from None
    return base, dict(pairs)


def resolve_uri(uri: str) -> tuple[str, str]:
    """The scheme a URI names and the rest: ``"0"`` -> ``("v4l2", "0")``, ``"a.mp4"`` -> ``("file", "a.mp4")``.

    Raises:
        SourceError: an unknown scheme, or a path that does not exist (the message
            lists the valid forms / names the path).
    """
    text = uri.strip()
    if not text:
        raise SourceError("empty source; " + _forms_text(), retryable=False)
    if re.fullmatch(r"\d+", text) or re.fullmatch(r"/dev/video\d+(\?.*)?", text, re.DOTALL):
        return "v4l2", text
    match = _SCHEME.match(text)
    if match and not Path(text).exists():
        scheme, rest = match.group(1).lower(), match.group(2)
        if scheme in SOURCES:
            # Network URLs keep their scheme: the stream source needs the whole URL.
            return scheme, text if rest.startswith("//") and scheme in ("rtsp", "rtsps", "http", "https") else rest
        raise SourceError(f"unknown source scheme {scheme!r} in {uri!r}; " + _forms_text(), retryable=False)
    path_text = split_query(text)[0]
    path = Path(path_text).expanduser()
    if path.is_dir():
        return "folder", text
    if path.is_file():
        return ("folder" if path.suffix.lower() in IMAGE_SUFFIXES else "file"), text
    if path.suffix.lower() in VIDEO_SUFFIXES | IMAGE_SUFFIXES or "/" in path_text or "\\" in path_text:
        raise SourceError(f"no such file or folder: {path_text}; check the path (a video file, an image "
                          "folder, or a camera such as 0 or /dev/video0)", retryable=False)
    raise SourceError(f"cannot tell what source {uri!r} is; " + _forms_text(), retryable=False)


def open_source(uri: str | Path, **options: object) -> Source:
    """Make the source a URI names; it is **not opened yet** (call ``open()`` or use ``with``).

    Args:
        uri: a URI in one of the forms of the module docstring (a ``Path`` is a file/folder).
        **options: source options (``fps=30``, ``classes=["a", "b"]``, ``name="cam1"``...);
            they override the URI's query string.

    Returns:
        The unopened :class:`Source`.

    Raises:
        SourceError: an unknown scheme (the message lists the valid forms), a missing
            file or folder (named), an unknown option or a bad option value.
    """
    text = str(uri)
    scheme, rest = resolve_uri(text)
    cls = SOURCES.get(scheme)
    query: dict[str, str] = {}
    if cls.parses_query:
        rest, query = split_query(rest)
    opts = SourceOptions({**query, **options}, f"source {text!r}")
    name = opts.text("name")
    source = cls.from_uri(rest, opts, uri=text, name=name)
    opts.finish()
    return source
