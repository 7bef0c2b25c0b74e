"""Camera frame -> engine input: exact geometry, colour order, interpolation and refusals."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgefs.runtime.bundle import Manifest
from edgefs.runtime.preprocess import FIT_MODES, PreprocessError, fit_frame, to_batch

BLUE_BGR, GREEN_BGR, RED_BGR = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def manifest(h: int = 20, w: int = 20, color_order: str = "RGB") -> Manifest:
    return Manifest(
        backbone={"name": "test"}, output={"name": "embeddings", "dtype": "float32", "dim": 4},
        input={"name": "images", "dtype": "uint8", "layout": "NHWC", "height": h, "width": w, "channels": 3,
               "color_order": color_order},
        head={"type": "prototype", "params": {}}, fingerprint="0" * 64,
    )


def thirds(h: int, w: int, axis: int) -> np.ndarray:
    """BGR frame whose thirds along ``axis`` (1: left/middle/right, 0: top/middle/bottom) are blue, green, red."""
    frame = np.empty((h, w, 3), np.uint8)
    n = frame.shape[axis] // 3
    for i, colour in enumerate((BLUE_BGR, GREEN_BGR, RED_BGR)):
        index = [slice(None), slice(None)]
        index[axis] = slice(i * n, (i + 1) * n)
        frame[tuple(index)] = colour
    return frame


@pytest.mark.parametrize("size", [30, 10, 45])
def test_center_crop_of_a_wide_frame_keeps_only_the_middle_third(size: int) -> None:
    out = fit_frame(thirds(30, 90, axis=1), size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    assert (out == (0, 255, 0)).all()  # green, in RGB; the blue and red thirds are cut off exactly


def test_center_crop_of_a_tall_frame_keeps_only_the_middle_third() -> None:
    out = fit_frame(thirds(90, 30, axis=0), 15)
    assert (out == (0, 255, 0)).all()


def test_resize_keeps_every_third_and_converts_to_rgb() -> None:
    out = fit_frame(thirds(30, 90, axis=1), 30, mode="resize")
    assert out.shape == (30, 30, 3)
    assert (out[:, :9] == (0, 0, 255)).all()  # left third was BGR blue -> RGB (0, 0, 255)
    assert (out[:, 11:19] == (0, 255, 0)).all()
    assert (out[:, 21:] == (255, 0, 0)).all()  # right third was BGR red -> RGB (255, 0, 0)


def test_pure_blue_bgr_frame_becomes_rgb_blue() -> None:
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[..., 0] = 255  # OpenCV's blue channel is the first
    assert (fit_frame(frame, 16) == (0, 0, 255)).all()
    assert (fit_frame(frame, 16, input_order="RGB") == (255, 0, 0)).all()  # the same bytes read as RGB are red


@pytest.mark.parametrize("shape", [(40, 60), (40, 60, 1)])
def test_grey_frames_are_repeated_to_three_channels(shape: tuple[int, ...]) -> None:
    out = fit_frame(np.full(shape, 77, np.uint8), 20)
    assert out.shape == (20, 20, 3) and (out == 77).all()


def test_bgra_drops_alpha_and_reorders() -> None:
    frame = np.empty((10, 10, 4), np.uint8)
    frame[...] = (10, 20, 30, 40)
    assert (fit_frame(frame, 5) == (30, 20, 10)).all()
    assert (fit_frame(frame, 5, input_order="RGB") == (10, 20, 30)).all()


def test_letterbox_pads_above_and_below_a_wide_frame() -> None:
    out = fit_frame(np.full((40, 80, 3), 255, np.uint8), 20, mode="letterbox", pad_value=0)
    assert out.shape == (20, 20, 3)
    assert (out[:5] == 0).all() and (out[15:] == 0).all()
    assert (out[5:15] == 255).all()


def test_shrinking_uses_inter_area_and_growing_inter_linear() -> None:
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (60, 60, 3), dtype=np.uint8)
    small = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
    expect_area = cv2.cvtColor(cv2.resize(big, (20, 20), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    expect_linear = cv2.cvtColor(cv2.resize(small, (20, 20), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(fit_frame(big, 20), expect_area)
    np.testing.assert_array_equal(fit_frame(small, 20), expect_linear)


def test_non_square_target_and_non_contiguous_frame() -> None:
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    flipped = frame[:, ::-1]  # a view OpenCV cannot take as is
    out = fit_frame(flipped, (12, 24))
    assert out.shape == (12, 24, 3)
    np.testing.assert_array_equal(out, fit_frame(np.ascontiguousarray(flipped), (12, 24)))


def test_output_is_never_a_view_of_the_frame() -> None:
    frame = np.full((8, 8, 3), 9, np.uint8)
    out = fit_frame(frame, 8, input_order="RGB")  # no resize, no conversion needed
    out[...] = 0
    assert (frame == 9).all()


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (None, "None"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((10, 10, 3), np.uint16), "uint8"),
        (np.zeros((10, 10, 2), np.uint8), "(H, W)"),
        (np.zeros((2, 10, 10, 3), np.uint8), "(H, W)"),
        ([[0, 1], [2, 3]], "NumPy array"),
    ],
)
def test_bad_frames_are_refused_clearly(frame: object, message: str) -> None:
    with pytest.raises(PreprocessError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fit_frame(frame, 10)  # type: ignore[arg-type]


def test_bad_mode_and_colour_order_are_refused() -> None:
    frame = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(PreprocessError, match="center_crop"):
        fit_frame(frame, 10, mode="stretch")  # type: ignore[arg-type]
    with pytest.raises(PreprocessError, match="BGR"):
        fit_frame(frame, 10, input_order="YUV")


@pytest.mark.parametrize("mode", FIT_MODES)
def test_to_batch_takes_frames_of_any_size_and_kind(mode: str) -> None:
    rng = np.random.default_rng(2)
    frames = [
        rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
        rng.integers(0, 256, (30, 20), dtype=np.uint8),
        rng.integers(0, 256, (100, 100, 4), dtype=np.uint8),
    ]
    batch = to_batch(frames, manifest(20, 24), mode=mode)  # type: ignore[arg-type]
    assert batch.shape == (3, 20, 24, 3) and batch.dtype == np.uint8 and batch.flags.c_contiguous
    for frame, image in zip(frames, batch, strict=True):
        np.testing.assert_array_equal(image, fit_frame(frame, (20, 24), mode=mode))  # type: ignore[arg-type]


def test_to_batch_gives_the_graphs_colour_order() -> None:
    frame = np.zeros((10, 10, 3), np.uint8)
    frame[..., 0] = 255  # BGR blue
    assert (to_batch([frame], manifest(5, 5)) == (0, 0, 255)).all()
    assert (to_batch([frame], manifest(5, 5, color_order="BGR")) == (255, 0, 0)).all()


def test_to_batch_refusals_name_the_frame() -> None:
    good = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(PreprocessError, match="no frames"):
        to_batch([], manifest())
    with pytest.raises(PreprocessError, match="frame 1 is None"):
        to_batch([good, None], manifest())  # type: ignore[list-item]
    with pytest.raises(PreprocessError, match=r"\[frame\]"):
        to_batch(good, manifest())  # one frame, not a batch
