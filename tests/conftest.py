"""Shared fixtures: small real data sets generated at test time (nothing is downloaded)."""

from __future__ import annotations

import importlib.util
import os
import signal
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest


def load_tool(name: str) -> ModuleType:
    """A program under tools/ imported as a module (tools/ is not a package), for testing its functions."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / f"tools/{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_stroke_classes(root: Path, splits: dict[str, int], per_class: int = 6, seed: int = 0) -> Path:
    """An ImageFolder of stroke 'characters': each class a random polyline, its
    images that polyline jittered and re-drawn, in groups of three scripts."""
    rng = np.random.default_rng(seed)
    for split, n in splits.items():
        for c in range(n):
            pts = rng.integers(4, 24, (4, 2))
            folder = root / split / f"script{c % 3}" / f"char{c:03d}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                img = np.full((28, 28), 255, np.uint8)
                p = pts + rng.integers(-1, 2, pts.shape)
                cv2.polylines(img, [p.astype(np.int32)], False, 0, 2)
                cv2.imwrite(str(folder / f"{i}.png"), img)
    return root


def prebuilt(name: str) -> Path | None:
    """``name`` in the folder that EDGEFS_TEST_PREBUILT names, if it is set: the glyph data and bundles
    of the fixtures below, made on another machine. The aarch64 lane (.ci/lane-aarch64.sh) makes them on
    x86 and runs the device tests on a Python with neither PyTorch nor fontTools, which cannot."""
    root = os.environ.get("EDGEFS_TEST_PREBUILT")
    if not root:
        return None
    if not (Path(root) / name).exists():
        raise FileNotFoundError(f"EDGEFS_TEST_PREBUILT={root} has no {name}")
    return Path(root) / name


def needs(module: str, what: str) -> None:
    """Skip, saying why, where ``module`` (a workstation dependency) is not installed."""
    pytest.importorskip(module, reason=f"{what} needs {module} (pip install 'edgefs[train]'); "
                                       "or set EDGEFS_TEST_PREBUILT")


@pytest.fixture(scope="session")
def glyph_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real glyph benchmark rendered from the DejaVu fonts (8 classes per script)."""
    if (made := prebuilt("glyphs")) is not None:
        return made
    needs("fontTools", "rendering the glyph data")
    from edgefs.data.glyphs import GlyphConfig, render_glyph_benchmark

    out = tmp_path_factory.mktemp("glyphs") / "set"
    render_glyph_benchmark(out, GlyphConfig(dejavu_only=True, max_classes_per_script=8), log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def stroke_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/val/test splits of 30/12/12 stroke classes, 6 images each."""
    return write_stroke_classes(tmp_path_factory.mktemp("strokes"), {"train": 30, "val": 12, "test": 12})


@pytest.fixture(scope="session")
def conv4_bundle(glyph_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A conv4 ProtoNet bundle folder (28 px grey network, untrained, seeded), exported once
    with a parity check on ``glyph_data``'s test split. Copy it before changing it."""
    if (made := prebuilt("conv4.edgefs")) is not None:
        return made
    needs("torch", "exporting a bundle")
    import torch
    from edgefs.export import export_bundle

    from edgefs.backbones import build_backbone
    from edgefs.methods import build_method
    from edgefs.train.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("conv4_bundle")
    torch.manual_seed(0)
    method = build_method("protonet", build_backbone("conv4"))
    save_checkpoint(root / "conv4.pt", method, {"config": {"data": str(glyph_data)}, "episode": 0, "best_val": None})
    export_bundle(root / "conv4.pt", root / "conv4.edgefs", parity_images=16, log=lambda _: None)
    return root / "conv4.edgefs"


CHECKPOINT = Path(__file__).parents[1] / "models" / "protonet-conv4-glyphs28.pt"


@pytest.fixture(scope="session")
def trained_bundle(glyph_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed, trained Conv-4 ProtoNet exported to a bundle (parity-checked on glyph_data)."""
    if (made := prebuilt("trained.edgefs")) is not None:
        return made
    needs("torch", "exporting a bundle")
    from edgefs.export import export_bundle

    out = tmp_path_factory.mktemp("trained") / "model.edgefs"
    export_bundle(CHECKPOINT, out, data=str(glyph_data), parity_images=16, log=lambda _: None)
    return out


def sigint_default() -> None:
    """``preexec_fn`` for a child a test stops with Ctrl-C (SIGINT): its default action again, so that
    Python raises KeyboardInterrupt in it even when the test run itself ignores SIGINT (a background job
    of a non-interactive shell, ``nohup ... &``, starts so)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
