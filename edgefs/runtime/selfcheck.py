"""A bundle checks itself where it runs: reference images, their FP32 embeddings, and a check at first open.

The parity gates of ``edgefs export`` and ``edgefs quantize`` run once, on the machine
that made the bundle. The engine that runs it on a device can still differ: an INT8
graph whose 8-bit sums saturate on this CPU, an OpenVINO or TensorRT build that
computes something else, a TensorRT-RTX engine built where no GPU could run it. So
every bundle carries ``selfcheck.npz``: a few of its parity images (uint8, at the
input size) and their FP32 embeddings from ONNX Runtime, with the file's SHA256 in
``manifest.export["selfcheck"]``. :func:`check_engine` embeds the images with the
engine just opened and compares:

- FP32 engines: every cosine at least :data:`FLOORS` ``["fp32"]``;
- FP16 (TensorRT): mean and min cosine floors of their own;
- INT8: the cosines ``edgefs quantize`` measured on the same images on the machine that
  made the bundle, less a small margin (a saturating CPU loses far more).

A pass is cached per machine, engine and bundle (``$EDGEFS_CACHE/selfcheck`` or
``~/.cache/edgefs/selfcheck``), so only the first open on a machine pays for the
embedding; a failure is never cached. Bundles exported before this carry no
reference images: they are opened with one note saying so.

Torch-free; imports nothing heavy.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefs import limits
from edgefs.errors import EdgefsError
from edgefs.fileio import FileRefused, atomic_write_text, read_limited

if TYPE_CHECKING:
    from edgefs.runtime.bundle import Bundle, Manifest
    from edgefs.runtime.engine import Engine

SELFCHECK_FILE = "selfcheck.npz"
SELFCHECK_KEY = "selfcheck"
REFERENCE_IMAGES = 8
FLOORS: dict[str, dict[str, float]] = {
    "fp32": {"mean": 0.9999, "min": 0.999},
    "fp16": {"mean": 0.995, "min": 0.98},
    "int8": {"mean": 0.98, "min": 0.9},
}
"""Floors on the cosine to the FP32 reference embeddings, by the precision the engine runs.
INT8 uses the figures its quantisation measured on the same images where the bundle has them
(:func:`floors_for`); these are for bundles that do not."""
INT8_MARGIN = {"mean": 0.005, "min": 0.02}
"""How far below the quantising machine's own cosines an INT8 engine may land: rounding between
kernels moves them by about 0.001 (native AVX2 against SSE4.1 kernels under emulation: min 0.9993)."""
CACHE_VERSION = 1


class SelfCheckError(EdgefsError):
    """An engine whose embeddings of the bundle's reference images are too far from the FP32 ones."""


@dataclass
class SelfCheck:
    """What :func:`check_engine` found.

    Attributes:
        status: ``verified`` (embedded now and passed), ``cached`` (passed before on this
            machine), ``failed``, or ``unchecked`` (the bundle has no reference images).
        mean_cosine, min_cosine: over the reference images (None when unchecked).
        floors: ``{"mean", "min"}`` the cosines were held to.
        images: how many reference images.
        seconds: how long the check took (embedding, or reading the cache).
        message: one line for the user.
    """

    status: str
    mean_cosine: float | None = None
    min_cosine: float | None = None
    floors: dict[str, float] = field(default_factory=dict)
    images: int = 0
    seconds: float = 0.0
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status in ("verified", "cached")

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "mean_cosine": self.mean_cosine, "min_cosine": self.min_cosine,
                "floors": self.floors, "images": self.images, "seconds": round(self.seconds, 4),
                "message": self.message}


