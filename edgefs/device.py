"""Device names the engines and the trainer take: ``cpu``, ``cuda`` or ``cuda:N``.

Torch-free, so the CLI checks a ``--device`` before anything is loaded and the
device runtime refuses a name it would otherwise quietly treat as the CPU.
"""

from __future__ import annotations

import re

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
