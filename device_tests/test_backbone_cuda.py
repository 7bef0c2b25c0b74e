"""Backbones on a CUDA GPU agree with the CPU (skipped where no GPU exists)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from edgefs.backbones import BACKBONES, build_backbone  # noqa: E402


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["conv4", "resnet12"])
def test_backbone_cuda_matches_cpu(name: str) -> None:
    if name not in BACKBONES:
        pytest.skip(f"{name} is not registered")
    torch.manual_seed(0)
    model = build_backbone(name, input_size=28, in_channels=1).eval()
    images = torch.randint(0, 256, (8, 28, 28, 1), dtype=torch.uint8)
    with torch.inference_mode():
        cpu = model(images)
        gpu = model.cuda()(images.cuda()).cpu()
    cos = torch.nn.functional.cosine_similarity(cpu, gpu, dim=1)
    # TF32 convolutions on Ampere+ differ from FP32 CPU in the 4th digit.
    assert float(cos.min()) > 0.999
