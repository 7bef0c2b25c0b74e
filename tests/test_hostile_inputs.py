"""Hostile and unlucky inputs of the workstation commands: each gives a clear edgefs message, in bounded memory.

The committed colour checkpoint exported with no --data; data folders holding an empty PNG or one whose
header claims 60000 x 60000 pixels; a real 20000 x 20000 PNG; calibration folders with an over-limit image
or a request for 10^8 images; class packs that are zip bombs or whose zip directory lies; output paths
that are (or lie inside) an input of the same command.
"""

from __future__ import annotations

import json
import shutil
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
from edgefs.export.calibrate import CalibrationStats, calibration_warnings
from edgefs.export.quantize import QuantizeError, quantize_bundle

from edgefs import limits
from edgefs.cli import main
from edgefs.fileio import OutputOverInput
from edgefs.runtime.bundle import Manifest
from edgefs.store import ClassStore, StoreError
from edgefs.store.packs import PACK_JSON, embeddings_member
from tests.conftest import write_stroke_classes

REPO = Path(__file__).parents[1]
COLOUR = REPO / "models" / "protonet-lite0-colour.pt"
CONV4 = REPO / "models" / "protonet-conv4-glyphs28.pt"


def quiet(_: str) -> None:
    pass


from tests.test_hostile_files import big_png, png_header  # noqa: E402  (the crafted images, one copy)


@pytest.fixture(scope="module")
def strokes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_stroke_classes(tmp_path_factory.mktemp("strokes"), {"train": 6, "val": 6, "test": 6}, per_class=4)


