"""edgefs build-engine: bundle -> TensorRT or TensorRT-RTX engine, checked against ONNX Runtime where a GPU can."""

from __future__ import annotations

import argparse

from edgefs.cli import args as A
from edgefs.runtime.trt_flavour import AUTO, flavour_names

HELP = ("build a TensorRT engine for a bundle (TensorRT on the device, fp32/fp16/int8; or TensorRT-RTX ahead of "
        "time, fp32/fp16), checked against ONNX Runtime where a GPU can run it")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder, e.g. models/glyphs.edgefs")
    p.add_argument("--trt", choices=flavour_names(), default=AUTO,
                   help="TensorRT flavour: 'tensorrt' (TensorRT 10, JetPack; builds on the GPU it runs on), 'rtx' "
                        "(TensorRT-RTX; compiles ahead of time, no GPU needed, for RTX GPU generations), or 'auto' "
                        "(default: tensorrt where 'import tensorrt' works, else rtx)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16",
                   help="default fp16 (int8: --trt tensorrt only)")
    p.add_argument("--targets", type=A.compute_capabilities, metavar="CC[,CC...]",
                   help="--trt rtx: compute capabilities to compile for, e.g. 8.6,8.9 (default: all it knows)")
    p.add_argument("--calib", metavar="DIR|VIDEO",
                   help="camera-like images (a folder, an ImageFolder or a video): int8 calibration and "
                        "held-out parity images")
    p.add_argument("--calib-images", type=A.integer(1), default=500, help="calibration images (default 500)")
    p.add_argument("--max-batch", type=A.integer(1), default=8, help="largest batch the engine takes (default 8)")
    p.add_argument("--workspace", type=A.integer(1), default=1024, metavar="MB",
                   help="TensorRT workspace memory limit in MiB (default 1024)")
    p.add_argument("--timing-cache", metavar="FILE", help="TensorRT timing cache to load and update")
    p.add_argument("--device", type=A.cuda_device, help="cuda or cuda:N (default cuda:0)")
    p.add_argument("--parity-images", type=A.integer(1), default=64,
                   help="held-out images compared with ONNX Runtime (default 64)")


def run(args: argparse.Namespace) -> int:
    from edgefs.export.tensorrt_build import build_engine

    build_engine(args.bundle, precision=args.precision, calib=args.calib, calib_images=args.calib_images,
                 max_batch=args.max_batch, workspace_mb=args.workspace, timing_cache=args.timing_cache,
                 device=args.device, trt=args.trt, targets=args.targets, parity_images=args.parity_images)
    return 0
