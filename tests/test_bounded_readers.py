"""Every reader of image files goes through :mod:`edgefs.imagefile`: size, then the header's pixel count, then decode.

One block per reader: INT8 calibration (:mod:`edgefs.runtime.calibration`, and quantize's
source over it), the image-folder camera, the synthetic camera's ImageFolder, the images
``edgefs tune`` enrolls and the thumbnails ``edgefs classes reembed`` decodes from a store.
Each gets a valid PNG whose header claims 60000 x 60000 pixels and an empty file (what it
says, or that it skips them), and a 630-byte JPEG whose header claims 20000 x 20000 pixels,
which OpenCV decodes whole (1.2 GB: a truncated scan is filled in): read in a fresh process,
whose peak resident memory shows whether anything was decoded.
"""

from __future__ import annotations

import sqlite3
import struct
import subprocess
import sys
import tracemalloc
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
from edgefs.export.quantize import QuantizeError, bounded_source

from edgefs import limits
from edgefs.camera import Frame, Source, open_source
from edgefs.runtime.bundle import read_bundle
from edgefs.runtime.calibration import CalibrationError, open_calibration_source
from edgefs.service.reembed import reembed_store
from edgefs.store import ClassStore, StoreError
from edgefs.tune import _read_rgb

LIMIT = "over the limit of 67108864 (edgefs.limits.MAX_IMAGE_PIXELS); shrink it first"
GIANT = f"60000 x 60000 pixels, {LIMIT}"
BOMB = f"20000 x 20000 pixels, {LIMIT}"
EMPTY = "an empty file (0 bytes), not a PNG, JPEG, BMP, GIF, WebP, PNM or TIFF image"
MIB = 1 << 20
# What reading a hostile file may allocate in Python, at most: the bounded reader's read buffer
# (edgefs.fileio.read_limited asks for MAX_IMAGE_FILE_BYTES + 1 at once; untouched, so not resident)
# and a little more. Decoding 60000 x 60000 pixels would take 10 GB.
PEAK_BYTES = limits.MAX_IMAGE_FILE_BYTES + 16 * MIB
RSS_KIB = 50_000  # what reading it may add to a fresh process's peak resident memory (decoding it: 1.2 GB)


