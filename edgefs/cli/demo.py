"""edgefs demo: export a model, enroll unseen classes from a (synthetic) camera, classify the live stream."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgefs.cli import args as A

HELP = "end to end on this machine: export the bundled model, enroll 5 classes from a camera, run live"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgefs.demo import DemoConfig

    d = DemoConfig()
    p.add_argument("--data", type=Path, default=d.data, help=f"glyph benchmark (rendered if missing; default {d.data})")
    p.add_argument("--checkpoint", type=Path, default=d.checkpoint, help=f"model to export (default {d.checkpoint})")
    p.add_argument("--out", type=Path, default=d.out, help=f"output folder (default {d.out})")
    p.add_argument("--classes", type=A.integer(1), default=d.classes, help=f"classes to enroll (default {d.classes})")
    p.add_argument("--unknown", type=A.integer(0), default=d.unknown,
                   help=f"classes shown but never enrolled (default {d.unknown})")
    p.add_argument("--shots", type=A.integer(1), default=d.shots, help=f"shots per class (default {d.shots})")
    p.add_argument("--seconds", type=A.real(above=0), default=d.seconds,
                   help=f"live run length (default {d.seconds:g})")
    p.add_argument("--fps", type=A.real(above=0, maximum=1000), default=d.fps,
                   help=f"camera frame rate (default {d.fps:g})")
    p.add_argument("--difficulty", type=A.real(0, 1), default=d.difficulty,
                   help=f"synthetic camera difficulty 0-1 (default {d.difficulty:g})")
    p.add_argument("--seed", type=A.integer(0), default=d.seed, help="choice of classes and camera randomness")
    p.add_argument("--threads", type=A.integer(1), help="ONNX Runtime threads (default: all cores but one)")
    p.add_argument("--record", action="store_true", help="also write the annotated stream to OUT/demo.mp4")
    A.add_cpu_engine_flags(p, openvino=False)


def run(args: argparse.Namespace) -> int:
    from edgefs.demo import DemoConfig, run_demo

    run_demo(DemoConfig(data=args.data, checkpoint=args.checkpoint, out=args.out, classes=args.classes,
                        unknown=args.unknown, shots=args.shots, seconds=args.seconds, fps=args.fps,
                        difficulty=args.difficulty, seed=args.seed, threads=args.threads, record=args.record,
                        spin=args.spin))
    return 0
