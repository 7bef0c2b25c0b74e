"""edgefs quantize: FP32 bundle -> INT8 bundle (ONNX Runtime static quantisation), gated on agreement with it."""

from __future__ import annotations

import argparse

from edgefs.cli import args as A

HELP = ("make an INT8 bundle from an FP32 one, calibrated on images of the camera's domain and checked against "
        "it on held-out images")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgefs import limits
    from edgefs.cpu import TARGETS
    from edgefs.export.int8_graph import INT8_FORMAT_CHOICES  # torch-free
    from edgefs.export.quantize import (  # torch-free
        CALIBRATE_METHODS,
        MAX_ACCURACY_DROP,
        MIN_MEAN_COSINE,
    )

    p.add_argument("bundle", metavar="BUNDLE", help="the FP32 bundle folder, e.g. models/lite0.edgefs")
    p.add_argument("--calib", metavar="DIR|VIDEO",
                   help="images of the camera's domain: a folder, an ImageFolder of your classes (gives top-1 "
                        "agreement on held-out episodes) or a video; required (random data is never used)")
    p.add_argument("--out", required=True, metavar="OUT", help="the INT8 bundle folder to write")
    p.add_argument("--calib-images", type=A.integer(1), default=300,
                   help=f"images to calibrate on (default 300; at most {limits.MAX_CALIB_IMAGES}, "
                        "edgefs.limits.MAX_CALIB_IMAGES)")
    p.add_argument("--parity-images", type=A.integer(8), default=200,
                   help="held-out images for the parity check (default 200; at most "
                        f"{limits.MAX_PARITY_IMAGES}, edgefs.limits.MAX_PARITY_IMAGES)")
    p.add_argument("--method", choices=CALIBRATE_METHODS, default="auto",
                   help="calibration method (default auto: minmax, then percentile on fewer images where minmax "
                        "misses the floors)")
    p.add_argument("--target", choices=TARGETS, default="any",
                   help="the CPUs the bundle is for (default any: an integer format whose sums never saturate, "
                        "right on x86 with or without VNNI and on ARM; x86-vnni: int8 weights everywhere, fastest "
                        "on VNNI CPUs and wrong on other x86, refused there at open; x86 / arm64: the portable "
                        "format, claiming that class only). This machine must be of a claimed class")
    p.add_argument("--int8-format", choices=INT8_FORMAT_CHOICES, default="auto",
                   help="integer weights (default auto: the fastest format right on every CPU the target claims "
                        "that meets the floors: s7, then s7-u8first3, then u8; s8 for --target x86-vnni)")
    p.add_argument("--emulate", action=argparse.BooleanOptionalAction, default=True,
                   help="run the parity check again for each CPU class the target claims that this machine is not, "
                        "where it can be emulated: x86 without VNNI under qemu-x86_64-static on any x86, aarch64 "
                        "with EDGEFS_AARCH64_PYTHON / EDGEFS_AARCH64_SITE (.ci/lane-aarch64.sh makes them); the "
                        "manifest records what was measured where (default on)")
    p.add_argument("--min-cosine", type=A.real(-1, 1), default=MIN_MEAN_COSINE,
                   help=f"floor on the mean cosine to fp32 (default {MIN_MEAN_COSINE})")
    p.add_argument("--max-accuracy-drop", type=A.real(0, 100), default=MAX_ACCURACY_DROP, metavar="POINTS",
                   help="most the few-shot accuracy on held-out episodes may fall below fp32's "
                        f"(default {MAX_ACCURACY_DROP} points)")
    p.add_argument("--seed", type=A.integer(0), default=0, help="shuffle seed of the calibration folder (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--json", dest="json_out", metavar="FILE", help="write the parity report as JSON here")


def run(args: argparse.Namespace) -> int:
    from edgefs.export.quantize import quantize_bundle

    quantize_bundle(args.bundle, args.calib, args.out, calib_images=args.calib_images,
                    parity_images=args.parity_images, method=args.method, target=args.target,
                    int8_format=args.int8_format, emulate=args.emulate,
                    min_cosine=args.min_cosine,
                    max_accuracy_drop=args.max_accuracy_drop, seed=args.seed, overwrite=args.overwrite,
                    json_out=args.json_out)
    return 0
