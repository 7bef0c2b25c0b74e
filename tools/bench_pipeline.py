"""Sustained FPS and end-to-end latency of the camera loop, per backbone, on this machine.

Usage::

    python tools/bench_pipeline.py                       # conv4 (trained), efficientnet_lite0, resnet12
    python tools/bench_pipeline.py --backbones conv4 --seconds 30
    python tools/bench_pipeline.py --backbones efficientnet_lite0@224,efficientnet_lite0@160 \
        --engines onnxruntime:fp32,onnxruntime:int8,openvino:fp32,openvino:int8
    python tools/bench_pipeline.py --preset colour --backbones colour --roi "0.7;full" --shot-views 1 7 \
        --seconds 60 --report reports/pipeline-colour    # the colour demo's camera and model

Accuracy on the live streams moves by several points between 15 s runs (about ten
presentations per camera); the colour figures in the docs (docs/benchmarks/camera.md) come from 60 s runs.

For each backbone a bundle is exported (conv4 from the committed trained
checkpoint; efficientnet_lite0 with its ImageNet weights and resnet12 untrained,
for timing only; ``colour`` is the committed colour model), 5 unseen classes are
enrolled from the synthetic camera as ``edgefs demo`` does (``--preset glyphs``:
glyphs, shots from some fonts and the stream in others; ``--preset colour``: unit
sprites of the units test split, small in the frame, shots and stream from the
same designs, embedded through the region of interest ``--roi``), and two scenarios run through the real
:class:`edgefs.camera.loop.Pipeline` with ONNX Runtime on the CPU:

* ``file x1``: one 320x240 MJPG video file (300 frames of the synthetic camera),
  read as fast as the loop takes it: end-to-end FPS, and per-frame compute
  (preprocess + embed + head) p50/p99;
* ``live x4``: four live synthetic cameras at 30 FPS each for ``--seconds``:
  sustained FPS, capture-to-result latency p50/p99, the oldest frame at
  processing, dropped stale frames, and accuracy against the stream's ground
  truth (5 enrolled + 2 never-enrolled classes; meaningful for the trained conv4
  only).

Beside them, two static references of the same head on the designs the stream
shows (:func:`edgefs.demo.static_references`): camera stills (frames of the same
synthetic camera with the scene still: no motion, no motion blur; 6 per design)
and the clean images on white. Prints a markdown table and writes
``REPORT/pipeline.json`` and ``REPORT/pipeline.md``. A benchmark, not a test:
run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgefs.camera.loop import LOOP_ENGINE_DEFAULTS, Pipeline, RunConfig, loop_threads
from edgefs.camera.sources import open_source
from edgefs.demo import (
    COLOUR_CHECKPOINT,
    DEFAULT_CHECKPOINT,
    DemoConfig,
    camera_options,
    choose_classes,
    demo_config,
    enroll_from_synthetic,
    ensure_data,
    static_references,
)
from edgefs.runtime.bench import machine_info
from edgefs.runtime.bundle import exported_from, source_checkpoint
from edgefs.runtime.roi import Roi
from edgefs.service.classifier import Classifier
from edgefs.service.options import EngineOptions


def quiet(_: str) -> None:
    pass


def make_bundle(backbone: str, out: Path, data: Path) -> tuple[Path, str]:
    """A bundle for ``backbone`` (``name`` or ``name@SIZE``) under ``out`` and what its weights are."""
    import torch
    from edgefs.export import export_bundle

    from edgefs.backbones import build_backbone
    from edgefs.methods import build_method
    from edgefs.train.checkpoint import save_checkpoint

    name, _, size = backbone.partition("@")
    options = {"input_size": int(size)} if size else {}
    bundle = out / f"{backbone}.edgefs"
    if backbone in ("conv4", "colour"):
        ckpt = DEFAULT_CHECKPOINT if backbone == "conv4" else COLOUR_CHECKPOINT
        what = f"trained ({ckpt.name})"
    else:
        what = "ImageNet weights, not meta-trained" if name == "efficientnet_lite0" else "untrained"
        ckpt = out / f"{backbone}.pt"
        if not ckpt.is_file():
            torch.manual_seed(0)
            method = build_method("protonet", build_backbone(name, **options))
            save_checkpoint(ckpt, method, {"config": {"data": str(data)}, "episode": 0, "best_val": None})
    if not exported_from(bundle, ckpt):  # missing, or left by another checkpoint at the same path
        export_bundle(ckpt, bundle, data=str(data), parity_images=16, overwrite=True, log=quiet)
    return bundle, what


def write_clip(path: Path, data: Path, cfg: DemoConfig, classes: list[str], frames: int) -> None:
    if path.is_file():
        return
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (320, 240))
    src = open_source("synthetic:" + str(data), **camera_options(cfg, classes=classes, frames=frames, seed=11,
                                                                  instances=cfg.stream_instances))
    with src:
        for f in iter(src.read, None):
            writer.write(cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR))
    writer.release()


def scenario(clf: Classifier, config: RunConfig) -> dict[str, Any]:
    pipeline = Pipeline(clf, config, log=quiet)
    summary = pipeline.run()
    ms = pipeline.times.ms
    compute = np.asarray(ms["preprocess"]) + np.asarray(ms["embed"]) + np.asarray(ms["head"])
    out = summary.to_json()
    out["compute_ms"] = {"p50": float(np.percentile(compute, 50)), "p99": float(np.percentile(compute, 99))}
    out["mean_batch"] = summary.frames / max(len(compute), 1)
    return out


def int8_bundle(bundle: Path, args: argparse.Namespace) -> Path:
    """``bundle`` quantised by ``edgefs quantize`` on synthetic-camera colour frames of train-split classes."""
    from bench_precisions import render_frames  # tools/ is on sys.path when this runs as a script
    from edgefs.export.quantize import quantize_bundle

    out = bundle.with_name(bundle.name.replace(".edgefs", "-int8.edgefs"))
    made_from = source_checkpoint(out)
    if made_from is None or made_from != source_checkpoint(bundle):  # missing, or quantised from another export
        calib = render_frames(args.data, args.out_dir / "frames-train", "train", 60, 6, seed=11)
        quantize_bundle(bundle, calib, out, overwrite=True, log=quiet)
    return out


def bench_backbone(backbone: str, args: argparse.Namespace, engine: str = "onnxruntime:fp32",
                   roi: Roi | None = None, shot_views: int | None = None, head: str | None = None) -> dict[str, Any]:
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    bundle, weights = make_bundle(backbone, out, args.data)
    backend, _, precision = engine.partition(":")
    if precision == "int8":
        bundle = int8_bundle(bundle, args)
    cfg = demo_config(args.preset, data=args.data, seed=args.seed, roi=roi, shots=args.shots,
                      shot_views=shot_views)
    enrolled, unknown, designs = choose_classes(cfg)
    store = out / f"{backbone}-{backend}-{precision}-{cfg.roi.to_text()}-{cfg.shot_views}-{head or 'bundle'}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    clip = out / f"clip300-{args.preset}.avi"
    write_clip(clip, args.data, cfg, enrolled + unknown, 300)
    options = EngineOptions(backend=backend, device="cpu", threads=args.threads or loop_threads(),
                            shot_views=cfg.shot_views, head_type=head)
    with Classifier.open(bundle, store, options=options, log=quiet, engine_defaults=LOOP_ENGINE_DEFAULTS) as clf:
        enroll = enroll_from_synthetic(clf, cfg, enrolled, log=quiet)
        refs = static_references(clf, cfg, enrolled, designs)
        file1 = scenario(clf, RunConfig(sources=[str(clip)], roi=cfg.roi))
        live_opts = camera_options(cfg, classes=enrolled + unknown, instances=cfg.stream_instances, live=True,
                                   fps=30.0)
        live4 = scenario(clf, RunConfig(
            sources=[f"synthetic:{args.data}?seed={s}" for s in range(4)], duration_s=args.seconds,
            source_options=live_opts, batch_wait_ms=args.batch_wait, roi=cfg.roi))
    return {"backbone": backbone, "engine": clf.engine.describe() if clf.engine else engine,
            "backend": backend, "precision": clf.engine.precision if clf.engine else precision,
            "head": clf.head.head_type,
            "weights": weights, "input": clf.bundle.manifest.input_size, "roi": cfg.roi.to_text(),
            "object_size": cfg.object_size, "same_designs": cfg.enroll_designs == 0, "shots": cfg.shots,
            "shot_views": cfg.shot_views, "seconds": args.seconds,
            "enroll_ms_median": float(np.median([r.timings_ms["total"] for r in enroll])),
            "static_top1": refs["clean"].top1, "static_images": refs["clean"].images,
            "still_top1": refs["stills"].top1, "still_frames": refs["stills"].images,
            "file_x1": file1, "live_x4": live4}


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def markdown(rows: list[dict[str, Any]], machine: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "# Camera loop benchmark (tools/bench_pipeline.py)",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {platform.platform()}; engines on the CPU, "
        f"{args.threads or loop_threads()} engine thread(s). Synthetic camera at 320x240 (difficulty 0.3), "
        f"preset {args.preset} ({args.data}), {rows[0].get('shots', '?') if rows else '?'} shots per enrolled class. "
        f"Same run for every row; load average before / after: {args.load_before} / {args.load_after}.",
        "",
        "| backbone | engine | weights | input | roi | views per shot | head | file x1: FPS | compute p50 / p99 ms "
        "| live x4: FPS (4 x 30 offered) | capture-to-result p50 / p99 ms | oldest frame ms | dropped "
        "| accuracy (smoothed) | accuracy (per frame) | stream top-1 "
        "| camera stills (no motion) top-1 | clean images on white top-1 | unknown rejected | enroll ms |",
        "|---|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        f, lv = r["file_x1"], r["live_x4"]
        t = lv["stages_ms"]["total"]
        lines.append(
            f"| {r['backbone'].partition('@')[0]} | {r['backend']} {r['precision']} | {r['weights']} "
            f"| {r['input'][0]} px | {r.get('roi', 'full')} | {r.get('shot_views', 1)} | {r.get('head', '')} "
            f"| {f['fps']:.0f} | "
            f"{f['compute_ms']['p50']:.2f} / {f['compute_ms']['p99']:.2f} | {lv['fps']:.1f} | "
            f"{t['p50']:.1f} / {t['p99']:.1f} | {lv['max_age_ms']:.1f} | {lv['dropped']} | {pct(lv['accuracy'])} | "
            f"{pct(lv.get('raw_accuracy'))} | "
            f"{pct(lv['known_top1'])} | {pct(r['still_top1'])} | {pct(r['static_top1'])} | "
            f"{pct(lv['unknown_rejected'])} | "
            f"{r['enroll_ms_median']:.1f} |")
    lines += [
        "",
        "file x1: every frame of a 300-frame MJPG file, read as fast as the loop takes it (decode included). "
        f"live x4: four synthetic cameras paced at 30 FPS each for {args.seconds:g} s, one batch per loop over "
        "their latest frames; "
        "latency is from capture (the frame's timestamp) to the head's result; the oldest frame is its age when "
        "processing starts. Accuracy: smoothed label against ground truth over 5 enrolled + 2 never-enrolled "
        "classes (the latter must be 'unknown'), and the same for the label of each frame before smoothing; "
        "stream top-1: per-frame closed-set top-1 on enrolled-class "
        "frames; camera stills: the same head, per frame, on still frames of the same synthetic camera "
        "(same designs, backgrounds, light and region of interest; no motion, no motion blur), the stream's "
        "reference; clean images on white: the same head on the designs' image files. Accuracy figures mean "
        "something for the trained models (conv4 on glyphs, colour on the colour preset); the others are here for "
        "speed. Colour preset: shots and stream show the same designs (the objects the user enrolled), the object "
        "is half the frame's shorter side, and the region of interest ('roi') is what is embedded. Views per shot: "
        "each enrolled shot is the mean embedding of that many views of it (edgefs.service.views; the enroll ms "
        "include embedding them).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbones", default="conv4,efficientnet_lite0,resnet12",
                   help="comma-separated; NAME@SIZE sets the input size, e.g. efficientnet_lite0@160")
    p.add_argument("--engines", default="onnxruntime:fp32",
                   help="comma-separated BACKEND:PRECISION rows per backbone, e.g. onnxruntime:fp32,onnxruntime:int8,"
                        "openvino:fp32,openvino:int8 (int8: the bundle quantised with edgefs quantize on synthetic "
                        "colour frames of train-split classes)")
    p.add_argument("--preset", choices=["glyphs", "colour"], default="glyphs",
                   help="the demo's data, camera and enrollment (default glyphs)")
    p.add_argument("--data", type=Path, help="default: the preset's (data/glyphs28, data/demo/units)")
    p.add_argument("--roi", default=None, help="regions of interest to compare, ';'-separated "
                   "(default: the preset's), e.g. 'full;0.7'")
    p.add_argument("--seconds", type=float, default=15.0, help="length of the live x4 scenario")
    p.add_argument("--shots", type=int, default=None, help="shots per enrolled class (default: the preset's)")
    p.add_argument("--shot-views", type=int, nargs="+", choices=[1, 5, 7], default=None,
                   help="views per enrolled shot to compare, e.g. '1 7' (default: the preset's)")
    p.add_argument("--heads", default=None, help="device heads to compare, comma-separated, e.g. "
                   "'prototype,align' (default: the bundle's)")
    p.add_argument("--threads", type=int, default=None, help="engine threads (default: cores - 1)")
    p.add_argument("--batch-wait", type=float, default=0.0, help="edgefs run --batch-wait for live x4 (ms)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=Path("runs/bench_pipeline"))
    p.add_argument("--report", type=Path, default=Path("reports/pipeline"))
    args = p.parse_args(argv)
    if args.shots is not None and args.shots < 1:
        p.error(f"--shots must be at least 1, got {args.shots}")
    preset = demo_config(args.preset)
    args.data = args.data or preset.data
    if args.preset == "colour":
        ensure_data(demo_config("colour", data=args.data))
    if not (args.data / "test").is_dir():
        print(f"{args.data}/test missing; render it with `edgefs data glyphs --out {args.data}`", file=sys.stderr)
        return 2
    rois = [Roi.parse(t) for t in args.roi.split(";")] if args.roi else [preset.roi]
    heads: list[str | None] = [h.strip() for h in args.heads.split(",") if h.strip()] if args.heads else [None]
    rows = []
    args.load_before = [round(x, 1) for x in os.getloadavg()]
    for backbone in [b for b in args.backbones.split(",") if b]:
        for engine in [e for e in args.engines.split(",") if e]:
            for roi, views, head in itertools.product(rois, args.shot_views or [preset.shot_views], heads):
                t = time.perf_counter()
                rows.append(bench_backbone(backbone, args, engine, roi, views, head))
                print(f"{backbone} {engine} roi {roi.to_text()} views {views} head {head or 'bundle'}: done in "
                      f"{time.perf_counter() - t:.0f} s", file=sys.stderr)
    args.load_after = [round(x, 1) for x in os.getloadavg()]
    machine = machine_info()
    text = markdown(rows, machine, args)
    print(text)
    args.report.mkdir(parents=True, exist_ok=True)
    (args.report / "pipeline.md").write_text(text + "\n")
    (args.report / "pipeline.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
