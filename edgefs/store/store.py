"""The on-device class store: enrolled classes, their sample embeddings and the head state, in SQLite.

A store belongs to one bundle: its embeddings live in that backbone's embedding
space, so opening it with a bundle of another fingerprint (or embedding size)
is refused rather than mixing spaces. Every write is one transaction, validated
before anything is written; commits are durable (``synchronous=FULL`` in WAL
mode: a commit that returned survives a kill or a power cut).

Enrollment updates the samples and the head state together::

    with store.transaction() as tx:
        tx.add_samples("mug", embeddings, thumbnails, source="camera:0")
        tx.save_head_state({"prototypes": protos}, {"distance": "euclidean"})

Either both are committed or neither is. A transaction that changes samples
without saving the head state marks the saved head state out of date
(:attr:`HeadState.current` is False), so the runtime knows to rebuild it.

The saved head state also records the exact sample set it was derived from
(:meth:`ClassStore.sample_set`: the number of samples and a digest of every
sample's class, row id and time, kept up to date by each transaction from the rows
it touches, :mod:`edgefs.store.digest`; samples are never changed in place, so these
identify them). A head with one row per class is saved per class
(:meth:`Transaction.save_head`): a change to one class writes that class's row only.
The head state is current only while the store holds exactly that set, so a head
saved by a writer that had not seen another writer's samples is detected at open,
whoever wrote it, and rebuilt.

Space. A new store returns the pages its removed classes used to the file system
(``auto_vacuum = INCREMENTAL``, :meth:`ClassStore.return_free_pages`), and beside it a
space reserve is kept (``STORE-reserve``, :data:`RESERVE_BYTES`, made at open when the
disk has room): on a full disk SQLite cannot even start a removal (its write-ahead log
and shared memory need room), so :func:`edgefs.store.space.remove_on_full_disk` deletes the reserve first,
removes, gives the freed pages back, and makes the reserve again when there is room.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefs import __version__
from edgefs.runtime.bundle import Bundle, Manifest
from edgefs.runtime.quantized import parent_fingerprint, quantization_info
from edgefs.store import digest, headstate, schema
from edgefs.store.files import (
    STORE_FORMAT,
    damaged_message,
    explain_sqlite_error,
    make_reserve,
    manifest_of,
    refuse_foreign_file,
)
from edgefs.store.headstate import HeadState
from edgefs.store.records import SETTINGS_KEY, ClassInfo, SampleRow, SampleSet, Source, utc_text
from edgefs.store.transaction import Transaction
from edgefs.store.validate import (
    EMBEDDING_DTYPE,
    StoreError,
)

if TYPE_CHECKING:
    from edgefs.store.packs import ImportResult

#: Stores up to this size are checked whole at open (PRAGMA quick_check); larger ones table by table.
FULL_CHECK_BYTES = 64 * 2**20


class ClassStore:
    """A SQLite class store tied to one bundle. Open it with :meth:`open`; close it (or use ``with``).

    One store object may be shared between threads (calls are serialised by a lock);
    several processes may open the same file (SQLite locking; writers wait up to 10 s).
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, manifest: Manifest) -> None:
        self.path = path
        self._conn = conn
        self._manifest = manifest
        self.fingerprint = manifest.fingerprint
        self.dim = manifest.embedding_dim
        self.head_type = str(manifest.head.get("type", ""))
        self._lock = threading.RLock()
        self._tx: Transaction | None = None

    # ---- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, manifest_or_bundle: Manifest | Bundle, create: bool = True) -> ClassStore:
        """Open (or create) the store at ``path`` for the given bundle.

        A file that is not a store is refused before anything is written to it
        (:func:`refuse_foreign_file`). Once open, the space reserve beside the store is made if it
        is missing and the disk has room (:func:`make_reserve`).

        Raises:
            StoreError: ``path`` is missing and ``create`` is False; not a store; written by a
                newer edgefs; made with another bundle (fingerprint or embedding size).
        """
        manifest = manifest_of(manifest_or_bundle)
        path = Path(path)
        if not path.exists() and not create:
            raise StoreError(f"class store {path} does not exist; enroll a class to create it, or check --store")
        if path.is_dir():
            raise StoreError(f"class store {path} is a folder; --store takes a file, e.g. classes.db")
        new = not path.exists()
        if not new:
            refuse_foreign_file(path)  # reads only: nothing is written to a file that is not a store
        if new:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create class store {path}: its folder {path.parent} cannot be created "
                                 f"({exc.strerror or exc}); choose a --store in a folder you can write") from None
            if not os.access(path.parent, os.W_OK | os.X_OK):
                raise StoreError(f"cannot create class store {path}: its folder {path.parent} is not writable by "
                                 "this user; choose a --store in a folder you can write")
        try:
            # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE.
            conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise explain_sqlite_error(path, exc, "opening it") from None
        try:
            store = cls(path, conn, manifest)
            store._prepare()
        except sqlite3.OperationalError as exc:
            conn.close()
            raise explain_sqlite_error(path, exc, "creating it" if new else "opening it") from None
        except sqlite3.DatabaseError as exc:
            conn.close()
            if "not a database" in str(exc):
                raise StoreError(f"{path} is not a readable edgefs class store ({exc}); check --store") from None
            raise StoreError(damaged_message(path, str(exc))) from None
        except BaseException:
            conn.close()
            raise
        make_reserve(path)  # room for removing classes should the disk fill up later
        return store

    def _prepare(self) -> None:
        conn = self._conn
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        self._refuse_newer(version)
        if self.path.stat().st_size == 0:
            # A new store gives removed classes' pages back to the disk (return_free_pages). Only
            # settable before the file's first page is written, which the WAL switch below does.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
            raise StoreError(f"{self.path}: SQLite refused WAL mode here; put the store on a local file system")
        conn.execute("PRAGMA synchronous=FULL")  # a returned commit survives power loss
        conn.execute("PRAGMA foreign_keys=ON")
        if version < schema.latest_version() or not self._has_meta():
            self._migrate()
        self._check_bundle()
        # A damaged page would otherwise surface later as 'database disk image is malformed' in the
        # middle of a command; quick_check reads every page once (about 5 ms per MB). Above
        # FULL_CHECK_BYTES only the tables opening reads are checked, so a 10,000-class store
        # opens in well under a second; a damaged sample page then surfaces when that sample is
        # read, with the same message (explain_sqlite_error), and integrity_check() reads all.
        if self.path.stat().st_size <= FULL_CHECK_BYTES:
            problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
        else:
            problems = [r[0] for table in ("meta", "classes", "head_rows", "head_state")
                        for r in conn.execute(f"PRAGMA quick_check({table})").fetchall()]
            problems = [p for p in problems if p != "ok"] or ["ok"]
        if problems != ["ok"]:
            raise StoreError(damaged_message(self.path, "; ".join(problems)))

    def _refuse_newer(self, version: int) -> None:
        if version > schema.latest_version():
            raise StoreError(
                f"class store {self.path} has schema version {version}, newer than this edgefs "
                f"({__version__}, schema {schema.latest_version()}) understands; upgrade edgefs"
            )

    def _has_meta(self) -> bool:
        row = self._conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
        if row is None:
            return False
        return self._conn.execute("SELECT 1 FROM meta WHERE key = 'fingerprint'").fetchone() is not None

    def _migrate(self) -> None:
        """Apply the missing migrations and, for a new store, write its meta: one transaction."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            self._refuse_newer(version)
            if version == 0:
                tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
                if tables:
                    raise StoreError(
                        f"{self.path} is an SQLite database but not an edgefs class store "
                        f"(tables {sorted(t for (t,) in tables)}); choose another --store"
                    )
            for number in range(version + 1, schema.latest_version() + 1):
                schema.MIGRATIONS[number - 1](conn)
                conn.execute(f"PRAGMA user_version = {number}")
            if not conn.execute("SELECT 1 FROM meta WHERE key = 'fingerprint'").fetchone():
                now = repr(time.time())
                for key, value in (
                    ("format", STORE_FORMAT), ("fingerprint", self.fingerprint), ("embedding_dim", str(self.dim)),
                    ("head_type", self.head_type), ("created", now), ("updated", now),
                    ("edgefs_version", __version__), ("head_current", "1"),
                ):
                    self._set_meta(key, value)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _check_bundle(self) -> None:
        meta = self.meta()
        if meta.get("format") != STORE_FORMAT:
            raise StoreError(f"{self.path} is not an edgefs class store (format {meta.get('format')!r})")
        theirs = meta.get("fingerprint", "")
        if theirs != self.fingerprint and theirs == parent_fingerprint(self._manifest):
            info = quantization_info(self._manifest) or {}
            cosine = (info.get("parity") or {}).get("mean_cosine")
            measured = f" (measured mean cosine {cosine:.4f} to it)" if isinstance(cosine, float) else ""
            raise StoreError(
                f"this store belongs to bundle {theirs[:12]}..., the FP32 parent of the INT8 bundle you opened it "
                f"with ({self.fingerprint[:12]}...{measured}); a store holds one embedding space, so make one for "
                f"the INT8 bundle: 'edgefs classes reembed --store {self.path} --bundle PARENT.edgefs --to "
                "INT8.edgefs --out NEW.db' (or open this store with its FP32 bundle)"
            )
        if theirs != self.fingerprint:
            raise StoreError(
                f"this store belongs to bundle {theirs[:12]}..., you opened it with {self.fingerprint[:12]}...; "
                "use the bundle it was made with, or a new --store (embedding spaces are never mixed)"
            )
        if int(meta.get("embedding_dim", -1)) != self.dim:
            raise StoreError(
                f"this store holds size-{meta.get('embedding_dim')} embeddings but the bundle makes size-{self.dim}; "
                "use the bundle it was made with, or a new --store"
            )

    # ---- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection (the WAL is checkpointed into the main file)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ClassStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transactions -------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One atomic, durable write: everything in the ``with`` block commits together or not at all."""
        with self._lock:
            if self._tx is not None:
                raise StoreError("a store transaction is already open; do all the writes inside that one")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise explain_sqlite_error(self.path, exc, "starting a write") from None
            tx = self._tx = Transaction(self)
            try:
                with self._sqlite_errors("writing"):
                    yield tx
                    if tx.samples_changed or tx.head_saved:
                        self._set_meta("updated", repr(tx.now))
                        self._set_meta("head_current", "1" if tx.head_saved else "0")
                    now = tx.sample_set()
                    if tx.samples_changed:
                        self._set_meta("samples", now.to_text())
                    if tx.head_saved:
                        # The head state is derived from the samples as they are at this commit.
                        tx.committed_samples = now
                        self._set_meta("head_samples", now.to_text())
                    self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                raise
            finally:
                self._tx = None

    @contextmanager
    def _sqlite_errors(self, doing: str) -> Iterator[None]:
        """SQLite failures (disk full, a damaged page, read-only) as a :class:`StoreError` that says what to do."""
        try:
            yield
        except sqlite3.Error as exc:
            raise explain_sqlite_error(self.path, exc, doing) from None

    def _meta_value(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # ---- writes, one transaction each -----------------------------------------------------------
    def add_class(
        self,
        name: str,
        embeddings: np.ndarray,
        thumbnails: Sequence[bytes | None] | None = None,
        source: Source = "",
        head_state: dict[str, np.ndarray] | None = None,
        head_params: dict[str, Any] | None = None,
        singles: np.ndarray | None = None,
    ) -> None:
        """Enroll ``name`` from float32 ``(K, D)`` embeddings; optionally save the head state in the same commit.
        ``singles``: as :meth:`Transaction.add_class` takes them.

        Raises:
            StoreError: duplicate name (use :meth:`append`), bad embeddings or thumbnails; nothing is written.
        """
        with self.transaction() as tx:
            tx.add_class(name, embeddings, thumbnails, source, singles)
            if head_state is not None:
                tx.save_head_state(head_state, head_params)

    def append(
        self,
        name: str,
        embeddings: np.ndarray,
        thumbnails: Sequence[bytes | None] | None = None,
        source: Source = "",
        head_state: dict[str, np.ndarray] | None = None,
        head_params: dict[str, Any] | None = None,
        singles: np.ndarray | None = None,
    ) -> None:
        """Add float32 ``(K, D)`` shots to an enrolled class (arguments as :meth:`add_class`)."""
        with self.transaction() as tx:
            tx.append(name, embeddings, thumbnails, source, singles)
            if head_state is not None:
                tx.save_head_state(head_state, head_params)

    def remove(self, name: str) -> int:
        """Remove a class and its samples; returns the number of samples removed."""
        with self.transaction() as tx:
            return tx.remove(name)

    def rename(self, old: str, new: str) -> None:
        """Rename class ``old`` to ``new`` (which must not exist)."""
        with self.transaction() as tx:
            tx.rename(old, new)

    def save_head_state(self, arrays: dict[str, np.ndarray], params: dict[str, Any] | None = None) -> None:
        """Replace the saved head state (name -> numeric array, JSON params)."""
        with self.transaction() as tx:
            tx.save_head_state(arrays, params)

    # ---- space ----------------------------------------------------------------------------------
    def remove_compactly(self, names: Sequence[str]) -> dict[str, int]:
        """Remove classes in one transaction writing as little as possible (for a full disk).

        ``secure_delete=FAST``: the removed rows are cleared from the pages that hold other rows,
        but pages freed whole are not overwritten (SQLite built with ``SECURE_DELETE`` would append
        every one to the log, so a removal would need as much room as it frees). Freed pages leave
        the file with :meth:`return_free_pages`. The head state is not rewritten: it is marked out
        of date and rebuilt from the samples at the next open by enroll, run or serve.

        Returns: class name -> samples removed.
        """
        with self._lock:
            previous = int(self._conn.execute("PRAGMA secure_delete").fetchone()[0])
            self._conn.execute("PRAGMA secure_delete = FAST")
            try:
                with self.transaction() as tx:
                    return {name: tx.remove(name) for name in dict.fromkeys(names)}
            finally:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute(f"PRAGMA secure_delete = {previous}")

    def free_page_bytes(self) -> int:
        """Bytes of free pages inside the store file (space it holds but no row uses)."""
        with self._lock, self._sqlite_errors("reading"):
            pages = int(self._conn.execute("PRAGMA freelist_count").fetchone()[0])
            return pages * int(self._conn.execute("PRAGMA page_size").fetchone()[0])

    def gives_space_back(self) -> bool:
        """Whether the store can give free pages back to the file system (``auto_vacuum = INCREMENTAL``:
        every store this edgefs creates; a store made by an older edgefs keeps them for later rows)."""
        with self._lock, self._sqlite_errors("reading"):
            return int(self._conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2

    def _checkpoint(self) -> bool:
        """Copy the log into the store file and empty it; False when a reader kept it from finishing."""
        busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return not busy

    def return_free_pages(self, chunk_pages: int = 32) -> int:
        """Give the store's free pages back to the file system; returns how many bytes of pages it gave back.

        Only a store made with ``auto_vacuum = INCREMENTAL`` (every store this edgefs creates) can:
        ``incremental_vacuum`` moves ``chunk_pages`` pages from the end of the file into free pages
        at a time, and a checkpoint (``TRUNCATE``) copies them into the file, shortens it and empties
        the log, so the log never holds more than one chunk: this works on a nearly full disk.
        Each step is an ordinary transaction (power-cut safe). Stops early, keeping what was given
        back, when the disk has no room for a step or another process keeps the log in use (it
        waits for it half a second); the rest goes at a later removal.
        """
        with self._lock:
            if self._tx is not None:
                raise StoreError("return_free_pages() cannot run inside a transaction")
            if not self.gives_space_back():
                return 0
            before = self.free_page_bytes()
            self._conn.execute("PRAGMA busy_timeout = 500")
            try:
                if self._checkpoint():
                    while int(self._conn.execute("PRAGMA freelist_count").fetchone()[0]):
                        self._conn.execute(f"PRAGMA incremental_vacuum({int(chunk_pages)})").fetchall()
                        if not self._checkpoint():
                            break
            except sqlite3.Error:  # no room or busy: what was given back stays given back
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
            finally:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("PRAGMA busy_timeout = 10000")
            return max(before - self.free_page_bytes(), 0)

    # ---- class packs --------------------------------------------------------------------------
    def export_pack(self, path: str | Path, names: list[str] | None = None) -> Path:
        """Write ``names`` (default all) to a class pack file; see :func:`edgefs.store.packs.export_pack`."""
        from edgefs.store.packs import export_pack

        return export_pack(self, path, names)

    def import_pack(self, path: str | Path, on_conflict: str = "error") -> ImportResult:
        """Import a class pack in one transaction; see :func:`edgefs.store.packs.import_pack`."""
        from edgefs.store.packs import import_pack

        return import_pack(self, path, on_conflict)

    # ---- reads --------------------------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        """The store's facts: format, fingerprint, embedding_dim, head_type, created, updated, edgefs_version."""
        with self._lock, self._sqlite_errors("reading"):
            return dict(self._conn.execute("SELECT key, value FROM meta").fetchall())

    def classes(self) -> list[ClassInfo]:
        """Enrolled classes in enrollment order."""
        with self._lock, self._sqlite_errors("reading"):
            rows = self._conn.execute(
                "SELECT c.name, COUNT(s.id), c.created, c.updated FROM classes c "
                "LEFT JOIN samples s ON s.class_id = c.id GROUP BY c.id ORDER BY c.id"
            ).fetchall()
        return [ClassInfo(name, int(shots), float(created), float(updated)) for name, shots, created, updated in rows]

    def names(self) -> list[str]:
        """Class names in enrollment order."""
        return [c.name for c in self.classes()]

    def _decode(self, blob: bytes) -> np.ndarray:
        if len(blob) != 4 * self.dim:
            raise StoreError(
                f"class store {self.path} holds an embedding of {len(blob)} bytes, expected {4 * self.dim}: "
                "the store is corrupt; restore it from a class pack"
            )
        return np.frombuffer(blob, EMBEDDING_DTYPE)

    def embeddings(self, name: str) -> np.ndarray:
        """float32 ``(K, D)`` sample embeddings of ``name`` in enrollment order."""
        return self.samples(name)[0]

    def samples(self, name: str) -> tuple[np.ndarray, list[bytes | None], list[str], list[float]]:
        """All of a class's samples: float32 ``(K, D)`` embeddings, thumbnails, sources and times."""
        with self._lock, self._sqlite_errors("reading"):
            row = self._conn.execute("SELECT id FROM classes WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise StoreError(f"class {name!r} is not enrolled; 'edgefs classes list' shows what is")
            rows = self._conn.execute(
                "SELECT embedding, thumbnail, source, created FROM samples WHERE class_id = ? ORDER BY id", (row[0],)
            ).fetchall()
        emb = np.stack([self._decode(r[0]) for r in rows]) if rows else np.zeros((0, self.dim), EMBEDDING_DTYPE)
        return emb.astype(np.float32), [r[1] for r in rows], [r[2] for r in rows], [float(r[3]) for r in rows]

    def sample_rows(self, name: str) -> list[SampleRow]:
        """A class's shots without their embeddings, in enrollment order."""
        with self._lock, self._sqlite_errors("reading"):
            row = self._conn.execute("SELECT id FROM classes WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise StoreError(f"class {name!r} is not enrolled; 'edgefs classes list' shows what is")
            rows = self._conn.execute(
                "SELECT id, created, source, thumbnail IS NOT NULL FROM samples WHERE class_id = ? ORDER BY id",
                (row[0],)).fetchall()
        return [SampleRow(int(i), float(c), str(s), bool(t)) for i, c, s, t in rows]

    def thumbnail(self, sample_id: int) -> bytes | None:
        """The JPEG thumbnail of one shot (None if it has none).

        Raises:
            StoreError: no shot has that id.
        """
        with self._lock, self._sqlite_errors("reading"):
            row = self._conn.execute("SELECT thumbnail FROM samples WHERE id = ?", (int(sample_id),)).fetchone()
        if row is None:
            raise StoreError(f"no shot has id {sample_id}")
        return None if row[0] is None else bytes(row[0])

    def settings(self) -> dict[str, Any]:
        """The device settings saved with the store ({} when none); see :meth:`Transaction.save_settings`."""
        try:
            value = json.loads(self.meta().get(SETTINGS_KEY, "{}"))
        except ValueError:
            value = None
        return value if isinstance(value, dict) else {}

    def head_params(self) -> dict[str, Any]:
        """The saved head's JSON params alone (no arrays read); {} when none or unreadable."""
        with self._lock, self._sqlite_errors("reading"):
            text = self._meta_value("head_params")
        try:
            params = json.loads(text or "{}")
        except ValueError:
            return {}
        return params if isinstance(params, dict) else {}

    def samples_by_id(self, ids: np.ndarray, with_singles: bool = False) -> Any:
        """float32 ``(n, D)`` embeddings and class names of the samples with these row ids
        (a zero row and None for an id that is not stored); with ``with_singles``
        ``(embeddings, singles, names)``, ``singles`` as :meth:`all_embeddings` gives them."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        found: dict[int, tuple[bytes, bytes | None, str]] = {}
        with self._lock, self._sqlite_errors("reading"):
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                found.update((int(i), (e, o, n)) for i, e, o, n in self._conn.execute(
                    f"SELECT s.id, s.embedding, {'s.single' if with_singles else 'NULL'}, c.name FROM samples s "
                    f"JOIN classes c ON c.id = s.class_id WHERE s.id IN ({','.join('?' * len(chunk))})", chunk))
        x = np.zeros((len(ids), self.dim), np.float32)
        one = np.zeros((len(ids), self.dim), np.float32)
        names: list[str | None] = []
        for k, i in enumerate(ids):
            if i in found:
                x[k] = self._decode(found[i][0])
                single = found[i][1]
                one[k] = x[k] if single is None else self._decode(single)
            names.append(found[i][2] if i in found else None)
        return (x, one, names) if with_singles else (x, names)

    def all_embeddings(self, with_ids: bool = False, with_singles: bool = False) -> Any:
        """Every sample, for building a head.

        Returns:
            ``X`` float32 ``(N, D)``, ``labels`` int64 ``(N,)`` indexing ``names``, and
            ``names`` (enrollment order); with ``with_ids`` also the samples' row ids int64 ``(N,)``;
            with ``with_singles`` also float32 ``(N, D)`` each shot as one frame is embedded (its
            ``single`` view where ``X`` holds a mean of views, else ``X``'s row): what the unknown
            threshold's calibration scores.
        """
        with self._lock, self._sqlite_errors("reading"):
            names = [n for (n,) in self._conn.execute("SELECT name FROM classes ORDER BY id")]
            rows = self._conn.execute(
                f"SELECT c.name, s.embedding, s.id, {'s.single' if with_singles else 'NULL'} FROM samples s "
                "JOIN classes c ON c.id = s.class_id ORDER BY c.id, s.id"
            ).fetchall()
        index = {n: i for i, n in enumerate(names)}
        x = np.zeros((0, self.dim), np.float32)
        one = np.zeros((0, self.dim), np.float32)
        if rows:
            x = np.stack([self._decode(r[1]) for r in rows]).astype(np.float32)
            if with_singles:  # a shot stored as one view is its own single view
                one = np.stack([x[k] if r[3] is None else self._decode(r[3]) for k, r in enumerate(rows)])
        labels = np.array([index[r[0]] for r in rows], dtype=np.int64)
        out: tuple[Any, ...] = (x, labels, names)
        if with_ids:
            out += (np.array([r[2] for r in rows], np.int64),)
        if with_singles:
            out += (one,)
        return out

    def singles(self, name: str) -> np.ndarray | None:
        """float32 ``(K, D)`` the single views of ``name``'s samples (enrollment order), or None when
        every one of its embeddings is itself a single view."""
        with self._lock, self._sqlite_errors("reading"):
            if self._conn.execute("SELECT 1 FROM classes WHERE name = ?", (name,)).fetchone() is None:
                raise StoreError(f"class {name!r} is not enrolled; 'edgefs classes list' shows what is")
            rows = self._conn.execute(
                "SELECT s.single, s.embedding FROM samples s JOIN classes c ON c.id = s.class_id "
                "WHERE c.name = ? ORDER BY s.id", (name,)).fetchall()
        if all(r[0] is None for r in rows):
            return None
        return np.stack([self._decode(r[0] if r[0] is not None else r[1]) for r in rows]).astype(np.float32)

    def sample_set(self) -> SampleSet:
        """The identity of the stored samples: count and digest over (class id, name, sample id, time).

        Samples are only ever inserted or deleted, never changed, and a row id is never
        reused with the same insertion time, so two stores (or one store at two moments)
        with the same :class:`SampleSet` hold the same samples in the same classes. Kept by
        every transaction from the rows it touches (:mod:`edgefs.store.digest`): reading it
        is O(1); :meth:`scan_sample_set` recomputes it from every row.
        """
        with self._lock, self._sqlite_errors("reading"):
            found = SampleSet.from_text(self._meta_value("samples"))
        if found is None:
            raise StoreError(f"class store {self.path} has no sample digest; it is damaged. "
                             + damaged_message(self.path, "meta.samples missing"))
        return found

    def scan_sample_set(self) -> SampleSet:
        """:meth:`sample_set` recomputed from every sample row (one scan; for checks)."""
        with self._lock, self._sqlite_errors("reading"):
            found = SampleSet.from_text(digest.scan_sample_set(self._conn))
        assert found is not None
        return found

    def load_head_state(self) -> HeadState:
        """The saved head state (empty arrays if none was saved), checked against the stored samples.

        A head saved per class (:meth:`Transaction.save_head`) is assembled here: each array of
        the row layout becomes one ``(C, ...)`` array in class order, and ``params["classes"]``
        the class names in that order. The check is O(1) (the running sample digest).
        """
        return headstate.load(self)

    def integrity_check(self) -> str:
        """SQLite's ``integrity_check`` plus a foreign-key check: ``"ok"`` for a sound store."""
        with self._lock:
            result = "; ".join(r[0] for r in self._conn.execute("PRAGMA integrity_check").fetchall())
            orphans = self._conn.execute("PRAGMA foreign_key_check").fetchall()
            if result == "ok" and self.scan_sample_set() != self.sample_set():
                result = "the running sample digest differs from the samples (rebuild: reopen with edgefs)"
        return result if not orphans else f"{result}; {len(orphans)} rows violate foreign keys"

    def describe(self) -> str:
        """Human-readable summary used by ``edgefs classes list``."""
        meta = self.meta()
        infos = self.classes()
        head = self.load_head_state()
        lines = [
            f"store {self.path}: {len(infos)} classes, {sum(c.shots for c in infos)} samples, "
            f"bundle {self.fingerprint[:12]}..., dim {self.dim}, head {meta.get('head_type') or '-'}",
            f"head state: {', '.join(f'{k}{tuple(v.shape)}' for k, v in head.arrays.items()) or 'none'}"
            + ("" if head.current or not head.arrays else f" (out of date: {head.staleness()}; "
               "it is rebuilt from the samples when the store is next opened for enroll or run)"),
        ]
        settings = self.settings()
        if settings:
            lines.append("settings: " + ", ".join(f"{k} {v}" for k, v in sorted(settings.items())))
        if infos:
            width = max(len(c.name) for c in infos)
            lines.append(f"{'name':<{width}}  shots  created (UTC)        updated (UTC)")
            lines += [f"{c.name:<{width}}  {c.shots:>5}  {utc_text(c.created)}  {utc_text(c.updated)}" for c in infos]
        return "\n".join(lines)
