"""The ``torch`` engine: the bundle's backbone rebuilt in PyTorch, for development and GPU tests.

**The one runtime module allowed to use torch and ``edgefs.backbones``.** The
device side does not need PyTorch (DESIGN.md, "Four rules", rule 1), and this
module keeps to that where it matters: importing it (which registers the
backend) imports neither; both are imported inside :class:`TorchEngine`'s
constructor, so only someone who opens a ``torch`` engine pays for them, and a
device without PyTorch gets a message naming what to install. The exception
exists because the workstation needs a reference engine that runs the very
network that was trained -- to check ONNX Runtime and TensorRT against it on
CPU and GPU, and to hand CUDA heads a device buffer without TensorRT -- and that
network is only defined in ``edgefs.backbones``.

The backbone is rebuilt from ``manifest.backbone`` (registry name and options) and
loaded from the bundle's ``backbone.pt`` (``manifest.export["torch_weights"]``), a
plain state dict read with ``torch.load(weights_only=True)``: nothing is unpickled.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgefs._lazy import require
from edgefs.errors import EdgefsError
from edgefs.runtime.bundle import Bundle, BundleError
from edgefs.runtime.engine import ENGINES, DeviceArray, Engine

INSTALL = "pip install 'edgefs[train]'"
PRECISIONS = ("fp32", "fp16")


def load_weights_file(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with PyTorch's pickle-protocol warning silenced.

    Raises:
        Exception: whatever torch raises; :func:`not_weights_reason` says what it means.
    """
    import torch

    with warnings.catch_warnings():
        # "Detected pickle protocol 4 ... please file an issue": advice for PyTorch's users, not ours.
        warnings.filterwarnings("ignore", message=".*pickle protocol.*")
        return torch.load(path, map_location="cpu", weights_only=True)


def not_weights_reason(path: str | Path, exc: BaseException) -> str:
    """What a file that ``torch.load(weights_only=True)`` refused is, in a few words, from its first bytes
    and the error; none of PyTorch's advice (which suggests loading it with ``weights_only=False``,
    running whatever code it holds).

    Returns:
        a clause such as ``"it is a text file"`` or ``"it holds a pickled Python object (posix.system) ..."``.
    """
    text = str(exc)
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as err:
        return f"it cannot be read ({err.strerror or err})"
    blocked = re.search(r"unsupported GLOBAL (\S+)", text)
    if blocked:
        return (f"it holds a pickled Python object ({blocked.group(1)}) that could run code when loaded; edgefs "
                "loads only tensors and plain values from such files, so it was not loaded")
    if not head:
        return "it is empty"
    if head.startswith(b"PK\x03\x04"):
        if "central directory" in text or isinstance(exc, EOFError):
            return "it is a zip archive cut short or damaged (a PyTorch file copied only in part?)"
        return "it is a zip archive but not a PyTorch file"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "it is a text file, not a PyTorch file"
    if head[:1] == b"\x80" or isinstance(exc, pickle.UnpicklingError):
        return "it is a Python pickle, not a PyTorch weights file"
    return "it is not a PyTorch file"


