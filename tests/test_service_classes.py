"""Class management has one behaviour, whoever calls it: the CLI's ``edgefs classes`` and the web app both go
through :mod:`edgefs.service.classes` and the :class:`~edgefs.service.classifier.Classifier`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgefs.cli import main
from edgefs.runtime.bundle import read_bundle
from edgefs.service import classes
from edgefs.service.classifier import Classifier
from edgefs.store import ClassStore


@pytest.fixture()
def enrolled(conv4_bundle: Path, glyph_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A bundle and a store with three classes enrolled by ``edgefs enroll``."""
    bundle = tmp_path / "model.edgefs"
    shutil.copytree(conv4_bundle, bundle)
    store = tmp_path / "classes.db"
    dirs = sorted(p for p in (glyph_data / "test").glob("*/*") if p.is_dir() and len(list(p.glob("*.png"))) >= 4)
    for i, d in enumerate(dirs[:3]):
        assert main(["enroll", str(bundle), "--store", str(store), "--label", f"c{i}", "--images", str(d),
                     "--backend", "onnxruntime", "--threads", "1"]) == 0
    return bundle, store


def test_cli_import_makes_the_pack_live_at_once(enrolled: tuple[Path, Path], tmp_path: Path) -> None:
    """An imported pack's classes are in the saved head state in the same commit (as the web app's import),
    not left for the next open to rebuild."""
    bundle, store = enrolled
    pack = tmp_path / "two.efpack"
    assert main(["classes", "export", "--store", str(store), "--bundle", str(bundle), str(pack), "c0", "c2"]) == 0
    fresh = tmp_path / "fresh.db"
    assert main(["classes", "import", "--store", str(fresh), "--bundle", str(bundle), str(pack)]) == 0
    with ClassStore.open(fresh, read_bundle(bundle), create=False) as s:
        saved = s.load_head_state()
        assert s.names() == ["c0", "c2"]
        assert saved.current, saved.staleness()
        assert saved.params["classes"] == ["c0", "c2"]


def test_cli_and_web_removal_say_the_same(enrolled: tuple[Path, Path], tmp_path: Path) -> None:
    """The CLI's text is :func:`classes.remove`'s, which is what the web app returns as its summary."""
    bundle, store = enrolled
    twin = tmp_path / "twin.db"
    for side in ("", "-wal", "-shm", "-reserve"):  # the store with whatever side files it has
        if Path(f"{store}{side}").exists():
            shutil.copy(f"{store}{side}", f"{twin}{side}")
    said = classes.remove_classes(store, bundle, ["c1"])
    b = read_bundle(bundle)
    with Classifier(b, None, ClassStore.open(twin, b, create=False)) as clf:
        removed, summary = classes.remove(clf, ["c1"])
        assert clf.classes == ["c0", "c2"]
    assert list(removed) == ["c1"] and removed["c1"] > 0
    assert summary == said
    assert said.startswith("removed 'c1' (")
