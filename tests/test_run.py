"""The camera loop, headless: files, the synthetic camera, a failing source, live enrollment, a golden clip."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgefs.camera.loop import UNKNOWN, LabelSmoother, Pipeline, RunConfig, StageTimes
from edgefs.camera.sources import open_source
from edgefs.cli import main
from edgefs.errors import EdgefsError
from edgefs.runtime.bundle import read_bundle
from edgefs.service.classifier import Classifier
from edgefs.service.options import EngineOptions
from edgefs.store import ClassStore
from tests.conftest import sigint_default

GOLDEN = Path(__file__).parent / "golden" / "run_clip.jsonl"


def synthetic(glyph_data: Path, **options: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"seed": 3, "difficulty": 0.2, "object_size": 1.0, **options}.items())
    return f"synthetic:{glyph_data}?{query}"


def classes_of(glyph_data: Path, n: int) -> list[str]:
    src = open_source(synthetic(glyph_data, n_classes=n, frames=1))
    return sorted(src.classes)


def enroll_from_camera(clf: Classifier, glyph_data: Path, names: list[str], shots: int = 4) -> None:
    for name in names:
        src = open_source(synthetic(glyph_data, hold=3, frames=3 * shots, seed=7), classes=[name])
        with src:
            frames = [f.image for i, f in enumerate(iter(src.read, None)) if i % 3 == 1]
        clf.enroll(name, frames)


def open_clf(bundle: Path, store: Path) -> Classifier:
    return Classifier.open(bundle, store, options=EngineOptions(backend="onnxruntime", threads=1), log=lambda _: None)


def test_smoother_votes_and_holds() -> None:
    s = LabelSmoother(window=4, margin=0.4)
    assert s.update("a", 0.9) == ("a", 1.0)
    assert s.update("b", 0.9)[0] == "a"  # a tie does not switch
    assert s.update("b", 0.9)[0] == "a"  # b leads by 1/3 of the weight: below the 0.4 margin
    assert s.update("b", 0.9) == ("b", 0.75)  # by 1/2: switch
    assert s.update(UNKNOWN, 0.9)[0] == "b"
    with pytest.raises(EdgefsError):
        LabelSmoother(window=0)


def test_smoother_starts_afresh_at_a_scene_cut_but_not_on_a_slow_change() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=64), rng.normal(size=64)
    frames = [("a", a + 0.02 * rng.normal(size=64)) for _ in range(20)] + \
             [("b", b + 0.02 * rng.normal(size=64)) for _ in range(3)]
    plain, cutting = LabelSmoother(5, 0.2, cut_ratio=None), LabelSmoother(5, 0.2)
    shown = [(plain.update(lab, 0.9, e)[0], cutting.update(lab, 0.9, e)[0]) for lab, e in frames]
    assert shown[20] == ("a", "b")  # the plain vote lags the new object; the cut shows it at once
    assert shown[22] == ("b", "b") and cutting.cuts == 1 and plain.cuts == 0
    # An object brought in slowly (the embedding turning from a to b over 60 frames) is no cut.
    slow = LabelSmoother(5, 0.2)
    for t in np.linspace(0, 1, 60):
        slow.update("a" if t < 0.5 else "b", 0.9, (1 - t) * a + t * b + 0.02 * rng.normal(size=64))
    assert slow.cuts == 0 and slow.current == "b"
    with pytest.raises(EdgefsError, match="scene-cut ratio"):
        LabelSmoother(cut_ratio=1.0)


def test_stage_times_keep_a_bounded_window() -> None:
    times = StageTimes(window=3)
    for ms in (100.0, 100.0, 1.0, 2.0, 3.0):
        times.add("embed", ms)
    s = times.summary()["embed"]
    assert s["n"] == 5 and s["p50"] == 2.0 and s["p99"] < 3.0 + 1e-9


def test_run_over_video_file_ends_cleanly_with_summary(trained_bundle: Path, glyph_data: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    src = open_source(synthetic(glyph_data, n_classes=3, frames=60, hold=20))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (320, 240))
    names = set()
    with src:
        for f in iter(src.read, None):
            writer.write(cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR))
            names.add(f.label)
    writer.release()
    store = tmp_path / "s.db"
    with open_clf(trained_bundle, store) as clf:
        enroll_from_camera(clf, glyph_data, sorted(n for n in names if n))
    events = tmp_path / "events.jsonl"
    summary_json = tmp_path / "summary.json"
    rc = main(["run", str(trained_bundle), "--store", str(store), "--source", str(video), "--jsonl", str(events),
               "--no-display", "--threads", "1", "--summary-json", str(summary_json),
               "--record", str(tmp_path / "annotated.mp4")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "run: 60 frames" in out and "stopped by end of sources" in out and "p99" in out
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert [e["frame"] for e in lines] == list(range(60))
    assert set(lines[0]) >= {"frame", "time", "source", "label", "confidence", "latency_ms", "top"}
    labels = {e["label"] for e in lines}
    assert labels <= set(names) | {UNKNOWN} and len(labels - {UNKNOWN}) >= 2
    summary = json.loads(summary_json.read_text())
    assert summary["frames"] == 60 and summary["dropped"] == 0
    recorded = cv2.VideoCapture(str(tmp_path / "annotated.mp4"))
    assert int(recorded.get(cv2.CAP_PROP_FRAME_COUNT)) == 60  # the annotated stream, every frame


def test_summary_scores_the_smoothed_and_the_raw_label_of_every_labelled_frame(
        trained_bundle: Path, glyph_data: Path, tmp_path: Path) -> None:
    """Both accuracies agree with the per-frame events: 3 enrolled classes and 1 never enrolled,
    whose frames count as right only when called unknown."""
    names = classes_of(glyph_data, 4)
    events = tmp_path / "events.jsonl"
    with open_clf(trained_bundle, tmp_path / "s.db") as clf:
        enroll_from_camera(clf, glyph_data, names[:3])
        config = RunConfig(sources=[synthetic(glyph_data, classes=",".join(names), frames=120, hold=15)],
                           jsonl=str(events), smooth=9)
        pipeline = Pipeline(clf, config, log=lambda _: None)
        pipeline.smoothers = [LabelSmoother(9, 0.2, cut_ratio=None)]  # a plain vote, lagging at each new object
        summary = pipeline.run()
    rows = [json.loads(line) for line in events.read_text().splitlines()]
    expected = [e["truth"] if e["truth"] in names[:3] else UNKNOWN for e in rows]
    smoothed = np.mean([e["label"] == x for e, x in zip(rows, expected, strict=True)])
    raw = np.mean([e["raw_label"] == x for e, x in zip(rows, expected, strict=True)])
    assert summary.accuracy_frames == len(rows) == 120
    assert summary.accuracy == pytest.approx(smoothed) and summary.raw_accuracy == pytest.approx(raw)
    assert any(e["label"] != e["raw_label"] for e in rows)  # a 9-frame window does change some labels
    assert "per frame before smoothing" in summary.text()


def test_each_source_notices_its_own_scene_cuts(trained_bundle: Path, glyph_data: Path, tmp_path: Path) -> None:
    """Two cameras in one batch are not a cut; each camera's change of object is one."""
    names = classes_of(glyph_data, 3)
    with open_clf(trained_bundle, tmp_path / "s.db") as clf:
        enroll_from_camera(clf, glyph_data, names)
        sources = [synthetic(glyph_data, classes=",".join(names[:2]), frames=90, hold=30, seed=1),
                   synthetic(glyph_data, classes=names[2], frames=90, hold=90, seed=2)]
        pipeline = Pipeline(clf, RunConfig(sources=sources, smooth=5), log=lambda _: None)
        summary = pipeline.run()
    assert summary.frames == 180
    changes = [s.cuts for s in pipeline.smoothers]
    assert changes[1] == 0  # one object held for the whole stream
    assert changes[0] == 2  # two changes of object (at frames 30 and 60)


