"""The Engine interface: uint8 images in, embeddings out, on some backend.

Backends register by name (``ENGINES``): ``onnxruntime`` (the CPU default),
``openvino``, ``tensorrt`` (a serialized engine built on the device) and ``torch``
(for development and GPU tests). A backend is one module of :mod:`edgefs.runtime`
named ``<name>_backend`` whose class carries ``@ENGINES.register(name)``; the registry
imports those modules on its first lookup. Heavy stacks are imported when a backend is
opened, never at import time, and a missing one names the package to install.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from edgefs.device import DeviceArray
from edgefs.errors import EdgefsError
from edgefs.registry import Registry
from edgefs.runtime.bundle import Bundle


class Engine(ABC):
    """A backbone ready to embed camera images.

    Attributes:
        backend: registry name, e.g. ``"onnxruntime"``.
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        device: where it runs, e.g. ``"cpu"`` or ``"cuda:0"``.
        bundle: the bundle it was opened from.
    """

    backend: str
    precision: str
    device: str

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.input_size = bundle.manifest.input_size
        self.embedding_dim = bundle.manifest.embedding_dim

    def check_input(self, images: np.ndarray) -> np.ndarray:
        """Refuse what the graph cannot take, with a message that says what it wants."""
        h, w = self.input_size
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise EdgefsError(f"embed() takes uint8 images, got {getattr(images, 'dtype', type(images))}")
        if images.ndim != 4 or images.shape[1:] != (h, w, 3):
            raise EdgefsError(
                f"embed() takes (B, {h}, {w}, 3) RGB images, got {images.shape}; "
                "resize/crop frames with edgefs.runtime.preprocess first"
            )
        return np.ascontiguousarray(images)

    @abstractmethod
    def embed(self, images: np.ndarray) -> np.ndarray:
        """Args: images uint8 ``(B, H, W, 3)`` RGB. Returns: float32 ``(B, D)`` on the host."""

    def embed_device(self, images: np.ndarray) -> DeviceArray:
        """Like :meth:`embed`, leaving the result in GPU memory (GPU backends only)."""
        raise EdgefsError(f"the {self.backend} backend on {self.device} has no GPU output; use embed()")

    def describe(self) -> str:
        return f"{self.backend} ({self.precision}, {self.device})"


ENGINES: Registry[type[Engine]] = Registry("engine backend", package="edgefs.runtime", suffix="_backend")
