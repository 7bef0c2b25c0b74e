"""Class packs: a store's classes in one file, to copy between devices.

A pack is a zip holding ``pack.json`` (format, versions, bundle fingerprint,
embedding size, classes with their shots), ``embeddings/NNNNN.npy`` (one
float32 ``(K, D)`` array per class, in the order of ``pack.json``),
``thumbnails/NNNNN/MMMMM.jpg`` (shot ``MMMMM`` of class ``NNNNN``, where it has
one) and, for a class enrolled with shot views (:mod:`edgefs.service.views`; its entry says
``"singles": true``, pack version 2), ``singles/NNNNN.npy``: its shots' single views.
Class names live only in ``pack.json``, never in member paths.

A pack is untrusted input. Import reads it whole and checks it before writing:
only the member names ``pack.json`` implies (no traversal, no extras, no
duplicates), declared and actual sizes under limits (zip bombs), no
encryption, ``.npy`` read with ``allow_pickle=False``, float32 ``(shots, dim)``
finite arrays, JPEG thumbnails, the store's fingerprint. Then it writes
everything in one transaction, or nothing.
"""

from __future__ import annotations

import errno
import io
import json
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefs import __version__, limits
from edgefs.errors import EdgefsError
from edgefs.fileio import FileRefused, atomic_writer, check_output_not_input, check_regular_file, load_npy
from edgefs.store import schema
from edgefs.store.files import store_files
from edgefs.store.validate import (
    EMBEDDING_DTYPE,
    MAX_THUMBNAIL_BYTES,
    StoreError,
    check_embeddings,
    check_name,
    check_thumbnails,
)

if TYPE_CHECKING:
    from edgefs.store.store import ClassStore
    from edgefs.store.transaction import Transaction

PACK_FORMAT = "edgefs-class-pack"
PACK_VERSION = 2  # 2: singles/ members; a pack without them is written as version 1
PACK_JSON = "pack.json"
ON_CONFLICT = ("error", "skip", "replace", "append")

# What an import reads is bounded by edgefs.limits (MAX_PACK_*, MAX_SHOTS_PER_CLASS), read at call time.


def embeddings_member(i: int) -> str:
    return f"embeddings/{i:05d}.npy"


def singles_member(i: int) -> str:
    return f"singles/{i:05d}.npy"


def thumbnail_member(i: int, j: int) -> str:
    return f"thumbnails/{i:05d}/{j:05d}.jpg"


@dataclass
class ImportResult:
    """What :func:`import_pack` did, by class name."""

    added: list[str] = field(default_factory=list)
    appended: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{len(v)} {k}" for k, v in vars(self).items() if v]
        return ", ".join(parts) or "nothing imported (the pack is empty)"


def export_pack(store: ClassStore, path: str | Path, names: list[str] | None = None) -> Path:
    """Write ``names`` (default: every class) of ``store`` to the pack file ``path``, atomically.

    The pack is written to a temporary file beside ``path`` and renamed over it only when
    complete (:func:`edgefs.fileio.atomic_writer`): a kill or a full disk mid-export leaves
    the old file at ``path``, or none.

    Returns: the pack's path.

    Raises:
        StoreError: an unknown class name, or an empty selection.
        OutputOverInput: ``path`` is the store itself or one of its side files (its write-ahead
            log, ...); nothing is written.
    """
    path = Path(path)
    known = store.names()
    chosen = known if names is None else list(dict.fromkeys(names))
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise StoreError(f"cannot export {unknown}: not enrolled; 'edgefs classes list' shows the classes")
    if not chosen:
        raise StoreError(f"store {store.path} has no classes to export; enroll some first")
    if path.is_dir():
        # A folder is refused rather than guessed into: a class name is no safe file name.
        raise StoreError(f"{path} is a folder; give the pack a file name, e.g. {path / 'classes.efpack'}")
    check_output_not_input(path, store_files(store.path), flag="the pack path")
    try:
        return _write_pack(store, path, chosen)
    except OSError as exc:
        full = exc.errno == errno.ENOSPC
        raise StoreError(
            f"cannot write class pack {path}: {exc.strerror or exc}; nothing was written"
            + (" (an older file there is kept). Free some space and export again" if full
               else ". Choose a PACK path in a folder you can write")
        ) from None


