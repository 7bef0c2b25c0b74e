"""Reading untrusted image files: size and pixel limits checked before anything is decoded.

A decoder allocates what the header claims: a PNG that declares 60000 x 60000
pixels makes OpenCV try 10 GB (and raise), a real 20000 x 20000 PNG decodes to
1.2 GB before any quality check sees it. So every image file is checked first:
a regular file (links followed) no bigger than
:data:`edgefs.limits.MAX_IMAGE_FILE_BYTES`, whose header (PNG, JPEG, BMP, GIF,
WebP, PNM, TIFF) names its width and height, and at most
:data:`edgefs.limits.MAX_IMAGE_PIXELS` pixels. Only then is it decoded, from the
bytes already read. A file that fails any check is skipped with a reason that
names it; the caller goes on with the others.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from edgefs import limits
from edgefs.errors import EdgefsError
from edgefs.fileio import read_limited


class ImageRefused(EdgefsError):
    """An image file that was not decoded: unreadable, too big, or of an unknown format."""


def _png(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    return None


def _jpeg(data: bytes) -> tuple[int, int] | None:
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        # SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        if length < 2:
            return None
        i += 2 + length
    return None


def _bmp(data: bytes) -> tuple[int, int] | None:
    if data[:2] != b"BM" or len(data) < 26:
        return None
    (header,) = struct.unpack("<I", data[14:18])
    if header == 12:
        return struct.unpack("<HH", data[18:22])
    w, h = struct.unpack("<ii", data[18:26])
    return abs(w), abs(h)


def _gif(data: bytes) -> tuple[int, int] | None:
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    return None


def _webp(data: bytes) -> tuple[int, int] | None:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP" or len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":
        w = 1 + int.from_bytes(data[24:27], "little")
        h = 1 + int.from_bytes(data[27:30], "little")
        return w, h
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    return None


def _pnm(data: bytes) -> tuple[int, int] | None:
    if len(data) < 3 or data[0:1] != b"P" or data[1:2] not in b"123456":
        return None
    fields: list[int] = []
    for line in data[2:4096].split(b"\n"):
        for word in line.split(b"#")[0].split():
            if not word.isdigit():
                return None
            fields.append(int(word))
            if len(fields) == 2:
                return fields[0], fields[1]
    return None


def _tiff(data: bytes) -> tuple[int, int] | None:
    if data[:4] not in (b"II*\x00", b"MM\x00*") or len(data) < 8:
        return None
    e = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(e + "I", data[4:8])
    if ifd + 2 > len(data):
        return None
    (count,) = struct.unpack(e + "H", data[ifd:ifd + 2])
    size: dict[int, int] = {}
    for k in range(min(count, 512)):
        at = ifd + 2 + 12 * k
        if at + 12 > len(data):
            break
        tag, kind = struct.unpack(e + "HH", data[at:at + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT or LONG
            fmt = e + ("H" if kind == 3 else "I")
            size[tag] = struct.unpack(fmt, data[at + 8:at + 8 + struct.calcsize(fmt)])[0]
    return (size[256], size[257]) if len(size) == 2 else None


_READERS = (_png, _jpeg, _bmp, _gif, _webp, _pnm, _tiff)


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from an image file's header, or None for an unknown or damaged header."""
    for reader in _READERS:
        try:
            size = reader(data)
        except struct.error:
            size = None
        if size is not None:
            return int(size[0]), int(size[1])
    return None


