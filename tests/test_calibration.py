"""The calibration image stream: folders, ImageFolders and videos, generated here with OpenCV."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgefs.runtime.calibration import CalibrationError, open_calibration_source
from edgefs.runtime.preprocess import fit_frame

SIZE = 32


def quiet(_: str) -> None:
    pass


def write_image_folder(root: Path, classes: int = 3, per_class: int = 8) -> Path:
    """``root/class<c>/<i>.png``: 48x64 BGR images whose colour encodes (class, index)."""
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            image = np.zeros((48, 64, 3), np.uint8)
            image[:] = (10 * i, 80 * c, 200)
            cv2.imwrite(str(folder / f"{i}.png"), image)
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "imgs")


@pytest.fixture
def video(tmp_path: Path) -> Path:
    """40 frames of 64x48 MJPG; frame k is filled with grey level 5k, so a frame's index can be read back."""
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    assert writer.isOpened()
    for k in range(40):
        writer.write(np.full((48, 64, 3), 5 * k, np.uint8))
    writer.release()
    return path


def test_image_folder_counts_shapes_and_labels(image_folder: Path) -> None:
    source = open_calibration_source(image_folder, SIZE, warn=quiet)
    assert source.kind == "imagefolder" and len(source) == 24 and source.class_names == ["class0", "class1", "class2"]
    batches = list(source.batches(20, 4))
    assert len(batches) == 5
    for batch in batches:
        assert batch.shape == (4, SIZE, SIZE, 3) and batch.dtype == np.uint8 and batch.flags.c_contiguous
    held, labels = source.held_out(10)
    assert held.shape == (4, SIZE, SIZE, 3) and labels is not None and labels.shape == (4,)
    assert source.consumed == 20


def test_same_preprocessing_as_the_runtime(image_folder: Path) -> None:
    source = open_calibration_source(image_folder, SIZE, warn=quiet)
    first = next(iter(source.batches(4, 4)))[0]
    expected = fit_frame(cv2.imread(str(source.items[0])), SIZE)
    np.testing.assert_array_equal(first, expected)
    assert first[0, 0, 2] < first[0, 0, 0] or first[0, 0, 0] == 200  # RGB: red channel holds the BGR blue


def test_seeded_shuffle_is_deterministic(image_folder: Path) -> None:
    def run(seed: int) -> np.ndarray:
        return np.concatenate(list(open_calibration_source(image_folder, SIZE, seed=seed, warn=quiet).batches(12, 4)))

    np.testing.assert_array_equal(run(0), run(0))
    assert not np.array_equal(run(0), run(1))


def test_flat_folder_is_unlabelled_and_recursive(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    root.mkdir()
    for i in range(5):
        cv2.imwrite(str(root / f"{i}.jpg"), np.full((20, 30, 3), i * 40, np.uint8))
    (root / "deeper").mkdir()
    cv2.imwrite(str(root / "deeper" / "x.png"), np.zeros((20, 30, 3), np.uint8))
    source = open_calibration_source(root, SIZE, warn=quiet)
    assert source.kind == "folder" and source.labels is None and len(source) == 6
    assert source.held_out(3)[1] is None


def test_unreadable_images_are_skipped_with_a_warning(image_folder: Path) -> None:
    (image_folder / "class0" / "broken.png").write_bytes(b"not a png")
    seen: list[str] = []
    source = open_calibration_source(image_folder, SIZE, warn=seen.append)
    assert len(source) == 25
    batches = list(source.batches(24, 4))
    assert len(batches) == 6  # the broken file was replaced by the next readable one
    assert any("broken.png" in msg for msg in seen)


def test_count_is_rounded_down_to_full_batches_and_capped(image_folder: Path) -> None:
    seen: list[str] = []
    source = open_calibration_source(image_folder, SIZE, warn=seen.append)
    assert len(list(source.batches(11, 4))) == 2
    assert len(list(source.batches(500, 5))) == 4  # 24 images -> 4 batches of 5
    assert any("holds 24 images" in msg for msg in seen)


def test_errors(tmp_path: Path, image_folder: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="holds no images"):
        open_calibration_source(tmp_path / "empty", SIZE)
    with pytest.raises(CalibrationError, match="does not exist"):
        open_calibration_source(tmp_path / "missing", SIZE)
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(CalibrationError, match="cannot open"):
        open_calibration_source(bad, SIZE)
    source = open_calibration_source(image_folder, SIZE, warn=quiet)
    with pytest.raises(CalibrationError, match="fewer than one calibration batch"):
        source.batches(10, 32)
    small = tmp_path / "small"
    small.mkdir()
    for i in range(3):
        (small / f"{i}.png").write_bytes(b"junk")
    with pytest.raises(CalibrationError, match="fewer readable images"):
        list(open_calibration_source(small, SIZE, warn=quiet).batches(3, 3))


def test_video_frames_are_spread_over_the_whole_video(video: Path) -> None:
    source = open_calibration_source(video, SIZE, warn=quiet)
    assert source.kind == "video" and len(source) == 40
    batches = list(source.batches(8, 4))
    assert len(batches) == 2 and batches[0].shape == (4, SIZE, SIZE, 3) and batches[0].dtype == np.uint8
    levels = np.concatenate(batches).reshape(8, -1).mean(axis=1) / 5  # ~ the frame index (MJPG is lossy)
    np.testing.assert_allclose(levels, np.arange(8) * 5, atol=1.0)
    held, labels = source.held_out(8)
    assert labels is None and len(held) == 8
    held_levels = held.reshape(8, -1).mean(axis=1) / 5
    np.testing.assert_allclose(held_levels, np.arange(8) * 5 + 2, atol=1.0)  # halfway between calibration frames


def test_video_is_deterministic(video: Path) -> None:
    a = np.concatenate(list(open_calibration_source(video, SIZE, warn=quiet).batches(12, 4)))
    b = np.concatenate(list(open_calibration_source(video, SIZE, warn=quiet).batches(12, 4)))
    np.testing.assert_array_equal(a, b)