def _write_pack(store: ClassStore, path: Path, chosen: list[str]) -> Path:
    classes: list[dict[str, Any]] = []
    with atomic_writer(path) as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i, name in enumerate(chosen):
            emb, thumbs, sources, _ = store.samples(name)
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(emb, EMBEDDING_DTYPE), allow_pickle=False)
            zf.writestr(embeddings_member(i), buf.getvalue())
            singles = store.singles(name)
            if singles is not None:
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(singles, EMBEDDING_DTYPE), allow_pickle=False)
                zf.writestr(singles_member(i), buf.getvalue())
            for j, thumb in enumerate(thumbs):
                if thumb is not None:
                    zf.writestr(thumbnail_member(i, j), thumb, compress_type=zipfile.ZIP_STORED)
            classes.append({
                "name": name, "shots": int(emb.shape[0]),
                "thumbnails": [t is not None for t in thumbs], "sources": sources,
                **({"singles": True} if singles is not None else {}),
            })
        views = any(c.get("singles") for c in classes)
        doc = {
            "format": PACK_FORMAT, "pack_version": PACK_VERSION if views else 1,
            "store_schema_version": schema.latest_version(),
            "fingerprint": store.fingerprint, "embedding_dim": store.dim, "head_type": store.head_type,
            "edgefs_version": __version__, "created": time.time(), "classes": classes,
        }
        zf.writestr(PACK_JSON, json.dumps(doc, indent=1))
    return path


@dataclass
class _PackClass:
    name: str
    embeddings: np.ndarray
    thumbnails: list[bytes | None]
    sources: list[str]
    singles: np.ndarray | None = None


#: Bytes a ``.npy`` member may hold beyond its array: the magic, version and header (NumPy reads
#: headers of at most 10000 bytes; its own writer pads them to 64 or 128).
NPY_HEADER_MAX = 16 * 1024
#: Read members in pieces of this size: a member never decompresses more than this past its limit.
_READ_CHUNK = 1 << 20


