"""The INT8 graph's integer formats, and the nodes that stay in float.

:data:`INT8_FORMATS` are the weight formats :func:`edgefs.export.quantize.quantize_bundle` writes
(activations are uint8 per-tensor in all of them) and :data:`FORMAT_LADDER` the order ``auto`` tries
the portable ones in; :func:`weight_overrides` says each format to ONNX Runtime's quantiser, and
:func:`preprocessing_nodes` names the input normalisation that is left unquantised.

No PyTorch; ``onnx`` is imported when a graph is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

INT8_FORMATS: dict[str, dict[str, Any]] = {
    "s7": {"weights": "int8 per-channel, 7 bits on convolutions run as a matrix product, 8 on depthwise",
           "u8_first": 0, "portable": True},
    "s7-u8first3": {"weights": "uint8 per-channel on the first 3 matrix-product convolutions, then as s7",
                    "u8_first": 3, "portable": True},
    "u8": {"weights": "uint8 per-channel on every matrix-product convolution, int8 on depthwise",
           "u8_first": None, "portable": True},
    "s8": {"weights": "int8 per-channel, 8 bits everywhere (saturates on x86 without VNNI)",
           "u8_first": 0, "portable": False},
}
"""The integer formats :func:`quantize_bundle` writes (``quantization.int8_format`` in the manifest);
activations are uint8 per-tensor in all of them. The portable ones give every CPU class the same
integer sums; ``s8`` is for VNNI CPUs only (``--target x86-vnni``)."""
FORMAT_LADDER = ("s7", "s7-u8first3", "u8")
"""What ``--int8-format auto`` tries for a portable target, fastest first, until one meets the floors.
Colour Lite0, AVX2, 1 thread, CPU time against FP32 (ONNX Runtime / OpenVINO) and mean cosine:
s7 1.06x / 1.69x, 0.980; s7-u8first3 1.02x / 1.52x, 0.990; u8 0.86x / 0.93x, 0.993."""
INT8_FORMAT_CHOICES = ("auto", *INT8_FORMATS)


def weight_overrides(onnx_path: Path, keep_float: list[str], fmt: str, quantization: Any) -> dict[str, Any]:
    """ONNX Runtime ``TensorQuantOverrides`` for the weights of ``fmt`` (:data:`INT8_FORMATS`).

    Matrix-product convolutions (``Conv`` with ``group == 1``, ``Gemm``, ``MatMul``), in graph order:
    uint8 per-channel (asymmetric) for the first ``u8_first`` of them (all where None), 7-bit int8
    (``reduce_range``) for the rest in the ``s7`` family. Depthwise convolutions keep 8-bit int8.
    """
    if fmt == "s8":
        return {}
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    u8_first = INT8_FORMATS[fmt]["u8_first"]
    out: dict[str, Any] = {}
    for node in graph.node:
        if node.name in keep_float or node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.input[1] not in initializers or group != 1:
            continue
        axis = 1 if node.op_type == "MatMul" else 0
        if u8_first is None or len(out) < u8_first:
            out[node.input[1]] = [{"axis": axis, "quant_type": quantization.QuantType.QUInt8}]
        else:
            out[node.input[1]] = [{"axis": axis, "reduce_range": True}]
    return out


def preprocessing_nodes(onnx_path: Path) -> list[str]:
    """The nodes between the graph input and the first Conv: the uint8 -> float normalisation.

    They stay in float: quantised, these elementwise nodes (QLinearMul on every input pixel)
    took 40% of EfficientNet-Lite0's INT8 time at 224 px on ONNX Runtime, for no accuracy.
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    downstream: set[str] = set()  # tensors computed from a Conv's output
    names = []
    for node in graph.node:  # ONNX graphs are topologically sorted
        after_conv = node.op_type == "Conv" or any(t in downstream for t in node.input)
        if after_conv:
            downstream.update(node.output)
        elif node.name:
            names.append(node.name)
    return names
