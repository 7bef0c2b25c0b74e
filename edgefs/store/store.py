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
and shared memory need room), so :func:`remove_on_full_disk` deletes the reserve first,
removes, gives the freed pages back, and makes the reserve again when there is room.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from edgefs import __version__
from edgefs.runtime.bundle import Bundle, Manifest
from edgefs.runtime.quantized import parent_fingerprint, quantization_info
from edgefs.store import digest, schema
from edgefs.store.validate import (
    EMBEDDING_DTYPE,
    StoreError,
    check_embeddings,
    check_head_state,
    check_name,
    check_thumbnails,
)

if TYPE_CHECKING:
    from edgefs.store.packs import ImportResult

_T = TypeVar("_T")

STORE_FORMAT = "edgefs-class-store"
#: meta key of the device settings (``edgefs serve``'s settings page: smoothing, ...)
SETTINGS_KEY = "settings"
#: Stores up to this size are checked whole at open (PRAGMA quick_check); larger ones table by table.
FULL_CHECK_BYTES = 64 * 2**20
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


def _manifest_of(manifest_or_bundle: Manifest | Bundle) -> Manifest:
    if isinstance(manifest_or_bundle, Bundle):
        return manifest_or_bundle.manifest
    if isinstance(manifest_or_bundle, Manifest):
        return manifest_or_bundle
    raise TypeError(f"ClassStore.open needs a Manifest or a Bundle, got {type(manifest_or_bundle).__name__}")


def explain_sqlite_error(path: Path, exc: sqlite3.Error, doing: str) -> StoreError:
    """A :class:`StoreError` that says what an SQLite failure means for the user and what to do."""
    text = str(exc)
    low = text.lower()
    try:
        free_bytes: int | None = shutil.disk_usage(path.parent).free
    except OSError:
        free_bytes = None
    # SQLite reports a full disk as SQLITE_FULL while writing, but as an I/O error when it cannot
    # even create the WAL or shared-memory file at open.
    full = "disk is full" in low or ("disk i/o error" in low and free_bytes is not None and free_bytes < 1 << 20)
    if full:
        free = "free space unknown" if free_bytes is None else f"{free_bytes // 1024} KiB free"
        return StoreFull(f"the disk holding class store {path} is full ({free}) while {doing}; nothing was "
                         "written and the store is as it was. Free some space and run the command again")
    if "malformed" in low or "not a database" in low or "corrupt" in low:
        return StoreError(damaged_message(path, text))
    if "readonly" in low or "read-only" in low:
        return StoreError(f"class store {path} is read-only ({text}) while {doing}; make the file and its folder "
                          "writable by this user, or choose another --store")
    if "locked" in low or "busy" in low:
        return StoreError(f"class store {path} is busy: another process held it for more than 10 s while "
                          f"{doing} ({text}); nothing was written. Try again")
    if "unable to open" in low:
        return StoreError(f"cannot open class store {path} ({text}); check that its folder exists and is "
                          "writable by this user, or choose another --store")
    if "disk i/o error" in low:
        return StoreError(f"class store {path}: the disk reported an I/O error while {doing}; nothing was written. "
                          "Check the disk ('dmesg', free space) and restore the store from a backup if it persists")
    return StoreError(f"class store {path} failed while {doing}: {text}; nothing was written")


def damaged_message(path: Path, detail: str) -> str:
    return (f"class store {path} is damaged ({detail[:200]}); it was not changed. Restore it from a backup, "
            f"or import a class pack exported earlier into a new store ('edgefs classes import PACK --store "
            f"NEW.db'), or enroll the classes again into a new --store. 'sqlite3 {path} .recover' may salvage "
            "the readable rows")


def store_files(path: str | Path) -> dict[str, Path]:
    """The class store at ``path`` and the files SQLite (and edgefs) keep beside it, by what they are.

    A command that writes a file must not write over any of them: replacing the write-ahead log
    of an open store loses its newest commits, and SQLite deletes its side files by name.
    """
    path = Path(path)
    return {
        "the class store": path,
        "the class store's write-ahead log": path.with_name(path.name + "-wal"),
        "the class store's shared-memory file": path.with_name(path.name + "-shm"),
        "the class store's rollback journal": path.with_name(path.name + "-journal"),
        "the class store's space reserve": reserve_path(path),
    }


#: Bytes kept allocated beside a store (``STORE-reserve``) for removing classes when the disk is full:
#: SQLite's shared memory (32 KiB) and the write-ahead log of a removal (the pages it changes) fit in it.
RESERVE_BYTES = 1 << 20


