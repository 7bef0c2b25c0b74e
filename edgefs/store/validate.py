"""Checks on what is about to be written to a class store: names, embeddings, thumbnails, head state.

Every write validates first, so a refused input leaves the store untouched.
Class packs run the same checks on what they read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgefs.errors import EdgefsError

MAX_NAME_LENGTH = 128
MAX_THUMBNAIL_BYTES = 256 * 1024
JPEG_MAGIC = b"\xff\xd8\xff"
EMBEDDING_DTYPE = np.dtype("<f4")
#: What the camera loop shows for a frame that matches no class; no class may be called that.
REJECT_LABEL = "unknown"


class StoreError(EdgefsError):
    """A class store or class pack that cannot be used as asked, or data refused before it is written."""


def check_name(name: object) -> str:
    """Return ``name`` if it is a usable class name, else raise :class:`StoreError`."""
    if not isinstance(name, str) or not name.strip():
        raise StoreError(f"class name {name!r} is empty; give every class a non-empty name")
    if name != name.strip():
        raise StoreError(f"class name {name!r} starts or ends with whitespace; strip it")
    if len(name) > MAX_NAME_LENGTH:
        raise StoreError(f"class name {name[:20]!r}... is {len(name)} characters; the limit is {MAX_NAME_LENGTH}")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise StoreError(f"class name {name!r} contains control characters; use printable text")
    if name.casefold() == REJECT_LABEL:
        raise StoreError(f"class name {name!r} is the label edgefs gives frames that match no class; "
                         "choose another name")
    return name


def check_embeddings(embeddings: object, dim: int, what: str = "embeddings") -> np.ndarray:
    """Validate a support set and return it as C-contiguous little-endian float32 ``(K, dim)``.

    Args:
        embeddings: real floating array ``(K, D)`` with ``K >= 1``.
        dim: the store's embedding size.

    Raises:
        StoreError: not 2-D, empty, wrong ``D``, not floating point, or NaN/inf.
    """
    a = np.asarray(embeddings)
    if a.dtype.kind != "f":
        raise StoreError(f"{what} have dtype {a.dtype}; pass the engine's float32 embeddings, not images or labels")
    if a.ndim != 2:
        raise StoreError(f"{what} have shape {a.shape}; expected (K, {dim}), one row per shot")
    if a.shape[0] == 0:
        raise StoreError(f"{what} are an empty support set; enroll at least one shot")
    if a.shape[1] != dim:
        raise StoreError(
            f"{what} have size {a.shape[1]} but this store holds size-{dim} embeddings; "
            "embed with the store's bundle"
        )
    out = np.ascontiguousarray(a, dtype=EMBEDDING_DTYPE)
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out).all(axis=1)).sum())
        raise StoreError(
            f"{what}: {bad} of {out.shape[0]} rows contain NaN or inf; nothing was written. "
            "Check the engine (precision, calibration) and enroll again"
        )
    return out


def check_thumbnails(thumbnails: Sequence[bytes | None] | None, shots: int) -> list[bytes | None]:
    """Validate optional per-shot JPEG thumbnails; returns a list of length ``shots``."""
    if thumbnails is None:
        return [None] * shots
    thumbs = list(thumbnails)
    if len(thumbs) != shots:
        raise StoreError(f"{len(thumbs)} thumbnails for {shots} embeddings; pass one per shot, or none")
    for i, t in enumerate(thumbs):
        if t is None:
            continue
        if not isinstance(t, (bytes, bytearray, memoryview)):
            raise StoreError(f"thumbnail {i} is {type(t).__name__}; pass JPEG bytes (cv2.imencode('.jpg', ...))")
        if len(t) > MAX_THUMBNAIL_BYTES:
            raise StoreError(f"thumbnail {i} is {len(t)} bytes; the limit is {MAX_THUMBNAIL_BYTES}: shrink it")
        if not bytes(t[:3]) == JPEG_MAGIC:
            raise StoreError(f"thumbnail {i} is not a JPEG; encode it with cv2.imencode('.jpg', ...)")
    return [None if t is None else bytes(t) for t in thumbs]


def check_head_state(arrays: dict[str, np.ndarray], params: dict[str, Any] | None) -> str:
    """Validate head arrays and params; return the params as JSON."""
    if not isinstance(arrays, dict):
        raise StoreError(f"head state arrays must be a dict of name -> array, got {type(arrays).__name__}")
    for name, a in arrays.items():
        if not isinstance(name, str) or not name:
            raise StoreError(f"head state array name {name!r} must be a non-empty string")
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
            kind = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
            raise StoreError(f"head state array {name!r} is {kind}; only numeric NumPy arrays are stored")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise StoreError(f"head state array {name!r} contains NaN or inf; nothing was written")
    try:
        return json.dumps(params or {}, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"head params must be plain JSON (numbers, strings, lists, dicts): {exc}") from exc
