"""edgefs bench: latency and throughput of preprocess, embed and head for a bundle, like trtexec."""

from __future__ import annotations

import argparse

from edgefs.cli import args as A

HELP = "time a bundle's device pipeline (preprocess, embed, head) per batch size; print a table, write JSON"


def _batches(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch takes comma-separated integers, e.g. 1,8; got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--batch sizes must be positive, got {text!r}")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgefs.runtime.select import backend_names  # torch-free; the registry finds the backend modules itself

    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder, e.g. models/glyphs.edgefs")
    p.add_argument("--backend", default="auto", choices=backend_names(),
                   help="engine backend (default auto: tensorrt if an engine is built, else onnxruntime)")
    p.add_argument("--device", type=A.device, help="cpu, cuda or cuda:N (default: the backend's choice)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"), help="default fp32")
    p.add_argument("--batch", type=_batches, default=[1, 8], dest="batches",
                   help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--iterations", type=A.integer(1), default=100, help="timed iterations per batch size (default 100)")
    p.add_argument("--warmup", type=A.integer(0), default=10, help="untimed iterations first (default 10)")
    p.add_argument("--threads", type=A.integer(1), help="CPU threads for the engine (default: all cores)")
    p.add_argument("--classes", type=A.integer(1), default=100, help="random prototypes the head scores (default 100)")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="write the report as JSON here")
    A.add_cpu_engine_flags(p)


def run(args: argparse.Namespace) -> int:
    from edgefs.runtime.bench import run_bench

    run_bench(args.bundle, backend=args.backend, device=args.device, precision=args.precision,
              batches=args.batches, iterations=args.iterations, warmup=args.warmup, threads=args.threads,
              classes=args.classes, json_out=args.json_out, engine_options=A.engine_options(args))
    return 0
