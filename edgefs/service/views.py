"""Shot views: enroll a camera shot as the mean embedding of it and a few copies of it.

A shot taken for enrollment shows the object once: in one place in the region of interest,
in focus. The frames classified later show it anywhere in that region and sometimes out of
focus, so a prototype built from the shots alone sits off the centre of the frames it must
accept. Enrolling each shot as the mean embedding of :func:`shot_views` (the shot, its four
corner crops of 0.8 of each side scaled back up, as if the object sat elsewhere; and two
blurred copies) moves the prototype to where those frames land.

Measured on the colour demo's synthetic camera with the committed colour model, 7 views
against 1 (docs/benchmarks, reports/openset-colour*, reports/pipeline-colour*): per frame with 5 shots,
closed-set top-1 89.0 -> 92.1 and open-set accuracy 79.2 -> 86.5 on the demo's draw, 71.5 ->
73.0 over 15 camera cases; smoothed on 60 s live streams 83.1 -> 88.5 with 5 shots, 90.8 ->
92.1 with 10. On full-frame
glyphs (the object fills the frame: no room to move) it lowers accuracy, 84.5 -> 75.9
(reports/pipeline-glyphs-views), so it is a store setting chosen at enrollment
(``--shot-views``), 1 (off) unless asked for. More kinds of views (rotations, brightness,
zooms) measured no better than these 7.

The head sums the view means; the unknown threshold is calibrated on each shot's single
view (``samples.single`` in the store, :mod:`edgefs.heads.calibration`), because a camera
frame is one view. Cost: ``views`` embeddings per shot at enrollment, nothing per frame.
Device side: numpy and OpenCV only.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from edgefs.errors import EdgefsError

#: The view counts :func:`shot_views` makes: the shot alone, with its 4 corner crops, and with 2 blurs.
VIEW_CHOICES = (1, 5, 7)
#: Each side of a corner crop, as a fraction of the shot's.
CORNER_CROP = 0.8
#: Gaussian blur sigmas of the blurred copies, in pixels of a 224-px image (scaled with the image).
BLUR_SIGMAS = (1.5, 3.0)


def check_views(views: int) -> int:
    """``views`` when it is one of :data:`VIEW_CHOICES`, else a clear error."""
    if isinstance(views, bool) or not isinstance(views, (int, np.integer)) or int(views) not in VIEW_CHOICES:
        raise EdgefsError(f"shot views must be one of {', '.join(map(str, VIEW_CHOICES))} (1: the shot alone), "
                          f"got {views!r}")
    return int(views)


def shot_views(image: np.ndarray, views: int) -> list[np.ndarray]:
    """A shot and copies of it, each the shot's size.

    Args:
        image: uint8 ``(H, W, 3)``.
        views: 1 (the shot), 5 (and its four corner crops of :data:`CORNER_CROP` of each side,
            scaled back up) or 7 (and two blurred copies, :data:`BLUR_SIGMAS`).

    Returns:
        ``views`` uint8 ``(H, W, 3)`` images, the shot first.
    """
    views = check_views(views)
    if image.ndim != 3 or image.shape[0] < 2 or image.shape[1] < 2:
        raise EdgefsError(f"shot views need an (H, W, 3) image of at least 2x2 pixels, got shape {image.shape}")
    out = [image]
    h, w = image.shape[:2]
    if views >= 5:
        cw, ch = max(1, int(w * CORNER_CROP)), max(1, int(h * CORNER_CROP))
        for x0, y0 in ((0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch)):
            out.append(cv2.resize(image[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR))
    if views >= 7:
        out += [cv2.GaussianBlur(image, (0, 0), sigma * max(h, w) / 224) for sigma in BLUR_SIGMAS]
    return out


def view_means(batch: np.ndarray, singles: np.ndarray, views: int,
               embed: Callable[[np.ndarray], np.ndarray], chunk: int = 64) -> np.ndarray:
    """The mean embedding of each shot's :func:`shot_views`.

    Args:
        batch: uint8 ``(K, H, W, 3)`` engine inputs, one per shot.
        singles: float32 ``(K, D)`` their embeddings (the first view of each; not embedded again).
        views: see :func:`shot_views`.
        embed: float32 ``(B, D)`` embeddings of a uint8 ``(B, H, W, 3)`` batch of engine inputs.
        chunk: the most images per ``embed`` call.

    Returns:
        float32 ``(K, D)``; ``singles`` itself when ``views`` is 1.
    """
    views = check_views(views)
    singles = np.asarray(singles, np.float32)
    if views == 1:
        return singles
    extra = np.stack([v for image in batch for v in shot_views(image, views)[1:]])  # (K * (views - 1), H, W, 3)
    emb = np.concatenate([embed(extra[i:i + chunk]) for i in range(0, len(extra), chunk)]).astype(np.float32)
    emb = emb.reshape(len(batch), views - 1, -1)
    return ((singles + emb.sum(axis=1)) / views).astype(np.float32)
