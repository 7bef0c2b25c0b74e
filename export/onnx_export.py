"""Backbone -> ``backbone.onnx``: trace, check, simplify with onnxslim, check again.

The graph takes what a camera gives after resize/crop -- uint8 ``(B, S, S, 3)``
RGB, ``B`` dynamic -- and returns float32 ``(B, D)`` embeddings; channel
conversion (BT.601 luma for grey backbones) and normalisation are inside it,
because they are inside every backbone's ``forward``. Its first node casts the
uint8 input to float, the only operation TensorRT lets read a uint8 input
(:func:`check_input_cast_first`).

Only PyTorch's TorchScript-based exporter (``dynamo=False``) is used: it needs no
onnxscript and is what TensorRT's parser has seen most. The graph is simplified
with onnxslim (constant folding, shape-op elimination, fusions) rather than by
hand-editing nodes.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch

from edgefs._lazy import require
from edgefs.backbones import Backbone
from edgefs.errors import EdgefsError
from edgefs.runtime.bundle import INPUT_NAME, OUTPUT_NAME

BATCH_AXIS = "batch"
DEFAULT_OPSET = 17

# "Exporting the operator 'aten::erfinv' to ONNX opset version 17 is not supported"
_QUOTED_OP = re.compile(r"operator '([^']+)'")
_ANY_OP = re.compile(r"\b((?:aten|prim|onnx|quantized|torchvision)::\w+)")


class ExportError(EdgefsError):
    """A backbone that cannot become a valid ONNX graph, or whose graph does not match PyTorch."""


def unsupported_operator(message: str) -> str | None:
    """The operator named in a torch.onnx error message (e.g. ``"aten::erfinv"``), if any."""
    found = _QUOTED_OP.search(message) or _ANY_OP.search(message)
    return found.group(1) if found else None


@contextlib.contextmanager
def _quiet_failure_dump() -> Iterator[None]:
    """Hold back what is written to file descriptors 1 and 2 while exporting; replay it unless the export fails.

    On a failure the TorchScript exporter's C++ logger prints the whole Torch IR graph
    (thousands of lines for a real backbone) before raising; the ExportError that
    follows names the operator, which is what the user needs.
    """
    streams = ((1, sys.stdout), (2, sys.stderr))
    with contextlib.ExitStack() as stack:
        held = []
        for fd, stream in streams:
            stream.flush()
            spool = stack.enter_context(tempfile.TemporaryFile())
            held.append((fd, stream, os.dup(fd), spool))
            os.dup2(spool.fileno(), fd)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            for fd, stream, saved, spool in held:
                stream.flush()
                os.dup2(saved, fd)
                os.close(saved)
                if not failed:
                    spool.seek(0)
                    stream.write(spool.read().decode(errors="replace"))


def _trace_to_onnx(backbone: Backbone, path: Path, opset: int) -> None:
    size = backbone.spec.input_size
    # Batch 2, not 1, so that nothing in the trace can specialise the batch axis to 1.
    example = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    try:
        with _quiet_failure_dump(), warnings.catch_warnings():
            # The TorchScript exporter announces its own deprecation on every call.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            # ImageInput branches on the channel count; the graph's input has 3 channels, fixed, so the
            # traced branch is the only one it can take.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            # Strided slices the exporter cannot fold are folded by onnxslim afterwards.
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            torch.onnx.export(
                backbone,
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}},
                do_constant_folding=True,
            )
    except torch.onnx.errors.OnnxExporterError as exc:  # UnsupportedOperatorError, SymbolicValueError
        op = unsupported_operator(str(exc))
        what = f"operator {op!r}" if op else "an operator"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(
            f"backbone {backbone.spec.name!r} uses {what}, which the ONNX exporter cannot write at opset {opset} "
            f"({first_line}). Replace it in the backbone with supported operations, or try a newer --opset."
        ) from exc
    except RuntimeError as exc:  # tracing failures carry the op in the message too
        op = unsupported_operator(str(exc))
        what = f" at operator {op!r}" if op else ""
        raise ExportError(
            f"tracing backbone {backbone.spec.name!r} for ONNX failed{what}: {str(exc).strip().splitlines()[0]}"
        ) from exc


def _check(model: onnx.ModelProto, stage: str) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the {stage} ONNX graph is invalid: {exc}. This is a bug in the exporter or "
                          "simplifier; report it with the checkpoint's backbone spec") from exc


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    """A graph input/output's dims: an int for a fixed size, the name for a symbolic one."""
    return [d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in value.type.tensor_type.shape.dim]


