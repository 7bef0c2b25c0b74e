"""Bundles check themselves where they run: reference images, a first-open check cached per machine,
refusal (or the FP32 fallback) for an engine that computes something else, and INT8 CPU classes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from bundle_edits import copy_bundle, edit_manifest
from edgefs.export.int8_graph import FORMAT_LADDER
from edgefs.export.quantize import QuantizeError, formats_for, quantize_bundle

import edgefs.cpu
from edgefs.cpu import CpuInfo, claimed_classes
from edgefs.errors import EdgefsError
from edgefs.runtime.bundle import ONNX_FILE, read_bundle, sha256_file
from edgefs.runtime.quantized import FP32_FALLBACK_FILE, int8_classes, quantization_info
from edgefs.runtime.select import open_engine
from edgefs.runtime.selfcheck import SELFCHECK_FILE, SelfCheckError, cache_root, check_engine, load_reference

AVX2_ONLY = CpuInfo("x86_64", "an AVX2 CPU", 2, frozenset({"SSE41", "AVX2", "FMA3"}))
VNNI = CpuInfo("x86_64", "a VNNI CPU", 2, frozenset({"SSE41", "AVX2", "AVX512F", "AVX512VNNI"}))


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGEFS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def int8_bundle(conv4_bundle: Path, glyph_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("selfcheck-int8") / "conv4-int8.edgefs"
    quantize_bundle(conv4_bundle, glyph_data / "test", out, calib_images=64, parity_images=48, log=lambda _: None)
    return out




def perturb_int8_graph(folder: Path) -> None:
    """Triple one weight scale of the INT8 graph (what a CPU that computes other sums would do to its output)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(folder / ONNX_FILE))
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and inits[node.input[0]].data_type in (
                onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
            scale = inits[node.input[1]]
            scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 3.0, scale.name))
            break
    onnx.save(model, str(folder / ONNX_FILE))
    fingerprint = sha256_file(folder / ONNX_FILE)
    edit_manifest(folder, lambda doc: doc.__setitem__("fingerprint", fingerprint))


def test_export_writes_reference_images_and_fp32_embeddings(conv4_bundle: Path) -> None:
    bundle = read_bundle(conv4_bundle)
    images, embeddings = load_reference(bundle)  # type: ignore[misc]
    assert images.dtype == np.uint8 and images.shape[1:] == (28, 28, 3) and 1 <= len(images) <= 8
    assert embeddings.shape == (len(images), bundle.manifest.embedding_dim)
    assert len({im.tobytes() for im in images}) == len(images)  # real, distinct parity images


def test_a_good_bundle_is_verified_once_then_cached(conv4_bundle: Path, own_cache: Path) -> None:
    lines: list[str] = []
    first = open_engine(conv4_bundle, "onnxruntime", device="cpu", threads=1, log=lines.append)
    assert first.selfcheck.status == "verified" and first.selfcheck.min_cosine > 0.9999  # type: ignore[attr-defined]
    assert any(line.startswith("self-check:") for line in lines)
    assert len(list(own_cache.glob("selfcheck/*.json"))) == 1
    lines.clear()
    again = open_engine(conv4_bundle, "onnxruntime", device="cpu", threads=1, log=lines.append)
    assert again.selfcheck.status == "cached"  # type: ignore[attr-defined]
    assert not any("self-check" in line for line in lines)
    # Another engine on the same machine is another entry: OpenVINO is checked on its own.
    pytest.importorskip("openvino")
    ov = open_engine(conv4_bundle, "openvino", device="cpu", threads=1, log=lambda _: None)
    assert ov.selfcheck.status == "verified"  # type: ignore[attr-defined]
    assert len(list(cache_root().glob("*.json"))) == 2


