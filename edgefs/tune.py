"""``edgefs tune``: measure the settings the camera loop can run a bundle with on this machine, and keep the best.

For every bundle given (an FP32 bundle and its INT8 bundle, or exports of one
checkpoint at other input sizes), every engine this machine has (ONNX Runtime and
OpenVINO on the CPU; TensorRT where an engine that ``edgefs run`` would open is
built), every number of engine threads (1 to the cores) and ``--batch-wait`` 0 and
half a frame period (several cameras only), :func:`tune` runs the real camera loop
(:class:`edgefs.camera.loop.Pipeline`, what ``edgefs run`` runs) with N live
synthetic cameras at F FPS for a few seconds, each setting in a fresh process, and
measures:

* sustained FPS against the N x F offered (each camera's classified frames over the capture
  times from its first to its last one: a camera's opening is not counted), stale frames dropped, capture-to-result
  latency p50/p99, CPU milliseconds per frame (the whole process);
* what the setting costs in accuracy: the cosine of its embeddings of the bundle's
  self-check reference images (:func:`edgefs.runtime.selfcheck.load_reference`) to the
  FP32 model's, and for an INT8 bundle the few-shot accuracy drop its quantisation
  recorded (``quantization_info(bundle)["parity"]["episodes"]``).

A setting *holds* N x F when (:func:`judge`): its sustained FPS is at least
:data:`SUSTAINED` of N x F, it dropped at most :data:`DROP_TOLERANCE` of them as stale (at least 1: a
frame lost while the engine warms up is not a verdict), and its p99 latency is at most
one frame period. Of the settings that hold, :func:`choose` takes the least accuracy
loss (the largest input size, then the least recorded few-shot drop, then the
highest cosine to FP32; differences under :data:`DROP_TIE` points and
:data:`COSINE_TIE` count as ties) and, among those, the least CPU per frame.

The choice is saved as a *profile* per bundle and machine (:func:`profile_path`:
the bundle's fingerprint and a hash of the CPU's model, cores and instruction sets)
that ``edgefs run`` and ``edgefs serve`` read (:func:`apply_profile`): its backend,
threads, batch wait and engine options, unless given on the command line. When
nothing holds, nothing is saved and :func:`tune` says what the machine holds instead.

Torch-free (the device side); the engines are imported in the measuring processes only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefs.errors import EdgefsError
from edgefs.fileio import FileRefused, atomic_write_text, read_limited

PROFILE_FORMAT = "edgefs-tune-profile"
PROFILE_VERSION = 1
MAX_PROFILE_BYTES = 1 << 20
SUSTAINED = 0.97
"""Least share of the offered frames a setting must classify to hold N x F."""
DROP_TOLERANCE = 0.01
"""Most stale frames a setting may drop, as a share of the frames offered (at least 1 frame)."""
COSINE_TIE = 0.001
"""Mean cosines to FP32 closer than this are ties (rounding between kernels is ~1e-4 for FP32)."""
DROP_TIE = 0.1
"""Recorded few-shot accuracy drops closer than this many points are ties."""
CHILD_GRACE_S = 180.0
"""How long a measuring process may take beyond its run (opening, the first self-check, warm-up)."""
CPU_BACKENDS = ("onnxruntime", "openvino")
ENGINES = (*CPU_BACKENDS, "tensorrt")


class ProfileError(EdgefsError):
    """A profile file that cannot be used (damaged, another format, another bundle or machine)."""


# ---- where profiles live --------------------------------------------------------------------------
def config_root() -> Path:
    """``$EDGEFS_CONFIG`` when set, else ``~/.config/edgefs``."""
    root = os.environ.get("EDGEFS_CONFIG")
    return Path(root) if root else Path.home() / ".config" / "edgefs"


def profiles_dir() -> Path:
    return config_root() / "profiles"


def machine_identity() -> dict[str, Any]:
    """What a profile's machine is: CPU architecture, model, usable cores and instruction sets."""
    from edgefs.cpu import cpu_info

    cpu = cpu_info()
    return {"arch": cpu.arch, "model": cpu.model, "cores": cpu.cores, "features": sorted(cpu.features)}


def machine_key() -> str:
    """A short hash of :func:`machine_identity` (a profile is for one kind of machine)."""
    return hashlib.sha256(json.dumps(machine_identity(), sort_keys=True).encode()).hexdigest()[:16]


def profile_path(fingerprint: str, machine: str | None = None) -> Path:
    """Where the profile of the bundle with ``fingerprint`` on this machine (or ``machine``) lives."""
    return profiles_dir() / f"{fingerprint[:16]}-{machine or machine_key()}.json"


# ---- the bundles ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BundleFacts:
    """What tune needs to know of one bundle.

    Attributes:
        model: the fingerprint of the FP32 graph it computes (an INT8 bundle's parent): bundles of one
            model share FP32 reference embeddings.
        fewshot_drop: an INT8 bundle's recorded few-shot accuracy drop against FP32, in points
            (0 for a float bundle; None where quantisation measured no episodes).
    """

    path: Path
    label: str
    fingerprint: str
    precision: str
    input_size: tuple[int, int]
    checkpoint: str | None
    model: str
    fewshot_drop: float | None

    @property
    def pixels(self) -> int:
        return self.input_size[0] * self.input_size[1]

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "label": self.label, "fingerprint": self.fingerprint,
                "precision": self.precision, "input_size": list(self.input_size), "checkpoint": self.checkpoint,
                "model": self.model, "fewshot_drop_points": self.fewshot_drop}


