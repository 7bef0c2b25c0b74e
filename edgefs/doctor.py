"""``edgefs doctor``: what this device is, what it has installed, and how each engine runs a bundle here.

What a user runs first on a new device. It gathers, as plain dicts (the JSON report):

- the system (OS, Python, edgefs), the CPU (:func:`edgefs.cpu.cpu_info`: model, cores,
  instruction sets, the INT8 class an INT8 bundle must suit) and memory (``/proc/meminfo``);
- the GPU side: NVIDIA GPUs and driver (``nvidia-smi``, else ``/proc/driver/nvidia/version``),
  the Jetson model and L4T release, CUDA (``nvcc``, ``libcudart``, whether ``pycuda`` imports)
  and the TensorRT flavours installed;
- the engines installed (ONNX Runtime and its providers, OpenVINO, PyTorch -- found, never
  imported) and the camera stack (OpenCV and its GStreamer / V4L2 / FFMPEG video I/O);
- for each bundle given, every engine backend that can run it here: the bundle's self-check
  (:mod:`edgefs.runtime.selfcheck`; a failure is reported, not raised) and the batch-1 embed
  throughput the engine sustains now, as frames per second and 30 FPS cameras.

Whatever is missing is a row saying so and what to install, never an error. Torch-free:
PyTorch is looked up with ``importlib.util.find_spec`` and its version read from its metadata.
"""

from __future__ import annotations

import ctypes.util
import importlib
import importlib.util
import json
import math
import platform
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgefs import __version__
from edgefs.cpu import cpu_info
from edgefs.errors import EdgefsError
from edgefs.runtime import onnxruntime_backend, openvino_backend, tensorrt_backend, torch_backend, trt_flavour

MEMINFO = Path("/proc/meminfo")
NVIDIA_PROC_VERSION = Path("/proc/driver/nvidia/version")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
TEGRA_RELEASE = Path("/etc/nv_tegra_release")
CUDA_HOMES = (Path("/usr/local/cuda"),)
"""Where a CUDA toolkit sits when ``nvcc`` is not on the PATH (a Jetson's JetPack puts it here)."""
CAMERA_FPS = 30
DEFAULT_SECONDS = 3.0
VIDEO_IO = (("GStreamer", "GStreamer"), ("V4L2", "v4l/v4l2"), ("FFMPEG", "FFMPEG"))
"""``(name shown, name in cv2.getBuildInformation())`` of the video I/O backends that matter here."""
OPENCV_INSTALL = ("pip install opencv-python-headless (on a Jetson: JetPack's python3-opencv, which has "
                  "GStreamer)")
PYCUDA_INSTALL = tensorrt_backend.PYCUDA_INSTALL
TORCH_INSTALL = torch_backend.INSTALL
SMI_QUERY = ["--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"]
STATUS_FAILED = "failed"
STATUS_SKIPPED = "skipped"
AUTO_ORDER = ("tensorrt", "rtx")
"""The TensorRT flavours in the order ``--trt auto`` tries them (:func:`edgefs.runtime.trt_flavour.resolve_flavour`)."""
WIDTH = 118
"""Where the table's long values and messages wrap."""


# -- the machine -------------------------------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def system_facts() -> dict[str, Any]:
    """OS, Python and edgefs versions."""
    return {"os": platform.platform(), "python": platform.python_version(),
            "python_executable": sys.executable, "edgefs": __version__}


def cpu_facts() -> dict[str, Any]:
    """:func:`edgefs.cpu.cpu_info` as a dict, with the INT8 dot-product instructions picked out."""
    info = cpu_info()
    features = info.features
    return {**info.to_json(),
            "vnni": [f for f in ("AVX512VNNI", "AVX_VNNI") if f in features],
            "amx": [f for f in ("AMX_INT8", "AMX_BF16") if f in features],
            "arm_dot_product": "ASIMDDP" in features, "i8mm": "I8MM" in features}


