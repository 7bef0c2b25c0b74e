"""TensorRT engines built from a small conv4 bundle: parity with ONNX Runtime, header key, reload,
key mismatch, calibration cache and GPU-resident output -- for each installed TensorRT flavour.

Marked ``trt`` and ``gpu``: skipped wherever no TensorRT flavour is installed or there is no CUDA GPU
(see the root conftest.py); each flavour's case is skipped where its module is missing, and the
TensorRT-RTX case where the GPU is not among the compute capabilities its builder targets (e.g. an
H100/H200, sm 9.0). **These tests have never run**: the machines this code was written and checked
on have no GPU (shared/DEVICE.md). TensorRT-RTX engines are built in CI (tests/test_trt_build.py),
but running any engine, and the whole TensorRT 10 builder, are unverified until these run on a
Jetson with JetPack 6 or an RTX-class GPU with ``edgefs[cuda,rtx]``.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.trt, pytest.mark.gpu]

cv2 = pytest.importorskip("cv2")


def quiet(_: str) -> None:
    pass


def write_stroke_classes(root: Path, classes: int = 8, per_class: int = 12, seed: int = 0) -> Path:
    """An ImageFolder of 28 px stroke 'characters' (one random polyline per class, jittered), as BGR PNGs."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        pts = rng.integers(4, 24, (4, 2))
        folder = root / f"char{c:02d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            image = np.full((28, 28, 3), 255, np.uint8)
            cv2.polylines(image, [(pts + rng.integers(-1, 2, pts.shape)).astype(np.int32)], False, (0, 0, 0), 2)
            cv2.imwrite(str(folder / f"{i}.png"), image)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_stroke_classes(tmp_path_factory.mktemp("trt_data") / "strokes")


