"""The two TensorRT flavours edgefs builds and runs engines with, and what differs between them.

* ``tensorrt``: TensorRT 10.x, module ``tensorrt`` (JetPack on a Jetson, NVIDIA's
  wheels on a PC). The builder needs the GPU the engine will run on; precision is
  chosen by builder flags (FP16, INT8 with an entropy calibrator).
* ``rtx``: TensorRT for RTX, module ``tensorrt_rtx_bindings`` (PyPI wheels
  ``tensorrt-rtx-cu12-libs`` and ``tensorrt-rtx-cu12-bindings``; the bindings load
  the libraries' wheel, ``tensorrt_rtx_libs``, themselves). The builder compiles
  ahead of time **on the CPU** for a list of compute capabilities (RTX GPU
  generations, set in the builder config) and the runtime finishes compilation
  for the GPU it finds ("JIT"). Its networks are always strongly typed: there are
  no FP16/INT8 builder flags and no INT8 calibrator, so precision comes from the
  graph's own types (an fp16 engine is built from an fp16 copy of the graph).

Everything else -- ONNX parser, optimisation profile, serialized engine,
``Runtime.deserialize_cuda_engine``, the name-based execution API -- is the same
Python API in both, so the builder (``edgefs.export.tensorrt_build``) and the
``tensorrt`` engine backend are written once against a :class:`Flavour`.

No TensorRT is imported here until :meth:`Flavour.load` is called.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from edgefs._lazy import require
from edgefs.errors import EdgefsError, MissingDependencyError
from edgefs.registry import Registry

PORTABLE_GPU = "any"
"""``EngineKey.gpu_name`` of an engine compiled ahead of time for a list of compute capabilities."""


@dataclass(frozen=True)
class Flavour:
    """What one TensorRT flavour is and can do.

    Attributes:
        name: registry name, also stored in every engine key (``"tensorrt"``, ``"rtx"``).
        module: the Python module to import.
        install: what to install when the module is missing.
        tag: the engine file name's version prefix (``trt10.3.0``, ``rtx1.7.1.116``).
        precisions: the ``--precision`` values this flavour builds.
        builds_without_gpu: the builder compiles ahead of time on a machine with no GPU.
        strongly_typed: precision comes from the graph's types, not from builder flags.
        description: one line for help texts.
    """

    name: str
    module: str
    install: str
    tag: str
    precisions: tuple[str, ...]
    builds_without_gpu: bool
    strongly_typed: bool
    description: str

    def available(self) -> bool:
        """Whether the module is installed (found, not imported)."""
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            return False

    def load(self, why: str = "the tensorrt engine backend") -> ModuleType:
        """The flavour's module, or a :class:`MissingDependencyError` naming what to install."""
        return require(self.module, install=self.install, why=why)

    def version(self, trt: ModuleType) -> str:
        return str(trt.__version__)

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise EdgefsError(
                f"{self.description} cannot build {precision} engines (it builds {', '.join(self.precisions)})"
                + ("; its networks are strongly typed and it has no INT8 calibrator, so int8 needs a graph with "
                   "explicit quantization (Q/DQ nodes), which edgefs does not export. Build --precision fp16, "
                   "or use --trt tensorrt on a device with TensorRT" if precision == "int8" else "")
            )

    # -- compute-capability targets (ahead-of-time flavours only) --------------------------------

    def all_targets(self, trt: ModuleType) -> list[str]:
        """Every compute capability this builder can target, ``["7.5", "8.0", ...]`` (ascending).

        Read from the module's ``ComputeCapability`` enum (``SM75`` ...), so a newer
        wheel's generations are picked up without a code change.
        """
        names = getattr(trt, "ComputeCapability", None)
        if names is None:
            return []
        found = []
        for name in names.__members__:
            if name.startswith("SM") and name[2:].isdigit():
                digits = name[2:]
                found.append(f"{int(digits[:-1])}.{digits[-1]}")
        return sorted(found, key=lambda cc: tuple(int(p) for p in cc.split(".")))

    def set_targets(self, trt: ModuleType, config: Any, targets: list[str]) -> None:
        """Set ``config``'s target compute capabilities (``["8.6", "8.9"]``)."""
        known = self.all_targets(trt)
        unknown = [t for t in targets if t not in known]
        if unknown or not targets:
            raise EdgefsError(f"{self.description} cannot target compute capability {', '.join(unknown) or '(none)'}; "
                              f"it targets {', '.join(known)}")
        config.num_compute_capabilities = len(targets)
        for i, cc in enumerate(targets):
            enum = getattr(trt.ComputeCapability, "SM" + cc.replace(".", ""))
            if not config.set_compute_capability(enum, i):
                raise EdgefsError(f"{self.description} refused target compute capability {cc}")


