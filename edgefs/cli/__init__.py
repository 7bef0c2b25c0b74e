"""The ``edgefs`` command: one entry point, one thin module per subcommand.

Each subcommand module defines ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; ``run`` parses nothing and calls one library function.
Heavy stacks (torch, onnxruntime) are imported inside ``run`` so that
``edgefs --help`` is instant and the device install works without PyTorch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from edgefs import __version__
from edgefs.cli import crash
from edgefs.errors import EdgefsError

# Subcommand name -> module in edgefs.cli. Order is the order shown in --help.
COMMANDS = {
    "data": "data",
    "train": "train",
    "train-cached": "train_cached",
    "eval": "evaluate",
    "export": "export",
    "build-engine": "build_engine",
    "quantize": "quantize",
    "bench": "bench",
    "tune": "tune",
    "doctor": "doctor",
    "enroll": "enroll",
    "classes": "classes",
    "run": "run",
    "serve": "serve",
    "demo": "demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgefs",
        description="Few-shot adaptation for edge devices: train, export, enroll, run.",
    )
    parser.add_argument("--version", action="version", version=f"edgefs {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an unexpected error (default: write it to a crash report)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"edgefs.cli.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``edgefs`` command; returns the exit status. No traceback reaches the user:

    - an :class:`EdgefsError` prints its message (exit 2, as a command-line error does);
    - Ctrl-C prints one line (exit 130) unless the command handles it itself;
    - a closed output pipe (``edgefs classes list | head -1``) ends quietly (exit 0);
    - anything else prints one line naming the failure and a crash report holding the
      traceback (exit 1), or, with ``--debug``, the traceback itself.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "edgefs"
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        command = f"edgefs {args.command}"
        debug = args.debug
        status = int(args._run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the boundary, not at interpreter exit
        return status
    except EdgefsError as exc:
        print(f"{command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _broken_pipe()
    except Exception as exc:  # the boundary: one line and a report instead of a traceback
        if debug:
            traceback.print_exc()
        else:
            report = crash.write_report(exc, argv)
            where = f"the full report is in {report}" if report else "run again with --debug to see the traceback"
            print(f"{command}: unexpected error: {crash.describe(exc)}; {where}. Please include it when you "
                  "report this.", file=sys.stderr)
        return 1


def _broken_pipe() -> int:
    """The reader of stdout went away (``| head``): nothing more can be said there, and saying so on
    stderr would be noise. Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a real file (captured in tests)
        pass
    return 0
