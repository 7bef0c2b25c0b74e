"""Accuracy over fixed episodes, computed from cached embeddings.

Batch-norm runs on running statistics at evaluation (TensorRT folds it), so an
image's embedding does not depend on the episode it appears in: each needed
image is embedded once and every episode is scored from the cache. This is
exact, not an approximation, and makes 600-episode 20-way protocols cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgefs.data.episodes import EpisodeList
from edgefs.data.images import ImageSet

# (support (S, D), support labels (S,), queries (Q, D), ways) -> scores (Q, ways)
ScoreFn = Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]
# uint8 (B, H, W, C) -> float32 (B, D)
EmbedFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class Accuracy:
    """Mean episode accuracy and its 95% confidence interval (normal approximation).

    Attributes:
        mean: mean of per-episode accuracies, in [0, 1].
        ci95: 1.96 * standard deviation / sqrt(episodes).
        episodes: number of episodes.
        per_group: mean accuracy per group (script) for within-group episodes.
    """

    mean: float
    ci95: float
    episodes: int
    per_group: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_episodes(cls, accs: np.ndarray, per_group: dict[str, float] | None = None) -> Accuracy:
        n = len(accs)
        ci = 1.96 * float(accs.std(ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
        return cls(float(accs.mean()), ci, n, per_group or {})

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} ± {100 * self.ci95:.2f}"


def needed_indices(lists: list[EpisodeList]) -> np.ndarray:
    """Sorted unique image indices used by any episode of ``lists``."""
    parts = [np.concatenate([e.support, e.query]) for lst in lists for e in lst.episodes]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def embedding_table(data: ImageSet, indices: np.ndarray, embed: EmbedFn, batch: int = 256) -> np.ndarray:
    """float32 ``(N images, D)`` with rows filled for ``indices`` (others zero)."""
    rows = []
    for start in range(0, len(indices), batch):
        rows.append(np.asarray(embed(data.images[indices[start : start + batch]]), np.float32))
    emb = np.concatenate(rows)
    table = np.zeros((len(data.images), emb.shape[1]), np.float32)
    table[indices] = emb
    return table


def evaluate_episodes(
    table: np.ndarray, data: ImageSet, episodes: EpisodeList, score: ScoreFn
) -> Accuracy:
    """Score every episode from the embedding ``table`` (one row per image of ``data``)."""
    accs = np.empty(len(episodes.episodes))
    groups: dict[str, list[float]] = {}
    for i, ep in enumerate(episodes.episodes):
        ways = len(ep.classes)
        scores = score(table[ep.support], ep.support_labels(), table[ep.query], ways)
        accs[i] = float((scores.argmax(1) == ep.query_labels()).mean())
        if episodes.protocol.within_group:
            groups.setdefault(data.class_groups[int(ep.classes[0])], []).append(accs[i])
    per_group = {g: float(np.mean(v)) for g, v in sorted(groups.items())}
    return Accuracy.from_episodes(accs, per_group)
