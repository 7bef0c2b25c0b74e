"""The ``openvino`` engine: the bundle's ``backbone.onnx`` compiled by OpenVINO for the CPU.

OpenVINO reads the ONNX graph directly (no conversion step, nothing written
beside the bundle) and runs FP32 bundles in FP32 and INT8 bundles (the QDQ
graphs of ``edgefs quantize``) with its INT8 kernels. OpenVINO is optional
(``pip install 'edgefs[openvino]'``) and imported when an engine is opened, so
importing this module (which registers the backend) costs nothing without it.

Precision: OpenVINO's CPU plugin runs FP32 graphs in bf16 by default on CPUs
with bf16 instructions (AVX512-BF16, AMX), which moves embeddings away from the
exported model's; this backend sets ``INFERENCE_PRECISION_HINT`` to ``f32`` so
that an FP32 bundle gives FP32 embeddings everywhere.
"""

from __future__ import annotations

import threading
from types import ModuleType
from typing import Any

import numpy as np

from edgefs._lazy import require
from edgefs.errors import EdgefsError
from edgefs.runtime.bundle import Bundle
from edgefs.runtime.engine import ENGINES, Engine
from edgefs.runtime.onnxruntime_backend import default_threads
from edgefs.runtime.quantized import cpu_precision

INSTALL = "pip install 'edgefs[openvino]' (or: pip install openvino)"
HINTS = ("LATENCY", "THROUGHPUT")


def import_openvino() -> ModuleType:
    """``openvino``, or a :class:`~edgefs.errors.MissingDependencyError` that says what to install."""
    return require("openvino", install=INSTALL, why="the openvino engine backend")


def openvino_available() -> bool:
    """Whether ``import openvino`` works here (for ``auto``)."""
    try:
        import_openvino()
    except EdgefsError:
        return False
    return True


@ENGINES.register("openvino")
class OpenVinoEngine(Engine):
    """An OpenVINO compiled model on ``backbone.onnx``, on the CPU.

    Args:
        bundle: the bundle to run (FP32, or INT8 from ``edgefs quantize``).
        device: ``"cpu"``, ``None`` or ``"auto"`` (OpenVINO's ``CPU`` device); other devices
            (Intel GPUs, NPUs) are refused: untested here.
        precision: ``"fp32"`` (the bundle's graph as it is) or ``"int8"`` (an INT8 bundle);
            the engine's ``precision`` is the graph's.
        threads: ``INFERENCE_NUM_THREADS`` (default: every core this process may use).
        hint: OpenVINO's ``PERFORMANCE_HINT``: ``LATENCY`` (default: one stream, every
            thread on each request, as the camera loop calls it) or ``THROUGHPUT``.
        streams: OpenVINO's ``NUM_STREAMS`` (None: what the hint chooses). The camera loop
            runs one request at a time, so more streams only split the threads.

    Attributes:
        threads: the inference thread count asked for.
        compiled: the ``openvino.CompiledModel``.

    Raises:
        MissingDependencyError: openvino is not installed (the message names the install).
        EdgefsError: another device, fp16, int8 asked of an FP32 bundle, or a graph
            OpenVINO cannot read or compile.
    """

    backend = "openvino"

    def __init__(
        self,
        bundle: Bundle,
        *,
        device: str | None = None,
        precision: str = "fp32",
        threads: int | None = None,
        hint: str = "LATENCY",
        streams: int | None = None,
    ) -> None:
        super().__init__(bundle)
        wanted = (device or "cpu").lower()
        if wanted not in ("cpu", "auto"):
            raise EdgefsError(f"the openvino backend runs on the cpu here, not {device!r}; use device 'cpu' (or the "
                              "onnxruntime / tensorrt backends for a GPU)")
        if precision == "fp16":
            raise EdgefsError("the openvino backend runs fp32 or int8 bundles on the cpu; fp16 needs the tensorrt "
                              "backend")
        self.precision = cpu_precision(bundle, precision, self.backend)
        hint = hint.upper()
        if hint not in HINTS:
            raise EdgefsError(f"unknown OpenVINO performance hint {hint!r}; use one of {', '.join(HINTS)}")
        self.threads = int(threads) if threads else default_threads()
        if self.threads < 1:
            raise EdgefsError(f"threads must be at least 1, got {threads}")
        self.hint = hint
        if streams is not None and int(streams) < 1:
            raise EdgefsError(f"OpenVINO streams must be at least 1, got {streams}")
        self.streams = None if streams is None else int(streams)
        self.device = "cpu"
        ov = import_openvino()
        self.version = str(ov.__version__).split("-")[0]
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": hint,
            "INFERENCE_NUM_THREADS": self.threads,
            "INFERENCE_PRECISION_HINT": "f32",  # not bf16: FP32 bundles must give FP32 embeddings (module doc)
        }
        if self.streams is not None:
            config["NUM_STREAMS"] = self.streams
        try:
            core = ov.Core()
            self.compiled = core.compile_model(core.read_model(str(bundle.onnx_path)), "CPU", config)
        # OpenVINO raises RuntimeError (and its own subclasses) for unreadable or unsupported graphs.
        except Exception as exc:
            raise EdgefsError(
                f"OpenVINO {self.version} could not read or compile {bundle.onnx_path}: {type(exc).__name__}: "
                f"{str(exc).strip()[:300]}. Check the bundle (edgefs bench --backend onnxruntime), or re-export it"
            ) from exc
        self._request = self.compiled.create_infer_request()
        # One infer request is not safe to share between threads; embed() may be called from several.
        self._lock = threading.Lock()

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Args: images uint8 ``(B, H, W, 3)`` RGB at the bundle's input size.

        Returns: float32 ``(B, D)`` embeddings on the host (a copy: the request's buffer is reused).
        """
        images = self.check_input(images)
        with self._lock:
            try:
                self._request.infer({0: images})
            except Exception as exc:  # OpenVINO's runtime errors derive from RuntimeError / Exception
                raise EdgefsError(f"OpenVINO failed on a batch of {images.shape}: {exc}") from exc
            out = np.array(self._request.get_output_tensor(0).data, dtype=np.float32, copy=True)
        return out

    def describe(self) -> str:
        streams = "" if self.streams is None else f", {self.streams} streams"
        return (f"{self.backend} ({self.precision}, {self.device}, OpenVINO {self.version}, {self.hint}{streams}, "
                f"{self.threads} threads)")