@pytest.fixture(scope="module")
def bundle_path(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded, untrained conv4 ProtoNet bundle (tests/conftest.py's fixtures are not visible here)."""
    torch = pytest.importorskip("torch")
    from edgefs.export import export_bundle

    from edgefs.backbones import build_backbone
    from edgefs.methods import build_method
    from edgefs.train.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("trt_bundle")
    torch.manual_seed(0)
    save_checkpoint(root / "conv4.pt", build_method("protonet", build_backbone("conv4")),
                    {"config": {}, "episode": 0, "best_val": None})
    export_bundle(root / "conv4.pt", root / "conv4.edgefs", data=str(data), parity_images=16, log=quiet)
    return root / "conv4.edgefs"


@pytest.fixture(scope="module", params=["tensorrt", "rtx"])
def flavour(request: pytest.FixtureRequest) -> str:
    from edgefs.runtime.tensorrt_backend import gpu_identity
    from edgefs.runtime.trt_flavour import FLAVOURS

    chosen = FLAVOURS.get(request.param)
    if not chosen.available():
        pytest.skip(f"{chosen.description} is not installed ('import {chosen.module}' fails)")
    if chosen.builds_without_gpu:
        gpu, cc = gpu_identity(0)
        if cc not in chosen.all_targets(chosen.load()):
            pytest.skip(f"{gpu} (sm {cc}) is not a {chosen.description} target")
    return str(request.param)


@pytest.fixture(scope="module")
def engines(bundle_path: Path, data: Path, flavour: str) -> dict[str, Path]:
    """One engine per precision the flavour builds, built once (int8 calibrated on the ImageFolder).
    The bundle's engines folder is emptied first: each flavour's engines are looked up on their own."""
    from edgefs.export.tensorrt_build import build_engine

    from edgefs.runtime.trt_flavour import FLAVOURS

    shutil.rmtree(bundle_path / "engines", ignore_errors=True)
    return {p: build_engine(bundle_path, precision=p, calib=data, calib_images=48, max_batch=8, log=print, trt=flavour)
            for p in FLAVOURS.get(flavour).precisions}


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_parity_and_header(engines: dict[str, Path], bundle_path: Path, precision: str, flavour: str) -> None:
    from edgefs.runtime.bundle import read_bundle
    from edgefs.runtime.engine_file import EngineKey, read_engine_file
    from edgefs.runtime.tensorrt_backend import engine_key

    if precision not in engines:
        pytest.skip(f"{flavour} does not build {precision}")
    bundle = read_bundle(bundle_path)
    header, blob = read_engine_file(engines[precision], engine_key(bundle, precision, 8, flavour=flavour))
    assert blob and EngineKey.from_json(header["key"]).fingerprint == bundle.fingerprint
    assert header["verified"] is True and header["key"]["flavour"] == flavour
    parity = header["parity"]
    assert parity["run"] and parity["passed"] and parity["data"]["kind"] == "imagefolder"
    if precision == "int8":
        assert header["calibration"]["batches"] == 6 and header["calibration"]["images"] == 48
        assert parity["episodes"]["top1_agreement"] > 0.8
    else:
        assert parity["min_cosine"] >= {"fp32": 0.9999, "fp16": 0.999}[precision]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_reloaded_engine_agrees_with_onnxruntime(engines: dict[str, Path], bundle_path: Path, data: Path,
                                                 precision: str) -> None:
    from edgefs.runtime.calibration import open_calibration_source
    from edgefs.runtime.select import open_engine

    images = np.concatenate(list(open_calibration_source(data, 28, seed=5, warn=quiet).batches(20, 10)))
    reference = open_engine(bundle_path, backend="onnxruntime", device="cpu", log=quiet).embed(images)
    engine = open_engine(bundle_path, backend="tensorrt", device="cuda", precision=precision, log=quiet)
    assert engine.engine_path == engines[precision] and engine.max_batch == 8  # type: ignore[attr-defined]
    got = engine.embed(images)  # 20 images: split into 8 + 8 + 4
    cos = (reference * got).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(got, axis=1))
    assert got.shape == reference.shape and cos.min() >= {"fp32": 0.9999, "fp16": 0.999}[precision]


def test_auto_picks_tensorrt_when_an_engine_exists(engines: dict[str, Path], bundle_path: Path) -> None:
    from edgefs.runtime.select import open_engine

    assert open_engine(bundle_path, precision="fp16", log=quiet).backend == "tensorrt"


def test_embed_device_leaves_output_on_the_gpu(engines: dict[str, Path], bundle_path: Path, data: Path) -> None:
    from edgefs.runtime.calibration import open_calibration_source
    from edgefs.runtime.engine import DeviceArray
    from edgefs.runtime.select import open_engine

    images = next(iter(open_calibration_source(data, 28, warn=quiet).batches(4, 4)))
    engine = open_engine(bundle_path, backend="tensorrt", device="cuda", precision="fp32", log=quiet)
    host = engine.embed(images)
    out = engine.embed_device(images)
    assert isinstance(out, DeviceArray) and out.shape == (4, host.shape[1]) and out.stream != 0
    import pycuda.driver as cuda

    engine.ctx.context.push()  # type: ignore[attr-defined]
    try:
        engine._stream.synchronize()  # type: ignore[attr-defined]
        copy = np.empty(out.shape, out.dtype)
        cuda.memcpy_dtoh(copy, out.ptr)
    finally:
        cuda.Context.pop()
    np.testing.assert_allclose(copy, host, rtol=0, atol=0)
    with pytest.raises(Exception, match="at most 8"):
        engine.embed_device(np.zeros((9, 28, 28, 3), np.uint8))


def test_key_mismatch_and_copied_file(engines: dict[str, Path], bundle_path: Path, tmp_path: Path,
                                     flavour: str) -> None:
    from edgefs.runtime.bundle import read_bundle
    from edgefs.runtime.engine_file import EngineKeyMismatch, read_engine_file
    from edgefs.runtime.tensorrt_backend import TensorRTEngine, engine_key

    bundle = read_bundle(bundle_path)
    key = engine_key(bundle, "fp16", 8, flavour=flavour)
    if flavour == "tensorrt":
        with pytest.raises(EngineKeyMismatch, match=r"gpu_name is .* in the file but 'Another GPU' here.*build-engine"):
            read_engine_file(engines["fp16"], dataclasses.replace(key, gpu_name="Another GPU"))
    else:  # ahead of time: any GPU name, but only the targeted compute capabilities
        read_engine_file(engines["fp16"], dataclasses.replace(key, gpu_name="Another GPU"))
        with pytest.raises(EngineKeyMismatch, match=r"compute_capability is .* in the file but '9.0' here"):
            read_engine_file(engines["fp16"], dataclasses.replace(key, compute_capability="9.0"))
    # An fp16 engine renamed as the fp32 one is refused by its header, not trusted by its name.
    fp32_name = engines["fp32"].name
    other = tmp_path / "b.edgefs"
    shutil.copytree(bundle_path, other)
    shutil.copy(engines["fp16"], other / "engines" / fp32_name)
    with pytest.raises(EngineKeyMismatch, match="precision is 'fp16' in the file but 'fp32' here"):
        TensorRTEngine(read_bundle(other), precision="fp32", engine_path=other / "engines" / fp32_name)


def test_int8_rebuild_reuses_the_calibration_cache(engines: dict[str, Path], bundle_path: Path, flavour: str) -> None:
    from edgefs.export.tensorrt_build import build_engine

    from edgefs.runtime.engine_file import read_engine_header

    if "int8" not in engines:
        pytest.skip(f"{flavour} does not build int8")
    path = build_engine(bundle_path, precision="int8", calib=None, max_batch=8, log=quiet, trt=flavour)
    calibration = read_engine_header(path)["calibration"]
    assert calibration["cache_reused"] and calibration["batches"] == 0


def test_live_enrollment_with_shot_views_on_a_tensorrt_engine(engines: dict[str, Path], bundle_path: Path,
                                                              data: Path, tmp_path: Path) -> None:
    """A class enrolled live with 5 views per shot: the extra views go through the TensorRT engine on the
    camera loop's thread (its execution context has one user), the store keeps the single views."""
    import threading

    from edgefs.camera.loop import Pipeline, RunConfig
    from edgefs.service.classifier import Classifier
    from edgefs.service.options import EngineOptions

    store = tmp_path / "s.db"
    with Classifier.open(bundle_path, store, options=EngineOptions(backend="tensorrt", device="cuda", shot_views=5),
                         log=quiet) as clf:
        assert clf.engine is not None and clf.engine.backend == "tensorrt"
        threads: list[str] = []
        embed = clf.embed

        def recording(batch: np.ndarray) -> np.ndarray:
            threads.append(threading.current_thread().name)
            return embed(batch)

        clf.embed = recording  # type: ignore[method-assign]
        cfg = RunConfig(sources=[f"synthetic:{data}?frames=60&hold=60&classes=char01&live=0"], enroll="char01",
                        shots=3, enroll_interval_s=0.0)
        pipeline = Pipeline(clf, cfg, log=quiet)
        events = list(pipeline.events())
        if pipeline._enroll_thread is not None:
            pipeline._enroll_thread.join()
        assert clf.classes == ["char01"] and clf.store is not None
        singles = clf.store.singles("char01")
        assert singles is not None and singles.shape == clf.store.embeddings("char01").shape
    assert len(events) == 60 and set(threads) == {threading.current_thread().name}
