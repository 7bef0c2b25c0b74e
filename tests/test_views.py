"""Shot views (edgefs.service.views): a shot enrolled as the mean embedding of its views, the head built from
the means, the unknown threshold calibrated on single views, kept through reopening, packs, re-embedding,
schema migration and live enrollment in the camera loop."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgefs.camera.loop import VIEWS_PER_CALL, Pipeline, RunConfig
from edgefs.cli import main
from edgefs.errors import EdgefsError
from edgefs.heads.openset import calibrate_threshold, threshold_from_scores
from edgefs.heads.reference import l2_normalize
from edgefs.imagefile import read_images
from edgefs.runtime.bundle import read_bundle
from edgefs.service.classifier import Classifier
from edgefs.service.options import EngineOptions
from edgefs.service.quality import QualityConfig, sharpness
from edgefs.service.reembed import reembed_store
from edgefs.service.views import VIEW_CHOICES, check_views, shot_views, view_means
from edgefs.store import ClassStore


def quiet(_: str) -> None:
    pass


def open_clf(bundle: Path, store: Path, **kw: object) -> Classifier:
    """The test glyphs of an untrained bundle embed close together: the near-duplicate gate is off."""
    return Classifier.open(bundle, store, options=EngineOptions(backend="onnxruntime", threads=1, **kw), log=quiet,
                           quality=QualityConfig(max_similarity=1.0))


def class_images(glyph_data: Path, n: int, shots: int = 4) -> dict[str, list[np.ndarray]]:
    dirs = sorted(p for p in (glyph_data / "test").glob("*/*") if p.is_dir() and len(list(p.glob("*.png"))) >= shots)
    assert len(dirs) >= n
    return {f"c{i}": read_images([d])[0][:shots] for i, d in enumerate(dirs[:n])}


def single_view_threshold(singles: np.ndarray, means: np.ndarray, labels: np.ndarray, target: float = 0.95) -> float:
    """The leave-one-out threshold computed from scratch: each shot's single view scored against every class's
    prototype of view means, its own class's prototype rebuilt without it (cosine heads sum unit rows)."""
    q, rows = l2_normalize(singles), l2_normalize(means)
    classes = np.unique(labels)
    known, negative = [], []
    for i in range(len(q)):
        protos = []
        for c in classes:
            mine = (labels == c) & (np.arange(len(q)) != i)
            protos.append(l2_normalize(rows[mine].mean(axis=0, keepdims=True))[0])
        sims = np.array(protos) @ q[i]
        own = labels[i]
        negative.append(np.delete(sims, own).max())
        known.append(sims.max())
    return threshold_from_scores(np.array(known, np.float32), np.array(negative, np.float32), len(classes), "loo",
                                 target)


