"""The contract every backbone follows.

A backbone takes what a camera gives after resize/crop -- ``uint8`` images,
``(B, H, W, C)``, RGB when ``C == 3`` -- and returns one embedding per image.
Channel conversion, scaling and normalisation happen inside ``forward`` so that
training, ONNX export and the device can never preprocess differently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone expects and returns; saved in checkpoints and manifests.

    Attributes:
        name: registry name, e.g. ``"conv4"``.
        input_size: side of the square input in pixels (H == W).
        in_channels: channels the network computes on: 1 (grey) or 3 (RGB).
        mean: per-channel mean subtracted after scaling pixels to [0, 1].
        std: per-channel standard deviation divided after subtracting ``mean``.
        embedding_dim: length of the returned embedding.
        options: the keyword arguments the backbone was built with.
    """

    name: str
    input_size: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    embedding_dim: int
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ImageInput(nn.Module):
    """uint8 ``(B, H, W, C)`` with C in {1, 3} -> normalised float ``(B, c, H, W)``.

    Grey networks given RGB use ITU-R BT.601 luma (what OpenCV uses); RGB networks
    given grey repeat the channel. Everything is elementwise or a 1x1 matmul, so it
    exports to ONNX and folds into a TensorRT engine.
    """

    def __init__(self, in_channels: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError("mean and std need one value per input channel")
        self.in_channels = in_channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("luma", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Cast before anything else touches the uint8 tensor: TensorRT (and TensorRT-RTX) take uint8
        # only as a network I/O type whose first consumer is a Cast; a Transpose of uint8 is refused
        # by their ONNX parsers. Values 0..255 are exact in float32, so the order changes nothing.
        x = images.to(torch.float32).permute(0, 3, 1, 2) * (1.0 / 255.0)
        channels = x.shape[1]
        if self.in_channels == 1 and channels == 3:
            x = (x * self.luma).sum(dim=1, keepdim=True)
        elif self.in_channels == 3 and channels == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) * self.inv_std


class Backbone(nn.Module):
    """Base class: ``forward(uint8 (B, H, W, C)) -> float32 (B, embedding_dim)``."""

    spec: BackboneSpec

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        self.spec = spec
        self.input = ImageInput(spec.in_channels, spec.mean, spec.std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Args:
            images: uint8 ``(B, H, W, C)``, C in {1, 3}, H == W == ``spec.input_size``.

        Returns:
            float32 ``(B, spec.embedding_dim)``.
        """
        return self.features(self.input(images))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float ``(B, in_channels, H, W)`` -> ``(B, embedding_dim)``."""
        raise NotImplementedError
