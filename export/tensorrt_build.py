"""Bundle -> TensorRT engine, checked against ONNX Runtime wherever a GPU can run it.

:func:`build_engine` parses the bundle's ``backbone.onnx`` with the ONNX parser
of a TensorRT flavour (:mod:`edgefs.runtime.trt_flavour`), builds an engine for
batches 1..``max_batch``, runs held-out images through it and through ONNX
Runtime (CPU), and writes ``BUNDLE/engines/<key>.engine`` with a header that
records the key, the calibration and the parity figures
(:mod:`edgefs.runtime.engine_file`). An engine whose figures miss the
precision's tolerance is not written.

* ``--trt tensorrt`` (TensorRT 10.x, JetPack 6): built on the device that will
  run it, at fp32, fp16 or int8 (builder flags; entropy calibration on
  camera-like images from a folder, an ImageFolder or a video).
* ``--trt rtx`` (TensorRT-RTX): compiled ahead of time, on a machine with or
  without a GPU, for every RTX generation the builder targets (or ``targets``).
  Its networks are strongly typed, so fp16 is built from an fp16 copy of the
  graph (inputs and outputs kept: uint8 in, float32 out) and int8 is refused.
  Where no GPU can run the engine, the parity check is skipped with a line that
  says so, and the header records ``verified: false`` and the reason.

No PyTorch here: this runs on the device, which has TensorRT, pycuda, numpy,
OpenCV and ONNX Runtime. TensorRT and pycuda are imported when a build starts.
8.x is not supported.

**What has run.** The TensorRT-RTX build (parser, strongly typed network,
optimisation profile, compute-capability targets, serialization) runs in CI on a
CPU-only machine for every registered backbone (tests/test_trt_build.py). The
TensorRT 10 builder (flags, int8 calibrator, timing cache) and every engine
execution (parity) have never run: no machine this was written on has TensorRT
10 or a GPU (see shared/DEVICE.md); device_tests/test_tensorrt.py runs them
wherever a flavour, pycuda and a GPU are present.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from edgefs.export.parity import episode_agreement, synthetic_images

from edgefs._lazy import require
from edgefs.errors import EdgefsError, MissingDependencyError
from edgefs.fileio import atomic_write_bytes
from edgefs.runtime.bundle import INPUT_NAME, OUTPUT_NAME, Bundle, read_bundle
from edgefs.runtime.calibration import CalibrationSource, open_calibration_source
from edgefs.runtime.engine_file import (
    PRECISIONS,
    EngineKey,
    engine_file_path,
    engines_dir,
    write_engine_file,
)
from edgefs.runtime.selfcheck import cosines
from edgefs.runtime.tensorrt_backend import (
    PrimaryContext,
    TensorRTEngine,
    device_index,
    engine_key,
    gpu_identity,
    import_pycuda,
)
from edgefs.runtime.trt_flavour import AUTO, PORTABLE_GPU, Flavour, resolve_flavour, shared_logger

MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999}
"""Smallest per-image cosine to ONNX Runtime an engine may have; int8 is reported, not gated."""
INT8_WARN_COSINE = 0.99
PARITY_IMAGES = 64
WHY = "edgefs build-engine"


class EngineBuildError(EdgefsError):
    """An engine that cannot be built, or whose outputs are too far from ONNX Runtime's."""


# -- small pure helpers (no TensorRT) ------------------------------------------------------------

def supports(precision: str, compute_capability: str, builder: Any = None) -> bool:
    """Whether this GPU has fast ``precision`` math.

    Uses ``builder.platform_has_fast_fp16/int8`` where TensorRT still has them
    (deprecated in 10.5, "query CUDA directly"), else the compute capability: fast
    fp16 on 5.3, 6.0, 6.2 and 7.0+; int8 (DP4A or tensor cores) on 6.1 and 7.0+.
    """
    if precision == "fp32":
        return True
    attr = {"fp16": "platform_has_fast_fp16", "int8": "platform_has_fast_int8"}[precision]
    if builder is not None and hasattr(builder, attr):
        return bool(getattr(builder, attr))
    major, minor = (int(v) for v in compute_capability.split("."))
    cc = (major, minor)
    if precision == "fp16":
        return cc in ((5, 3), (6, 0), (6, 2)) or cc >= (7, 0)
    return cc == (6, 1) or cc >= (7, 0)


