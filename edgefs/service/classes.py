"""Class management: list, remove, rename, export and import the enrolled classes.

The ``edgefs classes`` commands open the store with its bundle, do one thing and return the
text to print; the web app calls the same :class:`~edgefs.service.classifier.Classifier`
methods and :func:`remove` on the classifier it already holds, so both behave alike: a
removal gives its pages back to the disk (or uses the space reserve on a full disk), and an
imported pack is live at once (samples and the rebuilt head in one commit).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edgefs.fileio import check_output_not_input
from edgefs.runtime.bundle import read_bundle
from edgefs.service.classifier import Classifier
from edgefs.store import ClassStore, StoreFull, remove_on_full_disk, store_files


def _open(store: str | Path, bundle: str | Path, create: bool = False) -> ClassStore:
    return ClassStore.open(store, read_bundle(bundle), create=create)


def _classifier(store: str | Path, bundle: str | Path, create: bool = False) -> Classifier:
    """The store with its head (no engine: nothing is embedded)."""
    b = read_bundle(bundle)
    return Classifier(b, None, ClassStore.open(store, b, create=create))


def list_classes(store: str | Path, bundle: str | Path) -> str:
    """A table of the store's classes (name, shots, created, updated) under a one-line summary."""
    with _open(store, bundle) as s:
        return s.describe()


def remove(clf: Classifier, names: Sequence[str]) -> tuple[dict[str, int], str]:
    """Remove ``names`` with their samples and head rows in one commit (all or nothing) and give the
    freed pages back to the disk; on a full disk, remove them with the space reserve kept beside
    the store (:func:`edgefs.store.remove_on_full_disk`).

    Returns:
        ``({name: samples removed}, text saying what was done)``.
    """
    store = clf.store
    assert store is not None, "remove needs a classifier with a store"
    try:
        removed = clf.remove(*names)
        returned = store.return_free_pages()
    except StoreFull as exc:
        removal = clf.remove_on_full_disk(list(names), exc)
        return dict(removal.removed), removal.summary(Path(store.path))
    lines = [f"removed {name!r} ({n} samples)" for name, n in removed.items()]
    if returned:
        lines.append(f"gave {returned // 1024} KiB back to the disk")
    return removed, "\n".join(lines)


def remove_classes(store: str | Path, bundle: str | Path, names: list[str]) -> str:
    """:func:`remove` on the store at ``store``; where the disk is too full even to open it for
    writing, the removal is made with the space reserve."""
    try:
        with _classifier(store, bundle) as clf:
            return remove(clf, names)[1]
    except StoreFull as exc:
        return remove_on_full_disk(store, read_bundle(bundle), names, cause=exc).summary(Path(store))


def rename_class(store: str | Path, bundle: str | Path, old: str, new: str) -> str:
    """Rename class ``old`` to ``new`` in the samples and the head state together."""
    with _classifier(store, bundle) as clf:
        clf.rename(old, new)
    return f"renamed {old!r} to {new!r}"


def export_classes(store: str | Path, bundle: str | Path, pack: str | Path, names: list[str] | None) -> str:
    """Write ``names`` (default all) to the class pack ``pack``.

    Raises:
        OutputOverInput: ``pack`` is the store, one of its side files, or the bundle (or lies
            inside it); refused before anything is opened or written.
    """
    check_output_not_input(pack, {**store_files(store), "the bundle": bundle}, flag="PACK")
    with _open(store, bundle) as s:
        path = s.export_pack(pack, names or None)
        count = len(names) if names else len(s.names())
    return f"wrote {count} classes to {path}"


def import_classes(store: str | Path, bundle: str | Path, pack: str | Path, on_conflict: str) -> str:
    """Import the class pack ``pack`` (creating the store if needed), all or nothing; the head is
    rebuilt in the same commit (:meth:`Classifier.import_pack`), as the web app's import does.

    Raises:
        OutputOverInput: ``--store`` is the pack itself or lies in the bundle; refused before
            anything is opened or written.
    """
    check_output_not_input(store, {"the class pack": pack, "the bundle": bundle}, flag="--store")
    with _classifier(store, bundle, create=True) as clf:
        result = clf.import_pack(pack, on_conflict)
    return f"imported {pack} into {store}: {result.summary()}"