FLAVOURS: Registry[Flavour] = Registry("TensorRT flavour")

FLAVOURS.register("tensorrt")(Flavour(
    name="tensorrt", module="tensorrt",
    install=("JetPack on a Jetson (it ships TensorRT's Python bindings); elsewhere pip install tensorrt "
             "(from NVIDIA's own pip index)"),
    tag="trt", precisions=("fp32", "fp16", "int8"), builds_without_gpu=False, strongly_typed=False,
    description="TensorRT",
))
FLAVOURS.register("rtx")(Flavour(
    name="rtx", module="tensorrt_rtx_bindings",
    install="pip install 'edgefs[rtx]' (the tensorrt-rtx-cu12-libs and tensorrt-rtx-cu12-bindings wheels)",
    tag="rtx", precisions=("fp32", "fp16"), builds_without_gpu=True, strongly_typed=True,
    description="TensorRT-RTX",
))

AUTO = "auto"
"""``--trt auto``: ``tensorrt`` where ``import tensorrt`` works (a Jetson, a TensorRT PC), else ``rtx``."""


def flavour_names() -> list[str]:
    """``"auto"`` and every registered flavour, for CLI choices."""
    return [AUTO, *FLAVOURS.names()]


def resolve_flavour(name: str | None = AUTO) -> Flavour:
    """The flavour called ``name``; ``auto`` (or None) picks ``tensorrt`` first, then ``rtx``.

    Raises:
        MissingDependencyError: ``auto`` and neither is installed (naming both installs).
    """
    if name not in (None, AUTO):
        return FLAVOURS.get(str(name))
    order = [FLAVOURS.get("tensorrt"), FLAVOURS.get("rtx")]
    for flavour in order:
        if flavour.available():
            return flavour
    raise MissingDependencyError(
        "no TensorRT is installed: " + "; ".join(f"for {f.description} ({f.name}) install {f.install}" for f in order)
    )


def installed_flavours() -> list[Flavour]:
    """The flavours whose module is installed, in ``auto``'s order."""
    return [f for f in (FLAVOURS.get("tensorrt"), FLAVOURS.get("rtx")) if f.available()]


class _Sink:
    """Where the one logger of a TensorRT module forwards to, swapped per build or load."""

    def __init__(self) -> None:
        self.log: Callable[[str], None] = lambda _: None
        self.errors: list[str] = []


_LOGGERS: dict[str, tuple[Any, _Sink]] = {}


def shared_logger(trt: ModuleType, log: Callable[[str], None]) -> tuple[Any, list[str]]:
    """The process's one logger for ``trt``, now forwarding warnings and errors to ``log``.

    TensorRT keeps the first logger a process gives a builder or runtime and ignores
    later ones (TensorRT-RTX says so in a warning), so a logger per build would lose
    every message after the first build. One logger per module, with a swappable
    sink, keeps each build's errors with that build.

    Returns:
        ``(logger, errors)``: ``errors`` is a fresh list that collects this use's errors.
    """
    entry = _LOGGERS.get(trt.__name__)
    if entry is None:
        sink = _Sink()

        class Logger(trt.ILogger):  # type: ignore[misc,name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                if int(severity) <= int(trt.ILogger.Severity.ERROR):
                    sink.errors.append(msg)
                    sink.log(f"TensorRT error: {msg}")
                elif int(severity) <= int(trt.ILogger.Severity.WARNING):
                    sink.log(f"TensorRT warning: {msg}")

        entry = (Logger(), sink)
        _LOGGERS[trt.__name__] = entry
    logger, sink = entry
    sink.log = log
    sink.errors = []
    return logger, sink.errors
