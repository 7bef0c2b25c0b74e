"""A real TensorRT builder on every backbone's bundle: TensorRT-RTX, which compiles ahead of time on the CPU.

Marked ``trt_build``: runs wherever ``import tensorrt_rtx_bindings`` works (``pip install 'edgefs[rtx]'``,
part of ``make install``), GPU or not. Each registered backbone is exported to a bundle and built through
``edgefs build-engine BUNDLE --trt rtx``: this proves that the exported graph -- uint8 NHWC input cast
first, normalisation inside, dynamic batch -- parses and builds with a TensorRT builder, and that the
engine file carries the right key and header.

What it does not prove: that the engine runs, or agrees with ONNX Runtime. That needs an RTX-class GPU
(device_tests/test_tensorrt.py); here the build says parity was not run and why, and the header records
``verified: false``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from edgefs.export import export_bundle

from edgefs.backbones import BACKBONES, build_backbone
from edgefs.cli import main
from edgefs.methods import build_method
from edgefs.runtime.bundle import MANIFEST_FILE, ONNX_FILE, read_bundle, sha256_file
from edgefs.runtime.engine_file import EngineKey, read_engine_file, read_engine_header
from edgefs.train.checkpoint import save_checkpoint

pytestmark = pytest.mark.trt_build

# Small variants of every registered backbone (as in test_export.py), and the native sizes built too.
SMALL: dict[str, dict[str, Any]] = {
    "conv4": {"input_size": 28, "in_channels": 1},
    "resnet12": {"input_size": 32, "in_channels": 3, "channels": [16, 32, 64, 128]},
    "efficientnet_lite0": {"input_size": 64, "pretrained": False},
    "efficientnet_lite1": {"input_size": 64, "pretrained": False},
    "efficientnet_lite2": {"input_size": 64, "pretrained": False},
}
NATIVE: dict[str, dict[str, Any]] = {"efficientnet_lite0": {"pretrained": False}}  # 224 px, 1280-d
# The colour model's square-root embedding (a Pow node after the pooling), as the parser sees it.
POWER: dict[str, dict[str, Any]] = {"efficientnet_lite0": {"input_size": 64, "pretrained": False, "power": 0.5}}
VARIANTS = {"small": SMALL, "native": NATIVE, "power": POWER}


def quiet(_: str) -> None:
    pass


def export(name: str, options: dict[str, Any], data: Path, root: Path) -> Path:
    torch.manual_seed(0)
    backbone = build_backbone(name, **options)
    save_checkpoint(root / f"{name}.pt", build_method("protonet", backbone),
                    {"config": {}, "episode": 0, "best_val": None})
    export_bundle(root / f"{name}.pt", root / f"{name}.edgefs", data=str(data), parity_images=8, log=quiet)
    return root / f"{name}.edgefs"


@pytest.fixture(scope="module")
def rtx() -> Any:
    import tensorrt_rtx_bindings

    return tensorrt_rtx_bindings


def build(bundle: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[Path, dict[str, Any], str]:
    """``edgefs build-engine BUNDLE --trt rtx FLAGS`` -> (engine file, header, printed output)."""
    before = set((bundle / "engines").glob("*.engine"))
    assert main(["build-engine", str(bundle), "--trt", "rtx", "--parity-images", "16", *flags]) == 0
    out = capsys.readouterr().out
    (path,) = set((bundle / "engines").glob("*.engine")) - before
    return path, read_engine_header(path), out


@pytest.mark.parametrize(
    ("name", "size"),
    [(n, "small") for n in BACKBONES.names()]
    + [pytest.param(n, "native", marks=pytest.mark.slow) for n in BACKBONES.names() if n in NATIVE]
    + [(n, "power") for n in POWER],
)
def test_every_backbone_builds_with_the_rtx_builder(name: str, size: str, glyph_data: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str], rtx: Any) -> None:
    from edgefs.runtime.trt_flavour import FLAVOURS

    options = VARIANTS[size][name]
    bundle_path = export(name, options, glyph_data, tmp_path)
    bundle = read_bundle(bundle_path)
    targets = FLAVOURS.get("rtx").all_targets(rtx)
    assert "8.9" in targets and "12.0" in targets  # Ada and Blackwell RTX, from the wheel's own enum
    for precision in ("fp32", "fp16"):
        path, header, out = build(bundle_path, capsys, "--precision", precision)
        key = EngineKey.from_json(header["key"])
        assert key == EngineKey(bundle.fingerprint, rtx.__version__, "any", "+".join(targets), precision, 8, "rtx")
        assert path.name == key.file_name()
        assert header["engine_size"] > 10_000 and path.stat().st_size > header["engine_size"]
        assert header["bundle"]["backbone"] == name and header["build"]["strongly_typed"]
        assert header["build"]["uint8_input_cast"] is False  # the exported graph already casts first
        if precision == "fp16":  # the fp16 graph that was compiled, against backbone.onnx in ONNX Runtime
            graph = header["build"]["graph_parity"]
            assert graph["passed"] and graph["min_cosine"] >= 0.999 and graph["images"] == 16
            assert "fp16 graph vs backbone.onnx in onnxruntime" in out
        else:
            assert "graph_parity" not in header["build"]
        # Without a GPU the parity check is skipped, said so, and recorded; with one it must have passed.
        if header["verified"]:
            assert header["parity"]["run"] and header["parity"]["passed"]
        else:
            assert header["parity"] == {"run": False, "reason": header["parity"]["reason"]}
            assert "no GPU could run the engine" in header["parity"]["reason"]
            assert "parity vs onnxruntime: NOT RUN" in out and "unverified" in out
        # An RTX 4090 (sm 8.9) may load it; the engine bytes are what the header says.
        rtx_4090 = EngineKey(bundle.fingerprint, rtx.__version__, "NVIDIA GeForce RTX 4090", "8.9", precision, 8, "rtx")
        _, engine = read_engine_file(path, rtx_4090)
        assert len(engine) == header["engine_size"]
    sizes = {p.name.split("_")[-2]: p.stat().st_size for p in (bundle_path / "engines").glob("*.engine")}
    assert sizes["fp16"] < sizes["fp32"]  # fp16 weights: the fp16 graph really is what was built


def test_targets_and_refusals(conv4_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              rtx: Any) -> None:
    bundle = tmp_path / "b.edgefs"
    shutil.copytree(conv4_bundle, bundle)
    path, header, _ = build(bundle, capsys, "--precision", "fp32", "--targets", "8.9,8.6", "--max-batch", "4")
    assert header["key"]["compute_capability"] == "8.6+8.9" and header["key"]["max_batch"] == 4
    assert path.name.endswith("_any_sm86-89_fp32_b4.engine")
    # int8 needs a calibrator TensorRT-RTX does not have; an unknown target is named.
    assert main(["build-engine", str(bundle), "--trt", "rtx", "--precision", "int8"]) == 2
    assert "no INT8 calibrator" in capsys.readouterr().err
    assert main(["build-engine", str(bundle), "--trt", "rtx", "--targets", "9.0"]) == 2
    assert "cannot target compute capability 9.0" in capsys.readouterr().err


def test_a_graph_that_transposes_uint8_first_is_refused_by_the_parser(conv4_bundle: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Bundles exported before the input cast moved first: TensorRT-RTX's parser rejects node 0, and the
    message says to re-export."""
    from edgefs.export.onnx_export import _trace_to_onnx

    from edgefs.backbones.base import ImageInput

    def old_forward(self: ImageInput, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(torch.float32) * (1.0 / 255.0)
        return ((x * self.luma).sum(dim=1, keepdim=True) - self.mean) * self.inv_std

    bundle = tmp_path / "old.edgefs"
    shutil.copytree(conv4_bundle, bundle)
    monkeypatch.setattr(ImageInput, "forward", old_forward)
    torch.manual_seed(0)
    _trace_to_onnx(build_backbone("conv4").eval(), bundle / ONNX_FILE, 17)
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest["fingerprint"] = sha256_file(bundle / ONNX_FILE)
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert main(["build-engine", str(bundle), "--trt", "rtx", "--precision", "fp32"]) == 2
    err = capsys.readouterr().err
    assert "ONNX parser rejected" in err and "Transpose" in err and "UInt8" in err
    assert "re-export the bundle" in err
    assert not list((bundle / "engines").glob("*.engine"))
