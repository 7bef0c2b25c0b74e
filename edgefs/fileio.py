"""Durable file writes and bounded file reads.

Writes: a kill or power cut mid-write leaves the old file or the new one, never
half. Write to a temporary file in the same folder, flush and fsync it, give it
the mode a plain ``open(path, "w")`` would (0666 less the umask; a temporary file
starts at 0600), rename it over the target (atomic on POSIX), then fsync the
folder so the rename itself is on disk. Used for checkpoints, manifests, episode
lists, engines, class packs and caches. Whole folders (data sets, unpacked
packages) are written the same way by :func:`replacing_dir`: into a hidden
temporary sibling, swapped in only when complete.

Reads of files edgefs did not write itself: :func:`check_regular_file` (a regular
file, after following links, no bigger than a limit from :mod:`edgefs.limits`)
before any byte is read, and :func:`read_limited`, which never reads more than
the limit whatever the file turns out to be. :func:`load_npy` checks an ``.npy``
header's shape against the bytes present before NumPy allocates.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from edgefs.errors import EdgefsError


class FileRefused(EdgefsError):
    """A file that is missing, not a regular file, or over its size limit; nothing of it was read."""


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a pipe (FIFO)"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def unreadable_hint(path: str | Path) -> str:
    """Why this user cannot read ``path`` and what its owner can do (for a PermissionError)."""
    try:
        st = os.stat(path)
    except OSError:
        return f"{path} cannot be opened by this user"
    return (f"{path} is not readable by this user (uid {os.getuid()}): it is mode {stat.S_IMODE(st.st_mode):04o}, "
            f"owned by uid {st.st_uid}. Its owner can run 'chmod a+r {path}' (and 'chmod a+x' on its folders), "
            "or run edgefs as a user that may read it")


def check_regular_file(path: str | Path, limit: int, what: str) -> int:
    """Return the size of ``path`` if it is a regular file (links followed) of at most ``limit`` bytes.

    Args:
        what: how the message names the file, e.g. ``"bundle manifest"``.

    Raises:
        FileRefused: missing, a device, pipe, socket or folder (also through a link), or too big.
    """
    path = Path(path)
    try:
        st = os.stat(path)  # follows links: a link to /dev/zero is refused as a device
    except FileNotFoundError:
        raise FileRefused(f"{what} {path} does not exist") from None
    except PermissionError:
        raise FileRefused(f"cannot read {what}: {unreadable_hint(path)}") from None
    except OSError as exc:
        raise FileRefused(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        link = f" (a link to {os.path.realpath(path)})" if path.is_symlink() else ""
        raise FileRefused(f"{what} {path}{link} is {_file_kind(st.st_mode)}, not a regular file; refusing to read it")
    if st.st_size > limit:
        raise FileRefused(
            f"{what} {path} is {st.st_size} bytes, over the limit of {limit} (edgefs.limits); "
            "it is damaged or not what it claims to be"
        )
    return int(st.st_size)


def read_limited(path: str | Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (checked before and while reading)."""
    check_regular_file(path, limit, what)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)  # the file may have grown since the check
    except PermissionError:
        raise FileRefused(f"cannot read {what}: {unreadable_hint(path)}") from None
    except OSError as exc:
        raise FileRefused(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise FileRefused(f"{what} {path} grew past the limit of {limit} bytes while being read")
    return data


def load_npy(data: bytes, what: str) -> np.ndarray:
    """An array from ``.npy`` bytes, never unpickling, and never allocating more than the bytes present.

    Raises:
        EdgefsError: not an ``.npy``, object dtype, or a header whose shape does not fit the data.
    """
    if not data.startswith(b"\x93NUMPY"):
        raise EdgefsError(f"{what} is not a .npy array")
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, SyntaxError, TypeError, OverflowError) as exc:
        raise EdgefsError(f"{what} has a malformed .npy header ({exc})") from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise EdgefsError(f"{what} has dtype {dtype}: it would need pickle, and edgefs reads arrays only "
                          "without pickle")
    if any(not isinstance(n, int) or n < 0 for n in shape):
        raise EdgefsError(f"{what} declares shape {shape}")
    need = math.prod(shape) * dtype.itemsize
    have = len(data) - f.tell()
    if need != have:
        raise EdgefsError(f"{what} declares shape {shape} of {dtype} ({need} bytes) but holds {have} bytes; "
                          "it is truncated or corrupt")
    arr = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=f.tell())
    return (arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)).copy()


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (changing it races other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """Yield a binary file; on a clean exit it replaces ``path`` durably, on an error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp makes the file 0600; a bundle or pack must be readable by whoever a plain
            # write would let read it (e.g. the service account that runs 'edgefs run').
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _remove(path: Path) -> None:
    """Delete a folder tree, a file or a link (a link to a folder: the link, never what it points to)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def replacing_dir(final: Path) -> Iterator[Path]:
    """Yield a new empty folder beside ``final``; on a clean exit it becomes ``final``.

    The folder is a hidden sibling (``.NAME.partial-XXXX``, same file system, so the swap is a
    rename). On a clean exit an existing ``final`` (folder, file or link) is first renamed aside,
    the new folder renamed into place, and only then is the old one deleted: ``final`` is the
    old one, untouched, or the complete new one, never a half-written one (a power cut between
    the two renames leaves no ``final`` and the old one in the hidden ``...-old`` sibling). On an
    exception (or Ctrl-C) in the block the temporary folder is removed, ``final`` is left as it
    was, and the exception propagates. A process killed outright can leave its hidden folder.

    Args:
        final: the folder to write; its parent is created if missing.

    Yields:
        The temporary folder to fill.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    aside = tmp.with_name(tmp.name + "-old")  # unique: tmp's name is
    had_old = final.is_symlink() or final.exists()
    try:
        if had_old:
            os.replace(final, aside)
        os.replace(tmp, final)
    except BaseException:
        if os.path.lexists(aside):  # moved aside but the new one did not go in: put it back
            os.replace(aside, final)
        _remove(tmp)
        raise
    if had_old:
        _remove(aside)
    fsync_dir(final.parent)


class OutputOverInput(EdgefsError):
    """An output path that is, holds or lies inside one of the same command's inputs."""


def _same_or_inside(a: Path, b: Path) -> bool:
    """True when ``a`` is ``b`` (the same file, links followed) or lies inside the folder ``b``."""
    with contextlib.suppress(OSError):
        if a.exists() and b.exists() and os.path.samefile(a, b):
            return True
    ra, rb = a.resolve(), b.resolve()
    return ra == rb or rb in ra.parents


def check_output_not_input(out: str | Path, inputs: dict[str, str | Path | None], *, flag: str = "--out") -> None:
    """Refuse an output path that would overwrite one of the same command's inputs.

    ``inputs`` maps what each input is ("the class store", "the bundle", "the
    calibration folder") to its path (``None`` entries are skipped). The output is
    refused when it is an input, lies inside an input folder, or is a folder that
    holds an input (a command that replaces its output folder would delete it).
    Nothing is written before this check, so a refusal loses nothing.
    """
    out_p = Path(out)
    for what, path in inputs.items():
        if path is None:
            continue
        in_p = Path(path)
        if _same_or_inside(out_p, in_p) or _same_or_inside(in_p, out_p):
            raise OutputOverInput(
                f"{flag} {out} would overwrite {what} ({in_p}), which this command reads; nothing was written. "
                f"Give {flag} a path that is neither {in_p}, nor inside it, nor a folder holding it")
