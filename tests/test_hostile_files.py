"""Hostile and unlucky files: each gives a clear EdgefsError (or is skipped with a reason), in bounded memory.

Bundles whose files are links to /dev/zero, pipes, lists instead of objects, empty or non-zip arrays;
images whose header claims 60000 x 60000 pixels beside good shots; class packs that declare 10^11 shots;
a class store on a full disk, with a damaged page, or in a folder that cannot be written; file modes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgefs.errors import EdgefsError
from edgefs.imagefile import read_images
from edgefs.runtime.bundle import BundleError, Manifest, read_bundle
from edgefs.runtime.engine_file import EngineFileError, read_engine_file, read_engine_header
from edgefs.service.classifier import Classifier
from edgefs.service.options import EngineOptions
from edgefs.store import ClassStore, StoreError
from edgefs.store.packs import PACK_JSON

DIM = 16


def manifest() -> Manifest:
    return Manifest(backbone={}, input={}, output={"dim": DIM}, head={"type": "prototype"}, fingerprint="ab" * 32)


def shots(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


@pytest.fixture()
def bundle(conv4_bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / "model.edgefs"
    shutil.copytree(conv4_bundle, out)
    return out


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk (8-bit RGB) declaring ``width`` x ``height``, then an empty IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = struct.pack(">I", 0) + b"IDAT" + struct.pack(">I", zlib.crc32(b"IDAT"))
    return b"\x89PNG\r\n\x1a\n" + chunk + idat


def big_png(path: Path, side: int) -> None:
    """A real, valid ``side`` x ``side`` grey PNG written by streaming zlib (never held in memory)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + pixels
    data = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


# ---- bundles ------------------------------------------------------------------------------------

@pytest.mark.parametrize("member", ["manifest.json", "head.json", "head.npz"])
def test_bundle_file_linked_to_dev_zero_is_refused(bundle: Path, member: str) -> None:
    (bundle / member).unlink()
    (bundle / member).symlink_to("/dev/zero")
    with pytest.raises(BundleError, match=r"\(a link to /dev/zero\) is a character device, not a regular file"):
        read_bundle(bundle)


def test_bundle_manifest_that_is_a_fifo_is_refused(bundle: Path) -> None:
    (bundle / "manifest.json").unlink()
    os.mkfifo(bundle / "manifest.json")
    with pytest.raises(BundleError, match=r"manifest.json is a pipe \(FIFO\), not a regular file"):
        read_bundle(bundle)


def test_oversized_manifest_is_refused_before_parsing(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgefs import limits

    monkeypatch.setattr(limits, "MAX_MANIFEST_BYTES", 100)
    with pytest.raises(BundleError, match=r"bytes, over the limit of 100 \(edgefs.limits\)"):
        read_bundle(bundle)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda b: (b / "head.json").write_text("[1, 2, 3]"), "head.json holds a JSON list, not an object"),
    (lambda b: (b / "head.npz").write_bytes(b""), r"head.npz is empty \(0 bytes\)"),
    (lambda b: (b / "head.npz").write_bytes(b"not a zip at all"), "head.npz is not a readable .npz archive"),
])
def test_damaged_head_spec_gives_a_message(bundle: Path, damage, message: str) -> None:
    damage(bundle)
    with pytest.raises(BundleError, match=message):
        read_bundle(bundle)


@pytest.mark.parametrize(("section", "key", "value"), [("output", "dim", "abc"), ("input", "height", 1.5),
                                                       ("input", "width", None), ("output", "dim", -3)])
def test_manifest_dimension_that_is_not_a_number(bundle: Path, section: str, key: str, value: object) -> None:
    doc = json.loads((bundle / "manifest.json").read_text())
    doc[section][key] = value
    (bundle / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=rf"{section}\.{key} is .*, not a whole number from 1 to 65536"):
        read_bundle(bundle)


