"""HeadSpec: what a trained method hands to the device, in plain arrays.

A method's head runs on top of the frozen backbone's embeddings. The spec is a
head type, a schema version, named arrays and scalar parameters; it is saved as
``<stem>.npz`` (read with ``allow_pickle=False``) plus ``<stem>.json``, so the
device never unpickles anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefs.errors import EdgefsError

HEAD_SCHEMA_VERSION = 1
HEAD_TYPES = ("prototype", "imprint", "matching", "relation", "siamese", "finetune")


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
    def from_json(cls, doc: dict[str, Any], arrays: dict[str, np.ndarray]) -> HeadSpec:
        version = doc.get("schema_version")
        if not isinstance(version, int) or version > HEAD_SCHEMA_VERSION:
            raise EdgefsError(
                f"head spec schema version {version} is newer than this edgefs understands "
                f"({HEAD_SCHEMA_VERSION}); upgrade edgefs"
            )
        declared = doc.get("arrays", {})
        if set(declared) != set(arrays):
            raise EdgefsError(f"head arrays {sorted(arrays)} do not match the declared {sorted(declared)}")
        for name, meta in declared.items():
            a = arrays[name]
            if list(a.shape) != meta["shape"] or str(a.dtype) != meta["dtype"]:
                raise EdgefsError(f"head array {name!r} is {a.dtype}{a.shape}, declared {meta}")
        return cls(doc["head_type"], dict(doc.get("params", {})), arrays, version)

    @classmethod
    def load(cls, stem: Path) -> HeadSpec:
        """Read ``stem.json`` and ``stem.npz``; never unpickles."""
        try:
            doc = json.loads(stem.with_suffix(".json").read_text())
            with np.load(stem.with_suffix(".npz"), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except ValueError as exc:
            raise EdgefsError(f"head spec {stem} is corrupt or would need pickle ({exc})") from exc
        except OSError as exc:
            raise EdgefsError(f"cannot read head spec {stem}: {exc}") from exc
        return cls.from_json(doc, arrays)