# -- TensorRT pieces (imported lazily; unverified on machines without TensorRT) -------------------

def _make_calibrator(
    trt: ModuleType, cuda: ModuleType, batches: Iterator[np.ndarray] | None, batch_shape: tuple[int, ...],
    cache_path: Path, reuse_cache: bool, log: Callable[[str], None],
) -> Any:
    """An entropy calibrator (``IInt8EntropyCalibrator2``) fed by a calibration stream.

    TensorRT 10.1 deprecated implicit (calibrator-driven) INT8 in favour of explicit
    quantization (Q/DQ nodes in the ONNX graph); the calibrator API still works in
    10.x and is what a plain exported graph needs.
    """

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # pybind classes need the explicit base __init__
            self.batches = batches
            self.batch_count = 0
            self.error: BaseException | None = None
            self.used_cache = False
            self.buffer = cuda.mem_alloc(int(np.prod(batch_shape))) if batches is not None else None

        def get_batch_size(self) -> int:
            return int(batch_shape[0])

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.batches is None or self.error is not None:
                return None
            try:
                batch = next(self.batches)
            except StopIteration:
                return None
            # An exception must not unwind through TensorRT's C++ callback: keep it, end calibration.
            except Exception as exc:
                self.error = exc
                return None
            cuda.memcpy_htod(self.buffer, np.ascontiguousarray(batch, dtype=np.uint8))
            self.batch_count += 1
            if self.batch_count % 10 == 1:
                log(f"calibration batch {self.batch_count}")
            return [int(self.buffer)]

        def read_calibration_cache(self) -> bytes | None:
            if reuse_cache and cache_path.is_file():
                self.used_cache = True
                log(f"using calibration cache {cache_path}")
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            atomic_write_bytes(cache_path, bytes(cache))

    return EntropyCalibrator()


def fp16_graph(onnx_path: Path) -> bytes:
    """An fp16 copy of ``backbone.onnx``, keeping its uint8 input and float32 output, as bytes.

    For strongly typed flavours (TensorRT-RTX), where precision is the graph's own:
    weights and activations become float16; the leading uint8 -> float Cast now
    casts to float16 (0..255 is exact in float16) and a Cast back to float32 ends
    the graph. Uses ONNX Runtime's converter (``onnxruntime.transformers.float16``).
    """
    onnx = require("onnx", install="pip install 'edgefs[rtx]'", why="an fp16 TensorRT-RTX engine")
    float16 = require("onnxruntime.transformers.float16", install="pip install 'edgefs[rtx]'",
                      why="an fp16 TensorRT-RTX engine")
    try:
        model = float16.convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    except Exception as exc:  # onnx raises protobuf, shape-inference and checker errors alike
        raise EngineBuildError(f"cannot make an fp16 copy of {onnx_path} ({type(exc).__name__}: {exc}); re-export "
                               "the bundle, or build --precision fp32") from exc
    return bytes(model.SerializeToString())


def _parse(trt: ModuleType, builder: Any, logger: Any, onnx_path: Path, graph: bytes | None = None) -> tuple[Any, Any]:
    """``backbone.onnx`` (or ``graph``, a rewritten copy of it) -> network; parser errors are raised
    with their node names."""
    # TensorRT 10: explicit batch is the only mode, flags 0 (8.x needed 1 << EXPLICIT_BATCH); networks are
    # weakly typed. TensorRT-RTX: flags 0 gives a strongly typed network, its only kind.
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    parsed = parser.parse(graph, str(onnx_path)) if graph is not None else parser.parse_from_file(str(onnx_path))
    if not parsed:
        lines = []
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            name = err.node_name() if hasattr(err, "node_name") else ""
            op = err.node_operator() if hasattr(err, "node_operator") else ""
            lines.append(f"node {err.node()} {name!r} ({op}): {err.desc()}")
        uint8 = any("uint8" in line.lower() for line in lines)
        raise EngineBuildError(
            f"TensorRT's ONNX parser rejected {onnx_path}:\n  " + "\n  ".join(lines or ["(no parser errors given)"])
            + ("\nTensorRT takes a uint8 input only straight into a Cast. Bundles exported before edgefs cast "
               "the camera input first have a Transpose there: re-export the bundle with 'edgefs export' "
               "(and, on TensorRT 8.x, move to JetPack 6 / TensorRT 10)."
               if uint8 else
               "\nRe-export the bundle with a supported opset, or report the failing node.")
        )
    # The caller keeps the parser alive as long as the network: the network may refer to its weights.
    return network, parser


