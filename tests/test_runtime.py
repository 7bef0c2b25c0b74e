"""Engine backends on CPU: parity with the exported PyTorch model, refusals, auto choice, bench report."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from edgefs.export import TORCH_WEIGHTS_FILE
from edgefs.export.parity import parity_images

from edgefs.cli import main
from edgefs.errors import EdgefsError
from edgefs.runtime.bench import STAGES, run_bench
from edgefs.runtime.bundle import ONNX_FILE, BundleError, read_bundle
from edgefs.runtime.engine import ENGINES
from edgefs.runtime.onnxruntime_backend import CUDA_EP, OnnxRuntimeEngine, available_providers
from edgefs.runtime.preprocess import to_batch
from edgefs.runtime.select import backend_names, choose_backend, open_engine
from edgefs.train.checkpoint import load_checkpoint

CPU_BACKENDS = ("onnxruntime", "openvino", "torch")


def skip_if_missing(backend: str) -> None:
    """The openvino backend is an optional extra (installed by 'make install'); skip where it is absent."""
    if backend == "openvino" and importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed (pip install 'edgefs[openvino]')")


def quiet(_: str) -> None:
    pass


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def glyph_images(glyph_data: Path) -> np.ndarray:
    """uint8 (16, 28, 28, 3) RGB real glyphs from the test split."""
    return parity_images(glyph_data, "test", 28, 16, seed=1)


@pytest.fixture(scope="module")
def pytorch_embeddings(conv4_bundle: Path, glyph_images: np.ndarray) -> np.ndarray:
    """The exported checkpoint's own PyTorch backbone on ``glyph_images``: float32 (16, 64)."""
    method, _ = load_checkpoint(conv4_bundle.parent / "conv4.pt")
    with torch.inference_mode():
        return method.backbone.eval()(torch.from_numpy(glyph_images)).numpy()


@pytest.fixture
def bundle_copy(conv4_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(conv4_bundle, tmp_path / conv4_bundle.name))


@pytest.mark.parametrize("backend", ENGINES.names())
def test_every_backend_embeds_like_the_exported_pytorch_model(
    backend: str, conv4_bundle: Path, glyph_images: np.ndarray, pytorch_embeddings: np.ndarray
) -> None:
    if backend not in CPU_BACKENDS:
        pytest.skip(f"{backend} needs a GPU engine; see device_tests/")
    skip_if_missing(backend)
    engine = open_engine(conv4_bundle, backend=backend, device="cpu", log=quiet)
    assert (engine.backend, engine.device, engine.precision) == (backend, "cpu", "fp32")
    out = engine.embed(glyph_images)
    assert out.shape == (16, 64) and out.dtype == np.float32
    assert cosines(out, pytorch_embeddings).min() >= 0.9999
    np.testing.assert_allclose(out, pytorch_embeddings, atol=1e-4, rtol=1e-4)


def test_torch_backend_agrees_with_onnxruntime(conv4_bundle: Path, glyph_images: np.ndarray) -> None:
    ort_out = open_engine(conv4_bundle, backend="onnxruntime", log=quiet).embed(glyph_images)
    torch_out = open_engine(conv4_bundle, backend="torch", device="cpu", log=quiet).embed(glyph_images)
    assert cosines(ort_out, torch_out).min() >= 0.9999


def test_batch_size_does_not_change_embeddings(conv4_bundle: Path, glyph_images: np.ndarray) -> None:
    engine = open_engine(conv4_bundle, backend="onnxruntime", log=quiet)
    whole = engine.embed(glyph_images)
    one_by_one = np.concatenate([engine.embed(glyph_images[i:i + 1]) for i in range(len(glyph_images))])
    np.testing.assert_allclose(whole, one_by_one, atol=1e-5)