def bundle_facts(paths: Sequence[str | Path]) -> list[BundleFacts]:
    """Read the bundles and check they belong together.

    Raises:
        EdgefsError: a bundle that cannot be read, one given twice, or bundles exported from different
            checkpoints (their recorded SHA256 differ): a class store belongs to one embedding space.
    """
    from edgefs.runtime.bundle import read_bundle, source_checkpoint
    from edgefs.runtime.quantized import graph_precision, parent_fingerprint, quantization_info

    if not paths:
        raise EdgefsError("give at least one bundle to tune")
    read = [read_bundle(p) for p in paths]
    names = [b.path.name for b in read]
    out: list[BundleFacts] = []
    for bundle in read:
        precision = graph_precision(bundle)
        drop: float | None = 0.0
        if precision == "int8":
            episodes = ((quantization_info(bundle) or {}).get("parity") or {}).get("episodes")
            drop = None
            if isinstance(episodes, dict) and all(isinstance(episodes.get(k), int | float)
                                                  for k in ("accuracy_reference", "accuracy_candidate")):
                drop = round(100 * (float(episodes["accuracy_reference"]) - float(episodes["accuracy_candidate"])), 3)
        label = bundle.path.name if names.count(bundle.path.name) == 1 else \
            f"{bundle.path.parent.name}/{bundle.path.name}"
        out.append(BundleFacts(bundle.path.resolve(), label, bundle.fingerprint, precision,
                               bundle.manifest.input_size, source_checkpoint(bundle.path),
                               parent_fingerprint(bundle) or bundle.fingerprint, drop))
    seen: dict[str, BundleFacts] = {}
    for facts in out:
        if facts.fingerprint in seen:
            raise EdgefsError(f"{facts.path} and {seen[facts.fingerprint].path} are the same bundle (fingerprint "
                              f"{facts.fingerprint[:12]}); give each bundle once")
        seen[facts.fingerprint] = facts
    recorded = {f.checkpoint for f in out if f.checkpoint}
    if len(recorded) > 1:
        which = "; ".join(f"{f.path}: {f.checkpoint[:12] if f.checkpoint else 'not recorded'}" for f in out)
        raise EdgefsError(
            f"these bundles were exported from different checkpoints ({which}). A class store belongs to one "
            "embedding space, so tune compares only bundles of one model (its FP32 and INT8 bundles, or exports "
            "at other input sizes); tune each model on its own")
    return out


# ---- the settings ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One way to run the camera loop: a bundle on an engine with threads, batch wait and options."""

    bundle: BundleFacts
    backend: str
    device: str
    threads: int | None
    batch_wait_ms: float
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        threads = "" if self.threads is None else f", {self.threads} thread{'s' if self.threads != 1 else ''}"
        return (f"{self.bundle.label} ({self.bundle.precision}, {self.bundle.input_size[0]} px) on {self.backend}"
                f"{threads}, batch-wait {self.batch_wait_ms:g} ms")

    def to_json(self) -> dict[str, Any]:
        return {"bundle": str(self.bundle.path), "fingerprint": self.bundle.fingerprint,
                "precision": self.bundle.precision, "input_size": list(self.bundle.input_size),
                "backend": self.backend, "device": self.device, "threads": self.threads,
                "batch_wait_ms": self.batch_wait_ms, "engine_options": dict(self.options)}


