"""edgefs build-engine: bundle -> TensorRT engine for this device's GPU, checked against ONNX Runtime."""

from __future__ import annotations

import argparse

from edgefs.cli import args as A

HELP = "build a TensorRT engine for a bundle on this device (fp32, fp16 or int8), checked against ONNX Runtime"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder, e.g. models/glyphs.edgefs")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16", help="default fp16")
    p.add_argument("--calib", metavar="DIR|VIDEO",
                   help="camera-like images (a folder, an ImageFolder or a video): int8 calibration and "
                        "held-out parity images")
    p.add_argument("--calib-images", type=A.integer(1), default=500, help="calibration images (default 500)")
    p.add_argument("--max-batch", type=A.integer(1), default=8, help="largest batch the engine takes (default 8)")
    p.add_argument("--workspace", type=A.integer(1), default=1024, metavar="MB",
                   help="TensorRT workspace memory limit in MiB (default 1024)")
    p.add_argument("--timing-cache", metavar="FILE", help="TensorRT timing cache to load and update")
    p.add_argument("--device", type=A.cuda_device, help="cuda or cuda:N (default cuda:0)")


def run(args: argparse.Namespace) -> int:
    from edgefs.export.tensorrt_build import build_engine

    build_engine(args.bundle, precision=args.precision, calib=args.calib, calib_images=args.calib_images,
                 max_batch=args.max_batch, workspace_mb=args.workspace, timing_cache=args.timing_cache,
                 device=args.device)
    return 0
