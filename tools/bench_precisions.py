"""ONNX Runtime and OpenVINO, FP32 and INT8, side by side in one process: embed speed and accuracy per input size.

Usage::

    python tools/bench_precisions.py                        # EfficientNet-Lite0 at 224, 160 and 128 px
    python tools/bench_precisions.py --sizes 224 --rounds 5 --threads 1
    python tools/bench_engines.py --compare ...             # the same

For each input size it exports an EfficientNet-Lite0 bundle with its ImageNet
weights (as ``edgefs train --backbone efficientnet_lite0 --episodes 0`` then
``edgefs export`` would), quantises it with ``edgefs quantize`` on colour frames
of the synthetic camera showing *train*-split glyph classes, and opens four
engines: ``onnxruntime`` and ``openvino`` on the FP32 and the INT8 bundle. The
engines are timed interleaved (round robin, ``--rounds`` rounds of
``--iterations`` calls each), so every row saw the same machine load; the table
gives ratios to ONNX Runtime FP32 measured in that same run.

Accuracy: frames of *test*-split classes (never used in calibration) are embedded
by every engine and scored on the same fixed 5-way 1-shot episodes with cosine
prototypes; beside it, the top-1 agreement and mean cosine with ONNX Runtime FP32.

The FLOP floor: multiply-accumulates of every Conv/Gemm/MatMul in the graph (from
ONNX shape inference) x 2, divided by a measured peak times the engine threads:
the best single-thread CPU time of ONNX Runtime's own kernels on a 1024x1024
product, a float32 MatMul for FP32 and a uint8 x int8 MatMulInteger (VNNI where
the CPU has it) for INT8. A large matrix product is the best case those kernels
reach; depthwise and elementwise layers cannot, so the floor is a bound, not a
target.

Writes ``REPORT/precisions.json`` and ``REPORT/precisions.md``. A benchmark,
not a test: the figures are only comparable within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgefs.runtime.bench import machine_info
from edgefs.runtime.calibration import open_calibration_source
from edgefs.runtime.select import open_engine

ENGINES = (("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "int8"))


def quiet(_: str) -> None:
    pass


def render_frames(data: Path, out: Path, split: str, n_classes: int, per_class: int, seed: int) -> Path:
    """An ImageFolder of synthetic-camera colour frames: ``out/<class>/<i>.jpg`` (kept between runs)."""
    from edgefs.camera.sources import open_source

    if out.is_dir() and any(out.iterdir()):
        return out
    hold = 6
    src = open_source(f"synthetic:{data}", split=split, n_classes=n_classes, seed=seed, hold=hold,
                      frames=hold * n_classes * per_class, difficulty=0.4, size="320x240")
    with src:
        for i, frame in enumerate(iter(src.read, None)):
            if i % hold != hold // 2 or frame.label is None:
                continue
            folder = out / frame.label.replace("/", "_")
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{i:05d}.jpg"), cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
    return out


def make_lite0(size: int, out: Path, data: Path) -> Path:
    """EfficientNet-Lite0 (ImageNet weights, not meta-trained) as a ``size``-px bundle."""
    import torch
    from edgefs.export import export_bundle

    from edgefs.backbones import build_backbone
    from edgefs.methods import build_method
    from edgefs.train.checkpoint import save_checkpoint

    bundle = out / f"lite0-{size}.edgefs"
    if (bundle / "manifest.json").is_file():
        return bundle
    ckpt = out / f"lite0-{size}.pt"
    torch.manual_seed(0)
    method = build_method("protonet", build_backbone("efficientnet_lite0", input_size=size))
    save_checkpoint(ckpt, method, {"config": {"data": str(data)}, "episode": 0, "best_val": None})
    export_bundle(ckpt, bundle, data=str(data), parity_images=16, overwrite=True, log=quiet)
    return bundle


def graph_flops(onnx_path: Path, size: int) -> float:
    """2 x multiply-accumulates of the Conv/Gemm/MatMul nodes for one image."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(onnx_path))
    for d in model.graph.input[0].type.tensor_type.shape.dim[:1]:
        d.dim_value = 1
    model = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)}
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    macs = 0.0
    for node in model.graph.node:
        if node.op_type == "Conv" and node.input[1] in inits and node.output[0] in shapes:
            w = inits[node.input[1]]  # (Cout, Cin/group, kh, kw)
            macs += float(np.prod(shapes[node.output[0]])) * float(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul") and node.input[1] in inits and node.output[0] in shapes:
            macs += float(np.prod(shapes[node.output[0]])) * inits[node.input[1]][0]
    return 2 * macs


def mlas_peak_gops(kind: str, n: int = 1024, seconds: float = 2.0) -> float:
    """Single-thread GFLOP/s (``fp32``: MatMul) or GOP/s (``int8``: uint8 x int8 MatMulInteger) that ONNX
    Runtime's own kernels reach on one ``n x n`` product: the best CPU time of repeated runs.

    CPU time, not wall time, so that other processes on a shared machine do not lower the peak.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kind == "fp32":
        op, x_type, y_type = "MatMul", TensorProto.FLOAT, TensorProto.FLOAT
        x = rng.standard_normal((n, n)).astype(np.float32)
        w = rng.standard_normal((n, n)).astype(np.float32)
    else:
        op, x_type, y_type = "MatMulInteger", TensorProto.UINT8, TensorProto.INT32
        x = rng.integers(0, 256, (n, n)).astype(np.uint8)
        w = rng.integers(-128, 128, (n, n)).astype(np.int8)
    graph = helper.make_graph([helper.make_node(op, ["x", "w"], ["y"])], "peak",
                              [helper.make_tensor_value_info("x", x_type, [n, n])],
                              [helper.make_tensor_value_info("y", y_type, [n, n])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.run(None, {"x": x})
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.process_time()
        session.run(None, {"x": x})
        spent = time.process_time() - t
        if spent > 0:
            best = min(best, spent)
    return 2 * n**3 / best / 1e9


def episodes_accuracy(emb: np.ndarray, labels: np.ndarray, episodes: int, seed: int,
                      shots_from: np.ndarray | None = None) -> np.ndarray:
    """Per-episode 5-way 1-shot accuracy with cosine prototypes; the same episodes for any ``emb``.

    ``shots_from``: embeddings of the same images to take the support shots from (a store
    enrolled with another engine: FP32 shots, INT8 queries)."""
    rng = np.random.default_rng(seed)
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    shots = unit if shots_from is None else shots_from / np.linalg.norm(shots_from, axis=1, keepdims=True)
    classes = np.unique(labels)
    acc = []
    for _ in range(episodes):
        chosen = rng.choice(classes, 5, replace=False)
        support, queries, truth = [], [], []
        for way, c in enumerate(chosen):
            idx = rng.permutation(np.flatnonzero(labels == c))
            support.append(idx[0])
            queries += list(idx[1:])
            truth += [way] * (len(idx) - 1)
        pred = (unit[queries] @ shots[support].T).argmax(1)
        acc.append(float((pred == np.asarray(truth)).mean()))
    return np.asarray(acc)


def bench_size(size: int, args: argparse.Namespace, calib: Path, evaluation: Path,
               peak: dict[str, float]) -> list[dict[str, Any]]:
    from edgefs.export.quantize import quantize_bundle

    from edgefs.runtime.selfcheck import cosines

    out = args.out_dir
    fp32 = make_lite0(size, out, args.data)
    int8 = out / f"lite0-{size}-int8.edgefs"
    quant: dict[str, Any] = {}
    if not (int8 / "manifest.json").is_file():
        report = quantize_bundle(fp32, calib, int8, calib_images=args.calib_images, parity_images=100,
                                 overwrite=True, log=print)
        quant = report.parity
    else:
        quant = json.loads((int8 / "manifest.json").read_text())["export"]["quantization"]["parity"]
    engines = {(b, p): open_engine(int8 if p == "int8" else fp32, backend=b, device="cpu", threads=args.threads,
                                   log=print) for b, p in ENGINES}
    src = open_calibration_source(evaluation, size, seed=0)
    images, labels = src.held_out(len(src))
    assert labels is not None
    frames = images[: args.batch]
    # Per call: wall time and this process's CPU time (all its threads). On a shared machine the wall time
    # carries other processes' load; CPU time is the work the engine itself did.
    wall: dict[tuple[str, str], list[float]] = {k: [] for k in engines}
    cpu: dict[tuple[str, str], list[float]] = {k: [] for k in engines}
    bwall: dict[tuple[str, str], list[float]] = {k: [] for k in engines}
    bcpu: dict[tuple[str, str], list[float]] = {k: [] for k in engines}
    for e in engines.values():  # warm-up, including one-time compilation
        for _ in range(5):
            e.embed(frames[:1])
            e.embed(frames)
    for _ in range(args.rounds):
        for key, e in engines.items():
            for batch, w, c in ((frames[:1], wall, cpu), (frames, bwall, bcpu)):
                for _ in range(args.iterations):
                    t, p = time.perf_counter(), time.process_time()
                    e.embed(batch)
                    w[key].append(time.perf_counter() - t)
                    c[key].append(time.process_time() - p)
    from edgefs.imagefile import thumbnail
    from edgefs.service.reembed import _decode

    # What 'edgefs classes reembed --mode thumbnails' embeds: the stored 64-px JPEG thumbnail, upscaled.
    thumbs = np.stack([_decode(thumbnail(im), (size, size)) for im in images])
    thumb_embeddings = {k: np.concatenate([e.embed(thumbs[i:i + 16]) for i in range(0, len(thumbs), 16)])
                        for k, e in engines.items()}
    embeddings = {k: np.concatenate([e.embed(images[i:i + 16]) for i in range(0, len(images), 16)])
                  for k, e in engines.items()}
    flops = graph_flops(fp32 / "backbone.onnx", size)
    ref = embeddings[("onnxruntime", "fp32")]
    ref_acc = episodes_accuracy(ref, labels, args.episodes, seed=1)
    base = ("onnxruntime", "fp32")
    base_ms, base_cpu = float(np.median(wall[base])) * 1e3, float(np.median(cpu[base])) * 1e3
    base_tp = args.batch / float(np.median(bwall[base]))
    base_cpu_tp = args.batch / float(np.median(bcpu[base]))
    rows = []
    for key in engines:
        backend, precision = key
        ms = np.asarray(wall[key]) * 1e3
        cpu_ms = float(np.median(cpu[key])) * 1e3
        tp = args.batch / float(np.median(bwall[key]))
        cpu_tp = args.batch / float(np.median(bcpu[key]))
        emb = embeddings[key]
        acc = episodes_accuracy(emb, labels, args.episodes, seed=1)
        mixed = episodes_accuracy(emb, labels, args.episodes, seed=1, shots_from=ref)
        from_thumbs = episodes_accuracy(emb, labels, args.episodes, seed=1, shots_from=thumb_embeddings[key])
        unit_ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
        unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        rng = np.random.default_rng(1)
        agree = _episode_agreement(unit_ref, unit, labels, args.episodes, rng)
        floor_ms = flops / (peak[precision] * args.threads * 1e9) * 1e3
        rows.append({
            "size": size, "backend": backend, "precision": precision, "engine": engines[key].describe(),
            "embed_p50_ms": float(np.percentile(ms, 50)), "embed_p99_ms": float(np.percentile(ms, 99)),
            "embed_p10_ms": float(np.percentile(ms, 10)), "speedup_b1": base_ms / float(np.percentile(ms, 50)),
            "cpu_ms_b1": cpu_ms, "cpu_speedup_b1": base_cpu / cpu_ms,
            "throughput_batch": tp, "speedup_batch": tp / base_tp,
            "cpu_throughput_batch": cpu_tp, "cpu_speedup_batch": cpu_tp / base_cpu_tp,
            "accuracy": float(acc.mean()), "accuracy_ci95": float(1.96 * acc.std() / np.sqrt(len(acc))),
            "accuracy_delta_points": 100 * float(acc.mean() - ref_acc.mean()),
            "accuracy_fp32_shots": float(mixed.mean()),
            "accuracy_fp32_shots_delta_points": 100 * float(mixed.mean() - ref_acc.mean()),
            "accuracy_thumbnail_shots_delta_points": 100 * float(from_thumbs.mean() - ref_acc.mean()),
            "top1_agreement": agree, "mean_cosine": float(cosines(ref, emb).mean()),
            "min_cosine": float(cosines(ref, emb).min()),
            "gflop": flops / 1e9, "floor_ms": floor_ms, "quantize_parity": quant,
        })
    return rows


def _episode_agreement(ref: np.ndarray, got: np.ndarray, labels: np.ndarray, episodes: int,
                       rng: np.random.Generator) -> float:
    classes = np.unique(labels)
    same = total = 0
    for _ in range(episodes):
        chosen = rng.choice(classes, 5, replace=False)
        support, queries = [], []
        for c in chosen:
            idx = rng.permutation(np.flatnonzero(labels == c))
            support.append(idx[0])
            queries += list(idx[1:])
        a = (ref[queries] @ ref[support].T).argmax(1)
        b = (got[queries] @ got[support].T).argmax(1)
        same += int((a == b).sum())
        total += len(queries)
    return same / total


def lscpu() -> dict[str, Any]:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    info = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = info.get("Flags", "").split()
    return {"model": info.get("Model name", "").strip(),
            "vnni": sorted(f for f in flags if "vnni" in f), "bf16": sorted(f for f in flags if "bf16" in f)}


def markdown(rows: list[dict[str, Any]], doc: dict[str, Any]) -> str:
    cpu, load = doc["lscpu"], doc["load"]
    lines = [
        "# ONNX Runtime vs OpenVINO, FP32 vs INT8, one run",
        "",
        f"Machine: {cpu.get('model')} ({doc['machine']['usable_cores']} usable cores), VNNI flags: "
        f"{', '.join(cpu.get('vnni', [])) or 'none'}. Load average before / after: {load['before']} / {load['after']}. "
        f"Engines: {doc['config']['threads']} thread(s). Peak per thread measured with ONNX Runtime's kernels "
        f"(1024^2 product, best CPU time): FP32 {doc['peak_gops']['fp32']:.0f} GFLOP/s, INT8 "
        f"{doc['peak_gops']['int8']:.0f} GOP/s; floor = graph FLOPs / (peak x threads).",
        "",
        f"Embed: batch 1 over {doc['config']['rounds']} interleaved rounds; throughput at batch "
        f"{doc['config']['batch']}. CPU ms = this process's CPU time per call (all threads; median), robust to "
        "other processes' load; wall times carry that load. "
        f"Accuracy: {doc['config']['episodes']} fixed 5-way 1-shot episodes of "
        "synthetic-camera colour frames of unseen glyph classes, cosine prototypes (mean ± 95% CI); "
        "agreement and cosine against ONNX Runtime FP32 on the same images. 'FP32 shots': the support shots "
        "embedded by ONNX Runtime FP32, the queries by the row's engine (a store carried over from the FP32 "
        "bundle); 'thumbnail shots': shots embedded by the row's engine from their 64-px stored thumbnails "
        "(edgefs classes reembed --mode thumbnails). Δ pts against ONNX Runtime FP32 with its own shots.",
        "",
        "| px | backend | precision | embed CPU ms (b1) | x vs ORT fp32 | wall p10 / p50 / p99 ms | x (wall p50) "
        "| images per CPU-s (batch) | x | images/s wall (batch) | floor ms | 5w1s acc % | Δ pts "
        "| Δ pts, FP32 shots | Δ pts, thumbnail shots | top-1 agree | mean cos |",
        "|---:|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['backend']} | {r['precision']} | {r['cpu_ms_b1']:.2f} | {r['cpu_speedup_b1']:.2f} "
            f"| {r['embed_p10_ms']:.2f} / {r['embed_p50_ms']:.2f} / {r['embed_p99_ms']:.2f} | {r['speedup_b1']:.2f} "
            f"| {r['cpu_throughput_batch']:.0f} | {r['cpu_speedup_batch']:.2f} | {r['throughput_batch']:.0f} "
            f"| {r['floor_ms']:.2f} "
            f"| {100 * r['accuracy']:.2f} ± {100 * r['accuracy_ci95']:.2f} | {r['accuracy_delta_points']:+.2f} "
            f"| {r['accuracy_fp32_shots_delta_points']:+.2f} | {r['accuracy_thumbnail_shots_delta_points']:+.2f} "
            f"| {r['top1_agreement']:.4f} | {r['mean_cosine']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="224,160,128", help="input sizes (default 224,160,128)")
    p.add_argument("--data", type=Path, default=Path("data/glyphs28"), help="glyph benchmark (default data/glyphs28)")
    p.add_argument("--out-dir", type=Path, default=Path("runs/bench-precisions"), help="bundles and frames")
    p.add_argument("--threads", type=int, default=1, help="engine threads (default 1, as the camera loop on 2 cores)")
    p.add_argument("--batch", type=int, default=4, help="batch for the throughput column (default 4: four cameras)")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--iterations", type=int, default=10,
                   help="calls per engine, batch size and round (default 10)")
    p.add_argument("--calib-images", type=int, default=300)
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--report", type=Path, default=Path("reports/bench"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    before = os.getloadavg()
    calib = render_frames(args.data, args.out_dir / "frames-train", "train", 60, 6, seed=11)
    evaluation = render_frames(args.data, args.out_dir / "frames-test", "test", 40, 6, seed=12)
    peak = {"fp32": mlas_peak_gops("fp32"), "int8": mlas_peak_gops("int8")}
    rows: list[dict[str, Any]] = []
    for size in [int(s) for s in args.sizes.split(",")]:
        print(f"== efficientnet_lite0 {size} px")
        rows += bench_size(size, args, calib, evaluation, peak)
    doc = {"machine": machine_info(), "lscpu": lscpu(), "peak_gops": peak,
           "load": {"before": [round(x, 2) for x in before], "after": [round(x, 2) for x in os.getloadavg()]},
           "config": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    doc["config"].update({"threads": args.threads, "rounds": args.rounds, "batch": args.batch,
                          "episodes": args.episodes})
    table = markdown(rows, doc)
    args.report.mkdir(parents=True, exist_ok=True)
    (args.report / "precisions.json").write_text(json.dumps(doc, indent=2))
    (args.report / "precisions.md").write_text(table)
    print()
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