def test_engine_file_linked_to_dev_zero_is_refused(tmp_path: Path) -> None:
    engine = tmp_path / "b.edgefs" / "engines" / "x.engine"
    engine.parent.mkdir(parents=True)
    engine.symlink_to("/dev/zero")
    for read in (read_engine_header, lambda p: read_engine_file(p, None)):
        with pytest.raises(EngineFileError, match="is a character device, not a regular file"):
            read(engine)


# ---- images -------------------------------------------------------------------------------------

def test_giant_png_header_beside_good_shots_is_skipped_by_name(bundle: Path, glyph_data: Path,
                                                             tmp_path: Path) -> None:
    folder = tmp_path / "shots"
    folder.mkdir()
    good = [d for d in sorted((glyph_data / "test").glob("*/*")) if d.is_dir()][:9]
    for i, d in enumerate(good):
        shutil.copy(sorted(d.glob("*.png"))[0], folder / f"shot{i}.png")
    (folder / "giant.png").write_bytes(png_header(60000, 60000))
    images, names, problems = read_images([folder])
    assert len(images) == 9 and "giant.png" not in names
    assert problems == ["giant.png: 60000 x 60000 pixels, over the limit of 67108864 "
                        "(edgefs.limits.MAX_IMAGE_PIXELS); shrink it first; skipped"]
    from edgefs.service.quality import QualityConfig

    with Classifier.open(bundle, tmp_path / "s.db", options=EngineOptions(backend="onnxruntime", threads=1),
                         log=lambda _: None,
                         quality=QualityConfig(min_sharpness=0.0, max_similarity=1.0)) as clf:
        result = clf.enroll("mug", images, names=names, problems=problems)
    assert result.added == 9 and result.rejected == problems


def test_real_20000px_png_is_refused_without_decoding(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    big_png(path, 20000)
    assert path.stat().st_size < 2_000_000
    # In a fresh process: the peak resident memory shows whether the image was decoded (1.2 GB as RGB).
    code = ("import resource, sys; from edgefs.imagefile import read_images; "
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "imgs, names, problems = read_images([sys.argv[1]]); "
            "print(len(imgs), problems[0]); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first, rss_kib = out.stdout.strip().splitlines()
    assert first == "0 huge.png: 20000 x 20000 pixels, over the limit of 67108864 " \
                    "(edgefs.limits.MAX_IMAGE_PIXELS); shrink it first; skipped"
    assert int(rss_kib) < 50_000, f"peak RSS grew {int(rss_kib) // 1024} MiB: the image was decoded"


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "not a PNG, JPEG, BMP, GIF, WebP, PNM or TIFF image"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 30, "not a PNG, JPEG"),
    (png_header(0, 10), "declares 0 x 10 pixels; it is damaged"),
    (png_header(64, 64), "cannot be read as an image"),  # a valid header, no pixel data
])
def test_undecodable_images_are_skipped_with_a_reason(tmp_path: Path, data: bytes, reason: str) -> None:
    (tmp_path / "bad.png").write_bytes(data)
    cv2.imwrite(str(tmp_path / "ok.png"), np.full((20, 20, 3), 9, np.uint8))
    _, names, problems = read_images([tmp_path])
    assert names == ["ok.png"] and len(problems) == 1
    assert problems[0].startswith("bad.png: ") and reason in problems[0]


def test_image_linked_to_a_device_is_skipped_by_name(tmp_path: Path) -> None:
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    cv2.imwrite(str(tmp_path / "ok.png"), np.full((20, 20, 3), 9, np.uint8))
    _, names, problems = read_images([tmp_path / "ok.png", tmp_path / "zero.png"])
    assert names == ["ok.png"]
    assert problems == [f"zero.png: image {tmp_path / 'zero.png'} (a link to /dev/zero) is a character device, "
                        "not a regular file; refusing to read it; skipped"]


# ---- class packs --------------------------------------------------------------------------------

