"""The ``edgefs`` command: one entry point, one thin module per subcommand.

Each subcommand module defines ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; ``run`` parses nothing and calls one library function.
Heavy stacks (torch, onnxruntime) are imported inside ``run`` so that
``edgefs --help`` is instant and the device install works without PyTorch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from edgefs import __version__
from edgefs.errors import EdgefsError

# Subcommand name -> module in edgefs.cli. Order is the order shown in --help.
COMMANDS = {
    "data": "data",
    "train": "train",
    "eval": "evaluate",
    "export": "export",
    "build-engine": "build_engine",
    "bench": "bench",
    "enroll": "enroll",
    "classes": "classes",
    "run": "run",
    "demo": "demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgefs",
        description="Few-shot adaptation for edge devices: train, export, enroll, run.",
    )
    parser.add_argument("--version", action="version", version=f"edgefs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"edgefs.cli.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except EdgefsError as exc:
        print(f"edgefs {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"edgefs {args.command}: interrupted", file=sys.stderr)
        return 130
