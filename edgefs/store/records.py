"""What the class store hands out: classes, shots, and the identity of a set of samples."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

#: meta key of the device settings (``edgefs serve``'s settings page: smoothing, ...)
SETTINGS_KEY = "settings"
# Where shots came from: one text for all of them (e.g. "camera:0"), or one per shot.
Source = str | Sequence[str]


@dataclass(frozen=True)
class ClassInfo:
    """One enrolled class.

    Attributes:
        name: the class name (unique in the store).
        shots: number of sample embeddings.
        created: seconds since the epoch when it was first enrolled.
        updated: seconds since the epoch of its last change (append, rename).
    """

    name: str
    shots: int
    created: float
    updated: float


@dataclass(frozen=True)
class SampleRow:
    """One stored shot, without its embedding: what a viewer lists.

    Attributes:
        id: the sample's row id (stable; used to remove this shot alone).
        created: seconds since the epoch when it was stored.
        source: where it came from (``camera:0``, a folder, a pack).
        thumbnail: whether a JPEG thumbnail is stored.
    """

    id: int
    created: float
    source: str
    thumbnail: bool


@dataclass(frozen=True)
class SampleSet:
    """Identity of a store's samples: how many, and a digest of (class id, name, sample id, time) per sample
    (:mod:`edgefs.store.digest`)."""

    count: int
    digest: str

    def to_text(self) -> str:
        return f"{self.count}:{self.digest}"

    @classmethod
    def from_text(cls, text: str | None) -> SampleSet | None:
        try:
            count, digest = str(text).split(":", 1)
            return cls(int(count), digest)
        except ValueError:
            return None



def utc_text(t: float) -> str:
    """Seconds since the epoch as ``YYYY-MM-DD HH:MM:SS`` (UTC), as ``edgefs classes list`` shows times."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))