def test_shot_views_are_the_shot_its_corner_crops_and_blurred_copies() -> None:
    rng = np.random.default_rng(0)
    image = cv2.resize(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8), (100, 80), interpolation=cv2.INTER_NEAREST)
    for n in VIEW_CHOICES:
        views = shot_views(image, n)
        assert len(views) == n and all(v.shape == image.shape and v.dtype == np.uint8 for v in views)
        assert views[0] is image
    views = shot_views(image, 7)
    top_left = cv2.resize(image[:64, :80], (100, 80), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(views[1], top_left)
    assert len({v.tobytes() for v in views[1:5]}) == 4  # four different corners
    assert sharpness(views[6]) < sharpness(views[5]) < sharpness(image)  # sigma 3 blurs more than 1.5
    for bad in (0, 3, 9, True, "7", 5.0):
        with pytest.raises(EdgefsError, match="shot views must be one of 1, 5, 7"):
            check_views(bad)  # type: ignore[arg-type]
    with pytest.raises(EdgefsError, match=r"\(H, W, 3\) image"):
        shot_views(np.zeros((1, 5, 3), np.uint8), 5)


def test_view_means_average_every_view_embedded(conv4_bundle: Path, glyph_data: Path, tmp_path: Path) -> None:
    images = class_images(glyph_data, 1, 3)["c0"]
    with open_clf(conv4_bundle, tmp_path / "s.db") as clf:
        batch = clf.prepare(images)
        singles = clf.embed(batch)
        means = view_means(batch, singles, 7, clf.embed, chunk=5)  # chunks that split a shot's views
        for k, image in enumerate(batch):
            expected = clf.embed(np.stack(shot_views(image, 7))).mean(axis=0)
            np.testing.assert_allclose(means[k], expected, rtol=1e-4, atol=1e-5)
        assert view_means(batch, singles, 1, clf.embed) is singles


def test_a_store_with_shot_views_sums_means_and_calibrates_on_single_views(conv4_bundle: Path, glyph_data: Path,
                                                                            tmp_path: Path) -> None:
    store = tmp_path / "s.db"
    classes = class_images(glyph_data, 3)
    with open_clf(conv4_bundle, store, shot_views=7) as clf:
        expected_means, expected_singles = {}, {}
        for name, images in classes.items():
            batch = clf.prepare(images)
            expected_singles[name] = clf.embed(batch)
            expected_means[name] = np.stack([clf.embed(np.stack(shot_views(b, 7))).mean(axis=0) for b in batch])
            result = clf.enroll(name, images)
            assert result.added == len(images) and result.timings_ms["views"] > 0
        threshold = clf.threshold
        prototypes = clf.head.prototypes.copy()
    x, labels, names, singles = ClassStore.open(store, read_bundle(conv4_bundle)).all_embeddings(with_singles=True)
    assert names == list(classes)
    np.testing.assert_allclose(x, np.concatenate([expected_means[n] for n in names]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(singles, np.concatenate([expected_singles[n] for n in names]), rtol=1e-5, atol=1e-6)
    reference = single_view_threshold(singles, x, labels)
    assert threshold == pytest.approx(reference, abs=1e-5)
    # Calibrating on the means themselves gives another threshold: the single views are what was scored.
    assert abs(calibrate_threshold(x, labels) - reference) > 1e-3
    with open_clf(conv4_bundle, store) as clf:  # the saved head and calibration state, the saved setting
        assert clf.shot_views == 7 and clf.threshold == pytest.approx(threshold, abs=1e-6)
        np.testing.assert_allclose(clf.head.prototypes, prototypes, atol=1e-6)
        clf.remove("c2")
        clf.enroll("c2", classes["c2"])  # views again, from the store's setting
        assert clf.threshold == pytest.approx(threshold, abs=1e-5)
    with sqlite3.connect(store) as conn:  # no saved head: rebuilt from the samples, single views included
        conn.execute("DELETE FROM head_rows")
        conn.execute("DELETE FROM head_state")
        conn.execute("UPDATE meta SET value = 'stale:x' WHERE key = 'head_samples'")
    with open_clf(conv4_bundle, store) as clf:
        assert clf.threshold == pytest.approx(threshold, abs=1e-5)


def test_enroll_cli_saves_the_shot_views_choice(conv4_bundle: Path, glyph_data: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s.db"
    dirs = sorted(p for p in (glyph_data / "test").glob("*/*") if p.is_dir())[:2]
    assert main(["enroll", str(conv4_bundle), "--store", str(store), "--label", "a", "--images", str(dirs[0]),
                 "--shot-views", "5", "--backend", "onnxruntime"]) == 0
    assert main(["enroll", str(conv4_bundle), "--store", str(store), "--label", "b", "--images", str(dirs[1]),
                 "--backend", "onnxruntime"]) == 0
    with ClassStore.open(store, read_bundle(conv4_bundle), create=False) as s:
        assert s.settings()["shot_views"] == 5
        assert s.singles("a") is not None and s.singles("b") is not None  # b enrolled by the saved choice
        assert not np.allclose(s.singles("a"), s.embeddings("a"))
    capsys.readouterr()
    assert main(["classes", "list", "--store", str(store), "--bundle", str(conv4_bundle)]) == 0
    assert "settings: shot_views 5" in capsys.readouterr().out


def test_packs_and_reembedding_keep_single_views(conv4_bundle: Path, glyph_data: Path, tmp_path: Path) -> None:
    classes = class_images(glyph_data, 3)
    source, target = tmp_path / "a.db", tmp_path / "b.db"
    with open_clf(conv4_bundle, source, shot_views=5) as clf:
        for name, images in classes.items():
            clf.enroll(name, images)
        threshold = clf.threshold
        pack = clf.store.export_pack(tmp_path / "views.edgefs-pack")  # type: ignore[union-attr]
    with open_clf(conv4_bundle, target) as clf:
        clf.import_pack(pack)
        assert clf.threshold == pytest.approx(threshold, abs=1e-5)
    bundle = read_bundle(conv4_bundle)
    with ClassStore.open(source, bundle) as a, ClassStore.open(target, bundle) as b:
        for name in classes:
            np.testing.assert_array_equal(a.singles(name), b.singles(name))
    plain = tmp_path / "plain.db"
    with open_clf(conv4_bundle, plain) as clf:
        clf.enroll("x", classes["c0"])
        clf.store.export_pack(tmp_path / "plain.edgefs-pack")  # type: ignore[union-attr]
        assert clf.store.singles("x") is None  # type: ignore[union-attr]
    import json
    import zipfile
    with zipfile.ZipFile(tmp_path / "plain.edgefs-pack") as z1, zipfile.ZipFile(pack) as z2:
        assert json.loads(z1.read("pack.json"))["pack_version"] == 1  # readable by an edgefs without shot views
        assert json.loads(z2.read("pack.json"))["pack_version"] == 2
    out = tmp_path / "re.db"
    reembed_store(source, conv4_bundle, conv4_bundle, out, mode="thumbnails", log=quiet)
    with ClassStore.open(out, bundle, create=False) as s:
        assert s.settings()["shot_views"] == 5
        assert all(s.singles(name) is not None for name in classes)


def test_a_schema_1_store_gains_an_empty_single_view_column(tmp_path: Path) -> None:
    from tests.test_store_migration import GOLDEN, bundle

    db = tmp_path / "classes.db"
    shutil.copy(GOLDEN, db)
    with ClassStore.open(db, bundle(tmp_path)) as store:
        x, _, _, singles = store.all_embeddings(with_singles=True)
        assert len(x) and np.array_equal(x, singles)
        assert all(store.singles(n) is None for n in store.names())
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM samples WHERE single IS NOT NULL").fetchone()[0] == 0


def test_live_enrollment_embeds_the_views_on_the_loop_thread(trained_bundle: Path, glyph_data: Path,
                                                             tmp_path: Path) -> None:
    from tests.test_run import classes_of, enroll_from_camera, synthetic

    names = classes_of(glyph_data, 2)
    store = tmp_path / "s.db"
    with open_clf(trained_bundle, store, shot_views=5) as clf:
        enroll_from_camera(clf, glyph_data, names[:1])
        threads: list[tuple[str, int]] = []
        embed = clf.embed

        def recording(batch: np.ndarray) -> np.ndarray:  # the real engine, with the caller's thread noted
            threads.append((threading.current_thread().name, len(batch)))
            return embed(batch)

        clf.embed = recording  # type: ignore[method-assign]
        cfg = RunConfig(sources=[synthetic(glyph_data, frames=60, hold=60)], enroll=names[1], shots=3,
                        enroll_interval_s=0.0, source_options={"classes": [names[1]]})
        pipeline = Pipeline(clf, cfg, log=quiet)
        loop_thread = threading.current_thread().name
        events = list(pipeline.events())
        if pipeline._enroll_thread is not None:
            pipeline._enroll_thread.join()
        assert clf.classes == names
    # The 3 shots' 4 other views, embedded by the loop's thread between batches (frames classified between).
    # One camera: the loop embeds one frame per batch, so every image beyond the frames is a view.
    assert sum(n for _, n in threads) == len(events) + 3 * 4 and max(n for _, n in threads) <= VIEWS_PER_CALL
    assert {t for t, _ in threads} == {loop_thread}
    assert events[-1]["label"] == names[1]
    with ClassStore.open(store, read_bundle(trained_bundle), create=False) as s:
        assert s.singles(names[1]) is not None and s.embeddings(names[1]).shape == (3, s.dim)


def test_views_of_a_live_enrollment_are_embedded_on_the_workers_thread_once_the_loop_ended(
        trained_bundle: Path, glyph_data: Path, tmp_path: Path) -> None:
    from tests.test_run import synthetic

    with open_clf(trained_bundle, tmp_path / "s.db", shot_views=5) as clf:
        pipeline = Pipeline(clf, RunConfig(sources=[synthetic(glyph_data, frames=5)]), log=quiet)
        batch = clf.prepare(class_images(glyph_data, 1, 3)["c0"])
        pipeline._loop_ended.set()  # nothing runs submitted calls any more: the worker embeds itself
        got: list[np.ndarray] = []
        worker = threading.Thread(target=lambda: got.append(pipeline._embed_on_loop(np.concatenate([batch] * 3))))
        worker.start()
        worker.join(timeout=10)
        assert not worker.is_alive()
        np.testing.assert_allclose(got[0], clf.embed(np.concatenate([batch] * 3)), rtol=1e-5, atol=1e-6)


def test_a_store_without_shot_views_keeps_one_set_of_calibration_rows(conv4_bundle: Path, glyph_data: Path,
                                                                     tmp_path: Path) -> None:
    store = tmp_path / "s.db"
    with open_clf(conv4_bundle, store, head_type="imprint") as clf:  # a head that sums unit shots
        assert clf.head.normalize_shots
        for name, images in class_images(glyph_data, 3).items():
            clf.enroll(name, images)
        threshold = clf.threshold
    with sqlite3.connect(store) as conn:  # rebuilt at the next open, from samples with no single views
        conn.execute("DELETE FROM head_rows")
        conn.execute("DELETE FROM head_state")
        conn.execute("UPDATE meta SET value = 'stale:x' WHERE key = 'head_samples'")
    with open_clf(conv4_bundle, store, head_type="imprint") as clf:
        assert clf.threshold == pytest.approx(threshold, abs=1e-6)
        assert clf._calib is not None and clf._calib._s is None  # queries and summed rows are the same


def test_an_unusable_saved_shot_views_setting_is_named_and_can_be_replaced(conv4_bundle: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.db"
    with open_clf(conv4_bundle, store) as clf:
        clf.save_settings(shot_views=4, smooth=3)  # as a hand-edited or damaged store might hold
    with pytest.raises(EdgefsError, match=r"saved setting is unusable: shot views must be one of 1, 5, 7.*"
                                          r"pass --shot-views"):
        open_clf(conv4_bundle, store)
    with open_clf(conv4_bundle, store, shot_views=5) as clf:
        assert clf.shot_views == 5
        assert clf.settings() == {"shot_views": 5, "smooth": 3}  # replaced; the other settings kept


def test_changing_shot_views_names_the_classes_that_keep_theirs(conv4_bundle: Path, glyph_data: Path,
                                                                 tmp_path: Path) -> None:
    store, said = tmp_path / "s.db", []
    classes = class_images(glyph_data, 2)
    with Classifier.open(conv4_bundle, store, options=EngineOptions(backend="onnxruntime", threads=1, shot_views=7),
                         log=said.append, quality=QualityConfig(max_similarity=1.0)) as clf:
        said.clear()
        assert clf.set_shot_views(5) == 5 and not said  # nothing enrolled: nothing to say
        for name, images in classes.items():
            clf.enroll(name, images)
        before = clf.store.embeddings("c0").copy()  # type: ignore[union-attr]
        said.clear()
        clf.set_shot_views(1)
        assert clf.store.settings()["shot_views"] == 1  # type: ignore[union-attr]
        np.testing.assert_array_equal(clf.store.embeddings("c0"), before)  # type: ignore[union-attr]
        clf.set_shot_views(1)  # no change, no message
    assert len(said) == 1 and "shot views 5 -> 1" in said[0] and "'c0', 'c1'" in said[0]
    assert "enroll them again" in said[0]
    said.clear()
    with Classifier.open(conv4_bundle, store, options=EngineOptions(backend="onnxruntime", threads=1, shot_views=7),
                         log=said.append):
        pass
    assert any("shot views 1 -> 7" in s and "the 2 already enrolled" in s for s in said)