def memory_facts(meminfo: Path | None = None) -> dict[str, Any]:
    """Total and available memory in bytes from ``/proc/meminfo``; ``{"error"}`` where it cannot be read."""
    text = _read(meminfo or MEMINFO)
    if text is None:
        return {"error": f"{meminfo or MEMINFO} cannot be read (not Linux?)"}
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if key in ("MemTotal", "MemAvailable") and parts and parts[0].isdigit():
            found[key] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    return {"total_bytes": found.get("MemTotal"), "available_bytes": found.get("MemAvailable")}


def _run(command: list[str], timeout: float = 15.0) -> tuple[int, str]:
    """``(exit status, stdout + stderr)`` of a short command; 127 where it cannot be started."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return 127, str(exc)
    return done.returncode, (done.stdout or "") + (done.stderr or "")


def nvidia_facts() -> dict[str, Any]:
    """NVIDIA GPUs and driver: ``nvidia-smi`` where it is on the PATH, else the kernel module's version file.

    Returns:
        ``{"source", "gpus": [{"name", "driver", "memory", "compute_cap"}], "driver", "error"?}``;
        ``source`` is ``None`` where neither was found.
    """
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        status, out = _run([smi, *SMI_QUERY])
        if status == 0:
            gpus = []
            for line in out.strip().splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) >= 4:
                    gpus.append({"name": parts[0], "driver": parts[1], "memory": parts[2], "compute_cap": parts[3]})
            return {"source": "nvidia-smi", "gpus": gpus, "driver": gpus[0]["driver"] if gpus else None}
        first = next((line.strip() for line in out.splitlines() if line.strip()), f"exit status {status}")
        return {"source": "nvidia-smi", "gpus": [], "driver": None, "error": f"nvidia-smi failed: {first}"}
    text = _read(NVIDIA_PROC_VERSION)
    if text is not None:
        first = text.strip().splitlines()[0] if text.strip() else ""
        match = re.search(r"Kernel Module(?: for \S+)?\s+([\d.]+)", first)
        return {"source": str(NVIDIA_PROC_VERSION), "gpus": [], "driver": match.group(1) if match else first}
    return {"source": None, "gpus": [], "driver": None}


def jetson_facts() -> dict[str, Any]:
    """The board's model (``/proc/device-tree/model``) and the Jetson L4T release (``/etc/nv_tegra_release``)."""
    model = _read(DEVICE_TREE_MODEL)
    model = model.strip("\x00\n ") if model else None
    release_text = _read(TEGRA_RELEASE)
    release = None
    if release_text:
        match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", release_text)
        release = f"L4T R{match.group(1)}.{match.group(2)}" if match else release_text.strip().splitlines()[0]
    is_jetson = release is not None or bool(model and ("jetson" in model.lower() or "nvidia" in model.lower()))
    return {"jetson": is_jetson, "board_model": model, "l4t": release}


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for home in CUDA_HOMES:
        if (home / "bin" / "nvcc").is_file():
            return str(home / "bin" / "nvcc")
    return None


def _libcudart() -> str | None:
    name = ctypes.util.find_library("cudart")
    if name:
        return name
    for home in CUDA_HOMES:
        for lib in ("lib64", "lib", "targets/aarch64-linux/lib", "targets/x86_64-linux/lib"):
            hits = sorted((home / lib).glob("libcudart.so*"))
            if hits:
                return str(hits[0])
    return None


def cuda_facts() -> dict[str, Any]:
    """The CUDA toolkit (``nvcc --version``), the runtime library, and whether ``pycuda.driver`` imports."""
    facts: dict[str, Any] = {"nvcc": None, "nvcc_version": None, "libcudart": _libcudart()}
    nvcc = _nvcc()
    if nvcc is not None:
        facts["nvcc"] = nvcc
        status, out = _run([nvcc, "--version"])
        match = re.search(r"release ([\d.]+)", out)
        facts["nvcc_version"] = match.group(1) if status == 0 and match else None
    pycuda: dict[str, Any] = {"installed": False, "importable": False, "install": PYCUDA_INSTALL}
    if importlib.util.find_spec("pycuda") is not None:
        pycuda["installed"] = True
        pycuda["version"] = _dist_version("pycuda")
        try:
            importlib.import_module("pycuda.driver")  # loads libcuda, initialises nothing
            pycuda["importable"] = True
        except Exception as exc:  # an extension built against another CUDA: ImportError, OSError...
            pycuda["error"] = f"{type(exc).__name__}: {exc}"
    facts["pycuda"] = pycuda
    return facts


