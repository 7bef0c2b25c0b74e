"""Camera frame -> engine input: crop/resize to the bundle's input size, channels to RGB (NumPy + OpenCV).

A camera (OpenCV, GStreamer) hands over uint8 BGR frames of its own size; the
engine takes uint8 ``(B, H, W, 3)`` RGB at the manifest's input size. Scaling,
normalisation and grey conversion happen inside the graph (see DESIGN.md,
"Backbone input is the camera's output"), so this module only changes geometry
and channel order.

Modes:
    ``center_crop`` (default): cut the largest centred region of the target's aspect
        ratio (a square for every edgefs backbone), then resize. Nothing is
        distorted; the edges of a wide frame are lost.
    ``resize``: resize the whole frame to the target, distorting the aspect ratio.
    ``letterbox``: resize the whole frame to fit inside the target, keeping its aspect
        ratio, and pad the rest with ``pad_value``.

Resizing uses ``INTER_AREA`` when the image shrinks (it averages, so it does not
alias) and ``INTER_LINEAR`` when it grows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np

from edgefs.errors import EdgefsError
from edgefs.runtime.bundle import Bundle, Manifest

FitMode = Literal["center_crop", "resize", "letterbox"]
FIT_MODES: tuple[str, ...] = ("center_crop", "resize", "letterbox")
COLOR_ORDERS: tuple[str, ...] = ("BGR", "RGB")


class PreprocessError(EdgefsError):
    """A frame that cannot be turned into an engine input."""


def _target(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, (int, np.integer)) else size
    if int(h) < 1 or int(w) < 1:
        raise PreprocessError(f"the target size must be positive, got {size}")
    return int(h), int(w)


def _check_frame(frame: object, where: str) -> np.ndarray:
    """Refuse None, empty, non-uint8 or oddly shaped frames; (H, W, 1) becomes (H, W)."""
    if frame is None:
        raise PreprocessError(f"{where} is None: the camera returned no frame (skip it, or reopen the source)")
    if not isinstance(frame, np.ndarray):
        raise PreprocessError(f"{where} must be a NumPy array, got {type(frame).__name__}")
    if frame.size == 0:
        raise PreprocessError(f"{where} is empty (shape {frame.shape}): the camera returned no pixels")
    if frame.dtype != np.uint8:
        hint = (
            "; scale float images in [0, 1] with (frame * 255).round().astype(np.uint8)"
            if frame.dtype.kind == "f" else "; convert it to 8 bits per channel first"
        )
        raise PreprocessError(f"{where} must be uint8, got {frame.dtype}{hint}")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] in (3, 4))):
        raise PreprocessError(
            f"{where} has shape {frame.shape}; expected (H, W) or (H, W, 1) grey, (H, W, 3) colour "
            "or (H, W, 4) colour with alpha"
        )
    # OpenCV needs each row contiguous; a crop of a C-contiguous array is fine, a flipped view is not.
    return frame if frame.flags.c_contiguous else np.ascontiguousarray(frame)


def _resize(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """``image`` resized to ``(h, w)``: INTER_AREA when the area shrinks, INTER_LINEAR when it grows."""
    ih, iw = image.shape[:2]
    if (ih, iw) == (h, w):
        return image
    interpolation = cv2.INTER_AREA if h * w < ih * iw else cv2.INTER_LINEAR
    return cv2.resize(image, (w, h), interpolation=interpolation)


def _center_crop(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """The largest centred region of ``image`` whose aspect ratio is ``w / h`` (a view, no copy)."""
    ih, iw = image.shape[:2]
    if iw * h > ih * w:  # too wide: keep the full height
        cw, ch = max(1, round(ih * w / h)), ih
    else:  # too tall (or exact): keep the full width
        cw, ch = iw, max(1, round(iw * h / w))
    top, left = (ih - ch) // 2, (iw - cw) // 2
    return image[top:top + ch, left:left + cw]


def _letterbox(image: np.ndarray, h: int, w: int, pad_value: int) -> np.ndarray:
    ih, iw = image.shape[:2]
    scale = min(h / ih, w / iw)
    nh, nw = max(1, min(h, round(ih * scale))), max(1, min(w, round(iw * scale)))
    resized = _resize(image, nh, nw)
    out = np.full((h, w, *image.shape[2:]), pad_value, np.uint8)
    top, left = (h - nh) // 2, (w - nw) // 2
    out[top:top + nh, left:left + nw] = resized
    return out


_TO_RGB = {  # (channels, input order) -> OpenCV conversion code
    (2, "BGR"): cv2.COLOR_GRAY2RGB, (2, "RGB"): cv2.COLOR_GRAY2RGB,
    (3, "BGR"): cv2.COLOR_BGR2RGB, (3, "RGB"): None,
    (4, "BGR"): cv2.COLOR_BGRA2RGB, (4, "RGB"): cv2.COLOR_RGBA2RGB,
}


def fit_frame(
    frame: np.ndarray,
    size: int | tuple[int, int],
    mode: FitMode = "center_crop",
    input_order: str = "BGR",
    pad_value: int = 0,
) -> np.ndarray:
    """One camera frame as an engine input image.

    Args:
        frame: uint8 ``(H, W, 3)`` colour in ``input_order``, ``(H, W, 4)`` with alpha
            (BGRA or RGBA; alpha is dropped), or grey ``(H, W)`` / ``(H, W, 1)``
            (repeated to three channels). Any size.
        size: target side ``S`` (square) or ``(height, width)``.
        mode: ``"center_crop"``, ``"resize"`` or ``"letterbox"`` (module docstring).
        input_order: ``"BGR"`` (OpenCV's order, the default) or ``"RGB"``.
        pad_value: the grey level of the letterbox bars.

    Returns:
        uint8 ``(height, width, 3)`` RGB, C-contiguous and never a view of ``frame``.

    Raises:
        PreprocessError: a None or empty frame, a dtype other than uint8, an
            unsupported shape, mode or colour order.
    """
    h, w = _target(size)
    order = _check_options(mode, input_order)
    image = _fit_geometry(_check_frame(frame, "frame"), h, w, mode, pad_value)
    return _to_rgb(image, order, np.empty((h, w, 3), np.uint8))


def _check_options(mode: str, input_order: str) -> str:
    if mode not in FIT_MODES:
        raise PreprocessError(f"unknown preprocessing mode {mode!r}; use one of {', '.join(FIT_MODES)}")
    order = input_order.upper()
    if order not in COLOR_ORDERS:
        raise PreprocessError(f"unknown input colour order {input_order!r}; use 'BGR' (OpenCV) or 'RGB'")
    return order


def _fit_geometry(image: np.ndarray, h: int, w: int, mode: str, pad_value: int) -> np.ndarray:
    """Crop/resize/letterbox a checked frame to ``(h, w)``; channels untouched."""
    if mode == "center_crop":
        image = _resize(_center_crop(image, h, w), h, w)
    elif mode == "resize":
        image = _resize(image, h, w)
    else:
        image = _letterbox(image, h, w, pad_value)
    return image


def _to_rgb(image: np.ndarray, order: str, out: np.ndarray) -> np.ndarray:
    """Write ``image`` (grey, 3 or 4 channels in ``order``) into ``out`` uint8 ``(h, w, 3)`` as RGB.

    Done after resizing, so there are fewer pixels to convert; writing into ``out``
    lets :func:`to_batch` fill its batch without another copy.
    """
    code = _TO_RGB[(image.ndim if image.ndim == 2 else image.shape[2], order)]
    if code is None:
        out[...] = image
        return out
    cv2.cvtColor(image, code, dst=out)
    return out


def to_batch(
    frames: Sequence[np.ndarray] | np.ndarray,
    manifest: Manifest | Bundle,
    mode: FitMode = "center_crop",
    input_order: str = "BGR",
    pad_value: int = 0,
) -> np.ndarray:
    """Camera frames as one engine input batch, at the manifest's input size and colour order.

    Args:
        frames: a sequence of frames as :func:`fit_frame` takes them (sizes may
            differ), or one uint8 array ``(B, H, W, C)``.
        manifest: the bundle's manifest (or the bundle): gives ``(height, width)`` and
            the graph's colour order (``"RGB"`` for every edgefs export).
        mode, input_order, pad_value: as in :func:`fit_frame`.

    Returns:
        uint8 ``(B, height, width, 3)``, C-contiguous.

    Raises:
        PreprocessError: no frames, or a frame :func:`fit_frame` refuses (its index is
            in the message).
    """
    if isinstance(manifest, Bundle):
        manifest = manifest.manifest
    h, w = manifest.input_size
    graph_order = str(manifest.input.get("color_order", "RGB")).upper()
    if graph_order not in COLOR_ORDERS:
        raise PreprocessError(f"the bundle's graph takes colour order {graph_order!r}, which this edgefs cannot give")
    if isinstance(frames, np.ndarray) and frames.ndim != 4:
        raise PreprocessError(
            f"to_batch() takes a sequence of frames or one (B, H, W, C) array, got an array of shape "
            f"{frames.shape}; for a single frame pass [frame]"
        )
    if frames is None or len(frames) == 0:
        raise PreprocessError("to_batch() got no frames")
    order = _check_options(mode, input_order)
    batch = np.empty((len(frames), h, w, 3), np.uint8)
    for i, frame in enumerate(frames):
        image = _fit_geometry(_check_frame(frame, f"frame {i}"), h, w, mode, pad_value)
        _to_rgb(image, order, batch[i])
    if graph_order == "BGR":
        batch = np.ascontiguousarray(batch[..., ::-1])
    return batch