def cache_root() -> Path:
    """``$EDGEFS_CACHE/selfcheck`` when ``EDGEFS_CACHE`` is set, else ``~/.cache/edgefs/selfcheck``."""
    root = os.environ.get("EDGEFS_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "edgefs") / "selfcheck"


def reference_images(images: np.ndarray, count: int = REFERENCE_IMAGES) -> np.ndarray:
    """``count`` images spread over ``images`` (uint8 ``(N, H, W, 3)``), the ones a bundle keeps."""
    if len(images) == 0:
        raise EdgefsError("a bundle's self-check needs at least one reference image")
    idx = np.unique(np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(int))
    return np.ascontiguousarray(images[idx])


def write_selfcheck(folder: Path, images: np.ndarray, embeddings: np.ndarray, reference: str,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``selfcheck.npz`` into a bundle folder being made; return its manifest entry.

    Args:
        folder: the bundle folder (before its manifest is written).
        images: uint8 ``(N, H, W, 3)`` reference images at the input size.
        embeddings: float32 ``(N, D)`` their FP32 embeddings.
        reference: what made the embeddings (e.g. ``"onnxruntime 1.32.0 fp32, x86_64"``).
        extra: more fields for the entry (an INT8 bundle's measured cosines).
    """
    if images.dtype != np.uint8 or images.ndim != 4 or embeddings.ndim != 2 or len(images) != len(embeddings):
        raise EdgefsError(f"self-check arrays do not match: images {images.shape} {images.dtype}, embeddings "
                          f"{embeddings.shape}")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=images, embeddings=embeddings.astype(np.float32))
    data = buffer.getvalue()
    (folder / SELFCHECK_FILE).write_bytes(data)
    return {"file": SELFCHECK_FILE, "images": len(images), "sha256": hashlib.sha256(data).hexdigest(),
            "reference": reference, **(extra or {})}


def selfcheck_entry(manifest: Manifest) -> dict[str, Any] | None:
    entry = manifest.export.get(SELFCHECK_KEY)
    return dict(entry) if isinstance(entry, dict) else None


def load_reference(bundle: Bundle) -> tuple[np.ndarray, np.ndarray] | None:
    """The bundle's reference images and FP32 embeddings, or None for a bundle made without them.

    Raises:
        SelfCheckError: a file that is missing, damaged or altered (SHA256 against the manifest),
            or arrays that do not fit the manifest's input and embedding size.
    """
    entry = selfcheck_entry(bundle.manifest)
    if entry is None:
        return None
    path = bundle.path / str(entry.get("file", SELFCHECK_FILE))
    what = f"bundle {bundle.path.name}'s self-check file {path.name}"
    try:
        data = read_limited(path, limits.MAX_ONNX_BYTES, "bundle self-check file")
    except FileRefused as exc:
        raise SelfCheckError(f"{exc}; copy the bundle again, or export it again") from None
    except OSError as exc:
        raise SelfCheckError(f"{what} cannot be read ({exc.strerror or exc}); copy the bundle again") from None
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise SelfCheckError(f"{what} does not match the manifest's sha256: it is damaged or was replaced; copy "
                             "the bundle again, or export it again")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            images, embeddings = npz["images"], npz["embeddings"]
    except (ValueError, KeyError, OSError) as exc:
        raise SelfCheckError(f"{what} is unreadable ({exc}); export the bundle again") from None
    h, w = bundle.manifest.input_size
    if images.dtype != np.uint8 or images.shape[1:] != (h, w, 3) or embeddings.shape != (
            len(images), bundle.manifest.embedding_dim):
        raise SelfCheckError(f"{what} holds images {images.shape} and embeddings {embeddings.shape}, which do not "
                             f"fit the manifest ({h}x{w} input, {bundle.manifest.embedding_dim}-d); export again")
    return images, embeddings.astype(np.float32)


def floors_for(bundle: Bundle, precision: str) -> dict[str, float]:
    """The cosine floors an engine running ``bundle`` at ``precision`` is held to."""
    if precision == "int8":
        measured = (selfcheck_entry(bundle.manifest) or {}).get("int8_cosines")
        if isinstance(measured, dict) and all(isinstance(measured.get(k), int | float) for k in ("mean", "min")):
            return {k: round(min(FLOORS["int8"][k], float(measured[k]) - INT8_MARGIN[k]), 6) for k in ("mean", "min")}
    return dict(FLOORS.get(precision, FLOORS["fp32"]))


def cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """float64 ``(N,)`` cosine of each row pair; two all-zero rows count as 1."""
    a, b = reference.astype(np.float64), candidate.astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return np.where((na == 0) & (nb == 0), 1.0, (a * b).sum(1) / np.maximum(na * nb, 1e-30))


def engine_identity(engine: Engine) -> dict[str, Any]:
    """What makes an engine's arithmetic what it is on this machine (the cache key's engine part)."""
    from edgefs.cpu import cpu_info

    ident: dict[str, Any] = {"backend": engine.backend, "precision": engine.precision, "device": engine.device}
    if engine.backend == "onnxruntime":
        import onnxruntime

        ident["library"] = f"onnxruntime {onnxruntime.__version__}"
        ident["providers"] = list(getattr(engine, "providers", []))
    elif engine.backend == "openvino":
        ident["library"] = f"openvino {getattr(engine, 'version', '?')}"
    elif engine.backend == "tensorrt":
        path = Path(engine.engine_path)  # type: ignore[attr-defined]
        stat = path.stat()
        ident["library"] = f"tensorrt {getattr(engine, 'flavour', '?')}"
        ident["engine_file"] = {"name": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    elif engine.backend == "torch":
        torch = sys.modules.get("torch")  # loaded by the torch engine; device code never imports it itself
        ident["library"] = f"torch {getattr(torch, '__version__', '?')}"
    if not engine.device.startswith("cuda"):
        cpu = cpu_info()
        ident["cpu"] = {"arch": cpu.arch, "model": cpu.model, "features": sorted(cpu.features)}
    return ident


def _cache_path(bundle: Bundle, engine: Engine) -> Path:
    entry = selfcheck_entry(bundle.manifest) or {}
    key = {"v": CACHE_VERSION, "bundle": bundle.fingerprint, "reference": entry.get("sha256"),
           "onnx": bundle.onnx_path.name, "engine": engine_identity(engine)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_root() / f"{bundle.fingerprint[:16]}-{digest}.json"


def _read_cache(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(read_limited(path, 1 << 16, "self-check cache entry"))
    except (OSError, ValueError, FileRefused):
        return None
    return doc if isinstance(doc, dict) and doc.get("status") == "verified" else None


def check_engine(engine: Engine, *, use_cache: bool = True) -> SelfCheck:
    """Embed the bundle's reference images with ``engine`` and compare them with the FP32 ones.

    Returns:
        the :class:`SelfCheck` (``failed`` does not raise: :func:`require_selfcheck` does).

    Raises:
        SelfCheckError: a damaged self-check file (never silently skipped).
    """
    bundle = engine.bundle
    started = time.perf_counter()
    floors = floors_for(bundle, engine.precision)
    if selfcheck_entry(bundle.manifest) is None:
        return SelfCheck("unchecked", floors=floors, message=(
            f"bundle {bundle.path.name} carries no reference images (made before bundles checked themselves): its "
            "engine is not self-checked on this machine; export (or quantize) it again to add them"))
    cache = _cache_path(bundle, engine)
    if use_cache:
        hit = _read_cache(cache)
        if hit is not None:
            return SelfCheck("cached", hit.get("mean_cosine"), hit.get("min_cosine"), floors, int(hit.get("images", 0)),
                             time.perf_counter() - started,
                             f"self-check passed earlier on this machine ({cache.name})")
    loaded = load_reference(bundle)
    assert loaded is not None
    images, reference = loaded
    got = np.concatenate([engine.embed(images[i : i + 1]) for i in range(len(images))])
    cos = cosines(reference, got)
    mean, low = float(cos.mean()), float(cos.min())
    seconds = time.perf_counter() - started
    if mean >= floors["mean"] and low >= floors["min"]:
        result = SelfCheck("verified", mean, low, floors, len(images), seconds,
                           f"self-check: {len(images)} reference images, cosine to fp32 mean {mean:.5f}, min "
                           f"{low:.5f} (floors {floors['mean']}, {floors['min']}) in {seconds * 1000:.0f} ms")
        if use_cache:
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(cache, json.dumps({**result.to_json(), "engine": engine_identity(engine),
                                                     "bundle": bundle.fingerprint}, indent=1))
            except OSError:
                pass  # a read-only home: the check runs again next time, which is only slower
        return result
    return SelfCheck("failed", mean, low, floors, len(images), seconds,
                     f"the {engine.describe()} engine's embeddings of bundle {bundle.path.name}'s {len(images)} "
                     f"reference images are too far from the FP32 model's: cosine mean {mean:.5f}, min {low:.5f} "
                     f"(floors {floors['mean']}, {floors['min']})")


def what_to_do(engine: Engine) -> str:
    """The advice that follows a failed self-check, by what failed."""
    from edgefs.runtime.quantized import quantization_info

    bundle = engine.bundle
    if engine.precision == "int8" and quantization_info(bundle) is not None:
        parent = (quantization_info(bundle) or {}).get("parent_path", "the FP32 bundle")
        return (f"quantise again on this machine ('edgefs quantize {parent} --calib DIR --target any'), or use the "
                "FP32 bundle")
    if engine.backend == "tensorrt":
        return "rebuild the engine on this device with 'edgefs build-engine', or use --backend onnxruntime"
    return "try --backend onnxruntime, or reinstall the backend; report the versions with 'edgefs doctor'"
