"""An image folder (or one image file) as a source: its images in sorted order, labelled by class folder.

Images directly in the folder have no label; an image in a sub-folder is
labelled with that sub-folder's path relative to the folder (``cat`` for
``DIR/cat/1.png``, ``greek/U+03B1`` for the glyph benchmark's
``DIR/greek/U+03B1/0.png``), the class names :func:`edgefs.data.images.load_image_folder`
gives. Each image is read through :mod:`edgefs.imagefile` (file size, then the
pixel count its header declares, before anything is decoded): an image over
:mod:`edgefs.limits`, a link to a device, or a file OpenCV cannot decode is
skipped with a warning naming it and why (once, not on every pass of a loop).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from edgefs.camera.sources import Source, SourceError, SourceOptions, register_source
from edgefs.imagefile import IMAGE_SUFFIXES, ImageRefused, decode_image, read_image_bytes


def read_image_rgb(path: Path) -> np.ndarray:
    """uint8 ``(H, W, 3)`` RGB, read within :mod:`edgefs.limits` (:func:`edgefs.imagefile.decode_image`).

    Reads the bytes in Python (not ``cv2.imread``) so that non-ASCII paths work everywhere.

    Raises:
        ImageRefused: missing, not a regular file, over :data:`edgefs.limits.MAX_IMAGE_FILE_BYTES`
            or :data:`edgefs.limits.MAX_IMAGE_PIXELS`, or not decodable; the message starts with
            the path and says why.
    """
    return decode_image(read_image_bytes(path, str(path)), str(path))


def list_images(root: Path) -> list[Path]:
    """Every image file under ``root`` (recursively), sorted by relative path; hidden files skipped."""
    found = [
        p for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    ]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


@register_source
class FolderSource(Source):
    """The images of a folder as frames (sizes may differ; each frame keeps its image's size).

    Options: ``fps`` hands them over at that rate (live), ``loop=1`` starts over at
    the end, ``shuffle=1`` (with ``seed``) mixes the order once (reproducibly),
    ``live`` overrides what ``fps`` implies. Reopening resumes at the next image.
    """

    schemes = ("folder",)
    uri_forms = ("DIR | folder:DIR?fps=5&loop=1&shuffle=1&seed=0 | image.png   "
                 "an image folder, sorted; class sub-folders give labels",)

    def __init__(self, root: str | Path, *, name: str, uri: str, pace_fps: float | None = None,
                 loop: bool = False, shuffle: bool = False, seed: int = 0, live: bool | None = None) -> None:
        super().__init__(name, live=bool(pace_fps) if live is None else live, fps=pace_fps, pace_fps=pace_fps,
                         uri=uri)
        self.root = Path(root)
        self.loop = loop
        self.shuffle = shuffle
        self.seed = seed
        self.files: list[Path] = []
        self.labels: list[str | None] = []
        self.skipped: list[Path] = []
        self._pos = 0
        self._good_this_pass = 0

    @classmethod
    def from_uri(cls, target: str, options: SourceOptions, *, uri: str, name: str | None) -> FolderSource:
        root = Path(target).expanduser()
        if not root.exists():
            raise SourceError(f"no such image folder: {root}; check the path", retryable=False)
        if root.is_file() and root.suffix.lower() not in IMAGE_SUFFIXES:
            raise SourceError(f"{root} is not an image ({', '.join(sorted(IMAGE_SUFFIXES))}); for a video "
                              f"use file:{root}", retryable=False)
        return cls(root, name=name or uri, uri=uri, pace_fps=options.number("fps", minimum=0.01),
                   loop=bool(options.flag("loop", False)), shuffle=bool(options.flag("shuffle", False)),
                   seed=options.integer("seed", 0) or 0, live=options.flag("live"))

    def _open(self) -> None:
        if self.files:
            return  # reopening: keep the list (and the position) of the first open
        if self.root.is_file():
            files, base = [self.root], self.root.parent
        elif self.root.is_dir():
            files, base = list_images(self.root), self.root
        else:
            raise SourceError(f"image folder {self.root} is gone; check the path", retryable=False)
        if not files:
            raise SourceError(
                f"image folder {self.root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); expected "
                f"{self.root}/<image> or {self.root}/<class>/<image>", retryable=False,
            )
        if self.shuffle:
            files = [files[i] for i in np.random.default_rng(self.seed).permutation(len(files))]
        self.files = files
        self.labels = [None if f.parent == base else f.parent.relative_to(base).as_posix() for f in files]

    def _next(self) -> tuple[np.ndarray, str | None] | None:
        while True:
            if self._pos >= len(self.files):
                if not self.loop or not self._good_this_pass:
                    return None
                self._pos, self._good_this_pass = 0, 0
            path, label = self.files[self._pos], self.labels[self._pos]
            self._pos += 1
            try:
                image = read_image_rgb(path)
            except ImageRefused as exc:
                if path not in self.skipped:  # once, not on every pass of a looping folder
                    self.skipped.append(path)
                    warnings.warn(f"skipping image {exc}; remove or replace it", stacklevel=3)
                continue
            self._good_this_pass += 1
            return image, label

    def _close(self) -> None:
        pass
