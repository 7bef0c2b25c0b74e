"""Reference points that show how hard a benchmark is.

- ``pixels``: nearest neighbour on raw pixels (no learning at all).
- ``efficientnet_lite0``: frozen ImageNet-pretrained EfficientNet-Lite0
  embeddings with cosine prototypes (transfer without meta-training).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgefs.eval.episodic import EmbedFn, ScoreFn
from edgefs.heads.prototype import class_means, prototype_logits


@dataclass
class Evaluatee:
    """Something evaluated on episodes: how it reads images and scores episodes.

    Attributes:
        name: row label in reports.
        input_size: square side images are resized to (None: as stored).
        channels: 1 or 3.
        embed: uint8 ``(B, H, W, C)`` -> float32 ``(B, D)``.
        score: the episode rule on embeddings (see :data:`ScoreFn`).
    """

    name: str
    input_size: int | None
    channels: int
    embed: EmbedFn
    score: ScoreFn


def nearest_neighbour_scores(support: np.ndarray, labels: np.ndarray, queries: np.ndarray, ways: int) -> np.ndarray:
    """Score of a class = minus the squared distance to its nearest support image; ``(Q, ways)``."""
    d2 = (queries**2).sum(1, keepdims=True) - 2 * queries @ support.T + (support**2).sum(1)[None]
    scores = np.full((len(queries), ways), -np.inf, np.float32)
    for c in range(ways):
        scores[:, c] = -d2[:, labels == c].min(1)
    return scores


def pixels_baseline() -> Evaluatee:
    def embed(images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), -1).astype(np.float32) / 255.0

    return Evaluatee("pixels 1-NN", None, 1, embed, nearest_neighbour_scores)


def cosine_prototype_scores(support: np.ndarray, labels: np.ndarray, queries: np.ndarray, ways: int) -> np.ndarray:
    return prototype_logits(queries, class_means(support, labels, ways), "cosine", 1.0)


def frozen_backbone_baseline(name: str, embed_factory: Callable[[str], tuple[int, int, EmbedFn]]) -> Evaluatee:
    """A pretrained backbone, not meta-trained, with cosine prototypes."""
    size, channels, embed = embed_factory(name)
    return Evaluatee(f"{name} (frozen, ImageNet)", size, channels, embed, cosine_prototype_scores)


BASELINES: dict[str, str] = {
    "pixels": "nearest neighbour on raw pixels",
    "efficientnet_lite0": "frozen ImageNet EfficientNet-Lite0, cosine prototypes",
}