def test_an_int8_bundle_carries_its_own_reference_and_passes_here(int8_bundle: Path) -> None:
    bundle = read_bundle(int8_bundle)
    info = quantization_info(bundle)
    assert info is not None and info["target"] == "any" and info["cpu_classes"] == claimed_classes("any")
    assert info["int8_format"] in FORMAT_LADDER and (int8_bundle / FP32_FALLBACK_FILE).is_file()
    entry = bundle.manifest.export["selfcheck"]
    assert entry["int8_cosines"]["mean"] > 0.98 and (int8_bundle / SELFCHECK_FILE).is_file()
    engine = open_engine(int8_bundle, "onnxruntime", device="cpu", threads=1, log=lambda _: None)
    assert engine.precision == "int8" and engine.selfcheck.status == "verified"  # type: ignore[attr-defined]


def test_a_perturbed_int8_graph_is_refused_with_what_to_do(int8_bundle: Path, tmp_path: Path,
                                                           own_cache: Path) -> None:
    bad = copy_bundle(int8_bundle, tmp_path / "bad.edgefs")
    perturb_int8_graph(bad)
    with pytest.raises(SelfCheckError, match=r"reference images are too far") as err:
        open_engine(bad, "onnxruntime", device="cpu", threads=1, log=lambda _: None)
    assert "quantise again on this machine" in str(err.value) and "--on-mismatch fp32" in str(err.value)
    assert not list(own_cache.glob("selfcheck/*.json"))  # a failure is never cached


def test_the_fp32_fallback_runs_where_the_user_allows_it(int8_bundle: Path, tmp_path: Path) -> None:
    bad = copy_bundle(int8_bundle, tmp_path / "bad.edgefs")
    perturb_int8_graph(bad)
    lines: list[str] = []
    engine = open_engine(bad, "onnxruntime", device="cpu", threads=1, log=lines.append,
                         options={"on_mismatch": "fp32"})
    assert engine.precision == "fp32" and engine.bundle.onnx_path.name == FP32_FALLBACK_FILE
    assert engine.bundle.fingerprint == read_bundle(bad).fingerprint  # the INT8 bundle's stores stay usable
    assert sum("running the FP32 graph" in line for line in lines) == 1
    images, reference = load_reference(read_bundle(bad))  # type: ignore[misc]
    got = engine.embed(images)
    assert np.allclose(got, reference, atol=1e-4)