def available_engines(bundle: BundleFacts, only: str | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """``([(backend, device)], [why each other engine is skipped])`` for ``bundle`` on this machine."""
    from edgefs.runtime import onnxruntime_backend, openvino_backend, tensorrt_backend, trt_flavour
    from edgefs.runtime.bundle import read_bundle

    found: list[tuple[str, str]] = []
    skipped: list[str] = []
    for backend in ENGINES if only is None else (only,):
        if backend == "onnxruntime":
            if onnxruntime_backend.available_providers():
                found.append((backend, "cpu"))
            else:
                skipped.append(f"onnxruntime: not installed ({onnxruntime_backend.INSTALL})")
        elif backend == "openvino":
            if openvino_backend.openvino_available():
                found.append((backend, "cpu"))
            else:
                skipped.append("openvino: not installed (pip install openvino)")
        elif backend == "tensorrt":
            if not trt_flavour.installed_flavours():
                skipped.append("tensorrt: not installed")
            elif tensorrt_backend.find_engine(read_bundle(bundle.path, verify=False), "fp32") is None:
                skipped.append(f"tensorrt: no engine built for {bundle.label} on this GPU (no GPU here, or none "
                               "built: 'edgefs build-engine')")
            else:
                found.append((backend, "cuda"))
    return found, skipped


def plan(bundles: Sequence[BundleFacts], cameras: int, fps: float, *, engine: str | None = None,
         max_threads: int | None = None, batch_wait_ms: float | None = None) -> tuple[list[Setting], list[str]]:
    """Every setting to measure, and what is skipped (with why)."""
    from edgefs.cpu import cpu_info

    top = max(1, max_threads or cpu_info().cores)
    wait = round(500.0 / fps, 1) if batch_wait_ms is None else batch_wait_ms
    waits = [0.0] + ([wait] if cameras > 1 and wait > 0 else [])
    settings: list[Setting] = []
    skipped: list[str] = []
    for bundle in bundles:
        engines, why = available_engines(bundle, engine)
        skipped += [f"{bundle.label}: {w}" for w in why]
        for backend, device in engines:
            for threads in (range(1, top + 1) if backend in CPU_BACKENDS else [None]):
                settings += [Setting(bundle, backend, device, threads, w) for w in waits]
    return settings, skipped


# ---- one live measurement (in its own process) ----------------------------------------------------
def live_measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the camera loop for one setting: ``spec['cameras']`` live synthetic cameras showing the cards in
    ``spec['cards']`` at ``spec['fps']`` for ``spec['seconds']``; return its figures. Runs in a fresh
    process (:func:`measure`): the engine's threads and the process's CPU time are the setting's own."""
    from edgefs.camera.loop import LOOP_ENGINE_DEFAULTS, Pipeline, RunConfig
    from edgefs.camera.sources.synthetic import find_classes
    from edgefs.service.classifier import Classifier
    from edgefs.service.options import EngineOptions

    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    cards = Path(spec["cards"])
    options = EngineOptions(backend=spec["backend"], device=spec["device"], threads=spec["threads"],
                            engine_options=spec["options"])
    with Classifier.open(spec["bundle"], out / "classes.db", options=options, log=lines.append,
                         engine_defaults=LOOP_ENGINE_DEFAULTS) as clf:
        _, classes = find_classes(cards, ".")
        for name, files in sorted(classes.items())[:4]:  # a few classes, so that the head has work
            images = [img for img in map(_read_rgb, files[:2]) if img is not None]
            try:
                clf.enroll(name, images, source="tune")
            except EdgefsError as exc:
                lines.append(f"enroll {name}: {exc}")
        h, w = clf.bundle.manifest.input_size
        for batch in sorted({1, min(2, spec["cameras"]), spec["cameras"]}):  # as a running loop is, warm
            for _ in range(2):
                clf.embed(np.zeros((batch, h, w, 3), np.uint8))
        config = RunConfig(
            sources=[f"synthetic:{cards}?seed={i}" for i in range(spec["cameras"])], display=False,
            duration_s=spec["seconds"], batch_wait_ms=spec["batch_wait_ms"], jsonl=str(out / "events.jsonl"),
            source_options={"fps": spec["fps"], "difficulty": 0.3, "live": True, "split": "."})
        pipeline = Pipeline(clf, config, log=lines.append)
        seen: dict[str, list[float]] = {}  # per source: [frames, first and last capture time]

        def count(_: int, frame: Any, __: Any) -> None:
            got = seen.setdefault(frame.source, [0, frame.timestamp, frame.timestamp])
            got[0] += 1
            got[2] = frame.timestamp

        pipeline.add_listener(count)
        summary = pipeline.run()
        embeddings = None
        if spec.get("reference"):
            images = np.load(spec["reference"], allow_pickle=False)
            embeddings = np.concatenate([clf.embed(images[i:i + 1]) for i in range(len(images))])
            np.save(out / "reference-embeddings.npy", embeddings)
        engine = clf.engine.describe() if clf.engine is not None else spec["backend"]
        check = getattr(clf.engine, "selfcheck", None)
    total = summary.stages_ms.get("total", {})
    # Sustained: each camera's classified frames over the capture times from its first to its last one (a
    # camera that opens late, or the first frames of a run, do not count as frames the loop failed to keep).
    sustained = sum((n - 1) / (last - first) for n, first, last in seen.values() if n >= 2 and last > first)
    return {
        "engine": engine, "frames": summary.frames, "seconds": summary.seconds, "fps": sustained,
        "run_fps": summary.fps, "cameras_seen": len(seen),
        "dropped": summary.dropped, "latency_ms": {"p50": total.get("p50"), "p99": total.get("p99")},
        "frames_per_batch": summary.frames / max(summary.batches, 1),
        "cpu_ms_per_frame": summary.cpu_ms_per_frame, "stages_ms": summary.stages_ms,
        "selfcheck": check.status if check is not None else None,
        "reference_embeddings": str(out / "reference-embeddings.npy") if embeddings is not None else None,
        "log": lines[-20:],
    }


def _read_rgb(path: Path) -> np.ndarray | None:
    """An image file as uint8 RGB, read within :mod:`edgefs.limits` (:func:`edgefs.imagefile.decode_image`:
    the file's size, then the pixel count its header declares, before decoding); None, with a warning
    naming it and why, where it is refused or cannot be decoded."""
    import warnings

    from edgefs.imagefile import ImageRefused, decode_image, read_image_bytes

    try:
        return decode_image(read_image_bytes(path, str(path)), str(path))
    except ImageRefused as exc:
        warnings.warn(f"skipping image {exc}; remove or replace it", stacklevel=2)
        return None


def child_main() -> None:
    """The measuring process: ``python -c 'from edgefs.tune import child_main; child_main()' SPEC.json``."""
    spec = json.loads(Path(sys.argv[1]).read_text())
    try:
        result = live_measure(spec)
    except EdgefsError as exc:
        result = {"error": str(exc)}
    Path(spec["out"], "result.json").write_text(json.dumps(result))


def measure(setting: Setting, *, cameras: int, fps: float, seconds: float, cards: Path, reference: Path | None,
            out: Path) -> dict[str, Any]:
    """:func:`live_measure` of ``setting`` in a fresh process; ``{"error": ...}`` when it could not run."""
    out.mkdir(parents=True, exist_ok=True)
    spec = {"bundle": str(setting.bundle.path), "backend": setting.backend, "device": setting.device,
            "threads": setting.threads, "options": setting.options, "batch_wait_ms": setting.batch_wait_ms,
            "cameras": cameras, "fps": fps, "seconds": seconds, "cards": str(cards),
            "reference": str(reference) if reference is not None else None, "out": str(out)}
    (out / "spec.json").write_text(json.dumps(spec))
    try:
        done = subprocess.run([sys.executable, "-c", "from edgefs.tune import child_main; child_main()",
                               str(out / "spec.json")], capture_output=True, text=True, check=False,
                              timeout=seconds + CHILD_GRACE_S)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {seconds + CHILD_GRACE_S:.0f} s"}
    result_file = out / "result.json"
    if done.returncode != 0 or not result_file.is_file():
        tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:] or ["no message"]
        return {"error": f"the measuring process failed (exit {done.returncode}): {tail[0]}"}
    return dict(json.loads(result_file.read_text()))


