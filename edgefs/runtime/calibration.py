"""Calibration images for INT8 engines (and held-out images for parity), as the camera would give them.

A source is a folder of images (read recursively, in sorted order, then shuffled
with a seed), an ImageFolder (the same, and each image's class is its folder,
so parity can score few-shot episodes), or a video file (frames spread evenly
over its whole length). Every image goes through the runtime's own
preprocessing (:func:`edgefs.runtime.preprocess.fit_frame`: centre crop and
resize to the bundle's input size, BGR -> RGB), so the engine is calibrated on
exactly what it will see.

Every image file is read through :mod:`edgefs.imagefile`: no further than
:data:`edgefs.limits.MAX_IMAGE_FILE_BYTES`, and its header checked against
:data:`edgefs.limits.MAX_IMAGE_PIXELS` before it is decoded. A file over either
(or a link to a device, or a file that cannot be read) stops the source with its
name (:class:`CalibrationImageRefused`), since the folder is not the camera images
it should be; a file that is not an image, or that OpenCV cannot decode, is skipped
with a warning.

NumPy and OpenCV only: no PyTorch, no TensorRT. This module is fully tested on
CPU machines.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgefs.errors import EdgefsError
from edgefs.imagefile import ImageRefused, check_image_bytes, image_dimensions, read_image_bytes

# The same suffixes the data readers take (edgefs.data.images); repeated here because the
# device runtime may not import the workstation's data package (DESIGN.md, rule 1).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".h264", ".ts"})


class CalibrationError(EdgefsError):
    """A calibration source that cannot give the images asked for."""


class CalibrationImageRefused(CalibrationError):
    """A calibration image that is not read: over :mod:`edgefs.limits`, not a regular file, or unreadable."""


def _refused(exc: ImageRefused) -> CalibrationImageRefused:
    return CalibrationImageRefused(f"calibration image {exc}; remove or replace it (or calibrate on another folder)")


def _fit(frame: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    # Imported here: preprocess is the runtime's single definition of frame -> engine input.
    from edgefs.runtime.preprocess import fit_frame

    return fit_frame(frame, size, mode=mode, input_order="BGR")  # type: ignore[arg-type]


@dataclass
class CalibrationSource:
    """Where calibration images come from; open one with :func:`open_calibration_source`.

    Attributes:
        kind: ``"folder"``, ``"imagefolder"`` or ``"video"``.
        path: the folder or video file.
        size: ``(height, width)`` of the images it gives.
        mode: the preprocessing mode (see :mod:`edgefs.runtime.preprocess`).
        items: image files in (seeded) shuffled order, or the video's frame count as
            ``[0, ..., frames - 1]``.
        labels: int64 ``(len(items),)`` class of each file (``"imagefolder"`` only).
        class_names: the folder of each class relative to ``path`` (``"imagefolder"`` only).
        consumed: how many of ``items`` the last :meth:`batches` run read (folders);
            :meth:`held_out` starts after them.
    """

    kind: str
    path: Path
    size: tuple[int, int]
    mode: str = "center_crop"
    items: list[Path] | list[int] = field(default_factory=list)
    labels: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    consumed: int = 0
    warn: Callable[[str], None] = field(default=lambda msg: warnings.warn(msg, stacklevel=3), repr=False)

    def __len__(self) -> int:
        return len(self.items)

    def describe(self) -> dict[str, object]:
        """What to record in an engine header."""
        doc: dict[str, object] = {"kind": self.kind, "path": str(self.path), "items": len(self.items),
                                  "mode": self.mode}
        if self.class_names:
            doc["classes"] = len(self.class_names)
        return doc

    # -- reading ------------------------------------------------------------------------------
    def _read_file(self, path: Path) -> np.ndarray | None:
        """One image file, fitted to the engine input; None (with a warning) when it is not an image.

        Raises:
            CalibrationImageRefused: a file over :data:`edgefs.limits.MAX_IMAGE_FILE_BYTES` or
                :data:`edgefs.limits.MAX_IMAGE_PIXELS`, not a regular file, unreadable, or whose
                header declares no pixels; checked before anything is decoded.
        """
        name = str(path)
        try:
            data = read_image_bytes(path, name)
        except ImageRefused as exc:
            raise _refused(exc) from None
        try:
            check_image_bytes(data, name)
        except ImageRefused as exc:
            if image_dimensions(data) is not None:  # a header over the pixel limit, or of no pixels
                raise _refused(exc) from None
            self.warn(f"skipping unreadable calibration image {exc}")  # not an image: skipped, like an undecodable one
            return None
        try:
            frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        except cv2.error:
            frame = None
        if frame is None:
            self.warn(f"skipping unreadable calibration image {path}")
            return None
        return _fit(frame, self.size, self.mode)

    def _video_frames(self, indices: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Decode the video once, front to back, giving the frames at ``indices`` (sorted).

        Sequential decoding instead of seeking: seeking is inexact for many codecs, and
        calibration reads each video once.
        """
        wanted = set(int(i) for i in indices)
        capture = cv2.VideoCapture(str(self.path))
        try:
            index, last = 0, max(wanted, default=-1)
            while index <= last:
                if not capture.grab():
                    missing = sorted(i for i in wanted if i >= index)
                    if missing:
                        self.warn(f"{self.path} ended at frame {index}; {len(missing)} sampled frames were not read")
                    return
                if index in wanted:
                    ok, frame = capture.retrieve()
                    if ok and frame is not None:
                        yield index, _fit(frame, self.size, self.mode)
                    else:
                        self.warn(f"skipping undecodable frame {index} of {self.path}")
                index += 1
        finally:
            capture.release()

    def _even_frames(self, count: int, offset: float = 0.0) -> np.ndarray:
        """``count`` frame indices spread evenly over the video; ``offset`` in [0, 1) shifts them by
        that fraction of the spacing (0.5 falls halfway between the frames of ``offset=0``)."""
        frames = len(self.items)
        count = min(count, frames)
        step = frames / count
        return np.unique(np.minimum(frames - 1, np.floor((np.arange(count) + offset) * step)).astype(np.int64))

    # -- public ---------------------------------------------------------------------------------
    def batches(self, count: int, batch_size: int) -> Iterator[np.ndarray]:
        """Calibration batches: ``count // batch_size`` full batches (TensorRT calibrates on full batches).

        Folders read their shuffled files in order, replacing an unreadable file by the
        next one; videos read ``count`` frames spread evenly over the whole video.

        Yields:
            uint8 ``(batch_size, H, W, 3)`` RGB, C-contiguous.

        Raises:
            CalibrationError: ``count`` or ``batch_size`` below 1, or fewer images than one
                batch (at once); fewer *readable* images than one batch (while iterating).
            CalibrationImageRefused: (while iterating) an image file over :mod:`edgefs.limits`,
                named, before it is decoded.
        """
        if batch_size < 1 or count < 1:
            raise CalibrationError(f"calibration needs count >= 1 and batch_size >= 1, got {count}, {batch_size}")
        wanted = (min(count, len(self.items)) // batch_size) * batch_size
        if wanted == 0:
            raise CalibrationError(
                f"{self.path} holds {len(self.items)} images, fewer than one calibration batch of {batch_size}; "
                "add images or lower --max-batch"
            )
        if count > len(self.items):
            self.warn(f"{self.path} holds {len(self.items)} images; calibrating on {wanted}, not {count}")
        return self._batches(wanted, batch_size)

    def _batches(self, wanted: int, batch_size: int) -> Iterator[np.ndarray]:
        h, w = self.size
        batch = np.empty((batch_size, h, w, 3), np.uint8)
        filled = given = 0
        for image in self._stream(wanted):
            batch[filled] = image
            filled += 1
            if filled == batch_size:
                yield batch.copy()
                given += 1
                filled = 0
                if given * batch_size >= wanted:
                    return
        if given == 0:
            raise CalibrationError(
                f"{self.path} gave fewer readable images than one calibration batch of {batch_size}; "
                "add readable images or lower --max-batch"
            )

    def _stream(self, wanted: int) -> Iterator[np.ndarray]:
        if self.kind == "video":
            for _, image in self._video_frames(self._even_frames(wanted)):
                yield image
            return
        self.consumed = 0
        for i, path in enumerate(self.items):
            self.consumed = i + 1
            image = self._read_file(path)  # type: ignore[arg-type]
            if image is not None:
                yield image

    def held_out(self, count: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Images for the parity check, kept apart from calibration where the source allows.

        Folders: the files after those :meth:`batches` read (in shuffled order), so none was
        seen in calibration; videos: frames halfway between the calibration frames.

        Returns:
            ``(images uint8 (n, H, W, 3), labels int64 (n,) or None)``; ``n <= count``, and
            ``n`` is 0 when the source has nothing left.

        Raises:
            CalibrationImageRefused: an image file over :mod:`edgefs.limits`, named, before it is decoded.
        """
        h, w = self.size
        images: list[np.ndarray] = []
        labels: list[int] = []
        if self.kind == "video":
            for _, image in self._video_frames(self._even_frames(count, offset=0.5)):
                images.append(image)
        else:
            for i in range(self.consumed, len(self.items)):
                if len(images) == count:
                    break
                image = self._read_file(self.items[i])  # type: ignore[arg-type]
                if image is not None:
                    images.append(image)
                    if self.labels is not None:
                        labels.append(int(self.labels[i]))
        stack = np.stack(images) if images else np.empty((0, h, w, 3), np.uint8)
        return stack, (np.asarray(labels, np.int64) if self.labels is not None else None)


def _list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def open_calibration_source(
    source: str | Path,
    size: int | tuple[int, int],
    seed: int = 0,
    mode: str = "center_crop",
    warn: Callable[[str], None] | None = None,
) -> CalibrationSource:
    """Open a folder, an ImageFolder or a video file as a calibration source.

    Args:
        source: a folder (searched recursively for images) or a video file.
        size: the bundle's input side ``S`` or ``(height, width)``.
        seed: the shuffle seed for folders (same seed, same images, same order).
        mode: the preprocessing mode, as the runtime uses it.
        warn: where warnings go (skipped files, short sources); default ``warnings.warn``.

    Returns:
        the source. A folder whose images all sit in sub-folders, at least two of them,
        is an ``"imagefolder"`` and carries labels.

    Raises:
        CalibrationError: a missing path, a folder with no images, or a video OpenCV
            cannot open or that has no frames.
    """
    path = Path(source)
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    say = warn or (lambda msg: warnings.warn(msg, stacklevel=3))
    if path.is_dir():
        files = _list_images(path)
        if not files:
            raise CalibrationError(
                f"calibration folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                "give a folder of camera images or a video file"
            )
        order = np.random.default_rng(seed).permutation(len(files))
        shuffled = [files[i] for i in order]
        folders = [p.parent.relative_to(path).as_posix() for p in shuffled]
        if all(f != "." for f in folders) and len(set(folders)) >= 2:
            class_names = sorted(set(folders))
            index = {name: i for i, name in enumerate(class_names)}
            labels = np.asarray([index[f] for f in folders], np.int64)
            return CalibrationSource("imagefolder", path, (h, w), mode, shuffled, labels, class_names, warn=say)
        return CalibrationSource("folder", path, (h, w), mode, shuffled, warn=say)
    if not path.exists():
        raise CalibrationError(f"calibration source {path} does not exist; give a folder of images or a video file")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise CalibrationError(f"{path} is a single image; give the folder that holds the calibration images")
    frames = _count_frames(path)
    return CalibrationSource("video", path, (h, w), mode, list(range(frames)), warn=say)


def _count_frames(path: Path) -> int:
    """Frames in a video: the container's count when it gives one, else decoded to the end."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise CalibrationError(
                f"OpenCV cannot open {path} as a video (unknown format, missing codec or not a video); "
                "convert it (e.g. ffmpeg -i IN -c:v mjpeg OUT.avi) or give a folder of images"
            )
        declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if declared > 0:
            return declared
        counted = 0
        while capture.grab():
            counted += 1
    finally:
        capture.release()
    if counted == 0:
        raise CalibrationError(f"video {path} has no readable frames; give another video or a folder of images")
    return counted