def test_camera_frames_through_preprocess_give_the_same_embeddings(
    conv4_bundle: Path, glyph_images: np.ndarray
) -> None:
    engine = open_engine(conv4_bundle, backend="onnxruntime", log=quiet)
    # 3x nearest-neighbour upscaled BGR frames: INTER_AREA brings back the original pixels exactly.
    frames = [cv2.cvtColor(cv2.resize(g, (84, 84), interpolation=cv2.INTER_NEAREST), cv2.COLOR_RGB2BGR)
              for g in glyph_images]
    batch = to_batch(frames, engine.bundle.manifest)
    np.testing.assert_array_equal(batch, glyph_images)
    np.testing.assert_array_equal(engine.embed(batch), engine.embed(glyph_images))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_wrong_inputs_are_refused_with_the_expected_shape(backend: str, conv4_bundle: Path) -> None:
    skip_if_missing(backend)
    engine = open_engine(conv4_bundle, backend=backend, device="cpu", log=quiet)
    with pytest.raises(EdgefsError, match="uint8"):
        engine.embed(np.zeros((2, 28, 28, 3), np.float32))
    for shape in [(2, 32, 32, 3), (2, 28, 28), (2, 28, 28, 1), (28, 28, 3)]:
        with pytest.raises(EdgefsError, match=r"\(B, 28, 28, 3\)"):
            engine.embed(np.zeros(shape, np.uint8))
    with pytest.raises(EdgefsError, match="uint8"):
        engine.embed([[0]])  # type: ignore[arg-type]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_onnx_gives_an_error_with_advice(damage: str, bundle_copy: Path) -> None:
    onnx = bundle_copy / ONNX_FILE
    data = onnx.read_bytes()
    onnx.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not an onnx model" * 100)
    with pytest.raises(BundleError, match="fingerprint"):
        read_bundle(bundle_copy)
    with pytest.raises(EdgefsError, match="copy the bundle again"):
        OnnxRuntimeEngine(read_bundle(bundle_copy, verify=False))
    with pytest.raises(EdgefsError, match="re-export"):
        open_engine(bundle_copy, backend="onnxruntime", verify=False, log=quiet)


def test_auto_picks_onnxruntime_on_cpu_and_says_why(conv4_bundle: Path) -> None:
    if CUDA_EP in available_providers() or importlib.util.find_spec("tensorrt"):
        pytest.skip("this machine has a GPU stack; auto would rightly pick it")
    said: list[str] = []
    engine = open_engine(conv4_bundle, log=said.append)
    assert (engine.backend, engine.device) == ("onnxruntime", "cpu")
    assert engine.providers == ["CPUExecutionProvider"]  # type: ignore[attr-defined]
    assert len(said) == 1
    assert "onnxruntime" in said[0] and "cpu" in said[0] and "no CUDA provider" in said[0]
    assert "TensorRT" in said[0]  # why not tensorrt


def test_threads_option(conv4_bundle: Path) -> None:
    engine = open_engine(conv4_bundle, backend="onnxruntime", threads=1, log=quiet)
    assert engine.threads == 1  # type: ignore[attr-defined]
    assert engine.session.get_session_options().intra_op_num_threads == 1  # type: ignore[attr-defined]
    calm = OnnxRuntimeEngine(read_bundle(conv4_bundle), allow_spinning=False)
    assert calm.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_unknown_backend_lists_the_known_ones(conv4_bundle: Path) -> None:
    with pytest.raises(EdgefsError, match=r"known: .*onnxruntime.*openvino.*torch"):
        open_engine(conv4_bundle, backend="tvm", log=quiet)


def test_tensorrt_without_tensorrt_says_what_is_missing(conv4_bundle: Path) -> None:
    if importlib.util.find_spec("tensorrt"):
        pytest.skip("TensorRT is installed here")
    with pytest.raises(EdgefsError):
        open_engine(conv4_bundle, backend="tensorrt", log=quiet)