# ---- judging and choosing -------------------------------------------------------------------------
def drop_allowance(cameras: int, fps: float, seconds: float) -> int:
    """Most stale frames a setting may drop and still hold: :data:`DROP_TOLERANCE` of the offered, at least 1."""
    return max(1, math.floor(DROP_TOLERANCE * cameras * fps * seconds))


def judge(row: dict[str, Any], cameras: int, fps: float) -> list[str]:
    """Why a measured setting does not hold ``cameras`` x ``fps`` (empty: it holds)."""
    if row.get("error"):
        return [f"did not run: {row['error']}"]
    offered = cameras * fps
    why = []
    if row["fps"] < SUSTAINED * offered:
        why.append(f"{row['fps']:.1f} of {offered:g} FPS")
    allowed = drop_allowance(cameras, fps, row["seconds"])
    if row["dropped"] > allowed:
        why.append(f"{row['dropped']} stale frames dropped (> {allowed})")
    p99, period = row["latency_ms"]["p99"], 1000.0 / fps
    if p99 is None or p99 > period:
        why.append("no latency measured" if p99 is None else f"p99 {p99:.1f} ms > {period:.1f} ms")
    return why


def _accuracy_steps(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of least accuracy loss (ties kept) and what each step kept, in words."""
    said = []
    largest = max(r["setting"]["input_size"][0] * r["setting"]["input_size"][1] for r in rows)
    keep = [r for r in rows if r["setting"]["input_size"][0] * r["setting"]["input_size"][1] == largest]
    if len(keep) < len(rows):
        said.append(f"the largest input that held, {keep[0]['setting']['input_size'][0]} px (tune does not measure "
                    "accuracy across input sizes: a smaller input is taken to lose more)")
    drops = [math.inf if r["fewshot_drop_points"] is None else max(0.0, r["fewshot_drop_points"]) for r in keep]
    least = min(drops)
    narrowed = [r for r, d in zip(keep, drops, strict=True) if d <= least + DROP_TIE]
    if len(narrowed) < len(keep):
        said.append("the least few-shot accuracy drop its quantisation recorded"
                    + (f", {least:.2f} points" if least < math.inf else ""))
    keep = narrowed
    cos = [-math.inf if r["cosine"] is None else r["cosine"]["mean"] for r in keep]
    best = max(cos)
    keep = [r for r, c in zip(keep, cos, strict=True) if c >= best - COSINE_TIE]
    said.append(f"mean cosine to FP32 {best:.5f} (closer than {COSINE_TIE} is a tie)" if best > -math.inf
                else "no cosine to FP32 measured")
    return keep, said


def choose(rows: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
    """The held setting of least accuracy loss, ties broken by least CPU per frame; and why, in words."""
    held = [r for r in rows if r["holds"]]
    if not held:
        return None, ""
    keep, said = _accuracy_steps(held)
    best = min(keep, key=lambda r: r["cpu_ms_per_frame"].get("process", math.inf))
    why = (f"{len(held)} of {len(rows)} settings held; least accuracy loss: " + "; ".join(said)
           + f"; then the least CPU per frame of the {len(keep)} as accurate, "
           f"{best['cpu_ms_per_frame']['process']:.2f} ms")
    return best, why


def holds_instead(rows: list[dict[str, Any]], cameras: int, fps: float) -> str:
    """What the machine holds, from the best measured throughput, when nothing held ``cameras`` x ``fps``."""
    ran = [r for r in rows if not r.get("error")]
    if not ran:
        return "no setting ran: " + "; ".join(sorted({str(r["error"]) for r in rows}))[:600]
    best = max(ran, key=lambda r: (r["fps"], -(r["latency_ms"]["p99"] or math.inf)))
    s = best["setting"]
    threads = "" if s["threads"] is None else f", {s['threads']} thread{'s' if s['threads'] != 1 else ''}"
    how = (f"with {s['backend']} {s['precision']} at {s['input_size'][0]} px{threads}, "
           f"batch-wait {s['batch_wait_ms']:g} ms")
    p99 = best["latency_ms"]["p99"] or math.inf
    if best["fps"] >= SUSTAINED * cameras * fps:  # it kept up: latency (or drops) failed it
        # over one period: the rate whose period covers the p99; dropping frames within it: at its limit
        per_camera = math.floor(1000.0 / p99) if p99 > 1000.0 / fps else math.floor(0.9 * fps)
        return (f"this machine keeps up with {cameras} x {fps:g} FPS {how} ({best['fps']:.1f} FPS), but not within "
                f"one frame period ({', '.join(best['why_not'])}): it holds about {cameras} camera"
                f"{'s' if cameras != 1 else ''} x {per_camera} FPS instead; run 'edgefs tune' with those numbers "
                "to check")
    if best["fps"] <= 0:
        return (f"no frame was classified at {cameras} x {fps:g} FPS with any setting (the cameras alone overload "
                "this machine); fewer cameras or a lower frame rate")
    whole = math.floor(best["fps"] / fps)
    per_camera = math.floor(best["fps"] / cameras)
    if whole >= 1:
        lead = f"about {whole} camera{'s' if whole != 1 else ''} x {fps:g} FPS" + (
            f", or {cameras} cameras x {per_camera} FPS," if per_camera >= 1 and cameras > 1 else "")
    elif per_camera >= 1:
        lead = f"about {cameras} camera{'s' if cameras != 1 else ''} x {per_camera} FPS"
    else:
        lead = f"about {math.floor(best['fps'])} FPS in all (1 camera x {math.floor(best['fps'])} FPS)"
    overloaded = f"; its p99 of {p99:.0f} ms was measured overloaded" if p99 < math.inf else ""
    return (f"this machine holds {lead} instead, {how} (the best measured throughput: {best['fps']:.1f} FPS in all"
            f"{overloaded}); run 'edgefs tune' with those numbers to check")


def advice(bundles: Sequence[BundleFacts]) -> list[str]:
    """What to try when nothing holds."""
    tips = []
    fp32 = [b for b in bundles if b.precision == "fp32"]
    if fp32 and not any(b.precision == "int8" for b in bundles):
        b = fp32[0]
        tips.append(f"an INT8 bundle: 'edgefs quantize {b.path} --calib DIR --out "
                    f"{b.path.with_name(b.path.name.removesuffix('.edgefs') + '-int8.edgefs')}', then tune both")
    side = min(b.input_size[0] for b in bundles)
    tips.append(f"a smaller input size: 'edgefs export CKPT --input-size {max(32, side * 3 // 4)} --out DIR' "
                "(and its INT8 bundle), then tune them with these")
    tips.append("fewer cameras or a lower frame rate, or a quieter machine (other processes' load counts here)")
    return tips


# ---- the table ------------------------------------------------------------------------------------
def _text_table(header: list[str], rows: list[list[str]], left: set[int]) -> str:
    """Columns padded to their widest cell: those in ``left`` flush left, the others (numbers) right."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    cells = [f"{{:<{w}}}" if i in left else f"{{:>{w}}}" for i, w in enumerate(widths)]
    cells[-1] = "{}" if len(header) - 1 in left else cells[-1]  # no trailing padding
    fmt = "  ".join(cells)
    return "\n".join([fmt.format(*header), *(fmt.format(*r) for r in rows)])


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict[str, Any]], cameras: int, fps: float) -> str:
    """Every setting measured, one line each."""
    header = ["#", "bundle", "engine", "threads", "wait ms", "FPS", "dropped", "p50/p99 ms", "CPU ms/frame",
              "cos FP32 mean/min", "few-shot drop", "holds"]
    lines = []
    for i, r in enumerate(rows, 1):
        s = r["setting"]
        label = f"{r['label']} ({s['precision']}, {s['input_size'][0]} px)"
        threads = "-" if s["threads"] is None else str(s["threads"])
        cos = "n/a" if r["cosine"] is None else f"{r['cosine']['mean']:.5f}/{r['cosine']['min']:.5f}"
        drop = ("-" if s["precision"] == "fp32" else "n/a" if r["fewshot_drop_points"] is None
                else f"{r['fewshot_drop_points']:+.2f} pts")
        if r.get("error"):
            lines.append([str(i), label, s["backend"], threads, f"{s['batch_wait_ms']:g}", "-", "-", "-", "-", cos,
                          drop, "no (did not run)"])
            continue
        lat = r["latency_ms"]
        verdict = "yes" if r["holds"] else "no: " + ", ".join(r["why_not"])
        lines.append([str(i), label, s["backend"], threads, f"{s['batch_wait_ms']:g}",
                      f"{r['fps']:.1f}/{cameras * fps:g}", str(r["dropped"]), f"{_num(lat['p50'])}/{_num(lat['p99'])}",
                      _num(r["cpu_ms_per_frame"].get("process"), 2), cos, drop, verdict])
    return _text_table(header, lines, left={0, 1, 2, 11})


