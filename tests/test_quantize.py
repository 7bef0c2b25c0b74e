"""INT8 bundles (`edgefs quantize`): calibration on real images, the parity gate, and class stores of the parent."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from edgefs.export.calibrate import calibration_warnings
from edgefs.export.quantize import (
    MIN_CALIBRATION_IMAGES,
    PERCENTILE_IMAGES_224,
    QuantizeError,
    percentile_images,
    quantize_bundle,
)

from edgefs.cli import main
from edgefs.errors import EdgefsError
from edgefs.imagefile import read_images
from edgefs.runtime.bundle import read_bundle
from edgefs.runtime.calibration import open_calibration_source
from edgefs.runtime.quantized import graph_precision, parent_fingerprint, quantization_info
from edgefs.runtime.select import open_engine
from edgefs.runtime.selfcheck import cosines
from edgefs.service.classifier import Classifier
from edgefs.service.options import EngineOptions
from edgefs.service.reembed import CARRY_MAX_DROP, CARRY_MIN_COSINE, reembed_store
from edgefs.store import ClassStore
from edgefs.store.validate import StoreError


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def int8_bundle(conv4_bundle: Path, glyph_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conv4 quantised on the glyph test split (an ImageFolder of real rendered glyphs)."""
    out = tmp_path_factory.mktemp("int8") / "conv4-int8.edgefs"
    report = quantize_bundle(conv4_bundle, glyph_data / "test", out, calib_images=64, parity_images=48, log=quiet)
    assert report.passed and report.out == out
    return out


def glyph_batch(glyph_data: Path, n: int = 32) -> np.ndarray:
    source = open_calibration_source(glyph_data / "val", 28, seed=3)
    return next(source.batches(n, n))


