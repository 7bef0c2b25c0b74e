"""edgefs doctor: what this device has, and how each engine runs a bundle here (self-check, camera rate)."""

from __future__ import annotations

import argparse

from edgefs.cli import args as A

HELP = ("check this device: CPU and INT8 class, memory, GPU/CUDA/TensorRT, engines, camera stack, and for each "
        "BUNDLE its self-check and the camera rate of every engine that can run it here. Exit status 1 where a "
        "bundle cannot be read or fails its self-check on an engine, else 0")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundles", nargs="*", metavar="BUNDLE", help="bundle folders to check, e.g. models/glyphs.edgefs")
    p.add_argument("--json", dest="json_out", metavar="FILE", help="also write the report as JSON here ('-': "
                   "stdout, the table then goes to stderr)")
    p.add_argument("--seconds", type=A.real(above=0.0, maximum=600.0), default=3.0, metavar="S",
                   help="how long to measure each engine's batch-1 embed rate (default 3)")
    p.add_argument("--no-rate", dest="rate", action="store_false",
                   help="skip the rate measurement (self-checks only)")


def run(args: argparse.Namespace) -> int:
    from edgefs.doctor import run_doctor

    report = run_doctor(args.bundles, json_out=args.json_out, seconds=args.seconds, rate=args.rate)
    return 0 if report["ok"] else 1
