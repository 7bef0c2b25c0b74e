"""Engines on a CUDA GPU agree with ONNX Runtime on the CPU; device outputs stay on the GPU.

Skipped where no GPU exists (the ``gpu`` marker, see the root conftest.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

from edgefs.export import export_bundle  # noqa: E402

from edgefs.backbones import build_backbone  # noqa: E402
from edgefs.methods import build_method  # noqa: E402
from edgefs.runtime.engine import DeviceArray  # noqa: E402
from edgefs.runtime.onnxruntime_backend import CUDA_EP, available_providers  # noqa: E402
from edgefs.runtime.select import open_engine  # noqa: E402
from edgefs.train.checkpoint import save_checkpoint  # noqa: E402

MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999}


def quiet(_: str) -> None:
    pass


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def stroke_images(count: int, seed: int = 0) -> np.ndarray:
    """uint8 (count, 28, 28, 3) RGB: random polylines on white, like handwritten strokes."""
    rng = np.random.default_rng(seed)
    images = np.full((count, 28, 28, 3), 255, np.uint8)
    for image in images:
        cv2.polylines(image, [rng.integers(3, 25, (5, 2)).astype(np.int32)], False, (0, 0, 0), 2)
    return images


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded, untrained conv4 bundle exported with its parity check on stroke images."""
    root = tmp_path_factory.mktemp("cuda_bundle")
    for c, image in enumerate(stroke_images(24)):
        folder = root / "data" / f"class{c % 6}"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{c}.png"), image)
    torch.manual_seed(0)
    method = build_method("protonet", build_backbone("conv4"))
    save_checkpoint(root / "conv4.pt", method, {"config": {}, "episode": 0, "best_val": None})
    export_bundle(root / "conv4.pt", root / "conv4.edgefs", data=str(root / "data"), parity_images=16, log=quiet)
    return root / "conv4.edgefs"


class _CudaArray:
    """Exposes a DeviceArray through ``__cuda_array_interface__`` so torch can read it without a host copy."""

    def __init__(self, array: DeviceArray) -> None:
        self.__cuda_array_interface__: dict[str, Any] = {
            "shape": array.shape, "typestr": np.dtype(array.dtype).str, "data": (array.ptr, False),
            "version": 3, "strides": None, "stream": array.stream or None,
        }


def device_contents(array: DeviceArray) -> np.ndarray:
    return torch.as_tensor(_CudaArray(array), device="cuda").clone().cpu().numpy()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_cuda_agrees_with_onnxruntime_cpu(bundle: Path, precision: str) -> None:
    images = stroke_images(32, seed=1)
    reference = open_engine(bundle, backend="onnxruntime", device="cpu", log=quiet).embed(images)
    engine = open_engine(bundle, backend="torch", device="cuda", precision=precision, log=quiet)
    assert engine.device.startswith("cuda") and engine.precision == precision
    out = engine.embed(images)
    assert out.shape == reference.shape and out.dtype == np.float32
    assert cosines(out, reference).min() >= MIN_COSINE[precision]


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_embed_device_stays_on_the_gpu(bundle: Path, precision: str) -> None:
    images = stroke_images(8, seed=2)
    engine = open_engine(bundle, backend="torch", device="cuda", precision=precision, log=quiet)
    array = engine.embed_device(images)
    assert isinstance(array, DeviceArray)
    assert array.shape == (8, engine.embedding_dim) and array.dtype == "float32"
    assert array.owner.is_cuda and array.owner.data_ptr() == array.ptr  # no host round trip
    assert array.stream == torch.cuda.current_stream().cuda_stream
    torch.cuda.synchronize()
    np.testing.assert_allclose(device_contents(array), engine.embed(images), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_onnxruntime_cuda_embed_device(bundle: Path) -> None:
    if CUDA_EP not in available_providers():
        pytest.skip("this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    images = stroke_images(8, seed=3)
    engine = open_engine(bundle, backend="onnxruntime", device="cuda", log=quiet)
    reference = open_engine(bundle, backend="onnxruntime", device="cpu", log=quiet).embed(images)
    assert cosines(engine.embed(images), reference).min() >= MIN_COSINE["fp32"]
    array = engine.embed_device(images)
    np.testing.assert_allclose(device_contents(array), engine.embed(images), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_output_goes_to_the_cuda_head_without_a_host_copy(bundle: Path, precision: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The camera loop's GPU path: ``embed_device`` -> CUDA head ``classify`` on the same memory.

    Every host-to-device copy pycuda could make is made to fail while the head classifies the
    engine's device output, so the queries can only have reached the kernel in place; the labels
    and probabilities must match the NumPy head on the host embeddings of the same frames.
    """
    if importlib.util.find_spec("pycuda") is None:
        pytest.skip("pycuda is not installed (pip install 'edgefs[cuda]'; see ../shared/DEVICE.md)")
    from edgefs.kernels import launch

    from edgefs.heads import HEADS, HeadSpec
    from edgefs.heads.cuda import build_cuda_head

    engine = open_engine(bundle, backend="torch", device="cuda", precision=precision, log=quiet)
    spec = HeadSpec("prototype", {"distance": "cosine"})
    cpu = HEADS.get("prototype").from_spec(spec, engine.embedding_dim)
    gpu = build_cuda_head(spec, engine.embedding_dim)
    shots = stroke_images(30, seed=4)
    support = engine.embed(shots)
    for c in range(6):
        cpu.add_class(f"c{c}", support[c::6])
        gpu.add_class(f"c{c}", support[c::6])
    frames = stroke_images(16, seed=5)
    want = cpu.classify(engine.embed(frames), k=3)
    rt = launch.runtime()

    def no_host_copy(*_: Any, **__: Any) -> None:
        raise AssertionError("a host-to-device copy happened on the zero-copy path")

    for name in ("memcpy_htod", "memcpy_htod_async"):
        if hasattr(rt.cuda, name):
            monkeypatch.setattr(rt.cuda, name, no_host_copy)
    array = engine.embed_device(frames)
    got = gpu.classify(array, k=3)
    monkeypatch.undo()
    assert got.labels == want.labels
    assert np.abs(got.top_prob - want.top_prob).max() <= 1e-4
    assert np.abs(got.best_sim - want.best_sim).max() <= 1e-5
