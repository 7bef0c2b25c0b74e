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
from edgefs.data.episodes import EpisodeList, Protocol, cached_episodes
from edgefs.data.images import ImageSet, open_split
from edgefs.device import check_device
from edgefs.errors import ConfigError, DataError
from edgefs.eval.baselines import (
    BASELINES,
    Evaluatee,
    frozen_backbone_baseline,
    pixels_baseline,
)
from edgefs.eval.cross import cross_episodes, join_sets
from edgefs.eval.episodic import Accuracy, embedding_table, evaluate_episodes, needed_indices
from edgefs.fileio import OutputOverInput, check_output_not_input
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
        support_data, query_data: cross-set protocol: support images from one folder,
            queries from another, classes matched by folder name (instead of ``data``).
        domains: a folder of domains ``ROOT/<domain>/{train,val,test}/``: every model is
            evaluated on ``domain_split`` of each domain, reported per domain and as the mean.
        domain_split: the split evaluated in each domain.
        model_per_domain: ``{domain: model}``: a model meta-trained without that domain,
            evaluated on it only (leave-one-domain-out); reported as one row.
        episodes_cache: where fixed episode lists are kept (default ``~/.cache/edgefs/episodes``).
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
    support_data: str = ""
    query_data: str = ""
    domains: str = ""
    domain_split: str = "test"
    model_per_domain: dict[str, str] = field(default_factory=dict)
    episodes_cache: str = ""


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


def _bundle_evaluatee(ref: str) -> Evaluatee:
    """A bundle evaluated as the device runs it: ONNX Runtime embeddings and the bundle's own head."""
    from edgefs.heads import build_head
    from edgefs.runtime.bundle import read_bundle
    from edgefs.runtime.select import open_engine

    bundle = read_bundle(ref)
    engine = open_engine(bundle, backend="onnxruntime", log=lambda _: None)
    dim = bundle.manifest.embedding_dim

    def score(support: np.ndarray, labels: np.ndarray, queries: np.ndarray, ways: int) -> np.ndarray:
        head = build_head(bundle.head, dim)
        head.add_classes({str(c): support[labels == c] for c in range(ways)})
        return head.scores(queries)

    size = bundle.manifest.input_size[0]
    return Evaluatee(f"{Path(ref).name} (bundle, {bundle.head.head_type} head)", size, 3,
                     lambda images: engine.embed(np.ascontiguousarray(images)), score)


def resolve_model(ref: str, device: torch.device) -> Evaluatee:
    if Path(ref).is_dir() and (Path(ref) / "manifest.json").is_file():
        return _bundle_evaluatee(ref)
    if ref.startswith("baseline:"):
        name = ref.partition(":")[2]
        if name == "pixels":
            return pixels_baseline()
        if name in BASELINES:
            return frozen_backbone_baseline(name, lambda n: _frozen_embed(n, device))
        raise ConfigError(f"unknown baseline {name!r}; known: {', '.join(sorted(BASELINES))}")
    return _checkpoint_evaluatee(ref, device)


def _lists_for(data: ImageSet, protocols: list[Protocol], config: EvalConfig, data_dir: Path | None,
               log: Callable[[str], None]) -> tuple[dict[str, EpisodeList], dict[str, str]]:
    """Fixed episode lists for the protocols this data allows, and why each other one was skipped."""
    lists: dict[str, EpisodeList] = {}
    skipped: dict[str, str] = {}
    cache = Path(config.episodes_cache) if config.episodes_cache else None
    for p in protocols:
        try:
            lists[p.name] = cached_episodes(data, p, config.episodes, config.seed, config.split, data_dir, cache, log)
        except DataError as exc:
            skipped[p.name] = str(exc)
            log(f"skipped {p.name}: {exc}")
    return lists, skipped


def _score_models(models: list[Evaluatee], data_for: Callable[[Evaluatee], ImageSet], lists: dict[str, EpisodeList],
                  where: str, log: Callable[[str], None]) -> tuple[dict[str, dict[str, Accuracy]], dict[str, float]]:
    results: dict[str, dict[str, Accuracy]] = {}
    timings: dict[str, float] = {}
    for model in models:
        data = data_for(model)
        t0 = time.perf_counter()
        results[model.name] = {}
        if lists:
            table = embedding_table(data, needed_indices(list(lists.values())), model.embed)
        for name, lst in lists.items():
            if lst.fingerprint != data.fingerprint():
                raise ConfigError(f"{model.name} sees different images of {where}; check unreadable files")
            results[model.name][name] = acc = evaluate_episodes(table, data, lst, model.score)
            log(f"{model.name:32s} {name:12s} {acc}%")
        timings[model.name] = time.perf_counter() - t0
    return results, timings


