"""Concurrent writers on one class store: real `edgefs enroll --append` processes at once lose no update.

Each round starts WRITERS processes together, each appending its own distinct
images to the same class. Afterwards the saved head state must be current and
equal to a head rebuilt from the stored samples (same shots per class, same
arrays), and every shot that any process reported as added must be in the store.
A saved head that lags the samples is also detected at open and rebuilt.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgefs.heads import build_head, calibrate_threshold
from edgefs.heads.calibration import DEFAULT_CAPACITY, STATE_ARRAYS
from edgefs.heads.openset import loo_scores
from edgefs.runtime.bundle import read_bundle
from edgefs.service.classifier import Classifier
from edgefs.service.options import EngineOptions
from edgefs.store import ClassStore

WRITERS = int(os.environ.get("EDGEFS_CONCURRENCY_WRITERS", "2"))
#: Classes enrolled before the writers start (synthetic shots, one bulk commit); CI runs with none.
PREFILL = int(os.environ.get("EDGEFS_CONCURRENCY_CLASSES", "0"))
ROUNDS = int(os.environ.get("EDGEFS_CONCURRENCY_ROUNDS", "3"))
SHOTS_PER_WRITE = 2


@pytest.fixture()
def bundle(conv4_bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / "model.edgefs"
    shutil.copytree(conv4_bundle, out)
    return out


def distinct_images(glyph_data: Path, n: int) -> list[Path]:
    """``n`` images, one per glyph class first (so the near-duplicate gate keeps them)."""
    by_class = [sorted(d.glob("*.png")) for d in sorted((glyph_data / "test").glob("*/*")) if d.is_dir()]
    by_class += [sorted(d.glob("*.png")) for d in sorted((glyph_data / "val").glob("*/*")) if d.is_dir()]
    out = [p for depth in range(6) for files in by_class if len(files) > depth for p in files[depth:depth + 1]]
    assert len(out) >= n, f"{len(out)} images, need {n}"
    return out[:n]


def enroll_cmd(bundle: Path, store: Path, images: list[Path], append: bool) -> list[str]:
    return [sys.executable, "-m", "edgefs", "enroll", str(bundle), "--store", str(store), "--label", "shared",
            "--images", *map(str, images), "--backend", "onnxruntime", "--threads", "1",
            "--max-similarity", "1", *(["--append"] if append else [])]


def rebuilt_state(bundle: Path, store: ClassStore) -> tuple[dict[str, np.ndarray], list[str], dict[str, int]]:
    b = read_bundle(bundle)
    head = build_head(b.head, b.manifest.embedding_dim)
    x, labels, names = store.all_embeddings()
    head.add_classes({n: x[labels == i] for i, n in enumerate(names)})
    return head.state()[0], head.classes, {n: head.shots(n) for n in names}


@pytest.mark.parametrize("repeat", range(int(os.environ.get("EDGEFS_CONCURRENCY_REPEAT", "1"))))
def test_concurrent_appends_keep_the_head_equal_to_the_samples(bundle: Path, glyph_data: Path, tmp_path: Path,
                                                              repeat: int) -> None:
    store_path = tmp_path / "classes.db"
    images = distinct_images(glyph_data, SHOTS_PER_WRITE * (1 + WRITERS * ROUNDS))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    filled = [f"p{i:05d}" for i in range(PREFILL)]
    if PREFILL:
        b = read_bundle(bundle)
        rng = np.random.default_rng(0)
        with Classifier(b, None, ClassStore.open(store_path, b), log=lambda _: None) as clf:
            for start in range(0, PREFILL, 500):
                clf.add_embedded_classes({n: (rng.normal(size=(3, b.manifest.embedding_dim)).astype(np.float32), None)
                                          for n in filled[start:start + 500]})
    first = subprocess.run(enroll_cmd(bundle, store_path, images[:SHOTS_PER_WRITE], False),
                           capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    added = [int(m) for m in re.findall(r"(\d+) shots added", first.stdout)]
    rebuilt_logged = 0
    for r in range(ROUNDS):
        procs = []
        for w in range(WRITERS):
            start = SHOTS_PER_WRITE * (1 + r * WRITERS + w)
            cmd = enroll_cmd(bundle, store_path, images[start:start + SHOTS_PER_WRITE], True)
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            added += [int(m) for m in re.findall(r"(\d+) shots added", out)]
            rebuilt_logged += "another process wrote to it" in out
    with ClassStore.open(store_path, read_bundle(bundle), create=False) as store:
        assert store.integrity_check() == "ok"
        saved = store.load_head_state()
        arrays, classes, shots = rebuilt_state(bundle, store)
        assert [c.shots for c in store.classes()][PREFILL:] == [sum(added)] == [shots["shared"]]
        assert saved.params["classes"] == classes == [*filled, "shared"]
        # The saved head holds the head's arrays plus the calibration sample's state.
        assert set(saved.arrays) - set(STATE_ARRAYS) == set(arrays)
        for k, a in arrays.items():
            np.testing.assert_allclose(saved.arrays[k], a, rtol=1e-5, atol=1e-5, err_msg=k)
        # The threshold kept up to date through every writer's commit equals a full recomputation.
        x, labels, _ = store.all_embeddings()
        normalize = build_head(read_bundle(bundle).head, x.shape[1]).normalize_shots
        threshold = saved.params["hyperparams"]["threshold"]
        if len(x) <= DEFAULT_CAPACITY:
            assert abs(threshold - calibrate_threshold(x, labels, normalize=normalize)) < 1e-5
        else:  # a uniform sample of the shots: within 3 standard errors of the quantile's rank
            known, _ = loo_scores(x, labels, normalize)
            sigma = np.sqrt(0.05 * 0.95 / DEFAULT_CAPACITY)
            low, high = np.quantile(known, [max(0.05 - 3 * sigma, 0), 0.05 + 3 * sigma])
            assert low <= threshold <= high, (low, threshold, high)
        assert saved.current, saved.staleness()
        assert saved.samples == saved.stored == sum(added) + 3 * PREFILL
    # The live head of a new reader agrees as well.
    with Classifier.open(bundle, store_path, options=EngineOptions(backend="onnxruntime", threads=1),
                         log=lambda _: None) as clf:
        assert clf.head.shots("shared") == sum(added)
    print(f"{PREFILL} classes before; {ROUNDS} rounds x {WRITERS} writers: {sum(added)} shots stored and in the head; "
          f"{rebuilt_logged} commits found another writer's samples and rebuilt first")


def test_a_stale_saved_head_is_detected_rebuilt_and_saved(bundle: Path, glyph_data: Path, tmp_path: Path) -> None:
    """A head saved without another writer's samples (as an older edgefs could leave it) heals at open."""
    store_path = tmp_path / "classes.db"
    images = distinct_images(glyph_data, 6)
    logs: list[str] = []
    with Classifier.open(bundle, store_path, options=EngineOptions(backend="onnxruntime", threads=1),
                         log=logs.append) as clf:
        from edgefs.imagefile import read_images

        frames, names, _ = read_images(images[:3])
        assert clf.enroll("a", frames, names=names).added == 3
    with ClassStore.open(store_path, read_bundle(bundle), create=False) as store:
        more = np.stack([store.embeddings("a")[0] * 0.5 + 0.1] * 2).astype(np.float32)
        store.append("a", more)
    # The state a lost update left: samples appended, the older head still marked current.
    with sqlite3.connect(store_path) as conn:
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'head_current'")
    with ClassStore.open(store_path, read_bundle(bundle), create=False) as store:
        saved = store.load_head_state()
        assert not saved.current
        assert saved.staleness() == "it was derived from 3 samples but the store holds 5"
        assert "out of date: it was derived from 3 samples but the store holds 5" in store.describe()
    logs.clear()
    with Classifier.open(bundle, store_path, options=EngineOptions(backend="onnxruntime", threads=1),
                         log=logs.append) as clf:
        assert clf.head.shots("a") == 5
    text = "\n".join(logs)
    assert "the saved head state is out of date" in text and "saved the rebuilt head state (5 samples)" in text
    with ClassStore.open(store_path, read_bundle(bundle), create=False) as store:
        assert store.load_head_state().current
