"""Build a TensorRT engine for every bundle and tabulate engine size, build time and parity.

Usage::

    python tools/bench_trt_build.py                                # export every backbone, build --trt rtx
    python tools/bench_trt_build.py models/a.edgefs --trt tensorrt --precision fp16
    python tools/bench_trt_build.py --data data/glyphs28 --precision fp32,fp16 --name rtx-cpu

Without bundle arguments it exports one bundle per registered backbone at its
native input size into ``--work`` (the committed trained conv4 checkpoint where
it exists, seeded weights otherwise -- EfficientNet-Lite0 with its ImageNet
weights), with the usual PyTorch vs ONNX Runtime parity check on ``--data``.
Every build goes through :func:`edgefs.export.tensorrt_build.build_engine`, the
code behind ``edgefs build-engine``. For each bundle and precision it records the
engine file size, the builder's own time (``build_serialized_network``), the
whole build's wall time, and the ONNX Runtime vs TensorRT comparison where a GPU
ran the engine -- else "not run" and the reason the build gave.

Writes ``REPORT/NAME.json`` and ``REPORT/NAME.md``. A benchmark is a program, not
a test: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from edgefs.runtime.bench import machine_info
from edgefs.runtime.engine_file import read_engine_header

TRAINED = {"conv4": Path("models/protonet-conv4-glyphs28.pt")}


def quiet(_: str) -> None:
    pass


def export_all(work: Path, data: str) -> list[Path]:
    """One bundle per registered backbone at its native size (trained weights where committed)."""
    import torch
    from edgefs.export import export_bundle

    from edgefs.backbones import BACKBONES, build_backbone
    from edgefs.methods import build_method
    from edgefs.train.checkpoint import save_checkpoint

    bundles = []
    for name in BACKBONES.names():
        out = work / f"{name}.edgefs"
        checkpoint = TRAINED.get(name)
        if checkpoint is None or not checkpoint.is_file():
            torch.manual_seed(0)
            checkpoint = work / f"{name}.pt"
            save_checkpoint(checkpoint, build_method("protonet", build_backbone(name)),
                            {"config": {}, "episode": 0, "best_val": None})
        print(f"exporting {name} from {checkpoint} ...", flush=True)
        started = time.perf_counter()
        export_bundle(checkpoint, out, data=data, parity_images=16, overwrite=True, log=quiet)
        print(f"  {out} ({time.perf_counter() - started:.1f} s)")
        bundles.append(out)
    return bundles


def build_one(bundle: Path, precision: str, args: argparse.Namespace) -> dict[str, Any]:
    from edgefs.export.tensorrt_build import build_engine

    from edgefs.errors import EdgefsError

    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        print("  " + line)

    started = time.perf_counter()
    try:
        path = build_engine(bundle, precision=precision, max_batch=args.max_batch, trt=args.trt, log=log,
                            calib=args.calib)
    except EdgefsError as exc:
        return {"bundle": str(bundle), "precision": precision, "error": str(exc), "log": lines}
    wall = time.perf_counter() - started
    header = read_engine_header(path)
    parity = header["parity"]
    return {
        "bundle": str(bundle), "backbone": header["bundle"]["backbone"], "input_size": header["bundle"]["input_size"],
        "precision": precision, "flavour": header["key"]["flavour"], "trt_version": header["key"]["trt_version"],
        "gpu": header["key"]["gpu_name"], "compute_capability": header["key"]["compute_capability"],
        "max_batch": header["key"]["max_batch"], "engine": path.name, "engine_bytes": header["engine_size"],
        "file_bytes": path.stat().st_size, "builder_s": header["build"]["seconds"], "wall_s": round(wall, 3),
        "verified": header.get("verified"), "parity": parity, "graph_parity": header["build"].get("graph_parity"),
        "log": lines,
    }


def graph_cell(row: dict[str, Any]) -> str:
    graph = row.get("graph_parity")
    if graph is None:
        return "-"
    return f"min cosine {graph['min_cosine']:.6f} on {graph['images']} images"


def parity_cell(row: dict[str, Any]) -> str:
    parity = row["parity"]
    if not parity.get("run", True):
        return f"not run: {parity['reason']}"
    return f"min cosine {parity['min_cosine']:.6f} (>= {parity['threshold']}: {'pass' if parity['passed'] else 'FAIL'})"


def markdown(rows: list[dict[str, Any]], machine: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"# TensorRT engine builds ({args.name})",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['platform']}. Builder: `edgefs build-engine "
        f"--trt {args.trt}`, max batch {args.max_batch}. Builder s = `build_serialized_network` alone; wall s = "
        "the whole build (parse, fp16 graph copy and its ONNX Runtime check, build, file write, engine parity where "
        "a GPU ran it).",
        "",
        "| backbone | input | precision | flavour | targets (sm) | engine MB | builder s | wall s "
        "| fp16 graph vs backbone.onnx (ONNX Runtime, CPU) | ONNX Runtime vs TensorRT engine |",
        "|---|---:|---|---|---|---:|---:|---:|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['bundle']} | | {row['precision']} | {args.trt} | | | | | | build failed: "
                         f"{row['error'].splitlines()[0]} |")
            continue
        lines.append(
            f"| {row['backbone']} | {row['input_size'][0]} | {row['precision']} | {row['flavour']} "
            f"{row['trt_version']} | {row['compute_capability'].replace('+', ', ')} | {row['engine_bytes'] / 1e6:.2f} "
            f"| {row['builder_s']:.2f} | {row['wall_s']:.2f} | {graph_cell(row)} | {parity_cell(row)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="*", help="bundle folders (default: export every backbone into --work)")
    parser.add_argument("--trt", default="rtx", help="TensorRT flavour: rtx, tensorrt or auto (default rtx)")
    parser.add_argument("--precision", default="fp32,fp16", help="comma-separated (default fp32,fp16)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--calib", help="images for int8 calibration and parity (default: synthetic parity images)")
    parser.add_argument("--data", default="data/glyphs28", help="parity images for the exports (default data/glyphs28)")
    parser.add_argument("--work", default="runs/trt_build", help="where exported bundles go (default runs/trt_build)")
    parser.add_argument("--report", default="reports/trt_build", help="report folder (default reports/trt_build)")
    parser.add_argument("--name", default="rtx", help="report file stem (default rtx)")
    args = parser.parse_args()

    if args.bundles:
        bundles = [Path(p) for p in args.bundles]
    else:
        if not Path(args.data).exists():
            parser.error(f"{args.data} does not exist: pass --data DIR (images for the export parity check) or "
                         "bundle folders")
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        bundles = export_all(work, args.data)
    rows = []
    for bundle in bundles:
        for precision in args.precision.split(","):
            print(f"== {bundle} {precision}", flush=True)
            rows.append(build_one(bundle, precision, args))
    machine = machine_info()
    table = markdown(rows, machine, args)
    out = Path(args.report)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps({"machine": machine, "config": vars(args), "builds": rows},
                                                      indent=2))
    (out / f"{args.name}.md").write_text(table)
    print()
    print(table)
    print(f"wrote {out / (args.name + '.json')} and {out / (args.name + '.md')}")


if __name__ == "__main__":
    main()
