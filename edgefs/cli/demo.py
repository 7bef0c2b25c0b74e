"""edgefs demo: export a model, enroll unseen classes from a (synthetic) camera, classify the live stream."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgefs.cli import args as A

HELP = "end to end on this machine: export the bundled model, enroll 5 classes from a camera, run live"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgefs.demo import PRESETS

    c, g = PRESETS["colour"], PRESETS["glyphs"]
    p.add_argument("--glyphs", dest="preset", action="store_const", const="glyphs", default="colour",
                   help=f"the glyph demo: the Conv-4 model ({g.checkpoint}) on {g.data} (default: the colour "
                        f"demo, the Lite0 colour model ({c.checkpoint}) on unseen {c.build} objects in {c.data})")
    p.add_argument("--data", type=Path, help=f"data folder with a test split (built if missing; default {c.data}, "
                   f"with --glyphs {g.data})")
    p.add_argument("--checkpoint", type=Path, help=f"model to export (default {c.checkpoint}; with --glyphs "
                   f"{g.checkpoint})")
    p.add_argument("--out", type=Path, help=f"output folder (default {c.out})")
    p.add_argument("--classes", type=A.integer(1), help=f"classes to enroll (default {c.classes})")
    p.add_argument("--unknown", type=A.integer(0), help=f"classes shown but never enrolled (default {c.unknown})")
    p.add_argument("--shots", type=A.integer(1), help=f"shots per class (default {c.shots}; with --glyphs {g.shots})")
    p.add_argument("--seconds", type=A.real(above=0), help=f"live run length (default {c.seconds:g})")
    p.add_argument("--fps", type=A.real(above=0, maximum=1000), help=f"camera frame rate (default {c.fps:g})")
    p.add_argument("--difficulty", type=A.real(0, 1),
                   help=f"synthetic camera difficulty 0-1 (default {c.difficulty:g})")
    p.add_argument("--object-size", type=A.real(0.05, 1.5),
                   help=f"object side / the frame's shorter side (default {c.object_size:g}; glyphs {g.object_size:g})")
    p.add_argument("--roi", type=A.roi, help=A.ROI_HELP + f" (default {c.roi.to_text()}; glyphs {g.roi.to_text()})")
    p.add_argument("--seed", type=A.integer(0), help="choice of classes and camera randomness (default 0)")
    p.add_argument("--shot-views", type=int, choices=A.VIEW_CHOICES,
                   help=f"enroll each shot as the mean of this many views (default {c.shot_views}; glyphs "
                        f"{g.shot_views}); see edgefs enroll --help")
    p.add_argument("--threads", type=A.integer(1), help="ONNX Runtime threads (default: all cores but one)")
    p.add_argument("--record", action="store_true", default=None,
                   help="also write the annotated stream to OUT/demo.mp4")
    A.add_cpu_engine_flags(p, openvino=False)


def run(args: argparse.Namespace) -> int:
    from edgefs.demo import demo_config, run_demo

    run_demo(demo_config(args.preset, data=args.data, checkpoint=args.checkpoint, out=args.out, classes=args.classes,
                         unknown=args.unknown, shots=args.shots, seconds=args.seconds, fps=args.fps,
                         difficulty=args.difficulty, object_size=args.object_size, roi=args.roi, seed=args.seed,
                         threads=args.threads, record=args.record, spin=args.spin, shot_views=args.shot_views))
    return 0
