"""edgefs.export: PyTorch checkpoint -> device bundle (ONNX graph, head, manifest) -> TensorRT engine.

:func:`export_bundle` loads a checkpoint, exports its backbone with the
TorchScript ONNX exporter (uint8 NHWC RGB in, float32 embeddings out, dynamic
batch), checks and simplifies the graph with onnxslim, compares ONNX Runtime
with PyTorch on real images, and writes the bundle that
:func:`edgefs.runtime.bundle.read_bundle` reads -- all or nothing.

Modules: ``onnx_export`` (backbone -> checked, simplified ``.onnx``), ``parity``
(ONNX Runtime vs PyTorch figures), ``bundle_writer`` (the bundle folder and its
manifest) -- these need PyTorch and run on the workstation -- and
``tensorrt_build`` (bundle -> TensorRT engine), which needs no PyTorch because
engines are built on the device. The names below are imported on first use, so
``import edgefs.export.tensorrt_build`` works on a device without PyTorch.

This folder sits at the top of the source tree to show the architecture and is
importable as ``edgefs.export`` (see DESIGN.md, "Layout").
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TORCH_WEIGHTS_FILE": "bundle_writer",
    "ParityError": "bundle_writer",
    "export_bundle": "bundle_writer",
    "export_pretrained": "pretrained",
    "write_bundle": "bundle_writer",
    "ExportError": "onnx_export",
    "export_onnx": "onnx_export",
    "ParityReport": "parity",
    "check_parity": "parity",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgefs.export' has no attribute {name!r}")
    return getattr(importlib.import_module(f"edgefs.export.{module}"), name)