def _opener(source: str, split: str, config: EvalConfig, log: Callable[[str], None]) -> Callable[[Evaluatee], ImageSet]:
    cache: dict[tuple[int, int | None], ImageSet] = {}

    def data_for(model: Evaluatee) -> ImageSet:
        key = (model.channels, model.input_size)
        if key not in cache:
            cache[key] = open_split(source, split, model.channels, model.input_size, config.strict_data, log)
        return cache[key]

    return data_for


def _evaluate_one(models: list[Evaluatee], source: str, split: str, protocols: list[Protocol],
                  config: EvalConfig, log: Callable[[str], None]) -> dict[str, Any]:
    """Every model on the protocols one data source allows (skipped ones named with the reason)."""
    data_for = _opener(source, split, config, log)
    reference = data_for(models[0])
    data_dir = Path(source) if Path(source).is_dir() else None
    lists, skipped = _lists_for(reference, protocols, replace_split(config, split), data_dir, log)
    results, timings = _score_models(models, data_for, lists, source, log)
    return {"data": source, "split": split, "classes": reference.num_classes,
            "groups": len(set(reference.class_groups)), "skipped": skipped,
            "results": {m: {p: a.__dict__ for p, a in r.items()} for m, r in results.items()}, "seconds": timings}


def replace_split(config: EvalConfig, split: str) -> EvalConfig:
    from dataclasses import replace

    return replace(config, split=split)


def _evaluate_cross(models: list[Evaluatee], protocols: list[Protocol], config: EvalConfig,
                    log: Callable[[str], None]) -> dict[str, Any]:
    """Support from ``config.support_data``, queries from ``config.query_data`` (classes matched by name)."""
    joined: dict[tuple[int, int | None], Any] = {}

    def cross_for(model: Evaluatee) -> Any:
        key = (model.channels, model.input_size)
        if key not in joined:
            sides = [open_split(d, config.split, model.channels, model.input_size, config.strict_data, log)
                     for d in (config.support_data, config.query_data)]
            joined[key] = join_sets(*sides)
        return joined[key]

    first = cross_for(models[0])
    if first.only_support or first.only_queries:
        log(f"classes matched by name: {first.data.num_classes} shared; only in support: "
            f"{len(first.only_support)}, only in queries: {len(first.only_queries)}")
    lists: dict[str, EpisodeList] = {}
    skipped: dict[str, str] = {}
    for p in protocols:
        try:
            lists[p.name] = cross_episodes(first, p, config.episodes, config.seed, log)
        except DataError as exc:
            skipped[p.name] = str(exc)
            log(f"skipped {p.name}: {exc}")
    results, timings = _score_models(models, lambda m: cross_for(m).data, lists,
                                     f"{config.support_data} / {config.query_data}", log)
    return {"data": f"support {config.support_data}, queries {config.query_data}", "split": config.split,
            "classes": first.data.num_classes, "groups": 1, "skipped": skipped,
            "only_support": first.only_support, "only_queries": first.only_queries,
            "results": {m: {p: a.__dict__ for p, a in r.items()} for m, r in results.items()}, "seconds": timings}


def domain_names(root: Path, split: str) -> list[str]:
    """Sub-folders of ``root`` that have a ``split`` folder, sorted.

    Raises:
        DataError: ``root`` is missing or holds no such domain.
    """
    if not root.is_dir():
        raise DataError(f"domains folder {root} does not exist; build domains with 'edgefs data <domain> --out "
                        f"{root}/<domain>'")
    names = sorted(d.name for d in root.iterdir() if (d / split).is_dir())
    if not names:
        raise DataError(f"{root} holds no domain with a '{split}' split (expected {root}/<domain>/{split}/<class>/)")
    return names


def _mean_over_domains(per_domain: dict[str, dict[str, Any]], model: str, protocols: list[str]) -> dict[str, Any]:
    """Mean of per-domain accuracies per protocol; CI of the mean from the per-domain CIs (independent)."""
    out: dict[str, Any] = {}
    for p in protocols:
        accs = [d["results"][model][p] for d in per_domain.values() if p in d["results"].get(model, {})]
        if not accs:
            continue
        n = len(accs)
        out[p] = {"mean": float(np.mean([a["mean"] for a in accs])),
                  "ci95": float(np.sqrt(sum(a["ci95"] ** 2 for a in accs)) / n),
                  "domains": n, "episodes": int(sum(a["episodes"] for a in accs))}
    return out


