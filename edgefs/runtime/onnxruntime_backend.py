"""The ``onnxruntime`` engine: the bundle's ``backbone.onnx`` in an ONNX Runtime session.

The CPU default on every device; with ``onnxruntime-gpu`` it also runs on CUDA
(and through TensorRT's execution provider where that is built in). ONNX Runtime
is imported when an engine is opened, not when this module is imported, so
importing it (which registers the backend) costs nothing on a machine without it.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edgefs._lazy import require
from edgefs.errors import EdgefsError
from edgefs.runtime.bundle import Bundle
from edgefs.runtime.engine import ENGINES, DeviceArray, Engine
from edgefs.runtime.quantized import cpu_precision, graph_precision

INSTALL = "pip install 'edgefs[device]' (CPU) or pip install onnxruntime-gpu (CUDA)"
CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"
GPU_EPS = (TRT_EP, CUDA_EP)


def import_onnxruntime() -> ModuleType:
    """``onnxruntime``, or a :class:`~edgefs.errors.MissingDependencyError` that says what to install."""
    return require("onnxruntime", install=INSTALL, why="the onnxruntime engine backend")


def available_providers() -> list[str]:
    """ONNX Runtime's execution providers on this machine (empty when it is not installed)."""
    try:
        return list(import_onnxruntime().get_available_providers())
    except EdgefsError:
        return []


