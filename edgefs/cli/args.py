"""Argument types for the CLI: every number, device and name is checked when the command line is parsed.

A type function raises :class:`argparse.ArgumentTypeError`; argparse then prints
``edgefs CMD: error: argument --flag: <message>`` and exits with status 2, before
any data is read or any model loaded. The messages give the valid range.
"""

from __future__ import annotations

import argparse
import importlib
import re
from collections.abc import Iterator

from edgefs.argtypes import integer as integer
from edgefs.argtypes import real as real
from edgefs.device import check_device
from edgefs.errors import EdgefsError
from edgefs.runtime.roi import ROI_HELP as ROI_HELP
from edgefs.runtime.roi import Roi
from edgefs.service.views import VIEW_CHOICES as VIEW_CHOICES


def device(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``."""
    try:
        return check_device(text)
    except EdgefsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def label(text: str) -> str:
    """A class name: not empty, no surrounding spaces kept."""
    name = text.strip()
    if not name:
        raise argparse.ArgumentTypeError("a class name cannot be empty")
    return name


def roi(text: str) -> Roi:
    """A region of interest: ``full``, a centred fraction (``0.6``) or ``cx,cy,w,h``."""
    try:
        return Roi.parse(text)
    except EdgefsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


SHOT_VIEWS_HELP = ("enroll each shot as the mean embedding of this many views of it: 1 (the shot), 5 (and 4 "
                   "corner crops), 7 (and 2 blurred copies); helps objects smaller than the region of interest, "
                   "costs that many embeddings per shot (default: the store's choice, 1 for a new store)")


def threshold(text: str) -> str:
    """``auto``, ``none`` or a cosine in [-1, 1] (kept as text; the library parses it again)."""
    if text.strip().lower() in ("auto", "none"):
        return text.strip().lower()
    real(-1.0, 1.0)(text)
    return text.strip()


class RegistryChoices:
    """The names of a registry, loaded when argparse first needs them (help or a check).

    Registries of PyTorch components fill up when their package is imported, which
    takes a second; loading them lazily keeps ``edgefs --help`` and the device commands
    fast while ``edgefs train --help`` still lists every registered name.

    Args:
        module: the package whose import registers the components (e.g. ``edgefs.methods``).
        attribute: the :class:`~edgefs.registry.Registry` in it (e.g. ``METHODS``).
        install: what to install when the import fails (e.g. ``pip install 'edgefs[train]'``).
    """

    def __init__(self, module: str, attribute: str, install: str) -> None:
        self.module = module
        self.attribute = attribute
        self.install = install
        self._names: list[str] | None = None

    def names(self) -> list[str]:
        if self._names is None:
            try:
                registry = getattr(importlib.import_module(self.module), self.attribute)
            except ImportError as exc:
                from edgefs.errors import MissingDependencyError

                raise MissingDependencyError(f"listing {self.attribute.lower()} needs {exc.name or exc}; "
                                             f"install it with: {self.install}") from exc
            self._names = registry.names()
        return self._names

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())



def cuda_device(text: str) -> str:
    """``cuda`` or ``cuda:N`` (TensorRT engines are built on a GPU)."""
    name = device(text)
    if name == "cpu":
        raise argparse.ArgumentTypeError("TensorRT needs a GPU: use cuda or cuda:N")
    return name


_PROTOCOL = re.compile(r"(\d+)w(\d+)s(-within)?")


def protocols(text: str) -> list[str]:
    """Comma-separated ``NwKs`` or ``NwKs-within`` with N >= 2 and K >= 1."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one protocol, e.g. 5w1s,20w5s-within")
    for name in names:
        match = _PROTOCOL.fullmatch(name.lower())
        if not match or int(match.group(1)) < 2 or int(match.group(2)) < 1:
            raise argparse.ArgumentTypeError(
                f"cannot read protocol {name!r}: write NwKs or NwKs-within with N >= 2 ways and K >= 1 shots, "
                "e.g. 5w1s,20w5s-within")
    return [n.lower() for n in names]


def baseline_names() -> list[str]:
    from edgefs.eval.baselines import BASELINES

    return list(BASELINES)


def baselines(text: str) -> list[str]:
    """Comma-separated names of :data:`edgefs.eval.baselines.BASELINES`."""
    names = [b.strip() for b in text.split(",") if b.strip()]
    known = baseline_names()
    unknown = [b for b in names if b not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown baseline {unknown[0]!r}; known: {', '.join(known)}")
    return names


_CAPABILITY = re.compile(r"([1-9]\d?)\.(\d)")


def compute_capabilities(text: str) -> list[str]:
    """Comma-separated GPU compute capabilities ``MAJOR.MINOR`` (e.g. ``8.6,8.9``); the builder
    then checks each against the ones its TensorRT flavour can compile for."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one compute capability, e.g. 8.6,8.9")
    for name in names:
        if not _CAPABILITY.fullmatch(name):
            raise argparse.ArgumentTypeError(
                f"cannot read compute capability {name!r}: write MAJOR.MINOR, e.g. 8.6 (RTX 30xx) or 8.9 (RTX 40xx)")
    return names


def add_cpu_engine_flags(p: argparse.ArgumentParser, openvino: bool = True) -> None:
    """The CPU engine knobs of the camera loop (``edgefs run``, ``edgefs demo``): ``--spin`` and, with
    ``openvino``, ``--ov-hint`` and ``--ov-streams``; read back with :func:`engine_options`. ``--threads``
    stays with each command."""
    from edgefs.runtime.openvino_backend import HINTS  # torch-free, imports no OpenVINO

    p.add_argument("--on-mismatch", choices=("refuse", "fp32"), default=None,
                   help="when the engine fails the bundle's self-check on this machine (its reference images embed "
                        "too far from the FP32 model's, or an INT8 bundle meets a CPU it was not made for): refuse "
                        "(default, saying what to do) or fp32 (run the FP32 graph an INT8 bundle carries, said once)")
    p.add_argument("--spin", action=argparse.BooleanOptionalAction, default=None,
                   help="onnxruntime: let idle engine threads busy-wait between calls (session.intra_op / "
                        "inter_op.allow_spinning). Matters with --threads 2 or more only. run and demo: off unless "
                        "--spin (spinning threads take the core that capture needs); bench: ONNX Runtime's default, on")
    if not openvino:
        return
    p.add_argument("--ov-hint", choices=HINTS, default=None,
                   help="openvino: PERFORMANCE_HINT (default LATENCY: one stream, every thread on each frame batch)")
    p.add_argument("--ov-streams", type=integer(1, 64), default=None, metavar="N",
                   help="openvino: NUM_STREAMS (default: what the hint chooses)")


def engine_options(args: argparse.Namespace) -> dict[str, object]:
    """What :func:`add_cpu_engine_flags` parsed, as ``open_engine(options=...)`` takes it (unset flags left out)."""
    return {k: v for k, v in (("allow_spinning", getattr(args, "spin", None)),
                              ("on_mismatch", getattr(args, "on_mismatch", None)),
                              ("hint", getattr(args, "ov_hint", None)),
                              ("streams", getattr(args, "ov_streams", None))) if v is not None}