def _evaluate_domains(models: list[Evaluatee], protocols: list[Protocol], config: EvalConfig,
                      device: torch.device, log: Callable[[str], None]) -> dict[str, Any]:
    root = Path(config.domains)
    names = domain_names(root, config.domain_split)
    unknown = sorted(set(config.model_per_domain) - set(names))
    if unknown:
        raise ConfigError(f"--model-per-domain names domains {unknown} that {root} does not have; "
                          f"domains: {', '.join(names)}")
    held_out = "held-out model per domain" if config.model_per_domain else None
    per_domain: dict[str, dict[str, Any]] = {}
    for name in names:
        log(f"domain {name}:")
        rows = list(models)
        if name in config.model_per_domain:
            m = resolve_model(config.model_per_domain[name], device)
            rows.append(Evaluatee(held_out or m.name, m.input_size, m.channels, m.embed, m.score))
        if not rows:
            continue
        per_domain[name] = _evaluate_one(rows, str(root / name), config.domain_split, protocols, config, log)
    model_names = [m.name for m in models] + ([held_out] if held_out else [])
    pnames = [p.name for p in protocols]
    return {
        "domains": config.domains, "split": config.domain_split, "model_per_domain": config.model_per_domain,
        "per_domain": per_domain,
        "mean": {m: _mean_over_domains(per_domain, m, pnames) for m in model_names},
    }