def patched_png(width: int, height: int) -> bytes:
    """A valid 8 x 8 PNG whose IHDR is patched to declare ``width`` x ``height`` (CRC fixed)."""
    ok, buf = cv2.imencode(".png", np.full((8, 8, 3), 99, np.uint8))
    data = bytearray(buf.tobytes())
    assert ok and data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def patched_jpeg(width: int, height: int) -> bytes:
    """A 16 x 16 JPEG whose frame header is patched to declare ``width`` x ``height``: OpenCV decodes it
    to that size (the scan runs out and the rest is filled in), from a file of 630 bytes."""
    _, buf = cv2.imencode(".jpg", np.full((16, 16, 3), 120, np.uint8))
    data = bytearray(buf.tobytes())
    i = 2
    while not (0xC0 <= data[i + 1] <= 0xCF and data[i + 1] not in (0xC4, 0xC8, 0xCC)):
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    data[i + 5:i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def good_images(folder: Path, n: int, side: int = 28) -> Path:
    """``n`` ``side`` px colour noise PNGs in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:03d}.png"), rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
    return folder


@contextmanager
def peak() -> Iterator[list[int]]:
    """The peak bytes Python allocated inside the block (NumPy arrays, OpenCV's results among them)."""
    got: list[int] = []
    tracemalloc.start()
    try:
        yield got
    finally:
        got.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


def in_child(setup: str, call: str, *args: str) -> tuple[list[str], int]:
    """Run ``setup``, then ``call`` (which prints what happened) in a fresh Python; return what it
    printed and how much ``call`` grew the process's peak resident memory, in KiB."""
    code = (f"{setup}\nimport resource\nbefore = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n{call}\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    *said, rss = out.stdout.strip().splitlines()
    return said, int(rss)


def frames_of(source: Source, limit: int) -> tuple[list[Frame], list[str]]:
    """Up to ``limit`` frames of ``source`` and the warnings given while reading them."""
    frames: list[Frame] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with source:
            while len(frames) < limit and (frame := source.read()) is not None:
                frames.append(frame)
    return frames, [str(w.message) for w in caught]


# ---- INT8 calibration (edgefs.runtime.calibration; TensorRT builds, tools, quantize) ------------------

def test_calibration_stops_at_an_over_limit_header_by_name(tmp_path: Path) -> None:
    folder = good_images(tmp_path / "calib", 7)
    giant = folder / "giant.png"
    giant.write_bytes(patched_png(60000, 60000))
    source = open_calibration_source(folder, 28, warn=lambda _: None)
    with peak() as got, pytest.raises(CalibrationError) as refused:
        list(source.batches(8, 4))  # 8 files, all read
    assert str(refused.value) == (f"calibration image {giant}: {GIANT}; remove or replace it "
                                  "(or calibrate on another folder)")
    assert type(refused.value).__name__ == "CalibrationImageRefused"
    assert got[0] < PEAK_BYTES


def test_calibration_held_out_images_are_read_within_the_limits_too(tmp_path: Path) -> None:
    folder = good_images(tmp_path / "calib", 5)
    giant = folder / "giant.png"
    giant.write_bytes(patched_png(60000, 60000))
    with pytest.raises(CalibrationError) as refused:
        open_calibration_source(folder, 28, warn=lambda _: None).held_out(10)
    assert str(refused.value) == (f"calibration image {giant}: {GIANT}; remove or replace it "
                                  "(or calibrate on another folder)")


def test_calibration_skips_an_empty_file_saying_why(tmp_path: Path) -> None:
    folder = good_images(tmp_path / "calib", 8)
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    said: list[str] = []
    batches = list(open_calibration_source(folder, 28, warn=said.append).batches(9, 4))
    assert len(batches) == 2  # the empty file was replaced by the next image
    assert said == [f"skipping unreadable calibration image {empty}: {EMPTY}"]


def test_calibration_does_not_decode_an_image_bomb(tmp_path: Path) -> None:
    folder = good_images(tmp_path / "calib", 7)
    (folder / "bomb.jpg").write_bytes(patched_jpeg(20000, 20000))
    said, rss = in_child(
        "import sys; from edgefs.runtime.calibration import CalibrationError, open_calibration_source",
        "try:\n    list(open_calibration_source(sys.argv[1], 28, warn=print).batches(8, 4)); print('read')\n"
        "except CalibrationError as exc:\n    print(exc)", str(folder))
    assert rss < RSS_KIB, f"peak RSS grew {rss // 1024} MiB: the image was decoded"
    assert said == [f"calibration image {folder / 'bomb.jpg'}: {BOMB}; remove or replace it "
                    "(or calibrate on another folder)"]


def test_quantize_stops_at_an_over_limit_header_and_names_the_empty_file(tmp_path: Path) -> None:
    folder = good_images(tmp_path / "calib", 8)
    giant, empty = folder / "giant.png", folder / "empty.png"
    empty.write_bytes(b"")
    said: list[str] = []
    assert len(list(bounded_source(open_calibration_source(folder, 28, warn=said.append)).batches(9, 4))) == 2
    assert said == [f"skipping unreadable calibration image {empty}: {EMPTY}"]
    giant.write_bytes(patched_png(60000, 60000))
    with pytest.raises(QuantizeError) as refused:
        list(bounded_source(open_calibration_source(folder, 28, warn=said.append)).batches(10, 5))
    assert str(refused.value) == (f"calibration image {giant}: {GIANT}; remove or replace it (or calibrate on "
                                  "another folder); no bundle was written")


# ---- the image-folder camera (folder:DIR) ------------------------------------------------------------

@pytest.mark.parametrize(("content", "why"), [(patched_png(60000, 60000), GIANT), (b"", EMPTY)],
                         ids=["60000px", "empty"])
def test_folder_camera_skips_a_refused_image_once_by_name(tmp_path: Path, content: bytes, why: str) -> None:
    good_images(tmp_path / "cls", 1, side=20)
    bad = tmp_path / "cls" / "bad.png"
    bad.write_bytes(content)
    source = open_source(f"folder:{tmp_path}?loop=1")
    with peak() as got:
        frames, said = frames_of(source, 4)  # four passes over the folder
    assert len(frames) == 4 and all(f.image.shape == (20, 20, 3) and f.label == "cls" for f in frames)
    assert said == [f"skipping image {bad}: {why}; remove or replace it"]  # once, not on every pass
    assert source.skipped == [bad]  # type: ignore[attr-defined]
    assert got[0] < PEAK_BYTES


def test_folder_camera_does_not_decode_an_image_bomb(tmp_path: Path) -> None:
    good_images(tmp_path / "cls", 1, side=20)
    (tmp_path / "cls" / "bomb.jpg").write_bytes(patched_jpeg(20000, 20000))
    said, rss = in_child(
        "import sys, warnings; from edgefs.camera import open_source; warnings.simplefilter('ignore')\n"
        "source = open_source(sys.argv[1])",
        "with source:\n    frames = [f.image.shape for f in iter(source.read, None)]\n"
        "print(frames); print([str(p) for p in source.skipped])", str(tmp_path))
    assert rss < RSS_KIB, f"peak RSS grew {rss // 1024} MiB: the image was decoded"
    assert said == ["[(20, 20, 3)]", str([str(tmp_path / "cls" / "bomb.jpg")])]


# ---- the synthetic camera's ImageFolder (synthetic:DIR) ----------------------------------------------

@pytest.mark.parametrize(("content", "why"), [(patched_png(60000, 60000), GIANT), (b"", EMPTY)],
                         ids=["60000px", "empty"])
def test_synthetic_camera_skips_a_refused_image_by_name(tmp_path: Path, content: bytes, why: str) -> None:
    good_images(tmp_path / "a", 3, side=24)
    bad = tmp_path / "a" / "000.png"
    bad.write_bytes(content)
    source = open_source(f"synthetic:{tmp_path}", size="80x60", frames=40, hold=1, seed=0)
    with peak() as got:
        frames, said = frames_of(source, 100)
    assert len(frames) == 40  # the other images of the class were shown instead
    assert said == [f"synthetic camera: skipping image {bad}: {why}; remove or replace it"]
    assert got[0] < PEAK_BYTES


def test_synthetic_camera_does_not_decode_an_image_bomb(tmp_path: Path) -> None:
    good_images(tmp_path / "a", 1, side=24)
    (tmp_path / "a" / "bomb.jpg").write_bytes(patched_jpeg(20000, 20000))
    said, rss = in_child(
        "import sys, warnings; from edgefs.camera import open_source\n"
        "source = open_source('synthetic:' + sys.argv[1], size='80x60', frames=20, hold=1, seed=0)",
        "with warnings.catch_warnings(record=True) as caught:\n    warnings.simplefilter('always')\n"
        "    with source:\n        n = len(list(iter(source.read, None)))\n"
        "print(n); print([str(w.message) for w in caught])", str(tmp_path))
    assert rss < RSS_KIB, f"peak RSS grew {rss // 1024} MiB: the image was decoded"
    assert said == ["20", str([f"synthetic camera: skipping image {tmp_path / 'a' / 'bomb.jpg'}: {BOMB}; "
                               "remove or replace it"])]


# ---- edgefs tune: the card images it enrolls and takes as reference images ----------------------------

@pytest.mark.parametrize(("content", "why"), [(patched_png(60000, 60000), GIANT), (b"", EMPTY)],
                         ids=["60000px", "empty"])
def test_tune_skips_a_refused_image_by_name(tmp_path: Path, content: bytes, why: str) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    with peak() as got, pytest.warns(UserWarning) as caught:
        assert _read_rgb(bad) is None
    assert [str(w.message) for w in caught] == [f"skipping image {bad}: {why}; remove or replace it"]
    assert got[0] < PEAK_BYTES


def test_tune_does_not_decode_an_image_bomb(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(patched_jpeg(20000, 20000))
    said, rss = in_child(
        "import sys, warnings; from pathlib import Path; from edgefs.tune import _read_rgb",
        "with warnings.catch_warnings(record=True) as caught:\n    warnings.simplefilter('always')\n"
        "    image = _read_rgb(Path(sys.argv[1]))\n"
        "print(image is None); print([str(w.message) for w in caught])", str(bomb))
    assert rss < RSS_KIB, f"peak RSS grew {rss // 1024} MiB: the image was decoded"
    assert said == ["True", str([f"skipping image {bomb}: {BOMB}; remove or replace it"])]


# ---- edgefs classes reembed: thumbnails decoded from a store ------------------------------------------

def store_with_thumbnail(bundle: Path, db: Path, thumbnail: bytes) -> Path:
    """A store of one class, two shots: a real thumbnail and ``thumbnail`` (a JPEG, as the store takes them)."""
    _, good = cv2.imencode(".jpg", np.full((64, 64, 3), 90, np.uint8))
    dim = read_bundle(bundle).manifest.embedding_dim
    with ClassStore.open(db, read_bundle(bundle)) as store:
        store.add_class("mug", np.random.default_rng(0).standard_normal((2, dim)).astype(np.float32),
                        [good.tobytes(), thumbnail])
    return db


THUMB_OVER = ("declares 60000 x 60000 pixels, over the limit of 67108864 (edgefs.limits.MAX_IMAGE_PIXELS; edgefs "
              "writes 64 px thumbnails), so it was not decoded")


@pytest.mark.parametrize(("stored", "written", "problem"), [
    # a class pack from elsewhere can carry such a JPEG; the others only a store altered outside edgefs
    ("api", patched_jpeg(60000, 60000), THUMB_OVER),
    ("sqlite", patched_png(60000, 60000), THUMB_OVER),
    ("sqlite", b"", "is empty (0 bytes)"),
], ids=["jpeg-60000px", "png-60000px", "empty"])
def test_reembed_refuses_a_thumbnail_over_the_limit_before_decoding(conv4_bundle: Path, tmp_path: Path, stored: str,
                                                                   written: bytes, problem: str) -> None:
    db = store_with_thumbnail(conv4_bundle, tmp_path / "s.db",
                              written if stored == "api" else patched_jpeg(16, 16))
    if stored == "sqlite":
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE samples SET thumbnail = ? WHERE id = (SELECT MAX(id) FROM samples)", (written,))
        conn.close()
    with peak() as got, pytest.raises(StoreError) as refused:
        reembed_store(db, conv4_bundle, conv4_bundle, tmp_path / "new.db", mode="thumbnails", log=lambda _: None)
    assert str(refused.value) == (f"a stored thumbnail of class 'mug' {problem}; remove the class "
                                  "('edgefs classes remove') and enroll it again from the camera")
    assert not (tmp_path / "new.db").exists()
    assert got[0] < PEAK_BYTES


def test_reembed_does_not_decode_a_thumbnail_bomb(conv4_bundle: Path, tmp_path: Path) -> None:
    db = store_with_thumbnail(conv4_bundle, tmp_path / "s.db", patched_jpeg(20000, 20000))
    said, rss = in_child(
        "import sys; from edgefs.store import StoreError; from edgefs.service.reembed import reembed_store",
        "try:\n    reembed_store(sys.argv[1], sys.argv[2], sys.argv[2], sys.argv[3], mode='thumbnails', "
        "log=lambda _: None); print('embedded')\nexcept StoreError as exc:\n    print(exc)",
        str(db), str(conv4_bundle), str(tmp_path / "new.db"))
    assert rss < RSS_KIB, f"peak RSS grew {rss // 1024} MiB: the thumbnail was decoded"
    assert said == ["a stored thumbnail of class 'mug' declares 20000 x 20000 pixels, over the limit of 67108864 "
                    "(edgefs.limits.MAX_IMAGE_PIXELS; edgefs writes 64 px thumbnails), so it was not decoded; "
                    "remove the class ('edgefs classes remove') and enroll it again from the camera"]