def _cast_uint8_input(trt: ModuleType, network: Any, log: Callable[[str], None]) -> bool:
    """Make sure the uint8 ``images`` input feeds the graph only through casts to float.

    TensorRT's ``DataType.UINT8`` is an I/O type only: uint8 network inputs must be
    converted to float32/float16 (a cast layer) before other layers use them. The
    exporter puts a ``Cast`` first (``ImageInput``); for a graph that parsed
    although a consumer of the input is not a cast, every consumer is rewired to a
    new float32 cast of it. Values 0..255 are exact in float32 and float16.

    Returns:
        whether a cast was inserted (False when every consumer already is a cast:
        every bundle this edgefs exports).
    """
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    if set(inputs) != {INPUT_NAME}:
        raise EngineBuildError(f"backbone.onnx has inputs {sorted(inputs)}; edgefs graphs have one, {INPUT_NAME!r}")
    tensor = inputs[INPUT_NAME]
    if tensor.dtype != trt.DataType.UINT8:
        raise EngineBuildError(f"backbone.onnx's {INPUT_NAME!r} is {tensor.dtype}; edgefs graphs take uint8 images")
    consumers = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_inputs):
            t = layer.get_input(j)
            if t is not None and t.name == INPUT_NAME:
                consumers.append((layer, j))
    if all(layer.type == trt.LayerType.CAST for layer, _ in consumers):
        return False
    cast = network.add_cast(tensor, trt.DataType.FLOAT)  # 10.x; 8.x used add_identity + set_output_type
    cast.name = "edgefs/images_uint8_to_float32"
    for layer, j in consumers:
        layer.set_input(j, cast.get_output(0))
    log(f"inserted a uint8 -> float32 cast before {len(consumers)} layer(s) reading {INPUT_NAME!r}")
    return True


def _set_precision(
    trt: ModuleType, builder: Any, config: Any, flavour: Flavour, precision: str, compute_capability: str | None,
) -> None:
    """Weakly typed flavours: builder flags for ``precision``, refused where the GPU lacks fast math.
    Strongly typed ones have no flags: the graph's types (:func:`fp16_graph`) are the precision."""
    if flavour.strongly_typed:
        return
    assert compute_capability is not None
    if not supports(precision, compute_capability, builder):
        raise EngineBuildError(
            f"this GPU (compute capability {compute_capability}) has no fast {precision} math, so a {precision} "
            "engine would be slower, not faster; build --precision fp32"
            + (" or fp16" if precision == "int8" and supports("fp16", compute_capability, builder) else "")
        )
    if precision == "fp16" or (precision == "int8" and supports("fp16", compute_capability, builder)):
        config.set_flag(trt.BuilderFlag.FP16)  # int8 too: layers TensorRT cannot quantize fall back to fp16
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)


