"""How a run ends and what it tells the web app: stop signals from service managers, a refused
``--enroll`` that must not leave threads behind, and several sources each reported as itself."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgefs.camera.loop import Pipeline, RunConfig
from edgefs.camera.sources import Frame
from edgefs.errors import EdgefsError
from edgefs.runtime.bundle import read_bundle
from edgefs.service.classifier import Classifier
from edgefs.service.options import EngineOptions
from edgefs.store import ClassStore
from tests.serve_support import class_names, enroll_from_camera, synthetic


def open_clf(bundle: Path, store: Path) -> Classifier:
    return Classifier.open(bundle, store, options=EngineOptions(backend="onnxruntime", threads=1), log=lambda _: None)


def test_listeners_hear_each_frame_with_its_own_source(trained_bundle: Path, glyph_data: Path,
                                                       tmp_path: Path) -> None:
    """Two live cameras, batched together by --batch-wait: every frame reaches the listeners (the web
    app's view and counters) under the index of the source it came from, so each stream's count
    matches the loop's own per-source count and the frame's source name."""
    uris = [synthetic(glyph_data, fps=15, live=1, seed=s) for s in (1, 2)]
    heard: dict[int, int] = {0: 0, 1: 0}
    names: dict[int, set[str]] = {0: set(), 1: set()}

    def listen(index: int, frame: Frame, _event: dict[str, object]) -> None:
        heard[index] += 1
        names[index].add(frame.source)

    with open_clf(trained_bundle, tmp_path / "s.db") as clf:
        pipeline = Pipeline(clf, RunConfig(sources=uris, duration_s=2.5, batch_wait_ms=100.0), log=lambda _: None)
        pipeline.add_listener(listen)
        summary = pipeline.run()
    assert summary.batches < summary.frames  # frames of both sources did share engine calls
    assert [heard[0], heard[1]] == pipeline.per_source_frames
    assert min(heard.values()) >= 10
    assert names[0] == {pipeline.captures[0].source.name} and names[1] == {pipeline.captures[1].source.name}


def test_a_refused_enroll_leaves_no_capture_thread_running(trained_bundle: Path, glyph_data: Path,
                                                           tmp_path: Path) -> None:
    """``--enroll`` of a class already enrolled is refused before any capture thread starts; one that
    started anyway would outlive the error and can abort the interpreter at exit."""
    store = tmp_path / "s.db"
    name = class_names(glyph_data, 1)[0]
    with open_clf(trained_bundle, store) as clf:
        enroll_from_camera(clf, glyph_data, [name])
        before = {t.name for t in threading.enumerate()}
        pipeline = Pipeline(clf, RunConfig(sources=[synthetic(glyph_data, fps=30, live=1)], enroll=name,
                                           duration_s=5), log=lambda _: None)
        with pytest.raises(EdgefsError, match="already enrolled"):
            pipeline.run()
        time.sleep(0.2)
        started = {t.name for t in threading.enumerate() if t.is_alive()} - before
    assert not [t for t in started if t.startswith("capture")], started
    assert all(cap.status == "stopped" for cap in pipeline.captures)


def _until_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 90.0) -> list[str]:
    assert proc.stdout is not None
    seen, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(prefix) or time.monotonic() > deadline:
            break
    return seen


@pytest.mark.parametrize(("command", "sig"), [("run", signal.SIGTERM), ("run", signal.SIGHUP),
                                              ("serve", signal.SIGTERM)])
def test_stop_signals_end_a_run_as_ctrl_c_does(command: str, sig: signal.Signals, trained_bundle: Path,
                                               glyph_data: Path, tmp_path: Path) -> None:
    """systemd, Docker and Kubernetes stop a service with SIGTERM; a closed terminal sends SIGHUP. Either
    ends ``run`` and ``serve`` cleanly: exit 0, the summary printed and written, the JSONL complete,
    the store intact."""
    store = tmp_path / "s.db"
    with open_clf(trained_bundle, store) as clf:
        enroll_from_camera(clf, glyph_data, class_names(glyph_data, 2))
    summary_json, jsonl = tmp_path / "summary.json", tmp_path / "events.jsonl"
    cmd = [sys.executable, "-m", "edgefs", command, str(trained_bundle), "--store", str(store), "--no-display",
           "--threads", "1", "--no-profile", "--source", synthetic(glyph_data, n_classes=2, fps=30),
           "--summary-json", str(summary_json), "--jsonl", str(jsonl)]
    if command == "serve":
        cmd += ["--port", "0"]
    # The child starts with the signal's default action even when this test runs under nohup (which
    # ignores SIGHUP, and an ignored signal stays ignored by design).
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(sig, signal.SIG_DFL))
    try:
        seen = _until_line(proc, "edgefs serve:" if command == "serve" else "engine:")
        time.sleep(1.5)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        assert proc.stdout is not None
        out = proc.stdout.read()  # after the line reader: communicate() would skip what it buffered
    finally:
        proc.kill()
    out = "".join(seen) + out
    assert proc.returncode == 0, out
    assert f"stopped by {sig.name}" in out and "FPS" in out
    summary = json.loads(summary_json.read_text())
    assert summary["stopped_by"] == sig.name and summary["frames"] > 0
    events = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(events) == summary["frames"]
    with ClassStore.open(store, read_bundle(trained_bundle), create=False) as s:
        assert s.integrity_check() == "ok" and len(s.names()) == 2


@pytest.mark.parametrize("target", ["store", "wal", "bundle-file", "source-file"])
def test_an_output_over_an_input_is_refused_before_anything_runs(target: str, trained_bundle: Path,
                                                                  glyph_data: Path, tmp_path: Path) -> None:
    """``--jsonl``/``--summary-json``/``--record`` that would replace the class store (or its log), a file
    of the bundle or the video being read: refused with the reason, and the input is byte-identical."""
    import hashlib

    from edgefs.cli import main

    store = tmp_path / "s.db"
    with open_clf(trained_bundle, store) as clf:
        enroll_from_camera(clf, glyph_data, class_names(glyph_data, 1))
    bundle = tmp_path / "m.edgefs"
    import shutil

    shutil.copytree(trained_bundle, bundle)
    video = tmp_path / "clip.avi"
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(10):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    path = {"store": store, "wal": store.with_name("s.db-wal"), "bundle-file": bundle / "manifest.json",
            "source-file": video}[target]
    before = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    flag = {"store": "--jsonl", "wal": "--summary-json", "bundle-file": "--jsonl", "source-file": "--record"}[target]
    source = str(video) if target == "source-file" else synthetic(glyph_data, frames=5)
    code = main(["run", str(bundle), "--store", str(store), "--source", source, "--no-display", flag, str(path)])
    assert code == 2
    after = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    assert after == before
