"""What a live enrollment costs the stream: latency of the frames classified while a class commits.

Usage::

    python tools/bench_live_enroll.py                         # the colour demo's model, views 1 and 7
    python tools/bench_live_enroll.py --cameras 1 --seconds 20 --shot-views 1 5 7

Per row, a fresh class store holds 4 classes enrolled from the colour demo's synthetic
camera; then ``--cameras`` live synthetic cameras at 30 FPS run through the real
:class:`edgefs.camera.loop.Pipeline` (ONNX Runtime FP32 on the CPU, the loop's
engine threads) while a fifth class is enrolled live from camera 0 (5 shots,
``--shot-views`` views each), as ``edgefs run --enroll`` does. With more than one view
the extra views are embedded on the loop's thread a few at a time
(:data:`edgefs.camera.loop.VIEWS_PER_CALL`), between batches.

Reported per row: the commit (from the last shot to the class being live) in ms, the
enrollment's own timings, frames and dropped stale frames, and capture-to-result latency
p50 / p99 / max of the frames classified while the enrollment committed against the
frames of the rest of the run. Prints a markdown table and writes ``OUT/live_enroll.json``
and ``OUT/live_enroll.md``. A benchmark, not a test: run it on a quiet machine.
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

from edgefs.camera.loop import LOOP_ENGINE_DEFAULTS, VIEWS_PER_CALL, Pipeline, RunConfig, loop_threads
from edgefs.demo import camera_options, choose_classes, demo_config, enroll_from_synthetic, ensure_data
from edgefs.service.classifier import Classifier
from edgefs.service.options import EngineOptions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import make_bundle


def quiet(_: str) -> None:
    pass


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max()),
            "n": len(values)}


def run_row(bundle: Path, views: int, args: argparse.Namespace) -> dict[str, Any]:
    cfg = demo_config("colour", seed=args.seed)
    enrolled, unknown, _ = choose_classes(cfg)
    before, target = enrolled[:4], enrolled[4]
    store = args.out_dir / f"live-{views}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    options = EngineOptions(backend="onnxruntime", device="cpu", threads=args.threads or loop_threads(),
                            shot_views=views)
    with Classifier.open(bundle, store, options=options, log=quiet, engine_defaults=LOOP_ENGINE_DEFAULTS) as clf:
        enroll_from_synthetic(clf, cfg, before, log=quiet)
        options = camera_options(cfg, classes=enrolled + unknown, instances=cfg.stream_instances, live=True,
                                 fps=30.0)
        run_cfg = RunConfig(sources=[f"synthetic:{cfg.data}?seed={s}" for s in range(args.cameras)],
                            duration_s=args.seconds, source_options=options, roi=cfg.roi, enroll=target, shots=5,
                            enroll_delay_s=args.delay, enroll_interval_s=0.2)
        logs: list[str] = []
        pipeline = Pipeline(clf, run_cfg, log=logs.append)
        during, rest = [], []
        commit_start = commit_end = None
        for event in pipeline.events():
            e = pipeline.enrollment
            now = time.monotonic()
            committing = e is not None and e.phase == "committing"
            if committing and commit_start is None:
                commit_start = now
            if commit_start is not None and commit_end is None and not committing:
                commit_end = now
            (during if committing else rest).append(event["latency_ms"])
        summary = pipeline.summary()
        result = next((line for line in logs if line.startswith(f"enrolled {target!r}")), None)
    return {"views": views, "cameras": args.cameras, "seconds": args.seconds, "enrolled": target in clf.classes,
            "commit_ms": None if commit_start is None or commit_end is None else (commit_end - commit_start) * 1e3,
            "result": result, "frames": summary.frames, "dropped": summary.dropped, "fps": summary.fps,
            "latency_during_commit": percentiles(during), "latency_rest": percentiles(rest)}


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace, load: list[list[float]]) -> str:
    lines = [
        "# Live enrollment while the camera loop runs (tools/bench_live_enroll.py)", "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; "
        f"ONNX Runtime FP32 on the CPU, {args.threads or loop_threads()} engine thread(s); the colour demo's model "
        f"(224 px) and camera, {args.cameras} live camera(s) at 30 FPS for {args.seconds:g} s; 4 classes enrolled "
        f"before the run, a fifth live from camera 0 (5 shots); extra views embedded on the loop's thread "
        f"{VIEWS_PER_CALL} at a time. Load average before / after: {load[0]} / {load[1]}.", "",
        "| views per shot | enrolled | commit ms (last shot to live) | frames | FPS | dropped "
        "| latency while committing p50 / p99 / max ms (frames) | latency otherwise p50 / p99 / max ms |",
        "|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        d, o = r["latency_during_commit"], r["latency_rest"]
        lines.append(f"| {r['views']} | {'yes' if r['enrolled'] else 'no'} | {fmt(r['commit_ms'], 0)} | {r['frames']} "
                     f"| {r['fps']:.1f} | {r['dropped']} | {fmt(d['p50'])} / {fmt(d['p99'])} / {fmt(d['max'])} "
                     f"({d['n']}) | {fmt(o['p50'])} / {fmt(o['p99'])} / {fmt(o['max'])} |")
    lines += ["", "Enrollment lines as the loop logged them:", ""]
    lines += [f"- views {r['views']}: {r['result']}" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shot-views", type=int, nargs="+", choices=[1, 5, 7], default=[1, 7])
    p.add_argument("--cameras", type=int, choices=range(1, 9), default=4, metavar="1-8")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--delay", type=float, default=3.0, help="seconds before the first shot")
    p.add_argument("--threads", type=int, default=None, help="engine threads (default: cores - 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=Path("runs/bench_live_enroll"))
    p.add_argument("--report", type=Path, default=Path("reports/live-enroll"))
    args = p.parse_args(argv)
    if args.seconds <= args.delay + 3:
        p.error("--seconds must leave at least 3 s after --delay for the shots and the commit")
    cfg = demo_config("colour")
    ensure_data(cfg, quiet)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    bundle, _ = make_bundle("colour", args.out_dir, cfg.data)
    load = [[round(x, 1) for x in os.getloadavg()]]
    rows = [run_row(bundle, v, args) for v in args.shot_views]
    load.append([round(x, 1) for x in os.getloadavg()])
    text = markdown(rows, args, load)
    print(text)
    args.report.mkdir(parents=True, exist_ok=True)
    (args.report / "live_enroll.md").write_text(text + "\n")
    (args.report / "live_enroll.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                              "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
