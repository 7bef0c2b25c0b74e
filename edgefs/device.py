"""Devices: the names the engines and the trainer take (``cpu``, ``cuda`` or ``cuda:N``), and
:class:`DeviceArray`, the GPU buffer an engine hands to the CUDA head kernels.

Torch-free, so the CLI checks a ``--device`` before anything is loaded and the
device runtime refuses a name it would otherwise quietly treat as the CPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from edgefs.errors import ConfigError

DEVICE_FORMS = ("cpu", "cuda", "cuda:N")
_DEVICE = re.compile(r"cpu|cuda(:\d{1,3})?")


def check_device(text: str) -> str:
    """The device name, lower-cased and stripped.

    Raises:
        ConfigError: anything but ``cpu``, ``cuda`` or ``cuda:N`` (the message lists them).
    """
    name = str(text).strip().lower()
    if not _DEVICE.fullmatch(name):
        raise ConfigError(f"unknown device {text!r}; use one of: {', '.join(DEVICE_FORMS)} (N: the GPU's index)")
    return name


@dataclass
class DeviceArray:
    """An embedding batch that stays in GPU memory, for the CUDA head kernels.

    Attributes:
        ptr: device pointer (``int``) to ``shape`` values of ``dtype``, row-major.
        shape: ``(B, D)``.
        dtype: NumPy dtype name, e.g. ``"float32"`` or ``"float16"``.
        stream: the CUDA stream handle the producer wrote on (0 = default stream);
            consumers launch on it so no host synchronisation is needed.
        owner: the object that keeps the memory alive (tensor, pycuda allocation).
    """

    ptr: int
    shape: tuple[int, ...]
    dtype: str
    stream: int = 0
    owner: Any = None
