"""edgefs export: checkpoint -> bundle, parity on real glyph images, and every way it must refuse."""

from __future__ import annotations

import functools
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from edgefs.export import TORCH_WEIGHTS_FILE, ExportError, ParityError, export_bundle
from edgefs.export.onnx_export import unsupported_operator
from edgefs.export.parity import parity_images
from torch import nn

from edgefs.backbones import BACKBONES, Backbone, BackboneSpec, build_backbone
from edgefs.cli import main
from edgefs.errors import CheckpointError
from edgefs.methods import build_method
from edgefs.runtime.bundle import (
    BUNDLE_SCHEMA_VERSION,
    HEAD_STEM,
    INPUT_NAME,
    MANIFEST_FILE,
    ONNX_FILE,
    OUTPUT_NAME,
    BundleError,
    read_bundle,
    sha256_file,
)
from edgefs.runtime.selfcheck import SELFCHECK_FILE
from edgefs.train.checkpoint import save_checkpoint

# Small, fast variants of every registered backbone (the test body is the same for all).
SMALL: dict[str, dict[str, Any]] = {
    "conv4": {"input_size": 28, "in_channels": 1},
    "resnet12": {"input_size": 32, "in_channels": 3, "channels": [16, 32, 64, 128]},
    "efficientnet_lite0": {"input_size": 64, "pretrained": False},
    "efficientnet_lite1": {"input_size": 64, "pretrained": False},
    "efficientnet_lite2": {"input_size": 64, "pretrained": False},
}
SLOW: set[str] = set()  # none takes > 3 s at these sizes


def quiet(_: str) -> None:
    pass


