"""Latency and throughput of the device pipeline, stage by stage, like ``trtexec`` (no torch).

For each batch size, every iteration runs the camera path once and times each stage:

``preprocess``
    a synthetic 640x480 BGR camera frame, ``batch`` times, through
    :func:`edgefs.runtime.preprocess.to_batch` (center crop, resize, BGR -> RGB);
``embed``
    :meth:`Engine.embed` on that batch (host in, host out);
``head``
    the NumPy prototype head (:func:`edgefs.heads.prototype.prototype_logits`, then
    argmax) against ``classes`` random prototypes, with the bundle's distance;
``total``
    the three together, per iteration.

Each stage reports p50/p90/p99/mean/min/max latency in milliseconds and throughput
in images per second (``batch / mean latency``). Benchmarks are programs: tests
check the report's structure, never its numbers.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgefs import __version__
from edgefs.errors import EdgefsError
from edgefs.heads.prototype import prototype_logits
from edgefs.runtime.bundle import Bundle, read_bundle
from edgefs.runtime.engine import Engine
from edgefs.runtime.onnxruntime_backend import default_threads
from edgefs.runtime.preprocess import to_batch
from edgefs.runtime.select import open_engine

STAGES = ("preprocess", "embed", "head", "total")
CAMERA_SIZE = (480, 640)  # (height, width) of the synthetic camera frame
PACKAGES = ("numpy", "opencv-python-headless", "opencv-python", "onnxruntime", "onnxruntime-gpu", "torch",
            "tensorrt")


def latency_stats(seconds: Sequence[float], batch: int) -> dict[str, float]:
    """Args: per-iteration times in seconds; images per iteration.

    Returns: ``{"p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms", "images_per_s"}``.
    """
    ms = np.asarray(seconds, np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    mean = float(ms.mean())
    return {
        "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": mean,
        "min_ms": float(ms.min()), "max_ms": float(ms.max()),
        "images_per_s": batch * 1e3 / mean if mean > 0 else float("inf"),
    }


def camera_frame(seed: int = 0) -> np.ndarray:
    """A synthetic camera frame: uint8 ``(480, 640, 3)`` BGR, a smooth gradient plus sensor noise."""
    h, w = CAMERA_SIZE
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (w + h)], axis=-1)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def _cpu_model() -> str:
    for path, keys in ((Path("/proc/device-tree/model"), None), (Path("/proc/cpuinfo"), ("model name", "Model"))):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if keys is None:
            return text.strip("\x00\n ")
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in keys and value.strip():
                return value.strip()
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    found = {"edgefs": __version__, "opencv": cv2.__version__, "python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def machine_info(engine: Engine | None = None) -> dict[str, Any]:
    """The machine and, given one, the engine: CPU model, cores, platform, versions, backend, providers."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "usable_cores": default_threads(),
        "platform": platform.platform(), "machine": platform.machine(), "versions": _versions(),
    }
    if engine is not None:
        info.update({
            "backend": engine.backend, "device": engine.device, "precision": engine.precision,
            "providers": getattr(engine, "providers", None), "threads": getattr(engine, "threads", None),
            "engine": engine.describe(),
        })
    return info


def _head_rule(bundle: Bundle) -> tuple[str, float]:
    """The bundle's prototype distance and temperature; cosine for any other head type."""
    if bundle.head.head_type == "prototype":
        return str(bundle.head.params.get("distance", "euclidean")), float(bundle.head.params.get("temperature", 1.0))
    return "cosine", 1.0


