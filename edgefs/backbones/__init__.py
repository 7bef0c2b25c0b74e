"""Backbone registry (PyTorch, workstation side).

``build_backbone("conv4", input_size=28)`` returns a :class:`Backbone`; its
``spec`` says input size, channels, normalisation and embedding size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgefs.backbones.base import Backbone, BackboneSpec, ImageInput
from edgefs.registry import Registry

BACKBONES: Registry[Callable[..., Backbone]] = Registry("backbone")


def build_backbone(name: str, **options: Any) -> Backbone:
    """Build a registered backbone; ``options`` are its keyword arguments."""
    return BACKBONES.get(name)(**options)


# Importing the modules registers them.
from edgefs.backbones import conv4 as _conv4  # noqa: E402,F401
from edgefs.backbones import efficientnet_lite as _efficientnet_lite  # noqa: E402,F401
from edgefs.backbones import resnet12 as _resnet12  # noqa: E402,F401

__all__ = ["BACKBONES", "Backbone", "BackboneSpec", "ImageInput", "build_backbone"]
