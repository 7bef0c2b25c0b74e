"""The device path on an aarch64 CPU: bundles made on x86 open and embed as on x86, FP32 and INT8.

Run by ``.ci/lane-aarch64.sh`` under qemu-user (an emulated ARMv8 CPU, not a Jetson), and skipped
elsewhere, where no reference folder is given. The lane's x86 step runs ``test_make_reference`` here
with ``EDGEFS_AARCH64_MAKE=DIR`` in the normal .venv (export needs PyTorch): it writes the fixtures'
glyph data and bundles (``DIR/prebuilt``, for conftest's ``EDGEFS_TEST_PREBUILT``), the committed
colour model as an FP32 bundle and an INT8 one (``edgefs quantize`` on procedural images), fixed test
images, and x86's input batches and embeddings of them. The emulated pytest then reads that folder
(``EDGEFS_AARCH64_REFERENCE``) and compares; the figures also go to ``EDGEFS_AARCH64_RESULTS`` (JSON).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pytest

from edgefs.data.procedural import procedural_images
from edgefs.imagefile import read_images
from edgefs.runtime.bundle import read_bundle
from edgefs.runtime.preprocess import to_batch
from edgefs.runtime.quantized import graph_precision, quantization_info
from edgefs.runtime.select import open_engine
from edgefs.runtime.selfcheck import check_engine

if TYPE_CHECKING:
    from edgefs.runtime.engine import Engine

pytestmark = pytest.mark.aarch64

REFERENCE = "EDGEFS_AARCH64_REFERENCE"
MAKE = "EDGEFS_AARCH64_MAKE"
RESULTS = "EDGEFS_AARCH64_RESULTS"
COLOUR_MODEL = Path(__file__).parents[1] / "models" / "protonet-lite0-colour.pt"
#: The bundles compared; each embeds the same images (``images/``), resized by its own preprocessing.
FP32 = ["conv4", "trained", "colour"]
INT8 = "colour-int8"
FP32_MIN_COSINE = 0.9999  # per image, aarch64 vs x86, as the export's own ONNX Runtime vs PyTorch gate
PARITY_IMAGES, PARITY_SEED, PARITY_SIDE = 24, 11, 256  # not the models' sizes: the resize runs too
#: Lite0 in FP32 takes seconds an image under qemu (TCG emulates float SIMD in software; integer SIMD is
#: much faster), so on aarch64 the colour model's FP32 sees the first few images; INT8 sees all.
COLOUR_FP32_IMAGES = 4
CALIB_IMAGES, CALIB_SEED = 150, 12  # 100 calibrate, 50 held out (quantize's parity)
#: Procedural images are not a camera's: on them the colour model's INT8 graph reaches only 0.96-0.98
#: mean cosine to FP32 (x86, by INT8 format), under the 0.98 default floor, so the lane's bundle is made
#: with this one. What the lane checks is that aarch64 gives what x86 measured, not the calibration.
INT8_FLOOR = 0.95
#: INT8 on aarch64 against x86: the mean cosine to FP32 may be this much lower (rounding between kernels
#: moves it by about 0.001; a CPU whose sums saturate loses far more), and each image's INT8 embedding
#: must be at least this close to x86's.
INT8_MARGIN, INT8_TO_X86 = 0.005, 0.99


def bundle_path(ref: Path, name: str) -> Path:
    return ref / "prebuilt" / f"{name}.edgefs" if name in ("conv4", "trained") else ref / "bundles" / f"{name}.edgefs"


def open_onnxruntime(bundle: Path) -> Engine:
    """ONNX Runtime on one thread (under qemu more threads are slower), without open_engine's self-check:
    the tests here compare more images more strictly, and the check of a new colour bundle would embed
    8 more images in FP32 at ~8 s each; the INT8 test runs the INT8 bundle's own check itself."""
    return open_engine(read_bundle(bundle), backend="onnxruntime", threads=1, log=lambda _: None, selfcheck=False)


def embed(bundle: Path, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, str]:
    """``(batch, embeddings, engine)``: the device path from decoded images."""
    b = read_bundle(bundle)  # verifies backbone.onnx against the manifest's fingerprint
    batch = to_batch(images, b.manifest, mode="center_crop", input_order="RGB")
    engine = open_onnxruntime(bundle)
    return batch, np.concatenate([engine.embed(batch[i: i + 8]) for i in range(0, len(batch), 8)]), engine.describe()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ---- x86: the reference ------------------------------------------------------------------------