def _serialize(
    trt: ModuleType, flavour: Flavour, cuda: ModuleType | None, bundle: Bundle, precision: str, max_batch: int,
    workspace_mb: int, key: EngineKey, source: CalibrationSource | None, calib_images: int, calib_cache: Path,
    timing_cache: Path | None, log: Callable[[str], None], graph: bytes | None = None,
) -> tuple[bytes, dict[str, Any], dict[str, Any] | None]:
    """Build and serialize ``graph`` (a rewritten copy of ``backbone.onnx``) or ``backbone.onnx`` itself;
    returns ``(engine bytes, build facts, calibration facts or None)``."""
    logger, errors = shared_logger(trt, log)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, bundle.onnx_path, graph)
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    if outputs != [OUTPUT_NAME]:
        raise EngineBuildError(f"backbone.onnx has outputs {outputs}; edgefs graphs have one, {OUTPUT_NAME!r}")
    inserted_cast = _cast_uint8_input(trt, network, log)
    h, w = bundle.manifest.input_size
    batch_dim = network.get_input(0).shape[0]
    if batch_dim != -1 and batch_dim != max_batch:
        raise EngineBuildError(f"backbone.onnx has a fixed batch of {batch_dim}; re-export it with a dynamic batch")
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (1, h, w, 3), (max_batch, h, w, 3), (max_batch, h, w, 3))
    config = builder.create_builder_config()
    config.add_optimization_profile(profile)
    # TensorRT 10 and TensorRT-RTX: memory pools. (8.x before 8.4: config.max_workspace_size.)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if key.gpu_name == PORTABLE_GPU:
        flavour.set_targets(trt, config, key.targets())
    _set_precision(trt, builder, config, flavour, precision, None if key.gpu_name == PORTABLE_GPU
                   else key.compute_capability)
    calibrator = None
    if precision == "int8":
        assert cuda is not None  # int8 is refused earlier for flavours that build without a GPU
        batches = source.batches(calib_images, max_batch) if source is not None else None
        calibrator = _make_calibrator(trt, cuda, batches, (max_batch, h, w, 3), calib_cache,
                                      reuse_cache=source is None, log=log)
        config.int8_calibrator = calibrator
        # With a dynamic batch, calibration runs at the calibration profile's opt shape: full batches.
        config.set_calibration_profile(profile)
    cache = None
    if timing_cache is not None and flavour.builds_without_gpu:
        log(f"{flavour.description} compiles ahead of time without timing kernels; --timing-cache is not used")
        timing_cache = None
    if timing_cache is not None:
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        if not config.set_timing_cache(cache, False):  # False: refuse a cache from another GPU/TensorRT
            log(f"timing cache {timing_cache} is from another GPU or TensorRT version; starting a new one")
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, False)
    targets = f" for compute capabilities {', '.join(key.targets())}" if key.gpu_name == PORTABLE_GPU else ""
    typed = " (fp16 graph, strongly typed)" if graph is not None else ""
    log(f"building {precision} engine{typed} for batches 1..{max_batch}{targets} (workspace {workspace_mb} MiB)")
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if calibrator is not None and calibrator.error is not None:
        raise EngineBuildError(f"calibration failed: {calibrator.error}") from calibrator.error
    if serialized is None:
        shown = "\n  ".join(errors[-10:]) or "(TensorRT logged no error)"
        raise EngineBuildError(f"{flavour.description} could not build the {precision} engine:\n  {shown}\n"
                               "Try a larger --workspace, another precision, or report the message.")
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
        log(f"timing cache saved to {timing_cache}")
    build = {"seconds": round(seconds, 3), "workspace_mb": int(workspace_mb), "uint8_input_cast": inserted_cast,
             "timing_cache": str(timing_cache) if timing_cache is not None else None,
             "flavour": flavour.name, "strongly_typed": flavour.strongly_typed,
             "graph": "fp16 copy (onnxruntime.transformers.float16, io types kept)" if graph is not None
             else "backbone.onnx"}
    calibration = None
    if calibrator is not None:
        calibration = {"algorithm": "entropy2", "cache": calib_cache.name, "cache_reused": calibrator.used_cache,
                       "batches": calibrator.batch_count, "batch_size": max_batch,
                       "images": calibrator.batch_count * max_batch,
                       "source": source.describe() if source is not None else None}
    return bytes(serialized), build, calibration


# -- parity ---------------------------------------------------------------------------------------

