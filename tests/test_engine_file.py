"""Engine cache keys and the engine file header: naming, atomic write, every refusal.

No TensorRT is involved: the "engine" is opaque bytes here, which is all this layer sees.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from edgefs.errors import EdgefsError
from edgefs.runtime.engine_file import (
    HEADER_FORMAT,
    MAGIC,
    EngineFileError,
    EngineKey,
    EngineKeyMismatch,
    candidate_engine_files,
    engine_file_path,
    gpu_slug,
    read_engine_file,
    read_engine_header,
    write_engine_file,
)

ENGINE = bytes(range(256)) * 40  # stands in for a serialized engine


@pytest.fixture
def key() -> EngineKey:
    return EngineKey("ab" * 32, "10.3.0", "Orin (nvgpu)", "8.7", "fp16", 8)


@pytest.fixture
def written(tmp_path: Path, key: EngineKey) -> Path:
    path = engine_file_path(tmp_path / "model.edgefs", key)
    write_engine_file(path, key, ENGINE, {"parity": {"min_cosine": 0.9995}, "calibration": None})
    return path


def test_file_name_carries_every_key_field(tmp_path: Path, key: EngineKey) -> None:
    path = engine_file_path(tmp_path / "b.edgefs", key)
    assert path == tmp_path / "b.edgefs" / "engines" / "abababababab_trt10.3.0_orin-nvgpu_sm87_fp16_b8.engine"
    assert gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_key_refuses_bad_fields() -> None:
    with pytest.raises(EdgefsError, match="precision"):
        EngineKey("ab" * 32, "10.3.0", "Orin", "8.7", "bf16", 8)
    with pytest.raises(EdgefsError, match="max_batch"):
        EngineKey("ab" * 32, "10.3.0", "Orin", "8.7", "fp16", 0)
    with pytest.raises(EdgefsError, match="compute capability"):
        EngineKey("ab" * 32, "10.3.0", "Orin", "sm87", "fp16", 8)


def test_round_trip(written: Path, key: EngineKey) -> None:
    header, engine = read_engine_file(written, key)
    assert engine == ENGINE
    assert EngineKey.from_json(header["key"]) == key
    assert header["engine_size"] == len(ENGINE) and header["header_format"] == HEADER_FORMAT
    assert header["parity"] == {"min_cosine": 0.9995} and "built" in header and "edgefs_version" in header
    assert read_engine_header(written) == header
    assert written.read_bytes().startswith(MAGIC)


def test_atomic_write_leaves_no_temporary_and_replaces(written: Path, key: EngineKey) -> None:
    write_engine_file(written, key, ENGINE[:100])
    assert read_engine_file(written, key)[1] == ENGINE[:100]
    assert [p.name for p in written.parent.iterdir()] == [written.name]


def test_reserved_header_fields_are_refused(tmp_path: Path, key: EngineKey) -> None:
    with pytest.raises(ValueError, match="reserved"):
        write_engine_file(tmp_path / "x.engine", key, ENGINE, {"key": "mine"})
    with pytest.raises(EngineFileError, match="empty"):
        write_engine_file(tmp_path / "x.engine", key, b"")


@pytest.mark.parametrize("cut", [0, 5, 14, 40])
def test_truncated_header(written: Path, key: EngineKey, cut: int) -> None:
    written.write_bytes(written.read_bytes()[:cut])
    with pytest.raises(EngineFileError, match=r"truncated|unreadable"):
        read_engine_file(written, key)


def test_truncated_engine(written: Path, key: EngineKey) -> None:
    written.write_bytes(written.read_bytes()[:-10])
    with pytest.raises(EngineFileError, match=r"truncated or corrupt.*10240-byte engine but 10230 bytes"):
        read_engine_file(written, key)


def test_corrupt_engine_bytes(written: Path, key: EngineKey) -> None:
    data = bytearray(written.read_bytes())
    data[-1] ^= 0xFF
    written.write_bytes(bytes(data))
    with pytest.raises(EngineFileError, match="sha256"):
        read_engine_file(written, key)


def test_bad_magic_names_the_problem(written: Path, key: EngineKey) -> None:
    written.write_bytes(b"\x00" * 9 + written.read_bytes()[9:])
    with pytest.raises(EngineFileError, match="not an edgefs engine file"):
        read_engine_file(written, key)


def test_unreadable_json(written: Path, key: EngineKey) -> None:
    blob = b"{not json"
    written.write_bytes(struct.pack("<9sHI", MAGIC, HEADER_FORMAT, len(blob)) + blob + ENGINE)
    with pytest.raises(EngineFileError, match="unreadable header"):
        read_engine_file(written, key)


def test_newer_header_format(written: Path, key: EngineKey) -> None:
    data = written.read_bytes()
    written.write_bytes(struct.pack("<9sH", MAGIC, HEADER_FORMAT + 1) + data[11:])
    with pytest.raises(EngineFileError, match="newer than this edgefs"):
        read_engine_file(written, key)


def test_missing_file(tmp_path: Path, key: EngineKey) -> None:
    with pytest.raises(EngineFileError, match=r"does not exist.*build-engine"):
        read_engine_file(tmp_path / "nope.engine", key)


@pytest.mark.parametrize(
    ("field", "value"),
    [("fingerprint", "cd" * 32), ("gpu_name", "NVIDIA H100"), ("compute_capability", "9.0"),
     ("trt_version", "10.7.0"), ("precision", "int8"), ("max_batch", 16)],
)
def test_key_mismatch_names_the_field_and_the_rebuild(written: Path, key: EngineKey, field: str, value: object) -> None:
    expected = dataclasses.replace(key, **{field: value})
    with pytest.raises(EngineKeyMismatch) as caught:
        read_engine_file(written, expected)
    message = str(caught.value)
    assert [d[0] for d in caught.value.differences] == [field]
    assert f"{field} is {getattr(key, field)!r} in the file but {value!r} here" in message
    bundle = written.parent.parent
    assert f"edgefs build-engine {bundle} --precision {expected.precision}" in message


def test_key_check_can_be_skipped(written: Path, key: EngineKey) -> None:
    header, engine = read_engine_file(written, None)
    assert engine == ENGINE and header["key"]["gpu_name"] == key.gpu_name


def test_header_is_plain_json_after_the_prefix(written: Path) -> None:
    data = written.read_bytes()
    _, version, length = struct.unpack("<9sHI", data[:15])
    assert version == HEADER_FORMAT
    assert json.loads(data[15:15 + length])["engine_size"] == len(ENGINE)


def test_candidates_ignore_batch_and_sort_largest_first(tmp_path: Path, key: EngineKey) -> None:
    bundle = tmp_path / "b.edgefs"
    for batch in (1, 16, 8):
        k = dataclasses.replace(key, max_batch=batch)
        write_engine_file(engine_file_path(bundle, k), k, ENGINE)
    other = dataclasses.replace(key, precision="int8")
    write_engine_file(engine_file_path(bundle, other), other, ENGINE)
    names = [p.name.rsplit("_", 1)[1] for p in candidate_engine_files(bundle, key)]
    assert names == ["b16.engine", "b8.engine", "b1.engine"]
    assert candidate_engine_files(tmp_path / "empty", key) == []


# -- the TensorRT-free parts of the backend and builder ------------------------------------------

def test_device_side_modules_import_without_torch_or_tensorrt() -> None:
    """The engine file, calibration and backend modules import on a device with neither PyTorch nor
    TensorRT (both are blocked in a fresh interpreter); the backend still registers."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['tensorrt'] = None; sys.modules['pycuda'] = None\n"
        "sys.modules['tensorrt_rtx_bindings'] = None; sys.modules['tensorrt_rtx_libs'] = None\n"
        "import edgefs.runtime.engine_file, edgefs.runtime.calibration, edgefs.runtime.tensorrt_backend\n"
        "import edgefs.runtime.trt_flavour, edgefs.export.tensorrt_build\n"
        "from edgefs.runtime.engine import ENGINES; assert 'tensorrt' in ENGINES\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_builder_source_imports_no_torch() -> None:
    import ast

    import edgefs.export.tensorrt_build as builder

    tree = ast.parse(Path(builder.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {m for m in imported if m.split(".")[0] in ("torch", "tensorrt", "pycuda")}


def test_missing_tensorrt_is_an_actionable_error(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    from edgefs.export.tensorrt_build import EngineBuildError, build_engine

    from edgefs.errors import MissingDependencyError
    from edgefs.runtime.tensorrt_backend import device_index

    with pytest.raises(EngineBuildError, match="unknown precision"):
        build_engine(tmp_path, precision="bf16")
    with pytest.raises(MissingDependencyError, match="JetPack"):
        build_engine(_tiny_bundle(tmp_path), precision="fp16", trt="tensorrt")
    assert device_index(None) == 0 and device_index("cuda:1") == 1
    with pytest.raises(EdgefsError, match="CUDA GPU"):
        device_index("cpu")


def _tiny_bundle(tmp_path: Path) -> Path:
    """A bundle folder that read_bundle accepts (the graph is never run: TensorRT is missing first)."""
    from edgefs.heads import HeadSpec
    from edgefs.runtime.bundle import ONNX_FILE, Manifest, sha256_file, write_manifest

    folder = tmp_path / "tiny.edgefs"
    folder.mkdir()
    (folder / ONNX_FILE).write_bytes(b"not really onnx")
    HeadSpec("prototype", {}, {}).save(folder / "head")
    write_manifest(folder, Manifest({}, {"height": 8, "width": 8}, {"dim": 4}, {}, sha256_file(folder / ONNX_FILE)))
    return folder


def test_precision_support_by_compute_capability() -> None:
    from edgefs.export.tensorrt_build import supports

    assert supports("fp16", "8.7") and supports("int8", "8.7")  # Orin
    assert supports("fp16", "6.2") and not supports("int8", "6.2")  # TX2
    assert not supports("fp16", "6.1") and supports("int8", "6.1")  # Pascal desktop
    assert supports("fp32", "5.0") and not supports("fp16", "5.0")


def test_episode_agreement_and_cosines() -> None:
    from edgefs.export.parity import episode_agreement, synthetic_images

    from edgefs.runtime.selfcheck import cosines

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 5)
    centres = rng.normal(size=(6, 16)) * 3
    emb = centres[labels] + rng.normal(size=(30, 16)) * 0.3
    same = episode_agreement(emb, emb, labels, episodes=20)
    assert same is not None and same["top1_agreement"] == 1.0 and same["accuracy_reference"] > 0.9
    noisy = episode_agreement(emb, emb + rng.normal(size=emb.shape) * 5, labels, episodes=20)
    assert noisy is not None and noisy["top1_agreement"] < 0.9
    assert episode_agreement(emb, emb, np.zeros(30, np.int64)) is None
    assert np.allclose(cosines(emb, emb * 2), 1.0) and cosines(np.zeros((1, 3)), np.zeros((1, 3)))[0] == 1.0
    images = synthetic_images(4, (28, 28), seed=1)
    assert images.shape == (4, 28, 28, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, synthetic_images(4, (28, 28), seed=1))


# -- TensorRT flavours and ahead-of-time keys ----------------------------------------------------

def rtx_key(**changes: object) -> EngineKey:
    fields = {"fingerprint": "ab" * 32, "trt_version": "1.7.1.116", "gpu_name": "any",
              "compute_capability": "8.0+8.6+8.9", "precision": "fp16", "max_batch": 8, "flavour": "rtx"}
    return EngineKey(**{**fields, **changes})  # type: ignore[arg-type]


def test_ahead_of_time_key_names_its_flavour_and_targets(tmp_path: Path) -> None:
    key = rtx_key()
    assert key.targets() == ["8.0", "8.6", "8.9"]
    assert engine_file_path(tmp_path, key).name == "abababababab_rtx1.7.1.116_any_sm80-86-89_fp16_b8.engine"
    with pytest.raises(EdgefsError, match="compute capability"):
        EngineKey("ab" * 32, "10.3.0", "Orin", "8.6+8.7", "fp16", 8)  # a list only for gpu 'any'


def test_ahead_of_time_engine_fits_every_gpu_among_its_targets(tmp_path: Path) -> None:
    key = rtx_key()
    path = engine_file_path(tmp_path / "b.edgefs", key)
    write_engine_file(path, key, ENGINE, {"verified": False})
    rtx_4090 = rtx_key(gpu_name="NVIDIA GeForce RTX 4090", compute_capability="8.9", max_batch=8)
    header, engine = read_engine_file(path, rtx_4090)
    assert engine == ENGINE and header["key"]["flavour"] == "rtx" and header["verified"] is False
    h200 = dataclasses.replace(rtx_4090, gpu_name="NVIDIA H200", compute_capability="9.0")
    with pytest.raises(EngineKeyMismatch, match=r"capability is '8.0\+8.6\+8.9' in the file but '9.0'.*--trt rtx"):
        read_engine_file(path, h200)
    jetson = dataclasses.replace(rtx_4090, flavour="tensorrt", trt_version="10.3.0")
    with pytest.raises(EngineKeyMismatch) as caught:
        read_engine_file(path, jetson)
    assert {d[0] for d in caught.value.differences} == {"flavour", "trt_version"}


def test_headers_written_before_flavours_read_as_tensorrt(written: Path, key: EngineKey) -> None:
    data = written.read_bytes()
    _, version, length = struct.unpack("<9sHI", data[:15])
    header = json.loads(data[15:15 + length])
    del header["key"]["flavour"]
    blob = json.dumps(header).encode()
    written.write_bytes(struct.pack("<9sHI", MAGIC, version, len(blob)) + blob + data[15 + length:])
    assert read_engine_file(written, key)[0]["key"] == {k: v for k, v in key.to_json().items() if k != "flavour"}
    assert key.flavour == "tensorrt"


def test_flavour_registry_and_auto() -> None:
    import importlib.util

    from edgefs.errors import MissingDependencyError
    from edgefs.runtime.trt_flavour import FLAVOURS, flavour_names, resolve_flavour

    assert flavour_names() == ["auto", "rtx", "tensorrt"]
    assert FLAVOURS.get("rtx").module == "tensorrt_rtx_bindings" and FLAVOURS.get("rtx").builds_without_gpu
    assert "int8" not in FLAVOURS.get("rtx").precisions and "int8" in FLAVOURS.get("tensorrt").precisions
    with pytest.raises(EdgefsError, match="no INT8 calibrator"):
        FLAVOURS.get("rtx").check_precision("int8")
    has = {name: importlib.util.find_spec(FLAVOURS.get(name).module) is not None for name in ("tensorrt", "rtx")}
    if has["tensorrt"]:
        assert resolve_flavour().name == "tensorrt"
    elif has["rtx"]:
        assert resolve_flavour().name == "rtx"
    else:
        with pytest.raises(MissingDependencyError, match=r"JetPack.*edgefs\[rtx\]"):
            resolve_flavour()