def check_image_bytes(data: bytes, name: str) -> tuple[int, int]:
    """``(width, height)`` of encoded image bytes, after checking them against the pixel limit.

    Nothing is decoded: the size comes from the header (:func:`image_dimensions`).

    Raises:
        ImageRefused: unknown format or damaged header, zero pixels, or more than
            :data:`edgefs.limits.MAX_IMAGE_PIXELS`; the message starts with ``name``.
    """
    if not data:
        raise ImageRefused(f"{name}: an empty file (0 bytes), not a PNG, JPEG, BMP, GIF, WebP, PNM or TIFF image")
    size = image_dimensions(data)
    if size is None:
        raise ImageRefused(f"{name}: not a PNG, JPEG, BMP, GIF, WebP, PNM or TIFF image (or its header is damaged)")
    w, h = size
    if w * h > limits.MAX_IMAGE_PIXELS:
        raise ImageRefused(f"{name}: {w} x {h} pixels, over the limit of {limits.MAX_IMAGE_PIXELS} "
                           "(edgefs.limits.MAX_IMAGE_PIXELS); shrink it first")
    if w == 0 or h == 0:
        raise ImageRefused(f"{name}: its header declares {w} x {h} pixels; it is damaged")
    return w, h


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode image bytes to RGB uint8 ``(H, W, 3)`` after checking the declared pixel count.

    Raises:
        ImageRefused: unknown format, too many pixels, or undecodable; the message starts with ``name``.
    """

    check_image_bytes(data, name)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageRefused(f"{name}: cannot be decoded ({str(exc).strip().splitlines()[-1][:120]})") from None
    if img is None or img.ndim != 3 or img.shape[2] != 3:
        raise ImageRefused(f"{name}: cannot be read as an image (corrupt or not an image)")
    if img.shape[0] * img.shape[1] > limits.MAX_IMAGE_PIXELS:  # a header that understated the size
        raise ImageRefused(f"{name}: decoded to {img.shape[1]} x {img.shape[0]} pixels, over the limit")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_image_bytes(path: str | Path, name: str | None = None) -> bytes:
    """The encoded bytes of one image file, read within :data:`edgefs.limits.MAX_IMAGE_FILE_BYTES`.

    Args:
        name: how messages name the file (default: its file name).

    Raises:
        ImageRefused: missing, not a regular file (a link to a device, a pipe), or too big on disk.
    """
    path = Path(path)
    try:
        return read_limited(path, limits.MAX_IMAGE_FILE_BYTES, "image")
    except EdgefsError as exc:
        raise ImageRefused(f"{path.name if name is None else name}: {exc}") from None


def read_image_file(path: str | Path) -> np.ndarray:
    """Read one image file as RGB uint8 ``(H, W, 3)`` within :mod:`edgefs.limits`.

    Raises:
        ImageRefused: not a regular file, too big on disk or in pixels, or not decodable;
            the message names the file and why.
    """
    path = Path(path)
    return decode_image(read_image_bytes(path), path.name)


#: Longest side of the JPEG thumbnail kept with each stored shot.
THUMBNAIL_SIDE = 64
#: File suffixes read as images where a folder is given.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})


def thumbnail(image: np.ndarray, side: int = THUMBNAIL_SIDE) -> bytes:
    """A small JPEG of an RGB ``(H, W, 3)`` uint8 image (longest side ``side``), for the store."""
    h, w = image.shape[:2]
    scale = side / max(h, w)
    if scale < 1:
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise EdgefsError("could not encode a thumbnail")
    return buf.tobytes()


def read_images(paths: Sequence[str | Path]) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Read image files (and the images directly inside folders) as RGB uint8.

    Each file is checked before it is decoded (:func:`edgefs.imagefile.read_image_file`:
    a regular file, size and pixel limits); one that fails is left out with a reason.

    Returns:
        ``(images, names, problems)``: the readable images with their file names, and
        one message per file that was left out, naming it and why.

    Raises:
        EdgefsError: a path that does not exist, or no image files at all.
    """
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise EdgefsError(f"{p} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            files += found
        elif p.exists():
            files.append(p)  # a device or pipe is refused, with its name, when read
        else:
            raise EdgefsError(f"{p} does not exist; pass image files or a folder of them to --images")
    images, names, problems = [], [], []
    for f in files:
        try:
            images.append(read_image_file(f))  # size and pixel limits before decoding
        except ImageRefused as exc:
            problems.append(f"{exc}; skipped")
            continue
        names.append(f.name)
    return images, names, problems
