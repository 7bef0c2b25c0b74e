"""ResNet-12: the few-shot residual backbone of TADAM, MetaOptNet and FEAT."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgefs.backbones import BACKBONES
from edgefs.backbones.base import Backbone, BackboneSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DropBlock(nn.Module):
    """DropBlock (Ghiasi et al., NeurIPS 2018): zero square blocks of a feature map.

    Active only in training; in eval mode (and so in every export) it is the identity.

    Args:
        drop_prob: fraction of activations to drop.
        block_size: side of the dropped squares, clipped to the map size.
    """

    def __init__(self, drop_prob: float, block_size: int) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob
        self.block_size = block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float ``(B, C, H, W)`` -> same shape and dtype."""
        if not self.training or self.drop_prob == 0.0:
            return x
        height, width = x.shape[-2:]
        size = min(self.block_size, height, width)
        # Seed rate chosen so that about drop_prob of the map ends up dropped.
        valid = max((height - size + 1) * (width - size + 1), 1)
        gamma = self.drop_prob / (size * size) * (height * width) / valid
        seeds = (torch.rand_like(x) < gamma).to(x.dtype)
        dropped = F.max_pool2d(seeds, size, stride=1, padding=size // 2)[..., :height, :width]
        keep = 1.0 - dropped
        return x * keep * (keep.numel() / keep.sum().clamp_min(1.0))


class ResidualBlock(nn.Module):
    """Three 3x3 conv-BN-LeakyReLU(0.1), a 1x1 conv-BN shortcut, then a 2x2 max-pool.

    float ``(B, in_channels, H, W)`` -> ``(B, out_channels, H // 2, W // 2)``.
    """

    def __init__(self, in_channels: int, out_channels: int, drop_prob: float = 0.0, block_size: int = 5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [
                nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
            ]
            if i < 2:
                layers.append(nn.LeakyReLU(0.1))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)
        self.drop = DropBlock(drop_prob, block_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.pool(self.act(self.body(x) + self.shortcut(x))))


@BACKBONES.register("resnet12")
class ResNet12(Backbone):
    """ResNet-12 as used by TADAM (Oreshkin et al., NeurIPS 2018), MetaOptNet
    (Lee et al., CVPR 2019) and FEAT (Ye et al., CVPR 2020).

    Four residual blocks of widths ``channels``, each halving H and W, then global
    average pooling: at 84 px (mini-ImageNet) the maps go 84 -> 42 -> 21 -> 10 -> 5,
    at 28 px (glyphs) 28 -> 14 -> 7 -> 3 -> 1; the embedding is ``channels[-1]``-d
    (640 by default). DropBlock (MetaOptNet's recipe: last two blocks, block size 5)
    is off by default and only ever active in training mode.

    Normalisation: ImageNet mean/std for RGB (as FEAT and MetaOptNet train on
    mini-ImageNet), 0.5/0.5 for grey.

    Args:
        input_size: square input side in pixels, >= 16.
        in_channels: 1 for grey glyphs, 3 for colour camera images.
        channels: widths of the four blocks, e.g. ``(64, 128, 256, 512)`` for the
            narrower variant.
        drop_block: DropBlock drop probability in blocks 3 and 4 (0 disables it).
    """

    def __init__(
        self,
        input_size: int = 84,
        in_channels: int = 3,
        channels: Sequence[int] = (64, 160, 320, 640),
        drop_block: float = 0.0,
    ) -> None:
        widths = [int(c) for c in channels]
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"resnet12 needs four positive channel widths, got {channels!r}")
        if input_size < 16:
            raise ValueError(f"resnet12 needs input_size >= 16 (four 2x2 pools), got {input_size}")
        spec = BackboneSpec(
            name="resnet12",
            input_size=input_size,
            in_channels=in_channels,
            mean=IMAGENET_MEAN if in_channels == 3 else (0.5,) * in_channels,
            std=IMAGENET_STD if in_channels == 3 else (0.5,) * in_channels,
            embedding_dim=widths[-1],
            # A list, not a tuple, so that the options survive a JSON/YAML round trip unchanged.
            options={
                "input_size": input_size,
                "in_channels": in_channels,
                "channels": widths,
                "drop_block": drop_block,
            },
        )
        super().__init__(spec)
        blocks = []
        previous = in_channels
        for i, width in enumerate(widths):
            blocks.append(ResidualBlock(previous, width, drop_prob=drop_block if i >= 2 else 0.0))
            previous = width
        self.encoder = nn.Sequential(*blocks)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu", a=0.1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float ``(B, in_channels, H, W)`` -> float32 ``(B, channels[-1])``."""
        return self.encoder(x).mean(dim=(2, 3))
