"""The class store's file on disk: what it is (another application's file is refused unread), the
files beside it, SQLite's errors in words, read-only peeks, and the space reserve."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from edgefs.runtime.bundle import Bundle, Manifest
from edgefs.store.validate import (
    StoreError,
)

_T = TypeVar("_T")

#: The ``format`` a class store's meta table holds (another SQLite file is refused unread).
STORE_FORMAT = "edgefs-class-store"


def manifest_of(manifest_or_bundle: Manifest | Bundle) -> Manifest:
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


def free_bytes(folder: Path) -> int | None:
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
    free = free_bytes(reserve.parent)
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
