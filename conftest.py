"""Skip tests whose hardware or stack is absent, saying why (markers in pyproject.toml)."""

from __future__ import annotations

import importlib.util
import os
import tempfile

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Tests never read the user's tuned profiles (edgefs tune): run and serve would take their settings.
    os.environ["EDGEFS_CONFIG"] = tempfile.mkdtemp(prefix="edgefs-test-config.")


def _cuda_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    return None if torch.cuda.is_available() else "no CUDA GPU on this machine"


def _trt_reason() -> str | None:
    # TensorRT ships with JetPack / NVIDIA's own index; TensorRT-RTX with 'edgefs[rtx]'. Running an engine
    # of either also needs a GPU, which the 'gpu' marker asks for.
    if importlib.util.find_spec("tensorrt") or importlib.util.find_spec("tensorrt_rtx_bindings"):
        return None
    return "no TensorRT is installed ('import tensorrt' and 'import tensorrt_rtx_bindings' fail)"


def _trt_build_reason() -> str | None:
    # TensorRT-RTX's builder compiles ahead of time on the CPU: only the wheels are needed.
    if importlib.util.find_spec("tensorrt_rtx_bindings"):
        return None
    return "TensorRT-RTX is not installed ('import tensorrt_rtx_bindings' fails; pip install 'edgefs[rtx]')"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # TensorRT first: on a GPU machine without it, that is the reason worth reading.
    reasons = {"trt": _trt_reason, "trt_build": _trt_build_reason, "gpu": _cuda_reason}
    cache: dict[str, str | None] = {}
    for item in items:
        for marker, probe in reasons.items():
            if marker in item.keywords:
                if marker not in cache:
                    cache[marker] = probe()
                if cache[marker]:
                    item.add_marker(pytest.mark.skip(reason=cache[marker]))
