"""How well the colour demo's camera stream separates enrolled objects from never-enrolled ones, per frame.

Usage::

    python tools/bench_openset.py                                   # the committed colour model
    python tools/bench_openset.py --checkpoints new=models/protonet-lite0-colour.pt old=/tmp/old.pt
    python tools/bench_openset.py --data data/demo/units data/domains/flags --class-seeds 0 1 2

For each checkpoint a bundle is exported, the colour demo's 5 classes are enrolled
from the synthetic camera exactly as ``edgefs demo`` enrolls them (its shots,
region of interest, each shot the mean of 7 views; ``--shot-views 1 7`` compares
with the shots alone), and a fixed offline stream (4 camera seeds, 450 frames
each, every 3rd frame; the 5 enrolled and the 2 never-enrolled classes) is
classified frame by frame through ONNX Runtime and the bundle's device head. The
table gives, per model: closed-set top-1 on enrolled frames, the store's
automatic (leave-one-out) threshold, the share of enrolled and of never-enrolled
frames it calls unknown, the per-frame open-set accuracy at that threshold, and
the same accuracy at the best fixed threshold for this stream (an oracle: what
no calibration can beat). No smoothing. Writes ``OUT/openset.json`` and
``OUT/openset.md``. A benchmark, not a test.

Two more columns bound what the camera loop could reach on that stream:
``presentation oracle`` scores each presentation (a stretch of frames showing
one object, 15 sampled frames here) by its frames' mean similarity to each class
with the best fixed threshold, i.e. what perfect temporal smoothing plus an
oracle threshold would give, frame-weighted as the loop scores; ``auto, 90%``
is the open-set accuracy of the automatic threshold when it keeps 90% of the
shots' leave-one-out scores instead of the store's 95%.
``--data`` and ``--class-seeds`` repeat the measurement on other built domains
(``edgefs data DOMAIN --out DIR``) and other draws of the 5 + 2 classes, with the
demo's camera, shots and region of interest; the table ends with their mean.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from edgefs.export import export_bundle

from edgefs.camera.sources import open_source
from edgefs.demo import (
    COLOUR_CHECKPOINT,
    camera_options,
    choose_classes,
    demo_config,
    enroll_from_synthetic,
    ensure_data,
)
from edgefs.heads.openset import threshold_from_scores
from edgefs.heads.reference import l2_normalize, row_dots
from edgefs.service.classifier import Classifier
from edgefs.service.options import EngineOptions

HOLD = 45  # frames per presentation of the offline stream (the synthetic camera's default)


def stream(cfg: Any, classes: list[str], seeds: int, frames: int,
           every: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Every ``every``-th frame of ``seeds`` offline streams: region-of-interest crops, labels and
    presentation ids (one per stretch of ``HOLD`` frames showing one object)."""
    images, truth, shown = [], [], []
    for s in range(seeds):
        src = open_source("synthetic:" + str(cfg.data), **camera_options(
            cfg, classes=classes, instances=cfg.stream_instances, seed=100 + s, frames=frames, hold=HOLD))
        with src:
            for i, f in enumerate(iter(src.read, None)):
                if i % every == 0:
                    images.append(np.ascontiguousarray(cfg.roi.crop(f.image)))
                    truth.append(f.label)
                    shown.append(s * (frames // HOLD + 1) + i // HOLD)
    return images, np.array(truth), np.array(shown)


def open_accuracy(best: np.ndarray, right: np.ndarray, known: np.ndarray, threshold: float) -> float:
    """Per frame: an enrolled frame must be accepted and right, a never-enrolled one rejected."""
    return float((((best >= threshold) & right)[known].sum() + (best < threshold)[~known].sum()) / len(best))


def presentation_oracle(sims: np.ndarray, truth_idx: np.ndarray, shown: np.ndarray) -> float:
    """Open-set accuracy, frame-weighted, when each presentation is decided by its frames' mean
    similarity (argmax, unknown below one fixed threshold: the best for this stream).

    Args:
        sims: float ``(N, C)`` cosine of each frame to each class.
        truth_idx: int ``(N,)`` the frame's class index, -1 for never-enrolled classes.
        shown: int ``(N,)`` presentation ids.
    """
    ids, inverse, counts = np.unique(shown, return_inverse=True, return_counts=True)
    mean = np.zeros((len(ids), sims.shape[1]))
    np.add.at(mean, inverse, sims)
    mean /= counts[:, None]
    label = np.full(len(ids), -2)
    label[inverse] = truth_idx  # one object per presentation
    best, top = mean.max(axis=1), mean.argmax(axis=1)
    return max(float((counts * (np.where(best >= t, top, -1) == label)).sum() / counts.sum()) for t in np.unique(best))


def margin_scores(sims: np.ndarray) -> np.ndarray:
    """The candidate rejection score: the best cosine plus its lead over the second best
    (``2 * top1 - top2``), float ``(N,)`` from ``(N, C)`` similarities, C >= 2."""
    top = np.sort(sims, axis=1)
    return (2 * top[:, -1] - top[:, -2]).astype(np.float64)


def loo_similarities(queries: np.ndarray, shots: np.ndarray, labels: np.ndarray,
                     normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each enrolled shot scored as a query against every class, its own class's prototype
    rebuilt without it.

    Args:
        queries: float ``(N, D)`` the shots as a camera frame is embedded (one view each).
        shots: float ``(N, D)`` the shots as the head sums them (the same, or the mean of
            several views of each shot).
        labels: ``(N,)`` classes.
        normalize: L2-normalise ``shots`` before summing (cosine heads).

    Returns:
        ``(sims float (N, C), multi bool (N,))``: ``multi`` marks shots of classes with 2+ shots,
        the only ones with a leave-one-out own score.
    """
    q = l2_normalize(np.asarray(queries, np.float32))
    rows = l2_normalize(np.asarray(shots, np.float32)) if normalize else np.asarray(shots, np.float32)
    classes, y = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(classes), q.shape[1]), np.float64)
    np.add.at(sums, y, rows)
    counts = np.bincount(y, minlength=len(classes))
    sims = q @ l2_normalize((sums / counts[:, None]).astype(np.float32)).T
    own = l2_normalize(((sums[y] - rows) / np.maximum(counts[y] - 1, 1)[:, None]).astype(np.float32))
    sims[np.arange(len(y)), y] = (q * own).sum(axis=1)
    return sims, counts[y] >= 2


def loo_margin_scores(x: np.ndarray, labels: np.ndarray, normalize: bool) -> np.ndarray:
    """:func:`margin_scores` of each enrolled shot (of a class with 2+ shots) with its own class's
    prototype rebuilt without it: the known scores a threshold on that score is calibrated from,
    as the store calibrates its best-cosine threshold (:func:`edgefs.heads.openset.loo_scores`)."""
    sims, multi = loo_similarities(x, x, labels, normalize)
    return margin_scores(sims[multi])


def measure(clf: Classifier, images: list[np.ndarray], truth: np.ndarray, shown: np.ndarray,
            enrolled: list[str]) -> dict[str, Any]:
    """The table's figures for one classifier whose store holds the enrolled classes.

    Where the store enrolls with shot views (:mod:`edgefs.service.views`) the head sums view means and
    every calibration here scores the shots' single views, as the store's own does.
    """
    head = clf.head
    emb = np.concatenate([clf.embed(clf.prepare(images[i:i + 64])) for i in range(0, len(images), 64)])
    sims = row_dots(l2_normalize(head.transform(emb)), head.prototypes)
    best = sims.max(axis=1).astype(np.float64)
    classes = list(head.classes)
    known = np.isin(truth, enrolled)
    right = np.array(classes)[sims.argmax(axis=1)] == truth
    threshold = float(clf.threshold)
    x, labels, _, queries = clf.store.all_embeddings(with_singles=True)  # type: ignore[union-attr]
    loo, multi = loo_similarities(head.transform(queries), head.transform(x), labels, head.normalize_shots)
    looked = loo.max(axis=1)[multi]
    negative = np.where(np.eye(len(classes), dtype=bool)[labels], -np.inf, loo).max(axis=1)
    at95 = threshold_from_scores(looked, negative, len(classes), "loo", 0.95)
    assert abs(at95 - threshold) < 1e-5, (at95, threshold)  # the same rule as the store's calibration
    at90 = threshold_from_scores(looked, negative, len(classes), "loo", 0.90)
    oracle = max(np.unique(best), key=lambda t: open_accuracy(best, right, known, float(t)))
    truth_idx = np.array([classes.index(t) if t in classes else -1 for t in truth])
    margin = margin_scores(sims)
    loo, multi = loo_similarities(head.transform(queries), head.transform(x), labels, head.normalize_shots)
    known_margins = np.sort(margin_scores(loo[multi]))
    margin_threshold = float(known_margins[int(np.floor(0.05 * len(known_margins) + 1e-9))])
    margin_oracle = max(np.unique(margin), key=lambda t: open_accuracy(margin, right, known, float(t)))
    return {"closed_top1": float(right[known].mean()), "threshold": threshold,
            "known_rejected": float((best[known] < threshold).mean()),
            "unknown_rejected": float((best[~known] < threshold).mean()),
            "open_accuracy": open_accuracy(best, right, known, threshold),
            "threshold_90": float(at90), "open_accuracy_90": open_accuracy(best, right, known, float(at90)),
            "oracle_threshold": float(oracle), "oracle_open_accuracy": open_accuracy(best, right, known, float(oracle)),
            "presentation_oracle": presentation_oracle(sims, truth_idx, shown),
            "margin_threshold": margin_threshold,
            "margin_open_accuracy": open_accuracy(margin, right, known, margin_threshold),
            "margin_oracle_open_accuracy": open_accuracy(margin, right, known, float(margin_oracle))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", nargs="+", default=[f"colour={COLOUR_CHECKPOINT}"], help="NAME=CHECKPOINT")
    p.add_argument("--data", nargs="+", default=None,
                   help="built ImageFolders with a test split (default: the demo's units, built if missing)")
    p.add_argument("--class-seeds", nargs="+", type=int, default=[0],
                   help="draws of the 5 enrolled + 2 never-enrolled classes (0: the demo's)")
    p.add_argument("--shots", type=int, default=None, help="shots per enrolled class (default: the demo's)")
    p.add_argument("--shot-views", nargs="+", type=int, default=None, choices=[1, 5, 7],
                   help="views per enrolled shot to compare (edgefs.service.views; default: the demo's, 7)")
    p.add_argument("--seeds", type=int, default=4, help="offline streams (camera seeds)")
    p.add_argument("--frames", type=int, default=450, help="frames per stream")
    p.add_argument("--every", type=int, default=3, help="keep every N-th frame")
    p.add_argument("--out", default="reports/openset-colour", help="the report folder")
    p.add_argument("--work", default="runs/openset", help="bundles and class stores")
    args = p.parse_args(argv)
    bad = [c for c in args.checkpoints if not all(c.partition("=")[::2]) or not Path(c.partition("=")[2]).is_file()]
    if bad:
        p.error(f"--checkpoints takes NAME=CHECKPOINT with an existing file, got {', '.join(map(repr, bad))}")
    if args.shots is not None and args.shots < 1:
        p.error(f"--shots must be at least 1, got {args.shots}")
    if min(args.class_seeds) < 0:
        p.error(f"--class-seeds must be 0 or more, got {min(args.class_seeds)}")
    if min(args.seeds, args.frames, args.every) < 1 or args.frames < HOLD:
        p.error(f"--seeds and --every must be at least 1 and --frames at least {HOLD}")
    missing = [d for d in args.data or [] if not (Path(d) / "test").is_dir()]
    if missing:
        p.error(f"no test split in {', '.join(missing)}; build a domain with 'edgefs data DOMAIN --out DIR'")
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    base = demo_config("colour", **({} if args.shots is None else {"shots": args.shots}))
    if args.data is None:
        ensure_data(base, lambda _: None)
    cases = []  # (data folder, class seed, config, enrolled, unknown, images, truth, presentation ids)
    for data in args.data or [str(base.data)]:
        for seed in args.class_seeds:
            cfg = replace(base, data=Path(data), seed=seed)
            enrolled, unknown, _ = choose_classes(cfg)
            cases.append((data, seed, cfg, enrolled, unknown,
                          *stream(cfg, enrolled + unknown, args.seeds, args.frames, args.every)))
    rows = []
    for item in args.checkpoints:
        name, _, ckpt = item.partition("=")
        bundle = work / f"{name.replace(' ', '_')}.edgefs"
        export_bundle(ckpt, bundle, data=str(cases[0][2].data), parity_images=8, overwrite=True, log=lambda _: None)
        for views, (data, seed, cfg, enrolled, unknown, images, truth, shown) in itertools.product(
                args.shot_views or [base.shot_views], cases):
            store = work / f"{name.replace(' ', '_')}.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{store}{suffix}").unlink(missing_ok=True)
            options = EngineOptions(backend="onnxruntime", shot_views=views)
            with Classifier.open(bundle, store, options=options, log=lambda _: None) as clf:
                enroll_from_synthetic(clf, cfg, enrolled, log=lambda _: None)
                figures = measure(clf, images, truth, shown, enrolled)
                size = clf.bundle.manifest.input_size
            rows.append({"model": name if views == 1 else f"{name}, {views} views per shot", "checkpoint": ckpt,
                         "views": views, "input": size, "data": data, "class_seed": seed,
                         "enrolled": enrolled, "unknown": unknown, "frames": len(images),
                         "enrolled_frames": int(np.isin(truth, enrolled).sum()), **figures})
            print({k: v for k, v in rows[-1].items() if k not in ("enrolled", "unknown")}, flush=True)
    write_report(out, rows, base.shots, args)
    return 0


FIGURES = ("closed_top1", "known_rejected", "unknown_rejected", "open_accuracy", "open_accuracy_90",
           "oracle_open_accuracy", "presentation_oracle", "margin_open_accuracy", "margin_oracle_open_accuracy")


def write_report(out: Path, rows: list[dict[str, Any]], shots: int, args: argparse.Namespace) -> None:
    lines = [f"Colour demo camera: per data set and draw, 5 classes enrolled from {shots} camera shots each (region "
             "of interest, as the demo enrolls) and 2 never enrolled; "
             f"{args.seeds} offline streams of {args.frames} frames, one frame in {args.every} kept, per frame, no "
             "smoothing, ONNX Runtime FP32, device head. Oracle columns use the best fixed threshold for that very "
             "stream (no calibration can beat them); 'presentation oracle' decides each presentation of an object "
             "by its frames' mean similarity: the most any smoothing could give. 'margin score' columns "
             "rank frames by a candidate rejection score that edgefs does not use yet, the best cosine plus its "
             "lead over the second best (2 top1 - top2), its automatic threshold chosen as the store's is (95% of "
             "the shots' leave-one-out scores kept). Machine: "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores.", "",
             "| model | input | data | draw | enrolled / never enrolled | closed-set top-1 | auto threshold | "
             "enrolled called unknown | never-enrolled called unknown | open-set (auto) | open-set (auto, 90%) | "
             "open-set (oracle) | presentation oracle | margin score: open-set (auto) | margin score: open-set "
             "(oracle) |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['model']} | {r['input'][0]} px | {r['data']} | {r['class_seed']} | "
                     f"{', '.join(r['enrolled'])} / {', '.join(r['unknown'])} | {pct(r['closed_top1'])} | "
                     f"{r['threshold']:.3f} | " + " | ".join(pct(r[k]) for k in FIGURES[1:]) + " |")
    models = list(dict.fromkeys(r["model"] for r in rows))
    if len(rows) > len(models):
        for m in models:
            mine = [r for r in rows if r["model"] == m]
            mean = {k: float(np.mean([r[k] for r in mine])) for k in FIGURES}
            lines.append(f"| **{m}: mean of {len(mine)}** | | | | | {pct(mean['closed_top1'])} | | "
                         + " | ".join(pct(mean[k]) for k in FIGURES[1:]) + " |")
    (out / "openset.json").write_text(json.dumps({"shots": shots, "args": vars(args), "rows": rows}, indent=2))
    (out / "openset.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
