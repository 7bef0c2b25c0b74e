"""Train and evaluate every registered few-shot method on the same fixed episodes.

Usage::

    python tools/bench_methods.py --data data/glyphs28 --budget-min 10          # every method
    python tools/bench_methods.py --methods protonet,relation --budget-min 0.2 --episodes 20   # smoke run

For each method (``--methods``, default: everything in ``edgefs.methods.METHODS``) the
tool trains with ``configs/<method>_<backbone>_glyphs.yaml`` when that file exists
(otherwise ``--base-config`` with the method swapped in), on ``--data``, for
``--budget-min`` minutes of training-loop wall time (or, with ``--cpu-budget-min``, minutes
of the training process's CPU time, all threads counted: the fair budget on a shared,
loaded machine, where wall time depends on what else runs), into ``OUT/runs/<method>``; the
``distill`` row needs a teacher: ``--teacher CKPT``, or the tool first trains one from
``--teacher-config`` with the same budget and reports it as its own row.

Every ``best.pt`` is then evaluated with ``edgefs.eval`` on the same fixed episode lists
(saved beside the data, so later runs and ``edgefs eval`` reuse them): the glyph test
split 5w1s, 5w5s, 20w1s and within-script 5w1s; Fashion-MNIST 5w1s and 5w5s as a
cross-domain check when the Debian package ``dataset-fashion-mnist`` is installed
(otherwise the column says why it is empty). Per method it also measures the device
side in NumPy: the head spec's size on disk, the enrolled state per class (5 shots),
and the time to build the head from its spec, enroll a 5-way 5-shot episode and classify
its queries (median over episodes), with enrollment and classification also timed apart.
Writes ``OUT/methods.md``, ``OUT/methods.json``,
``OUT/methods.png`` (matplotlib; skipped with a message when it is not installed) and
``OUT/config.yaml``. Published figures from the papers are listed in their own column:
they are on Omniglot / mini-ImageNet, not on this benchmark.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GLYPH_PROTOCOLS = ["5w1s", "5w5s", "20w1s", "5w1s-within"]
FASHION_PROTOCOLS = ["5w1s", "5w5s"]
TIMING_EPISODES = 50

# From the papers, on other data sets (Omniglot: 28 px, 1,623 characters; mini-ImageNet:
# 84 px, 100 ImageNet classes), Conv-4 backbones unless stated; keyed by registry name.
PUBLISHED: dict[str, str] = {
    "protonet": "Omniglot 98.8 / 99.7 / 96.0 (5w1s/5w5s/20w1s); mini-ImageNet 49.4 / 68.2 (Snell et al. 2017)",
    "matching": "Omniglot 98.1 / 98.9 / 93.8; mini-ImageNet 43.6 / 55.3 (Vinyals et al. 2016)",
    "relation": "Omniglot 99.6 / 99.8 / 97.6; mini-ImageNet 50.4 / 65.3 (Sung et al. 2018)",
    "siamese": "Omniglot 20-way 1-shot within-alphabet 92.0 (Koch et al. 2015)",
    "baselinepp": "mini-ImageNet 48.2 / 66.4 (Conv-4), 51.9 / 75.7 (ResNet-18) (Chen et al. 2019)",
    "distill": "none in Hinton et al. 2015; mini-ImageNet ResNet-12 RFS-distill 64.8 / 82.1 (Tian et al. 2020)",
    "maml": "Omniglot 98.7 / 99.9 / 95.8; mini-ImageNet 48.7 / 63.1 (Finn et al. 2017)",
    "fomaml": "Omniglot 98.3 / 99.2 / 89.4; mini-ImageNet 48.1 / 63.2 (Finn et al. 2017)",
    "reptile": "Omniglot 95.4 / 98.9 / 88.1; mini-ImageNet 47.1 / 62.7, non-transductive (Nichol et al. 2018)",
    "metasgd": "Omniglot 99.5 / 99.9 / 95.9; mini-ImageNet 50.5 / 64.0 (Li et al. 2017)",
    "mann": "Omniglot 5 classes, 15-step sequences: 36.4 / 82.8 / 94.9 at the 1st / 2nd / 10th instance "
            "(Santoro et al. 2016)",
    "metanet": "Omniglot 98.95 (5w1s), 97.00 (20w1s); mini-ImageNet 49.21 (5w1s) (Munkhdalai & Yu 2017)",
    "lstm_meta": "mini-ImageNet 43.44 / 60.60 (5w1s / 5w5s) (Ravi & Larochelle 2017)",
    "multitask": "none: Caruana 1997 (hard parameter sharing) reports no few-shot transfer figures",
}


@dataclass
class Run:
    """One trained model of the report.

    Attributes:
        name: row label and run folder name.
        method: registry name.
        config: the YAML the run started from.
        checkpoint: its ``best.pt``.
        train_s: wall time of the whole ``train`` call (data loading and validations included;
            with ``--reuse``, the checkpoint's training-loop time).
        episodes: training episodes (or batches) done.
        cpu_s: the training loop's process CPU time (all threads), from the checkpoint.
    """

    name: str
    method: str
    config: str
    checkpoint: str
    train_s: float
    episodes: int
    cpu_s: float = 0.0


def method_config(method: str, backbone: str, base: Path) -> Path:
    """``configs/<method>_<backbone>_glyphs.yaml`` if it exists, else ``base``."""
    own = CONFIGS / f"{method}_{backbone}_glyphs.yaml"
    return own if own.is_file() else base


def train_run(name: str, method: str, config_path: Path, args: argparse.Namespace,
              options: dict[str, Any] | None = None) -> Run:
    """Train ``method`` from ``config_path`` for the time budget (or reuse its checkpoint)."""
    from edgefs.config import resolve
    from edgefs.train import TrainConfig, train
    from edgefs.train.checkpoint import read_checkpoint

    out = args.out / "runs" / name
    config = resolve(TrainConfig, config_path)
    if config.method != method:  # the base config of a method without its own file
        config.method, config.method_options = method, {}
    config.method_options = {**config.method_options, **(options or {})}
    config.data, config.out, config.seed = str(args.data), str(out), args.seed
    config.time_budget_min, config.episodes = args.budget_min, 10**9
    if args.cpu_budget_min:
        config.time_budget_min, config.cpu_budget_min = 0.0, args.cpu_budget_min
    config.device = args.device
    if args.threads:
        config.threads = args.threads
    best = out / "best.pt"
    if args.reuse and best.is_file():
        print(f"[{name}] reusing {best}")
        doc = read_checkpoint(out / "last.pt")
        return Run(name, method, str(config_path), str(best), float(doc.get("elapsed_s", 0.0)),
                   int(doc.get("episode", 0)), float(doc.get("cpu_s", 0.0)))
    budget = f"{args.cpu_budget_min} CPU min" if args.cpu_budget_min else f"{args.budget_min} min"
    print(f"[{name}] training {method} ({config.backbone}) from {config_path} for {budget}")
    t0 = time.perf_counter()
    train(config, overwrite=True, log=lambda m: print(f"[{name}] {m}"))
    train_s = time.perf_counter() - t0
    doc = read_checkpoint(out / "last.pt")
    return Run(name, method, str(config_path), str(best), train_s, int(doc["episode"]), float(doc.get("cpu_s", 0.0)))


def infeasible(runs: list[Run], data: str, protocols: list[str], queries: int) -> dict[str, str]:
    """``{protocol: why}`` for the protocols the test split cannot give episodes for."""
    from edgefs.data.episodes import EpisodeSampler, Protocol
    from edgefs.data.images import open_split
    from edgefs.errors import EdgefsError
    from edgefs.train.checkpoint import read_checkpoint

    spec = read_checkpoint(runs[0].checkpoint)["backbone"]["spec"]
    test = open_split(data, "test", spec["in_channels"], spec["input_size"])
    why = {}
    for name in protocols:
        try:
            EpisodeSampler(test, Protocol.parse(name, queries))
        except EdgefsError as exc:
            why[name] = str(exc)
    return why


def evaluate_runs(runs: list[Run], data: str, protocols: list[str], args: argparse.Namespace,
                  tag: str) -> dict[str, Any]:
    """``{run name: {protocol: {mean, ci95, episodes}}}``; ``"missing"`` holds why something is not there.

    ``"missing"`` maps a protocol to the reason it has no episodes, or ``"all"`` to why the
    data set could not be read at all.
    """
    from edgefs.errors import EdgefsError
    from edgefs.eval.run import EvalConfig, evaluate

    try:
        missing = infeasible(runs, data, protocols, args.queries)
    except EdgefsError as exc:
        print(f"[eval {tag}] skipped: {exc}")
        return {"missing": {"all": str(exc)}}
    for name, why in missing.items():
        print(f"[eval {tag}] no {name} episodes: {why}")
    protocols = [p for p in protocols if p not in missing]
    if not protocols:
        return {"missing": missing}
    config = EvalConfig(models=[r.checkpoint for r in runs], data=data, split="test", protocols=protocols,
                        episodes=args.episodes, queries=args.queries, seed=0, out=str(args.out / f"eval-{tag}"),
                        device=args.device)
    try:
        report = evaluate(config, log=lambda m: print(f"[eval {tag}] {m}"))
    except EdgefsError as exc:
        print(f"[eval {tag}] skipped: {exc}")
        return {"missing": {"all": str(exc)}}
    by_model = report["results"]
    results: dict[str, Any] = {
        r.name: {p: {k: a[k] for k in ("mean", "ci95", "episodes")} for p, a in
                 by_model[f"{Path(r.checkpoint).parent.name}/{Path(r.checkpoint).name}"].items()}
        for r in runs}
    return {**results, "missing": missing}


def device_side(run: Run, args: argparse.Namespace, protocol_name: str) -> dict[str, Any]:
    """Head spec bytes, enrolled state bytes per class and NumPy adapt+classify time on ``protocol_name``."""
    import torch

    from edgefs.data.episodes import Protocol, episode_list_path, fixed_episodes
    from edgefs.data.images import open_split
    from edgefs.eval.episodic import embedding_table, needed_indices
    from edgefs.heads import HeadSpec, build_head
    from edgefs.train.checkpoint import load_checkpoint
    from edgefs.train.trainer import embedder

    method, _ = load_checkpoint(run.checkpoint)
    method.to(torch.device(args.device))
    spec = method.head_spec()
    with tempfile.TemporaryDirectory() as tmp:
        spec.save(Path(tmp) / "head")
        spec_bytes = sum(p.stat().st_size for p in Path(tmp).iterdir())
        spec = HeadSpec.load(Path(tmp) / "head")  # what the device reads
    bspec = method.backbone.spec
    data = open_split(args.data, "test", bspec.in_channels, bspec.input_size)
    protocol = Protocol.parse(protocol_name, args.queries)
    path = episode_list_path(Path(args.data) / "episodes", "test", protocol, args.episodes, 0)
    episodes = fixed_episodes(data, protocol, args.episodes, 0, path)
    episodes.episodes = episodes.episodes[:TIMING_EPISODES]
    table = embedding_table(data, needed_indices([episodes]), embedder(method, torch.device(args.device)))
    times, enroll, classify, correct, total, state_bytes = [], [], [], 0, 0, 0
    for ep in episodes.episodes:
        support, labels, queries = table[ep.support], ep.support_labels(), table[ep.query]
        shots = {f"class{c}": support[labels == c] for c in range(protocol.ways)}
        t0 = time.perf_counter()
        head = build_head(spec, table.shape[1])
        t1 = time.perf_counter()
        head.add_classes(shots)
        t2 = time.perf_counter()
        result = head.classify(queries, k=1)
        t3 = time.perf_counter()
        times.append(t3 - t0)
        enroll.append(t2 - t1)
        classify.append(t3 - t2)
        correct += int((result.top_idx[:, 0] == ep.query_labels()).sum())
        total += len(queries)
        state_bytes = sum(a.nbytes for a in head.state()[0].values())
    return {"head_type": spec.head_type, "spec_bytes": int(spec_bytes),
            "state_bytes_per_class": int(state_bytes // protocol.ways), "embedding_dim": int(table.shape[1]),
            "adapt_ms_median": 1e3 * float(np.median(times[1:] or times)),
            "adapt_ms_p90": 1e3 * float(np.percentile(times[1:] or times, 90)),
            "enroll_ms_median": 1e3 * float(np.median(enroll[1:] or enroll)),
            "classify_ms_median": 1e3 * float(np.median(classify[1:] or classify)),
            "classify_queries": int(protocol.ways * protocol.queries),
            "device_acc": correct / max(total, 1), "timed_protocol": protocol.name, "timed_episodes": len(times),
            "backbone": bspec.name}


def cell(acc: dict[str, Any] | None) -> str:
    return "n/a" if acc is None else f"{100 * acc['mean']:.2f} ± {100 * acc['ci95']:.2f}"


def markdown(report: dict[str, Any]) -> str:
    """The report as one markdown table plus notes."""
    glyphs, fashion = report["glyphs"], report["fashion"]
    head = [f"glyph {p}" for p in GLYPH_PROTOCOLS] + [f"F-MNIST {p}" for p in FASHION_PROTOCOLS]
    if report.get("cpu_budget_min"):
        budget = (f"{report['cpu_budget_min']} min of process CPU time (all threads; the machine was shared and "
                  "loaded, so CPU time rather than wall time is the fair budget)")
    else:
        budget = f"{report['budget_min']} min (training-loop wall time)"
    lines = [
        f"Every method trained for {budget} on `{report['data']}` "
        f"({report['device']}, {report['machine']['processor']}); accuracy % ± 95% CI on the same fixed test "
        f"episodes ({report['episodes']} per protocol, {report['queries']} query per class). Fashion-MNIST is "
        "cross-domain (never trained on). Device columns: NumPy head built from the head spec.",
        "",
        "| method | backbone | head | " + " | ".join(head) + " | train wall (min) | train CPU (min) | episodes "
        f"| head spec (B) | state/class (B) | adapt+classify {report['timed_protocol']} (ms) | enroll (ms) "
        "| classify (ms) | published, other data sets |",
        "|" + "---|" * (len(head) + 12),
    ]
    for row in report["rows"]:
        name, dev = row["name"], row["device"]
        accs = [cell(glyphs.get(name, {}).get(p)) for p in GLYPH_PROTOCOLS]
        accs += [cell(fashion.get(name, {}).get(p)) for p in FASHION_PROTOCOLS]
        lines.append(f"| {name} | {dev['backbone']} | {dev['head_type']} | " + " | ".join(accs)
                     + f" | {row['train_s'] / 60:.1f} | {row.get('cpu_s', 0.0) / 60:.1f} | {row['episodes']} "
                     f"| {dev['spec_bytes']} | {dev['state_bytes_per_class']} | {dev['adapt_ms_median']:.2f} "
                     f"| {dev.get('enroll_ms_median', float('nan')):.2f} "
                     f"| {dev.get('classify_ms_median', float('nan')):.2f} "
                     f"| {PUBLISHED.get(row['method'], '—')} |")
    for label, source in (("glyph", glyphs), ("F-MNIST", fashion)):
        for protocol, why in source["missing"].items():
            lines += ["", f"n/a {label} {protocol}: {why}"]
    lines += ["", "Published: figures from each method's paper on Omniglot / mini-ImageNet (5w1s / 5w5s / 20w1s "
              "where three are given), for context only; they are other data sets and protocols."]
    return "\n".join(lines) + "\n"


def chart(report: dict[str, Any], path: Path) -> str:
    """Grouped bars per method, one per protocol, with 95% CI error bars; returns a status line."""
    try:
        import matplotlib
    except ImportError:
        return "no chart: matplotlib is not installed (pip install matplotlib)"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [("glyphs", p, f"glyph {p}") for p in GLYPH_PROTOCOLS]
    series += [("fashion", p, f"F-MNIST {p}") for p in FASHION_PROTOCOLS if "all" not in report["fashion"]["missing"]]
    names = [row["name"] for row in report["rows"]]
    x = np.arange(len(names))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(names) + 2), 4.5))
    for i, (source, protocol, label) in enumerate(series):
        accs = [report[source].get(n, {}).get(protocol) for n in names]
        means = [100 * a["mean"] if a else np.nan for a in accs]
        errs = [100 * a["ci95"] if a else 0.0 for a in accs]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, means, width, yerr=errs, capsize=2, label=label)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylabel("accuracy % (95% CI)")
    ax.set_ylim(0, 100)
    budget = (f"{report['cpu_budget_min']} CPU min" if report.get("cpu_budget_min")
              else f"{report['budget_min']} min")
    ax.set_title(f"Few-shot methods, {budget} training each, same test episodes")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"wrote {path}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/glyphs28"), help="glyph benchmark folder")
    parser.add_argument("--methods", help="comma-separated registry names (default: every registered method)")
    parser.add_argument("--budget-min", type=float, default=10.0, help="training minutes per method")
    parser.add_argument("--cpu-budget-min", type=float, default=0.0,
                        help="training minutes of process CPU time per method, all threads counted (replaces "
                             "--budget-min; fair on a shared machine)")
    parser.add_argument("--backbone", default="conv4", help="picks configs/<method>_<backbone>_glyphs.yaml")
    parser.add_argument("--base-config", type=Path, default=CONFIGS / "protonet_conv4_glyphs.yaml",
                        help="settings for a method without its own config file")
    parser.add_argument("--teacher", type=Path, help="teacher checkpoint for 'distill' (default: train one)")
    parser.add_argument("--teacher-config", type=Path, default=CONFIGS / "protonet_resnet12_glyphs.yaml")
    parser.add_argument("--fashion", default="fashion-mnist", help="cross-domain data ('' to skip)")
    parser.add_argument("--episodes", type=int, default=600, help="fixed test episodes per protocol")
    parser.add_argument("--queries", type=int, default=1, help="query images per class in test episodes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--reuse", action="store_true", help="evaluate existing OUT/runs/<name>/best.pt")
    parser.add_argument("--out", type=Path, default=Path("reports/methods"))
    args = parser.parse_args(argv)

    import yaml

    from edgefs.config import resolve
    from edgefs.errors import ConfigError
    from edgefs.methods import METHODS
    from edgefs.train import TrainConfig

    methods = args.methods.split(",") if args.methods else METHODS.names()
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; registered: {', '.join(METHODS.names())}")
    if not (args.data / "test").is_dir():
        raise ConfigError(f"{args.data}/test does not exist; render it with 'edgefs data glyphs --out {args.data}'")
    args.out.mkdir(parents=True, exist_ok=True)

    runs: list[Run] = []
    for method in methods:
        options: dict[str, Any] = {}
        if method == "distill":
            teacher = args.teacher
            if teacher is None:
                teacher_cfg = resolve(TrainConfig, args.teacher_config)
                run = train_run(f"teacher-{teacher_cfg.method}-{teacher_cfg.backbone}", teacher_cfg.method,
                                args.teacher_config, args)
                runs.append(run)
                teacher = Path(run.checkpoint)
            options["teacher"] = str(teacher)
        runs.append(train_run(method, method, method_config(method, args.backbone, args.base_config), args, options))

    glyphs = evaluate_runs(runs, str(args.data), GLYPH_PROTOCOLS, args, "glyphs")
    fashion = (evaluate_runs(runs, args.fashion, FASHION_PROTOCOLS, args, "fashion") if args.fashion
               else {"missing": {"all": "skipped (--fashion '')"}})
    # The device timing uses 5w5s episodes, or 5w1s where the test split has too few images per class.
    timed = "5w5s" if "5w5s" not in glyphs["missing"] else "5w1s"
    rows = [{**run.__dict__, "device": device_side(run, args, timed)} for run in runs]
    report = {
        "data": str(args.data), "budget_min": args.budget_min, "cpu_budget_min": args.cpu_budget_min,
        "episodes": args.episodes, "queries": args.queries,
        "device": args.device, "timed_protocol": timed, "glyphs": glyphs, "fashion": fashion, "rows": rows,
        "published": PUBLISHED,
        "machine": {"processor": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "numpy": np.__version__},
    }
    text = markdown(report)
    print(text)
    (args.out / "methods.json").write_text(json.dumps(report, indent=2))
    (args.out / "methods.md").write_text(text)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (args.out / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    print(chart(report, args.out / "methods.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
