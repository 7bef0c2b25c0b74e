"""The head state in the class store: the one place its rows are written and read.

The device head's arrays are saved with the samples they were derived from, in the same
transaction (:meth:`Transaction.save_head_state` replaces them whole; :meth:`Transaction.save_head`
writes one row per changed class), and read back with :meth:`ClassStore.load_head_state`, which
assembles the per-class rows in class order and says whether the state is still current: derived
from exactly the samples the store holds now (the running digest, :mod:`edgefs.store.digest`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefs.store.records import SampleSet
from edgefs.store.validate import (
    StoreError,
    check_head_state,
)

if TYPE_CHECKING:
    from edgefs.store.store import ClassStore
    from edgefs.store.transaction import Transaction


@dataclass
class HeadState:
    """The device head's saved arrays and parameters.

    Attributes:
        arrays: named arrays, e.g. ``{"prototypes": float32 (C, D)}``; empty if none saved.
        params: JSON parameters saved with them.
        current: False when the store's samples are not exactly the ones the head state
            was derived from (then the head should be rebuilt from the samples).
        samples: how many samples the head state was derived from (None if not recorded).
        stored: how many samples the store holds now.
        per_class: True when it was saved per class (:meth:`Transaction.save_head`): the
            arrays with one row per class were assembled from the classes' rows, in class order.
        missing_rows: classes with no saved row (then the head state is not current).
    """

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    current: bool = True
    samples: int | None = None
    stored: int = 0
    per_class: bool = False
    missing_rows: int = 0

    def staleness(self) -> str:
        """Why the head state is not current, in words ("" when it is)."""
        if self.current:
            return ""
        if self.missing_rows:
            return f"{self.missing_rows} classes have no saved head row"
        if self.samples is None:
            return f"it records no sample set (written by an older edgefs); the store holds {self.stored} samples"
        if self.samples != self.stored:
            return f"it was derived from {self.samples} samples but the store holds {self.stored}"
        return f"it was derived from another set of {self.samples} samples than the store holds"



def save_whole(tx: Transaction, arrays: dict[str, np.ndarray], params: dict[str, Any] | None = None) -> None:
    """:meth:`Transaction.save_head_state`: the head state replaced whole."""
    params_json = check_head_state(arrays, params)
    tx._conn.execute("DELETE FROM head_state")
    tx._conn.execute("DELETE FROM head_rows")
    tx._conn.executemany(
        "INSERT INTO head_state (name, dtype, shape, data) VALUES (?, ?, ?, ?)",
        [(k, a.dtype.str, json.dumps(list(a.shape)), np.ascontiguousarray(a).tobytes()) for k, a in arrays.items()],
    )
    tx._store._set_meta("head_params", params_json)
    tx._store._set_meta("head_layout", "")
    tx.head_saved = True


def save_rows(tx: Transaction, rows: dict[str, dict[str, np.ndarray]], params: dict[str, Any] | None = None,
              global_arrays: dict[str, np.ndarray] | None = None) -> None:
    """:meth:`Transaction.save_head`: the changed classes' rows, the params and the global arrays."""
    params = {k: v for k, v in (params or {}).items() if k != "classes"}
    params_json = check_head_state(global_arrays or {}, params)
    layout: list[list[Any]] | None = None
    records: list[tuple[int, bytes]] = []
    for name, arrays in rows.items():
        check_head_state(arrays, None)
        this = [[k, np.asarray(a).dtype.str, list(np.shape(a))] for k, a in sorted(arrays.items())]
        if layout is None:
            layout = this
        elif this != layout:
            raise StoreError(f"head row of class {name!r} has layout {this}, the others {layout}; "
                             "every class's row must hold the same arrays")
        class_id = tx._class_id(name)
        if class_id is None:
            raise StoreError(f"cannot save a head row for {name!r}: it is not enrolled. {tx._known()}")
        data = b"".join(np.ascontiguousarray(arrays[k]).tobytes() for k, _, _ in this)
        records.append((class_id, data))
    saved = tx._store._meta_value("head_layout") or ""
    layout_json = json.dumps(layout) if layout is not None else saved
    if layout_json != saved:
        total = tx._conn.execute("SELECT COUNT(*) FROM classes").fetchone()[0]
        if len(records) != total:
            raise StoreError(f"the head's row layout changed, so every class's row must be saved "
                             f"({len(records)} given, {total} classes)")
        tx._conn.execute("DELETE FROM head_rows")
    missing = tx._touched - {class_id for class_id, _ in records}
    if missing:
        names = [n for (n,) in tx._conn.execute(
            f"SELECT name FROM classes WHERE id IN ({','.join('?' * len(missing))})", sorted(missing))]
        raise StoreError(f"the head rows of {names} were not saved although their samples changed")
    tx._conn.executemany("INSERT OR REPLACE INTO head_rows (class_id, data) VALUES (?, ?)", records)
    if global_arrays is not None:
        tx._conn.execute("DELETE FROM head_state")
        tx._conn.executemany(
            "INSERT INTO head_state (name, dtype, shape, data) VALUES (?, ?, ?, ?)",
            [(k, a.dtype.str, json.dumps(list(a.shape)), np.ascontiguousarray(a).tobytes())
             for k, a in global_arrays.items()],
        )
    tx._store._set_meta("head_params", params_json)
    if layout_json != saved:
        tx._store._set_meta("head_layout", layout_json)
    tx.head_saved = True