def _dist_version(module: str) -> str | None:
    """The installed distribution version of top-level ``module`` (by its metadata, without importing it)."""
    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        pass
    for dist in metadata.packages_distributions().get(module, []):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def tensorrt_facts() -> list[dict[str, Any]]:
    """Each TensorRT flavour: installed (``trt_flavour.installed_flavours``), its version, what to install."""
    installed = {f.name for f in trt_flavour.installed_flavours()}
    rows = []
    for flavour in _all_flavours():
        name = flavour.name
        row: dict[str, Any] = {"flavour": name, "description": flavour.description, "module": flavour.module,
                               "installed": name in installed}
        if name in installed:
            row["version"] = _dist_version(flavour.module) or _module_version(flavour.module)
        else:
            row["install"] = flavour.install
        rows.append(row)
    return rows


def _module_version(module: str) -> str | None:
    """``module.__version__`` where its metadata does not say (TensorRT from JetPack's apt packages)."""
    try:
        return str(importlib.import_module(module).__version__)
    except Exception:  # a broken install must not stop the doctor
        return None


def gpu_facts() -> dict[str, Any]:
    """NVIDIA GPUs, the Jetson board, CUDA and TensorRT."""
    return {"nvidia": nvidia_facts(), "jetson": jetson_facts(), "cuda": cuda_facts(), "tensorrt": tensorrt_facts()}


def engine_facts() -> dict[str, Any]:
    """The engine stacks installed: ONNX Runtime (and its providers), OpenVINO, PyTorch (found, not imported)."""
    facts: dict[str, Any] = {}
    providers = onnxruntime_backend.available_providers()
    ort: dict[str, Any] = {"installed": bool(providers), "providers": providers}
    if providers:
        ort["version"] = str(onnxruntime_backend.import_onnxruntime().__version__)
    else:
        ort["install"] = onnxruntime_backend.INSTALL
    facts["onnxruntime"] = ort
    ov: dict[str, Any] = {"installed": openvino_backend.openvino_available()}
    if ov["installed"]:
        ov["version"] = str(openvino_backend.import_openvino().__version__).split("-")[0]
    else:
        ov["install"] = openvino_backend.INSTALL
    facts["openvino"] = ov
    try:
        torch_found = importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        torch_found = False
    facts["torch"] = ({"installed": True, "version": _dist_version("torch"), "imported": False} if torch_found
                      else {"installed": False, "install": TORCH_INSTALL + " (workstation: training and export; "
                                                                           "not needed on the device)"})
    return facts


def camera_facts() -> dict[str, Any]:
    """OpenCV's version and which video I/O backends it was built with."""
    try:
        import cv2

        from edgefs.camera.sources.video import opencv_has
    except ImportError as exc:
        return {"installed": False, "error": str(exc), "install": OPENCV_INSTALL}
    return {"installed": True, "opencv": cv2.__version__,
            "video_io": {shown: opencv_has(name) for shown, name in VIDEO_IO}}


# -- a bundle on each engine -------------------------------------------------------------------


def bundle_candidates(bundle: Any) -> list[dict[str, Any]]:
    """The engine backends that can run ``bundle`` here, and the ones that cannot, with why.

    Returns:
        rows ``{"backend", "device", "precision"}`` to open, and ``{"backend", "status":
        "skipped", "message"}`` for the ones that cannot run here.
    """
    from edgefs.runtime.quantized import graph_precision

    precision = graph_precision(bundle)
    rows: list[dict[str, Any]] = []
    providers = onnxruntime_backend.available_providers()
    if providers:
        rows.append({"backend": "onnxruntime", "device": "cpu", "precision": precision})
        if onnxruntime_backend.CUDA_EP in providers and precision == "fp32":
            rows.append({"backend": "onnxruntime", "device": "cuda", "precision": precision})
    else:
        rows.append({"backend": "onnxruntime", "status": STATUS_SKIPPED,
                     "message": f"onnxruntime is not installed: {onnxruntime_backend.INSTALL}"})
    if openvino_backend.openvino_available():
        rows.append({"backend": "openvino", "device": "cpu", "precision": precision})
    else:
        rows.append({"backend": "openvino", "status": STATUS_SKIPPED,
                     "message": f"openvino is not installed: {openvino_backend.INSTALL}"})
    rows.extend(_tensorrt_candidates(bundle))
    return rows


