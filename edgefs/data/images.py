"""In-memory image sets and readers: any ImageFolder, the glyph benchmark, Fashion-MNIST.

An :class:`ImageSet` holds every image of a split as one ``uint8`` array, which
is what episodic training and evaluation want: sampling an episode is indexing,
not file I/O. Readers decode with OpenCV and return RGB (or grey) channels-last.
"""

from __future__ import annotations

import gzip
import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgefs import limits
from edgefs.errors import DataError
from edgefs.imagefile import ImageRefused, check_image_bytes, read_image_bytes

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


@dataclass
class ImageSet:
    """Images of one split with their class labels.

    Attributes:
        images: uint8 ``(N, H, W, C)``, C = 1 (grey) or 3 (RGB).
        labels: int64 ``(N,)``, index into ``class_names``.
        class_names: one name per class, e.g. ``"greek/U+03B1"``.
        class_groups: one group per class (the script for glyphs, ``""`` for a
            flat ImageFolder); episodes can be drawn within one group.
        paths: where each image came from (empty for idx files).
        root: the folder or file the set was read from.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    class_groups: list[str]
    paths: list[str] = field(default_factory=list)
    root: str = ""

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}")
        if len(self.labels) != len(self.images):
            raise ValueError("one label per image is needed")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self) -> np.ndarray:
        """int64 ``(num_classes,)``: images per class."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def fingerprint(self) -> str:
        """sha256 of class names and per-class counts: episode lists are tied to it."""
        h = hashlib.sha256()
        for name, count in zip(self.class_names, self.class_counts(), strict=True):
            h.update(f"{name}\t{count}\n".encode())
        return h.hexdigest()[:16]


