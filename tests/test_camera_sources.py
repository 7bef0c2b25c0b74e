"""Camera sources: URIs, video files, image folders, the synthetic camera (real files made in tmp_path)."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgefs.camera import SOURCES, Frame, Source, SourceError, open_source, source_forms
from edgefs.camera.sources.folder import FolderSource
from edgefs.camera.sources.synthetic import SyntheticConfig, SyntheticSource
from edgefs.camera.sources.video import CsiSource, FileSource, GStreamerSource, StreamSource, V4L2Source, opencv_has

N_FRAMES = 20
CODECS = [("mp4v", ".mp4"), ("MJPG", ".avi")]


def write_video(path: Path, fourcc: str, n: int = N_FRAMES, size: tuple[int, int] = (64, 48)) -> Path:
    """``n`` frames: the left half pure red, the right half grey level ``10 * i`` (the frame's number)."""
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25.0, (w, h))
    if not writer.isOpened():
        pytest.skip(f"this OpenCV cannot write {fourcc} {path.suffix} files")
    for i in range(n):
        frame = np.empty((h, w, 3), np.uint8)
        frame[:, : w // 2] = (0, 0, 255)  # BGR red
        frame[:, w // 2:] = 10 * i
        writer.write(frame)
    writer.release()
    return path


def frame_number(frame: Frame) -> int:
    """The number :func:`write_video` encoded in the frame's right half."""
    w = frame.image.shape[1]
    return round(float(frame.image[:, w // 2 + 4:].mean()) / 10)


def read_all(source: Source, limit: int = 1000) -> list[Frame]:
    frames = []
    with source:
        while len(frames) < limit and (frame := source.read()) is not None:
            frames.append(frame)
    return frames


def write_classes(root: Path, names: list[str], per_class: int = 3) -> Path:
    """``root/<name>/<i>.png``: 32x32 grey shapes, one shape per class."""
    for c, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            img = np.full((32, 32), 255, np.uint8)
            if c % 3 == 0:
                cv2.circle(img, (16, 16), 8 + i, 0, 2)
            elif c % 3 == 1:
                cv2.rectangle(img, (8 - i, 8), (24, 24 + i), 0, 2)
            else:
                cv2.line(img, (4, 4 + i), (28, 28), 0, 3)
            cv2.imwrite(str(folder / f"{i}.png"), img)
    return root


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "clip.mp4", "mp4v")


@pytest.fixture
def classes_dir(tmp_path: Path) -> Path:
    return write_classes(tmp_path / "shapes", ["circle", "square", "line"])


# ---- video files ---------------------------------------------------------------------------
@pytest.mark.parametrize(("fourcc", "suffix"), CODECS)
def test_video_file_gives_every_frame_in_rgb_then_ends(tmp_path: Path, fourcc: str, suffix: str) -> None:
    path = write_video(tmp_path / f"clip{suffix}", fourcc)
    source = open_source(str(path))
    assert isinstance(source, FileSource) and not source.live and not source.is_open
    frames = read_all(source)
    assert [f.index for f in frames] == list(range(N_FRAMES))
    assert [frame_number(f) for f in frames] == list(range(N_FRAMES))
    first = frames[0]
    assert first.image.dtype == np.uint8 and first.image.shape == (48, 64, 3) and first.image.flags.c_contiguous
    red = first.image[:, :24].reshape(-1, 3).mean(axis=0)
    assert red[0] > 200 and red[2] < 60, f"BGR was not converted to RGB: mean {red}"
    assert first.label is None and first.source == str(path)
    assert source.fps == pytest.approx(25.0, abs=1)
    times = [f.timestamp for f in frames]
    assert times == sorted(times)


def test_end_of_file_stays_ended_and_read_needs_open(video: Path) -> None:
    source = open_source(video)
    with pytest.raises(SourceError, match="not open"):
        source.read()
    with source:
        while source.read() is not None:
            pass
        assert source.read() is None
    assert not source.is_open


def test_file_scheme_with_fps_is_paced_and_live(video: Path) -> None:
    source = open_source(f"file:{video}?fps=50", name="cam")
    assert source.live and source.pace_fps == 50 and source.name == "cam"
    with source:
        start = time.monotonic()
        frames = [source.read() for _ in range(6)]
        elapsed = time.monotonic() - start
    assert all(f is not None and f.source == "cam" for f in frames)
    assert elapsed >= 0.08  # five intervals of 20 ms (a lower bound: never flaky)


def test_file_loop_counts_on(video: Path) -> None:
    frames = read_all(open_source(video, loop=True), limit=N_FRAMES + 5)
    assert [f.index for f in frames] == list(range(N_FRAMES + 5))
    assert [frame_number(f) for f in frames[N_FRAMES:]] == list(range(5))


def test_file_reopen_resumes_at_the_next_frame(video: Path) -> None:
    with open_source(video) as source:
        for _ in range(7):
            source.read()
        source.reopen()
        frame = source.read()
    assert frame is not None and frame.index == 7 and frame_number(frame) == 7


@pytest.mark.parametrize("form", ["{p}", "file:{p}"])
def test_missing_file_is_named(tmp_path: Path, form: str) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(SourceError, match=r"nope\.mp4") as err:
        open_source(form.format(p=missing))
    assert not err.value.retryable


def test_undecodable_video_says_so(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(SourceError, match="cannot decode video file"):
        open_source(bad).open()


# ---- URIs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("uri", ["foo:bar", "webcam://1", "", "   ", "frobnicate"])
def test_unknown_sources_list_the_valid_forms(uri: str) -> None:
    with pytest.raises(SourceError) as err:
        open_source(uri)
    message = str(err.value)
    for form in ("synthetic:", "rtsp://", "/dev/video0", "gst:", "file:"):
        assert form in message


def test_every_registered_source_documents_its_forms() -> None:
    forms = "\n".join(source_forms())
    for scheme in SOURCES:
        assert SOURCES.get(scheme).uri_forms, scheme
    for scheme in ("synthetic", "v4l2", "gst", "csi", "rtsp", "http", "file", "folder", "flaky"):
        assert scheme in SOURCES
    assert "nvarguscamerasrc" in forms


def test_unknown_option_lists_the_valid_ones(video: Path) -> None:
    with pytest.raises(SourceError, match="fsp") as err:
        open_source(video, fsp=30)
    assert "fps" in str(err.value) and "loop" in str(err.value)
    with pytest.raises(SourceError, match="fps"):
        open_source(f"{video}?fps=fast")


@pytest.mark.parametrize(
    ("uri", "cls", "device"),
    [("0", V4L2Source, 0), ("/dev/video3", V4L2Source, "/dev/video3"), ("v4l2:2", V4L2Source, 2),
     ("v4l2:1?width=640&height=480&fourcc=MJPG", V4L2Source, 1)],
)
def test_camera_uris(uri: str, cls: type[Source], device: object) -> None:
    source = open_source(uri)
    assert isinstance(source, cls) and source.live and not source.is_open
    assert source.device == device


def test_stream_uris_keep_their_query_and_hide_passwords() -> None:
    source = open_source("rtsp://admin:secret@10.0.0.5:554/stream1?channel=2", transport="tcp")
    assert isinstance(source, StreamSource) and source.live
    assert source.url == "rtsp://admin:secret@10.0.0.5:554/stream1?channel=2"
    assert "secret" not in source.name and "admin:***@10.0.0.5:554" in source.name
    assert isinstance(open_source("https://cam.local/video.mjpg"), StreamSource)
    with pytest.raises(SourceError, match="tcp or udp"):
        open_source("rtsp://host/x", transport="quic")


def test_gstreamer_uris() -> None:
    source = open_source("gst:videotestsrc ! videoconvert")
    assert isinstance(source, GStreamerSource)
    assert source.pipeline.endswith("appsink drop=true max-buffers=1 sync=false")
    csi = open_source("csi:1?width=1920&height=1080&fps=30&out=640x360")
    assert isinstance(csi, CsiSource) and csi.fps == 30
    assert "nvarguscamerasrc sensor-id=1" in csi.pipeline and "width=640,height=360" in csi.pipeline


@pytest.mark.skipif(opencv_has("GStreamer"), reason="this OpenCV has GStreamer")
def test_gstreamer_missing_from_opencv_is_explained() -> None:
    with pytest.raises(SourceError, match="GStreamer") as err:
        open_source("gst:videotestsrc ! appsink").open()
    assert not err.value.retryable


def test_missing_camera_says_what_to_check() -> None:
    with pytest.raises(SourceError, match="/dev/video99") as err:
        open_source("/dev/video99").open()
    assert err.value.retryable  # it may be plugged in later


# ---- image folders ---------------------------------------------------------------------------
def test_folder_labels_from_class_folders_and_skips_corrupt_images(classes_dir: Path) -> None:
    (classes_dir / "square" / "9_bad.png").write_bytes(b"\x89PNG truncated")
    source = open_source(classes_dir)
    assert isinstance(source, FolderSource) and not source.live
    with pytest.warns(UserWarning, match="9_bad.png"):
        frames = read_all(source)
    assert len(frames) == 9
    assert [f.label for f in frames] == ["circle"] * 3 + ["line"] * 3 + ["square"] * 3
    assert [f.index for f in frames] == list(range(9))
    assert all(f.image.shape == (32, 32, 3) and f.image.flags.c_contiguous for f in frames)
    assert source.skipped == [classes_dir / "square" / "9_bad.png"]


def test_flat_folder_and_single_image_have_no_labels(tmp_path: Path) -> None:
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.jpg"), np.full((20, 30, 3), 40 * i, np.uint8))
    frames = read_all(open_source(f"folder:{tmp_path}?shuffle=1&seed=3"))
    assert len(frames) == 3 and all(f.label is None for f in frames)
    one = read_all(open_source(tmp_path / "2.jpg"))
    assert len(one) == 1 and one[0].image.shape == (20, 30, 3)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds no images"):
        open_source(tmp_path / "empty").open()


# ---- the synthetic camera ------------------------------------------------------------------------
def synthetic(root: Path, **options: object) -> SyntheticSource:
    options.setdefault("size", "80x60")
    source = open_source(f"synthetic:{root}", **options)
    assert isinstance(source, SyntheticSource)
    return source


def test_synthetic_is_deterministic_and_random_access(classes_dir: Path) -> None:
    a = read_all(synthetic(classes_dir, frames=40, seed=7, hold=10))
    b = read_all(synthetic(classes_dir, frames=40, seed=7, hold=10))
    assert len(a) == 40 and a[-1].index == 39
    assert all(np.array_equal(x.image, y.image) and x.label == y.label for x, y in zip(a, b, strict=True))
    out_of_order = synthetic(classes_dir, frames=40, seed=7, hold=10)
    for i in (33, 2, 17, 0):
        assert np.array_equal(out_of_order.render(i), a[i].image)
    other = synthetic(classes_dir, frames=40, seed=8, hold=10).render(0)
    assert not np.array_equal(other, a[0].image)
    assert a[0].image.dtype == np.uint8 and a[0].image.shape == (60, 80, 3) and a[0].image.flags.c_contiguous


def test_synthetic_moves_within_a_presentation(classes_dir: Path) -> None:
    frames = read_all(synthetic(classes_dir, frames=5, hold=10, difficulty=1.0))
    assert not np.array_equal(frames[0].image, frames[4].image)
    still = read_all(synthetic(classes_dir, frames=5, hold=10, difficulty=0.0))
    assert all(np.array_equal(still[0].image, f.image) for f in still)


def test_synthetic_still_holds_each_presentation(classes_dir: Path) -> None:
    """still=1: a presentation's frames are one scene (only the sensor noise changes); the next one differs."""
    hold = 8
    still = read_all(synthetic(classes_dir, frames=2 * hold, hold=hold, difficulty=1.0, noise=0, still=True))
    moving = read_all(synthetic(classes_dir, frames=2 * hold, hold=hold, difficulty=1.0, noise=0))
    assert all(np.array_equal(still[0].image, f.image) for f in still[1:hold])
    assert not np.array_equal(still[0].image, still[hold].image)  # a new presentation: a new still
    assert [f.label for f in still] == [f.label for f in moving]  # the same presentations
    assert not np.array_equal(moving[0].image, moving[hold - 1].image)  # the same stream moves
    # With sensor noise, consecutive stills differ by the noise alone: each is the noiseless still
    # plus/minus at most a few sigma, and about sigma on average.
    noisy = read_all(synthetic(classes_dir, frames=hold, hold=hold, difficulty=1.0, noise=4, still=True))
    diffs = [f.image.astype(int) - still[0].image for f in noisy]
    assert not np.array_equal(noisy[0].image, noisy[1].image)
    assert all(np.abs(d).max() <= 6 * 4 and 1.0 < np.abs(d).mean() < 4.0 for d in diffs)


def test_synthetic_still_is_the_streams_first_instant(classes_dir: Path) -> None:
    """Without motion blur (motion=0), a still shows the moving stream's first frame of its presentation:
    pose, light and focus are sampled where the stream samples them, only held."""
    options = {"frames": 10, "hold": 10, "difficulty": 1.0, "motion": 0.0, "noise": 0.0}
    still = read_all(synthetic(classes_dir, still="1", **options))
    moving = read_all(synthetic(classes_dir, **options))
    assert np.array_equal(still[0].image, moving[0].image)
    assert np.array_equal(still[9].image, moving[0].image)
    assert not np.array_equal(moving[9].image, moving[0].image)  # rotation, scale, light still change


def test_synthetic_labels_hold_and_rounds(classes_dir: Path) -> None:
    source = synthetic(classes_dir, frames=60, hold=5)
    frames = read_all(source)
    labels = [f.label for f in frames]
    assert labels == [source.label_at(i) for i in range(60)]
    blocks = [labels[i:i + 5] for i in range(0, 60, 5)]
    assert all(len(set(block)) == 1 for block in blocks)
    for r in range(4):  # every round shows every class once
        assert sorted(b[0] for b in blocks[3 * r:3 * r + 3]) == ["circle", "line", "square"]


def test_synthetic_gap_frames_have_no_label(classes_dir: Path) -> None:
    labels = [f.label for f in read_all(synthetic(classes_dir, frames=10, hold=5, gap=2))]
    assert labels[3:5] == [None, None] and None not in labels[:3] and labels[8:] == [None, None]


def test_synthetic_class_selection(classes_dir: Path) -> None:
    only = synthetic(classes_dir, classes="square,circle", frames=30, hold=3)
    assert only.classes == ["circle", "square"]
    assert {f.label for f in read_all(only)} == {"circle", "square"}
    assert synthetic(classes_dir, classes=["line"]).classes == ["line"]
    picked = synthetic(classes_dir, n_classes=2, seed=1).classes
    assert len(picked) == 2 and picked == synthetic(classes_dir, n_classes=2, seed=1).classes
    with pytest.raises(SourceError, match=r"'triangle' is not a class here.*circle"):
        synthetic(classes_dir, classes="triangle")
    with pytest.raises(SourceError, match="n_classes=5"):
        synthetic(classes_dir, n_classes=5)


def test_synthetic_reads_the_glyph_layout(stroke_data: Path) -> None:
    test = synthetic(stroke_data)
    assert len(test.classes) == 12 and test.classes[0].startswith("script") and "/char" in test.classes[0]
    assert test.live and test.frames is None  # no frames=N: a live camera
    train = synthetic(stroke_data, split="train", classes="char001")
    assert train.classes == ["script1/char001"]
    with pytest.raises(SourceError, match="no split 'dev'"):
        synthetic(stroke_data, split="dev")
    first = synthetic(stroke_data, instances="0:2", frames=1)
    assert all(len(files) == 2 for files in first._files.values())


def test_synthetic_live_paces_and_frames_end(classes_dir: Path) -> None:
    source = synthetic(classes_dir, fps=100, live=True, frames=6)
    start = time.monotonic()
    frames = read_all(source)
    assert len(frames) == 6 and time.monotonic() - start >= 0.04  # five 10 ms intervals, lower bound
    assert source.live and read_all(synthetic(classes_dir, frames=0)) == []


def test_synthetic_skips_unreadable_images(classes_dir: Path) -> None:
    for f in (classes_dir / "line").iterdir():
        f.write_bytes(b"garbage")
    (classes_dir / "circle" / "0.png").write_bytes(b"garbage")
    source = synthetic(classes_dir, classes="circle", frames=40, hold=1, seed=0)
    with pytest.warns(UserWarning, match=r"circle.0\.png"):
        assert len(read_all(source)) == 40
    with pytest.warns(UserWarning, match="line"), pytest.raises(SourceError, match="no image of class 'line'"):
        read_all(synthetic(classes_dir, classes="line", frames=2))


def test_synthetic_options_are_checked(classes_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="WIDTHxHEIGHT"):
        synthetic(classes_dir, size="big")
    with pytest.raises(SourceError, match="difficulty"):
        synthetic(classes_dir, difficulty=2)
    with pytest.raises(SourceError, match="gap"):
        synthetic(classes_dir, hold=3, gap=3)
    with pytest.raises(SourceError, match="no such folder"):
        open_source(f"synthetic:{tmp_path / 'none'}")
    with pytest.raises(SourceError, match=r"option still='maybe' .* must be 1/0, true/false or yes/no"):
        open_source(f"synthetic:{classes_dir}?still=maybe")
    with pytest.raises(SourceError, match="still must be True or False, got 'yes'"):
        SyntheticSource(classes_dir, SyntheticConfig(still="yes"))  # type: ignore[arg-type]
    assert synthetic(classes_dir, still="yes").config.still and not synthetic(classes_dir).config.still
    assert open_source(f"synthetic:{classes_dir}?still=1&frames=2").config.still  # type: ignore[attr-defined]
    cfg = SyntheticConfig(difficulty=0.5, noise=0.0).resolved()
    assert cfg.noise == 0.0 and cfg.blur == pytest.approx(0.9)


def test_synthetic_renders_a_stream_of_default_size_quickly_enough_to_run(classes_dir: Path) -> None:
    # Behaviour, not timing (tools and the report measure speed): 90 default-size frames render.
    source = open_source(f"synthetic:{classes_dir}?frames=90&difficulty=1")
    frames = read_all(source)
    assert len(frames) == 90 and frames[0].image.shape == (240, 320, 3)


def test_query_keeps_plus_signs_of_class_names() -> None:
    from edgefs.camera.sources import split_query

    assert split_query("data/x?classes=greek/U+03B1,U+0905&seed=2") == (
        "data/x", {"classes": "greek/U+03B1,U+0905", "seed": "2"})
    assert split_query("data/x?label=a%20b") == ("data/x", {"label": "a b"})