def _read_bounded(f: Any, most: int) -> bytes:
    """At most ``most + 1`` bytes of the open member ``f``, read a piece at a time.

    A deflate stream is decompressed no further than the piece asked for, so a member whose
    stream expands past what its header declares costs one piece, not the expansion.
    """
    buf = bytearray()
    while len(buf) <= most:
        piece = f.read(min(_READ_CHUNK, most + 1 - len(buf)))
        if not piece:
            break
        buf += piece
    return bytes(buf)


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, budget: list[int]) -> bytes:
    """Read one member, refusing it if its declared or actual size is over ``limit`` or the total budget.

    Never more than ``min(limit, declared size) + 1`` bytes are decompressed into memory.
    """
    if info.flag_bits & 0x1:
        raise StoreError(f"pack member {info.filename!r} is encrypted; packs are never encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise StoreError(f"pack member {info.filename!r} uses compression {info.compress_type}; packs use deflate")
    if info.file_size > limit or info.file_size > budget[0]:
        raise StoreError(
            f"pack member {info.filename!r} declares {info.file_size} bytes, over the limit of "
            f"{min(limit, budget[0])}; refusing it (a damaged or hostile pack)"
        )
    with zf.open(info) as f:
        data = _read_bounded(f, info.file_size)  # whatever the stream holds beyond the declared size
    if len(data) != info.file_size:
        raise StoreError(f"pack member {info.filename!r} is not the size it declares; the pack is damaged")
    budget[0] -= len(data)
    return data


def _check_directory(infos: list[zipfile.ZipInfo], where: str) -> None:
    """Refuse a pack from its zip directory alone, before any member is decompressed.

    Members are float32 arrays and JPEG thumbnails, which deflate hardly shrinks: together they
    may declare at most :data:`edgefs.limits.MAX_PACK_EXPANSION` times their compressed size
    (plus 1 MiB), and at most :data:`edgefs.limits.MAX_PACK_TOTAL_BYTES` with ``pack.json``.
    """
    total = sum(i.file_size for i in infos)
    if total > limits.MAX_PACK_TOTAL_BYTES:
        raise StoreError(f"{where} declares {total} bytes uncompressed, over the limit of "
                         f"{limits.MAX_PACK_TOTAL_BYTES} (edgefs.limits.MAX_PACK_TOTAL_BYTES); it is damaged or "
                         "hostile: refusing it")
    data = [i for i in infos if i.filename != PACK_JSON]
    declared = sum(i.file_size for i in data)
    allowed = limits.MAX_PACK_EXPANSION * sum(i.compress_size for i in data) + limits.MiB
    if declared > allowed:
        raise StoreError(f"{where} declares {declared} bytes of embeddings and thumbnails in "
                         f"{sum(i.compress_size for i in data)} compressed bytes, more than "
                         f"{limits.MAX_PACK_EXPANSION} times as many (edgefs.limits.MAX_PACK_EXPANSION): embeddings "
                         "and JPEGs do not compress like that; it is a zip bomb or damaged: refusing it")


def _check_declared_sizes(entries: list[dict[str, Any]], by_name: dict[str, zipfile.ZipInfo], dim: int,
                          where: str) -> None:
    """Refuse members whose directory sizes do not fit what ``pack.json`` declares, before reading them."""
    for i, entry in enumerate(entries):
        most = entry["shots"] * dim * 4 + NPY_HEADER_MAX
        for member in (embeddings_member(i), *([singles_member(i)] if entry["singles"] else [])):
            size = by_name[member].file_size
            if size > most:
                raise StoreError(
                    f"{where}: member {member!r} declares {size} bytes, but class {entry['name']!r} has "
                    f"{entry['shots']} shots of {dim} float32 values (at most {most} bytes with its header); "
                    "it is damaged or hostile: refusing it"
                )


def _load_npy(data: bytes, member: str, shots: int, dim: int) -> np.ndarray:
    try:
        arr = load_npy(data, f"pack member {member!r}")
    except StoreError:
        raise
    except EdgefsError as exc:
        raise StoreError(str(exc)) from None
    if arr.dtype != np.float32:
        raise StoreError(f"pack member {member!r} has dtype {arr.dtype}; packs hold float32 embeddings")
    if arr.shape != (shots, dim):
        raise StoreError(f"pack member {member!r} has shape {arr.shape}; pack.json declares ({shots}, {dim})")
    return arr


def _field(doc: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise StoreError(f"{where}: field {key!r} is missing or not {getattr(kind, '__name__', kind)}")
    return value


def read_pack(path: str | Path, fingerprint: str, dim: int) -> list[_PackClass]:
    """Read and fully validate a pack for a store with ``fingerprint`` and ``dim``; writes nothing."""
    path = Path(path)
    try:
        check_regular_file(path, limits.MAX_PACK_BYTES, "class pack")
    except FileRefused as exc:
        raise StoreError(str(exc)) from None
    where = f"class pack {path}"
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > limits.MAX_PACK_MEMBERS:
                raise StoreError(f"{where} has {len(infos)} members, over the limit of {limits.MAX_PACK_MEMBERS}")
            _check_directory(infos, where)
            names = [i.filename for i in infos]
            if len(set(names)) != len(names):
                raise StoreError(f"{where} has duplicate member names; it is damaged or hostile")
            by_name = {i.filename: i for i in infos}
            if PACK_JSON not in by_name:
                raise StoreError(f"{where} has no {PACK_JSON}; is it an edgefs class pack?")
            budget = [limits.MAX_PACK_TOTAL_BYTES]
            try:
                doc = json.loads(_read_member(zf, by_name[PACK_JSON], limits.MAX_PACK_JSON_BYTES, budget))
            except ValueError as exc:
                raise StoreError(f"{where}: {PACK_JSON} is not valid JSON ({exc})") from exc
            entries = _check_doc(doc, where, fingerprint, dim)
            expected = {PACK_JSON}
            for i, entry in enumerate(entries):
                expected.add(embeddings_member(i))
                if entry["singles"]:
                    expected.add(singles_member(i))
                expected.update(thumbnail_member(i, j) for j, has in enumerate(entry["thumbnails"]) if has)
            if set(names) != expected:
                extra = sorted(set(names) - expected)[:5]
                missing = sorted(expected - set(names))[:5]
                raise StoreError(
                    f"{where} does not hold the members {PACK_JSON} declares (unexpected: {extra}, "
                    f"missing: {missing}); it is damaged or was not written by edgefs"
                )
            _check_declared_sizes(entries, by_name, dim, where)
            out = []
            for i, entry in enumerate(entries):
                member = embeddings_member(i)
                data = _read_member(zf, by_name[member], limits.MAX_PACK_NPY_BYTES, budget)
                arr = _load_npy(data, member, entry["shots"], dim)
                emb = check_embeddings(arr, dim, f"{where}: embeddings of {entry['name']!r}")
                singles = None
                if entry["singles"]:
                    member = singles_member(i)
                    data = _read_member(zf, by_name[member], limits.MAX_PACK_NPY_BYTES, budget)
                    singles = check_embeddings(_load_npy(data, member, entry["shots"], dim), dim,
                                               f"{where}: single views of {entry['name']!r}")
                thumbs: list[bytes | None] = [
                    _read_member(zf, by_name[thumbnail_member(i, j)], MAX_THUMBNAIL_BYTES, budget) if has else None
                    for j, has in enumerate(entry["thumbnails"])
                ]
                try:
                    thumbs = check_thumbnails(thumbs, entry["shots"])
                except StoreError as exc:
                    raise StoreError(f"{where}, class {entry['name']!r}: {exc}") from None
                out.append(_PackClass(entry["name"], emb, thumbs, entry["sources"], singles))
            return out
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise StoreError(f"{where} is not a readable zip (truncated or corrupt: {exc}); copy it again") from exc
    except OSError as exc:
        raise StoreError(f"cannot read {where}: {exc}") from exc


def _check_doc(doc: Any, where: str, fingerprint: str, dim: int) -> list[dict[str, Any]]:
    """Check ``pack.json`` against the store; return its class entries, normalised."""
    if not isinstance(doc, dict) or doc.get("format") != PACK_FORMAT:
        raise StoreError(f"{where} is not an edgefs class pack ({PACK_JSON} format is not {PACK_FORMAT!r})")
    version = _field(doc, "pack_version", int, where)
    if version > PACK_VERSION:
        raise StoreError(f"{where} has pack version {version}, newer than this edgefs reads ({PACK_VERSION}); "
                         "upgrade edgefs")
    theirs = _field(doc, "fingerprint", str, where)
    if theirs != fingerprint:
        raise StoreError(
            f"{where} was made with bundle {theirs[:12]}..., this store belongs to {fingerprint[:12]}...; "
            "embedding spaces are never mixed: import it into a store of that bundle, or re-enroll the classes"
        )
    if _field(doc, "embedding_dim", int, where) != dim:
        raise StoreError(f"{where} holds size-{doc['embedding_dim']} embeddings, the store size-{dim}")
    classes = _field(doc, "classes", list, where)
    if len(classes) > limits.MAX_PACK_CLASSES:
        raise StoreError(f"{where} declares {len(classes)} classes, over the limit of {limits.MAX_PACK_CLASSES} "
                         "(edgefs.limits.MAX_PACK_CLASSES); it is damaged or hostile")
    entries = []
    seen: set[str] = set()
    for i, c in enumerate(classes):
        cw = f"{where}, class {i}"
        if not isinstance(c, dict):
            raise StoreError(f"{cw} is not an object")
        try:
            name = check_name(c.get("name"))
        except StoreError as exc:
            raise StoreError(f"{cw}: {exc}") from None
        if name in seen:
            raise StoreError(f"{where} lists class {name!r} twice")
        seen.add(name)
        shots = c.get("shots")
        if isinstance(shots, float) and shots.is_integer():
            shots = int(shots)  # "3e8" in JSON is a float; judge its size, not its spelling
        if not isinstance(shots, int) or isinstance(shots, bool):
            raise StoreError(f"{cw}: field 'shots' is missing or not a whole number")
        if shots < 1:
            raise StoreError(f"{cw} ({name!r}) has {shots} shots; every class needs at least one")
        # Bound the declared count before anything is allocated for it (lists, arrays).
        most = min(limits.MAX_SHOTS_PER_CLASS, limits.MAX_PACK_NPY_BYTES // (4 * max(dim, 1)))
        if shots > most:
            raise StoreError(f"{cw} ({name!r}) declares {shots} shots, over the limit of {most} "
                             "(edgefs.limits.MAX_SHOTS_PER_CLASS); the pack is damaged or hostile: refusing it")
        thumbs = c.get("thumbnails", [False] * shots)
        sources = c.get("sources", [""] * shots)
        if not (isinstance(thumbs, list) and len(thumbs) == shots and all(isinstance(t, bool) for t in thumbs)):
            raise StoreError(f"{cw} ({name!r}): 'thumbnails' must be {shots} true/false values")
        if not (isinstance(sources, list) and len(sources) == shots and all(isinstance(s, str) for s in sources)):
            raise StoreError(f"{cw} ({name!r}): 'sources' must be {shots} strings")
        singles = c.get("singles", False)
        if not isinstance(singles, bool):
            raise StoreError(f"{cw} ({name!r}): 'singles' must be true or false")
        entries.append({"name": name, "shots": shots, "thumbnails": thumbs, "sources": sources, "singles": singles})
    return entries


def import_pack(store: ClassStore, path: str | Path, on_conflict: str = "error") -> ImportResult:
    """Import a pack into ``store``: all classes in one transaction, or nothing.

    Args:
        on_conflict: for a class already in the store: ``"error"`` (refuse the whole
            import), ``"skip"`` (keep the store's), ``"replace"`` (the pack's instead)
            or ``"append"`` (add the pack's shots to it).

    Raises:
        StoreError: the pack is damaged, hostile, from another bundle, or conflicts.
    """
    if on_conflict not in ON_CONFLICT:
        raise StoreError(f"on_conflict {on_conflict!r} is not one of {', '.join(ON_CONFLICT)}")
    pack = read_pack(path, store.fingerprint, store.dim)
    with store.transaction() as tx:
        return apply_pack(store, tx, pack, on_conflict)


def apply_pack(store: ClassStore, tx: Transaction, pack: list[_PackClass], on_conflict: str = "error") -> ImportResult:
    """Write the classes of a pack read by :func:`read_pack` inside the open transaction ``tx``.

    The live device (``edgefs serve``) calls this inside the transaction that also saves the
    rebuilt head, so the imported classes are live from the next frame.
    """
    if on_conflict not in ON_CONFLICT:
        raise StoreError(f"on_conflict {on_conflict!r} is not one of {', '.join(ON_CONFLICT)}")
    result = ImportResult()
    existing = set(store.names())
    conflicts = [c.name for c in pack if c.name in existing]
    if conflicts and on_conflict == "error":
        raise StoreError(
            f"classes {conflicts} are already in the store; choose --on-conflict skip, replace or append"
        )
    for c in pack:
        if c.name not in existing:
            tx.add_class(c.name, c.embeddings, c.thumbnails, c.sources, c.singles)
            result.added.append(c.name)
        elif on_conflict == "skip":
            result.skipped.append(c.name)
        elif on_conflict == "append":
            tx.append(c.name, c.embeddings, c.thumbnails, c.sources, c.singles)
            result.appended.append(c.name)
        else:
            tx.remove(c.name)
            tx.add_class(c.name, c.embeddings, c.thumbnails, c.sources, c.singles)
            result.replaced.append(c.name)
    return result
