"""A store written by the schema-1 edgefs (tests/golden/store_v1.db, made by tests/golden/make_store_v1.py
with the code of commit a056e19) opens with this edgefs: migrated to per-class head rows and a running
sample digest, its saved head and threshold carried over without a rebuild, and the next commit saves
the head per class."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np

from edgefs.heads import HeadSpec, build_head, calibrate_threshold
from edgefs.runtime.bundle import Bundle, Manifest
from edgefs.service.classifier import Classifier
from edgefs.store import ClassStore, schema

GOLDEN = Path(__file__).parent / "golden" / "store_v1.db"
DIM = 16
NAMES = ["mug", "cup", "bowl", "dish"]


def bundle(folder: Path) -> Bundle:
    manifest = Manifest(backbone={"name": "golden"}, input={"height": 32, "width": 32, "channels": 3,
                        "dtype": "uint8", "layout": "NHWC", "color_order": "RGB"}, output={"dim": DIM},
                        head={"type": "imprint", "params": {}}, fingerprint="9e" * 32)
    return Bundle(folder, manifest, HeadSpec("imprint"))


def copy_golden(tmp_path: Path) -> Path:
    db = tmp_path / "classes.db"
    shutil.copy(GOLDEN, db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    return db


def test_a_schema_1_store_migrates_and_keeps_its_head(tmp_path: Path) -> None:
    db = copy_golden(tmp_path)
    b = bundle(tmp_path)
    with ClassStore.open(db, b, create=False) as store:
        assert store._conn.execute("PRAGMA user_version").fetchone()[0] == schema.latest_version()
        assert store.names() == NAMES and store.integrity_check() == "ok"
        assert store.sample_set() == store.scan_sample_set() and store.sample_set().count == 14
        saved = store.load_head_state()
        assert saved.current and not saved.per_class and saved.params["classes"] == NAMES
        x, labels, _ = store.all_embeddings()
    logs: list[str] = []
    with Classifier(b, None, ClassStore.open(db, b, create=False), log=logs.append) as clf:
        assert not logs, logs  # loaded as saved: no rebuild
        assert clf.classes == NAMES
        rebuilt = build_head(HeadSpec("imprint"), DIM)
        rebuilt.add_classes({n: x[labels == i] for i, n in enumerate(NAMES)})
        np.testing.assert_allclose(clf.head.prototypes, rebuilt.prototypes, atol=1e-6)
        assert abs(clf.threshold - calibrate_threshold(x, labels)) < 1e-6  # the saved threshold
        assert abs(clf.threshold - 0.783047080039978) < 1e-7
        rng = np.random.default_rng(5)
        emb = (rng.normal(size=DIM) + 0.5 * rng.normal(size=(3, DIM))).astype(np.float32)
        images = (rng.integers(0, 4, size=(3, 4, 4, 3)) * 60).astype(np.uint8).repeat(8, 1).repeat(8, 2)
        clf.enroll_embedded("jug", images, emb)
        x2 = np.concatenate([x, emb])
        y2 = np.concatenate([labels, np.full(3, 4)])
        assert abs(clf.threshold - calibrate_threshold(x2, y2)) < 1e-5
    with ClassStore.open(db, b, create=False) as store:
        saved = store.load_head_state()
        assert saved.current and saved.per_class and saved.params["classes"] == [*NAMES, "jug"]
        assert store._conn.execute("SELECT COUNT(*) FROM head_rows").fetchone()[0] == 5
        assert store.integrity_check() == "ok"


def test_a_schema_1_store_whose_head_lagged_its_samples_is_rebuilt(tmp_path: Path) -> None:
    db = copy_golden(tmp_path)
    with sqlite3.connect(db) as conn:  # the state a lost update left in a version-1 store
        conn.execute("UPDATE meta SET value = '13:' || substr(value, 4) WHERE key = 'head_samples'")
    b = bundle(tmp_path)
    with ClassStore.open(db, b, create=False) as store:
        assert not store.load_head_state().current
    logs: list[str] = []
    with Classifier(b, None, ClassStore.open(db, b, create=False), log=logs.append) as clf:
        assert clf.classes == NAMES
    assert any("rebuilding it from the stored samples" in line for line in logs), logs
    with ClassStore.open(db, b, create=False) as store:
        saved = store.load_head_state()
        assert saved.current and saved.per_class
