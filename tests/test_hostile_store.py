"""A hostile or unlucky user around the class store and class packs: nothing of theirs is lost or changed.

An output path that is one of the same command's inputs (the store, its write-ahead log, the
bundle) is refused before anything is written; another application's SQLite database given as
--store is recognised read-only and left byte for byte as it was; a refused ``enroll --append``
writes nothing; ``classes remove`` works on a full disk; a file that is not a checkpoint gets a
short edgefs message instead of PyTorch's advice.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgefs.cli import main
from edgefs.fileio import OutputOverInput
from edgefs.runtime.bundle import read_bundle
from edgefs.store import ClassStore


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shots(n: int, seed: int, dim: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


@pytest.fixture()
def bundle(conv4_bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / "model.edgefs"
    shutil.copytree(conv4_bundle, out)
    return out


@pytest.fixture()
def store(bundle: Path, tmp_path: Path) -> Path:
    """A store of ``bundle`` with classes a (2 shots) and b (3 shots), closed."""
    b = read_bundle(bundle)
    path = tmp_path / "own.db"
    with ClassStore.open(path, b) as s:
        s.add_class("a", shots(2, 1, b.manifest.embedding_dim))
        s.add_class("b", shots(3, 2, b.manifest.embedding_dim))
    return path


def bundle_digest(bundle: Path) -> dict[str, str]:
    return {p.name: sha256(p) for p in sorted(bundle.iterdir()) if p.is_file()}


# ---- 1. an output over an input ---------------------------------------------------------------

@pytest.mark.parametrize("target", ["store", "wal", "manifest", "bundle"])
def test_export_over_an_input_is_refused_and_writes_nothing(target: str, bundle: Path, store: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    pack = {"store": store, "wal": store.with_name(store.name + "-wal"), "manifest": bundle / "manifest.json",
            "bundle": bundle}[target]
    what = {"store": "the class store", "wal": "the class store's write-ahead log", "manifest": "the bundle",
            "bundle": "the bundle"}[target]
    before, files = sha256(store), bundle_digest(bundle)
    assert main(["classes", "export", "--store", str(store), "--bundle", str(bundle), str(pack), "a"]) == 2
    err = capsys.readouterr().err
    assert f"PACK {pack} would overwrite {what} (" in err
    assert "which this command reads; nothing was written. Give PACK a path that is neither" in err
    assert sha256(store) == before and bundle_digest(bundle) == files
    assert not store.with_name(store.name + "-wal").exists()
    with ClassStore.open(store, read_bundle(bundle), create=False) as s:
        assert s.names() == ["a", "b"] and s.integrity_check() == "ok"


def test_export_pack_refuses_its_own_store_from_the_api_too(bundle: Path, store: Path) -> None:
    before = sha256(store)
    with ClassStore.open(store, read_bundle(bundle), create=False) as s:
        with pytest.raises(OutputOverInput, match=r"^the pack path .*own\.db would overwrite the class store"):
            s.export_pack(store, ["a"])
        assert s.names() == ["a", "b"]
    assert sha256(store) == before


def test_a_failed_export_keeps_the_old_pack_and_leaves_no_temporary_file(bundle: Path, store: Path,
                                                                          tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pack = tmp_path / "old.efpack"
    with ClassStore.open(store, read_bundle(bundle), create=False) as s:
        s.export_pack(pack, ["a"])
        old = sha256(pack)

        def dies(name: str) -> None:  # the second class: the pack is half written when this is raised
            if name == "b":
                raise KeyboardInterrupt
        monkeypatch.setattr(ClassStore, "singles", lambda self, name: dies(name))
        with pytest.raises(KeyboardInterrupt):
            s.export_pack(pack)
    assert sha256(pack) == old
    assert sorted(p.name for p in tmp_path.iterdir() if "efpack" in p.name) == ["old.efpack"]


def test_import_of_the_store_into_itself_is_refused(bundle: Path, store: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    before = sha256(store)
    assert main(["classes", "import", "--store", str(store), "--bundle", str(bundle), str(store)]) == 2
    err = capsys.readouterr().err
    assert f"--store {store} would overwrite the class pack ({store}), which this command reads; nothing was " \
           "written" in err
    assert sha256(store) == before


def test_reembed_out_over_an_input_is_refused(bundle: Path, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before, files = sha256(store), bundle_digest(bundle)
    for out, what in ((store.with_name(store.name + "-shm"), "the class store's shared-memory file"),
                      (bundle / "classes.db", "the store's bundle")):
        assert main(["classes", "reembed", "--store", str(store), "--bundle", str(bundle), "--to", str(bundle),
                     "--out", str(out)]) == 2
        assert f"--out {out} would overwrite {what} (" in capsys.readouterr().err
        assert not out.exists()
    assert sha256(store) == before and bundle_digest(bundle) == files


def test_enroll_store_over_an_input_is_refused(bundle: Path, glyph_data: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    image = next((glyph_data / "test").rglob("*.png"))
    before, files = sha256(image), bundle_digest(bundle)
    for target, what in ((image, "the image"), (bundle / "manifest.json", "the bundle")):
        assert main(["enroll", str(bundle), "--store", str(target), "--label", "x", "--images", str(image),
                     "--backend", "onnxruntime", "--threads", "1"]) == 2
        assert f"--store {target} would overwrite {what}" in capsys.readouterr().err
    assert sha256(image) == before and bundle_digest(bundle) == files