def _parity_images(
    bundle: Bundle, source: CalibrationSource | None, count: int, seed: int, log: Callable[[str], None]
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Held-out images (and labels) for the parity check, and where they came from."""
    if source is not None:
        images, labels = source.held_out(count)
        if len(images) >= min(count, 8):
            return images, labels, {"images": "held-out from calibration source", **source.describe()}
        log(f"{source.path} has only {len(images)} images left after calibration; using synthetic parity images")
    return (synthetic_images(count, bundle.manifest.input_size, seed), None,
            {"images": "synthetic (seeded gradients, rectangles and noise)", "seed": seed})


def check_graph_parity(bundle: Bundle, graph: bytes, images: np.ndarray) -> dict[str, Any]:
    """A rewritten graph (the fp16 copy) against ``backbone.onnx``, both in ONNX Runtime on the CPU.

    This checks the graph a strongly typed flavour compiles, on any machine: the
    conversion and the weights rounded to float16. It does not check fp16
    arithmetic: ONNX Runtime's CPU provider runs many float16 operators in float32
    behind inserted casts. The engine itself is compared by
    :func:`check_engine_parity` where a GPU runs it.

    Returns:
        ``{"reference", "images", "min_cosine", "mean_cosine", "max_abs_diff", "threshold", "passed"}``
        (threshold: :data:`MIN_COSINE` for fp16).
    """
    from edgefs.runtime.onnxruntime_backend import OnnxRuntimeEngine

    ort = require("onnxruntime", install="pip install 'edgefs[rtx]'", why="the fp16 graph check")
    reference = OnnxRuntimeEngine(bundle, device="cpu").embed(images)
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images)})
    cos = cosines(reference, got)
    threshold = MIN_COSINE["fp16"]
    return {"reference": "backbone.onnx, onnxruntime CPUExecutionProvider", "images": len(images),
            "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "max_abs_diff": float(np.abs(reference - got).max()), "threshold": threshold,
            "passed": bool(cos.min() >= threshold)}


def check_engine_parity(
    engine: TensorRTEngine, bundle: Bundle, images: np.ndarray, labels: np.ndarray | None, precision: str,
) -> dict[str, Any]:
    """TensorRT against ONNX Runtime (CPU) on ``images``, at the engine's max batch and at batch 1.

    Returns:
        ``{"rows": [...], "min_cosine", "mean_cosine", "max_abs_diff", "threshold", "passed"}``
        plus ``"episodes"`` (:func:`episode_agreement`) when ``labels`` are given.
    """
    from edgefs.runtime.onnxruntime_backend import OnnxRuntimeEngine

    reference = OnnxRuntimeEngine(bundle, device="cpu").embed(images)
    got = engine.embed(images)  # chunks of max_batch
    single_n = min(8, len(images))
    single = np.concatenate([engine.embed(images[i:i + 1]) for i in range(single_n)])
    rows = []
    for batch, ref, cand in ((engine.max_batch, reference, got), (1, reference[:single_n], single)):
        cos = cosines(ref, cand)
        rows.append({"batch": batch, "images": len(cand), "min_cosine": float(cos.min()),
                     "mean_cosine": float(cos.mean()), "max_abs_diff": float(np.abs(ref - cand).max())})
    threshold = MIN_COSINE.get(precision)
    min_cos = min(r["min_cosine"] for r in rows)
    figures: dict[str, Any] = {
        "reference": "onnxruntime CPUExecutionProvider", "rows": rows, "min_cosine": min_cos,
        "mean_cosine": rows[0]["mean_cosine"], "max_abs_diff": max(r["max_abs_diff"] for r in rows),
        "threshold": threshold, "passed": threshold is None or min_cos >= threshold,
    }
    if labels is not None:
        distance = str(bundle.manifest.head.get("params", {}).get("distance", "euclidean"))
        figures["episodes"] = episode_agreement(reference, got, labels, "cosine" if distance == "cosine" else
                                                "euclidean")
    return figures


# -- the entry point ------------------------------------------------------------------------------

def _gpu_for_parity(index: int) -> tuple[ModuleType | None, str | None]:
    """``(pycuda.driver, None)`` where CUDA device ``index`` exists, else ``(None, why not)``."""
    try:
        cuda = import_pycuda(WHY)
    except MissingDependencyError:
        return None, "pycuda is not installed (pip install 'edgefs[cuda]'), so no CUDA GPU can be used"
    except EdgefsError as exc:  # the driver did not initialise: no GPU or no driver
        return None, str(exc)
    if index >= cuda.Device.count():
        return None, f"no CUDA device {index} (this machine has {cuda.Device.count()})"
    return cuda, None


def build_engine(
    bundle: Bundle | str | Path,
    precision: str = "fp16",
    calib: str | Path | None = None,
    calib_images: int = 500,
    max_batch: int = 8,
    workspace_mb: int = 1024,
    timing_cache: str | Path | None = None,
    log: Callable[[str], None] = print,
    device: str | None = None,
    parity_images: int = PARITY_IMAGES,
    seed: int = 0,
    trt: str = AUTO,
    targets: list[str] | None = None,
) -> Path:
    """Build, check and store a TensorRT engine for a bundle.

    Args:
        bundle: the bundle folder (or an opened :class:`Bundle`).
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"`` (int8: ``tensorrt`` flavour only).
        calib: a folder of images, an ImageFolder or a video: int8 calibration images
            (required for int8 unless a calibration cache for this key exists in
            ``BUNDLE/engines/``) and held-out parity images for every precision.
        calib_images: how many calibration images (rounded down to full batches).
        max_batch: the engine's largest batch (optimisation profile min 1, opt = max = this).
        workspace_mb: TensorRT's workspace memory pool limit.
        timing_cache: a timing cache file to load (if present) and save, to speed up rebuilds
            (``tensorrt`` flavour; TensorRT-RTX does not time kernels ahead of time).
        log: receives progress lines.
        device: ``"cuda"`` or ``"cuda:N"``: the GPU to build for (``tensorrt``) and to run
            the parity check on.
        parity_images: held-out images compared with ONNX Runtime.
        seed: shuffle seed for the calibration folder and synthetic parity images.
        trt: the TensorRT flavour, ``"tensorrt"``, ``"rtx"`` or ``"auto"``
            (:func:`~edgefs.runtime.trt_flavour.resolve_flavour`: ``tensorrt`` where installed).
        targets: ``rtx`` only: compute capabilities to compile for (``["8.6", "8.9"]``);
            default every one the builder knows.

    Returns:
        the engine file, ``BUNDLE/engines/<fingerprint>_trt<ver>_<gpu>_sm<cc>_<precision>_b<B>.engine``
        (``..._rtx<ver>_any_sm75-80-..._<precision>_b<B>.engine`` for TensorRT-RTX).

    Raises:
        MissingDependencyError: the flavour, pycuda (``tensorrt`` flavour) or onnxruntime is missing.
        EngineBuildError: parser errors (with node names), a precision this GPU or flavour
            lacks, a failed build, or fp32/fp16 parity below :data:`MIN_COSINE` (nothing is written).
        CalibrationError: an unusable calibration source.
    """
    if precision not in PRECISIONS:
        raise EngineBuildError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if max_batch < 1 or workspace_mb < 1 or calib_images < 1 or parity_images < 1:
        raise EngineBuildError("max_batch, workspace_mb, calib_images and parity_images must be at least 1")
    bundle = bundle if isinstance(bundle, Bundle) else read_bundle(bundle)
    flavour = resolve_flavour(trt)
    try:
        flavour.check_precision(precision)
    except EdgefsError as exc:
        raise EngineBuildError(str(exc)) from None
    if targets is not None and not flavour.builds_without_gpu:
        raise EngineBuildError(f"{flavour.description} builds for the GPU it runs on; compute-capability targets "
                               "are for --trt rtx")
    module = flavour.load(WHY)
    index = device_index(device)
    # Which GPU can run the engine for the parity check (and, for TensorRT, build it): none is an
    # error for TensorRT, and a reason to skip parity for an ahead-of-time flavour.
    cuda, no_gpu = _gpu_for_parity(index) if flavour.builds_without_gpu else (import_pycuda(WHY), None)
    if flavour.builds_without_gpu:
        chosen = targets if targets is not None else flavour.all_targets(module)
        chosen = sorted(set(chosen), key=lambda cc: tuple(int(p) for p in cc.split(".")))
        if not chosen:
            raise EngineBuildError(f"{flavour.description} {flavour.version(module)} lists no compute capabilities")
        key = EngineKey(bundle.fingerprint, flavour.version(module), PORTABLE_GPU, "+".join(chosen), precision,
                        int(max_batch), flavour.name)
        if no_gpu is None:
            gpu, cc = gpu_identity(index)
            if cc not in chosen:
                no_gpu = f"this GPU ({gpu}, compute capability {cc}) is not among the engine's targets"
    else:
        key = engine_key(bundle, precision, max_batch, index, flavour.name)
    out = engine_file_path(bundle.path, key)
    calib_cache = engines_dir(bundle.path) / (key.stem() + ".calib")
    source = open_calibration_source(calib, bundle.manifest.input_size, seed=seed, warn=log) if calib else None
    if precision == "int8" and source is None and not calib_cache.is_file():
        raise EngineBuildError(
            f"int8 needs calibration images: pass --calib DIR|VIDEO (camera-like images, a few hundred), "
            f"or keep a calibration cache at {calib_cache}"
        )
    where = (f"ahead of time for compute capabilities {', '.join(key.targets())}" if key.gpu_name == PORTABLE_GPU
             else f"on {key.gpu_name} (sm {key.compute_capability})")
    log(f"{flavour.description} {key.trt_version} {where}; bundle {bundle.path} ({bundle.fingerprint[:12]})")
    timing = Path(timing_cache) if timing_cache is not None else None
    graph = graph_parity = None
    if flavour.strongly_typed and precision == "fp16":
        graph = fp16_graph(bundle.onnx_path)
        images, _, origin = _parity_images(bundle, source, parity_images, seed, log)
        graph_parity = {**check_graph_parity(bundle, graph, images), "data": origin}
        log(f"fp16 graph vs backbone.onnx in onnxruntime (CPU): {graph_parity['images']} images, min cosine "
            f"{graph_parity['min_cosine']:.6f}, max abs diff {graph_parity['max_abs_diff']:.3g}")
        if not graph_parity["passed"]:
            raise EngineBuildError(
                f"the fp16 copy of the graph is too far from backbone.onnx in ONNX Runtime: min cosine "
                f"{graph_parity['min_cosine']:.6f} < {graph_parity['threshold']}; no engine was built. Build fp32."
            )
    if flavour.builds_without_gpu:
        blob, build, calibration = _serialize(module, flavour, cuda, bundle, precision, max_batch, workspace_mb, key,
                                              source, calib_images, calib_cache, timing, log, graph)
    else:
        assert cuda is not None
        with PrimaryContext(cuda, index).active():
            blob, build, calibration = _serialize(module, flavour, cuda, bundle, precision, max_batch, workspace_mb,
                                                  key, source, calib_images, calib_cache, timing, log, graph)
    if graph_parity is not None:
        build["graph_parity"] = graph_parity
    log(f"built in {build['seconds']:.2f} s: {len(blob) / 1e6:.2f} MB")
    info: dict[str, Any] = {"build": build, "calibration": calibration,
                            "bundle": {"path": str(bundle.path), "input_size": list(bundle.manifest.input_size),
                                       "backbone": bundle.manifest.backbone.get("name")}}
    if no_gpu is not None:
        reason = f"no GPU could run the engine here ({no_gpu})"
        log(f"parity vs onnxruntime: NOT RUN: {reason}. The engine is written unverified (header 'verified': "
            f"false); build it again where an RTX-class GPU, pycuda and {flavour.description} are present to "
            "compare it with ONNX Runtime")
        write_engine_file(out, key, blob, {**info, "verified": False, "parity": {"run": False, "reason": reason}})
        log(f"engine written (unverified): {out}")
        return out
    # Parity runs on the file as the runtime will load it; the file only takes its final name once it passed.
    partial = out.with_name("." + out.name + ".partial")
    write_engine_file(partial, key, blob, info)
    try:
        images, labels, origin = _parity_images(bundle, source, parity_images, seed, log)
        engine = TensorRTEngine(bundle, device=f"cuda:{index}", precision=precision, engine_path=partial)
        try:
            parity = check_engine_parity(engine, bundle, images, labels, precision)
        finally:
            engine.close()
        parity["data"] = origin
        _report(parity, precision, log)
        if not parity["passed"]:
            raise EngineBuildError(
                f"the {precision} engine's embeddings are too far from ONNX Runtime's: min cosine "
                f"{parity['min_cosine']:.6f} < {parity['threshold']} on {len(images)} images; no engine was "
                "written. Try fp32, or report the bundle."
            )
        write_engine_file(out, key, blob, {**info, "verified": True, "parity": {"run": True, **parity}})
    finally:
        partial.unlink(missing_ok=True)
    log(f"engine written: {out}")
    return out


def _report(parity: dict[str, Any], precision: str, log: Callable[[str], None]) -> None:
    for row in parity["rows"]:
        log(f"parity vs onnxruntime, batch {row['batch']}: {row['images']} images, min cosine "
            f"{row['min_cosine']:.6f}, mean {row['mean_cosine']:.6f}, max abs diff {row['max_abs_diff']:.3g}")
    episodes = parity.get("episodes")
    if episodes:
        log(f"held-out episodes ({episodes['episodes']} x {episodes['ways']}-way {episodes['shots']}-shot): "
            f"top-1 agreement {episodes['top1_agreement']:.4f}; accuracy onnxruntime "
            f"{episodes['accuracy_reference']:.4f}, tensorrt {episodes['accuracy_candidate']:.4f}")
    if precision == "int8" and parity["min_cosine"] < INT8_WARN_COSINE:
        log(f"warning: int8 min cosine {parity['min_cosine']:.4f} is below {INT8_WARN_COSINE}; check the episode "
            "agreement, calibrate on more camera-like images, or use fp16")
