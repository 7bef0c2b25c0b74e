"""The enrollment quality gate."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgefs.service.quality import QualityConfig, gate_shots, sharpness


def checkerboard(size: int = 64) -> np.ndarray:
    tile = np.indices((size, size)).sum(0) // 8 % 2
    return np.repeat((tile * 255).astype(np.uint8)[..., None], 3, axis=2)


def test_blur_lowers_sharpness_and_is_rejected_with_its_name() -> None:
    sharp = checkerboard()
    blurry = cv2.GaussianBlur(sharp, (0, 0), 6)
    assert sharpness(sharp) > 20 * sharpness(blurry)
    emb = np.eye(2, 8, dtype=np.float32)
    result = gate_shots(np.stack([sharp, blurry]), emb, QualityConfig(min_sharpness=50), names=["a.png", "b.png"])
    assert result.keep.tolist() == [True, False]
    assert len(result.reasons) == 1 and result.reasons[0].startswith("b.png: too blurry")


def test_near_duplicates_keep_the_first_and_check_stored_shots() -> None:
    images = np.stack([checkerboard()] * 3)
    emb = np.array([[1, 0, 0], [1, 0.001, 0], [0, 1, 0]], np.float32)
    result = gate_shots(images, emb, QualityConfig(min_sharpness=0))
    assert result.keep.tolist() == [True, False, True]
    assert "near-duplicate" in result.reasons[0]
    stored = np.array([[0, 1, 0.0005]], np.float32)
    again = gate_shots(images, emb, QualityConfig(min_sharpness=0), existing=stored)
    assert again.keep.tolist() == [True, False, False]
    off = gate_shots(images, emb, QualityConfig(min_sharpness=0, max_similarity=1.0))
    assert off.keep.all()


# ---- sharpness at the content's own resolution ---------------------------------------------

def small_photos(count: int = 8, side: int = 64) -> np.ndarray:
    """Sharp colour images at a low resolution (shapes on smooth colour fields)."""
    from edgefs.data.procedural import procedural_images

    return procedural_images(count, side, seed=5)


def test_small_sharp_images_are_measured_at_their_own_resolution() -> None:
    from edgefs.runtime.preprocess import fit_frame
    from edgefs.service.quality import shot_sharpness

    for image in small_photos():
        enlarged = sharpness(fit_frame(image, 224, input_order="RGB"))
        own = shot_sharpness(image, 224)
        assert own == sharpness(image)  # no resampling at all for a square image
        assert own > 5 * enlarged  # the enlargement alone would have made it look blurry


def test_frames_larger_than_the_input_are_measured_as_the_engine_sees_them() -> None:
    from edgefs.runtime.preprocess import fit_frame
    from edgefs.service.quality import shot_sharpness

    frame = cv2.resize(checkerboard(64), (320, 240), interpolation=cv2.INTER_NEAREST)
    for mode in ("center_crop", "resize", "letterbox"):
        seen = sharpness(fit_frame(frame, 224, mode=mode, input_order="RGB"))
        assert shot_sharpness(frame, 224, mode) == seen


def test_enlarging_modes_measure_the_same_region_without_the_enlargement() -> None:
    from edgefs.service.quality import fit_scale, shot_sharpness

    wide = np.ascontiguousarray(small_photos(1, 96)[0][:48])  # 48 x 96
    assert fit_scale(48, 96, 224, "center_crop") == 224 / 48
    assert fit_scale(48, 96, 224, "letterbox") == 224 / 96
    # center_crop keeps the centred 48 x 48 square at its own scale
    assert shot_sharpness(wide, 224, "center_crop") == sharpness(wide[:, 24:72])
    assert shot_sharpness(wide, 224, "resize") > 20


def test_gate_accepts_sharp_small_shots_and_rejects_blurred_ones() -> None:
    from edgefs.service.quality import shot_sharpness

    sharp = small_photos()
    blurred = np.stack([cv2.GaussianBlur(im, (0, 0), 2.0) for im in sharp])
    shots = np.concatenate([sharp, blurred])
    values = np.array([shot_sharpness(im, 224) for im in shots])
    emb = np.eye(len(shots), 32, dtype=np.float32)
    result = gate_shots(np.zeros((len(shots), 224, 224, 3), np.uint8), emb, QualityConfig(), sharpness_values=values)
    # every sharp photo but the flattest one (a smooth field with a single small shape) passes
    assert result.keep[: len(sharp)].sum() >= len(sharp) - 1
    assert not result.keep[len(sharp):].any()
    assert all("too blurry" in r for r in result.reasons[-len(blurred):])


@pytest.fixture(scope="module")
def bundle_224(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 224 px RGB conv4 bundle (untrained, seeded): the engine input size of a Lite0 bundle, cheaply."""
    import torch
    from edgefs.export import write_bundle

    from edgefs.backbones import build_backbone
    from edgefs.heads import HeadSpec

    torch.manual_seed(0)
    backbone = build_backbone("conv4", input_size=224, in_channels=3).eval()
    out = tmp_path_factory.mktemp("b224") / "b.edgefs"
    write_bundle(backbone, HeadSpec("prototype", {"distance": "cosine"}), out, small_photos(4, 224),
                 {"data": "procedural"}, {}, log=lambda _: None)
    return out


def test_classifier_with_a_224_px_bundle_enrolls_sharp_64_px_photos(bundle_224: Path, tmp_path: Path) -> None:
    """The bug this rule fixes: with a 224 px engine, sharp 64 px photos were 'too blurry'."""
    from edgefs.errors import EdgefsError
    from edgefs.service.classifier import Classifier
    from edgefs.service.options import EngineOptions

    sharp = small_photos(6)
    with Classifier.open(bundle_224, tmp_path / "store.db", options=EngineOptions(backend="onnxruntime", threads=1),
                         log=lambda _: None) as clf:
        result = clf.enroll("photo", list(sharp[:5]))
        assert result.added >= 4, result.rejected
        blurred = [cv2.GaussianBlur(im, (0, 0), 2.0) for im in sharp[:3]]
        with pytest.raises(EdgefsError, match="too blurry"):
            clf.enroll("blurred", blurred)


def test_live_enrollment_in_the_camera_loop_uses_the_same_rule(bundle_224: Path, tmp_path: Path) -> None:
    from edgefs.camera.loop import Pipeline, RunConfig
    from edgefs.service.classifier import Classifier
    from edgefs.service.options import EngineOptions

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, im in enumerate(small_photos(8)):
        cv2.imwrite(str(folder / f"{i:02d}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    logs: list[str] = []
    with Classifier.open(bundle_224, tmp_path / "s.db", options=EngineOptions(backend="onnxruntime", threads=1),
                         log=lambda _: None) as clf:
        pipeline = Pipeline(clf, RunConfig(sources=[str(folder)], enroll="photo", shots=3, enroll_interval_s=0.0),
                            log=logs.append)
        list(pipeline.events())
        if pipeline._enroll_thread is not None:
            pipeline._enroll_thread.join()
        assert clf.classes == ["photo"], logs