def _all_flavours() -> list[trt_flavour.Flavour]:
    names = trt_flavour.FLAVOURS.names()
    ordered = [n for n in AUTO_ORDER if n in names] + sorted(n for n in names if n not in AUTO_ORDER)
    return [trt_flavour.FLAVOURS.get(n) for n in ordered]


def _tensorrt_candidates(bundle: Any) -> list[dict[str, Any]]:
    flavours = trt_flavour.installed_flavours()
    if not flavours:
        return [{"backend": "tensorrt", "status": STATUS_SKIPPED,
                 "message": "TensorRT is not installed ('import tensorrt' and 'import tensorrt_rtx_bindings' fail); "
                            + "; ".join(f"{f.description}: {f.install}" for f in _all_flavours())}]
    try:
        tensorrt_backend.gpu_identity(0)
    except EdgefsError as exc:
        return [{"backend": "tensorrt", "status": STATUS_SKIPPED,
                 "message": f"{', '.join(f.description for f in flavours)} installed, but its engines cannot "
                            f"run here: {exc}"}]
    rows = []
    for precision in ("fp16", "fp32", "int8"):
        if tensorrt_backend.find_engine(bundle, precision) is not None:
            rows.append({"backend": "tensorrt", "device": "cuda:0", "precision": precision})
    if not rows:
        rows.append({"backend": "tensorrt", "status": STATUS_SKIPPED,
                     "message": f"no TensorRT engine built for bundle {bundle.fingerprint[:12]} on this GPU and "
                                f"TensorRT version; build one with 'edgefs build-engine {bundle.path}'"})
    return rows


def engine_rate(engine: Any, images: np.ndarray, seconds: float = DEFAULT_SECONDS) -> dict[str, Any]:
    """Batch-1 embed throughput of ``engine`` alone: ``images`` one at a time, for about ``seconds``.

    Returns:
        ``{"frames_per_s", "cameras_30fps", "frames", "seconds", "p50_ms", "mean_ms"}``;
        ``cameras_30fps`` is ``floor(frames_per_s / 30)``.
    """
    from edgefs.runtime.bench import latency_stats

    count = len(images)
    for i in range(min(3, count)):  # warm-up: allocations, lazy initialisation
        engine.embed(images[i : i + 1])
    times: list[float] = []
    start = time.perf_counter()
    while True:
        k = len(times) % count
        t0 = time.perf_counter()
        engine.embed(images[k : k + 1])
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if t1 - start >= seconds and len(times) >= 3:
            break
    elapsed = time.perf_counter() - start
    fps = len(times) / elapsed
    stats = latency_stats(times, 1)
    return {"frames_per_s": round(fps, 1), "cameras_30fps": math.floor(fps / CAMERA_FPS), "frames": len(times),
            "seconds": round(elapsed, 3), "p50_ms": round(stats["p50_ms"], 3), "mean_ms": round(stats["mean_ms"], 3)}


def _rate_images(bundle: Any, reference: np.ndarray | None) -> tuple[np.ndarray, str]:
    if reference is not None:
        return reference, f"the bundle's {len(reference)} self-check reference images"
    from edgefs.runtime.bench import camera_frame
    from edgefs.runtime.preprocess import to_batch

    return to_batch([camera_frame(seed) for seed in range(4)], bundle), \
        "4 synthetic camera frames (the bundle has no reference images)"


