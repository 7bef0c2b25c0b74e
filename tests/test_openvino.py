"""The openvino engine backend: FP32 and INT8 bundles against ONNX Runtime, refusals, and a missing install."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from edgefs.export.quantize import quantize_bundle

from edgefs.errors import EdgefsError, MissingDependencyError
from edgefs.runtime.calibration import open_calibration_source
from edgefs.runtime.openvino_backend import openvino_available
from edgefs.runtime.select import backend_names, open_engine
from edgefs.runtime.selfcheck import cosines

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="openvino is not installed (pip install 'edgefs[openvino]')")


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def images(glyph_data: Path) -> np.ndarray:
    source = open_calibration_source(glyph_data / "val", 28, seed=5)
    return next(source.batches(24, 24))


@pytest.fixture(scope="module")
def int8_bundle(conv4_bundle: Path, glyph_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ov_int8") / "conv4-int8.edgefs"
    quantize_bundle(conv4_bundle, glyph_data / "test", out, calib_images=64, parity_images=32, log=quiet)
    return out


def test_openvino_is_a_registered_choice() -> None:
    assert "openvino" in backend_names()
    from edgefs.cli import build_parser

    bench = build_parser()._subparsers._group_actions[0].choices["bench"]  # type: ignore[union-attr]
    backend = next(a for a in bench._actions if a.dest == "backend")
    assert "openvino" in backend.choices


@needs_openvino
def test_openvino_fp32_matches_onnxruntime(conv4_bundle: Path, images: np.ndarray) -> None:
    ort = open_engine(conv4_bundle, "onnxruntime", device="cpu", threads=1, log=quiet)
    ov = open_engine(conv4_bundle, "openvino", threads=1, log=quiet)
    assert (ov.backend, ov.device, ov.precision) == ("openvino", "cpu", "fp32")
    a, b = ort.embed(images), ov.embed(images)
    # f32 inference precision is forced: bf16 (OpenVINO's default on bf16-capable CPUs) would miss this.
    assert cosines(a, b).min() >= 0.9999
    np.testing.assert_allclose(b, a, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.concatenate([ov.embed(images[i:i + 1]) for i in range(4)]), b[:4], atol=1e-5)


@needs_openvino
def test_openvino_runs_the_int8_bundle_like_onnxruntime(int8_bundle: Path, images: np.ndarray) -> None:
    ort = open_engine(int8_bundle, "onnxruntime", device="cpu", threads=1, log=quiet)
    ov = open_engine(int8_bundle, "openvino", threads=1, log=quiet)
    assert ov.precision == "int8" and "int8" in ov.describe()
    assert cosines(ort.embed(images), ov.embed(images)).min() >= 0.999


@needs_openvino
def test_openvino_refuses_what_it_cannot_do(conv4_bundle: Path) -> None:
    with pytest.raises(EdgefsError, match="cpu"):
        open_engine(conv4_bundle, "openvino", device="cuda", log=quiet)
    with pytest.raises(EdgefsError, match="fp16"):
        open_engine(conv4_bundle, "openvino", precision="fp16", log=quiet)
    with pytest.raises(EdgefsError, match="edgefs quantize"):
        open_engine(conv4_bundle, "openvino", precision="int8", log=quiet)
    engine = open_engine(conv4_bundle, "openvino", threads=1, log=quiet)
    with pytest.raises(EdgefsError, match=r"\(B, 28, 28, 3\)"):
        engine.embed(np.zeros((1, 32, 32, 3), np.uint8))


def test_openvino_missing_names_the_install(conv4_bundle: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    # A None entry in sys.modules makes 'import openvino' raise ImportError, as on a machine without it.
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgefs\[openvino\]'"):
        open_engine(conv4_bundle, "openvino", log=quiet)
    from edgefs.cli import main

    assert main(["bench", str(conv4_bundle), "--backend", "openvino", "--iterations", "1", "--warmup", "0"]) == 2
    assert "pip install 'edgefs[openvino]'" in capsys.readouterr().err


@needs_openvino
def test_auto_picks_openvino_for_int8_on_x86_and_says_why(conv4_bundle: Path, int8_bundle: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    from edgefs.runtime.bundle import read_bundle
    from edgefs.runtime.select import choose_backend

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    backend, device, reason = choose_backend(read_bundle(int8_bundle), device="cpu")
    assert (backend, device) == ("openvino", "cpu") and "INT8 bundle on an x86 CPU" in reason
    assert choose_backend(read_bundle(conv4_bundle), device="cpu")[0] == "onnxruntime"  # fp32 stays on ORT
    lines: list[str] = []
    engine = open_engine(int8_bundle, "auto", device="cpu", threads=1, log=lines.append)
    assert engine.backend == "openvino" and "INT8 bundle on an x86 CPU" in lines[0]
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")  # untested there: ONNX Runtime
    assert choose_backend(read_bundle(int8_bundle), device="cpu")[0] == "onnxruntime"


def test_auto_without_openvino_stays_on_onnxruntime(int8_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgefs.runtime.bundle import read_bundle
    from edgefs.runtime.select import choose_backend

    monkeypatch.setitem(sys.modules, "openvino", None)
    backend, _, _ = choose_backend(read_bundle(int8_bundle), device="cpu")
    assert backend == "onnxruntime"


@needs_openvino
def test_openvino_hint_and_streams_reach_the_compiled_model(conv4_bundle: Path, images: np.ndarray) -> None:
    engine = open_engine(conv4_bundle, "openvino", device="cpu", threads=2, log=quiet,  # a stream needs a thread
                         options={"hint": "THROUGHPUT", "streams": 2})
    assert engine.hint == "THROUGHPUT" and engine.streams == 2 and "2 streams" in engine.describe()
    assert int(engine.compiled.get_property("NUM_STREAMS")) == 2
    assert engine.embed(images[:3]).shape == (3, engine.embedding_dim)
    with pytest.raises(EdgefsError, match="streams must be at least 1"):
        open_engine(conv4_bundle, "openvino", device="cpu", log=quiet, options={"streams": 0})


def test_engine_options_and_the_callers_defaults(conv4_bundle: Path) -> None:
    """Asked options reach the backend; ``auto`` leaves out (and says) what its choice lacks; a named
    backend refuses it; the caller's defaults fill only what was not asked, and never raise."""
    logs: list[str] = []
    engine = open_engine(conv4_bundle, "auto", device="cpu", threads=2, log=logs.append,
                         options={"hint": "THROUGHPUT"}, defaults={"allow_spinning": False})
    assert engine.backend == "onnxruntime"  # an FP32 bundle on the CPU
    assert any("hint left out" in line for line in logs)
    entry = engine.session.get_session_options().get_session_config_entry  # type: ignore[attr-defined]
    assert entry("session.intra_op.allow_spinning") == "0" == entry("session.inter_op.allow_spinning")
    assert "no spinning" in engine.describe()
    asked = open_engine(conv4_bundle, "onnxruntime", device="cpu", threads=2, log=quiet,
                        options={"allow_spinning": True}, defaults={"allow_spinning": False})
    assert asked.session.get_session_options().get_session_config_entry(  # type: ignore[attr-defined]
        "session.intra_op.allow_spinning") == "1"
    with pytest.raises(EdgefsError, match="has no option hint"):
        open_engine(conv4_bundle, "onnxruntime", device="cpu", log=quiet, options={"hint": "LATENCY"})
    if openvino_available():
        ov = open_engine(conv4_bundle, "openvino", device="cpu", threads=1, log=quiet,
                         defaults={"allow_spinning": False})
        assert ov.backend == "openvino"