def decode_image(data: bytes | np.ndarray, channels: int, size: int | None, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes to uint8 ``(H, W, channels)``; RGB for 3 channels.

    The header is checked first (:func:`edgefs.imagefile.check_image_bytes`): an image that
    declares more than :data:`edgefs.limits.MAX_IMAGE_PIXELS` is refused without being decoded.

    Args:
        name: how a refusal names the image (its path, for a file).

    Raises:
        ImageRefused: an unknown format or damaged header, too many pixels, or bytes OpenCV
            cannot decode; the message starts with ``name``.
        ValueError: a decoded image without the channels asked for.
    """
    raw = data if isinstance(data, bytes) else np.ascontiguousarray(data, np.uint8).tobytes()
    check_image_bytes(raw, name)
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    try:
        img = cv2.imdecode(np.frombuffer(raw, np.uint8), flag)
    except cv2.error as exc:
        raise ImageRefused(f"{name}: cannot be decoded ({str(exc).strip().splitlines()[-1][:120]})") from None
    if img is None:
        raise ImageRefused(f"{name}: cannot be decoded (corrupt or not an image)")
    if img.shape[0] * img.shape[1] > limits.MAX_IMAGE_PIXELS:  # a header that understated the size
        raise ImageRefused(f"{name}: decoded to {img.shape[1]} x {img.shape[0]} pixels, over the limit of "
                           f"{limits.MAX_IMAGE_PIXELS} (edgefs.limits.MAX_IMAGE_PIXELS)")
    if channels == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return _fit(img, channels, size)


def read_image(path: str | Path, channels: int, size: int | None) -> np.ndarray:
    """Read one image file within :mod:`edgefs.limits` (size on disk, then pixels) and decode it
    as :func:`decode_image` does.

    Raises:
        ImageRefused: not a regular file, too big on disk or in pixels, or undecodable; the
            message starts with the file's path.
    """
    return decode_image(read_image_bytes(path, str(path)), channels, size, str(path))


def _fit(img: np.ndarray, channels: int, size: int | None) -> np.ndarray:
    if size is not None and img.shape[:2] != (size, size):
        interp = cv2.INTER_AREA if min(img.shape[:2]) > size else cv2.INTER_LINEAR
        img = cv2.resize(img, (size, size), interpolation=interp)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] != channels:
        raise ValueError(f"expected {channels} channels, got {img.shape[2]}")
    return img


def find_class_folders(root: Path) -> list[Path]:
    """Folders under ``root`` that directly hold image files, sorted.

    A flat ImageFolder (``root/<class>/*.png``) and the glyph benchmark
    (``root/<script>/<char>/*.png``) are both read this way.
    """
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir() if p.is_file()):
            found.append(path)
    return found


def load_image_folder(
    root: str | Path,
    channels: int = 1,
    size: int | None = None,
    strict: bool = False,
    warn: Callable[[str], None] | None = None,
) -> ImageSet:
    """Read every image under ``root``; each folder that holds images is a class.

    The class name is the folder's path relative to ``root``; its group is the
    parent of that path (the script, for the glyph benchmark).

    Args:
        root: the folder, e.g. ``glyphs/test`` or a folder of one sub-folder per class.
        channels: 1 to read grey, 3 to read RGB.
        size: resize every image to ``size x size``; None keeps sizes (they must agree).
        strict: raise on an unreadable image instead of skipping it with a warning.
        warn: where warnings go (default: ``warnings.warn``).

    Raises:
        DataError: missing or empty folder, or (strict) an unreadable image.
    """
    root = Path(root)
    say = warn or (lambda msg: warnings.warn(msg, stacklevel=3))
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; give a folder with one sub-folder per class")
    folders = find_class_folders(root)
    if not folders:
        raise DataError(
            f"data folder {root} holds no images; expected {root}/<class>/<image>.png "
            f"(or the glyph benchmark's {root}/<script>/<char>/<n>.png)"
        )
    images: list[np.ndarray] = []
    labels: list[int] = []
    paths: list[str] = []
    names: list[str] = []
    groups: list[str] = []
    skipped = 0
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        label = len(names)
        kept = 0
        for file in files:
            try:
                img = read_image(file, channels, size)  # size and pixel limits before decoding
            except ImageRefused as exc:  # its message starts with the file's path
                if strict:
                    raise DataError(f"cannot read image {exc}; remove or replace it") from None
                say(f"skipping image {exc}; remove or replace it")
                skipped += 1
                continue
            except ValueError as exc:
                if strict:
                    raise DataError(f"cannot read image {file}: {exc}; remove or replace it") from exc
                say(f"skipping unreadable image {file} ({exc})")
                skipped += 1
                continue
            if images and img.shape != images[0].shape:
                raise DataError(
                    f"{file} is {img.shape[1]}x{img.shape[0]} but earlier images are "
                    f"{images[0].shape[1]}x{images[0].shape[0]}; pass a size to resize them all"
                )
            images.append(img)
            labels.append(label)
            paths.append(str(file))
            kept += 1
        if kept:
            rel = folder.relative_to(root)
            names.append(rel.as_posix())
            groups.append(rel.parent.as_posix() if rel.parent != Path(".") else "")
    if not images:
        raise DataError(f"no readable image under {root} ({skipped} unreadable)")
    return ImageSet(np.stack(images), np.asarray(labels, np.int64), names, groups, paths, str(root))


def _read_idx(path: Path, offset: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


FASHION_MNIST_CLASSES = [
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot",
]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def load_fashion_mnist(
    root: str | Path = FASHION_MNIST_DIR, part: str = "t10k", channels: int = 1, size: int | None = None
) -> ImageSet:
    """Read Fashion-MNIST idx files (Debian package ``dataset-fashion-mnist``).

    Args:
        root: folder with ``{part}-images-idx3-ubyte[.gz]`` and ``{part}-labels-idx1-ubyte[.gz]``.
        part: ``"train"`` (60k) or ``"t10k"`` (10k).
    """
    root = Path(root)

    def find(stem: str) -> Path:
        for name in (f"{stem}.gz", stem):
            if (root / name).is_file():
                return root / name
        raise DataError(
            f"Fashion-MNIST file {stem}[.gz] not found in {root}; "
            "install it with: apt-get install dataset-fashion-mnist"
        )

    raw = _read_idx(find(f"{part}-images-idx3-ubyte"), 16)
    labels = _read_idx(find(f"{part}-labels-idx1-ubyte"), 8).astype(np.int64)
    if raw.size != labels.size * 28 * 28:
        raise DataError(f"Fashion-MNIST files in {root} are truncated or mismatched; reinstall the package")
    imgs = raw.reshape(-1, 28, 28)
    out = np.stack([_fit(im, 1, size) for im in imgs]) if size not in (None, 28) else imgs[..., None]
    if channels == 3:
        out = np.repeat(out, 3, axis=3)
    return ImageSet(
        np.ascontiguousarray(out), labels, list(FASHION_MNIST_CLASSES), [""] * 10, [], str(root)
    )


def open_split(data: str | Path, split: str, channels: int, size: int, strict: bool = False,
               warn: Callable[[str], None] | None = None) -> ImageSet:
    """Open one split of a data source given on the command line.

    ``data`` is a folder with ``train/``, ``val/``, ``test/`` sub-folders (the glyph
    benchmark), a folder of domains each with those sub-folders (``data/domains``: every
    domain's split, classes ``<domain>/<class>`` grouped by domain), a folder of classes
    (used whole for any split), or ``fashion-mnist[:DIR]`` (``train`` -> the 60k part, else
    the 10k part).
    """
    text = str(data)
    if text.startswith("fashion-mnist"):
        folder = text.partition(":")[2] or FASHION_MNIST_DIR
        return load_fashion_mnist(folder, "train" if split == "train" else "t10k", channels, size)
    root = Path(text)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; render one with 'edgefs data glyphs --out {root}'")
    split_dir = root / split
    if split_dir.is_dir():
        return load_image_folder(split_dir, channels, size, strict, warn)
    if any((root / s).is_dir() for s in ("train", "val", "test")):
        raise DataError(f"{root} has no '{split}' split folder; expected {split_dir}")
    domains = sorted(d for d in root.iterdir() if (d / split).is_dir())
    if domains:
        return load_domains(root, [d.name for d in domains], split, channels, size, strict, warn)
    return load_image_folder(root, channels, size, strict, warn)


def load_domains(root: Path, domains: list[str], split: str, channels: int, size: int, strict: bool = False,
                 warn: Callable[[str], None] | None = None) -> ImageSet:
    """One split of several domains (``root/<domain>/<split>/<class>/``) as one set.

    Classes are named ``<domain>/<class>`` and grouped by domain, so episodes can be drawn
    within one domain and multi-task training has one task per domain. Every image is
    resized to ``size`` (domains differ in resolution).
    """
    parts = [load_image_folder(root / d / split, channels, size, strict, warn) for d in domains]
    offsets = np.cumsum([0] + [p.num_classes for p in parts[:-1]])
    return ImageSet(
        np.concatenate([p.images for p in parts]),
        np.concatenate([p.labels + off for p, off in zip(parts, offsets, strict=True)]),
        [f"{d}/{n}" for d, p in zip(domains, parts, strict=True) for n in p.class_names],
        [d for d, p in zip(domains, parts, strict=True) for _ in p.class_names],
        [path for p in parts for path in p.paths],
        str(root),
    )