def test_source_that_fails_mid_stream_comes_back(trained_bundle: Path, glyph_data: Path, tmp_path: Path) -> None:
    uri = "flaky:fail_after=15,fail_opens=2:" + synthetic(glyph_data, n_classes=2, frames=40)
    with open_clf(trained_bundle, tmp_path / "s.db") as clf:
        enroll_from_camera(clf, glyph_data, classes_of(glyph_data, 2))
        logs: list[str] = []
        pipeline = Pipeline(clf, RunConfig(sources=[uri]), log=logs.append)
        pipeline.captures[0].backoff = (0.01, 0.05)  # retry fast in a test
        summary = pipeline.run()
    assert any("reconnecting" in line for line in logs)  # the status is shown, not swallowed
    assert summary.reconnects >= 1
    assert summary.frames == 40  # a file-like source resumes: every frame once, nothing lost
    assert summary.stopped_by == "end of sources"


def test_enrollment_during_a_run_goes_live_without_stopping(trained_bundle: Path, glyph_data: Path,
                                                            tmp_path: Path) -> None:
    names = classes_of(glyph_data, 2)
    with open_clf(trained_bundle, tmp_path / "s.db") as clf:
        enroll_from_camera(clf, glyph_data, names[:1])
        target = names[1]
        cfg = RunConfig(sources=[synthetic(glyph_data, frames=80, hold=80)], enroll=target, shots=3,
                        enroll_interval_s=0.0, source_options={"classes": [target]})
        pipeline = Pipeline(clf, cfg, log=lambda _: None)
        events = list(pipeline.events())
        assert clf.classes == [names[0], target]
        if pipeline._enroll_thread is not None:
            pipeline._enroll_thread.join()
    assert [e["frame"] for e in events] == list(range(80))  # classification never paused
    first_live = next(i for i, e in enumerate(events) if target in [t[0] for t in e["top"]])
    assert first_live >= 3  # the class appears only after its 3 shots were committed
    assert events[-1]["label"] == target