class StoreFull(StoreError):
    """The disk holding the store is full: SQLite could not write (SQLITE_FULL) or make its WAL files at open."""


def reserve_path(path: str | Path) -> Path:
    """The space reserve kept beside the store at ``path``."""
    path = Path(path)
    return path.with_name(path.name + "-reserve")


def _free_bytes(folder: Path) -> int | None:
    try:
        return int(shutil.disk_usage(folder).free)
    except OSError:
        return None


def make_reserve(path: str | Path, need_free: int = 4 * RESERVE_BYTES) -> bool:
    """Keep :data:`RESERVE_BYTES` allocated beside the store at ``path``; True when the reserve is there now.

    Made only while the disk has ``need_free`` bytes free (never the reserve that fills it), with
    ``posix_fallocate`` (real blocks, not a sparse file; written as zeros where the file system
    cannot allocate). Idempotent and safe against other processes doing the same: the file is
    only ever extended to its size, and a reserve cut short by a power cut is completed here.
    Never raises: a folder that cannot be written has no reserve, and removal on a full disk
    then says so.
    """
    reserve = reserve_path(path)
    with contextlib.suppress(OSError):
        if reserve.stat().st_size >= RESERVE_BYTES:
            return True
    free = _free_bytes(reserve.parent)
    if free is None or free < need_free:
        return False
    existed = reserve.exists()
    try:
        fd = os.open(reserve, os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError:
        return False
    try:
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
        except (AttributeError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise
            zeros = bytes(64 * 1024)
            os.lseek(fd, 0, os.SEEK_SET)
            for _ in range(RESERVE_BYTES // len(zeros)):
                os.write(fd, zeros)
        return True
    except OSError:
        if not existed:
            with contextlib.suppress(OSError):
                reserve.unlink()
        return False
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Removal:
    """What :func:`remove_on_full_disk` did.

    Attributes:
        removed: class name -> samples removed.
        released: bytes of the space reserve deleted to make room.
        returned: bytes of freed pages the store gave back to the file system (its file shrank by as much).
        kept: bytes of free pages the store still holds (reused by later enrollments).
        gives_back: whether the store can give free pages back at all (made by this edgefs, with
            incremental vacuum); one made by an older edgefs keeps them.
        store_bytes: the store's size now.
        free: bytes free on the disk now (None if unknown).
        reserve_remade: whether the space reserve was made again.
    """

    removed: dict[str, int]
    released: int
    returned: int
    kept: int
    gives_back: bool
    store_bytes: int
    free: int | None
    reserve_remade: bool

    def summary(self, path: Path) -> str:
        kib = 1024
        lines = [f"removed {name!r} ({n} samples)" for name, n in self.removed.items()]
        lines.append(f"the disk was full: deleted the {self.released // kib} KiB space reserve "
                     f"{reserve_path(path).name} to make room for the removal")
        free = "unknown" if self.free is None else f"{self.free // kib} KiB"
        if self.kept and self.gives_back:
            lines.append(f"{self.kept // kib} KiB more stay in the store for now (the disk had no room to give "
                         "them back, or another process was using the store); the next 'edgefs classes remove' "
                         "gives them back")
        elif self.kept:
            lines.append(
                f"the store keeps the {self.kept // kib} KiB its removed classes used, for later enrollments: it was "
                "made by an older edgefs, which cannot give space back to the disk. To give it back, run "
                f"\"sqlite3 {path} 'PRAGMA auto_vacuum=INCREMENTAL; VACUUM'\" once about "
                f"{2 * self.store_bytes // kib} KiB are free")
        lines.append(f"the store gave {self.returned // kib} KiB back to the disk (it is {self.store_bytes // kib} "
                     f"KiB now); {free} free on the disk")
        lines.append("the space reserve was made again" if self.reserve_remade else
                     f"the space reserve could not be made again ({free} free, it needs {RESERVE_BYTES // kib} KiB "
                     "and leaves as much free): free some space on that disk before enrolling, so that classes can "
                     "be removed again when it fills up")
        lines.append("the head state is rebuilt from the remaining samples the next time the store is opened by "
                     "enroll, run or serve")
        return "\n".join(lines)


def _store_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def remove_on_full_disk(path: str | Path, manifest_or_bundle: Manifest | Bundle, names: Sequence[str],
                        cause: StoreFull | None = None) -> Removal:
    """Remove classes from a store whose disk is full, using the space reserve kept beside it.

    On a full disk SQLite cannot start a removal: opening the store makes its write-ahead log
    and shared-memory files, and a delete appends the pages it changes to the log. So:

    1. the space reserve (:func:`make_reserve`) is deleted, which frees :data:`RESERVE_BYTES`;
    2. the class names are checked, reading the store only (an unknown name: the reserve is made
       again and nothing is removed);
    3. the classes are removed in one transaction, with ``secure_delete=FAST`` (freed pages are
       not overwritten, so the log grows by the changed pages only, not by the removed data);
       the head state is not rewritten but marked out of date, and is rebuilt from the
       remaining samples at the next open by enroll, run or serve;
    4. the freed pages are given back to the file system a few at a time
       (:meth:`ClassStore.return_free_pages`), so the log never needs much room;
    5. the reserve is made again if the disk now has room for it and as much again.

    Power-cut safe: every change to the store is an ordinary durable SQLite transaction (a
    cut before the removal's commit leaves every class; after it, none of ``names``), the
    reserve is a file of zeros whose loss costs nothing, and a missing reserve is made again
    at the next open with room.

    Args:
        cause: the full-disk error of the ordinary removal, quoted when this fails too.

    Raises:
        StoreError: a name that is not enrolled (nothing removed).
        StoreFull: no reserve beside the store, or the removal needed more room than it freed;
            the message says what else to do. The store is as it was.
    """
    path = Path(path)
    manifest = _manifest_of(manifest_or_bundle)
    reserve = reserve_path(path)
    try:
        released = reserve.stat().st_size
    except OSError:
        released = 0
    full = str(cause) if cause is not None else f"the disk holding class store {path} is full"
    if not released:
        raise StoreFull(
            f"{full}. No space reserve is kept beside this store ({reserve.name}: a store made by an older edgefs, "
            f"or on a disk that never had {4 * RESERVE_BYTES // 1024} KiB free, has none), so removing classes needs "
            "some free space as well: delete other files on that disk (old class packs, logs, recordings) until "
            f"about {RESERVE_BYTES // 1024} KiB are free, then run 'edgefs classes remove' again")
    reserve.unlink()
    try:
        enrolled = enrolled_names(path, manifest.fingerprint)
        unknown = [n for n in names if enrolled is not None and n not in enrolled]
        if unknown:
            raise StoreError(f"cannot remove {unknown}: not enrolled; nothing was removed. Enrolled: "
                             f"{', '.join(enrolled or []) or 'none'}")
        with ClassStore.open(path, manifest, create=False) as store:
            removed = store.remove_compactly(names)
            returned = store.return_free_pages()
            kept = store.free_page_bytes()
            gives_back = store.gives_space_back()
    except StoreFull as exc:
        make_reserve(path, need_free=RESERVE_BYTES)  # the space it had is free again: the removal rolled back
        raise StoreFull(
            f"{exc}; deleting the {released // 1024} KiB space reserve beside it was not enough for this removal. "
            "Delete other files on that disk (old class packs, logs, recordings), or remove fewer classes at a "
            "time, then run 'edgefs classes remove' again") from None
    except BaseException:
        make_reserve(path, need_free=RESERVE_BYTES)
        raise
    remade = make_reserve(path, need_free=2 * RESERVE_BYTES)
    return Removal(removed, released, returned, kept, gives_back, _store_bytes(path), _free_bytes(path.parent), remade)


SQLITE_MAGIC = b"SQLite format 3\x00"


def _file_looks_like(head: bytes) -> str:
    """What a file's first bytes suggest it is, for a message."""
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (a class pack or a PyTorch file?)"
    if head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8\xff"):
        return "an image"
    return "a text file" if all(32 <= b < 127 or b in b"\t\r\n" for b in head) else "a binary file"


def _identity(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def _read_schema(conn: sqlite3.Connection) -> tuple[list[str], str | None]:
    """The user tables of a database and its meta ``format``, if any."""
    tables = [str(n) for (n,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
        "ORDER BY name")]
    found: str | None = None
    if "meta" in tables:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        except sqlite3.OperationalError:  # a 'meta' table of another shape: another application's
            row = None
        found = None if row is None else str(row[0])
    return tables, found


def _read_only(path: Path, wal_mode: bool, read: Callable[[sqlite3.Connection], _T]) -> _T:
    """``read(conn)`` on a read-only connection to the SQLite database at ``path``; writes nothing to it.

    A database in WAL mode with no ``-wal`` file, or an empty one, holds every checkpointed commit
    in its main file: it is opened as immutable (no lock, and no ``-shm`` file made beside it,
    which also works on a full disk), and that read is trusted only if no checkpoint wrote the
    file meanwhile (its inode, size and modification time are unchanged). Otherwise, or when
    that read fails, it is read with SQLite's locking.

    Raises:
        sqlite3.Error: the locked read failed.
    """
    base = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro"
    wal = path.with_name(path.name + "-wal")

    def no_log() -> bool:  # no -wal, or an empty one (left by an open that failed): every commit is in the file
        try:
            return wal.stat().st_size == 0
        except FileNotFoundError:
            return True
        except OSError:
            return False

    def on(uri: str) -> _T:
        conn = sqlite3.connect(uri, uri=True, timeout=10.0)
        try:
            return read(conn)
        finally:
            conn.close()

    if wal_mode and no_log():
        before = _identity(path)
        try:
            result = on(base + "&immutable=1")
        except sqlite3.Error:
            pass
        else:
            if _identity(path) == before:  # no checkpoint wrote the file meanwhile: the read is whole
                return result
    return on(base)


def _head_bytes(path: Path) -> bytes:
    """The first 100 bytes of ``path`` (an SQLite header's size)."""
    try:
        with open(path, "rb") as f:
            return f.read(100)
    except OSError as exc:
        raise StoreError(f"cannot read class store {path} ({exc.strerror or exc}); check --store and that "
                         "this user may read it") from None


def refuse_foreign_file(path: Path) -> None:
    """Refuse a file that is not a class store (nor empty), reading it only: it is left byte for byte as it was.

    Run before the store's own connection opens the file, since that one switches the file to
    WAL mode and may migrate it: both are writes, and another application's database (or any
    other file given as ``--store`` by mistake) must not be changed. What counts:

    * an empty file, or an SQLite database with no tables and no application's marks
      (``user_version`` and ``application_id`` 0): becomes a new store, as a missing path does;
    * an SQLite database whose ``meta`` table says ``format`` = :data:`STORE_FORMAT`: a store (its
      version, bundle and soundness are checked by the open that follows);
    * anything else is refused: a file that is not SQLite, or another application's database.

    The database is read with a read-only connection (:func:`_read_only`): when it is in WAL mode
    with no write-ahead log to read it is opened as immutable, so not even SQLite's ``-shm``
    file is made beside it.

    Raises:
        StoreError: what the file is, that it was not changed, and what to give ``--store`` instead.
    """
    head = _head_bytes(path)
    if not head:
        return  # an empty file: a new store
    advice = ("it was not changed. --store takes a class store made by 'edgefs enroll' or 'edgefs classes "
              "import' (e.g. classes.db); give a new file name to start a new store")
    if not head.startswith(SQLITE_MAGIC) or len(head) < 100:
        raise StoreError(f"{path} is not a readable edgefs class store: it is {_file_looks_like(head)}, not an "
                         f"SQLite database; {advice}")
    user_version = int.from_bytes(head[60:64], "big")
    application_id = int.from_bytes(head[68:72], "big")
    try:
        tables, found = _read_only(path, head[18] == 2, _read_schema)
    except sqlite3.Error as exc:
        raise explain_sqlite_error(path, exc, "checking what it is") from None
    if found == STORE_FORMAT:
        return
    if not tables and found is None and user_version == 0 and application_id == 0:
        return  # an empty database: a new store is made in it
    if tables:
        shown = ", ".join(tables[:8]) + (f" and {len(tables) - 8} more" if len(tables) > 8 else "")
        what = f"another application's database: it holds the tables {shown}"
    else:
        what = (f"a database marked by another application (application_id {application_id:#x}, "
                f"user_version {user_version})")
    raise StoreError(f"{path} is an SQLite database but not an edgefs class store; it is {what}. {advice[0].upper()}"
                     f"{advice[1:]}")


def enrolled_names(path: str | Path, fingerprint: str) -> list[str] | None:
    """The classes of the store at ``path``, read without writing anything to it (no pragma, no migration).

    For a command that must refuse before it writes (``edgefs enroll --append`` of a class that is
    not there), whereas :meth:`ClassStore.open` may migrate the store and the classifier may save
    a rebuilt head.

    Returns:
        the class names in enrollment order; None when there is no store yet (a missing or empty
        file, an empty database) or it is not one this check can read: one of another bundle
        (``fingerprint`` differs) or a damaged one, for which the store's own open says what is wrong.

    Raises:
        StoreError: ``path`` is not a class store (:func:`refuse_foreign_file`).
    """
    path = Path(path)
    if not path.is_file():
        return None
    refuse_foreign_file(path)

    def names(conn: sqlite3.Connection) -> list[str] | None:
        tables, found = _read_schema(conn)
        if found != STORE_FORMAT or "classes" not in tables:
            return None
        row = conn.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
        if row is None or row[0] != fingerprint:
            return None
        return [str(n) for (n,) in conn.execute("SELECT name FROM classes ORDER BY id")]

    head = _head_bytes(path)
    if not head:
        return None
    try:
        return _read_only(path, head[18] == 2, names)
    except sqlite3.Error:
        return None


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


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
        params_json = check_head_state(arrays, params)
        self._conn.execute("DELETE FROM head_state")
        self._conn.execute("DELETE FROM head_rows")
        self._conn.executemany(
            "INSERT INTO head_state (name, dtype, shape, data) VALUES (?, ?, ?, ?)",
            [(k, a.dtype.str, json.dumps(list(a.shape)), np.ascontiguousarray(a).tobytes()) for k, a in arrays.items()],
        )
        self._store._set_meta("head_params", params_json)
        self._store._set_meta("head_layout", "")
        self.head_saved = True

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
            class_id = self._class_id(name)
            if class_id is None:
                raise StoreError(f"cannot save a head row for {name!r}: it is not enrolled. {self._known()}")
            data = b"".join(np.ascontiguousarray(arrays[k]).tobytes() for k, _, _ in this)
            records.append((class_id, data))
        saved = self._store._meta_value("head_layout") or ""
        layout_json = json.dumps(layout) if layout is not None else saved
        if layout_json != saved:
            total = self._conn.execute("SELECT COUNT(*) FROM classes").fetchone()[0]
            if len(records) != total:
                raise StoreError(f"the head's row layout changed, so every class's row must be saved "
                                 f"({len(records)} given, {total} classes)")
            self._conn.execute("DELETE FROM head_rows")
        missing = self._touched - {class_id for class_id, _ in records}
        if missing:
            names = [n for (n,) in self._conn.execute(
                f"SELECT name FROM classes WHERE id IN ({','.join('?' * len(missing))})", sorted(missing))]
            raise StoreError(f"the head rows of {names} were not saved although their samples changed")
        self._conn.executemany("INSERT OR REPLACE INTO head_rows (class_id, data) VALUES (?, ?)", records)
        if global_arrays is not None:
            self._conn.execute("DELETE FROM head_state")
            self._conn.executemany(
                "INSERT INTO head_state (name, dtype, shape, data) VALUES (?, ?, ?, ?)",
                [(k, a.dtype.str, json.dumps(list(a.shape)), np.ascontiguousarray(a).tobytes())
                 for k, a in global_arrays.items()],
            )
        self._store._set_meta("head_params", params_json)
        if layout_json != saved:
            self._store._set_meta("head_layout", layout_json)
        self.head_saved = True

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
        manifest = _manifest_of(manifest_or_bundle)
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
        with self._lock, self._sqlite_errors("reading"):
            rows = self._conn.execute("SELECT name, dtype, shape, data FROM head_state ORDER BY name").fetchall()
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
            layout_json = meta.get("head_layout") or ""
            class_rows = self._conn.execute(
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
                    f"head state array {name!r} in {self.path} is corrupt ({exc}); re-enroll or rebuild the head"
                ) from exc
        try:
            params = json.loads(meta.get("head_params", "{}"))
        except ValueError:
            params = None
        if not isinstance(params, dict):
            raise StoreError(f"the head parameters in {self.path} are corrupt; re-enroll or rebuild the head")
        missing = 0
        if layout_json:
            missing = sum(1 for _, data in class_rows if data is None)
            if not missing:
                arrays.update(self._assemble_rows(layout_json, [data for _, data in class_rows]))
            params["classes"] = [name for name, _ in class_rows]
        stored = SampleSet.from_text(meta.get("samples"))
        derived = SampleSet.from_text(meta.get("head_samples"))
        current = (meta.get("head_current", "1") == "1" and not missing
                   and (derived == stored or (not arrays and not class_rows)))
        return HeadState(arrays, params, current=current, samples=None if derived is None else derived.count,
                         stored=0 if stored is None else stored.count, per_class=bool(layout_json),
                         missing_rows=missing)

    def _assemble_rows(self, layout_json: str, blobs: list[bytes]) -> dict[str, np.ndarray]:
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
            raise StoreError(f"the per-class head rows in {self.path} are corrupt ({exc}); "
                             "re-enroll or rebuild the head") from exc
        return {name: np.ascontiguousarray(table[name]) for name in record.names}

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
            lines += [f"{c.name:<{width}}  {c.shots:>5}  {_utc(c.created)}  {_utc(c.updated)}" for c in infos]
        return "\n".join(lines)
