"""edgefs run when its sources or outputs fail: bounded attempts, non-zero exits, nothing lost at the end."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cv2
import pytest

from edgefs.camera.capture import CaptureThread
from edgefs.camera.sources import open_source
from edgefs.cli import main


def run_cli(bundle: Path, store: Path, *extra: str) -> list[str]:
    return ["run", str(bundle), "--store", str(store), "--no-display", "--threads", "1", *extra]


@pytest.mark.parametrize("source", ["7", "rtsp://127.0.0.1:1/x"])
def test_a_source_that_never_opens_gives_up(conv4_bundle: Path, tmp_path: Path, source: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Camera 7 (absent here) and a refused RTSP port: reconnecting would go on for ever; the run
    gives up after --open-timeout with the reason, and --frames does not wait on it."""
    t0 = time.monotonic()
    rc = main(run_cli(conv4_bundle, tmp_path / "s.db", "--source", source, "--frames", "10", "--open-timeout", "1.5"))
    took = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "edgefs run: error: no frame was classified;" in err and "failed: never opened: gave up after" in err
    assert took < 30


def test_default_open_timeout_is_bounded(tmp_path: Path) -> None:
    """The library default (10 s) ends a capture of a source that never opens, with attempts counted."""
    cap = CaptureThread(open_source("7"), backoff=(0.05, 0.2), open_timeout=1.0)
    t0 = time.monotonic()
    with cap:
        while not cap.ended and time.monotonic() - t0 < 20:
            time.sleep(0.05)
    assert cap.failed and time.monotonic() - t0 < 5
    assert cap.status.startswith("failed: never opened: gave up after") and "cannot open camera" in cap.status


def test_a_video_that_does_not_decode_fails_the_run(conv4_bundle: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00not a video\x00" * 100)
    summary = tmp_path / "summary.json"
    rc = main(run_cli(conv4_bundle, tmp_path / "s.db", "--source", str(bad), "--summary-json", str(summary)))
    out, err = capsys.readouterr()
    assert rc == 2
    assert "run: 0 frames" in out  # the summary is still printed and written
    assert json.loads(summary.read_text())["frames"] == 0
    assert f"no frame was classified; {bad}: failed: cannot decode video file {bad}" in err


def test_enroll_on_a_source_that_ends_first_says_so(conv4_bundle: Path, glyph_data: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "three"
    folder.mkdir()
    for i, png in enumerate(sorted((glyph_data / "test").rglob("*.png"))[:3]):
        img = cv2.imread(str(png))
        cv2.imwrite(str(folder / f"{i}.png"), cv2.resize(img, (96, 96)))
    rc = main(run_cli(conv4_bundle, tmp_path / "s.db", "--source", str(folder), "--enroll", "mug", "--shots", "5",
                      "--enroll-delay", "0"))
    err = capsys.readouterr().err
    assert rc == 2
    assert "edgefs run: error: enrolled nothing: the source ended after 3 frames with " in err
    assert "of the 5 needed" in err


@pytest.mark.parametrize("flag", ["--jsonl", "--summary-json"])
def test_unwritable_outputs_are_refused_before_the_run(conv4_bundle: Path, glyph_data: Path, tmp_path: Path,
                                                       flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    target = blocker / "out.json"  # a folder that cannot exist: its parent is a file
    t0 = time.monotonic()
    rc = main(run_cli(conv4_bundle, tmp_path / "s.db", "--source", f"synthetic:{glyph_data}?frames=1000",
                      flag, str(target)))
    err = capsys.readouterr().err
    assert rc == 2
    assert f"edgefs run: error: cannot write {flag} {target}: {blocker} is a file, not a folder; choose another " \
           "path" in err
    assert time.monotonic() - t0 < 10  # refused at once, not after 1000 frames
    assert not (tmp_path / "s.db").exists()  # nothing was opened


def test_summary_json_to_a_folder_is_refused(conv4_bundle: Path, glyph_data: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(run_cli(conv4_bundle, tmp_path / "s.db", "--source", f"synthetic:{glyph_data}?frames=5",
                      "--summary-json", str(tmp_path)))
    assert rc == 2 and f"--summary-json {tmp_path} is a folder; give a file name" in capsys.readouterr().err


def test_outputs_in_a_folder_without_write_permission_are_refused(conv4_bundle: Path, glyph_data: Path,
                                                                  tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("this user (root) can write to any folder; the check cannot fail here")
        rc = main(run_cli(conv4_bundle, tmp_path / "s.db", "--source", f"synthetic:{glyph_data}?frames=5",
                          "--jsonl", str(locked / "e.jsonl")))
        assert rc == 2
        assert f"cannot write --jsonl {locked / 'e.jsonl'}: Permission denied" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)