@ENGINES.register("torch")
class TorchEngine(Engine):
    """The trained backbone in PyTorch, on CPU or CUDA, fp32 or fp16 (CUDA only).

    In fp16 the network's layers run in half precision while its input module
    (uint8 -> normalised float, :class:`~edgefs.backbones.base.ImageInput`) stays
    float32, as in a TensorRT fp16 engine; the embeddings are returned as float32.

    Args:
        bundle: a bundle with ``backbone.pt`` (``edgefs export`` writes it).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; ``None``/``"auto"``: CUDA when
            PyTorch sees a GPU, else CPU.
        precision: ``"fp32"`` or ``"fp16"`` (CUDA only).
        threads: PyTorch CPU threads; note ``torch.set_num_threads`` is process-wide,
            so it is only called when given.

    Raises:
        MissingDependencyError: PyTorch is not installed.
        BundleError: the bundle has no ``backbone.pt``, or its weights do not fit the
            manifest's backbone.
        EdgefsError: an unknown backbone, device or precision, or fp16 on CPU.
    """

    backend = "torch"

    def __init__(
        self, bundle: Bundle, *, device: str | None = None, precision: str = "fp32", threads: int | None = None
    ) -> None:
        super().__init__(bundle)
        torch = require("torch", install=INSTALL, why="the torch engine backend")
        from edgefs.backbones import BACKBONES, build_backbone  # torch-only: see the module docstring

        self._torch = torch
        if precision not in PRECISIONS:
            raise EdgefsError(f"the torch backend runs {' or '.join(PRECISIONS)}, not {precision!r}")
        device = (device or "auto").lower()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise EdgefsError(f"device {device!r}: PyTorch sees no CUDA GPU here; use device='cpu'")
            device = str(torch.device(device if ":" in device else f"cuda:{torch.cuda.current_device()}"))
        elif device != "cpu":
            raise EdgefsError(f"bad device {device!r}; use 'cpu', 'cuda' or 'cuda:N'")
        if precision == "fp16" and device == "cpu":
            raise EdgefsError("fp16 in the torch backend needs CUDA (CPU half convolutions are slow or missing); "
                              "use fp32 on cpu")
        if threads:
            torch.set_num_threads(int(threads))

        spec = bundle.manifest.backbone
        name = spec.get("name")
        if name not in BACKBONES:
            raise EdgefsError(
                f"bundle {bundle.path} has backbone {name!r}, which this edgefs does not know "
                f"(known: {', '.join(BACKBONES.names())}); upgrade edgefs"
            )
        options: dict[str, Any] = dict(spec.get("options", {}))
        if "pretrained" in options:
            # backbone.pt holds every weight; skip reading the ImageNet weights only to replace them.
            options["pretrained"] = False
        net = build_backbone(name, **options)
        try:
            net.load_state_dict(self._load_weights(bundle))
        except RuntimeError as exc:  # missing/unexpected keys or shape mismatches
            raise BundleError(
                f"the weights in bundle {bundle.path} do not fit its manifest's {name} backbone ({exc}); "
                "re-export the bundle"
            ) from exc
        net.eval().to(device)
        if precision == "fp16":
            net.half()
            net.input.float()  # ImageInput computes in float32; its output is cast to half in _forward
        self.net = net
        self.device = device
        self.precision = precision
        self._dtype = torch.float16 if precision == "fp16" else torch.float32

    def _load_weights(self, bundle: Bundle) -> dict[str, Any]:
        weights = bundle.manifest.export.get("torch_weights")
        if not weights:
            raise BundleError(
                f"bundle {bundle.path} names no PyTorch weights (manifest export.torch_weights); the torch backend "
                "needs them: re-export it with 'edgefs export', or use the onnxruntime backend"
            )
        path = bundle.path / str(weights)
        if not path.is_file():
            raise BundleError(
                f"{path} is missing (bundles copied to a device often leave it off); the torch backend needs it: "
                "copy it from the workstation's bundle, or use the onnxruntime backend"
            )
        try:
            state = load_weights_file(path)
        except Exception as exc:  # torch raises many types for files that are not its own
            raise BundleError(f"the bundle's PyTorch weights {path} cannot be read: {not_weights_reason(path, exc)}. "
                              "It should be the backbone.pt 'edgefs export' writes; export the bundle again, or use "
                              "the onnxruntime backend") from exc
        if not isinstance(state, dict):
            raise BundleError(f"{path} is not a state dict; re-export the bundle")
        return state

    def _forward(self, images: np.ndarray) -> Any:
        """uint8 ``(B, H, W, 3)`` on the host -> float32 ``(B, D)`` tensor on ``self.device``."""
        torch = self._torch
        x = torch.from_numpy(self.check_input(images)).to(self.device)
        with torch.inference_mode():
            features = self.net.features(self.net.input(x).to(self._dtype))
            return features.float().contiguous()

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Args: images uint8 ``(B, H, W, 3)`` RGB. Returns: float32 ``(B, D)`` on the host."""
        return self._forward(images).cpu().numpy()

    def embed_device(self, images: np.ndarray) -> DeviceArray:
        """float32 ``(B, D)`` left in GPU memory: no host copy (CUDA only).

        ``stream`` is the current PyTorch CUDA stream the network ran on; the tensor is
        the ``owner`` and keeps the memory alive.
        """
        if not self.device.startswith("cuda"):
            return super().embed_device(images)
        out = self._forward(images)
        stream = self._torch.cuda.current_stream(out.device).cuda_stream
        return DeviceArray(int(out.data_ptr()), tuple(out.shape), "float32", stream=int(stream), owner=out)
