"""The enrollment quality gate."""

from __future__ import annotations

import cv2
import numpy as np

from edgefs.quality import QualityConfig, gate_shots, sharpness


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