def make_checkpoint(path: Path, backbone: Backbone, data: str | None = None, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    method = build_method("protonet", backbone)
    save_checkpoint(path, method, {"config": {"data": data}, "episode": 7, "best_val": 0.5})
    return path


def partial_folders(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in BACKBONES.names()],
)
def test_export_bundle(name: str, glyph_data: Path, tmp_path: Path) -> None:
    torch.manual_seed(1)
    backbone = build_backbone(name, **SMALL.get(name, {}))
    spec = backbone.spec
    ckpt = make_checkpoint(tmp_path / "model.pt", backbone)
    out = tmp_path / "model.edgefs"
    messages: list[str] = []
    bundle = export_bundle(ckpt, out, data=str(glyph_data), parity_images=12, log=messages.append)

    assert sorted(p.name for p in out.iterdir()) == sorted(
        [ONNX_FILE, f"{HEAD_STEM}.json", f"{HEAD_STEM}.npz", MANIFEST_FILE, TORCH_WEIGHTS_FILE, SELFCHECK_FILE])
    assert partial_folders(tmp_path) == []
    # Manifest: what the device needs to feed and read the graph.
    m = bundle.manifest
    assert m.schema_version == BUNDLE_SCHEMA_VERSION
    assert m.backbone == json.loads(json.dumps(spec.to_dict()))
    assert m.input == {"name": INPUT_NAME, "dtype": "uint8", "layout": "NHWC", "height": spec.input_size,
                       "width": spec.input_size, "channels": 3, "color_order": "RGB"}
    assert m.output == {"name": OUTPUT_NAME, "dtype": "float32", "dim": spec.embedding_dim}
    assert m.fingerprint == sha256_file(out / ONNX_FILE)
    assert m.training["checkpoint"]["sha256"] == sha256_file(ckpt)
    assert m.training["episode"] == 7 and m.training["best_val"] == 0.5
    assert m.export["opset"] == 17 and m.export["torch_weights"] == TORCH_WEIGHTS_FILE
    assert {"torch", "onnx", "onnxslim", "onnxruntime", "edgefs"} <= set(m.export["versions"])
    # Parity: both batch sizes, every image, within tolerance; the table was printed.
    parity = m.export["parity"]
    assert [r["batch"] for r in parity["rows"]] == [1, 16]
    assert parity["summary"]["images"] == 12 and parity["summary"]["min_cosine"] >= 0.9999
    assert any("| batch |" in msg for msg in messages)
    # Head: the method's spec, round-tripped through head.json + head.npz.
    head = build_method("protonet", build_backbone(name, **SMALL.get(name, {}))).head_spec()
    assert (bundle.head.head_type, bundle.head.params) == (head.head_type, head.params)
    assert m.head == {"type": head.head_type, "params": head.params}

    # The uint8 input goes through a Cast before anything else (TensorRT's parsers refuse a Transpose of uint8).
    graph = onnx.load(str(out / ONNX_FILE)).graph
    assert graph.node[0].op_type == "Cast" and list(graph.node[0].input) == [INPUT_NAME]
    assert graph.node[0].attribute[0].i == onnx.TensorProto.FLOAT
    assert [n.op_type for n in graph.node if INPUT_NAME in n.input] == ["Cast"]

    # Dynamic batch: ORT at batch 1 and 5 gives what PyTorch gives, on real glyph images.
    images = parity_images(glyph_data, "test", spec.input_size, 5, seed=3)
    session = ort.InferenceSession(str(out / ONNX_FILE), providers=["CPUExecutionProvider"])
    backbone.eval()
    with torch.inference_mode():
        expected = backbone(torch.from_numpy(images)).numpy()
    (one,) = session.run([OUTPUT_NAME], {INPUT_NAME: images[:1]})
    (five,) = session.run([OUTPUT_NAME], {INPUT_NAME: images})
    assert one.shape == (1, spec.embedding_dim) and five.shape == (5, spec.embedding_dim)
    assert five.dtype == np.float32
    np.testing.assert_allclose(five, expected, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(one, five[:1], rtol=1e-3, atol=1e-4)

    # backbone.pt rebuilds the backbone from the manifest's spec alone (what the torch backend does).
    rebuilt = build_backbone(m.backbone["name"], **m.backbone["options"]).eval()
    rebuilt.load_state_dict(torch.load(out / TORCH_WEIGHTS_FILE, weights_only=True))
    with torch.inference_mode():
        np.testing.assert_allclose(rebuilt(torch.from_numpy(images)).numpy(), expected, rtol=1e-5, atol=1e-6)

    # One flipped byte in the graph is caught by the fingerprint.
    raw = bytearray((out / ONNX_FILE).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (out / ONNX_FILE).write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="fingerprint"):
        read_bundle(out)


def test_conv4_bundle_fixture_reads_back(conv4_bundle: Path) -> None:
    bundle = read_bundle(conv4_bundle)
    assert bundle.manifest.input_size == (28, 28) and bundle.manifest.embedding_dim == 64
    assert bundle.head.head_type == "prototype"


def test_parity_images_spread_over_classes(glyph_data: Path) -> None:
    from edgefs.data.images import open_split

    split = open_split(glyph_data, "test", channels=3, size=28)
    images = parity_images(glyph_data, "test", 28, split.num_classes, seed=0)
    assert images.shape == (split.num_classes, 28, 28, 3) and images.dtype == np.uint8
    # One image per class: no two picks are the same image.
    assert len({im.tobytes() for im in images}) == split.num_classes
    again = parity_images(glyph_data, "test", 40, 4, seed=0)
    assert again.shape == (4, 40, 40, 3)
    np.testing.assert_array_equal(parity_images(glyph_data, "test", 28, 4, seed=0), images[:4])


# --- refusals: each says what went wrong, leaves no bundle, and the CLI exits 2 ------------------------


@pytest.fixture(scope="module")
def conv4_checkpoint(glyph_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "conv4.pt", build_backbone("conv4"), str(glyph_data))


class ErfinvBackbone(Backbone):
    """Test-only: ``erfinv`` has no ONNX form in the TorchScript exporter at opset 17."""

    def __init__(self, name: str, input_size: int = 28) -> None:
        super().__init__(BackboneSpec(name=name, input_size=input_size, in_channels=1, mean=(0.5,), std=(0.5,),
                                      embedding_dim=4, options={"input_size": input_size}))
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erfinv(0.5 * torch.tanh(self.conv(x))).mean(dim=(2, 3))


def test_unsupported_operator_is_named(glyph_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    name = f"test_erfinv_{uuid.uuid4().hex[:8]}"
    # Registered only for this test (the registry has no public way to unregister).
    monkeypatch.setitem(BACKBONES._items, name, functools.partial(ErfinvBackbone, name))
    ckpt = make_checkpoint(tmp_path / "erfinv.pt", ErfinvBackbone(name), str(glyph_data))
    with pytest.raises(ExportError, match=r"operator 'aten::erfinv'"):
        export_bundle(ckpt, tmp_path / "a.edgefs", log=quiet)
    assert main(["export", str(ckpt), "--out", str(tmp_path / "b.edgefs")]) == 2
    assert "aten::erfinv" in capsys.readouterr().err
    assert not (tmp_path / "a.edgefs").exists() and not (tmp_path / "b.edgefs").exists()
    assert partial_folders(tmp_path) == []


def test_operator_name_is_found_in_exporter_messages() -> None:
    assert unsupported_operator(
        "Exporting the operator 'aten::fft_rfft' to ONNX opset version 17 is not supported") == "aten::fft_rfft"
    assert unsupported_operator("ONNX symbolic expected a constant value of the aten::pad op") == "aten::pad"
    assert unsupported_operator("something else") is None


def test_parity_failure_leaves_no_bundle(conv4_checkpoint: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.edgefs"
    with pytest.raises(ParityError, match=r"min cosine .* < 1.5") as failure:
        export_bundle(conv4_checkpoint, out, parity_images=4, min_cosine=1.5, log=quiet)
    assert "no bundle was written" in str(failure.value)
    assert not out.exists() and partial_folders(tmp_path) == []
    # The CLI takes only a cosine a parity check can reach, and says so before exporting anything.
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(conv4_checkpoint), "--out", str(out), "--parity-images", "4", "--min-cosine", "1.5"])
    assert exit_info.value.code == 2
    assert "argument --min-cosine: must be a finite number >= -1 and <= 1, got 1.5" in capsys.readouterr().err
    assert not out.exists() and partial_folders(tmp_path) == []


def test_refuses_non_empty_out_unless_overwrite(conv4_checkpoint: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.edgefs"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["export", str(conv4_checkpoint), "--out", str(out), "--parity-images", "4"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"
    assert main(["export", str(conv4_checkpoint), "--out", str(out), "--parity-images", "4", "--overwrite"]) == 0
    assert not (out / "notes.txt").exists() and read_bundle(out).manifest.embedding_dim == 64
    assert partial_folders(tmp_path) == []


def test_missing_parity_data_says_pass_data(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "c.pt", build_backbone("conv4"), data=str(tmp_path / "gone"))
    with pytest.raises(ExportError, match="pass --data"):
        export_bundle(ckpt, tmp_path / "m.edgefs", log=quiet)
    assert not (tmp_path / "m.edgefs").exists()


def test_bad_checkpoints_exit_non_zero(conv4_checkpoint: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(conv4_checkpoint.read_bytes()[:1000])
    assert main(["export", str(truncated), "--out", str(tmp_path / "a")]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err

    doc = torch.load(conv4_checkpoint, weights_only=True)
    doc["backbone"]["name"] = "no_such_backbone"
    unknown = tmp_path / "unknown.pt"
    torch.save(doc, unknown)
    with pytest.raises(CheckpointError, match="no_such_backbone"):
        export_bundle(unknown, tmp_path / "b", log=quiet)
    assert main(["export", str(unknown), "--out", str(tmp_path / "b")]) == 2
    assert "upgrade edgefs" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --- reading a damaged bundle: read_bundle refuses with a message that says what to do ----------------


@pytest.fixture
def bundle_copy(conv4_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(conv4_bundle, tmp_path / "copy.edgefs"))


def test_truncated_onnx_is_refused(bundle_copy: Path) -> None:
    onnx_file = bundle_copy / ONNX_FILE
    onnx_file.write_bytes(onnx_file.read_bytes()[:5000])
    with pytest.raises(BundleError, match="truncated, corrupt"):
        read_bundle(bundle_copy)


def test_newer_manifest_schema_is_refused(bundle_copy: Path) -> None:
    doc = json.loads((bundle_copy / MANIFEST_FILE).read_text())
    doc["schema_version"] = BUNDLE_SCHEMA_VERSION + 1
    (bundle_copy / MANIFEST_FILE).write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="newer than this edgefs reads"):
        read_bundle(bundle_copy)


def test_head_that_needs_pickle_is_refused(bundle_copy: Path) -> None:
    np.savez(bundle_copy / f"{HEAD_STEM}.npz", prototypes=np.array([{"evil": 1}], dtype=object))
    doc = json.loads((bundle_copy / f"{HEAD_STEM}.json").read_text())
    doc["arrays"] = {"prototypes": {"shape": [1], "dtype": "object"}}
    (bundle_copy / f"{HEAD_STEM}.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="pickle"):
        read_bundle(bundle_copy)


def test_a_graph_that_transposes_uint8_before_casting_is_refused() -> None:
    """What every bundle looked like before the cast moved first: TensorRT's parser refuses it."""
    from edgefs.export.onnx_export import check_input_cast_first
    from onnx import TensorProto, helper

    def graph(first: str, second: str) -> onnx.ModelProto:
        nodes = {"Transpose": helper.make_node("Transpose", [INPUT_NAME if first == "Transpose" else "x"],
                                               ["t" if first == "Transpose" else OUTPUT_NAME], perm=[0, 3, 1, 2]),
                 "Cast": helper.make_node("Cast", [INPUT_NAME if first == "Cast" else "t"],
                                          ["x" if first == "Cast" else OUTPUT_NAME], to=TensorProto.FLOAT)}
        g = helper.make_graph([nodes[first], nodes[second]], "g",
                              [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["b", 4, 4, 3])],
                              [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, None)])
        return helper.make_model(g)

    check_input_cast_first(graph("Cast", "Transpose"))
    with pytest.raises(ExportError, match=r"Cast to float before any other operation.*Transpose"):
        check_input_cast_first(graph("Transpose", "Cast"))


def test_a_checkpoint_exports_at_another_input_size_where_its_weights_allow(glyph_data: Path, tmp_path: Path,
                                                                            conv4_checkpoint: Path) -> None:
    torch.manual_seed(2)
    backbone = build_backbone("resnet12", **SMALL["resnet12"])
    trained_at = backbone.spec.input_size
    ckpt = make_checkpoint(tmp_path / "r12.pt", backbone)
    bundle = export_bundle(ckpt, tmp_path / "r12-40.edgefs", data=str(glyph_data), parity_images=8, input_size=40,
                           log=lambda _: None)
    assert bundle.manifest.input_size == (40, 40) and bundle.manifest.embedding_dim == backbone.spec.embedding_dim
    assert bundle.manifest.training["input_size"] == {"trained": trained_at, "exported": 40}
    # At the size it was trained at, nothing is recorded.
    same = export_bundle(ckpt, tmp_path / "r12.edgefs", data=str(glyph_data), parity_images=8, log=lambda _: None)
    assert "input_size" not in same.manifest.training
    # Conv-4 flattens its last feature map: its weights fix the size, and the message says so.
    with pytest.raises(ExportError, match=r"depend on the input size; export it at 28 px"):
        export_bundle(conv4_checkpoint, tmp_path / "c4-40.edgefs", data=str(glyph_data), input_size=40,
                      log=lambda _: None)
    assert not (tmp_path / "c4-40.edgefs").exists()