@pytest.mark.skipif(not os.environ.get(MAKE), reason=f"makes the x86 reference of .ci/lane-aarch64.sh ({MAKE}=DIR)")
def test_make_reference(glyph_data: Path, conv4_bundle: Path, trained_bundle: Path, tmp_path: Path) -> None:
    from edgefs.export import export_bundle  # needs PyTorch

    from edgefs.cli import main

    out = Path(os.environ[MAKE])
    shutil.copytree(glyph_data, out / "prebuilt" / "glyphs")
    shutil.copytree(conv4_bundle, bundle_path(out, "conv4"))
    shutil.copytree(trained_bundle, bundle_path(out, "trained"))
    (out / "images").mkdir()
    for i, image in enumerate(procedural_images(PARITY_IMAGES, PARITY_SIDE, seed=PARITY_SEED)):
        assert cv2.imwrite(str(out / "images" / f"{i:03d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    # The colour model, and its INT8 bundle calibrated on procedural images (nothing to download). No
    # emulated parity runs in quantize (--no-emulate): checking other CPUs is this lane's own job.
    calib = tmp_path / "calib" / "procedural"  # a folder of one class: export's parity check takes it too
    calib.mkdir(parents=True)
    for i, image in enumerate(procedural_images(CALIB_IMAGES, 224, seed=CALIB_SEED)):
        assert cv2.imwrite(str(calib / f"{i:03d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    export_bundle(COLOUR_MODEL, bundle_path(out, "colour"), data=str(calib.parent), parity_images=16,
                  log=lambda _: None)
    assert main(["quantize", str(bundle_path(out, "colour")), "--calib", str(calib), "--out",
                 str(bundle_path(out, INT8)), "--calib-images", "100", "--parity-images", "50", "--no-emulate",
                 "--min-cosine", str(INT8_FLOOR), "--json", str(out / "quantize.json")]) == 0
    images, _, problems = read_images([out / "images"])
    assert not problems
    facts: dict[str, object] = {"machine": platform.machine(), "onnxruntime": _version("onnxruntime"),
                                "numpy": np.__version__, "opencv": cv2.__version__, "int8 kernels": _x86_isa()}
    for name in [*FP32, INT8]:
        batch, emb, engine = embed(bundle_path(out, name), images)
        np.savez(out / f"x86-{name}.npz", batch=batch, embeddings=emb)
        facts[f"engine {name}"] = engine
    (out / "reference.json").write_text(json.dumps(facts, indent=1))


def _x86_isa() -> str:
    """What ONNX Runtime's INT8 kernels use on this x86 CPU: VNNI, or AVX2 (which saturates, see PORTABILITY.md)."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    flags = set(" ".join(line for line in lines if line.startswith("flags")).split())
    return next((f for f in ("avx512_vnni", "avx_vnni", "avx512bw", "avx2") if f in flags), "other")


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


# ---- aarch64: the comparison -------------------------------------------------------------------
@pytest.fixture(scope="module")
def ref() -> Path:
    raw = os.environ.get(REFERENCE)
    if not raw or not (Path(raw) / "reference.json").is_file():
        pytest.skip(f"no x86 reference ({REFERENCE}): the aarch64 lane makes one, .ci/lane-aarch64.sh")
    return Path(raw)


@pytest.fixture(scope="module")
def images(ref: Path) -> list[np.ndarray]:
    found, _, problems = read_images([ref / "images"])
    assert not problems and len(found) == PARITY_IMAGES
    return found


#: Embeddings this process made, by bundle: the INT8 test compares with the colour model's FP32 ones.
HERE: dict[str, np.ndarray] = {}


def x86(ref: Path, name: str, what: str = "embeddings") -> np.ndarray:
    return np.load(ref / f"x86-{name}.npz")[what]


def record(key: str, value: object) -> None:
    """Add a figure to the lane's results file (``EDGEFS_AARCH64_RESULTS``), under this CPU's name."""
    path = os.environ.get(RESULTS)
    if not path:
        return
    doc = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
    doc.setdefault(os.environ.get("EDGEFS_AARCH64_CPU", platform.machine()), {})[key] = value
    Path(path).write_text(json.dumps(doc, indent=1))


def figures(cos: np.ndarray) -> str:
    return f"mean {cos.mean():.4f}, min {cos.min():.4f} ({len(cos)} images)"


def test_device_side_runs_here_without_torch(ref: Path) -> None:
    import onnxruntime

    assert platform.machine() == "aarch64", "the aarch64 lane runs on an aarch64 Python"
    assert importlib.util.find_spec("torch") is None, "the device side must not need PyTorch"
    record("onnxruntime", onnxruntime.__version__)
    record("x86 reference", json.loads((ref / "reference.json").read_text()))


@pytest.mark.parametrize("name", [*FP32, INT8])
def test_bundle_opens_and_preprocesses_as_on_x86(ref: Path, images: list[np.ndarray], name: str) -> None:
    """The fingerprint checks out, and the resize / crop gives x86's batch (OpenCV on ARM vs x86)."""
    b = read_bundle(bundle_path(ref, name))
    assert graph_precision(b) == ("int8" if name == INT8 else "fp32")
    batch = to_batch(images, b.manifest, mode="center_crop", input_order="RGB")
    diff = int(np.abs(batch.astype(np.int16) - x86(ref, name, "batch").astype(np.int16)).max())
    record(f"preprocess {name}: max abs diff to x86", diff)
    assert diff <= 1, f"{name}: the aarch64 batch differs from x86's by up to {diff} grey levels"


@pytest.mark.parametrize("name", FP32)
def test_fp32_embeddings_match_x86(ref: Path, images: list[np.ndarray], name: str) -> None:
    _, emb, engine = embed(bundle_path(ref, name), images[: COLOUR_FP32_IMAGES if name == "colour" else None])
    HERE[name] = emb
    cos = cosines(emb, x86(ref, name)[: len(emb)])
    record(f"fp32 {name}: cosine to x86", figures(cos))
    assert cos.min() >= FP32_MIN_COSINE, f"{name}: cosine to x86 down to {cos.min():.6f} ({engine})"


def test_int8_on_arm_agrees_with_fp32_as_on_x86(ref: Path, images: list[np.ndarray]) -> None:
    """INT8 against FP32 on this CPU: as close as ``edgefs quantize`` measured on x86, and x86's INT8 output.

    FP32 is x86's embeddings of every image (aarch64's FP32 equals them, test above), and this
    CPU's own where the FP32 test ran in this session (the first COLOUR_FP32_IMAGES images)."""
    _, int8, engine = embed(bundle_path(ref, INT8), images)
    here = cosines(int8, x86(ref, "colour"))
    on_x86 = cosines(x86(ref, INT8), x86(ref, "colour"))
    to_x86_int8 = cosines(int8, x86(ref, INT8))
    info = quantization_info(read_bundle(bundle_path(ref, INT8))) or {}
    record("int8 vs fp32 on this cpu", figures(here))
    if "colour" in HERE:
        record("int8 vs this cpu's own fp32", figures(cosines(int8[: len(HERE["colour"])], HERE["colour"])))
    record("int8 vs fp32 on x86", figures(on_x86))
    record("int8 here vs int8 on x86", figures(to_x86_int8))
    record("int8 format, quantize's floor", [info.get("int8_format"), info.get("floors", {}).get("mean_cosine")])
    record(f"engine {INT8}", engine)
    check = check_engine(open_onnxruntime(bundle_path(ref, INT8)), use_cache=False)  # what a device runs at open
    record("int8 bundle's own self-check", f"{check.status}: mean {check.mean_cosine:.4f}, min {check.min_cosine:.4f} "
                                           f"(floors {check.floors}, {check.images} images)")
    assert check.passed, check.message
    assert here.mean() >= on_x86.mean() - INT8_MARGIN, \
        f"INT8 on this CPU: mean cosine to FP32 {here.mean():.4f}, on x86 {on_x86.mean():.4f} ({engine})"
    assert to_x86_int8.min() >= INT8_TO_X86, f"INT8 here vs on x86: cosine down to {to_x86_int8.min():.4f}"