# ---- the whole tune -------------------------------------------------------------------------------
@dataclass
class TuneResult:
    """What :func:`tune` found: every row, the choice (None: nothing held), the profiles written."""

    rows: list[dict[str, Any]]
    choice: dict[str, Any] | None
    why: str
    instead: str | None
    profiles: list[Path]
    doc: dict[str, Any]

    @property
    def exit_code(self) -> int:
        """0 when a setting held (a profile was saved), 2 when none did."""
        return 0 if self.choice is not None else 2


def _cards(bundles: Sequence[BundleFacts], data: Path | None, folder: Path) -> Path:
    """The synthetic cameras' cards: ``data`` as it is, else the bundles' reference images, else drawn shapes."""
    import cv2

    from edgefs.runtime.bundle import read_bundle
    from edgefs.runtime.selfcheck import load_reference

    if data is not None:
        if not Path(data).is_dir():
            raise EdgefsError(f"--data {data} is not a folder; give an image folder with one sub-folder per class")
        return Path(data)
    images = None
    for b in bundles:
        loaded = load_reference(read_bundle(b.path, verify=False))
        if loaded is not None:
            images = list(loaded[0])
            break
    if images is None:  # bundles made before they carried reference images
        rng = np.random.default_rng(0)
        images = []
        for k in range(8):
            img = np.full((128, 128, 3), rng.integers(40, 216, 3), np.uint8)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            if k % 2:
                cv2.circle(img, (64, 64), int(rng.integers(24, 56)), colour, -1)
            else:
                cv2.rectangle(img, (int(rng.integers(8, 40)),) * 2, (int(rng.integers(88, 120)),) * 2, colour, -1)
            images.append(img)
    for k, img in enumerate(images):
        target = folder / f"card{k // 2}"
        target.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target / f"{k}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return folder


def _references(bundles: Sequence[BundleFacts], folder: Path, cards: Path) -> dict[str, tuple[Path, np.ndarray | None]]:
    """Per model (:attr:`BundleFacts.model`): the reference images (a .npy file) and their stored FP32
    embeddings (None where no bundle of the model carries them: the model's FP32 bundle on ONNX Runtime
    then serves as the reference, on another model's images at its size or else on the cards)."""
    import cv2

    from edgefs.camera.sources.synthetic import find_classes
    from edgefs.runtime.bundle import read_bundle
    from edgefs.runtime.selfcheck import load_reference

    refs: dict[str, tuple[Path, np.ndarray | None]] = {}
    for b in bundles:
        if b.model in refs:
            continue
        loaded = load_reference(read_bundle(b.path, verify=False))
        if loaded is not None:
            np.save(folder / f"reference-{b.model[:16]}.npy", loaded[0])
            refs[b.model] = (folder / f"reference-{b.model[:16]}.npy", loaded[1])
    for b in bundles:  # a model none of whose bundles carries images: another model's at its size, or none
        if b.model in refs:
            continue
        donor = next((m for m, (path, _) in refs.items()
                      if np.load(path, mmap_mode="r").shape[1:3] == tuple(b.input_size)), None)
        if donor is not None:
            refs[b.model] = (refs[donor][0], None)
            continue
        h, w = b.input_size
        files = [f for paths in find_classes(cards, ".")[1].values() for f in paths][:8]
        images = [cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA) for img in map(_read_rgb, files)
                  if img is not None]
        if images:
            np.save(folder / f"reference-{b.model[:16]}.npy", np.stack(images))
            refs[b.model] = (folder / f"reference-{b.model[:16]}.npy", None)
    return refs