def default_threads() -> int:
    """Cores this process may run on (its CPU affinity), else every core."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _cuda_index(device: str) -> int:
    _, _, index = device.partition(":")
    try:
        return int(index or 0)
    except ValueError:
        raise EdgefsError(f"bad device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None


def _trt_cache_dir(bundle: Bundle) -> Path:
    """Where ONNX Runtime's TensorRT provider keeps its engines: per user, per bundle fingerprint.

    Not inside the bundle, which may be read-only on a device.
    """
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgefs" / "ort-tensorrt" / bundle.fingerprint[:16]


@ENGINES.register("onnxruntime")
class OnnxRuntimeEngine(Engine):
    """An ONNX Runtime session on ``backbone.onnx`` (graph optimisation level "all").

    Args:
        bundle: the bundle to run.
        device: ``"cpu"``; ``"cuda"`` / ``"cuda:N"`` (needs ``onnxruntime-gpu``: the
            TensorRT and CUDA execution providers, where present, with the CPU one
            for any node they cannot take); ``None`` or ``"auto"``: CUDA when this
            ONNX Runtime has it, else CPU.
        precision: ``"fp32"`` (the bundle's graph as it is); ``"int8"`` on the CPU for an INT8
            bundle made by ``edgefs quantize`` (an INT8 bundle runs INT8 either way: the
            engine's ``precision`` is the graph's); ``"fp16"`` only through the TensorRT
            execution provider.
        threads: intra-op threads for the CPU provider (default: every core this
            process may use).
        providers: an explicit provider list for ONNX Runtime, overriding ``device``.
        allow_spinning: let idle intra-op (and inter-op) threads busy-wait for the next
            run (``session.intra_op.allow_spinning`` and ``session.inter_op.allow_spinning``;
            ONNX Runtime's default: lowest latency when embedding back to back). On a small
            CPU where NumPy/OpenCV work runs between embeds, ``False`` can be faster
            overall: on 2 cores, EfficientNet-Lite0 at batch 8 embedded in 47 ms instead
            of 68 ms and the NumPy head took 0.4 ms instead of 4 ms, while batch 1
            slowed from 4.0 to 5.2 ms. With one thread there is no pool to spin.

    Attributes:
        providers: the providers the session actually uses, in priority order.
        threads: the intra-op thread count.
        session: the ``onnxruntime.InferenceSession``.

    Raises:
        MissingDependencyError: onnxruntime is not installed.
        EdgefsError: a CUDA device asked of a CPU-only ONNX Runtime, an fp16/int8
            request it cannot honour, or a ``backbone.onnx`` ONNX Runtime cannot load
            (corrupt or truncated; the message says to re-copy or re-export).
    """

    backend = "onnxruntime"

    def __init__(
        self,
        bundle: Bundle,
        *,
        device: str | None = None,
        precision: str = "fp32",
        threads: int | None = None,
        providers: list[Any] | None = None,
        allow_spinning: bool = True,
    ) -> None:
        super().__init__(bundle)
        ort = import_onnxruntime()
        available = list(ort.get_available_providers())
        self._device_id = 0
        if providers is None:
            providers = self._providers(bundle, device, precision, available)
        elif precision != "fp32":
            raise EdgefsError("with explicit providers the onnxruntime backend runs fp32 only")
        self.threads = int(threads) if threads else default_threads()
        if self.threads < 1:
            raise EdgefsError(f"threads must be at least 1, got {threads}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "1" if allow_spinning else "0")
        self.allow_spinning = bool(allow_spinning)
        options.log_severity_level = 3  # errors only; provider fallbacks are checked below instead
        try:
            self.session = ort.InferenceSession(str(bundle.onnx_path), sess_options=options, providers=providers)
        # ONNX Runtime's pybind errors (InvalidProtobuf, Fail, ...) derive from Exception directly.
        except Exception as exc:
            raise EdgefsError(
                f"ONNX Runtime could not load {bundle.onnx_path}: {type(exc).__name__}: {str(exc).strip()[:300]}. "
                "The file is probably truncated or corrupt: copy the bundle again, or re-export it with "
                "'edgefs export' (read_bundle(verify=True) checks the file against the manifest's fingerprint)"
            ) from exc
        self.providers: list[str] = list(self.session.get_providers())
        wanted_gpu = any((p if isinstance(p, str) else p[0]) in GPU_EPS for p in providers)
        on_gpu = any(p in GPU_EPS for p in self.providers)
        if wanted_gpu and not on_gpu:
            raise EdgefsError(
                f"ONNX Runtime was asked for {[p if isinstance(p, str) else p[0] for p in providers]} but the session "
                f"only has {self.providers} (CUDA/cuDNN libraries not found?); fix the CUDA install or pass "
                "device='cpu'"
            )
        self.device = f"cuda:{self._device_id}" if on_gpu else "cpu"
        # An INT8 bundle (edgefs quantize) runs its QDQ graph as it is: its precision is the graph's.
        self.precision = precision if precision == "fp16" else graph_precision(bundle)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_name, self.output_name = inputs[0].name, outputs[0].name

    def _providers(self, bundle: Bundle, device: str | None, precision: str, available: list[str]) -> list[Any]:
        """The provider list for ``device``/``precision``, refusing what this ONNX Runtime cannot do."""
        if precision not in ("fp32", "fp16", "int8"):
            raise EdgefsError(f"the onnxruntime backend runs fp32, fp16 (TensorRT provider) or int8 bundles, not "
                              f"{precision}")
        device = (device or "auto").lower()
        if device == "auto":
            device = "cuda" if CUDA_EP in available else "cpu"
        if device == "cpu":
            if precision == "fp16":
                raise EdgefsError(
                    "the onnxruntime backend on cpu runs the bundle's fp32 or int8 graph; fp16 needs the tensorrt "
                    "backend (or onnxruntime-gpu with its TensorRT provider)"
                )
            cpu_precision(bundle, precision, self.backend)
            return [CPU_EP]
        if precision == "int8":
            raise EdgefsError(
                "int8 on cuda needs the tensorrt backend ('edgefs build-engine --precision int8'); the onnxruntime "
                "backend runs an INT8 bundle on the cpu"
            )
        if not device.startswith("cuda"):
            raise EdgefsError(f"bad device {device!r}; use 'cpu', 'cuda' or 'cuda:N'")
        self._device_id = _cuda_index(device)
        if CUDA_EP not in available:
            raise EdgefsError(
                f"device {device!r} needs ONNX Runtime's {CUDA_EP}, and this onnxruntime has only "
                f"{available}; install onnxruntime-gpu (matching your CUDA), or use device='cpu'"
            )
        chosen: list[Any] = []
        if TRT_EP in available:
            cache = _trt_cache_dir(bundle)
            cache.mkdir(parents=True, exist_ok=True)
            chosen.append((TRT_EP, {
                "device_id": self._device_id, "trt_fp16_enable": precision == "fp16",
                "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
            }))
        if precision != "fp32" and not chosen:
            raise EdgefsError(
                f"{precision} with onnxruntime needs its {TRT_EP}, which this onnxruntime lacks; use the tensorrt "
                "backend, or fp32"
            )
        chosen += [(CUDA_EP, {"device_id": self._device_id}), CPU_EP]
        return chosen

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Args: images uint8 ``(B, H, W, 3)`` RGB at the bundle's input size.

        Returns: float32 ``(B, D)`` embeddings on the host.
        """
        images = self.check_input(images)
        try:
            (out,) = self.session.run([self.output_name], {self.input_name: images})
        except Exception as exc:  # ONNX Runtime's pybind errors derive from Exception directly
            raise EdgefsError(f"ONNX Runtime failed on a batch of {images.shape}: {exc}") from exc
        return np.asarray(out, dtype=np.float32)

    def embed_device(self, images: np.ndarray) -> DeviceArray:
        """Like :meth:`embed`, leaving float32 ``(B, D)`` in GPU memory (CUDA provider only).

        The output is bound to CUDA memory with an I/O binding; ONNX Runtime
        synchronises its providers at the end of a run, so the data is ready on the
        default stream (``stream=0``) when this returns.
        """
        if not self.device.startswith("cuda"):
            return super().embed_device(images)
        images = self.check_input(images)
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, images)
        binding.bind_output(self.output_name, "cuda", self._device_id)
        try:
            self.session.run_with_iobinding(binding)
        except Exception as exc:  # ONNX Runtime's pybind errors derive from Exception directly
            raise EdgefsError(f"ONNX Runtime failed on a batch of {images.shape}: {exc}") from exc
        value = binding.get_outputs()[0]
        return DeviceArray(int(value.data_ptr()), tuple(value.shape()), "float32", stream=0, owner=value)

    def describe(self) -> str:
        spin = "" if self.threads == 1 or self.device != "cpu" else \
            (", spinning" if self.allow_spinning else ", no spinning")
        return (f"{self.backend} ({self.precision}, {self.device}, {'+'.join(self.providers)}, "
                f"{self.threads} threads{spin})")
