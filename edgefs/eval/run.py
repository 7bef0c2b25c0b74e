"""``edgefs eval``: accuracy tables over fixed episodes, with baselines, as JSON and markdown."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgefs import config as cfg
from edgefs.backbones import build_backbone
from edgefs.data.episodes import EpisodeList, Protocol, episode_list_path, fixed_episodes
from edgefs.data.images import ImageSet, open_split
from edgefs.device import check_device
from edgefs.errors import ConfigError
from edgefs.eval.baselines import (
    BASELINES,
    Evaluatee,
    frozen_backbone_baseline,
    pixels_baseline,
)
from edgefs.eval.episodic import Accuracy, embedding_table, evaluate_episodes, needed_indices
from edgefs.train.checkpoint import load_checkpoint
from edgefs.train.trainer import embedder

DEFAULT_PROTOCOLS = ["5w1s", "5w5s", "20w1s", "20w5s", "5w1s-within", "5w5s-within"]


@dataclass
class EvalConfig:
    """What to evaluate and on which episodes.

    Attributes:
        models: checkpoint paths, or ``baseline:NAME`` (see ``BASELINES``).
        data: data source (see :func:`edgefs.data.images.open_split`).
        split: split to evaluate on.
        protocols: e.g. ``5w1s``, ``20w5s``, ``5w1s-within`` (all classes from one script).
        episodes: episodes per protocol (fixed, saved beside the data).
        queries: query images per class.
        seed: seed of the episode lists (same seed, same episodes).
        out: folder for ``eval.json``, ``eval.md`` and ``config.yaml``.
    """

    models: list[str] = field(default_factory=list)
    data: str = ""
    split: str = "test"
    protocols: list[str] = field(default_factory=lambda: list(DEFAULT_PROTOCOLS))
    episodes: int = 600
    queries: int = 1
    seed: int = 0
    out: str = ""
    device: str = "cpu"
    strict_data: bool = False


def _checkpoint_evaluatee(path: str, device: torch.device) -> Evaluatee:
    method, _ = load_checkpoint(path)
    method.to(device)
    spec = method.backbone.spec
    return Evaluatee(f"{Path(path).parent.name}/{Path(path).name}", spec.input_size, spec.in_channels,
                     embedder(method, device), method.score_embeddings)


def _frozen_embed(name: str, device: torch.device) -> tuple[int, int, Callable[..., Any]]:
    backbone = build_backbone(name).to(device).eval()

    def embed(images: np.ndarray) -> np.ndarray:  # uint8 (B, H, W, C) -> float32 (B, D)
        with torch.inference_mode():
            out = [backbone(torch.from_numpy(images[s : s + 64]).to(device)).cpu().numpy()
                   for s in range(0, len(images), 64)]
        return np.concatenate(out)

    return backbone.spec.input_size, backbone.spec.in_channels, embed


def resolve_model(ref: str, device: torch.device) -> Evaluatee:
    if ref.startswith("baseline:"):
        name = ref.partition(":")[2]
        if name == "pixels":
            return pixels_baseline()
        if name in BASELINES:
            return frozen_backbone_baseline(name, lambda n: _frozen_embed(n, device))
        raise ConfigError(f"unknown baseline {name!r}; known: {', '.join(sorted(BASELINES))}")
    return _checkpoint_evaluatee(ref, device)


def evaluate(config: EvalConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate every model on the same fixed episodes; write and return the results."""
    if not config.models:
        raise ConfigError("nothing to evaluate: give a checkpoint or baseline:NAME")
    if not config.data:
        raise ConfigError("no data given; pass --data DIR")
    for name in ("episodes", "queries"):  # from a YAML file too: 0 would report nan +- nan
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
    device = torch.device(check_device(config.device))
    protocols = [Protocol.parse(p, config.queries) for p in config.protocols]
    if any(p.ways < 2 or p.shots < 1 for p in protocols):
        raise ConfigError(f"protocols need at least 2 ways and 1 shot, got {', '.join(config.protocols)}")
    models = [resolve_model(m, device) for m in config.models]
    out = Path(config.out) if config.out else Path("reports") / "eval"
    data_dir = Path(config.data)
    episodes_dir = data_dir / "episodes" if data_dir.is_dir() else out / "episodes"

    cache: dict[tuple[int, int | None], ImageSet] = {}

    def data_for(model: Evaluatee) -> ImageSet:
        key = (model.channels, model.input_size)
        if key not in cache:
            cache[key] = open_split(config.data, config.split, model.channels, model.input_size,
                                    config.strict_data, log)
        return cache[key]

    reference = data_for(models[0])
    lists: dict[str, EpisodeList] = {}
    for p in protocols:
        path = episode_list_path(episodes_dir, config.split, p, config.episodes, config.seed)
        lists[p.name] = fixed_episodes(reference, p, config.episodes, config.seed, path, log)
    results: dict[str, dict[str, Accuracy]] = {}
    timings: dict[str, float] = {}
    for model in models:
        data = data_for(model)
        t0 = time.perf_counter()
        table = embedding_table(data, needed_indices(list(lists.values())), model.embed)
        results[model.name] = {}
        for name, lst in lists.items():
            if lst.fingerprint != data.fingerprint():
                raise ConfigError(f"{model.name} sees different images of {config.data}; check unreadable files")
            results[model.name][name] = acc = evaluate_episodes(table, data, lst, model.score)
            log(f"{model.name:32s} {name:12s} {acc}%")
        timings[model.name] = time.perf_counter() - t0

    report = {
        "data": config.data, "split": config.split, "episodes": config.episodes, "queries": config.queries,
        "seed": config.seed,
        "classes": reference.num_classes, "groups": len(set(reference.class_groups)),
        "results": {m: {p: a.__dict__ for p, a in r.items()} for m, r in results.items()},
        "seconds": timings,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    (out / "eval.md").write_text(markdown_report(report))
    cfg.save(config, out / "config.yaml")
    log(f"wrote {out / 'eval.md'} and {out / 'eval.json'}")
    return report


def markdown_report(report: dict[str, Any]) -> str:
    """One row per model, one column per protocol: accuracy % ± 95% CI."""
    results = report["results"]
    protocols = list(next(iter(results.values())))
    lines = [
        f"Split `{report['split']}` of `{report['data']}`: {report['classes']} classes in "
        f"{report['groups']} groups; {report['episodes']} fixed episodes per protocol, "
        f"{report['queries']} query image(s) per class, seed {report['seed']}. Accuracy % ± 95% CI.",
        "",
        "| model | " + " | ".join(protocols) + " |",
        "|---|" + "---|" * len(protocols),
    ]
    for model, row in results.items():
        cells = [f"{100 * row[p]['mean']:.2f} ± {100 * row[p]['ci95']:.2f}" for p in protocols]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    within = [p for p in protocols if p.endswith("-within")]
    if within:
        first_model, first = next(iter(results.items()))
        per = first[within[0]]["per_group"]
        if per:
            hardest = sorted(per.items(), key=lambda kv: kv[1])[:8]
            lines += ["", f"Hardest groups for {first_model}, {within[0]}: "
                      + ", ".join(f"{g} {100 * a:.1f}" for g, a in hardest)]
    return "\n".join(lines) + "\n"
