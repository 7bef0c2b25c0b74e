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

from typing import Any

import numpy as np

from edgefs._lazy import require
from edgefs.errors import EdgefsError
from edgefs.runtime.bundle import Bundle, BundleError
from edgefs.runtime.engine import ENGINES, DeviceArray, Engine

INSTALL = "pip install 'edgefs[train]'"
PRECISIONS = ("fp32", "fp16")


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
        torch = self._torch
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
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, OSError, EOFError, ValueError) as exc:
            raise BundleError(f"{path} is unreadable ({exc}); re-export the bundle") from exc
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
