"""Skip tests whose hardware or stack is absent, saying why (markers in pyproject.toml)."""

from __future__ import annotations

import importlib.util

import pytest


def _cuda_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    return None if torch.cuda.is_available() else "no CUDA GPU on this machine"


def _trt_reason() -> str | None:
    # TensorRT ships with JetPack / NVIDIA's own index; it is absent on CPU machines.
    return None if importlib.util.find_spec("tensorrt") else "TensorRT is not installed ('import tensorrt' fails)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # TensorRT first: on a GPU machine without it, that is the reason worth reading.
    reasons = {"trt": _trt_reason, "gpu": _cuda_reason}
    cache: dict[str, str | None] = {}
    for item in items:
        for marker, probe in reasons.items():
            if marker in item.keywords:
                if marker not in cache:
                    cache[marker] = probe()
                if cache[marker]:
                    item.add_marker(pytest.mark.skip(reason=cache[marker]))
