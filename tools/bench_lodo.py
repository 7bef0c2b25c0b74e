"""Leave-one-domain-out: frozen ImageNet Lite0 vs the same network meta-trained on the other domains.

Usage::

    python tools/bench_lodo.py --train                 # train the missing held-out models, then the table
    python tools/bench_lodo.py --domains data/domains --episodes 600 --out reports/lodo
    python tools/bench_lodo.py --train --only cards,flags --out /tmp/lodo-cards-flags

For each domain D under ``--domains`` (folders with train/val/test), a model is
meta-trained on the *other* domains' ``train`` splits, picked on their ``val``
splits (``edgefs train-cached`` with ``--config``, into ``RUNS/D/best.pt``), and
tested on D's ``test`` split (``--only A,B``: only the named domains are held out, trained
and scored; every other domain still trains their models and gives the centring). Every
row scores the same fixed episodes (the seeded lists ``edgefs eval`` uses) through the
device's ``PrototypeHead`` (cosine):

* ``frozen 224 px``: ImageNet weights at the native size, plain cosine;
* ``frozen 224 px + centring``: the same, minus the mean feature of the other
  domains' train images (SimpleShot CL2N with the training domains as base classes);
* ``frozen 224 px + power P + centring``: the same with the meta-trained model's
  embedding transform (the pooled feature to the power P, then centred): what the
  transform gives without any training (only when the config sets ``power``);
* ``frozen S px``: ImageNet weights at the training input size, plain cosine (what a
  smaller input costs before any training; only when S is not 224);
* ``meta-trained S px``: the held-out model with its own head, as it is deployed
  (centred on the centre it saved when its config sets ``centered``);
* ``meta-trained S px + centring``: a model trained without ``centered``, minus its
  mean feature over the training domains' train images (only then).

Prints a markdown table (per domain and the mean over domains, accuracy % with
the 95% CI) and writes ``OUT/lodo.json`` and ``OUT/lodo.md``. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_pretrained import head_scores  # the same device-head scoring as the frozen-backbone table (tools/)
from edgefs.export.pretrained import embed_images

from edgefs import config as cfgmod
from edgefs.backbones import build_backbone
from edgefs.backbones.efficientnet_lite import POWER_EPS
from edgefs.data.episodes import Protocol, cached_episodes
from edgefs.data.images import open_split
from edgefs.errors import DataError
from edgefs.eval.episodic import Accuracy
from edgefs.train.cached import CachedTrainConfig, train_cached
from edgefs.train.checkpoint import load_checkpoint


def evaluate(table: np.ndarray, lst: Any, score: Any) -> tuple[Accuracy, np.ndarray]:
    accs = np.empty(len(lst.episodes))
    for i, ep in enumerate(lst.episodes):
        s = score(table[ep.support], ep.support_labels(), table[ep.query], len(ep.classes))
        accs[i] = float((s.argmax(1) == ep.query_labels()).mean())
    return Accuracy.from_episodes(accs), accs


def embed_split(backbone: Any, data: str, split: str) -> np.ndarray:
    images = open_split(data, split, 3, backbone.spec.input_size).images
    return embed_images(backbone, images, batch=64)


def train_table(backbone: Any, domain: str, count: int = 128, seed: int = 1) -> np.ndarray:
    """float32 ``(n, D)`` embeddings of up to ``count`` of ``domain``'s train images (seeded choice)."""
    images = open_split(domain, "train", 3, backbone.spec.input_size).images
    pick = np.random.default_rng(seed).choice(len(images), min(count, len(images)), replace=False)
    return embed_images(backbone, images[np.sort(pick)], batch=64)


def train_mean(backbone: Any, domain: str, count: int = 128, seed: int = 1) -> np.ndarray:
    """float64 ``(D,)`` mean feature of up to ``count`` of ``domain``'s train images (seeded choice)."""
    return train_table(backbone, domain, count, seed).astype(np.float64).mean(0)


def pool_power(table: np.ndarray, power: float) -> np.ndarray:
    """Plain pooled embeddings -> those of a backbone built with ``power`` (EfficientNetLite.pool)."""
    return table if power == 1 else ((table.astype(np.float64) + POWER_EPS) ** power).astype(np.float32)


def saved_center(method: Any) -> np.ndarray | None:
    """The centre a centred model saved (its device head subtracts it), else None."""
    return method.center.detach().numpy().astype(np.float32) if getattr(method, "centered", False) else None