def check_on_engine(bundle: Any, candidate: dict[str, Any], reference_error: str | None,
                    rate_images: tuple[np.ndarray, str] | None, seconds: float,
                    progress: Callable[[str], None]) -> dict[str, Any]:
    """Open one engine on ``bundle`` (no self-check inside), check it, and time it; failures become the row."""
    from edgefs.runtime.quantized import unclaimed_cpu
    from edgefs.runtime.select import open_engine
    from edgefs.runtime.selfcheck import SelfCheckError, check_engine, what_to_do

    row: dict[str, Any] = {**candidate, "engine": None, "status": STATUS_FAILED, "selfcheck": None, "rate": None,
                           "message": ""}
    notes: list[str] = []
    started = time.perf_counter()
    try:
        engine = open_engine(bundle, backend=candidate["backend"], device=candidate["device"],
                             precision=candidate["precision"], threads=None, log=notes.append, selfcheck=False)
    except EdgefsError as exc:
        row["message"] = f"cannot open: {exc}"
        return row
    except Exception as exc:  # a diagnostic reports what a backend throws; it does not crash on it
        row["message"] = f"cannot open: unexpected {type(exc).__name__}: {exc}"
        return row
    try:
        row["open_ms"] = round((time.perf_counter() - started) * 1000, 1)
        row["engine"] = engine.describe()
        row["threads"] = getattr(engine, "threads", None)
        row["notes"] = [n for n in notes if not n.startswith("engine: ")]
        if reference_error is not None:
            row["message"] = reference_error
            return row
        try:
            result = check_engine(engine)
        except SelfCheckError as exc:
            row["message"] = str(exc)
            return row
        except Exception as exc:  # an engine that cannot embed: reported like a failed check
            row["message"] = f"embedding the reference images failed: {type(exc).__name__}: {exc}"
            return row
        row["selfcheck"] = result.to_json()
        row["status"] = result.status
        row["message"] = result.message
        if result.status == STATUS_FAILED:
            row["message"] = f"{result.message}. To fix: {what_to_do(engine)}"
            return row
        why = unclaimed_cpu(bundle) if engine.device == "cpu" and engine.precision == "int8" else None
        if why is not None:
            row["status"] = STATUS_FAILED
            row["message"] = f"{why}; 'edgefs run' refuses it. To fix: {what_to_do(engine)}"
            return row
        if rate_images is not None:
            progress(f"doctor: measuring {engine.describe()} on {bundle.path.name} for {seconds:g} s")
            try:
                row["rate"] = {**engine_rate(engine, rate_images[0], seconds), "images": rate_images[1]}
            except Exception as exc:  # passed its check, then failed on a frame: say so, do not crash
                row["status"] = STATUS_FAILED
                row["message"] = f"embedding frames for the rate failed: {type(exc).__name__}: {exc}"
        return row
    finally:
        close = getattr(engine, "close", None)
        if callable(close):
            close()


