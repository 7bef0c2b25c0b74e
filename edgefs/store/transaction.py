"""Writes to the class store inside one SQLite transaction (:meth:`ClassStore.transaction`)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefs.store import digest, headstate
from edgefs.store.records import SETTINGS_KEY, ClassInfo, SampleSet, Source
from edgefs.store.validate import (
    StoreError,
    check_embeddings,
    check_name,
    check_thumbnails,
)

if TYPE_CHECKING:
    from edgefs.store.store import ClassStore


class Transaction:
    """Writes inside one SQLite transaction; obtained from :meth:`ClassStore.transaction`.

    Each method validates its input before writing; an exception anywhere in the
    ``with`` block rolls the whole transaction back.
    """

    def __init__(self, store: ClassStore) -> None:
        self._store = store
        self._conn = store._conn
        self.now = time.time()
        self.samples_changed = False
        self.head_saved = False
        self.committed_samples: SampleSet | None = None  # set on commit when the head state was saved
        # Samples inserted and deleted so far, as (class id, name, sample id, time): the running digest.
        self._added: list[tuple[int, str, int, float]] = []
        self._removed: list[tuple[int, str, int, float]] = []
        self._touched: set[int] = set()  # classes added or appended to: their head rows must be saved
        self._added_ids: dict[str, list[int]] = {}

    # ---- classes and samples -------------------------------------------------------------------
    def _class_id(self, name: str) -> int | None:
        row = self._conn.execute("SELECT id FROM classes WHERE name = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def _insert_samples(
        self, class_id: int, embeddings: np.ndarray, thumbnails: list[bytes | None], sources: list[str],
        singles: np.ndarray | None = None,
    ) -> None:
        name = self._conn.execute("SELECT name FROM classes WHERE id = ?", (class_id,)).fetchone()[0]
        single_blobs = [None] * len(embeddings) if singles is None else [r.tobytes() for r in singles]
        for row, t, src, one in zip(embeddings, thumbnails, sources, single_blobs, strict=True):
            cur = self._conn.execute(
                "INSERT INTO samples (class_id, embedding, thumbnail, source, created, single) "
                "VALUES (?, ?, ?, ?, ?, ?)", (class_id, row.tobytes(), t, src, self.now, one))
            self._added.append((class_id, name, int(cur.lastrowid or 0), self.now))
            self._added_ids.setdefault(name, []).append(int(cur.lastrowid or 0))
        self._conn.execute("UPDATE classes SET updated = ? WHERE id = ?", (self.now, class_id))
        self._touched.add(class_id)
        self.samples_changed = True

    def _class_samples(self, class_id: int) -> list[tuple[int, str, int, float]]:
        return [(int(c), n, int(i), float(t)) for c, n, i, t in self._conn.execute(
            "SELECT c.id, c.name, s.id, s.created FROM samples s JOIN classes c ON c.id = s.class_id "
            "WHERE c.id = ?", (class_id,))]

    def _validated(
        self, name: str, embeddings: object, thumbnails: Sequence[bytes | None] | None, source: Source,
        singles: object = None,
    ) -> tuple[np.ndarray, list[bytes | None], list[str], np.ndarray | None]:
        check_name(name)
        emb = check_embeddings(embeddings, self._store.dim, f"embeddings for {name!r}")
        thumbs = check_thumbnails(thumbnails, emb.shape[0])
        sources = [source] * emb.shape[0] if isinstance(source, str) else list(source)
        if len(sources) != emb.shape[0] or not all(isinstance(s, str) for s in sources):
            raise StoreError(f"source must be text (e.g. 'camera:0') or one text per shot, got {source!r:.80}")
        one = None if singles is None else check_embeddings(singles, self._store.dim, f"single views of {name!r}")
        if one is not None and one.shape != emb.shape:
            raise StoreError(f"single views of {name!r} have shape {one.shape} but the embeddings {emb.shape}; "
                             "pass one single view per shot")
        return emb, thumbs, sources, one

    def add_class(
        self, name: str, embeddings: np.ndarray, thumbnails: Sequence[bytes | None] | None = None, source: Source = "",
        singles: np.ndarray | None = None,
    ) -> None:
        """Enroll a new class.

        Args:
            name: a name not yet in the store.
            embeddings: float32 ``(K, D)``, ``K >= 1``, finite: what the head is built from.
            thumbnails: ``K`` JPEG byte strings (or None entries), or None.
            source: where the shots came from, e.g. ``camera:0`` or a folder; or one text per shot.
            singles: float32 ``(K, D)`` each shot as one frame is embedded, when ``embeddings``
                are means of several views (:mod:`edgefs.service.views`); None when they are single views.
        """
        emb, thumbs, sources, one = self._validated(name, embeddings, thumbnails, source, singles)
        if self._class_id(name) is not None:
            raise StoreError(
                f"class {name!r} is already enrolled; use --append to add shots to it, "
                "or remove it first ('edgefs classes remove')"
            )
        cur = self._conn.execute(
            "INSERT INTO classes (name, created, updated) VALUES (?, ?, ?)", (name, self.now, self.now)
        )
        self._insert_samples(int(cur.lastrowid or 0), emb, thumbs, sources, one)

    def append(
        self, name: str, embeddings: np.ndarray, thumbnails: Sequence[bytes | None] | None = None, source: Source = "",
        singles: np.ndarray | None = None,
    ) -> None:
        """Add shots to an enrolled class (same arguments as :meth:`add_class`)."""
        emb, thumbs, sources, one = self._validated(name, embeddings, thumbnails, source, singles)
        class_id = self._class_id(name)
        if class_id is None:
            raise StoreError(f"class {name!r} is not enrolled; enroll it without --append first. {self._known()}")
        self._insert_samples(class_id, emb, thumbs, sources, one)

    def add_samples(
        self, name: str, embeddings: np.ndarray, thumbnails: Sequence[bytes | None] | None = None, source: Source = "",
        singles: np.ndarray | None = None,
    ) -> None:
        """Append to ``name`` if it is enrolled, else enroll it: what live enrollment wants."""
        if self._class_id(check_name(name)) is None:
            self.add_class(name, embeddings, thumbnails, source, singles)
        else:
            self.append(name, embeddings, thumbnails, source, singles)

    def remove(self, name: str) -> int:
        """Remove a class and its samples; returns how many samples went."""
        class_id = self._class_id(name)
        if class_id is None:
            raise StoreError(f"class {name!r} is not enrolled. {self._known()}")
        gone = self._class_samples(class_id)
        self._conn.execute("DELETE FROM classes WHERE id = ?", (class_id,))  # samples, head row: ON DELETE CASCADE
        self._removed += gone
        self._touched.discard(class_id)
        self.samples_changed = True
        return len(gone)

    def rename(self, old: str, new: str) -> None:
        """Rename a class; its samples and times other than ``updated`` are kept."""
        check_name(new)
        class_id = self._class_id(old)
        if class_id is None:
            raise StoreError(f"class {old!r} is not enrolled. {self._known()}")
        if self._class_id(new) is not None:
            raise StoreError(f"cannot rename {old!r} to {new!r}: {new!r} is already enrolled; remove it first")
        before = self._class_samples(class_id)
        self._conn.execute("UPDATE classes SET name = ?, updated = ? WHERE id = ?", (new, self.now, class_id))
        # A sample's identity includes its class's name: the digest swaps this class's hashes.
        self._removed += before
        self._added += [(c, new, i, t) for c, _, i, t in before]
        self.samples_changed = True

    def remove_samples(self, name: str, sample_ids: Sequence[int]) -> int:
        """Remove single shots of class ``name`` by row id (:meth:`ClassStore.sample_rows`); returns how many.

        Raises:
            StoreError: an id that is not a shot of ``name``, or removing every shot (remove the class).
        """
        class_id = self._class_id(name)
        if class_id is None:
            raise StoreError(f"class {name!r} is not enrolled. {self._known()}")
        ids = sorted({int(i) for i in sample_ids})
        if not ids:
            raise StoreError("no shots given to remove")
        own = {int(r[0]) for r in self._conn.execute("SELECT id FROM samples WHERE class_id = ?", (class_id,))}
        foreign = [i for i in ids if i not in own]
        if foreign:
            raise StoreError(f"shots {foreign[:10]} are not shots of {name!r}; list its shots again")
        if len(ids) >= len(own):
            raise StoreError(f"that would remove every shot of {name!r}; remove the class instead")
        gone = set(ids)
        self._removed += [row for row in self._class_samples(class_id) if row[2] in gone]
        self._conn.executemany("DELETE FROM samples WHERE id = ?", [(i,) for i in ids])
        self._conn.execute("UPDATE classes SET updated = ? WHERE id = ?", (self.now, class_id))
        self.samples_changed = True
        return len(ids)

    def save_settings(self, settings: dict[str, Any]) -> None:
        """Replace the device settings kept with the store (plain JSON: threshold, smoothing, ...)."""
        try:
            text = json.dumps(settings, allow_nan=False, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"settings must be plain JSON: {exc}") from exc
        self._store._set_meta(SETTINGS_KEY, text)

    def _known(self) -> str:
        names = [n for (n,) in self._conn.execute("SELECT name FROM classes ORDER BY id LIMIT 21")]
        if not names:
            return "The store has no classes."
        more = ", ..." if len(names) > 20 else ""
        return "Enrolled: " + ", ".join(repr(n) for n in names[:20]) + more

    # ---- head state ---------------------------------------------------------------------------
    def save_head_state(self, arrays: dict[str, np.ndarray], params: dict[str, Any] | None = None) -> None:
        """Replace the saved head state with ``arrays`` (name -> numeric array) and JSON ``params``, whole.

        Every array is rewritten at every call; a head with one row per class should use
        :meth:`save_head`, which writes only the changed classes' rows.
        """
        headstate.save_whole(self, arrays, params)

    def save_head(self, rows: dict[str, dict[str, np.ndarray]], params: dict[str, Any] | None = None,
                  global_arrays: dict[str, np.ndarray] | None = None) -> None:
        """Save the head state per class: the rows of the classes in ``rows``, the params, and the
        global arrays when given. Every other class keeps its saved row; O(changed classes).

        Args:
            rows: class name -> that class's arrays (e.g. ``{"sums": float32 (D,), "counts": int32 ()}``);
                every class has the same names, dtypes and shapes (the layout). Each class added or
                appended to in this transaction needs its row here; a new layout needs every class's.
            params: JSON parameters (a ``classes`` entry is dropped: the store's class order is used).
            global_arrays: arrays that are not per class (a centre feature, the calibration sample);
                None keeps the saved ones.

        Raises:
            StoreError: rows of unknown classes, rows that do not share one layout, NaN/inf, a class
                changed in this transaction without its row, a new layout without every class's row.
        """
        headstate.save_rows(self, rows, params, global_arrays)

    # ---- reads see this transaction's writes --------------------------------------------------
    def added_ids(self, name: str) -> np.ndarray:
        """Row ids of the samples this transaction added to class ``name`` (int64, insertion order)."""
        return np.array(self._added_ids.get(name, []), np.int64)

    def classes(self) -> list[ClassInfo]:
        """The store's classes as this transaction sees them."""
        return self._store.classes()

    def sample_set(self) -> SampleSet:
        """The samples as this transaction sees them (see :meth:`ClassStore.sample_set`); O(changed rows)."""
        text = digest.combine(self._store._meta_value("samples") or digest.EMPTY, self._added, self._removed)
        found = SampleSet.from_text(text)
        assert found is not None
        return found
