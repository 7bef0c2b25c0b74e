"""Enrollment through the Classifier and `edgefs enroll`: one commit, gate, persistence, no forgetting."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgefs.cli import main
from edgefs.errors import EdgefsError
from edgefs.imagefile import read_images
from edgefs.runtime.bundle import read_bundle
from edgefs.service.classifier import Classifier
from edgefs.service.options import EngineOptions
from edgefs.store import ClassStore


@pytest.fixture()
def bundle(conv4_bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / "model.edgefs"
    shutil.copytree(conv4_bundle, out)
    return out


def class_dirs(glyph_data: Path, n: int) -> list[Path]:
    dirs = sorted(p for p in (glyph_data / "test").glob("*/*") if p.is_dir() and len(list(p.glob("*.png"))) >= 4)
    assert len(dirs) >= n
    return dirs[:n]


def open_clf(bundle: Path, store: Path, **kw: object) -> Classifier:
    return Classifier.open(bundle, store, options=EngineOptions(backend="onnxruntime", threads=1, **kw),
                           log=lambda _: None)


def test_enroll_cli_commits_classes_and_head(bundle: Path, glyph_data: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "classes.db"
    dirs = class_dirs(glyph_data, 3)
    for i, d in enumerate(dirs):
        rc = main(["enroll", str(bundle), "--store", str(store), "--label", f"c{i}", "--images", str(d),
                   "--backend", "onnxruntime", "--threads", "1"])
        assert rc == 0
    out = capsys.readouterr().out
    assert "enrolled 'c2'" in out and "commit" in out
    with ClassStore.open(store, read_bundle(bundle), create=False) as s:
        assert s.names() == ["c0", "c1", "c2"]
        saved = s.load_head_state()
        assert saved.current and saved.params["classes"] == ["c0", "c1", "c2"]
        assert saved.params["threshold_mode"] == "auto"
        assert s.integrity_check() == "ok"
    # A reopened classifier restores the same head and classifies each class's own shots as that class.
    with open_clf(bundle, store) as clf:
        assert clf.classes == ["c0", "c1", "c2"]
        assert clf.threshold is not None and -1.0 < clf.threshold < 1.0
        for i, d in enumerate(dirs):
            images, _, _ = read_images([d])
            top = clf.classify_frames(images, k=1).top_idx[:, 0]
            assert np.mean(top == i) >= 0.5


def test_new_class_leaves_other_rows_bitwise_unchanged(bundle: Path, glyph_data: Path, tmp_path: Path) -> None:
    dirs = class_dirs(glyph_data, 4)
    with open_clf(bundle, tmp_path / "s.db") as clf:
        for i, d in enumerate(dirs[:3]):
            clf.enroll(f"c{i}", read_images([d])[0])
        before = clf.head.state()[0]["sums"].copy()
        result = clf.enroll("c3", read_images([dirs[3]])[0])
        after = clf.head.state()[0]["sums"]
        assert np.array_equal(after[:3], before) and after.shape == (4, before.shape[1])
        assert result.added >= 1 and result.total == result.added
        assert set(result.timings_ms) == {"embed", "views", "gate", "head", "commit", "total"}
        # remove() drops that class's rows only
        clf.remove("c1")
        assert clf.classes == ["c0", "c2", "c3"]
        assert np.array_equal(clf.head.state()[0]["sums"], np.delete(after, 1, axis=0))
    with ClassStore.open(tmp_path / "s.db", clf.bundle, create=False) as s:
        assert s.names() == ["c0", "c2", "c3"]


def test_duplicate_label_and_append(bundle: Path, glyph_data: Path, tmp_path: Path) -> None:
    d = class_dirs(glyph_data, 1)[0]
    images, names, _ = read_images([d])
    with open_clf(bundle, tmp_path / "s.db") as clf:
        first = clf.enroll("mug", images[:2], names=names[:2])
        with pytest.raises(EdgefsError, match="already enrolled; pass --append"):
            clf.enroll("mug", images[2:])
        assert clf.head.shots("mug") == first.total
        more = clf.enroll("mug", images[2:], names=names[2:], append=True)
        assert more.total == first.total + more.added
        with pytest.raises(EdgefsError, match="nothing to --append"):
            clf.enroll("cup", images, append=True)
    with open_clf(bundle, tmp_path / "s.db") as clf:
        assert clf.head.shots("mug") == more.total


def test_gate_and_unreadable_files_write_nothing(bundle: Path, glyph_data: Path, tmp_path: Path) -> None:
    d = class_dirs(glyph_data, 1)[0]
    shots = tmp_path / "shots"
    shutil.copytree(d, shots)
    (shots / "broken.png").write_bytes(b"\x89PNG not really")
    images, names, problems = read_images([shots])
    assert len(problems) == 1 and "broken.png" in problems[0]
    flat = np.full((28, 28, 3), 128, np.uint8)  # no edges at all: sharpness 0
    store = tmp_path / "s.db"
    with open_clf(bundle, store) as clf:
        result = clf.enroll("a", [*images, flat, images[0]], names=[*names, "flat.png", "again.png"],
                            problems=problems)
        text = "\n".join(result.rejected)
        assert "broken.png" in text and "flat.png: too blurry" in text and "again.png: near-duplicate" in text
        # every offered shot is either stored or named in a rejection
        assert result.added == len(images) + 2 - (len(result.rejected) - len(problems)) >= 1
        with pytest.raises(EdgefsError, match="no shot of 'b' passed the quality gate"):
            clf.enroll("b", [flat, flat])
        assert clf.classes == ["a"]
    with ClassStore.open(store, clf.bundle, create=False) as s:
        assert s.names() == ["a"] and s.classes()[0].shots == result.added


def test_enroll_cli_bad_input_messages(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s.db"
    rc = main(["enroll", str(bundle), "--store", str(store), "--label", "x", "--images", str(tmp_path / "nope")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    rc = main(["enroll", str(bundle), "--store", str(store), "--label", "x", "--images", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2 and "no images to enroll 'x'" in err and "bad.png" in err
    with pytest.raises(SystemExit) as exit_info:  # refused when parsed, before the bundle is opened
        main(["enroll", str(bundle), "--store", str(store), "--label", "x", "--images", str(bad), "--threshold", "2"])
    assert exit_info.value.code == 2
    assert "argument --threshold: must be a finite number >= -1 and <= 1, got 2" in capsys.readouterr().err


def test_threshold_choice_is_saved_and_classes_commands_keep_head(bundle: Path, glyph_data: Path,
                                                                 tmp_path: Path) -> None:
    store = tmp_path / "s.db"
    dirs = class_dirs(glyph_data, 3)
    with open_clf(bundle, store, threshold="none") as clf:
        for i, d in enumerate(dirs):
            clf.enroll(f"c{i}", read_images([d])[0])
        assert clf.threshold is None
        protos = clf.head.prototypes.copy()
    assert main(["classes", "rename", "--store", str(store), "--bundle", str(bundle), "c0", "zero"]) == 0
    assert main(["classes", "remove", "--store", str(store), "--bundle", str(bundle), "c1"]) == 0
    with ClassStore.open(store, clf.bundle, create=False) as s:
        saved = s.load_head_state()
        assert saved.current and saved.params["classes"] == ["zero", "c2"]
    with open_clf(bundle, store) as clf:
        assert clf.threshold_mode == "none" and clf.threshold is None
        assert np.array_equal(clf.head.prototypes, protos[[0, 2]])
        assert clf.classes == ["zero", "c2"]


def test_store_of_another_bundle_is_refused(bundle: Path, glyph_data: Path, tmp_path: Path) -> None:
    d = class_dirs(glyph_data, 1)[0]
    store = tmp_path / "s.db"
    with open_clf(bundle, store) as clf:
        clf.enroll("a", read_images([d])[0])
    other = tmp_path / "other.edgefs"
    shutil.copytree(bundle, other)
    manifest = (other / "manifest.json").read_text()
    fp = clf.bundle.fingerprint
    # Another model: a different backbone.onnx, re-fingerprinted.
    onnx = bytearray((other / "backbone.onnx").read_bytes())
    onnx += b"\0"
    (other / "backbone.onnx").write_bytes(bytes(onnx))
    (other / "manifest.json").write_text(manifest.replace(fp, hashlib.sha256(bytes(onnx)).hexdigest()))
    with pytest.raises(EdgefsError, match="belongs to bundle"):
        open_clf(other, store)


def test_removing_single_shots_keeps_the_sample_digest_and_head_in_step(bundle: Path, glyph_data: Path,
                                                                        tmp_path: Path) -> None:
    """Single-shot removal (the web app's Classes page) rebuilds the head in the same commit and
    leaves the store's running sample digest equal to a full scan, so the next open reads the
    saved head rather than rebuilding it."""
    dirs = class_dirs(glyph_data, 2)
    with open_clf(bundle, tmp_path / "s.db") as clf:
        for i, d in enumerate(dirs):
            clf.enroll(f"c{i}", read_images([d])[0])
        assert clf.store is not None
        rows = clf.store.sample_rows("c0")
        assert len(rows) >= 2
        assert clf.remove_shots("c0", [rows[0].id]) == 1
        assert clf.head.shots("c0") == len(rows) - 1
        with pytest.raises(EdgefsError, match="not shots of"):
            clf.remove_shots("c1", [rows[1].id])
        assert clf.store.scan_sample_set() == clf.store.sample_set()
        assert clf.store.integrity_check() == "ok"
        sums = clf.head.state()[0]["sums"].copy()
    logs: list[str] = []
    with Classifier.open(bundle, tmp_path / "s.db", options=EngineOptions(backend="onnxruntime", threads=1),
                         log=logs.append) as clf:
        assert clf.head.shots("c0") == len(rows) - 1
        assert np.allclose(clf.head.state()[0]["sums"], sums)
        assert not any("rebuilding" in line for line in logs), logs