def check_interface(model: onnx.ModelProto, size: int, dim: int) -> None:
    """Check names, dtypes and shapes: uint8 ``(B, size, size, 3)`` in, float32 ``(B, dim)`` out, B symbolic.

    Raises:
        ExportError: anything else (e.g. a simplifier that fixed the batch size).
    """
    graph = model.graph
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in graph.output] != [OUTPUT_NAME]:
        raise ExportError(f"ONNX graph has inputs {[i.name for i in inputs]} and outputs "
                          f"{[o.name for o in graph.output]}; expected [{INPUT_NAME!r}] and [{OUTPUT_NAME!r}]")
    images, embeddings = inputs[0], graph.output[0]
    problems = []
    if images.type.tensor_type.elem_type != onnx.TensorProto.UINT8:
        problems.append("input is not uint8")
    if embeddings.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        problems.append("output is not float32")
    in_dims, out_dims = _dims(images), _dims(embeddings)
    if len(in_dims) != 4 or in_dims[1:] != [size, size, 3]:
        problems.append(f"input shape is {in_dims}, expected [batch, {size}, {size}, 3]")
    if len(out_dims) != 2 or out_dims[1] != dim:
        problems.append(f"output shape is {out_dims}, expected [batch, {dim}]")
    if not (in_dims and isinstance(in_dims[0], str) and in_dims[0]):
        problems.append(f"input batch axis is fixed ({in_dims[:1]}), expected dynamic")
    if not (out_dims and isinstance(out_dims[0], str) and out_dims[0]):
        problems.append(f"output batch axis is fixed ({out_dims[:1]}), expected dynamic")
    if problems:
        raise ExportError("the ONNX graph does not have the bundle interface: " + "; ".join(problems))


def check_input_cast_first(model: onnx.ModelProto) -> None:
    """Check that the uint8 input feeds nothing but Casts, and that the first node of the graph is one.

    TensorRT and TensorRT-RTX take a uint8 network input only straight into a Cast
    (their ONNX parsers refuse e.g. a Transpose of uint8). ``ImageInput`` casts
    first; this holds the simplified graph to it, whatever onnxslim reorders.

    Raises:
        ExportError: naming the offending node.
    """
    nodes = list(model.graph.node)
    consumers = [n for n in nodes if INPUT_NAME in n.input]
    wrong = [f"{n.op_type} {n.name!r}" for n in consumers if n.op_type != "Cast"]
    if not consumers or wrong or nodes[0].op_type != "Cast" or INPUT_NAME not in nodes[0].input:
        first = f"{nodes[0].op_type} {nodes[0].name!r}" if nodes else "nothing"
        raise ExportError(
            f"the ONNX graph's uint8 {INPUT_NAME!r} must go through a Cast to float before any other operation "
            f"(TensorRT's parser refuses anything else); its first node is {first} and it is read by "
            f"{', '.join(wrong) or 'no other op'}. Cast first in the backbone's ImageInput"
        )


def export_onnx(backbone: Backbone, path: str | Path, opset: int = DEFAULT_OPSET) -> dict[str, int]:
    """Write ``backbone`` (put in eval mode) as a checked, simplified ONNX graph.

    Args:
        backbone: any registered backbone; its ``forward`` takes uint8 ``(B, S, S, C)``.
        path: the ``.onnx`` file to write.
        opset: ONNX opset for the TorchScript exporter.

    Returns:
        ``{"nodes_traced", "nodes_simplified"}``: graph sizes before and after onnxslim.

    Raises:
        ExportError: an operator the exporter cannot write (named), an invalid graph,
            or a graph whose interface is not uint8 ``(B, S, S, 3)`` -> float32 ``(B, D)``.
    """
    onnxslim = require("onnxslim", install="pip install 'edgefs[train]'", why="ONNX export")
    path = Path(path)
    backbone.eval()
    _trace_to_onnx(backbone, path, opset)
    traced = onnx.load(str(path))
    _check(traced, "traced")
    simplified = onnxslim.slim(traced)
    if not isinstance(simplified, onnx.ModelProto):
        raise ExportError(f"onnxslim returned {type(simplified).__name__}, not an ONNX model")
    _check(simplified, "simplified")
    check_interface(simplified, backbone.spec.input_size, backbone.spec.embedding_dim)
    check_input_cast_first(simplified)
    onnx.save(simplified, str(path))
    return {"nodes_traced": len(traced.graph.node), "nodes_simplified": len(simplified.graph.node)}