def test_an_int8_bundle_is_refused_on_a_cpu_class_it_does_not_claim(int8_bundle: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    vnni_only = copy_bundle(int8_bundle, tmp_path / "vnni.edgefs")
    edit_manifest(vnni_only, lambda doc: doc["export"]["quantization"].update(cpu_classes=["x86-vnni"],
                                                                               target="x86-vnni"))
    assert int8_classes(read_bundle(vnni_only)) == ["x86-vnni"]
    monkeypatch.setattr(edgefs.cpu, "cpu_info", lambda: AVX2_ONLY)
    with pytest.raises(SelfCheckError, match=r"is for x86-vnni CPUs .* this CPU is x86 \(an AVX2 CPU\)"):
        open_engine(vnni_only, "onnxruntime", device="cpu", threads=1, log=lambda _: None)
    engine = open_engine(vnni_only, "onnxruntime", device="cpu", threads=1, log=lambda _: None,
                         options={"on_mismatch": "fp32"})
    assert engine.precision == "fp32"
    monkeypatch.setattr(edgefs.cpu, "cpu_info", lambda: VNNI)  # the class it claims: opened as INT8
    assert open_engine(vnni_only, "onnxruntime", device="cpu", threads=1, log=lambda _: None).precision == "int8"


def test_int8_bundles_made_before_cpu_classes_claim_the_non_saturating_ones(int8_bundle: Path,
                                                                            tmp_path: Path) -> None:
    old = copy_bundle(int8_bundle, tmp_path / "old.edgefs")
    edit_manifest(old, lambda doc: doc["export"]["quantization"].pop("cpu_classes"))
    assert int8_classes(read_bundle(old)) == ["x86-vnni", "arm64"]


def test_a_damaged_reference_file_is_refused_not_skipped(conv4_bundle: Path, tmp_path: Path) -> None:
    bad = copy_bundle(conv4_bundle, tmp_path / "bad.edgefs")
    data = bytearray((bad / SELFCHECK_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / SELFCHECK_FILE).write_bytes(bytes(data))
    with pytest.raises(SelfCheckError, match="does not match the manifest's sha256"):
        open_engine(bad, "onnxruntime", device="cpu", threads=1, log=lambda _: None)


def test_a_bundle_without_reference_images_opens_with_a_note(conv4_bundle: Path, tmp_path: Path) -> None:
    old = copy_bundle(conv4_bundle, tmp_path / "old.edgefs")
    (old / SELFCHECK_FILE).unlink()
    edit_manifest(old, lambda doc: doc["export"].pop("selfcheck"))
    lines: list[str] = []
    engine = open_engine(old, "onnxruntime", device="cpu", threads=1, log=lines.append)
    assert engine.selfcheck.status == "unchecked"  # type: ignore[attr-defined]
    assert any(line.startswith("note:") and "no reference images" in line for line in lines)


def test_check_engine_reports_without_raising_and_the_cli_flag_reaches_it(conv4_bundle: Path) -> None:
    engine = open_engine(conv4_bundle, "onnxruntime", device="cpu", threads=1, log=lambda _: None, selfcheck=False)
    assert not hasattr(engine, "selfcheck")
    result = check_engine(engine, use_cache=False)
    assert result.passed and result.images >= 1 and result.to_json()["status"] == "verified"
    with pytest.raises(EdgefsError, match="on_mismatch 'maybe'"):
        open_engine(conv4_bundle, "onnxruntime", device="cpu", log=lambda _: None, options={"on_mismatch": "maybe"})


def test_quantize_refuses_a_target_this_machine_cannot_measure(conv4_bundle: Path, glyph_data: Path,
                                                               tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edgefs.cpu, "cpu_info", lambda: AVX2_ONLY)
    monkeypatch.setattr("edgefs.export.quantize.cpu_info", lambda: AVX2_ONLY)
    with pytest.raises(QuantizeError, match=r"--target x86-vnni claims x86-vnni, but this CPU is x86"):
        quantize_bundle(conv4_bundle, glyph_data / "test", tmp_path / "q.edgefs", target="x86-vnni",
                        log=lambda _: None)
    assert not (tmp_path / "q.edgefs").exists()


def test_cpu_classes_follow_the_instruction_sets() -> None:
    assert AVX2_ONLY.int8_class == "x86" and VNNI.int8_class == "x86-vnni"
    assert CpuInfo("x86_64", "", 4, frozenset({"AVX2", "AVX_VNNI"})).int8_class == "x86-vnni"
    assert CpuInfo("aarch64", "", 4, frozenset({"ASIMD", "ASIMDDP"})).int8_class == "arm64"
    here = edgefs.cpu.cpu_info()
    assert here.cores >= 1 and here.int8_class in ("x86-vnni", "x86", "arm64", "other")
    assert here.to_json()["int8_class"] == here.int8_class
    with pytest.raises(ValueError, match="unknown INT8 target"):
        claimed_classes("x87")


def test_int8_formats_that_saturate_are_refused_for_portable_targets() -> None:
    assert formats_for("any") == list(FORMAT_LADDER) and formats_for("x86-vnni") == ["s8"]
    assert formats_for("arm64", "u8") == ["u8"]
    with pytest.raises(QuantizeError, match="saturates on x86 CPUs without VNNI"):
        formats_for("any", "s8")


def test_portable_weights_fit_a_16_bit_pair_sum(conv4_bundle: Path, int8_bundle: Path) -> None:
    """Every matrix-product weight of a portable INT8 graph is uint8 or int8 within 7 bits: a pair of
    products with a uint8 activation then fits the 16-bit sum of x86 kernels without VNNI."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(int8_bundle / ONNX_FILE))
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    checked = 0
    for node in model.graph.node:
        if node.op_type != "Conv" or next((a.i for a in node.attribute if a.name == "group"), 1) != 1:
            continue
        dq = producer[node.input[1]]
        w = inits[dq.input[0]]
        values = numpy_helper.to_array(w).astype(np.int32)
        if w.data_type == onnx.TensorProto.INT8:
            assert values.min() >= -64 and values.max() <= 64
            assert 255 * 64 * 2 < 32768
        else:
            assert w.data_type == onnx.TensorProto.UINT8
        checked += 1
    assert checked >= 3


needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-x86_64-static") is None or edgefs.cpu.cpu_info().arch != "x86_64",
    reason="needs an x86 machine with qemu-x86_64-static (apt-get install qemu-user-static)")


@needs_qemu
def test_the_parity_gate_runs_again_as_an_avx2_cpu_where_this_machine_is_another_class(
        conv4_bundle: Path, glyph_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # On a VNNI machine the x86 class (AVX2, no VNNI) is measured under qemu; here the machine is made to
    # say VNNI, so the real emulated run happens whatever this CPU is.
    monkeypatch.setattr(edgefs.cpu, "cpu_info", lambda: VNNI)
    monkeypatch.setattr("edgefs.export.quantize.cpu_info", lambda: VNNI)
    monkeypatch.delenv("EDGEFS_AARCH64_PYTHON", raising=False)
    lines: list[str] = []
    out = tmp_path / "q.edgefs"
    quantize_bundle(conv4_bundle, glyph_data / "test", out, calib_images=64, parity_images=48, emulate=True,
                    log=lines.append)
    measured = quantization_info(read_bundle(out))["parity_emulated"]  # type: ignore[index]
    assert measured["x86"]["how"].startswith("qemu-x86_64-static -cpu Haswell")
    assert measured["x86"]["mean_cosine"] > 0.98 and measured["x86"]["to_native_min_cosine"] > 0.999
    assert "EDGEFS_AARCH64_PYTHON" in measured["arm64"]["skipped"]
    assert "x86-vnni" not in measured  # the class it runs on is the native gate's
    assert any(line.startswith("parity on x86 (qemu-x86_64-static") for line in lines)


@needs_qemu
def test_an_emulated_cpu_that_computes_otherwise_refuses_the_bundle(
        conv4_bundle: Path, glyph_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same gate with the emulated embeddings spoiled on their way back: nothing is written."""
    import edgefs.runtime.emulate as emulate

    real = emulate.embed_emulated

    def spoiled(emulator: emulate.Emulator, onnx_path: Path, images: np.ndarray) -> tuple[np.ndarray, float]:
        got, seconds = real(emulator, onnx_path, images)
        return got + np.random.default_rng(0).standard_normal(got.shape).astype(np.float32) * got.std(), seconds

    monkeypatch.setattr(edgefs.cpu, "cpu_info", lambda: VNNI)
    monkeypatch.setattr("edgefs.export.quantize.cpu_info", lambda: VNNI)
    monkeypatch.setattr(emulate, "embed_emulated", spoiled)
    with pytest.raises(QuantizeError, match=r"misses the floors on x86 \(qemu-x86_64-static -cpu Haswell"):
        quantize_bundle(conv4_bundle, glyph_data / "test", tmp_path / "q.edgefs", calib_images=64,
                        parity_images=48, emulate=True, log=lambda _: None)
    assert not (tmp_path / "q.edgefs").exists()


def test_classes_that_cannot_be_emulated_say_why(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgefs.runtime.emulate import emulator_for

    monkeypatch.delenv("EDGEFS_AARCH64_PYTHON", raising=False)
    assert emulator_for("x86-vnni")[0] is None and "AVX-512 VNNI" in emulator_for("x86-vnni")[1]
    assert emulator_for("arm64")[0] is None and "EDGEFS_AARCH64_PYTHON" in emulator_for("arm64")[1]
    monkeypatch.setenv("EDGEFS_AARCH64_PYTHON", "/nonexistent/python")
    monkeypatch.setenv("EDGEFS_AARCH64_SITE", "/nonexistent/site")
    assert "does not exist" in emulator_for("arm64")[1]