def test_stdin_style_commands(trained_bundle: Path, glyph_data: Path, tmp_path: Path) -> None:
    names = classes_of(glyph_data, 2)
    logs: list[str] = []
    with open_clf(trained_bundle, tmp_path / "s.db") as clf:
        enroll_from_camera(clf, glyph_data, names)
        pipeline = Pipeline(clf, RunConfig(sources=[synthetic(glyph_data, frames=500)]), log=logs.append)
        pipeline.command("bogus")
        pipeline.command(f"remove {names[0]}")
        pipeline.command("quit")
        summary = pipeline.run()
        assert clf.classes == names[1:]
    assert summary.stopped_by == "stop request" and summary.frames < 500
    assert any("unknown command 'bogus'" in line for line in logs)


def test_bad_source_is_a_clear_error(trained_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["run", str(trained_bundle), "--store", str(tmp_path / "s.db"), "--source", "nosuch:thing",
               "--no-display"])
    err = capsys.readouterr().err
    assert rc == 2 and "valid sources" in err


def test_golden_clip(trained_bundle: Path, glyph_data: Path, tmp_path: Path) -> None:
    """A fixed clip (PNG frames of the synthetic camera) gives the recorded labels frame by frame."""
    names = classes_of(glyph_data, 3)
    clip = tmp_path / "clip"
    clip.mkdir()
    with open_source(synthetic(glyph_data, frames=45, hold=15, seed=5), classes=names) as src:
        for f in iter(src.read, None):
            cv2.imwrite(str(clip / f"{f.index:04d}.png"), cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR))
    with open_clf(trained_bundle, tmp_path / "s.db") as clf:
        enroll_from_camera(clf, glyph_data, names)
        events = list(Pipeline(clf, RunConfig(sources=[str(clip)]), log=lambda _: None).events())
    got = [{"frame": e["frame"], "label": e["label"], "raw_label": e["raw_label"], "top": [t[0] for t in e["top"]]}
           for e in events]
    if os.environ.get("EDGEFS_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text("".join(json.dumps(g) + "\n" for g in got))
    want = [json.loads(line) for line in GOLDEN.read_text().splitlines()]
    assert got == want
    assert np.mean([g["label"] != UNKNOWN for g in got]) > 0.5
    shutil.rmtree(clip)


def test_ctrl_c_exits_cleanly_with_summary(trained_bundle: Path, glyph_data: Path, tmp_path: Path) -> None:
    """SIGINT during a live run: exit code 0, the summary printed, the store intact."""
    import signal
    import subprocess
    import sys
    import time

    store = tmp_path / "s.db"
    with open_clf(trained_bundle, store) as clf:
        enroll_from_camera(clf, glyph_data, classes_of(glyph_data, 2))
    cmd = [sys.executable, "-m", "edgefs", "run", str(trained_bundle), "--store", str(store), "--no-display",
           "--threads", "1", "--source", synthetic(glyph_data, n_classes=2, fps=30)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=sigint_default)
    try:
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        for line in proc.stdout:  # wait until the engine is up, then give it a moment to run
            if line.startswith("engine:") or time.monotonic() > deadline:
                break
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "stopped by Ctrl-C" in out and "FPS" in out
    with ClassStore.open(store, read_bundle(trained_bundle), create=False) as s:
        assert s.integrity_check() == "ok" and len(s.names()) == 2


def test_frames_are_prepared_on_the_capture_threads_and_timed(trained_bundle: Path, glyph_data: Path,
                                                             tmp_path: Path) -> None:
    """The loop's stage timers and CPU accounting: capture (the source's read), post, CPU per frame; the
    batch the engine gets is what the loop's one preprocessing function makes of the frames."""
    with open_clf(trained_bundle, tmp_path / "s.db") as clf:
        enroll_from_camera(clf, glyph_data, classes_of(glyph_data, 2))
        pipeline = Pipeline(clf, RunConfig(sources=[synthetic(glyph_data, frames=30)]), log=lambda _: None)
        seen: list[tuple[np.ndarray, np.ndarray]] = []
        prepare = pipeline.prepare

        def checked(frames: list) -> np.ndarray:
            batch = prepare(frames)
            assert all(f.prepared is not None for f in frames)  # made on the capture thread
            seen.extend((f.image, b) for f, b in zip(frames, batch, strict=True))
            return batch

        pipeline.prepare = checked  # type: ignore[method-assign]
        summary = pipeline.run()
        h, w = clf.bundle.manifest.input_size
        for image, got in seen[:5]:
            np.testing.assert_array_equal(got, clf.prepare([image], "RGB")[0])
            assert got.shape == (h, w, 3)
    assert summary.frames == 30 == len(seen)
    assert set(summary.stages_ms) >= {"capture", "wait", "preprocess", "embed", "head", "post", "total"}
    assert summary.stages_ms["capture"]["n"] == 30 and summary.stages_ms["capture"]["p50"] > 0
    cpu = summary.cpu_ms_per_frame
    assert set(cpu) == {"process", "capture", "loop", "engine_call"}
    assert cpu["process"] > 0 and cpu["loop"] > 0 and cpu["capture"] > 0
    assert cpu["loop"] + cpu["engine_call"] <= cpu["process"] + cpu["capture"] + 1.0
    assert "CPU per frame" in summary.text()


def test_a_frame_the_capture_thread_could_not_prepare_is_prepared_by_the_loop(trained_bundle: Path,
                                                                               glyph_data: Path,
                                                                               tmp_path: Path) -> None:
    with open_clf(trained_bundle, tmp_path / "s.db") as clf:
        pipeline = Pipeline(clf, RunConfig(sources=[synthetic(glyph_data, frames=12)]), log=lambda _: None)

        def broken(frame: object) -> object:
            raise RuntimeError("a preprocessing bug on the capture thread")

        pipeline.captures[0].prepare = broken
        summary = pipeline.run()
    assert summary.frames == 12  # every frame still classified, prepared on the loop thread


def test_batch_wait_puts_the_frames_of_several_live_cameras_in_one_engine_call(trained_bundle: Path,
                                                                                glyph_data: Path,
                                                                                tmp_path: Path) -> None:
    """Two live cameras at 10 FPS: with a wait longer than a frame period nearly every batch holds both
    cameras' frames; without it the loop embeds each frame as it comes (the cameras are out of phase)."""
    uris = [synthetic(glyph_data, fps=10, live=1, seed=s) for s in (1, 2)]
    batches = {}
    with open_clf(trained_bundle, tmp_path / "s.db") as clf:
        for wait in (0.0, 150.0):
            pipeline = Pipeline(clf, RunConfig(sources=uris, duration_s=2.5, batch_wait_ms=wait), log=lambda _: None)
            summary = pipeline.run()
            assert summary.frames >= 10
            batches[wait] = summary.frames / summary.batches
    assert batches[150.0] >= 1.6
    assert batches[150.0] > batches[0.0]
    with pytest.raises(EdgefsError, match="batch_wait_ms"):
        Pipeline(clf, RunConfig(sources=uris, batch_wait_ms=-1.0), log=lambda _: None)


def test_the_loop_wakes_on_frames_and_stops_promptly(trained_bundle: Path, glyph_data: Path, tmp_path: Path) -> None:
    """A loop asleep waiting for a slow camera (2 FPS) is woken by stop() rather than by the next frame,
    and every frame it got was classified. Bounds leave room for a loaded machine."""
    import threading
    import time

    with open_clf(trained_bundle, tmp_path / "s.db") as clf:
        pipeline = Pipeline(clf, RunConfig(sources=[synthetic(glyph_data, fps=2, live=1)]), log=lambda _: None)
        threading.Timer(1.6, pipeline.stop).start()
        t = time.monotonic()
        summary = pipeline.run()
        took = time.monotonic() - t
    assert summary.stopped_by == "stop request"
    assert 1.5 <= took < 4.0
    assert 2 <= summary.frames <= 5


def test_calls_submitted_to_a_loop_waiting_on_a_slow_camera_run_at_once(trained_bundle: Path, glyph_data: Path,
                                                                        tmp_path: Path) -> None:
    """Submitted calls (the web app's changes, a live enrollment's shot views) wake a loop that waits for a
    2 FPS camera instead of waiting for its next 50 ms look: 40 calls one after another take far less than
    the 2 s those looks alone would. Bounds leave room for a loaded machine."""
    import threading
    import time

    with open_clf(trained_bundle, tmp_path / "s.db") as clf:
        pipeline = Pipeline(clf, RunConfig(sources=[synthetic(glyph_data, fps=2, live=1)]), log=lambda _: None)
        took: list[float] = []
        ran: list[str] = []

        def caller() -> None:
            time.sleep(0.6)  # the loop is running and asleep between frames
            t = time.monotonic()
            ran.extend(pipeline.submit(lambda: threading.current_thread().name).result(timeout=5) for _ in range(40))
            took.append(time.monotonic() - t)
            pipeline.stop()

        worker = threading.Thread(target=caller)
        worker.start()
        pipeline.run()
        worker.join()
    assert took and took[0] < 1.0
    assert ran == [threading.main_thread().name] * 40  # each ran on the loop's thread


def test_run_cli_takes_the_loop_and_engine_knobs(trained_bundle: Path, glyph_data: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s.db"
    with open_clf(trained_bundle, store) as clf:
        enroll_from_camera(clf, glyph_data, classes_of(glyph_data, 2))
    rc = main(["run", str(trained_bundle), "--store", str(store), "--source", synthetic(glyph_data, frames=20),
               "--source", synthetic(glyph_data, frames=20, seed=4), "--no-display", "--backend", "onnxruntime",
               "--threads", "2", "--no-spin", "--batch-wait", "5"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "2 threads, no spinning" in out  # the engine line says what was asked
    assert "run: 40 frames" in out
    # A knob of another backend, asked of a named backend, is refused with what it takes.
    rc = main(["run", str(trained_bundle), "--store", str(store), "--source", synthetic(glyph_data, frames=5),
               "--no-display", "--backend", "onnxruntime", "--ov-streams", "2"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "has no option streams" in err and "allow_spinning" in err
