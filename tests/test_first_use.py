"""What a new user of the device meets first, below the browser: the synthetic camera playing the user
who holds an object up, the held-out floor that keeps a fresh class from being silenced by its own
too-alike shots, and the lines ``serve`` and ``run`` print."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgefs.camera.loop import TOO_ALIKE, Pipeline, RunConfig, too_alike
from edgefs.camera.sources import open_source
from edgefs.service.classifier import FLOORS_SETTING, Classifier
from edgefs.service.options import EngineOptions
from tests.serve_support import class_names, enroll_from_camera, synthetic


def open_clf(bundle: Path, store: Path, **kw: object) -> Classifier:
    return Classifier.open(bundle, store, options=EngineOptions(backend="onnxruntime", threads=1, **kw),
                           log=lambda _: None)


# ---- the synthetic camera ------------------------------------------------------------------------
def test_the_synthetic_camera_holds_up_the_class_being_enrolled_then_goes_back(glyph_data: Path) -> None:
    names = class_names(glyph_data, 4)
    src = open_source(synthetic(glyph_data, hold=5, frames=200, classes=",".join(names)))
    with src:
        first = [src.read().label for _ in range(10)]
        assert src.scene()["showing"] == first[-1] and src.scene()["held"] is None
        assert src.present(names[2]) and not src.present("no-such-class")
        held = [src.read().label for _ in range(40)]
        # From the next presentation on: only the held class, its images in turn (not the same card).
        assert set(held[5:]) == {names[2]} and src.scene()["held"] == names[2]
        src.present(None)
        after = [src.read().label for _ in range(60)]
    assert len(set(after[5:])) > 1  # the shuffled rounds again
    assert len(set(first)) > 1 or first[0] != names[2]
    scene = src.scene()
    assert scene["hold_s"] == pytest.approx(5 / 30, abs=0.01) and 0 < scene["next_in_s"] <= scene["hold_s"]


def test_a_real_camera_cannot_be_told_what_to_show(tmp_path: Path) -> None:
    import cv2

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((8, 8, 3), 40 * i, np.uint8))
    src = open_source(str(tmp_path))
    assert src.present("anything") is False and src.scene() is None


# ---- shots that vary, and the floor ---------------------------------------------------------------
def test_too_alike_counts_shots_nearly_the_same_view_as_an_earlier_one() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 64)).astype(np.float32)
    assert too_alike(base) == 0  # independent directions
    near = base[0] + 0.05 * rng.normal(size=64).astype(np.float32)
    assert np.dot(near, base[0]) / np.linalg.norm(near) / np.linalg.norm(base[0]) > TOO_ALIKE
    assert too_alike(np.stack([base[0], base[1], near, near])) == 2


def test_a_held_out_floor_lowers_the_automatic_threshold_and_follows_the_class(trained_bundle: Path,
                                                                                glyph_data: Path,
                                                                                tmp_path: Path) -> None:
    store = tmp_path / "s.db"
    names = class_names(glyph_data, 3)
    with open_clf(trained_bundle, store) as clf:
        enroll_from_camera(clf, glyph_data, names)
        calibrated = clf.threshold
        assert calibrated is not None
        assert clf.set_floor(names[0], min(1.0, calibrated + 0.01)) is False  # above: nothing changes
        assert clf.threshold == pytest.approx(calibrated)
        assert clf.set_floor(names[1], calibrated - 0.1) is True
        assert clf.threshold == pytest.approx(calibrated - 0.1, abs=1e-6)
        assert names[1] in clf.threshold_note and "lowered from" in clf.threshold_note
    with open_clf(trained_bundle, store) as clf:  # saved with the store
        assert clf.threshold == pytest.approx(calibrated - 0.1, abs=1e-6)
        clf.rename(names[1], "renamed")
        assert clf.threshold == pytest.approx(calibrated - 0.1, abs=1e-6)
        assert set(clf.settings()[FLOORS_SETTING]) == {names[0], "renamed"}
        clf.remove("renamed")
        assert "renamed" not in clf.settings()[FLOORS_SETTING]
        assert clf.threshold is not None and clf.threshold > calibrated - 0.1 + 1e-6
    with open_clf(trained_bundle, store, threshold=0.9) as clf:  # a threshold the user set is theirs
        assert clf.threshold == pytest.approx(0.9)


def test_live_enrollment_keeps_held_out_frames_and_scores_them(trained_bundle: Path, glyph_data: Path,
                                                               tmp_path: Path) -> None:
    """A live enrollment keeps one frame half-way between shots (never enrolled), counts shots that are too
    alike, and after the commit keeps the threshold at or below the held-out frames' lowest cosine."""
    names = class_names(glyph_data, 3)
    store = tmp_path / "s.db"
    with open_clf(trained_bundle, store) as clf:
        enroll_from_camera(clf, glyph_data, names[:2])
        config = RunConfig(sources=[synthetic(glyph_data, fps=20, live=1, hold=8, classes=",".join(names))],
                           duration_s=30, enroll=names[2], shots=4, enroll_delay_s=0.2, enroll_interval_s=0.4)
        pipeline = Pipeline(clf, config, log=lambda _: None)
        events = pipeline.events()
        for _ in events:
            last = pipeline.last_enrollment
            if last is not None and last.phase in ("done", "failed"):
                break
        events.close()  # stops the capture threads
        e = pipeline.last_enrollment
        assert e is not None and e.phase == "done", e.message if e else None
        assert len(e.checks) == 3  # one between each two of the 4 shots
        assert 0 <= e.too_alike <= 3
        own = clf.head.classify(np.stack(e.checks), 1)
        hits = [s for i, s in zip(own.top_idx[:, 0], own.best_sim, strict=True) if clf.head.classes[i] == names[2]]
        if hits:
            assert clf.threshold is not None and clf.threshold <= min(hits) + 1e-6
        assert "unknown threshold" in e.message


