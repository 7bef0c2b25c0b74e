"""Open an engine for a bundle: a named backend, or the best one this machine has (``auto``).

``auto`` picks, and logs why:

1. ``tensorrt`` when a TensorRT flavour is installed (``tensorrt``, or
   ``tensorrt_rtx_bindings`` for TensorRT-RTX) and a serialized engine for this
   bundle (and precision) that fits this GPU exists -- engines are built with
   ``edgefs build-engine``, never shipped;
2. ``onnxruntime`` on CUDA when ONNX Runtime has the CUDA execution provider;
3. on the CPU: ``openvino`` for an INT8 bundle on an x86 CPU when OpenVINO is
   installed (its INT8 kernels ran Lite0 faster than ONNX Runtime's there:
   ``tools/bench_precisions.py``), or when ONNX Runtime is not installed;
   otherwise ``onnxruntime``.

The ``torch`` backend is never picked automatically: it needs PyTorch and is for
development and GPU tests.

Every backend's constructor takes ``(bundle, *, device, precision, threads)``
(``threads`` may be ignored where it means nothing). The backends are the
``*_backend`` modules of :mod:`edgefs.runtime`, found by :data:`ENGINES` itself; none
imports onnxruntime, torch or tensorrt before it is opened.

TensorRT: ``edgefs.runtime.tensorrt_backend.find_engine(bundle, precision)``
says whether a serialized engine exists for this bundle on this GPU and
TensorRT version, without building one.
"""

from __future__ import annotations

import inspect
import os
import platform
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edgefs.device import check_device
from edgefs.errors import EdgefsError, MissingDependencyError

# The backends that ``auto`` weighs against each other; none imports its heavy stack until opened.
from edgefs.runtime import onnxruntime_backend, openvino_backend, tensorrt_backend, trt_flavour
from edgefs.runtime.bundle import Bundle, read_bundle
from edgefs.runtime.engine import ENGINES, Engine
from edgefs.runtime.quantized import fp32_fallback, graph_precision, unclaimed_cpu
from edgefs.runtime.selfcheck import SelfCheckError, check_engine, what_to_do

ON_MISMATCH = ("refuse", "fp32")
"""What :func:`open_engine` does when an engine fails the bundle's self-check (or an INT8 bundle
meets a CPU it was not made for): ``refuse`` (default) raises with what happened and what to do;
``fp32`` runs the FP32 graph an INT8 bundle carries instead, said once."""


def backend_names() -> list[str]:
    """``"auto"`` and every registered backend, for CLI choices."""
    return ["auto", *ENGINES.names()]


#: Files an NVIDIA GPU's driver makes: a desktop or server GPU, or a Jetson's integrated one.
GPU_MARKERS = ("/dev/nvidia0", "/proc/driver/nvidia/version", "/dev/nvhost-ctrl-gpu", "/etc/nv_tegra_release")


def nvidia_gpu_present() -> bool:
    """Whether this machine shows an NVIDIA GPU driver (cheap: a few file checks, no CUDA import)."""
    return any(os.path.exists(marker) for marker in GPU_MARKERS)


def _tensorrt_choice(bundle: Bundle, precision: str) -> tuple[bool, str]:
    """Whether ``auto`` should use TensorRT for this bundle, and why (not)."""
    flavours = trt_flavour.installed_flavours()
    if not flavours:
        return False, "TensorRT is not installed ('import tensorrt' and 'import tensorrt_rtx_bindings' fail)"
    if not nvidia_gpu_present():
        return False, "no NVIDIA GPU on this machine (TensorRT runs on one)"
    path = tensorrt_backend.find_engine(bundle, precision)
    if path is None:
        return False, (f"no {precision} TensorRT engine built for bundle {bundle.fingerprint[:12]} on this GPU "
                       "(build one with 'edgefs build-engine')")
    return True, f"TensorRT engine {path}"


def _prefer_openvino(bundle: Bundle) -> bool:
    """INT8 bundles on x86 go to OpenVINO when it is installed (measured: tools/bench_precisions.py)."""
    return graph_precision(bundle) == "int8" and platform.machine().lower() in ("x86_64", "amd64")


def choose_backend(bundle: Bundle, device: str | None = None, precision: str = "fp32") -> tuple[str, str | None, str]:
    """What ``auto`` picks on this machine.

    Returns:
        ``(backend, device, reason)``: the backend's registry name, the device to
        open it on (``None``: the backend's own default) and one line saying why.
    """
    if device is not None:
        device = check_device(device)  # a name like 'banana' must not quietly mean the CPU
    wanted = (device or "auto").lower()
    if wanted != "cpu":
        use_trt, why_trt = _tensorrt_choice(bundle, precision)
        if use_trt:
            return "tensorrt", device, why_trt
    else:
        why_trt = "device 'cpu' was asked for"
    providers = onnxruntime_backend.available_providers()
    on_cpu = wanted == "cpu" or (wanted == "auto" and onnxruntime_backend.CUDA_EP not in providers)
    if on_cpu and (not providers or _prefer_openvino(bundle)) and openvino_backend.openvino_available():
        why = ("INT8 bundle on an x86 CPU: OpenVINO's INT8 kernels are the faster there" if providers
               else "onnxruntime is not installed")
        return "openvino", "cpu", f"{why_trt}; {why}"
    if not providers:
        raise MissingDependencyError(
            f"no engine backend can run bundle {bundle.path}: {why_trt}, and onnxruntime is not installed; "
            f"install it with: {onnxruntime_backend.INSTALL}"
        )
    if wanted != "cpu" and onnxruntime_backend.CUDA_EP in providers:
        return "onnxruntime", "cuda" if wanted == "auto" else device, f"{why_trt}; ONNX Runtime has CUDA"
    if wanted.startswith("cuda"):
        return "onnxruntime", device, f"{why_trt}; device {device!r} asked of ONNX Runtime"
    gpu_note = "" if wanted == "cpu" else f"; ONNX Runtime has no CUDA provider ({', '.join(providers)})"
    return "onnxruntime", "cpu", f"{why_trt}{gpu_note}"


