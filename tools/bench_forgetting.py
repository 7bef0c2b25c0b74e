"""Class-incremental forgetting, open-set rejection and CPU timings of the device heads.

Usage::

    python tools/bench_forgetting.py                                   # defaults below
    python tools/bench_forgetting.py --checkpoint models/x.pt --repeats 10

Embeds ``DATA/test`` once with the checkpoint's backbone (PyTorch, CPU; this is a
workstation tool), then for each repeat draws 50 test classes, enrolled in 10
successive tasks of 5 classes (5 shots each, the remaining images as queries), and
after each task measures accuracy on every class enrolled so far for each head (the fine-tune
head also with ``scope="local"``, what it does past 256 stored shots: only the changed class's
row refit, over its shots and a bounded replay of its nearest classes');
"joint" fine-tunes once over all classes enrolled so far (the no-forgetting
reference). 20 further test classes are held out as unknowns: AUROC of ``best_sim``
and accuracy / known acceptance / unknown rejection at the threshold calibrated by
leave-one-out on the supports, kept up to date per enrollment by
:class:`edgefs.heads.calibration.LooCalibrator` as the device does (its difference from the
full recomputation is reported). Finally times ``add_class`` (one 5-shot class into a
50-class head) and ``classify`` (one query) in NumPy on this CPU. Prints markdown
tables and writes ``REPORT/forgetting.json``.

With ``--bundle B`` (a bundle that serves every domain, e.g. ``edgefs export --pretrained
efficientnet_lite0 --input-size 128``) it also runs the domain-incremental protocol of
``tools/forgetting_domains.py`` (glyphs, then the colour domains under ``--domains``) and
writes ``REPORT/domains.md`` and ``REPORT/domains.json``, and the device heads' NumPy costs at
that embedding size in process CPU time (``REPORT/domain_costs.md``, ``.json``);
``--only-domains`` skips the class-incremental part. Run it with ``OMP_NUM_THREADS=1
OPENBLAS_NUM_THREADS=1``: with several BLAS threads, threads spinning while they wait count as CPU time.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgefs.heads import Head, HeadSpec
from edgefs.heads.calibration import LooCalibrator
from edgefs.heads.den import DENHead
from edgefs.heads.finetune import FinetuneHead
from edgefs.heads.openset import auroc, calibrate_threshold

TASKS, WAYS, SHOTS, UNKNOWN_CLASSES = 10, 5, 5, 20


def embed_test_split(checkpoint: Path, data: Path) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, Any]]:
    """float32 ``(N, D)`` embeddings, int64 ``(N,)`` labels, class names, head-spec params."""
    import torch

    from edgefs.data.images import open_split
    from edgefs.train.checkpoint import load_checkpoint
    from edgefs.train.trainer import embedder

    if not (data / "test").is_dir():
        print(f"{data}/test missing; rendering it with `edgefs data glyphs --out {data}`", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "edgefs", "data", "glyphs", "--out", str(data)], check=True)
    method, _ = load_checkpoint(checkpoint)
    spec = method.backbone.spec
    split = open_split(data, "test", spec.in_channels, spec.input_size)
    emb = embedder(method, torch.device("cpu"))(split.images)
    head_spec = method.head_spec()
    return emb.astype(np.float32), split.labels, split.class_names, {"prototype": head_spec.params}


def head_factories(dim: int, proto_params: dict[str, Any]) -> dict[str, Callable[[], Head]]:
    return {
        "prototype": lambda: Head.from_spec(HeadSpec("prototype", dict(proto_params)), dim),
        "imprint": lambda: Head.from_spec(HeadSpec("imprint"), dim),
        "matching": lambda: Head.from_spec(HeadSpec("matching"), dim),
        "finetune (refit, l2; default)": lambda: FinetuneHead(dim, penalty="l2"),
        "finetune (continue, l2)": lambda: FinetuneHead(dim, penalty="l2", refit=False),
        "finetune (continue, ewc)": lambda: FinetuneHead(dim, penalty="ewc", refit=False),
        "finetune (continue, no penalty)": lambda: FinetuneHead(dim, penalty="none", refit=False),
        # What the head does past 256 stored shots (scope "auto"), here from the first class on.
        "finetune (local: changed rows, 256 replayed shots)": lambda: FinetuneHead(dim, penalty="l2", scope="local"),
        "finetune (local: changed rows, 32 replayed shots)": lambda: FinetuneHead(dim, penalty="l2", scope="local",
                                                                                 replay=32),
        "den (grows, splits drifting units)": lambda: DENHead(dim),
        # Re-aligns the whole space at each change; its 'vs full' column compares with a threshold taken
        # in the raw space, which it does not use.
        "align (refit on every change)": lambda: Head.from_spec(HeadSpec("align"), dim),
    }


def split_shots(labels: np.ndarray, cls: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    idx = rng.permutation(np.flatnonzero(labels == cls))
    return idx[:SHOTS], idx[SHOTS:]


def accuracy(head: Head, emb: np.ndarray, queries: list[tuple[np.ndarray, str]]) -> float:
    idx = np.concatenate([q for q, _ in queries])
    names = [n for q, n in queries for _ in q]
    top = head.classify(emb[idx], k=1).top_idx[:, 0]
    return float(np.mean([head.classes[int(t)] == n for t, n in zip(top, names, strict=True)]))


def one_repeat(emb: np.ndarray, labels: np.ndarray, names: list[str], factories: dict[str, Callable[[], Head]],
               seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    usable = [c for c in range(len(names)) if (labels == c).sum() > SHOTS]
    chosen = rng.choice(usable, TASKS * WAYS + UNKNOWN_CLASSES, replace=False)
    known, unknown = chosen[: TASKS * WAYS], chosen[TASKS * WAYS :]
    heads = {name: make() for name, make in factories.items()}
    # The device's threshold: kept up to date per enrollment (edgefs.heads.calibration), as Classifier does.
    calibs = {name: LooCalibrator() for name in heads}
    curves: dict[str, list[float]] = {name: [] for name in [*heads, "joint (finetune, all at once)"]}
    queries: list[tuple[np.ndarray, str]] = []
    support: dict[str, np.ndarray] = {}
    for task in range(TASKS):
        for cls in known[task * WAYS : (task + 1) * WAYS]:
            shots, query = split_shots(labels, int(cls), rng)
            support[names[cls]] = emb[shots]
            queries.append((query, names[cls]))
            for name, head in heads.items():
                head.add_class(names[cls], emb[shots])
                calibs[name].added(head, len(head.classes) - 1, emb[shots])
        for name, head in heads.items():
            curves[name].append(accuracy(head, emb, queries))
        joint = FinetuneHead(emb.shape[1], penalty="none")
        joint.add_classes(support)
        curves["joint (finetune, all at once)"].append(accuracy(joint, emb, queries))
    heads["joint (finetune, all at once)"] = joint
    calibs["joint (finetune, all at once)"] = LooCalibrator()
    # Open set: threshold from the enrolled shots alone, unknowns from 20 other classes.
    sup_x = np.concatenate(list(support.values()))
    sup_y = np.repeat(np.arange(len(support)), [len(v) for v in support.values()])
    unk_x = emb[np.isin(labels, unknown)]
    known_idx = np.concatenate([q for q, _ in queries])
    known_names = [n for q, n in queries for _ in q]
    openset: dict[str, dict[str, float]] = {}
    calibs["joint (finetune, all at once)"].rebuild(joint, sup_x, sup_y)
    for name, head in heads.items():
        full = calibrate_threshold(sup_x, sup_y, target_tpr=0.95, normalize=head.normalize_shots)
        head.threshold = calibs[name].threshold(head, target_tpr=0.95)
        rk, ru = head.classify(emb[known_idx], k=1), head.classify(unk_x, k=1)
        correct = np.array([lab == n for lab, n in zip(rk.labels, known_names, strict=True)])
        openset[name] = {"auroc": auroc(rk.best_sim, ru.best_sim), "threshold": head.threshold,
                         "threshold_vs_full": abs(head.threshold - full),
                         "known_acc": float(correct.mean()), "known_accept": float(1 - rk.unknown.mean()),
                         "unknown_reject": float(ru.unknown.mean())}
    return {"curves": curves, "openset": openset, "heads": heads}


def median_us(fn: Callable[[], object], repeat: int, clock: Callable[[], float] = time.perf_counter) -> float:
    times = []
    for _ in range(repeat):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return float(np.median(times) * 1e6)


def timings(heads: dict[str, Head], emb: np.ndarray, repeat: int, bench_class: str = "__bench__",
            clock: Callable[[], float] = time.perf_counter) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(0)
    shots = emb[rng.choice(len(emb), SHOTS, replace=False)]
    query = emb[rng.choice(len(emb), 1)]
    batch = emb[rng.choice(len(emb), 32)]
    out = {}
    for name, head in heads.items():
        def enroll(h: Head = head) -> None:
            # remove() is O(C D) array deletion; measured inside, so this is an upper bound.
            h.add_class(bench_class, shots)
            h.remove(bench_class)

        out[name] = {"classes": len(head.classes),
                     "enroll_us": median_us(enroll, repeat, clock),
                     "classify1_us": median_us(lambda h=head: h.classify(query, k=3), repeat * 10, clock),
                     "classify32_us": median_us(lambda h=head: h.classify(batch, k=3), repeat * 10, clock)}
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Forgetting: accuracy on all classes enrolled so far ({TASKS} tasks x {WAYS} classes, "
             f"{SHOTS} shots, mean over {report['repeats']} repeats)", ""]
    cols = [f"T{t + 1}" for t in range(TASKS)]
    lines += ["| head | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, curve in report["curves"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in curve) + " |")
    lines += ["", f"Open set ({UNKNOWN_CLASSES} unknown classes; LOO-calibrated threshold, target TPR 0.95, kept "
              "up to date per enrollment as on the device; last column: its largest difference from the full "
              "recomputation over the repeats)", "",
              "| head | AUROC | threshold | known acc | known accepted | unknown rejected | vs full |",
              "|---|---|---|---|---|---|---|"]
    for name, m in report["openset"].items():
        lines.append(f"| {name} | {m['auroc']:.3f} | {m['threshold']:.3f} | {m['known_acc']:.3f} | "
                     f"{m['known_accept']:.3f} | {m['unknown_reject']:.3f} | {m['threshold_vs_full_max']:.1e} |")
    lines += ["", f"CPU NumPy figures (median µs; {report['machine']['processor']}, "
              f"numpy {report['machine']['numpy']})", "",
              "| head | classes | enroll (add_class, 5 shots) | classify 1 query | classify 32 queries |",
              "|---|---|---|---|---|"]
    for name, t in report["timings"].items():
        lines.append(f"| {name} | {t['classes']} | {t['enroll_us']:.0f} | {t['classify1_us']:.0f} | "
                     f"{t['classify32_us']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("models/protonet-conv4-glyphs28.pt"))
    parser.add_argument("--data", type=Path, default=Path("data/glyphs28"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timing-repeat", type=int, default=50)
    parser.add_argument("--report", type=Path, default=Path("reports/forgetting"))
    parser.add_argument("--bundle", type=Path, help="a bundle serving every domain (e.g. ImageNet Lite0 at 128 px): "
                        "also run the domain-incremental protocol (tools/forgetting_domains.py)")
    parser.add_argument("--domains", type=Path, default=Path("data/domains"))
    parser.add_argument("--domain-order", default="glyphs,icons,flags,cards,clipart,units")
    parser.add_argument("--domain-repeats", type=int, default=5, help="0: only the domain heads' CPU costs")
    parser.add_argument("--only-domains", action="store_true", help="skip the class-incremental glyph protocol")
    args = parser.parse_args(argv)

    if args.bundle is not None:
        domain_incremental(args)
    if args.only_domains:
        return 0
    emb, labels, names, specs = embed_test_split(args.checkpoint, args.data)
    factories = head_factories(emb.shape[1], specs["prototype"])
    runs = [one_repeat(emb, labels, names, factories, seed) for seed in range(args.repeats)]
    curves = {name: np.mean([r["curves"][name] for r in runs], axis=0).tolist() for name in runs[0]["curves"]}
    openset = {name: {key: float(np.mean([r["openset"][name][key] for r in runs])) for key in m}
               for name, m in runs[0]["openset"].items()}
    for name, m in openset.items():
        m["threshold_vs_full_max"] = float(max(r["openset"][name]["threshold_vs_full"] for r in runs))
    report = {
        "checkpoint": str(args.checkpoint), "data": str(args.data), "repeats": args.repeats,
        "protocol": {"tasks": TASKS, "ways": WAYS, "shots": SHOTS, "unknown_classes": UNKNOWN_CLASSES,
                     "target_tpr": 0.95, "calibration": "loo"},
        "head_params": {name: h.hyperparams() for name, h in runs[-1]["heads"].items()},
        "embedding_dim": int(emb.shape[1]),
        "curves": curves, "openset": openset,
        "per_repeat": [{"curves": r["curves"], "openset": r["openset"]} for r in runs],
        "timings": timings(runs[-1]["heads"], emb, args.timing_repeat),
        "machine": {"processor": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "numpy": np.__version__},
    }
    text = markdown(report)
    print(text)
    args.report.mkdir(parents=True, exist_ok=True)
    (args.report / "forgetting.json").write_text(json.dumps(report, indent=2))
    (args.report / "forgetting.md").write_text(text + "\n")
    return 0


def domain_incremental(args: argparse.Namespace) -> None:
    """The domain-incremental table (``--domain-repeats`` > 0) and the device heads' NumPy costs at the
    bundle's embedding size, in process CPU time (wall time on a loaded machine measures the other jobs)."""
    import forgetting_domains as fd

    order = [d for d in args.domain_order.split(",") if d]
    args.report.mkdir(parents=True, exist_ok=True)
    if args.domain_repeats > 0:
        report = fd.run(args.bundle, args.domains, args.data, order, args.domain_repeats, Path("runs/embeddings"))
        report["machine"] = {"processor": platform.processor() or platform.machine(), "numpy": np.__version__}
        text = fd.markdown(report)
        print(text)
        (args.report / "domains.json").write_text(json.dumps(report, indent=2))
        (args.report / "domains.md").write_text(text + "\n")
    emb = fd.embed_domains(args.bundle, {order[-1]: args.domains / order[-1] / "test"}, Path("runs/embeddings"))
    x = np.concatenate(list(emb[order[-1]].values()))
    heads: dict[str, Head] = {}
    for name, make in fd.domain_factories(x.shape[1], len(order)).items():
        head = make()
        if not isinstance(head, Head):
            continue  # the bench-only references have no device form
        rng = np.random.default_rng(0)
        for d in range(len(order)):  # 60 classes in len(order) domains, as at the end of the protocol
            head.add_classes({f"d{d}/c{c}": x[rng.choice(len(x), SHOTS, replace=False)] for c in range(10)})
        heads[name] = head
    costs = timings(heads, x, max(5, args.timing_repeat // 10), f"d{len(order) - 1}/__bench__", time.process_time)
    for name, head in heads.items():
        arrays, _ = head.state()
        costs[name]["state_bytes"] = int(sum(a.nbytes for a in arrays.values()))
        costs[name]["shots_bytes"] = int(arrays.get("support", np.zeros(0, np.float32)).nbytes)
    lines = [f"Device heads at embedding size {x.shape[1]} ({args.bundle}), 60 classes in {len(order)} domains, "
             "5 shots each. Median process CPU time in µs (the machine was shared and loaded; CPU time, not wall "
             f"time); enroll = add a 5-shot class to the last domain and remove it again; "
             f"{platform.processor() or platform.machine()}, numpy {np.__version__}", "",
             "| head | enroll | classify 1 query | classify 32 queries | state (KiB) | of which stored shots (KiB) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {t['enroll_us']:.0f} | {t['classify1_us']:.0f} | {t['classify32_us']:.0f} | "
              f"{t['state_bytes'] / 1024:.0f} | {t['shots_bytes'] / 1024:.0f} |" for n, t in costs.items()]
    text = "\n".join(lines)
    print(text)
    (args.report / "domain_costs.json").write_text(json.dumps(
        {"bundle": str(args.bundle), "dim": int(x.shape[1]), "clock": "process_time", "heads": costs}, indent=2))
    (args.report / "domain_costs.md").write_text(text + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
