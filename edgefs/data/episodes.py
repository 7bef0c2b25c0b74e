"""N-way K-shot Q-query episodes: a seeded sampler and fixed, saved evaluation lists.

Every method and every run is evaluated on the same saved episode list, so two
numbers in a report differ because the models differ, not the episodes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefs.data.images import ImageSet
from edgefs.errors import DataError
from edgefs.fileio import atomic_write_text

EPISODES_SCHEMA = 1


@dataclass(frozen=True)
class Protocol:
    """How episodes are drawn.

    Attributes:
        ways: classes per episode (N).
        shots: support images per class (K).
        queries: query images per class (Q).
        within_group: all classes of an episode from one group (one script).
    """

    ways: int
    shots: int
    queries: int
    within_group: bool = False

    @property
    def name(self) -> str:
        suffix = "-within" if self.within_group else ""
        return f"{self.ways}w{self.shots}s{suffix}"

    @classmethod
    def parse(cls, text: str, queries: int) -> Protocol:
        """``"5w1s"`` or ``"5w1s-within"`` -> Protocol."""
        body, _, mode = text.partition("-")
        try:
            ways, shots = body.lower().rstrip("s").split("w")
            return cls(int(ways), int(shots), queries, mode == "within")
        except ValueError:
            raise DataError(f"cannot read protocol {text!r}; write it like 5w1s or 20w5s-within") from None


@dataclass
class Episode:
    """Indices into an :class:`ImageSet`.

    Attributes:
        classes: int64 ``(N,)`` class ids; episode label i means ``classes[i]``.
        support: int64 ``(N*K,)`` image indices, class-major (K of class 0 first).
        query: int64 ``(N*Q,)`` image indices, class-major.
    """

    classes: np.ndarray
    support: np.ndarray
    query: np.ndarray

    def support_labels(self) -> np.ndarray:
        """int64 ``(N*K,)`` episode labels 0..N-1."""
        return np.repeat(np.arange(len(self.classes)), len(self.support) // len(self.classes))

    def query_labels(self) -> np.ndarray:
        """int64 ``(N*Q,)`` episode labels 0..N-1."""
        return np.repeat(np.arange(len(self.classes)), len(self.query) // len(self.classes))


class EpisodeSampler:
    """Draws episodes from an :class:`ImageSet`, reproducibly for a seed.

    Classes with fewer than K+Q images cannot give distinct support and query
    images; they are left out (reported through ``log``) unless
    ``allow_repeats`` is set, which training uses together with augmentation so
    that a repeated image is a different augmented view.
    """

    def __init__(
        self,
        data: ImageSet,
        protocol: Protocol,
        seed: int = 0,
        allow_repeats: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.protocol = protocol
        self.allow_repeats = allow_repeats
        self.rng = np.random.default_rng(seed)
        need = protocol.shots + protocol.queries
        order = np.argsort(data.labels, kind="stable")
        bounds = np.searchsorted(data.labels[order], np.arange(data.num_classes + 1))
        self.members = [order[bounds[c] : bounds[c + 1]] for c in range(data.num_classes)]
        min_count = 1 if allow_repeats else need
        eligible = [c for c in range(data.num_classes) if len(self.members[c]) >= min_count]
        left_out = data.num_classes - len(eligible)
        if left_out and log:
            log(
                f"{left_out} of {data.num_classes} classes have fewer than {need} images "
                f"(K={protocol.shots} + Q={protocol.queries}) and are left out of sampling"
            )
        groups: dict[str, list[int]] = {}
        for c in eligible:
            groups.setdefault(data.class_groups[c] if protocol.within_group else "", []).append(c)
        self.groups = {g: np.asarray(cs) for g, cs in groups.items() if len(cs) >= protocol.ways}
        if not self.groups:
            where = "one group" if protocol.within_group else "the data"
            largest = max((len(cs) for cs in groups.values()), default=0)
            raise DataError(
                f"{protocol.name} episodes need {protocol.ways} classes with at least {need} images "
                f"in {where}, but at most {largest} qualify. Use fewer ways, shots or queries."
            )
        names = sorted(self.groups)
        # Within-group episodes pick a group in proportion to its classes, so every
        # eligible class is equally likely to appear, as in mixed episodes.
        sizes = np.asarray([len(self.groups[g]) for g in names], np.float64)
        self._group_names = names
        self._group_p = sizes / sizes.sum()

    def sample(self) -> Episode:
        p = self.protocol
        group = self._group_names[self.rng.choice(len(self._group_names), p=self._group_p)]
        classes = self.rng.choice(self.groups[group], size=p.ways, replace=False)
        support, query = [], []
        for c in classes:
            pool = self.members[c]
            need = p.shots + p.queries
            if len(pool) >= need:
                pick = self.rng.choice(pool, size=need, replace=False)
            else:  # allow_repeats: every image once, then repeats
                pick = np.concatenate([self.rng.permutation(pool), self.rng.choice(pool, need - len(pool))])
                pick = self.rng.permutation(pick)
            support.append(pick[: p.shots])
            query.append(pick[p.shots :])
        return Episode(classes.astype(np.int64), np.concatenate(support), np.concatenate(query))

    def __iter__(self) -> Iterator[Episode]:
        while True:
            yield self.sample()


@dataclass
class EpisodeList:
    """A fixed list of episodes tied to one data set (by fingerprint)."""

    protocol: Protocol
    seed: int
    fingerprint: str
    episodes: list[Episode]

    def save(self, path: Path) -> None:
        doc = {
            "schema": EPISODES_SCHEMA,
            "protocol": self.protocol.__dict__,
            "seed": self.seed,
            "fingerprint": self.fingerprint,
            "episodes": [
                {"classes": e.classes.tolist(), "support": e.support.tolist(), "query": e.query.tolist()}
                for e in self.episodes
            ],
        }
        atomic_write_text(path, json.dumps(doc, separators=(",", ":")))

    @classmethod
    def load(cls, path: Path) -> EpisodeList:
        try:
            doc = json.loads(path.read_text())
            if doc.get("schema") != EPISODES_SCHEMA:
                raise DataError(f"episode list {path} has schema {doc.get('schema')}; delete it to redraw")
            episodes = [
                Episode(*(np.asarray(e[k], np.int64) for k in ("classes", "support", "query")))
                for e in doc["episodes"]
            ]
            return cls(Protocol(**doc["protocol"]), doc["seed"], doc["fingerprint"], episodes)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"episode list {path} is unreadable ({exc}); delete it to redraw") from exc


def episode_list_path(folder: Path, split: str, protocol: Protocol, count: int, seed: int) -> Path:
    mode = "within" if protocol.within_group else "mixed"
    name = f"{split}_{protocol.ways}w{protocol.shots}s{protocol.queries}q_{mode}_n{count}_seed{seed}.json"
    return folder / name


def fixed_episodes(
    data: ImageSet,
    protocol: Protocol,
    count: int,
    seed: int,
    path: Path | None,
    log: Callable[[str], None] | None = None,
) -> EpisodeList:
    """Load the saved episode list at ``path``, or draw and save it.

    Raises:
        DataError: the saved list belongs to different data (class names or counts changed).
    """
    if path is not None and path.is_file():
        saved = EpisodeList.load(path)
        if saved.fingerprint != data.fingerprint():
            raise DataError(
                f"episode list {path} was drawn from different data (fingerprint {saved.fingerprint}, "
                f"this data {data.fingerprint()}); delete it to redraw, or point at the original data"
            )
        return saved
    sampler = EpisodeSampler(data, protocol, seed=seed, log=log)
    episodes = EpisodeList(protocol, seed, data.fingerprint(), [sampler.sample() for _ in range(count)])
    if path is not None:
        episodes.save(path)
    return episodes


def episodes_cache_dir() -> Path:
    """``$EDGEFS_CACHE/episodes`` when ``EDGEFS_CACHE`` is set, else ``~/.cache/edgefs/episodes``."""
    root = os.environ.get("EDGEFS_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "edgefs") / "episodes"


def cached_episodes(
    data: ImageSet,
    protocol: Protocol,
    count: int,
    seed: int,
    split: str,
    data_dir: Path | None = None,
    cache: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> EpisodeList:
    """The fixed episode list for (data, split, protocol, count, seed), without writing into the data folder.

    A list already saved beside the data (``DATA/episodes/``, how earlier edgefs kept
    them and how reported figures were made) is read if present, never written. Otherwise
    the list lives in ``cache/<data fingerprint>/`` (default :func:`episodes_cache_dir`):
    drawn and saved the first time, reused afterwards, so every model is scored on the
    same episodes. Drawing is seeded, so a lost cache gives the same episodes again.

    Raises:
        DataError: the data cannot give the protocol (too few classes or images), or a
            saved list belongs to other data.
    """
    if data_dir is not None and data_dir.is_dir():
        legacy = episode_list_path(data_dir / "episodes", split, protocol, count, seed)
        if legacy.is_file():
            return fixed_episodes(data, protocol, count, seed, legacy, log)
    folder = (cache or episodes_cache_dir()) / data.fingerprint()
    path = episode_list_path(folder, split, protocol, count, seed)
    if path.is_file():
        return fixed_episodes(data, protocol, count, seed, path, log)
    episodes = fixed_episodes(data, protocol, count, seed, None, log)
    try:
        episodes.save(path)
    except OSError as exc:  # a read-only home: the seeded draw is reproducible anyway
        if log:
            log(f"could not cache episode list at {path} ({exc}); continuing without it")
    return episodes