def _cosines(rows: list[dict[str, Any]], refs: dict[str, tuple[Path, np.ndarray | None]]) -> None:
    """Each row's cosine to its model's FP32 reference embeddings (stored, or its FP32 bundle's on ONNX Runtime)."""
    from edgefs.runtime.selfcheck import cosines

    for row in rows:
        row["cosine"] = None
        model = row["model"]
        if row.get("error") or not row.get("reference_embeddings") or model not in refs:
            continue
        reference = refs[model][1]
        if reference is None:
            base = next((r for r in rows if r["model"] == model and r["setting"]["precision"] == "fp32"
                         and r["setting"]["backend"] == "onnxruntime" and r.get("reference_embeddings")
                         and not r.get("error")), None)
            if base is None:
                continue
            reference = np.load(base["reference_embeddings"])
        got = np.load(row["reference_embeddings"])
        cos = cosines(reference, got)
        row["cosine"] = {"mean": float(cos.mean()), "min": float(cos.min()),
                         "against": "stored FP32 reference" if refs[model][1] is not None
                         else "the FP32 bundle on onnxruntime"}


def _best_per_backend(rows: list[dict[str, Any]], fingerprint: str) -> dict[str, dict[str, Any]]:
    out = {}
    for backend in ENGINES:
        mine = [r for r in rows if r["setting"]["fingerprint"] == fingerprint and r["setting"]["backend"] == backend]
        best, _ = choose(mine)
        if best is not None:
            out[backend] = _summary(best)
    return out


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    """A measured setting as a profile keeps it."""
    return {**row["setting"], "fps": round(row["fps"], 2), "dropped": row["dropped"],
            "latency_ms": {k: round(v, 2) for k, v in row["latency_ms"].items()},
            "cpu_ms_per_frame": round(row["cpu_ms_per_frame"].get("process", math.nan), 3),
            "cosine_mean": None if row["cosine"] is None else round(row["cosine"]["mean"], 6),
            "fewshot_drop_points": row["fewshot_drop_points"]}


