"""Choosing the colour recipe without the test splits: held-out models scored on the held-out domains' *val* splits.

Usage::

    python tools/lodo_val.py --runs A=runs/lodo-a B=runs/lodo-b --alphas 1,0.7,0.5 --out reports/lodo/choices

Each ``NAME=DIR`` is a folder of leave-one-domain-out runs (``DIR/<domain>/best.pt``, as
``tools/bench_lodo.py --runs DIR --train`` or ``edgefs train-cached`` with one domain held out
make them). For every domain under ``--domains`` the held-out model is scored on that domain's
``val`` split: classes disjoint from its ``test`` split, which ``tools/bench_lodo.py`` reports,
and never seen by the model (its training and model selection used the other domains only).
Beside it, frozen ImageNet Lite0 at 224 px, plain cosine and with the power transform and
centring. ``--alphas`` adds weight-space ensembles of each run's best tail with the ImageNet
tail (``alpha * trained + (1 - alpha) * ImageNet``; WiSE-FT), with the centre recomputed over
the training domains' clean train images as ``edgefs train-cached`` does.

Random 5-way 1-shot episodes (seeded, the same for every row of a domain, 2 queries per class).
Prints a markdown table and writes ``OUT/choices.json`` and ``OUT/choices.md``. A benchmark,
not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_lodo import pool_power, saved_center, train_table
from edgefs.export.pretrained import embed_images

from edgefs import config as cfgmod
from edgefs.backbones import build_backbone
from edgefs.data.images import open_split
from edgefs.train.cached import CachedTrainConfig, LiteSplit, train_center
from edgefs.train.cached_features import domain_features
from edgefs.train.checkpoint import load_checkpoint


def episodes(labels: np.ndarray, n: int, seed: int, ways: int = 5, queries: int = 2) -> list[tuple[Any, ...]]:
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    groups = [g for g in groups if len(g) >= 2]
    out = []
    for _ in range(n):
        support, query, truth = [], [], []
        for w, c in enumerate(rng.choice(len(groups), ways, replace=False)):
            g = rng.permutation(groups[c])
            support.append(g[0])
            query += list(g[1 : 1 + queries])
            truth += [w] * len(g[1 : 1 + queries])
        out.append((np.array(support), np.array(query), np.array(truth)))
    return out


def accuracy(table: np.ndarray, eps: list[tuple[Any, ...]], center: np.ndarray | None = None) -> float:
    t = table.astype(np.float64) - (0 if center is None else center)
    t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    return 100 * float(np.mean([((t[q] @ t[s].T).argmax(1) == y).mean() for s, q, y in eps]))


def mixed_tables(run: Path, domain: str, alphas: list[float], images: np.ndarray) -> dict[float, np.ndarray]:
    """Centred val embeddings of the held-out model at each alpha."""
    method, doc = load_checkpoint(run / "best.pt")
    config = cfgmod.resolve(CachedTrainConfig, run / "config.yaml")
    if doc.get("wise_alpha") is not None and alphas != [1.0]:
        raise SystemExit(f"{run}/best.pt is already a weight-space ensemble (wise_alpha {doc['wise_alpha']:g}); "
                         "score it with --alphas 1, or train with wise_alpha: 1 to sweep alpha")
    backbone = method.backbone.eval()
    trained = {k: v.clone() for k, v in backbone.state_dict().items()}
    imagenet = build_backbone(config.backbone, input_size=config.input_size, power=config.power).state_dict()
    out = {}
    for a in alphas:
        backbone.load_state_dict({k: (1 - a) * imagenet[k] + a * v if v.is_floating_point() else v
                                  for k, v in trained.items()})
        if a == 1:
            center = saved_center(method)
        else:
            split = LiteSplit(backbone, config.train_from)
            center = train_center(split, [domain_features(split, d, config, log=lambda _: None) for d in config.data])
        table = embed_images(backbone, images, batch=64)
        out[a] = table - (0 if center is None else center)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True, help="NAME=DIR folders of held-out runs (DIR/<domain>/best.pt)")
    p.add_argument("--domains", default="data/domains")
    p.add_argument("--alphas", default="1", help="weight-space ensemble weights of the trained tail (1: as trained)")
    p.add_argument("--power", type=float, default=0.5, help="power of the frozen transformed row")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="reports/lodo/choices")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    bad = [r for r in args.runs if "=" not in r or not r.split("=", 1)[0] or not r.split("=", 1)[1]]
    if bad:
        p.error(f"--runs takes NAME=DIR (e.g. 'lr 1e-4=runs/lodo'), got {', '.join(map(repr, bad))}")
    runs = dict(r.split("=", 1) for r in args.runs)
    try:
        alphas = [float(a) for a in args.alphas.split(",")]
    except ValueError:
        p.error(f"--alphas takes numbers in [0, 1] separated by commas, got {args.alphas!r}")
    if not all(0 <= a <= 1 for a in alphas):
        p.error(f"--alphas must lie in [0, 1], got {args.alphas!r}")
    root = Path(args.domains)
    domains = sorted(str(d) for d in root.iterdir() if (d / "train").is_dir() and (d / "val").is_dir())
    frozen = build_backbone("efficientnet_lite0").eval()
    # Each domain's train images embedded once, power-transformed as EfficientNetLite.pool does it.
    powered = {d: pool_power(train_table(frozen, d), args.power).astype(np.float64).mean(0) for d in domains}
    rows: dict[str, dict[str, float]] = {}
    for d in domains:
        name = Path(d).name
        val = open_split(d, "val", 3, 224)
        eps = episodes(val.labels, args.episodes, args.seed)
        table = embed_images(frozen, val.images, batch=64)
        others = [o for o in domains if o != d]
        powered_mean = np.mean([powered[o] for o in others], axis=0)
        rows.setdefault("frozen 224 px", {})[name] = accuracy(table, eps)
        rows.setdefault(f"frozen 224 px + power {args.power:g} + centring", {})[name] = accuracy(
            pool_power(table, args.power), eps, powered_mean)
        for label, folder in runs.items():
            run = Path(folder) / name
            if not (run / "best.pt").is_file():
                print(f"no held-out model {run}/best.pt; skipped", file=sys.stderr)
                continue
            config = cfgmod.resolve(CachedTrainConfig, run / "config.yaml")
            images = val.images if config.input_size == 224 else open_split(d, "val", 3, config.input_size).images
            for a, t in mixed_tables(run, d, alphas, images).items():
                rows.setdefault(f"{label}, alpha {a:g}", {})[name] = accuracy(t, eps)
        print(name, {r: round(v.get(name, float("nan")), 2) for r, v in rows.items()}, flush=True)
    names = [Path(d).name for d in domains]
    base = rows["frozen 224 px"]
    lines = [f"Held-out domains' val splits, 5-way 1-shot, {args.episodes} seeded episodes per domain (2 queries "
             "per class), accuracy %; 'vs frozen': mean minus frozen 224 px's mean, 'worst': the lowest per-domain "
             "difference to frozen 224 px.", "",
             "| model | " + " | ".join(names) + " | mean | vs frozen | worst |", "|---|" + "---|" * (len(names) + 3)]
    for row, per in rows.items():
        if len(per) != len(names):
            continue
        mean = float(np.mean([per[n] for n in names]))
        worst = min(per[n] - base[n] for n in names)
        lines.append(f"| {row} | " + " | ".join(f"{per[n]:.2f}" for n in names)
                     + f" | {mean:.2f} | {mean - float(np.mean(list(base.values()))):+.2f} | {worst:+.2f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "choices.json").write_text(json.dumps({"runs": runs, "alphas": alphas, "episodes": args.episodes,
                                                  "seed": args.seed, "rows": rows}, indent=2))
    (out / "choices.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
