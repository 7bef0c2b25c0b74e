"""How well the colour demo's camera stream separates enrolled objects from never-enrolled ones, per frame.

Usage::

    python tools/bench_openset.py                                   # the committed colour model
    python tools/bench_openset.py --checkpoints new=models/protonet-lite0-colour.pt old=/tmp/old.pt

For each checkpoint a bundle is exported, the colour demo's 5 classes are enrolled
from the synthetic camera exactly as ``edgefs demo`` enrolls them (5 shots,
region of interest), and a fixed offline stream (4 camera seeds, 450 frames
each, every 3rd frame; the 5 enrolled and the 2 never-enrolled classes) is
classified frame by frame through ONNX Runtime and the bundle's device head. The
table gives, per model: closed-set top-1 on enrolled frames, the store's
automatic (leave-one-out) threshold, the share of enrolled and of never-enrolled
frames it calls unknown, the per-frame open-set accuracy at that threshold, and
the same accuracy at the best fixed threshold for this stream (an oracle: what
no calibration can beat). No smoothing. Writes ``OUT/openset.json`` and
``OUT/openset.md``. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgefs.camera.sources import open_source
from edgefs.classifier import Classifier
from edgefs.demo import (
    COLOUR_CHECKPOINT,
    camera_options,
    choose_classes,
    demo_config,
    enroll_from_synthetic,
    ensure_data,
)
from edgefs.export import export_bundle


def stream(cfg: Any, classes: list[str], seeds: int, frames: int, every: int) -> tuple[list[np.ndarray], np.ndarray]:
    images, truth = [], []
    for s in range(seeds):
        src = open_source("synthetic:" + str(cfg.data), **camera_options(
            cfg, classes=classes, instances=cfg.stream_instances, seed=100 + s, frames=frames))
        with src:
            for i, f in enumerate(iter(src.read, None)):
                if i % every == 0:
                    images.append(np.ascontiguousarray(cfg.roi.crop(f.image)))
                    truth.append(f.label)
    return images, np.array(truth)


def open_accuracy(best: np.ndarray, right: np.ndarray, known: np.ndarray, threshold: float) -> float:
    """Per frame: an enrolled frame must be accepted and right, a never-enrolled one rejected."""
    return float((((best >= threshold) & right)[known].sum() + (best < threshold)[~known].sum()) / len(best))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", nargs="+", default=[f"colour={COLOUR_CHECKPOINT}"], help="NAME=CHECKPOINT")
    p.add_argument("--shots", type=int, default=None, help="shots per enrolled class (default: the demo's)")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--frames", type=int, default=450)
    p.add_argument("--every", type=int, default=3)
    p.add_argument("--out", default="reports/openset-colour", help="the report folder")
    p.add_argument("--work", default="runs/openset", help="bundles and class stores")
    args = p.parse_args(argv)
    bad = [c for c in args.checkpoints if not all(c.partition("=")[::2]) or not Path(c.partition("=")[2]).is_file()]
    if bad:
        p.error(f"--checkpoints takes NAME=CHECKPOINT with an existing file, got {', '.join(map(repr, bad))}")
    if args.shots is not None and args.shots < 1:
        p.error(f"--shots must be at least 1, got {args.shots}")
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    cfg = demo_config("colour", **({} if args.shots is None else {"shots": args.shots}))
    ensure_data(cfg, lambda _: None)
    enrolled, unknown, _ = choose_classes(cfg)
    images, truth = stream(cfg, enrolled + unknown, args.seeds, args.frames, args.every)
    known = np.isin(truth, enrolled)
    rows = []
    for item in args.checkpoints:
        name, _, ckpt = item.partition("=")
        bundle = work / f"{name.replace(' ', '_')}.edgefs"
        export_bundle(ckpt, bundle, data=str(cfg.data), parity_images=8, overwrite=True, log=lambda _: None)
        store = work / f"{name.replace(' ', '_')}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{store}{suffix}").unlink(missing_ok=True)
        with Classifier.open(bundle, store, backend="onnxruntime", log=lambda _: None) as clf:
            enroll_from_synthetic(clf, cfg, enrolled, log=lambda _: None)
            result = clf.classify_frames(images, k=1)
            threshold = float(clf.threshold)
            classes = list(clf.head.classes)
        best = np.asarray(result.best_sim, np.float64)
        right = np.array([classes[i] for i in result.top_idx[:, 0]]) == truth
        grid = np.unique(best)
        oracle = max(grid, key=lambda t: open_accuracy(best, right, known, float(t)))
        rows.append({"model": name, "checkpoint": ckpt, "input": clf.bundle.manifest.input_size,
                     "closed_top1": float(right[known].mean()), "threshold": threshold,
                     "known_rejected": float((best[known] < threshold).mean()),
                     "unknown_rejected": float((best[~known] < threshold).mean()),
                     "open_accuracy": open_accuracy(best, right, known, threshold),
                     "oracle_threshold": float(oracle), "oracle_open_accuracy": open_accuracy(best, right, known,
                                                                                               float(oracle))})
        print(rows[-1], flush=True)
    lines = [f"Colour demo camera (units test split: {', '.join(enrolled)} enrolled from {cfg.shots} shots each; "
             f"{', '.join(unknown)} never enrolled), {len(images)} offline frames ({int(known.sum())} of enrolled "
             "classes), per frame, no smoothing, ONNX Runtime FP32, device head.", "",
             "| model | input | closed-set top-1 | auto threshold | enrolled called unknown | never-enrolled called "
             "unknown | open-set accuracy (auto) | best fixed threshold | open-set accuracy (best, oracle) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['input'][0]} px | {100 * r['closed_top1']:.1f} | {r['threshold']:.3f} | "
                     f"{100 * r['known_rejected']:.1f} | {100 * r['unknown_rejected']:.1f} | "
                     f"{100 * r['open_accuracy']:.1f} | {r['oracle_threshold']:.3f} | "
                     f"{100 * r['oracle_open_accuracy']:.1f} |")
    (out / "openset.json").write_text(json.dumps({"enrolled": enrolled, "unknown": unknown, "shots": cfg.shots,
                                                  "rows": rows}, indent=2))
    (out / "openset.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