@pytest.mark.parametrize("declared", [300000000, 3e8, 1e11, 10**11])
def test_pack_declaring_huge_shots_is_refused_in_bounded_memory(tmp_path: Path, declared: float) -> None:
    src = ClassStore.open(tmp_path / "a.db", manifest())
    src.add_class("a", shots(2))
    pack = src.export_pack(tmp_path / "good.efpack")
    with zipfile.ZipFile(pack) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    doc = json.loads(members[PACK_JSON])
    doc["classes"][0]["shots"] = declared
    del doc["classes"][0]["thumbnails"], doc["classes"][0]["sources"]  # defaults are sized by 'shots'
    hostile = tmp_path / "hostile.efpack"
    with zipfile.ZipFile(hostile, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, json.dumps(doc) if n == PACK_JSON else data)
    dst = ClassStore.open(tmp_path / "b.db", manifest())
    tracemalloc.start()
    try:
        with pytest.raises(StoreError, match=r"class 0 \('a'\) declares \d+ shots, over the limit of 100000"):
            dst.import_pack(hostile)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20, f"{peak} bytes allocated while refusing"
    assert dst.classes() == []


# ---- permissions ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_packs_and_manifests_get_the_mode_a_plain_write_would(tmp_path: Path, umask: int, mode: int) -> None:
    from edgefs.runtime.bundle import write_manifest

    old = os.umask(umask)
    try:
        store = ClassStore.open(tmp_path / "a.db", manifest())
        store.add_class("a", shots(1))
        pack = store.export_pack(tmp_path / "p.efpack")
        write_manifest(tmp_path, manifest())
    finally:
        os.umask(old)
    assert pack.stat().st_mode & 0o777 == mode
    assert (tmp_path / "manifest.json").stat().st_mode & 0o777 == mode


def test_unreadable_manifest_says_what_the_owner_can_do(bundle: Path) -> None:
    if os.getuid() == 0:
        pytest.skip("root reads any file; the permission message cannot be provoked as root")
    (bundle / "manifest.json").chmod(0o600 & 0o000)
    with pytest.raises(BundleError, match=r"is not readable by this user .* 'chmod a\+r"):
        read_bundle(bundle)


# ---- the class store ----------------------------------------------------------------------------

def fill_until_full(store: ClassStore) -> None:
    """Cap the database at its current size: SQLite then fails writes with 'database or disk is full',
    exactly as on a full disk (SQLITE_FULL)."""
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")


def test_disk_full_during_enroll_and_append_loses_nothing(tmp_path: Path) -> None:
    store = ClassStore.open(tmp_path / "s.db", manifest())
    store.add_class("a", shots(2), head_state={"p": shots(1)})
    fill_until_full(store)
    before = (store.classes(), store.load_head_state().arrays["p"].copy())
    with pytest.raises(StoreError, match=r"^the disk holding class store .* is full \(\d+ KiB free\) while "
                                         r"writing; nothing was written and the store is as it was"):
        store.add_class("b", shots(300, 1), head_state={"p": shots(2)})
    with pytest.raises(StoreError, match="is full"):
        for i in range(50):  # deletes need pages too (the WAL grows the main file at checkpoint)
            store.append("a", shots(50, i))
    assert store.names() == ["a"] and store.integrity_check() == "ok"
    store.close()
    with ClassStore.open(tmp_path / "s.db", manifest(), create=False) as again:
        assert again.names() == ["a"] and again.integrity_check() == "ok"
        assert np.array_equal(again.load_head_state().arrays["p"], before[1])