def train_holdout(config_path: str, held: str, domains: list[str], runs: Path, budget: float | None,
                  log: Any) -> Path:
    overrides: dict[str, Any] = {"data": [d for d in domains if d != held], "out": str(runs / Path(held).name)}
    if budget is not None:
        overrides["time_budget_min"] = budget
    config = cfgmod.resolve(CachedTrainConfig, config_path, overrides)
    return train_cached(config, overwrite=True, log=log)


def held_out(domains: list[str], only: str | None) -> list[str]:
    """The domains to hold out: all of ``domains``, or those ``only`` names (comma-separated, in its order).

    Raises:
        ValueError: ``only`` names no domain, or a name that is not one of ``domains``.
    """
    if only is None:
        return domains
    by_name = {Path(d).name: d for d in domains}
    names = list(dict.fromkeys(n.strip() for n in only.split(",") if n.strip()))
    unknown = [n for n in names if n not in by_name]
    if unknown or not names:
        what = f"unknown domain{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}" if unknown \
            else "no domain named"
        raise ValueError(f"--only: {what}; the domains here are {', '.join(sorted(by_name))}")
    return [by_name[n] for n in names]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--domains", default="data/domains", help="folder of domains, each with train/val/test")
    p.add_argument("--config", default="configs/protonet_lite0_colour.yaml", help="training config (YAML)")
    p.add_argument("--runs", default="runs/lodo", help="held-out models: RUNS/<domain>/best.pt")
    p.add_argument("--train", action="store_true", help="train the held-out models that are missing")
    p.add_argument("--retrain", action="store_true", help="train every held-out model again")
    p.add_argument("--only", help="comma-separated domain names (e.g. cards,flags): hold out, train and score "
                   "only these (default: every domain)")
    p.add_argument("--time-budget", type=float, help="time cap in minutes per training run (default: the config's; "
                   "a run it stops is not the recipe's model and says so)")
    p.add_argument("--protocols", default="5w1s,5w5s,20w1s")
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="reports/lodo")
    args = p.parse_args(argv)
    root = Path(args.domains)
    domains = sorted(str(d) for d in root.iterdir() if (d / "train").is_dir() and (d / "test").is_dir())
    if len(domains) < 2:
        print(f"{root} holds {len(domains)} domains with train/ and test/; build them with 'edgefs data <domain>'",
              file=sys.stderr)
        return 2
    try:
        held = held_out(domains, args.only)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    runs = Path(args.runs)
    t_start = time.perf_counter()
    train_s: dict[str, float] = {}
    for d in held:
        ckpt = runs / Path(d).name / "best.pt"
        if args.retrain or (args.train and not ckpt.is_file()):
            t = time.perf_counter()
            train_holdout(args.config, d, domains, runs, args.time_budget, lambda s: print(s, flush=True))
            train_s[Path(d).name] = time.perf_counter() - t
    missing = [Path(d).name for d in held if not (runs / Path(d).name / "best.pt").is_file()]
    if missing:
        print(f"no held-out model for {', '.join(missing)} under {runs}; pass --train", file=sys.stderr)
        return 2

    frozen224 = build_backbone("efficientnet_lite0").eval()
    train_config = cfgmod.resolve(CachedTrainConfig, args.config)
    train_size, power = train_config.input_size, train_config.power
    frozen_small = build_backbone("efficientnet_lite0", input_size=train_size).eval() if train_size != 224 else None
    protocols = [Protocol.parse(n, 1) for n in args.protocols.split(",")]
    powered = f"frozen 224 px + power {power:g} + centring"
    names = ["frozen 224 px", "frozen 224 px + centring"]
    names += [powered] if power != 1 else []
    names += [f"frozen {train_size} px"] if frozen_small is not None else []
    names += [f"meta-trained {train_size} px"]
    names += [f"meta-trained {train_size} px + centring"] if not train_config.centered else []
    rows: dict[str, dict[str, Any]] = {n: {} for n in names}
    per_episode: dict[str, dict[str, dict[str, list[float]]]] = {r: {} for r in rows}
    skipped: dict[str, list[str]] = {}
    # Each domain's train images embedded once; the power transform applied to them exactly as
    # EfficientNetLite.pool applies it.
    base_tables = {d: train_table(frozen224, d) for d in domains}
    means = {d: t.astype(np.float64).mean(0) for d, t in base_tables.items()}
    powered_means = {d: pool_power(t, power).astype(np.float64).mean(0) for d, t in base_tables.items()}
    for d in held:
        name = Path(d).name
        test = open_split(d, "test", 3, 32)  # episodes depend on names and counts only
        lists = {}
        for proto in protocols:
            try:
                lists[proto.name] = cached_episodes(test, proto, args.episodes, args.seed, "test", Path(d))
            except DataError as exc:
                skipped.setdefault(name, []).append(f"{proto.name} ({exc})")
        others = [o for o in domains if o != d]
        method, _ = load_checkpoint(runs / name / "best.pt")
        trained = method.backbone.eval()
        trained_table = embed_split(trained, d, "test")
        frozen_table = embed_split(frozen224, d, "test")
        # The training domains as base classes, equal weight each: the held-out domain is not looked at.
        tables = {
            "frozen 224 px": (frozen_table, None),
            "frozen 224 px + centring": (frozen_table, np.mean([means[o] for o in others], axis=0).astype(np.float32)),
            powered: (pool_power(frozen_table, power),
                      np.mean([powered_means[o] for o in others], axis=0).astype(np.float32)),
            f"meta-trained {train_size} px": (trained_table, saved_center(method)),
        }
        if frozen_small is not None:
            tables[f"frozen {train_size} px"] = (embed_split(frozen_small, d, "test"), None)
        if not train_config.centered:
            trained_mean = np.mean([train_mean(trained, o) for o in others], axis=0).astype(np.float32)
            tables[f"meta-trained {train_size} px + centring"] = (trained_table, trained_mean)
        for row in rows:
            table, center = tables[row]
            rows[row][name] = {}
            per_episode[row][name] = {}
            for pname, lst in lists.items():
                acc, accs = evaluate(table, lst, head_scores(center))
                rows[row][name][pname] = {"mean": acc.mean, "ci95": acc.ci95, "episodes": acc.episodes}
                per_episode[row][name][pname] = accs.tolist()
                print(f"{name:8s} {row:26s} {pname:6s} {acc}%", flush=True)
    # Mean over domains: the per-episode accuracies of each domain averaged episode by episode (same
    # episode index across domains is independent), so the CI is that of the mean of domain means.
    for row in rows:
        rows[row]["mean"] = {}
        for proto in protocols:
            have = [n for n in per_episode[row] if proto.name in per_episode[row][n]]
            if not have:
                continue
            stacked = np.mean([per_episode[row][n][proto.name] for n in have], axis=0)
            acc = Accuracy.from_episodes(stacked)
            rows[row]["mean"][proto.name] = {"mean": acc.mean, "ci95": acc.ci95, "episodes": acc.episodes,
                                             "domains": have}
    report = {"domains": [Path(d).name for d in held], "training_domains": [Path(d).name for d in domains],
              "protocols": [q.name for q in protocols],
              "episodes": args.episodes, "seed": args.seed, "config": cfgmod.to_dict(
                  cfgmod.resolve(CachedTrainConfig, args.config)), "rows": rows, "skipped": skipped,
              "train_s": train_s, "wall_s": time.perf_counter() - t_start,
              "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lodo.json").write_text(json.dumps(report, indent=2))
    (out / "lodo.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {out / 'lodo.md'} ({report['wall_s']:.0f} s)")
    return 0


def markdown(report: dict[str, Any]) -> str:
    protocols = report["protocols"]
    lines = [f"Leave-one-domain-out, EfficientNet-Lite0, cosine prototypes (device PrototypeHead); "
             f"{report['episodes']} fixed test episodes per protocol (seed {report['seed']}, 1 query/class), "
             "every row on the same episodes. Accuracy % ± 95% CI. 'mean' averages the domains episode by "
             "episode over the domains that allow the protocol."
             + (f" Held out and scored: {', '.join(report['domains'])} only (of "
                f"{', '.join(report['training_domains'])})."
                if report.get("training_domains", report["domains"]) != report["domains"] else ""), "",
             "| held-out domain | model | " + " | ".join(protocols) + " |",
             "|---|---|" + "---|" * len(protocols)]
    for name in [*report["domains"], "mean"]:
        for row, per in report["rows"].items():
            accs = per.get(name, {})
            cells = [f"{100 * accs[p]['mean']:.2f} ± {100 * accs[p]['ci95']:.2f}" if p in accs else "skipped"
                     for p in protocols]
            label = f"**{name}**" if name == "mean" else name
            lines.append(f"| {label} | {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