@pytest.fixture(scope="module")
def bundle(strokes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed Conv-4 checkpoint as a bundle (28 px), parity-checked on the stroke images."""
    from edgefs.export import export_bundle

    out = tmp_path_factory.mktemp("bundle") / "conv4.edgefs"
    export_bundle(CONV4, out, data=str(strokes), parity_images=8, log=quiet)
    return out


@pytest.fixture()
def data(strokes: Path, tmp_path: Path) -> Path:
    """A copy of the stroke test split, to spoil."""
    shutil.copytree(strokes / "test", tmp_path / "data" / "test")
    return tmp_path / "data"


def calib_folder(root: Path, n: int) -> Path:
    """``n`` 28 px colour noise images in one folder."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(root / f"{i:03d}.png"), rng.integers(0, 256, (28, 28, 3), dtype=np.uint8))
    return root


# ---- export: a checkpoint that records several data folders ------------------------------------------

def test_export_of_the_colour_model_without_data_names_its_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # where the recorded (relative) domain folders do not exist
    assert main(["export", str(COLOUR), "--out", str(tmp_path / "m.edgefs")]) == 2
    err = capsys.readouterr().err
    assert (f"the parity check needs real images, and checkpoint {COLOUR} records data folders data/domains/cards, "
            "data/domains/clipart, data/domains/flags, data/domains/icons, data/domains/units, none of which exists "
            "here (relative paths are taken from the current folder); pass --data DIR (a folder with train/ val/ "
            "test/, a folder of classes, or fashion-mnist[:DIR])") in err
    assert not (tmp_path / "m.edgefs").exists()


def test_export_takes_parity_images_from_the_recorded_folders_that_exist(tmp_path: Path) -> None:
    import torch
    from edgefs.export import export_bundle

    from edgefs.backbones import build_backbone
    from edgefs.methods import build_method
    from edgefs.train.checkpoint import save_checkpoint

    a = write_stroke_classes(tmp_path / "a", {"test": 5})
    b = write_stroke_classes(tmp_path / "b", {"test": 5}, seed=1)
    gone = tmp_path / "gone"
    torch.manual_seed(0)
    ckpt = tmp_path / "c.pt"
    save_checkpoint(ckpt, build_method("protonet", build_backbone("conv4")),
                    {"config": {"data": [str(a), str(gone), str(b)]}, "episode": 0, "best_val": None})
    lines: list[str] = []
    written = export_bundle(ckpt, tmp_path / "m.edgefs", parity_images=6, log=lines.append)
    parity = written.manifest.export["parity"]
    assert parity["data"]["data"] == [str(a), str(b)] and parity["summary"]["images"] == 6
    assert lines[0] == (f"parity images from {a}, {b}; checkpoint {ckpt} also records {gone}, "
                        "which does not exist here")


# ---- eval: bad images, a real 20000 x 20000 PNG, --out a file ----------------------------------------

def eval_args(data: Path, tmp_path: Path, out: Path | None = None) -> list[str]:
    return ["eval", "baseline:pixels", "--data", str(data), "--protocols", "5w1s", "--episodes", "5",
            "--out", str(out or tmp_path / "report"), "--episodes-cache", str(tmp_path / "episodes")]


@pytest.mark.parametrize(("content", "why"), [
    (b"", "an empty file (0 bytes), not a PNG, JPEG, BMP, GIF, WebP, PNM or TIFF image"),
    (png_header(60000, 60000), "60000 x 60000 pixels, over the limit of 67108864 (edgefs.limits.MAX_IMAGE_PIXELS); "
                               "shrink it first"),
], ids=["empty", "60000px-header"])
def test_eval_skips_a_bad_image_by_name_and_strict_refuses_it(data: Path, tmp_path: Path, content: bytes, why: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = data / "test" / "script0" / "char000" / "bad.png"
    bad.write_bytes(content)
    assert main(eval_args(data, tmp_path)) == 0
    assert f"skipping image {bad}: {why}; remove or replace it" in capsys.readouterr().out
    assert main([*eval_args(data, tmp_path), "--strict"]) == 2
    assert f"edgefs eval: error: cannot read image {bad}: {why}; remove or replace it" in capsys.readouterr().err


def test_eval_out_that_is_a_file_is_refused_before_evaluating(data: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report.txt"
    report.write_text("keep me")
    assert main(eval_args(data, tmp_path, report)) == 2
    assert (f"--out {report} is an existing file; edgefs eval writes eval.json, eval.md, config.yaml into a "
            "folder: give --out a folder path (it is created if missing)") in capsys.readouterr().err
    assert report.read_text() == "keep me"


def test_a_real_20000px_png_in_a_data_folder_is_not_decoded(tmp_path: Path) -> None:
    folder = tmp_path / "d" / "cls"
    folder.mkdir(parents=True)
    big_png(folder / "huge.png", 20000)
    cv2.imwrite(str(folder / "ok.png"), np.full((28, 28, 3), 7, np.uint8))
    # In a fresh process: its peak resident memory shows whether the image was decoded (1.2 GB as RGB).
    code = ("import resource, sys; from edgefs.data.images import load_image_folder; "
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; said = []; "
            "s = load_image_folder(sys.argv[1], channels=3, size=28, warn=said.append); "
            "print(len(s.images)); print(said[0]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "d")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    count, said, rss_kib = out.stdout.strip().splitlines()
    assert count == "1"
    assert said == (f"skipping image {folder / 'huge.png'}: 20000 x 20000 pixels, over the limit of 67108864 "
                    "(edgefs.limits.MAX_IMAGE_PIXELS); shrink it first; remove or replace it")
    assert int(rss_kib) < 50_000, f"peak RSS grew {int(rss_kib) // 1024} MiB: the image was decoded"


# ---- quantize: calibration images through the bounded reader, and a bounded count --------------------

def test_quantize_refuses_an_over_limit_calibration_image_by_name(bundle: Path, tmp_path: Path) -> None:
    calib = calib_folder(tmp_path / "calib", 39)
    huge = calib / "huge.png"
    huge.write_bytes(png_header(20000, 20000))  # 40 files: 32 calibrate, 8 held out, so every file is read
    with pytest.raises(QuantizeError) as refused:
        quantize_bundle(bundle, calib, tmp_path / "q.edgefs", calib_images=300, parity_images=8, log=quiet)
    assert str(refused.value) == (
        f"calibration image {huge}: 20000 x 20000 pixels, over the limit of 67108864 "
        "(edgefs.limits.MAX_IMAGE_PIXELS); shrink it first; remove or replace it (or calibrate on another folder); "
        "no bundle was written")
    assert not (tmp_path / "q.edgefs").exists()


def test_a_calibration_count_over_the_limit_is_clamped_with_a_note(bundle: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_CALIB_IMAGES", 40)
    calib = calib_folder(tmp_path / "calib", 64)
    lines: list[str] = []
    report = quantize_bundle(bundle, calib, tmp_path / "q.edgefs", calib_images=10**8, parity_images=16,
                             log=lines.append)
    assert "note: --calib-images 100000000 is over the limit of 40 (edgefs.limits.MAX_CALIB_IMAGES); using 40" in lines
    assert report.passed and report.calibration["images"] == 40


def test_calibration_statistics_gathered_per_batch_are_those_of_the_whole_set(bundle: Path) -> None:
    from edgefs.runtime.bundle import read_bundle

    rng = np.random.default_rng(0)
    images = np.clip(100 + rng.normal(0, 1.5, (24, 8, 8, 3)), 0, 255).astype(np.uint8)  # nearly identical
    embeddings = (1 + 0.01 * rng.standard_normal((24, 16))).astype(np.float32)  # alike to the model
    manifest = read_bundle(bundle).manifest
    batched = CalibrationStats()
    for i in range(0, 24, 8):
        batched.add(images[i:i + 8], embeddings[i:i + 8])
    said = batched.warnings(manifest)
    assert said == calibration_warnings(images, embeddings, manifest)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    gram = unit.astype(np.float64) @ unit.T
    mean_off = (gram.sum() - np.trace(gram)) / (24 * 23)
    assert any(f"mean pairwise cosine {mean_off:.3f}" in w for w in said)
    assert any("nearly identical" in w for w in said)


# ---- class packs: refused from the zip directory, read in bounded memory -----------------------------

DIM = 16
BOMB = 64 << 20  # under MAX_PACK_NPY_BYTES: a size the old reader read whole


def pack_members(tmp_path: Path) -> dict[str, bytes]:
    manifest = Manifest(backbone={}, input={}, output={"dim": DIM}, head={"type": "prototype"}, fingerprint="ab" * 32)
    store = ClassStore.open(tmp_path / "src.db", manifest)
    store.add_class("a", np.random.default_rng(0).normal(size=(2, DIM)).astype(np.float32))
    with zipfile.ZipFile(store.export_pack(tmp_path / "good.efpack")) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def write_pack(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    return path


def declare(path: Path, member: str, size: int, crc: int) -> None:
    """Patch the uncompressed size and CRC that the zip headers (local and central) give ``member``."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        local = zf.getinfo(member).header_offset
    struct.pack_into("<I", raw, local + 14, crc)
    struct.pack_into("<I", raw, local + 22, size)
    at = raw.find(b"PK\x01\x02")
    while at != -1:
        (length,) = struct.unpack_from("<H", raw, at + 28)
        if raw[at + 46:at + 46 + length] == member.encode():
            struct.pack_into("<I", raw, at + 16, crc)
            struct.pack_into("<I", raw, at + 24, size)
        at = raw.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(raw))


def import_peak(pack: Path, tmp_path: Path) -> tuple[str, int]:
    """Import ``pack`` into a new store; returns the refusal and the peak of Python allocations meanwhile."""
    manifest = Manifest(backbone={}, input={}, output={"dim": DIM}, head={"type": "prototype"}, fingerprint="ab" * 32)
    store = ClassStore.open(tmp_path / "dst.db", manifest)
    tracemalloc.start()
    try:
        with pytest.raises(StoreError) as refused:
            store.import_pack(pack)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert store.classes() == []
    return str(refused.value), peak


def test_pack_member_of_zeros_is_refused_from_the_directory(tmp_path: Path) -> None:
    members = pack_members(tmp_path)
    member = embeddings_member(0)
    members[member] = members[member][:128] + bytes(BOMB - 128)  # the real header, then zeros
    pack = write_pack(tmp_path / "bomb.efpack", members)
    del members
    assert pack.stat().st_size < 200_000
    with zipfile.ZipFile(pack) as zf:
        compressed = zf.getinfo(member).compress_size
    message, peak = import_peak(pack, tmp_path)
    assert message == (f"class pack {pack} declares {BOMB} bytes of embeddings and thumbnails in {compressed} "
                       "compressed bytes, more than 50 times as many (edgefs.limits.MAX_PACK_EXPANSION): embeddings "
                       "and JPEGs do not compress like that; it is a zip bomb or damaged: refusing it")
    assert peak < 8 << 20, f"{peak} bytes allocated while refusing"


def test_pack_whose_directory_understates_a_member_is_read_in_bounded_memory(tmp_path: Path) -> None:
    members = pack_members(tmp_path)
    member = embeddings_member(0)
    honest = members[member]
    members[member] = honest[:128] + bytes(BOMB - 128)
    pack = write_pack(tmp_path / "liar.efpack", members)
    del members
    declare(pack, member, len(honest), zlib.crc32(honest))  # the honest member's size and CRC
    message, peak = import_peak(pack, tmp_path)
    assert message.startswith(f"class pack {pack} is not a readable zip (truncated or corrupt: Bad CRC-32 for file "
                              f"'{member}')")
    assert peak < 8 << 20, f"{peak} bytes allocated: the member was decompressed past its declared size"


def test_pack_member_larger_than_its_class_is_refused_before_reading(tmp_path: Path) -> None:
    members = pack_members(tmp_path)
    member = embeddings_member(0)
    members[member] = members[member][:128] + np.random.default_rng(1).bytes(2 << 20)  # incompressible
    pack = write_pack(tmp_path / "big.efpack", members)
    message, _ = import_peak(pack, tmp_path)
    assert message == (f"class pack {pack}: member '{member}' declares {128 + (2 << 20)} bytes, but class 'a' has "
                       f"2 shots of {DIM} float32 values (at most {2 * DIM * 4 + 16384} bytes with its header); it is "
                       "damaged or hostile: refusing it")
    with zipfile.ZipFile(pack) as zf:
        assert json.loads(zf.read(PACK_JSON))["classes"][0]["shots"] == 2


# ---- output paths that are inputs of the same command ------------------------------------------------

def test_quantize_out_inside_the_calibration_folder_is_refused(bundle: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    calib = calib_folder(tmp_path / "calib", 48)
    out = calib / "int8.edgefs"
    assert main(["quantize", str(bundle), "--calib", str(calib), "--out", str(out), "--no-emulate"]) == 2
    assert (f"--out {out} would overwrite the calibration source ({calib}), which this command reads; nothing was "
            f"written. Give --out a path that is neither {calib}, nor inside it, nor a folder holding it"
            ) in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(OutputOverInput, match="would overwrite the FP32 bundle"):
        quantize_bundle(bundle, calib, bundle, overwrite=True, log=quiet)


def test_export_out_that_is_the_data_folder_is_refused(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    assert main(["export", str(CONV4), "--data", str(data), "--out", str(data), "--overwrite",
                 "--parity-images", "4"]) == 2
    assert (f"--out {data} would overwrite the --data folder ({data}), which this command reads; nothing was "
            "written") in capsys.readouterr().err
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


def test_eval_out_inside_the_data_folder_is_refused(data: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = data / "test" / "report"
    assert main(eval_args(data, tmp_path, out)) == 2
    assert (f"--out {out} would write eval.json over or into the data ({data}), which this command reads; nothing "
            "was written. Give --out a folder outside the models and data, e.g. reports/eval"
            ) in capsys.readouterr().err
    assert not out.exists()


def test_eval_report_folder_may_hold_the_checkpoint(tmp_path: Path) -> None:
    from edgefs.eval.run import EvalConfig, check_report_folder

    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    (run / "best.pt").write_bytes(b"")
    check_report_folder(run, EvalConfig(models=[str(run / "best.pt")], data=str(tmp_path / "data")))
    with pytest.raises(OutputOverInput, match=r"would write eval.json over or into model 1"):
        check_report_folder(run / "best.pt", EvalConfig(models=[str(run / "best.pt")]))


def test_train_out_inside_the_data_folder_is_refused(strokes: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    data = Path(shutil.copytree(strokes, tmp_path / "data"))
    out = data / "train" / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--episodes", "1", "--val-every", "1",
                 "--val-episodes", "1", "--ways", "2", "--queries", "1"]) == 2
    assert (f"--out {out} would overwrite the training data ({data}), which this command reads; nothing was "
            "written") in capsys.readouterr().err
    assert not out.exists()


def test_train_cached_out_that_holds_a_data_folder_is_refused(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    a = write_stroke_classes(tmp_path / "runs" / "a", {"train": 3, "val": 3})
    b = write_stroke_classes(tmp_path / "b", {"train": 3, "val": 3})
    out = tmp_path / "runs"
    assert main(["train-cached", "--data", str(b), str(a), "--out", str(out)]) == 2
    assert (f"--out {out} would overwrite the training data {a} ({a}), which this command reads; nothing was "
            "written") in capsys.readouterr().err
    assert not (out / "last.pt").exists()