# ---- what run and serve print and write -----------------------------------------------------------
def test_events_carry_the_source_index_and_the_summary_keeps_same_uri_sources_apart(trained_bundle: Path,
                                                                                    glyph_data: Path,
                                                                                    tmp_path: Path) -> None:
    uri = synthetic(glyph_data, frames=12, n_classes=2)
    jsonl = tmp_path / "e.jsonl"
    with open_clf(trained_bundle, tmp_path / "s.db") as clf:
        enroll_from_camera(clf, glyph_data, class_names(glyph_data, 2))
        summary = Pipeline(clf, RunConfig(sources=[uri, uri], jsonl=str(jsonl)), log=lambda _: None).run()
    events = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert sorted({e["source_index"] for e in events}) == [0, 1]
    assert len(summary.per_source) == 2 and sum(s["frames"] for s in summary.per_source.values()) == 24
    assert [s["index"] for s in summary.per_source.values()] == [0, 1]


def test_serve_on_every_address_prints_addresses_other_machines_can_open(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("starlette")
    from edgefs.serve import server

    for address in server.machine_addresses(ipv6=True):  # this machine's own, whatever they are
        assert address not in ("127.0.0.1", "0.0.0.0", "::1", "::")
    monkeypatch.setattr(server, "machine_addresses", lambda ipv6=False: ["192.168.1.20", "10.0.0.5"])
    web = object.__new__(server.WebServer)
    web.host = "0.0.0.0"
    monkeypatch.setattr(server.WebServer, "port", property(lambda self: 8080))
    assert web.url == "http://127.0.0.1:8080"
    assert web.urls() == ["http://192.168.1.20:8080", "http://10.0.0.5:8080"]
    web.host = "192.168.1.20"
    assert web.urls() == ["http://192.168.1.20:8080"]


def test_without_a_gpu_the_engine_line_says_so(conv4_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgefs.runtime import select
    from edgefs.runtime.bundle import read_bundle

    monkeypatch.setattr(select, "nvidia_gpu_present", lambda: False)
    monkeypatch.setattr(select.trt_flavour, "installed_flavours", lambda: ["tensorrt_rtx"])
    _, _, reason = select.choose_backend(read_bundle(conv4_bundle))
    assert "no NVIDIA GPU on this machine" in reason and "on this GPU" not in reason


def test_changing_the_region_of_interest_names_the_classes_enrolled_with_another(trained_bundle: Path,
                                                                                 glyph_data: Path,
                                                                                 tmp_path: Path) -> None:
    pytest.importorskip("starlette")
    from tests.serve_support import running_server, wait_for

    name = class_names(glyph_data, 1)[0]
    with running_server(trained_bundle, tmp_path / "s.db", [synthetic(glyph_data, fps=15, classes=name)]) as served:
        status, _ = served.json("POST", "/api/v1/enroll", {"label": name, "shots": 3, "delay_s": 0,
                                                           "interval_s": 0.2})
        assert status == 202
        wait_for(lambda: served.json("GET", "/api/v1/enroll")[1]["enrollment"]["phase"] in ("done", "failed"))
        assert served.json("GET", "/api/v1/enroll")[1]["enrollment"]["phase"] == "done"
        status, doc = served.json("PUT", "/api/v1/settings", {"roi": "full"})
        assert status == 200 and "roi_note" not in doc  # the one it was enrolled with
        status, doc = served.json("PUT", "/api/v1/settings", {"roi": "0.6"})
        assert status == 200
        assert doc["roi_note"].startswith(f"1 class was enrolled with another region of interest: {name!r} (full)")