def test_int8_bundle_records_its_parent_and_runs_int8(conv4_bundle: Path, int8_bundle: Path,
                                                      glyph_data: Path) -> None:
    parent, child = read_bundle(conv4_bundle), read_bundle(int8_bundle)
    assert child.fingerprint != parent.fingerprint  # a new bundle: stores and engines are tied to it alone
    assert parent_fingerprint(child) == parent.fingerprint and parent_fingerprint(parent) is None
    assert graph_precision(child) == "int8" and graph_precision(parent) == "fp32"
    info = quantization_info(child)
    assert info is not None and info["format"] == "QDQ" and info["calibration"]["kind"] == "imagefolder"
    parity = info["parity"]
    assert parity["images"] >= 8 and parity["mean_cosine"] >= info["floors"]["mean_cosine"]
    assert parity["episodes"] is not None and 0.0 <= parity["episodes"]["top1_agreement"] <= 1.0
    assert 0.0 <= parity["episodes"]["accuracy_fp32_shots"] <= 1.0
    # The graph really is quantised: weights stored as int8 with QuantizeLinear/DequantizeLinear pairs.
    import onnx

    ops = {n.op_type for n in onnx.load(str(child.onnx_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert not (child.path / "backbone.pt").exists()  # the torch backend cannot pass FP32 weights off as INT8
    fp32 = open_engine(parent, "onnxruntime", device="cpu", threads=1, log=quiet)
    int8 = open_engine(child, "onnxruntime", device="cpu", threads=1, log=quiet)
    assert (fp32.precision, int8.precision) == ("fp32", "int8") and "int8" in int8.describe()
    images = glyph_batch(glyph_data)
    cos = cosines(fp32.embed(images), int8.embed(images))
    assert cos.mean() > 0.98 and cos.min() > 0.9


def test_int8_precision_needs_an_int8_bundle(conv4_bundle: Path, int8_bundle: Path) -> None:
    with pytest.raises(EdgefsError, match="edgefs quantize"):
        open_engine(conv4_bundle, "onnxruntime", device="cpu", precision="int8", log=quiet)
    engine = open_engine(int8_bundle, "onnxruntime", device="cpu", precision="int8", threads=1, log=quiet)
    assert engine.precision == "int8"


def test_quantize_without_calibration_data_says_what_to_give(conv4_bundle: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(QuantizeError, match="--calib"):
        quantize_bundle(conv4_bundle, None, tmp_path / "q.edgefs", log=quiet)
    assert main(["quantize", str(conv4_bundle), "--out", str(tmp_path / "q.edgefs")]) == 2
    err = capsys.readouterr().err
    assert "needs calibration images" in err and "random data is never used" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["quantize", str(conv4_bundle), "--calib", str(empty), "--out", str(tmp_path / "q.edgefs")]) == 2
    assert "holds no images" in capsys.readouterr().err
    assert not (tmp_path / "q.edgefs").exists()


def test_too_few_calibration_images_are_refused(conv4_bundle: Path, glyph_data: Path, tmp_path: Path) -> None:
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted((glyph_data / "test").rglob("*.png"))[:12]:
        shutil.copy(p, few / f"{len(list(few.iterdir()))}.png")
    with pytest.raises(QuantizeError, match="at least 32"):
        quantize_bundle(conv4_bundle, few, tmp_path / "q.edgefs", log=quiet)


def test_parity_floor_refuses_and_writes_nothing(conv4_bundle: Path, glyph_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.edgefs"
    report_file = tmp_path / "report.json"
    with pytest.raises(QuantizeError, match=r"mean cosine .* < 1\.01.*no bundle was written"):
        quantize_bundle(conv4_bundle, glyph_data / "test", out, calib_images=48, parity_images=32,
                        min_cosine=1.01, json_out=report_file, log=quiet)
    assert not out.exists() and list(tmp_path.iterdir()) == [report_file]  # no temporary folder left
    report = json.loads(report_file.read_text())
    assert report["passed"] is False and report["parity"]["mean_cosine"] <= 1.0


def test_wrong_kind_of_calibration_images_is_warned(conv4_bundle: Path, glyph_data: Path, tmp_path: Path) -> None:
    # One frame over and over (a covered lens, a static scene): quantisation runs, the report warns.
    frame = cv2.imread(str(sorted((glyph_data / "test").rglob("*.png"))[0]))
    same = tmp_path / "same"
    same.mkdir()
    for i in range(60):
        cv2.imwrite(str(same / f"{i:03d}.png"), frame)
    lines: list[str] = []
    report = quantize_bundle(conv4_bundle, same, tmp_path / "q.edgefs", calib_images=40, parity_images=16,
                             log=lines.append)
    assert any("nearly identical" in w for w in report.warnings)
    assert any(line.startswith("warning: ") and "nearly identical" in line for line in lines)
    assert "nearly identical" in " ".join(quantization_info(read_bundle(tmp_path / "q.edgefs"))["warnings"])
    # Grey images for a colour backbone: the glyphs are grey; a manifest of a 3-channel backbone warns.
    images = glyph_batch(glyph_data, 32)
    manifest = read_bundle(conv4_bundle).manifest
    rng = np.random.default_rng(0)
    varied = rng.standard_normal((32, 16)).astype(np.float32)
    manifest.backbone = {**manifest.backbone, "in_channels": 3}
    assert any("grey" in w for w in calibration_warnings(images, varied, manifest))
    manifest.backbone = {**manifest.backbone, "in_channels": 1}
    assert not any("grey" in w for w in calibration_warnings(images, varied, manifest))


# ---- class stores of the FP32 parent ---------------------------------------------------------------

@pytest.fixture()
def parent_store(conv4_bundle: Path, glyph_data: Path, tmp_path: Path) -> Path:
    store = tmp_path / "classes.db"
    dirs = sorted(p for p in (glyph_data / "test").glob("*/*") if p.is_dir() and len(list(p.glob("*.png"))) >= 4)
    with Classifier.open(conv4_bundle, store, options=EngineOptions(backend="onnxruntime", threads=1),
                         log=quiet) as clf:
        for i, d in enumerate(dirs[:3]):
            images, _, _ = read_images([d])
            clf.enroll(f"c{i}", images[:3], source=str(d))
    return store


def test_int8_bundle_refuses_its_parents_store_and_names_reembed(parent_store: Path, int8_bundle: Path) -> None:
    with pytest.raises(StoreError, match=r"FP32 parent of the INT8 bundle.*edgefs classes reembed"):
        ClassStore.open(parent_store, read_bundle(int8_bundle), create=False)


def test_reembed_carries_embeddings_to_the_int8_bundle(parent_store: Path, conv4_bundle: Path, int8_bundle: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "int8.db"
    text = reembed_store(parent_store, conv4_bundle, int8_bundle, out, log=quiet)
    assert "carried over" in text and "3 classes" in text
    with ClassStore.open(parent_store, read_bundle(conv4_bundle), create=False) as old, \
            ClassStore.open(out, read_bundle(int8_bundle), create=False) as new:
        assert new.names() == old.names() == ["c0", "c1", "c2"]
        for name in old.names():
            np.testing.assert_array_equal(new.embeddings(name), old.embeddings(name))
        assert new.meta()["carried_from"] == read_bundle(conv4_bundle).fingerprint
        assert new.load_head_state().current
    with Classifier.open(int8_bundle, out, options=EngineOptions(backend="onnxruntime", threads=1),
                         create=False, log=quiet) as clf:
        assert clf.classes == ["c0", "c1", "c2"]


def test_reembed_from_thumbnails_uses_the_new_bundle(parent_store: Path, conv4_bundle: Path, int8_bundle: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "int8.db"
    rc = main(["classes", "reembed", "--store", str(parent_store), "--bundle", str(conv4_bundle),
                 "--to", str(int8_bundle), "--out", str(out), "--mode", "thumbnails"])
    assert rc == 0
    engine = open_engine(int8_bundle, "auto", log=quiet)  # what reembed opens
    from edgefs.service.reembed import _decode

    with ClassStore.open(out, read_bundle(int8_bundle), create=False) as new:
        emb, thumbs, _, _ = new.samples("c1")
        again = engine.embed(np.stack([_decode(t, (28, 28)) for t in thumbs if t is not None]))
        np.testing.assert_allclose(emb, again, rtol=1e-5, atol=1e-5)
        with ClassStore.open(parent_store, read_bundle(conv4_bundle), create=False) as old:
            assert not np.array_equal(emb, old.embeddings("c1"))  # embedded again, not copied
    with pytest.raises(StoreError, match="exists"):
        reembed_store(parent_store, conv4_bundle, int8_bundle, out, log=quiet)


def test_carry_is_refused_without_a_measured_close_parent(parent_store: Path, conv4_bundle: Path,
                                                          int8_bundle: Path, tmp_path: Path) -> None:
    # Another FP32 bundle is not an INT8 child of the store's bundle.
    with pytest.raises(StoreError, match="was not quantised from"):
        reembed_store(parent_store, conv4_bundle, conv4_bundle, tmp_path / "a.db", mode="carry", log=quiet)
    # An INT8 child whose queries did worse on the parent's shots than the floor allows: thumbnails only.
    low = tmp_path / "low.edgefs"
    shutil.copytree(int8_bundle, low)
    doc = json.loads((low / "manifest.json").read_text())
    episodes = doc["export"]["quantization"]["parity"]["episodes"]
    episodes["accuracy_fp32_shots"] = episodes["accuracy_reference"] - (CARRY_MAX_DROP + 0.5) / 100
    (low / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="points below the parent"):
        reembed_store(parent_store, conv4_bundle, low, tmp_path / "b.db", mode="carry", log=quiet)
    text = reembed_store(parent_store, conv4_bundle, low, tmp_path / "c.db", log=quiet)  # auto
    assert "thumbnails embedded again" in text
    # Calibrated without classes (no episodes): the recorded mean cosine decides.
    doc["export"]["quantization"]["parity"]["episodes"] = None
    doc["export"]["quantization"]["parity"]["mean_cosine"] = CARRY_MIN_COSINE - 0.01
    (low / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(StoreError, match=f"below {CARRY_MIN_COSINE}"):
        reembed_store(parent_store, conv4_bundle, low, tmp_path / "d.db", mode="carry", log=quiet)


def test_quantize_cli_writes_the_bundle_and_its_report(conv4_bundle: Path, glyph_data: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out, report = tmp_path / "q.edgefs", tmp_path / "q.json"
    args = ["quantize", str(conv4_bundle), "--calib", str(glyph_data / "test"), "--out", str(out),
            "--calib-images", "48", "--parity-images", "32", "--json", str(report)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert re.search(r"parity vs fp32 on \d+ held-out images: mean cosine", printed) and f"wrote {out}" in printed
    doc = json.loads(report.read_text())
    assert doc["passed"] and doc["out"] == str(out) and doc["calibration"]["images"] == 48
    assert graph_precision(read_bundle(out)) == "int8"
    assert main(args) == 2  # an existing --out is not replaced without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(QuantizeError, match="already an INT8 bundle"):
        quantize_bundle(out, glyph_data / "test", tmp_path / "qq.edgefs", log=quiet)


def test_mixed_accuracy_scores_the_same_episodes_as_the_parity_check(conv4_bundle: Path, int8_bundle: Path,
                                                                     glyph_data: Path) -> None:
    from edgefs.export.parity import episode_agreement
    from edgefs.export.quantize import mixed_accuracy

    source = open_calibration_source(glyph_data / "test", 28, seed=0)
    images, labels = source.held_out(len(source))
    assert labels is not None
    fp32 = open_engine(conv4_bundle, "onnxruntime", device="cpu", threads=1, log=quiet).embed(images)
    int8 = open_engine(int8_bundle, "onnxruntime", device="cpu", threads=1, log=quiet).embed(images)
    ep = episode_agreement(fp32, int8, labels, "euclidean", episodes=50, seed=4)
    assert ep is not None
    # Same shots and queries: the reference accuracy and the candidate's, exactly.
    assert mixed_accuracy(fp32, fp32, labels, "euclidean", episodes=50, seed=4) == ep["accuracy_reference"]
    assert mixed_accuracy(int8, int8, labels, "euclidean", episodes=50, seed=4) == ep["accuracy_candidate"]
    mixed = mixed_accuracy(fp32, int8, labels, "euclidean", episodes=50, seed=4)
    assert abs(mixed - ep["accuracy_reference"]) < 0.05


# ---- calibration method ------------------------------------------------------------------------------

def test_auto_calibration_keeps_minmax_where_it_passes(int8_bundle: Path) -> None:
    info = quantization_info(read_bundle(int8_bundle))  # made with the default method
    assert info["method"] == "minmax" and info["method_asked"] == "auto"


def test_auto_calibration_tries_percentile_on_fewer_images_then_names_both(conv4_bundle: Path, glyph_data: Path,
                                                                           tmp_path: Path) -> None:
    out, report_file, lines = tmp_path / "q.edgefs", tmp_path / "report.json", []
    # Auto: each portable format fastest first with minmax, then percentile on the last; all named.
    with pytest.raises(QuantizeError, match=r"s7, minmax: mean cosine .* < 1\.01.*; s7-u8first3, minmax: mean cosine "
                                            r".*; u8, minmax: .*; u8, percentile: mean cosine .* < 1\.01"):
        quantize_bundle(conv4_bundle, glyph_data / "test", out, calib_images=48, parity_images=32,
                        min_cosine=1.01, json_out=report_file, log=lines.append)
    assert any(line.startswith("u8, minmax missed the floors (mean cosine") and
               "trying u8 weights, percentile on 48 images" in line
               for line in lines)  # 28 px: the whole calibration set fits in memory
    assert any(line.startswith("u8, percentile: parity vs fp32") for line in lines)
    assert not out.exists() and list(tmp_path.iterdir()) == [report_file]
    assert json.loads(report_file.read_text())["passed"] is False
    with pytest.raises(QuantizeError, match=r"mean cosine .* < 1\.01.*try --method percentile"):
        quantize_bundle(conv4_bundle, glyph_data / "test", out, calib_images=48, parity_images=32,
                        method="minmax", min_cosine=1.01, log=quiet)  # asked for minmax: only minmax


def test_percentile_calibration_images_scale_with_input_area() -> None:
    assert percentile_images((224, 224), 300) == PERCENTILE_IMAGES_224 == 150
    assert percentile_images((224, 224), 300, batch=8) == 144  # whole batches: the calibrators stack them
    assert percentile_images((160, 160), 300) == 294 and percentile_images((160, 160), 200) == 200
    assert percentile_images((28, 28), 48) == 48
    assert percentile_images((1024, 1024), 300) == MIN_CALIBRATION_IMAGES  # never below what calibration needs