def open_engine(
    bundle_or_path: Bundle | str | Path,
    backend: str = "auto",
    device: str | None = None,
    precision: str = "fp32",
    threads: int | None = None,
    log: Callable[[str], None] = print,
    verify: bool = True,
    options: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    selfcheck: bool = True,
) -> Engine:
    """Open a bundle on a backend.

    Args:
        bundle_or_path: a :class:`Bundle`, or its folder (read with :func:`read_bundle`).
        backend: ``"auto"`` (module docstring) or a registered name: ``onnxruntime``,
            ``tensorrt``, ``torch``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``None`` (the backend decides).
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"`` (what the backend supports).
        threads: CPU threads (ONNX Runtime intra-op, PyTorch); default every core.
        log: receives one line naming the engine and why it was chosen.
        verify: check ``backbone.onnx`` against the manifest's fingerprint when
            reading from a path.
        options: backend tuning passed to its constructor by keyword (None values
            skipped), e.g. ``allow_spinning`` (onnxruntime), ``hint`` and ``streams``
            (openvino). An option the backend does not take is an error when the backend
            was named, and is logged and left out when ``auto`` chose it.
        defaults: the caller's own defaults for such options (the camera loop turns ONNX
            Runtime's spinning off), used where ``options`` leaves them unset and the
            backend takes them; left out silently otherwise.
        selfcheck: embed the bundle's reference images and compare them with its FP32
            embeddings (:mod:`edgefs.runtime.selfcheck`; cached per machine, engine and bundle
            after a pass); False only for tools that measure the engine themselves.

    Returns:
        the opened :class:`Engine` (its ``selfcheck`` attribute holds the check's result).

    Raises:
        EdgefsError: an unknown backend (the message lists the known ones), a backend
            whose stack is missing (naming what to install), or one that refuses the
            device/precision.
        SelfCheckError: the engine fails the bundle's self-check, or an INT8 bundle is not for
            this CPU's class, and ``on_mismatch`` is ``refuse`` (or no FP32 graph is carried).
    """
    bundle = bundle_or_path if isinstance(bundle_or_path, Bundle) else read_bundle(bundle_or_path, verify=verify)
    if backend == "auto":
        backend, device, reason = choose_backend(bundle, device, precision)
    else:
        reason = "asked for"
    factory: Any = ENGINES.get(backend)
    wanted = {k: v for k, v in (options or {}).items() if v is not None}
    on_mismatch = str(wanted.pop("on_mismatch", "refuse"))
    if on_mismatch not in ON_MISMATCH:
        raise EdgefsError(f"on_mismatch {on_mismatch!r}: use one of {', '.join(ON_MISMATCH)}")
    takes = set(inspect.signature(factory).parameters)
    unused = sorted(set(wanted) - takes)
    if unused:
        if reason == "asked for":
            tunable = sorted(takes - {"bundle", "device", "precision", "threads", "providers"})
            raise EdgefsError(f"the {backend} backend has no option {', '.join(unused)}; options it takes: "
                              f"{', '.join(tunable) or 'none'}")
        log(f"note: {', '.join(unused)} left out: the {backend} backend (chosen by auto) has no such option")
    kwargs = {k: v for k, v in {**(defaults or {}), **wanted}.items() if k in takes and v is not None}
    engine: Engine = factory(bundle, device=device, precision=precision, threads=threads, **kwargs)
    if selfcheck:  # before the engine line: "engine: ..." says the engine is ready to run
        engine = _self_checked(engine, lambda b: factory(b, device=device, precision=precision, threads=threads,
                                                         **kwargs), on_mismatch, log)
    if engine.bundle is bundle:
        log(f"engine: {engine.describe()} for {bundle.path.name} ({reason})")
    return engine


def _self_checked(engine: Engine, reopen: Callable[[Bundle], Engine], on_mismatch: str,
                  log: Callable[[str], None]) -> Engine:
    """``engine`` once it passed the bundle's self-check; else the FP32 fallback (where allowed) or an error."""
    bundle = engine.bundle
    why = unclaimed_cpu(bundle) if engine.device == "cpu" and engine.precision == "int8" else None
    if why is None:
        result = check_engine(engine)
        engine.selfcheck = result  # type: ignore[attr-defined]
        if result.status == "unchecked":
            log(f"note: {result.message}")
            return engine
        if result.passed:
            if result.status == "verified":
                log(result.message)
            if engine.backend == "tensorrt":
                engine.verified = True  # type: ignore[attr-defined]  # checked on this GPU now
            return engine
        why = result.message
    fallback = fp32_fallback(bundle) if engine.precision == "int8" else None
    if on_mismatch == "fp32" and fallback is not None:
        log(f"warning: {why}; running the FP32 graph bundle {bundle.path.name} carries instead (--on-mismatch fp32)")
        replacement = reopen(fallback)
        result = check_engine(replacement)
        replacement.selfcheck = result  # type: ignore[attr-defined]
        if not result.passed and result.status != "unchecked":
            raise SelfCheckError(f"{result.message}; nothing was run. {what_to_do(replacement)}")
        log(f"engine: {replacement.describe()} for {bundle.path.name} (the FP32 graph it carries: --on-mismatch fp32)")
        return replacement
    allowed = "" if fallback is None or on_mismatch == "fp32" else " (or allow the FP32 graph it carries with " \
        "--on-mismatch fp32)"
    raise SelfCheckError(f"{why}; nothing was run. To fix: {what_to_do(engine)}{allowed}")
