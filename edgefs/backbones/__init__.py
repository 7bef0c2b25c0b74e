"""Backbone registry (PyTorch, workstation side).

``build_backbone("conv4", input_size=28)`` returns a :class:`Backbone`; its
``spec`` says input size, channels, normalisation and embedding size. A backbone is
a module of this package with ``@BACKBONES.register(name)`` on its factory;
:data:`BACKBONES` imports the modules on its first lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgefs.backbones.base import Backbone, BackboneSpec, ImageInput
from edgefs.registry import Registry

BACKBONES: Registry[Callable[..., Backbone]] = Registry("backbone", package="edgefs.backbones")


def build_backbone(name: str, **options: Any) -> Backbone:
    """Build a registered backbone; ``options`` are its keyword arguments."""
    return BACKBONES.get(name)(**options)


__all__ = ["BACKBONES", "Backbone", "BackboneSpec", "ImageInput", "build_backbone"]