def bundle_facts(path: str | Path, seconds: float = DEFAULT_SECONDS, rate: bool = True,
                 progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """A bundle on every engine backend that can run it here: self-check and (``rate``) camera rate.

    Returns:
        ``{"path", "ok", "error"?, "name", "fingerprint", "backbone", "input_size", "embedding_dim",
        "precision", "reference_images", "engines": [rows of :func:`check_on_engine`, and skipped
        ones], "problem"?}``; ``ok`` is False where the bundle cannot be read, an engine failed, or
        no engine can run it here (``problem``).
    """
    from edgefs.runtime.bundle import read_bundle
    from edgefs.runtime.quantized import graph_precision
    from edgefs.runtime.selfcheck import SelfCheckError, load_reference

    facts: dict[str, Any] = {"path": str(path), "ok": False, "engines": []}
    try:
        bundle = read_bundle(path)
    except EdgefsError as exc:
        facts["error"] = str(exc)
        return facts
    h, w = bundle.manifest.input_size
    facts.update({"name": bundle.path.name, "fingerprint": bundle.fingerprint,
                  "backbone": bundle.manifest.backbone.get("name"), "input_size": [h, w],
                  "embedding_dim": bundle.manifest.embedding_dim, "precision": graph_precision(bundle)})
    reference_error = None
    reference = None
    try:
        loaded = load_reference(bundle)
        reference = loaded[0] if loaded is not None else None
    except SelfCheckError as exc:
        reference_error = str(exc)
    facts["reference_images"] = 0 if reference is None else len(reference)
    images = _rate_images(bundle, reference) if rate and reference_error is None else None
    for candidate in bundle_candidates(bundle):
        if candidate.get("status") == STATUS_SKIPPED:
            facts["engines"].append(candidate)
        else:
            facts["engines"].append(check_on_engine(bundle, candidate, reference_error, images, seconds, progress))
    if rate:
        facts["rate_note"] = (f"engine-only throughput: batch-1 embeds of {images[1] if images else 'nothing'}, one "
                              f"after another with the engine's default threads, for about {seconds:g} s per engine, "
                              f"measured on this machine now (no capture, no preprocessing, no head); 30 FPS cameras "
                              f"= floor(frames/s / {CAMERA_FPS})")
    else:
        facts["rate_note"] = "not measured (--no-rate)"
    if all(e["status"] == STATUS_SKIPPED for e in facts["engines"]):
        facts["problem"] = ("no engine backend can run this bundle here: install one (onnxruntime: "
                            f"{onnxruntime_backend.INSTALL})")
    facts["ok"] = "problem" not in facts and not any(e["status"] == STATUS_FAILED for e in facts["engines"])
    return facts


def collect(bundles: Sequence[str | Path] = (), seconds: float = DEFAULT_SECONDS, rate: bool = True,
            progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """The whole report: machine, GPU, engines, camera stack and each bundle. ``ok``: no bundle failed."""
    report: dict[str, Any] = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "system": system_facts(), "cpu": cpu_facts(), "memory": memory_facts(), "gpu": gpu_facts(),
        "engines": engine_facts(), "camera": camera_facts(),
        "bundles": [bundle_facts(b, seconds, rate, progress) for b in bundles],
    }
    report["ok"] = all(b["ok"] for b in report["bundles"])
    return report


# -- the table ---------------------------------------------------------------------------------


def _gib(value: int | None) -> str:
    return "?" if value is None else f"{value / 2**30:.1f} GiB"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _missing(what: str, install: str) -> str:
    return f"{what}; install: {install}"


def _machine_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(section, item, value)`` rows for everything but the bundles."""
    rows: list[tuple[str, str, str]] = []
    s = report["system"]
    rows += [("system", "OS", s["os"]), ("", "Python", f"{s['python']} ({s['python_executable']})"),
             ("", "edgefs", s["edgefs"])]
    c = report["cpu"]
    isa = c["instruction_sets"]
    rows += [("CPU", "model", c["model"] or "unknown"), ("", "arch, cores", f"{c['arch']}, {c['cores']} usable"),
             ("", "INT8 class", c["int8_class"]),
             ("", "instruction sets", " ".join(isa) if isa else "none of the ones the engines use")]
    if c["arch"] == "x86_64":
        rows += [("", "AVX2, AVX-512", f"{_yes('AVX2' in isa)}, {_yes('AVX512F' in isa)}"),
                 ("", "VNNI", f"yes ({', '.join(c['vnni'])})" if c["vnni"] else
                  "no (INT8 sums saturate in 16 bits: INT8 bundles need --target x86 or any)"),
                 ("", "AMX", f"yes ({', '.join(c['amx'])})" if c["amx"] else "no")]
    elif c["arch"] == "aarch64":
        rows += [("", "NEON dot product", "yes (ASIMDDP)" if c["arm_dot_product"] else "no"),
                 ("", "I8MM", _yes(c["i8mm"]))]
    m = report["memory"]
    rows.append(("memory", "total, available", m["error"] if "error" in m else
                 f"{_gib(m['total_bytes'])} total, {_gib(m['available_bytes'])} available"))
    g = report["gpu"]
    nv, jetson, cuda = g["nvidia"], g["jetson"], g["cuda"]
    if nv["gpus"]:
        for i, gpu in enumerate(nv["gpus"]):
            rows.append(("GPU" if i == 0 else "", f"NVIDIA GPU {i}", f"{gpu['name']}, {gpu['memory']}, compute "
                         f"capability {gpu['compute_cap']}, driver {gpu['driver']}"))
    elif nv.get("error"):
        rows.append(("GPU", "NVIDIA GPU", nv["error"]))
    elif nv["source"] is not None:
        rows.append(("GPU", "NVIDIA GPU", f"driver {nv['driver']} ({nv['source']}; no nvidia-smi to list GPUs)"))
    else:
        rows.append(("GPU", "NVIDIA GPU", "none found (no nvidia-smi on the PATH, no /proc/driver/nvidia/version)"
                     + ("; the Jetson's integrated GPU: see Jetson" if jetson["jetson"] else "")))
    if jetson["jetson"]:
        rows.append(("", "Jetson", ", ".join(v for v in (jetson["board_model"], jetson["l4t"]) if v)))
    else:
        rows.append(("", "Jetson", "none found" + (f" (board: {jetson['board_model']})" if jetson["board_model"]
                                                  else "")))
    toolkit = (f"nvcc {cuda['nvcc_version'] or '?'} ({cuda['nvcc']})" if cuda["nvcc"] else "no nvcc found")
    runtime = f"libcudart: {cuda['libcudart']}" if cuda["libcudart"] else "libcudart: none found"
    rows.append(("", "CUDA", f"{toolkit}; {runtime}"))
    pc = cuda["pycuda"]
    if not pc["installed"]:
        pycuda = _missing("not installed", pc["install"])
    elif pc["importable"]:
        pycuda = f"{pc.get('version') or '?'}, imports"
    else:
        pycuda = f"{pc.get('version') or '?'} installed but 'import pycuda.driver' fails: {pc.get('error')}"
    rows.append(("", "pycuda", pycuda))
    for flavour in g["tensorrt"]:
        rows.append(("", f"TensorRT ({flavour['flavour']})",
                     f"{flavour['description']} {flavour.get('version') or '(version unknown)'}"
                     if flavour["installed"] else _missing("not installed", flavour["install"])))
    e = report["engines"]
    ort, ov, torch = e["onnxruntime"], e["openvino"], e["torch"]
    rows.append(("engines", "onnxruntime", f"{ort['version']}; providers: {', '.join(ort['providers'])}"
                 if ort["installed"] else _missing("not installed", ort["install"])))
    rows.append(("", "openvino", ov["version"] if ov["installed"] else _missing("not installed", ov["install"])))
    rows.append(("", "torch", f"{torch['version'] or '?'} (found, not imported: the device never needs it)"
                 if torch["installed"] else _missing("not installed", torch["install"])))
    cam = report["camera"]
    if cam["installed"]:
        io = ", ".join(f"{name} {_yes(has)}" for name, has in cam["video_io"].items())
        rows.append(("camera", "OpenCV", f"{cam['opencv']}; video I/O: {io}"))
        if not cam["video_io"].get("GStreamer"):
            rows.append(("", "", "no GStreamer: CSI cameras and gst: pipelines need an OpenCV built with it "
                                 "(on a Jetson: JetPack's python3-opencv)"))
    else:
        rows.append(("camera", "OpenCV", _missing(f"not importable ({cam['error']})", cam["install"])))
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


SELFCHECK_LEGEND = ("self-check: verified = the reference images embedded now and within the floors (this engine's "
                    "first open on this machine); cached = passed here before (read from the cache); unchecked = the "
                    "bundle has no reference images; failed = too far from the FP32 model's embeddings, or the "
                    "engine or the bundle could not be read (exit status 1)")
ENGINE_COLUMNS = ("engine", "self-check", "mean cos", "min cos", "check ms", "open ms", "frames/s", "30 FPS cams")


def _bundle_lines(b: dict[str, Any]) -> list[str]:
    if "error" in b:
        return [f"bundle {b['path']}: FAILED", *_wrap(b["error"], "  ", "    ")]
    h, w = b["input_size"]
    lines = _wrap(f"bundle {b['path']}: {b['backbone']}, {h}x{w} px in, {b['embedding_dim']}-d out, {b['precision']}, "
                  f"fingerprint {b['fingerprint'][:12]}, {b['reference_images']} self-check reference images", "", "  ")
    table: list[tuple[str, ...]] = [ENGINE_COLUMNS]
    messages: list[tuple[int, str]] = []
    for row in b["engines"]:
        name = row["backend"] + (f" {row['precision']} {row['device']}" if "device" in row else "")
        if row.get("threads"):
            name += f", {row['threads']} threads"
        check = row.get("selfcheck") or {}
        rate = row.get("rate") or {}
        checked = check.get("status") in ("verified", "cached", "failed")
        table.append((name, row["status"], _fmt(check.get("mean_cosine"), ".5f"), _fmt(check.get("min_cosine"), ".5f"),
                      _fmt(check["seconds"] * 1000 if checked else None, ".1f"), _fmt(row.get("open_ms"), ".0f"),
                      _fmt(rate.get("frames_per_s"), ".1f"), _fmt(rate.get("cameras_30fps"), "d")))
        texts = list(row.get("notes", []))
        if row["status"] not in ("verified", "cached") and row["message"]:  # a pass: its figures are the columns
            texts.append(row["message"])
        messages += [(len(table) - 1, text) for text in texts]
    widths = [max(len(r[i]) for r in table) for i in range(len(ENGINE_COLUMNS))]
    for n, r in enumerate(table):
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
        cells += [c.rjust(wd) for c, wd in zip(r[2:], widths[2:], strict=True)]
        lines.append("  " + "  ".join(cells).rstrip())
        for i, text in messages:
            if i == n:
                lines += _wrap(text, "      - ", "        ")
    if "problem" in b:
        lines += _wrap(f"FAILED: {b['problem']}", "  ", "    ")
    if "rate_note" in b:
        lines += _wrap(f"frames/s: {b['rate_note']}", "  ", "    ")
    return lines


def _wrap(text: str, first: str, rest: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=first, subsequent_indent=rest, break_long_words=False,
                         break_on_hyphens=False) or [first.rstrip()]


def render(report: dict[str, Any]) -> str:
    """The report as one aligned plain-text table."""
    rows = _machine_rows(report)
    w_section = max(len(r[0]) for r in rows)
    w_item = max(len(r[1]) for r in rows)
    lines = [f"edgefs doctor ({report['created']})"]
    for section, item, value in rows:
        if section and len(lines) > 1:
            lines.append("")
        lines += _wrap(value, f"{section.ljust(w_section)}  {item.ljust(w_item)}  ", " " * (w_section + w_item + 6))
    for b in report["bundles"]:
        lines.append("")
        lines += _bundle_lines(b)
    if report["bundles"]:
        lines.append("")
        lines += _wrap(SELFCHECK_LEGEND, "", "  ")
        failed = [b["path"] for b in report["bundles"] if not b["ok"]]
        lines.append("")
        lines.append(f"FAILED: {', '.join(failed)} (exit status 1)" if failed else "all bundles passed")
    return "\n".join(lines)


def run_doctor(bundles: Sequence[str | Path] = (), json_out: str | Path | None = None,
               seconds: float = DEFAULT_SECONDS, rate: bool = True) -> dict[str, Any]:
    """Gather the report, print the table and (``json_out``; ``-`` for stdout) write it as JSON.

    With ``json_out="-"`` the JSON goes to stdout and the table to stderr.

    Returns:
        the report (:func:`collect`); its ``ok`` is False where a bundle could not be read or an
        engine failed its self-check.
    """
    to_stdout = str(json_out) == "-"

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    report = collect(bundles, seconds, rate, progress)
    print(render(report), file=sys.stderr if to_stdout else sys.stdout, flush=True)
    if json_out is not None:
        text = json.dumps(report, indent=2)
        if to_stdout:
            print(text)
        else:
            out = Path(json_out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text + "\n")
            print(f"wrote {out}")
    return report
