"""The feature cache of cached-trunk training: the frozen trunk's outputs of each domain's views, kept on disk.

:func:`domain_features` gives a domain's trunk features of its train views
(:mod:`edgefs.train.cached_views`) and val images, read from the cache folder
(:func:`features_cache_dir`) or computed once and written there atomically as float16. A cache
cut at an earlier block is carried on through the frozen blocks in between; a damaged one is
made again. Workstation side (PyTorch).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from edgefs.data.images import ImageSet, open_split
from edgefs.fileio import atomic_writer
from edgefs.train.cached_views import scene_views_of, views_of

if TYPE_CHECKING:
    from edgefs.train.cached import CachedTrainConfig, LiteSplit

CACHE_VERSION = 1



def features_cache_dir(config: CachedTrainConfig) -> Path:
    if config.cache:
        return Path(config.cache)
    root = os.environ.get("EDGEFS_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "edgefs") / "features"


@dataclass
class DomainFeatures:
    """One domain's cached trunk outputs.

    Attributes:
        name: the data folder's name.
        train: float16 ``(N, views, C, h, w)``; ``train_labels`` int64 ``(N,)``.
        val: float16 ``(M, C, h, w)`` of the clean ``val`` images; ``val_set`` their ImageSet.
    """

    name: str
    train: np.ndarray
    train_labels: np.ndarray
    val: np.ndarray
    val_set: ImageSet

    @property
    def by_class(self) -> list[np.ndarray]:
        return [np.flatnonzero(self.train_labels == c) for c in range(int(self.train_labels.max()) + 1)]


def _trunk_features(split: LiteSplit, images: np.ndarray, batch: int = 64) -> np.ndarray:
    rows = []
    with torch.inference_mode():
        for s in range(0, len(images), batch):
            rows.append(split.trunk(torch.from_numpy(np.ascontiguousarray(images[s : s + batch]))).half().numpy())
    return np.concatenate(rows)


def _advance(split: LiteSplit, feats: np.ndarray, start: int, batch: int = 256) -> np.ndarray:
    """float16 inputs of block ``start`` -> float16 inputs of block ``split.train_from`` (frozen blocks)."""
    net = split.backbone.net
    rows = []
    with torch.inference_mode():
        for s in range(0, len(feats), batch):
            x = torch.from_numpy(feats[s : s + batch].astype(np.float32))
            for idx in range(start, split.train_from):
                x = net._blocks[idx](x, drop_connect_rate=split._drop(idx))
            rows.append(x.half().numpy())
    return np.concatenate(rows)


def _read_cache(path: Path, log: Callable[[str], None]) -> dict[str, np.ndarray] | None:
    """The arrays of a feature cache file; None if there is none or it cannot be read (then removed)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        log(f"feature cache {path} cannot be read ({type(exc).__name__}: {exc}); removing it and computing again")
        path.unlink(missing_ok=True)
        return None


def _trunk_cache(split: LiteSplit, path_of: Callable[[int], Path], images: Callable[[], dict[str, np.ndarray]],
                 log: Callable[[str], None]) -> tuple[dict[str, np.ndarray], bool]:
    """Named arrays of trunk features from the cache file ``path_of(train_from)``, made if missing.

    ``images()`` gives uint8 arrays ``(..., S, S, 3)``; their features are ``(..., C, h, w)``. A cache
    cut at an earlier block is carried on through the frozen blocks in between, which costs far
    less than the trunk from the images (the first blocks run at the highest resolution).
    A cache file that cannot be read (damaged on disk, cut short by something other than edgefs,
    which writes it atomically) is derived data: it is said, removed and made again.
    Returns the arrays and whether they were computed now.
    """
    path = path_of(split.train_from)
    if (cached := _read_cache(path, log)) is not None:
        return cached, False
    earlier = next((k for k in range(split.train_from - 1, 0, -1) if path_of(k).is_file()), None)
    base = _read_cache(path_of(earlier), log) if earlier is not None else None
    out: dict[str, np.ndarray] = {}
    if earlier is not None and base is not None:
        for name, feats in base.items():
            flat = _advance(split, feats.reshape(-1, *feats.shape[-3:]), earlier)
            out[name] = flat.reshape(*feats.shape[:-3], *flat.shape[1:])
    else:
        for name, imgs in images().items():
            flat = _trunk_features(split, imgs.reshape(-1, *imgs.shape[-3:]))
            out[name] = flat.reshape(*imgs.shape[:-3], *flat.shape[1:])
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as f:
        np.savez(f, **out)
    return out, True


def domain_features(split: LiteSplit, data: str, config: CachedTrainConfig,
                    log: Callable[[str], None] = print) -> DomainFeatures:
    """Trunk features of ``data``'s train views and val images, from the cache or computed and cached.

    Scene views (``config.scene_views``) are cached in a file of their own beside the views', so
    adding them to a recipe reuses the views' cache; they come after the views on axis 1.
    """
    size = split.backbone.spec.input_size
    train = open_split(data, "train", 3, size)
    val = open_split(data, "val", 3, size)

    def cache_path(train_from: int) -> Path:
        key = json.dumps([CACHE_VERSION, config.backbone, size, train_from, config.views, config.seed,
                          train.fingerprint(), val.fingerprint()])
        return features_cache_dir(config) / f"{Path(data).name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"

    def scene_path(train_from: int) -> Path:
        base = cache_path(train_from)
        return base.with_name(f"{base.stem}-scene{config.scene_views}.npz")

    def made(what: str, arrays: dict[str, np.ndarray], since: float) -> None:
        n, v = arrays["train"].shape[:2]
        size_mib = sum(a.nbytes for a in arrays.values()) / 2**20
        log(f"cached trunk features of {Path(data).name}: {n} train images x {v} {what}, "
            f"{size_mib:.0f} MiB float16, {time.perf_counter() - since:.0f} s")

    t = time.perf_counter()
    arrays, new = _trunk_cache(split, cache_path,
                               lambda: {"train": views_of(train.images, config.views, config.seed),
                                        "val": val.images}, log)
    if new:
        made(f"views + {len(arrays['val'])} val", arrays, t)
    feats = arrays["train"]
    if config.scene_views:
        t = time.perf_counter()
        scene, new = _trunk_cache(split, scene_path,
                                  lambda: {"train": scene_views_of(train.images, config.scene_views, config.seed)},
                                  log)
        if new:
            made("scene views", scene, t)
        feats = np.concatenate([feats, scene["train"]], axis=1)
    return DomainFeatures(Path(data).name, feats, train.labels, arrays["val"], val)