def tmpfs(path: Path, size: str) -> bool:
    """Mount a small tmpfs at ``path`` (root only); False where that is not possible."""
    if os.getuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_remove_on_a_full_disk_is_a_clear_error_and_loses_nothing(tmp_path: Path) -> None:
    disk = tmp_path / "small"
    if not tmpfs(disk, "400k"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        with ClassStore.open(disk / "s.db", manifest()) as store:
            for i in range(3):
                store.add_class(f"c{i}", shots(7, i), head_state={"p": shots(i + 1)})
        # Fill the disk to the last block (unbuffered: nothing left to flush at close).
        with open(disk / "fill", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
        # Whether SQLite runs out at open (the WAL and shared-memory files) or at the write depends on
        # how full the last page is; either way the message says so and nothing changes.
        full_disk = r"^the disk holding class store .* is full \(0 KiB free\) while (opening it|writing); nothing " \
                    r"was written and the store is as it was"
        with pytest.raises(StoreError, match=full_disk), ClassStore.open(disk / "s.db", manifest(),
                                                                         create=False) as full:
            full.remove("c1")
        (disk / "fill").unlink()
        with ClassStore.open(disk / "s.db", manifest(), create=False) as store:
            assert store.names() == ["c0", "c1", "c2"] and store.integrity_check() == "ok"
            assert store.remove("c1") == 7 and store.names() == ["c0", "c2"]
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_export_to_a_full_disk_is_a_clear_error(tmp_path: Path) -> None:
    disk = tmp_path / "small"
    if not tmpfs(disk, "64k"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        store = ClassStore.open(tmp_path / "s.db", manifest())
        store.add_class("a", np.random.default_rng(0).normal(size=(2000, DIM)).astype(np.float32))
        with pytest.raises(StoreError, match=r"cannot write class pack .*: No space left on device; nothing was "
                                             r"written \(an older file there is kept\)"):
            store.export_pack(disk / "p.efpack")
        assert [p.name for p in disk.iterdir()] == []  # no temporary file left behind
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_export_to_a_folder_is_refused(tmp_path: Path) -> None:
    store = ClassStore.open(tmp_path / "s.db", manifest())
    store.add_class("a", shots(1))
    with pytest.raises(StoreError, match=r"is a folder; give the pack a file name, e.g. .*classes.efpack"):
        store.export_pack(tmp_path)


def damage_one_page(db: Path) -> None:
    """Overwrite the last page of the database with garbage (one bad sector)."""
    with sqlite3.connect(db) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    with open(db, "r+b") as f:
        f.seek((pages - 1) * page_size)
        f.write(np.random.default_rng(0).integers(0, 256, page_size, dtype=np.uint8).tobytes())


def test_store_with_a_damaged_page_is_detected_at_open(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with ClassStore.open(db, manifest()) as store:
        for i in range(40):
            store.add_class(f"c{i}", shots(20, i))
    damage_one_page(db)
    with pytest.raises(StoreError, match=r"^class store .* is damaged \(.*\); it was not changed. Restore it from a "
                                         r"backup, or import a class pack exported earlier into a new store"):
        ClassStore.open(db, manifest(), create=False)


def test_new_store_where_no_folder_can_be_made(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match=r"cannot create class store .*: its folder .*file/sub cannot be created "
                                         r"\(.*\); choose a --store in a folder you can write"):
        ClassStore.open(tmp_path / "file" / "sub" / "s.db", manifest())


def test_new_store_in_a_read_only_folder(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    if os.getuid() != 0:
        ro.mkdir()
        ro.chmod(0o555)
    elif not tmpfs(ro, "1m") or subprocess.run(["mount", "-o", "remount,ro", str(ro)]).returncode != 0:
        pytest.skip("as root a read-only folder needs a read-only mount, which failed here")
    try:
        with pytest.raises(StoreError, match=r"cannot create class store .*: its folder .* is not writable|read-only"):
            ClassStore.open(ro / "s.db", manifest())
    finally:
        if os.getuid() == 0:
            subprocess.run(["umount", str(ro)], check=True)


@pytest.mark.parametrize(("label", "message"), [
    ("unknown", "is the label edgefs gives frames that match no class"),
    ("Unknown", "is the label edgefs gives frames that match no class"),
    ("", "is empty"),
    ("  ", "is empty"),
])
def test_reserved_and_empty_labels_are_refused(tmp_path: Path, label: str, message: str) -> None:
    store = ClassStore.open(tmp_path / "s.db", manifest())
    with pytest.raises(EdgefsError, match=message):
        store.add_class(label, shots(1))
    assert store.names() == []
