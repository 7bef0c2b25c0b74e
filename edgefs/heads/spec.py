"""HeadSpec: what a trained method hands to the device, in plain arrays.

A method's head runs on top of the frozen backbone's embeddings. The spec is a
head type, a schema version, named arrays and scalar parameters; it is saved as
``<stem>.npz`` (read with ``allow_pickle=False``) plus ``<stem>.json``, so the
device never unpickles anything.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefs import limits
from edgefs.errors import EdgefsError
from edgefs.fileio import FileRefused, check_regular_file, load_npy, read_limited
from edgefs.registry import Registry

HEAD_SCHEMA_VERSION = 1

#: Every device head, by ``head_type``: each module of :mod:`edgefs.heads` that registers one
#: (``@HEADS.register(name, rank=...)`` on a :class:`~edgefs.heads.base.Head` subclass) is
#: imported on the first lookup. Here rather than in ``base`` so that a spec can check its
#: type without importing the heads (``base`` imports this module).
HEADS: Registry[type[Any]] = Registry("head", package="edgefs.heads")

#: The registered head types, in the order the CLI lists them (by rank); read when used.
HEAD_TYPES = HEADS.listing()


@dataclass
class HeadSpec:
    """A device head's type, arrays and parameters.

    Attributes:
        head_type: one of :data:`HEAD_TYPES`.
        params: JSON-serialisable scalars, e.g. ``{"distance": "euclidean"}``.
        arrays: named NumPy arrays (learned weights); may be empty.
        schema_version: bumped when the meaning of a field changes.
    """

    head_type: str
    params: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    schema_version: int = HEAD_SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.head_type not in HEAD_TYPES:
            raise EdgefsError(f"unknown head type {self.head_type!r}; known: {', '.join(HEAD_TYPES)}")

    def to_json(self) -> dict[str, Any]:
        return {
            "head_type": self.head_type,
            "schema_version": self.schema_version,
            "params": self.params,
            "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in self.arrays.items()},
        }

    def save(self, stem: Path) -> None:
        """Write ``stem.json`` and ``stem.npz``."""
        stem.parent.mkdir(parents=True, exist_ok=True)
        np.savez(stem.with_suffix(".npz"), **self.arrays)
        stem.with_suffix(".json").write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def from_json(cls, doc: Any, arrays: dict[str, np.ndarray], where: str = "head spec") -> HeadSpec:
        if not isinstance(doc, dict):
            raise EdgefsError(f"{where} holds a JSON {type(doc).__name__}, not an object; export the bundle again")
        version = doc.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise EdgefsError(f"{where}: schema_version is {version!r:.40}, not a whole number; "
                              "export the bundle again")
        if version > HEAD_SCHEMA_VERSION:
            raise EdgefsError(
                f"head spec schema version {version} is newer than this edgefs understands "
                f"({HEAD_SCHEMA_VERSION}); upgrade edgefs"
            )
        head_type, params, declared = doc.get("head_type"), doc.get("params", {}), doc.get("arrays", {})
        if not isinstance(head_type, str):
            raise EdgefsError(f"{where}: head_type is {head_type!r:.40}, not text; export the bundle again")
        if not isinstance(params, dict) or not isinstance(declared, dict):
            raise EdgefsError(f"{where}: 'params' and 'arrays' must be objects; export the bundle again")
        if set(declared) != set(arrays):
            raise EdgefsError(f"head arrays {sorted(arrays)} do not match the declared {sorted(declared)}")
        for name, meta in declared.items():
            a = arrays[name]
            if not isinstance(meta, dict) or list(a.shape) != meta.get("shape") or str(a.dtype) != meta.get("dtype"):
                raise EdgefsError(f"head array {name!r} is {a.dtype}{a.shape}, declared {meta!r:.80}")
        return cls(head_type, dict(params), arrays, version)

    @classmethod
    def load(cls, stem: Path) -> HeadSpec:
        """Read ``stem.json`` and ``stem.npz`` within :mod:`edgefs.limits`; never unpickles.

        Raises:
            EdgefsError: a missing, oversized, non-regular or malformed file (the message names it).
        """
        json_path, npz_path = stem.with_suffix(".json"), stem.with_suffix(".npz")
        try:
            data = read_limited(json_path, limits.MAX_HEAD_JSON_BYTES, "head spec")
        except FileRefused as exc:
            raise EdgefsError(f"{exc}; copy the bundle again, or export it again") from None
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise EdgefsError(f"head spec {json_path} is not valid JSON ({exc})") from None
        return cls.from_json(doc, read_npz(npz_path), str(json_path))


def read_npz(path: Path, limit: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` written by ``np.savez``, bounded by ``limit`` bytes on disk and uncompressed.

    Raises:
        EdgefsError: not a regular file, too big, not a zip (empty, truncated), members that are
            not ``.npy`` arrays or whose declared sizes exceed the limit, or pickled objects.
    """
    limit = limits.MAX_HEAD_NPZ_BYTES if limit is None else limit
    size = check_regular_file(path, limit, "head arrays")
    where = f"head arrays {path}"
    if size == 0:
        raise EdgefsError(f"{where} is empty (0 bytes); copy the bundle again, or export it again")
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > limits.MAX_HEAD_ARRAYS:
                raise EdgefsError(f"{where} has {len(infos)} members, over the limit of {limits.MAX_HEAD_ARRAYS}")
            budget = limit
            for info in infos:
                if not info.filename.endswith(".npy") or info.flag_bits & 0x1:
                    raise EdgefsError(f"{where} holds {info.filename!r:.60}, which is not a plain .npy array")
                if info.file_size > budget:
                    raise EdgefsError(f"{where}: member {info.filename!r:.60} declares {info.file_size} bytes, over "
                                      f"the limit of {budget} (edgefs.limits.MAX_HEAD_NPZ_BYTES)")
                with zf.open(info) as f:
                    raw = f.read(budget + 1)
                if len(raw) != info.file_size:
                    raise EdgefsError(f"{where}: member {info.filename!r:.60} is not the size it declares")
                budget -= len(raw)
                name = info.filename[:-4]
                if name in arrays:
                    raise EdgefsError(f"{where} holds {name!r:.60} twice")
                arrays[name] = load_npy(raw, f"{where}: member {info.filename!r:.60}")
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as exc:
        raise EdgefsError(f"{where} is not a readable .npz archive ({exc}); copy the bundle again, "
                          "or export it again") from None
    except OSError as exc:
        raise EdgefsError(f"cannot read {where}: {exc}") from None
    return arrays
