"""edgefs.export: PyTorch checkpoint -> device bundle (ONNX graph, head, manifest).

:func:`export_bundle` loads a checkpoint, exports its backbone with the
TorchScript ONNX exporter (uint8 NHWC RGB in, float32 embeddings out, dynamic
batch), checks and simplifies the graph with onnxslim, compares ONNX Runtime
with PyTorch on real images, and writes the bundle that
:func:`edgefs.runtime.bundle.read_bundle` reads -- all or nothing.

Modules: ``onnx_export`` (backbone -> checked, simplified ``.onnx``), ``parity``
(ONNX Runtime vs PyTorch figures), ``bundle_writer`` (the bundle folder and its
manifest). This folder sits at the top of the source tree to show the
architecture and is importable as ``edgefs.export`` (see DESIGN.md, "Layout").
The TensorRT engine builder arrives with its own issue.
"""

from edgefs.export.bundle_writer import TORCH_WEIGHTS_FILE, ParityError, export_bundle
from edgefs.export.onnx_export import ExportError, export_onnx
from edgefs.export.parity import ParityReport, check_parity

__all__ = [
    "TORCH_WEIGHTS_FILE",
    "ExportError",
    "ParityError",
    "ParityReport",
    "check_parity",
    "export_bundle",
    "export_onnx",
]
