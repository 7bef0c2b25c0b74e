"""Benchmark the device pipeline of several bundles and tabulate it in one markdown table.

Usage::

    python tools/bench_engines.py                          # every bundle under runs/bundles/
    python tools/bench_engines.py models/a.edgefs models/b.edgefs --batch 1,8,32
    python tools/bench_engines.py --backend torch --name cpu-torch
    python tools/bench_engines.py --backend openvino models/lite0-int8.edgefs --name cpu-openvino
    python tools/bench_engines.py --compare [--sizes 224,160,128 ...]   # tools/bench_precisions.py

For each bundle it runs :func:`edgefs.runtime.bench.run_bench` (preprocess a
640x480 camera frame, embed, prototype head; p50/p90/p99 latency and throughput
per batch size), then writes ``REPORT/NAME.json`` (every report, full detail)
and ``REPORT/NAME.md`` (the machine and one row per bundle and batch size).
A benchmark is a program, not a test: run it on a quiet machine.

``--compare`` runs ``tools/bench_precisions.py`` instead (its options follow):
ONNX Runtime and OpenVINO, FP32 and INT8 bundles of EfficientNet-Lite0 at several
input sizes, timed interleaved in one process, with accuracy on fixed episodes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edgefs.runtime.bench import machine_info, run_bench
from edgefs.runtime.bundle import MANIFEST_FILE
from edgefs.runtime.select import backend_names


def quiet(_: str) -> None:
    pass


def find_bundles(given: list[str], root: Path) -> list[Path]:
    if given:
        return [Path(p) for p in given]
    return sorted(p for p in root.glob("*") if (p / MANIFEST_FILE).is_file())


def markdown(reports: list[dict[str, Any]], args: argparse.Namespace) -> str:
    machine = reports[0]["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    lines = [
        f"# Device pipeline benchmark ({args.name})",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"{machine['platform']}. Engine: {machine['engine']}. Versions: {versions}.",
        "",
        f"Per iteration: one synthetic 640x480 BGR camera frame per image is center-cropped and resized "
        f"(`to_batch`), embedded (`Engine.embed`, host to host) and scored by the NumPy prototype head against "
        f"{args.classes} random prototypes; {args.iterations} timed iterations after {args.warmup} warm-up. "
        "Latencies in ms per batch; throughput = batch / mean total latency.",
        "",
        "| bundle | input | dim | batch | preprocess p50 | embed p50 | embed p99 | head p50 | total p50 "
        "| total p99 | images/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for report in reports:
        b = report["bundle"]
        for row in report["results"]:
            s = row["stages"]
            lines.append(
                f"| {b['name']} | {b['input_size']} | {b['embedding_dim']} | {row['batch']} "
                f"| {s['preprocess']['p50_ms']:.3f} | {s['embed']['p50_ms']:.3f} | {s['embed']['p99_ms']:.3f} "
                f"| {s['head']['p50_ms']:.3f} | {s['total']['p50_ms']:.3f} | {s['total']['p99_ms']:.3f} "
                f"| {s['total']['images_per_s']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    if "--compare" in sys.argv[1:]:
        from bench_precisions import main as compare  # tools/ is on sys.path when this runs as a script

        raise SystemExit(compare([a for a in sys.argv[1:] if a != "--compare"]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="*", help="bundle folders (default: every bundle under --root)")
    parser.add_argument("--root", default="runs/bundles", help="where to look for bundles (default runs/bundles)")
    parser.add_argument("--backend", default="auto", choices=backend_names(), help="engine backend (default auto)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batch", default="1,8", help="comma-separated batch sizes (default 1,8)")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--report", default="reports/bench", help="report folder (default reports/bench)")
    parser.add_argument("--name", default="cpu", help="report file stem (default cpu)")
    args = parser.parse_args()

    bundles = find_bundles(args.bundles, Path(args.root))
    if not bundles:
        parser.error(f"no bundles given and none under {args.root}; export one with 'edgefs export'")
    batches = [int(b) for b in args.batch.split(",")]
    reports = []
    for path in bundles:
        print(f"== {path}")
        reports.append(run_bench(path, backend=args.backend, device=args.device, precision=args.precision,
                                 batches=batches, iterations=args.iterations, warmup=args.warmup,
                                 threads=args.threads, classes=args.classes, log=print))
    table = markdown(reports, args)
    out = Path(args.report)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine_info(), "config": vars(args), "reports": reports}
    (out / f"{args.name}.json").write_text(json.dumps(doc, indent=2))
    (out / f"{args.name}.md").write_text(table)
    print()
    print(table)
    print(f"wrote {out / (args.name + '.json')} and {out / (args.name + '.md')}")


if __name__ == "__main__":
    main()
