"""SVG rendering with ``rsvg-convert`` (Debian ``librsvg2-bin``) into RGBA arrays."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np

from edgefs.errors import MissingDependencyError


def _rsvg() -> str:
    exe = shutil.which("rsvg-convert")
    if exe is None:
        raise MissingDependencyError(
            "rendering SVG images needs 'rsvg-convert'; install it with: apt-get install librsvg2-bin")
    return exe


def render_svg(path: Path, size: int | None = None, zoom: float | None = None,
               export_id: str | None = None) -> np.ndarray | None:
    """Render an SVG/SVGZ file (or one element of it) to ``(H, W, 4)`` uint8 RGBA.

    Args:
        path: the SVG file.
        size: fit the whole document into ``size`` x ``size`` keeping its aspect ratio.
        zoom: scale factor instead of ``size``.
        export_id: render only the element with this id (on the full document canvas;
            crop to its alpha afterwards).

    Returns:
        The image, or None when rsvg-convert cannot render the file (the caller counts it).
    """
    from PIL import Image

    cmd = [_rsvg(), "--format", "png"]
    if size is not None:
        cmd += ["-w", str(size), "-h", str(size), "--keep-aspect-ratio"]
    if zoom is not None:
        cmd += ["-z", f"{zoom:.4f}"]
    if export_id is not None:
        cmd += ["-i", export_id]
    proc = subprocess.run([*cmd, str(path)], capture_output=True, timeout=120)
    if proc.returncode != 0 or not proc.stdout:
        return None
    return np.asarray(Image.open(io.BytesIO(proc.stdout)).convert("RGBA"))


def crop_alpha(image: np.ndarray, threshold: int = 8) -> np.ndarray | None:
    """Crop an RGBA image to the bounding box of its visible pixels (None when nothing is visible)."""
    ys, xs = np.nonzero(image[:, :, 3] > threshold)
    if not len(ys):
        return None
    return image[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


MAX_PIXELS = 16_000_000
"""Larger files (a few Open Clip Art PNGs are 13000 px wide) are not decoded: memory and time."""


def image_pixels(path: Path) -> int:
    """Width x height from the file header (0 when unreadable), without decoding."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.width * im.height
    except Image.DecompressionBombError:
        return MAX_PIXELS + 1
    except (UnidentifiedImageError, OSError, ValueError):
        return 0


def read_rgba(path: Path) -> np.ndarray | None:
    """Read a raster image file as RGBA, or None when it cannot be decoded or exceeds ``MAX_PIXELS``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                return None
            return np.asarray(im.convert("RGBA"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