def evaluate(config: EvalConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate every model on the same fixed episodes; write and return the results.

    Protocols the data cannot give (too few classes or images) are skipped and named
    with the reason; the rest are evaluated. With ``domains`` every domain is evaluated
    and the mean over domains reported; with ``support_data``/``query_data`` support and
    queries come from different folders.
    """
    if not config.models and not config.model_per_domain:
        raise ConfigError("nothing to evaluate: give a checkpoint, a bundle or baseline:NAME")
    modes = [bool(config.domains), bool(config.support_data or config.query_data)]
    if sum(modes) > 1:
        raise ConfigError("give either --domains or --support/--query-set, not both")
    if bool(config.support_data) != bool(config.query_data):
        raise ConfigError("the cross-set protocol needs both --support DIR and --query-set DIR")
    if config.model_per_domain and not config.domains:
        raise ConfigError("--model-per-domain needs --domains ROOT")
    if not any(modes) and not config.data:
        raise ConfigError("no data given; pass --data DIR (or --domains ROOT, or --support DIR --query-set DIR)")
    for name in ("episodes", "queries"):  # from a YAML file too: 0 would report nan +- nan
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
    device = torch.device(check_device(config.device))
    protocols = [Protocol.parse(p, config.queries) for p in config.protocols]
    if any(p.ways < 2 or p.shots < 1 for p in protocols):
        raise ConfigError(f"protocols need at least 2 ways and 1 shot, got {', '.join(config.protocols)}")
    out = Path(config.out) if config.out else Path("reports") / "eval"
    check_report_folder(out, config)
    models = [resolve_model(m, device) for m in config.models]

    common = {"episodes": config.episodes, "queries": config.queries, "seed": config.seed}
    if config.domains:
        report = {**common, **_evaluate_domains(models, protocols, config, device, log)}
        markdown = domains_markdown(report)
    else:
        if config.support_data:
            one = _evaluate_cross(models, protocols, config, log)
        else:
            one = _evaluate_one(models, config.data, config.split, protocols, config, log)
        if not one["results"] or not any(one["results"].values()):
            raise DataError("no protocol could be evaluated on this data:\n  "
                            + "\n  ".join(f"{p}: {why}" for p, why in one["skipped"].items()))
        report = {**one, **common}
        markdown = markdown_report(report)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(report, indent=2))
        (out / "eval.md").write_text(markdown)
        cfg.save(config, out / "config.yaml")
    except OSError as exc:
        raise DataError(f"cannot write the report to {out}: {exc.strerror or exc}; the results above were "
                        "printed but not saved. Give --out a folder you can write") from None
    log(f"wrote {out / 'eval.md'} and {out / 'eval.json'}")
    return report


REPORT_FILES = ("eval.json", "eval.md", "config.yaml")


def check_report_folder(out: Path, config: EvalConfig) -> None:
    """Refuse, before anything is evaluated, a report folder that cannot be one or whose files would
    land on the command's inputs.

    Eval writes :data:`REPORT_FILES` into ``out`` and deletes nothing, so a report folder that
    holds a checkpoint (``--out runs/x`` for ``runs/x/best.pt``) is fine; a report file that would
    be a model or data file, or lie inside a data folder or bundle, is not.

    Raises:
        ConfigError: ``out`` (or a folder above it) is an existing file.
        OutputOverInput: a report file would be, or lie inside, one of the inputs.
    """
    inputs: dict[str, str] = {}
    for i, model in enumerate([*config.models, *(config.model_per_domain or {}).values()]):
        if model and not str(model).startswith("baseline:"):
            inputs[f"model {i + 1}"] = str(model)
    for what, path in (("the data", config.data), ("the --support folder", config.support_data),
                       ("the --query-set folder", config.query_data), ("the --domains folder", config.domains)):
        if path and not str(path).startswith("fashion-mnist"):
            inputs[what] = str(path)
    for name in REPORT_FILES:
        for what, path in inputs.items():
            try:
                check_output_not_input(out / name, {what: path})
            except OutputOverInput:
                raise OutputOverInput(
                    f"--out {out} would write {name} over or into {what} ({path}), which this command reads; "
                    "nothing was written. Give --out a folder outside the models and data, e.g. reports/eval"
                ) from None
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "is" if folder == out else f"lies inside {folder}, which is"
                raise ConfigError(f"--out {out} {what} an existing file; edgefs eval writes "
                                  f"{', '.join(REPORT_FILES)} into a folder: give --out a folder path "
                                  "(it is created if missing)")
            break


def _cell(acc: dict[str, Any] | None) -> str:
    return "skipped" if acc is None else f"{100 * acc['mean']:.2f} ± {100 * acc['ci95']:.2f}"


def domains_markdown(report: dict[str, Any]) -> str:
    """Per domain and mean over domains, one block per protocol: rows are models, columns domains."""
    per = report["per_domain"]
    domains = list(per)
    models = list(report["mean"])
    protocols: list[str] = []
    for d in per.values():
        for row in d["results"].values():
            protocols += [p for p in row if p not in protocols]
        protocols += [p for p in d["skipped"] if p not in protocols]
    lines = [f"Split `{report['split']}` of each domain in `{report['domains']}`; {report['episodes']} fixed "
             f"episodes per protocol and domain, {report['queries']} query image(s) per class, seed "
             f"{report['seed']}. Accuracy % ± 95% CI; the mean is over the domains where the protocol ran."]
    if report.get("model_per_domain"):
        lines.append("Held-out models: " + ", ".join(f"{d} <- `{m}`" for d, m in report["model_per_domain"].items()))
    for p in protocols:
        lines += ["", f"**{p}**", "", "| model | " + " | ".join(domains) + " | mean |",
                  "|---|" + "---|" * (len(domains) + 1)]
        for m in models:
            cells = [_cell(per[d]["results"].get(m, {}).get(p)) if m in per[d]["results"] else "-" for d in domains]
            mean = report["mean"][m].get(p)
            mean_cell = "skipped" if mean is None else f"{_cell(mean)} ({mean['domains']} of {len(domains)} domains)"
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {mean_cell} |")
    skipped = [(d, p, why) for d, r in per.items() for p, why in r["skipped"].items()]
    if skipped:
        lines += ["", "Skipped (the domain's split cannot give the protocol):"]
        lines += [f"- {d} {p}: {why}" for d, p, why in skipped]
    return "\n".join(lines) + "\n"


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
    if report.get("skipped"):
        lines += ["", "Skipped (the data cannot give the protocol):"]
        lines += [f"- {p}: {why}" for p, why in report["skipped"].items()]
    within = [p for p in protocols if p.endswith("-within")]
    if within:
        first_model, first = next(iter(results.items()))
        per = first[within[0]]["per_group"]
        if per:
            hardest = sorted(per.items(), key=lambda kv: kv[1])[:8]
            lines += ["", f"Hardest groups for {first_model}, {within[0]}: "
                      + ", ".join(f"{g} {100 * a:.1f}" for g, a in hardest)]
    return "\n".join(lines) + "\n"