def load(store: ClassStore) -> HeadState:
    """:meth:`ClassStore.load_head_state`: the saved head state, checked against the stored samples."""
    with store._lock, store._sqlite_errors("reading"):
        rows = store._conn.execute("SELECT name, dtype, shape, data FROM head_state ORDER BY name").fetchall()
        meta = dict(store._conn.execute("SELECT key, value FROM meta").fetchall())
        layout_json = meta.get("head_layout") or ""
        class_rows = store._conn.execute(
            "SELECT c.name, h.data FROM classes c LEFT JOIN head_rows h ON h.class_id = c.id ORDER BY c.id"
        ).fetchall() if layout_json else []
    arrays: dict[str, np.ndarray] = {}
    for name, dtype, shape_json, data in rows:
        try:
            shape = tuple(int(s) for s in json.loads(shape_json))
            dt = np.dtype(dtype)
            if dt.kind not in "biuf" or len(data) != dt.itemsize * math.prod(shape):
                raise ValueError(f"{len(data)} bytes for {dtype}{shape}")
            arrays[name] = np.frombuffer(data, dt).reshape(shape).copy()
        except (TypeError, ValueError) as exc:
            raise StoreError(
                f"head state array {name!r} in {store.path} is corrupt ({exc}); re-enroll or rebuild the head"
            ) from exc
    try:
        params = json.loads(meta.get("head_params", "{}"))
    except ValueError:
        params = None
    if not isinstance(params, dict):
        raise StoreError(f"the head parameters in {store.path} are corrupt; re-enroll or rebuild the head")
    missing = 0
    if layout_json:
        missing = sum(1 for _, data in class_rows if data is None)
        if not missing:
            arrays.update(_assemble_rows(store.path, layout_json, [data for _, data in class_rows]))
        params["classes"] = [name for name, _ in class_rows]
    stored = SampleSet.from_text(meta.get("samples"))
    derived = SampleSet.from_text(meta.get("head_samples"))
    current = (meta.get("head_current", "1") == "1" and not missing
               and (derived == stored or (not arrays and not class_rows)))
    return HeadState(arrays, params, current=current, samples=None if derived is None else derived.count,
                     stored=0 if stored is None else stored.count, per_class=bool(layout_json),
                     missing_rows=missing)


def _assemble_rows(path: Path, layout_json: str, blobs: list[bytes]) -> dict[str, np.ndarray]:
    """The per-class rows as ``(C, ...)`` arrays: one structured view of the joined records."""
    try:
        layout = json.loads(layout_json)
        record = np.dtype([(str(k), np.dtype(dt), tuple(int(x) for x in shape)) for k, dt, shape in layout])
        if any(np.dtype(dt).kind not in "biuf" for _, dt, _ in layout):
            raise ValueError("non-numeric array in the head row layout")
        joined = b"".join(blobs)
        if len(joined) != record.itemsize * len(blobs):
            raise ValueError(f"{len(joined)} bytes of head rows for {len(blobs)} classes of "
                             f"{record.itemsize} bytes")
        table = np.frombuffer(joined, record)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"the per-class head rows in {path} are corrupt ({exc}); "
                         "re-enroll or rebuild the head") from exc
    return {name: np.ascontiguousarray(table[name]) for name in record.names}