def tune(
    bundles: Sequence[str | Path],
    *,
    cameras: int = 1,
    fps: float = 30.0,
    seconds: float = 4.0,
    engine: str | None = None,
    max_threads: int | None = None,
    batch_wait_ms: float | None = None,
    data: str | Path | None = None,
    json_out: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> TuneResult:
    """``edgefs tune``: measure every setting (module docstring), print the table and the choice, save the
    profile of each bundle (nothing when no setting held), and write the whole measurement to ``json_out``.

    Args:
        bundles: bundle folders of one model (one checkpoint).
        engine: measure only this backend (default: every one this machine has).
        max_threads: engine threads tried, 1 to this (default: the usable cores).
        batch_wait_ms: the non-zero ``--batch-wait`` tried with several cameras (default half a frame period).
        data: an image folder the synthetic cameras show (default: the bundles' reference images).

    Raises:
        EdgefsError: a bundle that cannot be read, bundles of different checkpoints, no engine to measure.
    """
    from edgefs.cpu import cpu_info

    if cameras < 1 or not fps > 0 or not seconds > 0:
        raise EdgefsError(f"tune needs cameras >= 1, fps > 0 and seconds > 0; got {cameras}, {fps}, {seconds}")
    facts = bundle_facts(bundles)
    settings, skipped = plan(facts, cameras, fps, engine=engine, max_threads=max_threads, batch_wait_ms=batch_wait_ms)
    if not settings:
        raise EdgefsError("no engine to measure here: " + "; ".join(skipped))
    cpu = cpu_info()
    load_before = [round(x, 1) for x in os.getloadavg()]
    period = 1000.0 / fps
    log(f"tuning for {cameras} camera{'s' if cameras != 1 else ''} x {fps:g} FPS ({cameras * fps:g} FPS offered, "
        f"one frame period {period:.1f} ms) on {cpu.model or cpu.arch} ({cpu.cores} cores, INT8 class "
        f"{cpu.int8_class}); load average {load_before[0]}: {len(settings)} settings, {seconds:g} s each, each in a "
        "fresh process")
    for line in skipped:
        log(f"skipped: {line}")
    if cameras == 1:
        log("batch-wait: only 0 with one camera (there are no other cameras' frames to wait for)")
    if len(facts) > 1:
        log("note: each bundle has its own class store: switching bundle means enrolling again, or "
            "'edgefs classes reembed --store STORE --bundle OLD --to NEW --out NEW_STORE'")
    if len({b.input_size for b in facts}) > 1:
        log("note: tune does not measure accuracy across input sizes (compare them with 'edgefs eval'); it "
            "prefers the largest input that holds")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgefs-tune-") as tmp:
        work = Path(tmp)
        cards = _cards(facts, Path(data) if data is not None else None, work / "cards")
        refs = _references(facts, work, cards)
        for i, setting in enumerate(settings, 1):
            ref = refs.get(setting.bundle.model)
            measured = measure(setting, cameras=cameras, fps=fps, seconds=seconds, cards=cards,
                               reference=ref[0] if ref else None, out=work / f"run-{i}")
            row = {"setting": setting.to_json(), "label": setting.bundle.label, "model": setting.bundle.model,
                   "fewshot_drop_points": setting.bundle.fewshot_drop, **measured}
            row["why_not"] = judge(row, cameras, fps)
            row["holds"] = not row["why_not"]
            rows.append(row)
            if row.get("error"):
                log(f"[{i}/{len(settings)}] {setting.describe()}: did not run: {row['error']}")
            else:
                log(f"[{i}/{len(settings)}] {setting.describe()}: {row['fps']:.1f} FPS, {row['dropped']} dropped, "
                    f"p99 {_num(row['latency_ms']['p99'])} ms, {_num(row['cpu_ms_per_frame'].get('process'), 2)} "
                    f"ms CPU/frame: {'holds' if row['holds'] else 'does not hold'}")
        _cosines(rows, refs)
        for row in rows:  # the embeddings' files go with the folder
            row.pop("reference_embeddings", None)
    load_after = [round(x, 1) for x in os.getloadavg()]
    log("")
    log(table(rows, cameras, fps))
    log(f"holds: sustained >= {SUSTAINED:.0%} of the offered FPS, stale frames dropped at most "
        f"{DROP_TOLERANCE:.0%} of those offered in the run (at least 1), p99 <= {period:.1f} ms. CPU ms/frame: the "
        f"whole process (engine, loop, the synthetic cameras' rendering). Load average before/after: "
        f"{load_before[0]}/{load_after[0]}.")
    choice, why = choose(rows)
    instead = None
    profiles: list[Path] = []
    doc: dict[str, Any] = {
        "format": "edgefs-tune", "version": PROFILE_VERSION, "tuned": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"key": machine_key(), **cpu.to_json()}, "cameras": cameras, "fps": fps, "seconds": seconds,
        "criteria": {"sustained": SUSTAINED, "dropped_at_most": drop_allowance(cameras, fps, seconds),
                     "p99_ms_at_most": period, "cosine_tie": COSINE_TIE, "fewshot_drop_tie_points": DROP_TIE},
        "load_average": {"before": load_before, "after": load_after},
        "bundles": [b.to_json() for b in facts], "skipped": skipped, "settings": rows,
    }
    if choice is None:
        instead = holds_instead(rows, cameras, fps)
        log(f"nothing held {cameras} x {fps:g} FPS: {instead}. No profile was saved. To try:")
        for tip in advice(facts):
            log(f"  - {tip}")
        doc.update({"choice": None, "why": None, "holds_instead": instead, "advice": advice(facts), "profiles": []})
    else:
        s = choice["setting"]
        log(f"chose #{rows.index(choice) + 1}: {choice['label']} on {s['backend']}"
            + ("" if s["threads"] is None else f", {s['threads']} thread{'s' if s['threads'] != 1 else ''}")
            + f", batch-wait {s['batch_wait_ms']:g} ms: {why}")
        for b in facts:
            profile = {
                "format": PROFILE_FORMAT, "version": PROFILE_VERSION, "tuned": doc["tuned"],
                "machine": doc["machine"], "cameras": cameras, "fps": fps, "seconds": seconds,
                "bundle": {"path": str(b.path), "fingerprint": b.fingerprint, "precision": b.precision,
                           "input_size": list(b.input_size)},
                "choice": _summary(choice), "why": why,
                "best_for_this_bundle": None, "for_this_bundle": _best_per_backend(rows, b.fingerprint),
            }
            mine = choose([r for r in rows if r["setting"]["fingerprint"] == b.fingerprint])[0]
            profile["best_for_this_bundle"] = None if mine is None else _summary(mine)
            path = profile_path(b.fingerprint)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(profile, indent=1))
            profiles.append(path)
            held = "" if mine is not None else f" (no setting of {b.label} held: run/serve will advise the choice)"
            log(f"profile: {path} for {b.label}{held}")
        doc.update({"choice": choice, "why": why, "holds_instead": None, "profiles": [str(p) for p in profiles]})
    if json_out is not None:
        atomic_write_text(Path(json_out), json.dumps(doc, indent=1, default=str))
        log(f"measurement: {json_out}")
    return TuneResult(rows, choice, why, instead, profiles, doc)


