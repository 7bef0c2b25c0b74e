"""The align head through the class store: enrolled with `edgefs enroll --head align`, saved, reopened, removed."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgefs.cli import main
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


def test_align_head_is_saved_with_the_samples_and_reopens_to_the_same_scores(bundle: Path, glyph_data: Path,
                                                                             tmp_path: Path) -> None:
    store = tmp_path / "classes.db"
    dirs = sorted(p for p in (glyph_data / "test").glob("*/*") if p.is_dir() and len(list(p.glob("*.png"))) >= 4)[:4]
    for i, d in enumerate(dirs):
        rc = main(["enroll", str(bundle), "--store", str(store), "--label", f"c{i}", "--images", str(d),
                   "--backend", "onnxruntime", "--threads", "1", "--head", "align"])
        assert rc == 0
    with ClassStore.open(store, read_bundle(bundle), create=False) as s:
        saved = s.load_head_state()
        assert saved.current and saved.params["head_type"] == "align"
        assert s.integrity_check() == "ok"
    images, _, _ = read_images([dirs[0]])
    options = EngineOptions(backend="onnxruntime", threads=1, head_type="align")
    with Classifier.open(bundle, store, options=options, log=lambda _: None) as clf:
        assert clf.head.alignment is not None  # four classes: a fitted map, not the identity
        threshold = clf.threshold
        assert threshold is not None and -1.0 < threshold < 1.0
        # Each class's own shots are that class, and the calibrated threshold accepts most of them.
        result = clf.classify_frames(images, k=1)
        assert np.mean(result.top_idx[:, 0] == 0) >= 0.5
        clf.remove("c3")
        assert clf.head.alignment is not None
        after_remove = clf.classify_frames(images, k=3)
    with Classifier.open(bundle, store, options=options, log=lambda _: None) as clf:
        assert clf.classes == ["c0", "c1", "c2"]
        again = clf.classify_frames(images, k=3)
        np.testing.assert_array_equal(again.top_idx, after_remove.top_idx)
        np.testing.assert_allclose(again.top_prob, after_remove.top_prob, atol=1e-5)
        np.testing.assert_allclose(again.best_sim, after_remove.best_sim, atol=1e-5)
