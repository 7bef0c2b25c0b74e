"""Cross-set episodes: support images from one folder, queries from another (classes matched by name).

For example, classes enrolled from product photos and tested on camera captures.
The two sets are joined into one :class:`ImageSet` over the classes they share;
an episode's support indices point into the first part, its query indices into
the second, so the cached-embedding evaluation (:mod:`edgefs.eval.episodic`)
scores them unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgefs.data.episodes import Episode, EpisodeList, Protocol
from edgefs.data.images import ImageSet
from edgefs.errors import DataError


@dataclass
class CrossSet:
    """Support and query images of the shared classes, in one set.

    Attributes:
        data: the joined set; ``data.class_names`` are the shared classes (sorted).
        is_support: bool ``(N,)``, True for images from the support folder.
        only_support: classes only the support folder has.
        only_queries: classes only the query folder has.
    """

    data: ImageSet
    is_support: np.ndarray
    only_support: list[str]
    only_queries: list[str]


def join_sets(support: ImageSet, queries: ImageSet) -> CrossSet:
    """Join two sets over the class names they share.

    Raises:
        DataError: no class name is in both (the message shows some of each side's names).
    """
    shared = sorted(set(support.class_names) & set(queries.class_names))
    if not shared:
        raise DataError(
            f"the support set ({support.root}) and the query set ({queries.root}) share no class names; "
            f"support has e.g. {', '.join(support.class_names[:5])}, queries e.g. "
            f"{', '.join(queries.class_names[:5])}. Name each class's folder the same in both"
        )
    if support.images.shape[1:] != queries.images.shape[1:]:
        raise DataError(f"support images are {support.images.shape[1:]} and query images "
                        f"{queries.images.shape[1:]}; evaluate a model with a fixed input size")
    parts, labels, flags = [], [], []
    for side, flag in ((support, True), (queries, False)):
        index = {n: i for i, n in enumerate(side.class_names)}
        for new, name in enumerate(shared):
            rows = np.flatnonzero(side.labels == index[name])
            parts.append(side.images[rows])
            labels.append(np.full(len(rows), new, np.int64))
            flags.append(np.full(len(rows), flag))
    data = ImageSet(np.concatenate(parts), np.concatenate(labels), shared, [""] * len(shared),
                    root=f"{support.root} -> {queries.root}")
    return CrossSet(data, np.concatenate(flags), sorted(set(support.class_names) - set(shared)),
                    sorted(set(queries.class_names) - set(shared)))


def cross_episodes(cross: CrossSet, protocol: Protocol, count: int, seed: int,
                   log: Callable[[str], None] | None = None) -> EpisodeList:
    """``count`` seeded episodes: K support images from the support side, Q queries from the query side.

    Raises:
        DataError: fewer than N shared classes have K support and Q query images.
    """
    if protocol.within_group:
        raise DataError(f"{protocol.name}: cross-set episodes have no groups; use a mixed protocol")
    d = cross.data
    sup = [np.flatnonzero((d.labels == c) & cross.is_support) for c in range(d.num_classes)]
    qry = [np.flatnonzero((d.labels == c) & ~cross.is_support) for c in range(d.num_classes)]
    eligible = [c for c in range(d.num_classes) if len(sup[c]) >= protocol.shots and len(qry[c]) >= protocol.queries]
    if len(eligible) < protocol.ways:
        raise DataError(
            f"{protocol.name} cross-set episodes need {protocol.ways} shared classes with at least "
            f"{protocol.shots} support and {protocol.queries} query images, but {len(eligible)} qualify"
        )
    if log and len(eligible) < d.num_classes:
        log(f"{d.num_classes - len(eligible)} of {d.num_classes} shared classes have too few images for "
            f"{protocol.name} and are left out")
    rng = np.random.default_rng(seed)
    episodes = []
    for _ in range(count):
        classes = rng.choice(np.asarray(eligible), size=protocol.ways, replace=False)
        s = [rng.choice(sup[c], protocol.shots, replace=False) for c in classes]
        q = [rng.choice(qry[c], protocol.queries, replace=False) for c in classes]
        episodes.append(Episode(classes.astype(np.int64), np.concatenate(s), np.concatenate(q)))
    return EpisodeList(protocol, seed, d.fingerprint(), episodes)
