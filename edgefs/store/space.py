"""Space on a full disk: removing classes with the space reserve kept beside the store.

On a full disk SQLite cannot even start a removal (its write-ahead log and shared memory need
room), so :func:`remove_on_full_disk` deletes the reserve first, removes, gives the freed pages
back, and makes the reserve again when there is room."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgefs.runtime.bundle import Bundle, Manifest
from edgefs.store.files import (
    RESERVE_BYTES,
    StoreFull,
    enrolled_names,
    free_bytes,
    make_reserve,
    manifest_of,
    reserve_path,
)
from edgefs.store.store import ClassStore
from edgefs.store.validate import (
    StoreError,
)


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
    manifest = manifest_of(manifest_or_bundle)
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
    return Removal(removed, released, returned, kept, gives_back, _store_bytes(path), free_bytes(path.parent), remade)