def test_requests_a_backend_cannot_honour_are_refused(conv4_bundle: Path) -> None:
    with pytest.raises(EdgefsError, match="fp16"):
        open_engine(conv4_bundle, backend="onnxruntime", device="cpu", precision="fp16", log=quiet)
    with pytest.raises(EdgefsError, match="fp16"):
        open_engine(conv4_bundle, backend="torch", device="cpu", precision="fp16", log=quiet)
    with pytest.raises(EdgefsError, match="device"):
        open_engine(conv4_bundle, backend="onnxruntime", device="tpu", log=quiet)
    if CUDA_EP not in available_providers():
        with pytest.raises(EdgefsError, match="onnxruntime-gpu"):
            open_engine(conv4_bundle, backend="onnxruntime", device="cuda", log=quiet)
    engine = open_engine(conv4_bundle, backend="onnxruntime", device="cpu", log=quiet)
    with pytest.raises(EdgefsError, match="embed\\(\\)"):
        engine.embed_device(np.zeros((1, 28, 28, 3), np.uint8))


def test_torch_backend_needs_the_bundles_weights(bundle_copy: Path) -> None:
    (bundle_copy / TORCH_WEIGHTS_FILE).unlink()
    with pytest.raises(BundleError, match="onnxruntime backend"):
        open_engine(bundle_copy, backend="torch", log=quiet)


def test_device_modules_do_not_import_torch_or_onnxruntime() -> None:
    code = (
        "import sys\n"
        "import edgefs.runtime, edgefs.runtime.bundle, edgefs.runtime.engine, edgefs.runtime.preprocess\n"
        "import edgefs.runtime.onnxruntime_backend, edgefs.runtime.torch_backend, edgefs.runtime.select\n"
        "import edgefs.runtime.openvino_backend, edgefs.runtime.quantized, edgefs.service.reembed\n"
        "import edgefs.runtime.bench, edgefs.cli.bench\n"
        "from edgefs.runtime.engine import ENGINES\n"
        "assert {'onnxruntime', 'openvino', 'torch'} <= set(ENGINES.names()), ENGINES.names()\n"
        "heavy = sorted(m for m in ('torch', 'onnxruntime', 'openvino', 'tensorrt', 'edgefs.backbones')\n"
        "               if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def check_report(report: dict, batches: list[int]) -> None:
    assert {"created", "bundle", "machine", "config", "head", "results"} <= set(report)
    machine = report["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and machine["backend"] == "onnxruntime"
    assert machine["providers"] == ["CPUExecutionProvider"] or CUDA_EP in available_providers()
    assert {"edgefs", "numpy", "onnxruntime"} <= set(machine["versions"])
    assert [row["batch"] for row in report["results"]] == batches
    for row in report["results"]:
        assert set(row["stages"]) == set(STAGES)
        for stats in row["stages"].values():
            assert all(v > 0 for v in stats.values())
            assert stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= stats["max_ms"]


def test_bench_report_structure(conv4_bundle: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    out = tmp_path / "bench" / "conv4.json"
    report = run_bench(conv4_bundle, backend="onnxruntime", batches=(1, 3), iterations=5, warmup=1, classes=7,
                       json_out=out, log=lines.append)
    check_report(report, [1, 3])
    assert report["head"] == {"rule": "prototype", "distance": "euclidean", "classes": 7}
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    table = "\n".join(lines)
    assert "p99 ms" in table and "images/s" in table and table.count("embed") == 2


def test_bench_cli(conv4_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.json"
    assert main(["bench", str(conv4_bundle), "--backend", "onnxruntime", "--batch", "2", "--iterations", "3",
                 "--warmup", "0", "--threads", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    check_report(report, [2])
    assert report["machine"]["threads"] == 1
    assert "preprocess" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["bench", str(conv4_bundle), "--batch", "0,x"])
    assert main(["bench", str(tmp_path / "missing.edgefs")]) == 2


def test_choose_backend_on_cpu_request(conv4_bundle: Path) -> None:
    backend, device, reason = choose_backend(read_bundle(conv4_bundle), device="cpu")
    assert (backend, device) == ("onnxruntime", "cpu")
    assert "cpu" in reason


def test_cli_backend_choices_come_from_the_registry() -> None:
    names = backend_names()
    assert names[0] == "auto" and {"onnxruntime", "torch", "tensorrt"} <= set(names)
    assert set(ENGINES.names()) <= set(names)