# ---- run and serve use the profile ----------------------------------------------------------------
def load_profile(path: Path, fingerprint: str) -> dict[str, Any]:
    """The profile at ``path`` for the bundle ``fingerprint`` on this machine.

    Raises:
        ProfileError: unreadable, not JSON, another format or version, another bundle or machine, or
            settings that are not what tune writes.
    """
    try:
        doc = json.loads(read_limited(path, MAX_PROFILE_BYTES, "tune profile"))
    except FileRefused as exc:
        raise ProfileError(str(exc)) from None
    except OSError as exc:
        raise ProfileError(f"profile {path} cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ProfileError(f"profile {path} is damaged (not JSON: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != PROFILE_FORMAT or doc.get("version") != PROFILE_VERSION:
        raise ProfileError(f"profile {path} is not an edgefs tune profile of version {PROFILE_VERSION}")
    bundle, machine = doc.get("bundle"), doc.get("machine")
    if not isinstance(bundle, dict) or bundle.get("fingerprint") != fingerprint:
        raise ProfileError(f"profile {path} is for another bundle")
    if not isinstance(machine, dict) or machine.get("key") != machine_key():
        raise ProfileError(f"profile {path} is for another machine")
    best = doc.get("best_for_this_bundle")
    settings = [doc.get("choice"), *([] if best is None else [best]), *doc["for_this_bundle"].values()] \
        if isinstance(doc.get("for_this_bundle"), dict) else None
    if settings is None or not all(_valid_setting(s) for s in settings) \
            or not isinstance(doc.get("cameras"), int) or not isinstance(doc.get("fps"), int | float):
        raise ProfileError(f"profile {path} is damaged (its settings are not what edgefs tune writes)")
    return doc


def _valid_setting(s: Any) -> bool:
    from edgefs.runtime.select import backend_names

    if not isinstance(s, dict):
        return False
    threads, wait, options = s.get("threads"), s.get("batch_wait_ms"), s.get("engine_options")
    return (s.get("backend") in backend_names() and isinstance(s.get("device"), str)
            and isinstance(s.get("fingerprint"), str) and isinstance(s.get("bundle"), str)
            and (threads is None or (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1))
            and isinstance(wait, int | float) and not isinstance(wait, bool) and 0 <= wait <= 1000
            and isinstance(options, dict))


# engine option -> the flag's dest in edgefs.cli.args.add_cpu_engine_flags
_OPTION_FLAGS = {"allow_spinning": ("spin", "--spin"), "hint": ("ov_hint", "--ov-hint"),
                 "streams": ("ov_streams", "--ov-streams")}


def _fill_defaults(args: argparse.Namespace) -> None:
    """The loop's own defaults for what neither the command line nor a profile set."""
    if getattr(args, "backend", None) is None:
        args.backend = "auto"
    if getattr(args, "batch_wait_ms", None) is None:
        args.batch_wait_ms = 0.0


def apply_profile(args: argparse.Namespace, bundle_path: str | Path,
                  log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Take the engine settings of this bundle's profile on this machine into parsed ``edgefs run``/``serve``
    flags: ``backend``, ``device``, ``threads``, ``batch_wait_ms`` and the engine options, each only where the
    command line left it unset (None). Says what it took in one line. A profile whose choice is another
    bundle (e.g. the INT8 one) never switches bundle: the best setting measured for this one is taken, and
    the other bundle is advised. A damaged profile is reported and ignored. ``--no-profile`` (``no_profile``)
    skips it. Leaves ``backend`` and ``batch_wait_ms`` at the loop's defaults when nothing set them.

    Returns:
        the profile taken, or None.
    """
    try:
        return _apply_profile(args, bundle_path, log)
    finally:
        _fill_defaults(args)


def _apply_profile(args: argparse.Namespace, bundle_path: str | Path,
                   log: Callable[[str], None]) -> dict[str, Any] | None:
    from edgefs.runtime.bundle import read_bundle

    if getattr(args, "no_profile", False):
        return None
    try:
        fingerprint = read_bundle(bundle_path, verify=False).fingerprint
    except EdgefsError:
        return None  # opening the bundle says what is wrong with it
    path = profile_path(fingerprint)
    if not path.exists() and not path.is_symlink():
        return None
    try:
        doc = load_profile(path, fingerprint)
    except ProfileError as exc:
        log(f"warning: {exc}; it is ignored (run 'edgefs tune {bundle_path}' again, or delete it)")
        return None
    tuned = (f"tuned {str(doc.get('tuned', '?'))[:16].replace('T', ' ')} for {doc['cameras']} camera"
             f"{'s' if doc['cameras'] != 1 else ''} x {doc['fps']:g} FPS")
    own: dict[str, dict[str, Any]] = doc["for_this_bundle"]
    choice: dict[str, Any] = doc["choice"]
    setting: dict[str, Any] | None
    if args.backend is None:
        setting = choice if choice["fingerprint"] == fingerprint else doc["best_for_this_bundle"]
    elif args.backend == "auto":
        setting = None
    else:
        setting = own.get(args.backend)
    if setting is not None and args.device is not None and args.device != setting["device"]:
        setting = None
    if setting is None:
        reason = ("--backend auto given" if args.backend == "auto" else
                  f"nothing measured for --backend {args.backend} held" if args.backend is not None else
                  f"--device {args.device} given" if args.device is not None and own else
                  "no setting of this bundle held")
        log(f"profile: {path} ({tuned}): not applied ({reason})")
    else:
        given = []
        if args.backend is None:
            args.backend = setting["backend"]
        else:
            given.append("--backend")
        if args.device is None:
            args.device = setting["device"]
        if args.threads is None:
            args.threads = setting["threads"]
        elif setting["threads"] is not None:
            given.append("--threads")
        if args.batch_wait_ms is None:
            args.batch_wait_ms = setting["batch_wait_ms"]
        else:
            given.append("--batch-wait")
        options = []
        for key, value in setting["engine_options"].items():
            dest, flag = _OPTION_FLAGS.get(key, (None, None))
            if dest is None:
                continue
            if getattr(args, dest, None) is None:
                setattr(args, dest, value)
                options.append(f"{flag} {value}")
            else:
                given.append(flag)
        threads = "the backend's" if args.threads is None else str(args.threads)
        log(f"profile: {path} ({tuned}): backend {args.backend}, threads {threads}, batch-wait "
            f"{args.batch_wait_ms:g} ms" + (f", {', '.join(options)}" if options else "")
            + (f"; from the command line: {', '.join(given)}" if given else ""))
        sources = len(getattr(args, "sources", None) or [])
        if sources and sources != doc["cameras"]:
            log(f"profile: note: tuned for {doc['cameras']} cameras, this run has {sources}")
    if choice["fingerprint"] != fingerprint:
        log(f"profile: tune chose another bundle for this machine: {choice['bundle']} ({choice['precision']}, "
            f"{choice['input_size'][0]} px, {choice['backend']}): {doc.get('why', '')}. This run keeps "
            f"{bundle_path}; to switch, run that bundle with a class store made for it (enroll again, or "
            f"'edgefs classes reembed --store STORE --bundle {bundle_path} --to {choice['bundle']} --out NEW_STORE')")
    return doc

