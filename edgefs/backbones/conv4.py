"""Conv-4: four 64-filter conv blocks (Vinyals et al. 2016; Snell et al. 2017; Finn et al. 2017)."""

from __future__ import annotations

import torch
from torch import nn

from edgefs.backbones import BACKBONES
from edgefs.backbones.base import Backbone, BackboneSpec


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv -> batch-norm -> ReLU -> 2x2 max-pool: halves H and W."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


@BACKBONES.register("conv4")
class Conv4(Backbone):
    """The 64-filter Conv-4 of Prototypical Networks (Snell et al., NeurIPS 2017).

    At 28 px (Omniglot) four 2x2 pools leave a 1x1x64 map: a 64-d embedding. At
    84 px (mini-ImageNet) they leave 5x5x64: 1,600-d, flattened as in the paper.

    Args:
        input_size: square input side in pixels.
        in_channels: 1 for grey glyphs, 3 for colour camera images.
        hidden: filters per block.
    """

    def __init__(self, input_size: int = 28, in_channels: int = 1, hidden: int = 64) -> None:
        side = input_size
        for _ in range(4):
            side //= 2
        if side < 1:
            raise ValueError(f"conv4 needs input_size >= 16, got {input_size}")
        spec = BackboneSpec(
            name="conv4",
            input_size=input_size,
            in_channels=in_channels,
            mean=(0.5,) * in_channels,
            std=(0.5,) * in_channels,
            embedding_dim=hidden * side * side,
            options={"input_size": input_size, "in_channels": in_channels, "hidden": hidden},
        )
        super().__init__(spec)
        self.encoder = nn.Sequential(
            conv_block(in_channels, hidden),
            conv_block(hidden, hidden),
            conv_block(hidden, hidden),
            conv_block(hidden, hidden),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).flatten(1)