def bench_engine(
    engine: Engine,
    batches: Sequence[int] = (1, 8),
    iterations: int = 100,
    warmup: int = 10,
    classes: int = 100,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Time preprocess, embed and head on an open engine.

    Args:
        engine: the engine to time.
        batches: batch sizes, each timed separately.
        iterations: timed iterations per batch size.
        warmup: untimed iterations first (allocations, lazy initialisation, caches).
        classes: random prototypes the head scores against.
        seed: for the camera frame and the prototypes.

    Returns:
        one row per batch size: ``{"batch", "iterations", "stages": {stage: latency_stats}}``.
    """
    if iterations < 1 or warmup < 0 or classes < 1 or not batches or min(batches) < 1:
        raise EdgefsError(
            f"bench needs iterations >= 1, warmup >= 0, classes >= 1 and positive batch sizes; got "
            f"iterations={iterations}, warmup={warmup}, classes={classes}, batches={list(batches)}"
        )
    manifest = engine.bundle.manifest
    distance, temperature = _head_rule(engine.bundle)
    rng = np.random.default_rng(seed)
    prototypes = rng.standard_normal((classes, manifest.embedding_dim)).astype(np.float32)
    frame = camera_frame(seed)
    rows = []
    for batch in batches:
        frames = [frame] * batch
        times = {stage: [] for stage in STAGES}
        for i in range(warmup + iterations):
            t0 = time.perf_counter()
            images = to_batch(frames, manifest)
            t1 = time.perf_counter()
            embeddings = engine.embed(images)
            t2 = time.perf_counter()
            prototype_logits(embeddings, prototypes, distance, temperature).argmax(axis=1)
            t3 = time.perf_counter()
            if i >= warmup:
                for stage, seconds in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
                    times[stage].append(seconds)
        rows.append({
            "batch": int(batch), "iterations": iterations,
            "stages": {stage: latency_stats(times[stage], batch) for stage in STAGES},
        })
    return rows


def format_table(report: dict[str, Any]) -> str:
    """A report as a fixed-width text table: one line per batch size and stage."""
    head = report["head"]
    lines = [
        f"{report['bundle']['name']}: {report['machine']['engine']}; input {report['bundle']['input_size']} px, "
        f"{report['bundle']['embedding_dim']}-d; head {head['rule']} {head['distance']} x {head['classes']} classes; "
        f"{report['config']['iterations']} iterations after {report['config']['warmup']} warm-up",
        f"{'batch':>5}  {'stage':<10} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'mean ms':>9} {'images/s':>10}",
    ]
    for row in report["results"]:
        for stage in STAGES:
            s = row["stages"][stage]
            lines.append(
                f"{row['batch']:>5}  {stage:<10} {s['p50_ms']:>9.3f} {s['p90_ms']:>9.3f} {s['p99_ms']:>9.3f} "
                f"{s['mean_ms']:>9.3f} {s['images_per_s']:>10.1f}"
            )
    return "\n".join(lines)


def run_bench(
    bundle: Bundle | str | Path,
    backend: str = "auto",
    device: str | None = None,
    precision: str = "fp32",
    batches: Sequence[int] = (1, 8),
    iterations: int = 100,
    warmup: int = 10,
    threads: int | None = None,
    classes: int = 100,
    json_out: str | Path | None = None,
    log: Callable[[str], None] = print,
    engine_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Open a bundle's engine, time the pipeline, log a table and (``json_out``) write the report.

    Args:
        bundle: a bundle or its folder.
        backend, device, precision, threads: as :func:`edgefs.runtime.select.open_engine` takes them.
        batches, iterations, warmup, classes: as :func:`bench_engine` takes them.
        json_out: where to write the report as JSON (parents are created).
        log: receives the engine choice and the table.
        engine_options: backend tuning (:func:`edgefs.runtime.select.open_engine`'s ``options``).

    Returns:
        ``{"created", "bundle": {...}, "machine": machine_info, "config": {...},
        "head": {...}, "results": bench_engine rows}``.
    """
    if not isinstance(bundle, Bundle):
        bundle = read_bundle(bundle)
    engine = open_engine(bundle, backend=backend, device=device, precision=precision, threads=threads, log=log,
                         options=engine_options)
    distance, _ = _head_rule(bundle)
    results = bench_engine(engine, batches, iterations, warmup, classes)
    h, w = bundle.manifest.input_size
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bundle": {
            "name": bundle.path.name, "path": str(bundle.path), "fingerprint": bundle.fingerprint,
            "backbone": bundle.manifest.backbone.get("name"), "input_size": h if h == w else [h, w],
            "embedding_dim": bundle.manifest.embedding_dim,
        },
        "machine": machine_info(engine),
        "config": {
            "backend": backend, "device": device, "precision": precision, "batches": [int(b) for b in batches],
            "iterations": iterations, "warmup": warmup, "threads": threads, "camera": list(CAMERA_SIZE),
            "preprocess": "center_crop",
        },
        "head": {"rule": "prototype", "distance": distance, "classes": classes},
        "results": results,
    }
    log(format_table(report))
    if json_out is not None:
        out = Path(json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        log(f"wrote {out}")
    return report
