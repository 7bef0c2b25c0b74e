"""edgefs tune: measure how the camera loop runs the given bundle(s) on this machine, save the best as a profile."""

from __future__ import annotations

import argparse

from edgefs.cli import args as A

HELP = ("measure engines, threads and batch wait for N cameras x F FPS with the real camera loop; save the setting "
        "that holds them with the least accuracy loss as a profile edgefs run and serve use")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundles", nargs="+", metavar="BUNDLE",
                   help="bundle folders of one model, e.g. its FP32 bundle and its INT8 bundle (edgefs quantize), or "
                        "exports of the same checkpoint at other input sizes")
    p.add_argument("--cameras", type=A.integer(1, 256), default=1, help="live cameras to hold (default 1)")
    p.add_argument("--fps", type=A.real(above=0, maximum=1000), default=30.0, help="frames per second per camera "
                   "(default 30)")
    p.add_argument("--seconds", type=A.real(above=0, maximum=600), default=4.0,
                   help="live run per setting, each in a fresh process (default 4)")
    p.add_argument("--engine", choices=("onnxruntime", "openvino", "tensorrt"),
                   help="measure only this backend (default: every one this machine has)")
    p.add_argument("--max-threads", type=A.integer(1, 256),
                   help="engine threads tried: 1 to this (default: the usable cores)")
    p.add_argument("--batch-wait", type=A.real(0, 1000), dest="batch_wait_ms", metavar="MS",
                   help="the --batch-wait tried besides 0 with several cameras (default: half a frame period; 0: "
                        "only 0)")
    p.add_argument("--data", metavar="DIR", help="an image folder (one sub-folder per class) the synthetic cameras "
                   "show (default: the bundles' self-check reference images)")
    p.add_argument("--json", dest="json_out", metavar="FILE", help="write the whole measurement as JSON here")


def run(args: argparse.Namespace) -> int:
    from edgefs.tune import tune

    return tune(args.bundles, cameras=args.cameras, fps=args.fps, seconds=args.seconds, engine=args.engine,
                max_threads=args.max_threads, batch_wait_ms=args.batch_wait_ms, data=args.data,
                json_out=args.json_out).exit_code
