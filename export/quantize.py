"""FP32 bundle -> INT8 bundle: static quantisation with ONNX Runtime, gated on agreement with the parent.

:func:`quantize_bundle` calibrates the bundle's ``backbone.onnx`` on camera-like
images of the user's domain (a folder, an ImageFolder or a video, read through
:mod:`edgefs.runtime.calibration`, exactly as the camera loop preprocesses
frames; never random data), writes a QDQ graph with per-channel INT8 weights and
INT8 activations (ONNX Runtime's ``quantize_static`` after
``quant_pre_process``), then embeds held-out images of the same source with the
parent (ONNX Runtime, FP32) and the INT8 graph and compares them: per-image
cosine and, for an ImageFolder, top-1 agreement of nearest-prototype
classification on fixed held-out episodes. Below the floors nothing is written.

The INT8 bundle is a new bundle: its own fingerprint, the parent's head, and
``manifest.export["quantization"]`` with the parent's fingerprint, the
calibration and the parity figures (:mod:`edgefs.runtime.quantized`). Class
stores made with the parent are not opened by it; ``edgefs classes reembed``
moves them (DESIGN.md, "INT8 bundles and class stores").

The integer format is chosen for the CPUs the bundle is for (``target``, recorded in the
manifest with the CPU classes it claims, :mod:`edgefs.cpu`). On x86 without VNNI, ONNX
Runtime's and OpenVINO's fast u8 x s8 kernels add the products of a uint8 activation and an
int8 weight in pairs into a 16-bit sum (``vpmaddubsw``) that saturates when both are large;
VNNI and ARM add into 32 bits. ``any`` (the default) writes only formats whose sums fit on
every class (:data:`INT8_FORMATS`): 7-bit weights on convolutions that run as a matrix
product (255 x 64 x 2 < 32768), optionally uint8 weights (which those kernels widen to 16 bits
first) on the first ones, where the model is most sensitive; depthwise convolutions keep 8-bit
weights (their kernels add in 32 bits). It tries them fastest first and keeps the first that
meets the floors (:data:`FORMAT_LADDER`). ``x86-vnni`` writes int8 weights everywhere (``s8``),
the fastest on a VNNI CPU and wrong elsewhere. Measured on the committed colour model (AVX2, no
VNNI, ``units/train``): ``s8`` mean cosine to FP32 0.847 there; the same graph with SSE4.1
kernels under ``qemu-x86_64-static -cpu Nehalem`` (which widen every product) 0.993.

No PyTorch: this runs on a workstation or on the device. It needs ``onnx`` and
``onnxruntime`` (``onnxruntime.quantization``), imported when a run starts.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from edgefs.export.calibrate import CalibrationStats, _clamped, _reader, _split_counts
from edgefs.export.int8_graph import (
    FORMAT_LADDER,
    INT8_FORMAT_CHOICES,
    INT8_FORMATS,
    preprocessing_nodes,
    weight_overrides,
)

from edgefs import limits
from edgefs._lazy import require
from edgefs.cpu import TARGETS, claimed_classes, cpu_info
from edgefs.errors import EdgefsError
from edgefs.fileio import check_output_not_input
from edgefs.runtime.bundle import (
    HEAD_STEM,
    ONNX_FILE,
    Manifest,
    read_bundle,
    sha256_file,
    write_manifest,
)
from edgefs.runtime.calibration import CalibrationImageRefused, CalibrationSource, open_calibration_source
from edgefs.runtime.quantized import FP32_FALLBACK_FILE, QUANTIZATION_KEY, graph_precision
from edgefs.runtime.selfcheck import REFERENCE_IMAGES, SELFCHECK_KEY, write_selfcheck

MIN_MEAN_COSINE = 0.98
"""Floor on the mean per-image cosine between INT8 and FP32 embeddings of held-out images."""
MAX_ACCURACY_DROP = 1.0
"""Most the few-shot accuracy on held-out episodes may fall, in points (ImageFolder sources only).

Gated on accuracy rather than on top-1 agreement: where FP32 itself is unsure (a backbone
that is not meta-trained, 60% accuracy) many queries sit on a boundary and flip either way
without making the model worse; agreement is reported beside it."""
WARN_MEAN_COSINE = 0.995
"""Below this (but above the floor) the report warns that the calibration may not fit the domain."""
MIN_CALIBRATION_IMAGES = 32
"""Fewer calibration images than this are refused: the ranges would fit a handful of frames."""
PARITY_EPISODES = 300
CALIBRATE_METHODS = ("auto", "minmax", "percentile", "entropy")
"""``auto``: minmax, and where its INT8 graph misses the floors, percentile on at most
:func:`percentile_images` of the calibration images (minmax fits every range to its extreme
values; percentile clips the rarest 0.01%, which keeps resolution for the common ones)."""
PERCENTILE_IMAGES_224 = 150
"""Percentile calibration keeps every activation of every calibration image in memory: 300 images
of EfficientNet-Lite0 at 224 px were killed on a 23 GB machine, 150 fit. Scaled by input area."""
INSTALL = "pip install 'edgefs[train]' (or: pip install onnx onnxruntime)"


class QuantizeError(EdgefsError):
    """A bundle that cannot be quantised, or an INT8 graph too far from its FP32 parent."""


@dataclass
class QuantizeReport:
    """What :func:`quantize_bundle` measured; also written into the INT8 manifest.

    Attributes:
        parity: ``{"images", "mean_cosine", "min_cosine", "p01_cosine", "episodes": {...} | None}``.
        calibration: the calibration source (``CalibrationSource.describe()``) and image count.
        warnings: what the user should look at (wrong kind of calibration images, low agreement).
        passed: whether the floors were met (the bundle is written only then).
        out: the INT8 bundle folder (None when not written).
    """

    parity: dict[str, Any]
    calibration: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    passed: bool = False
    out: Path | None = None
    embeddings: np.ndarray | None = field(default=None, repr=False)
    """The INT8 graph's embeddings of the held-out images on this machine (not written anywhere)."""

    def lines(self) -> list[str]:
        p = self.parity
        out = [f"parity vs fp32 on {p['images']} held-out images: mean cosine {p['mean_cosine']:.5f}, "
               f"1st percentile {p['p01_cosine']:.5f}, min {p['min_cosine']:.5f}"]
        ep = p.get("episodes")
        if ep:
            out.append(f"{ep['episodes']} held-out {ep['ways']}-way {ep['shots']}-shot episodes ({ep['queries']} "
                       f"queries, nearest prototype): top-1 agreement {ep['top1_agreement']:.4f}; accuracy fp32 "
                       f"{ep['accuracy_reference']:.4f}, int8 {ep['accuracy_candidate']:.4f}, int8 queries on "
                       f"fp32 shots {ep.get('accuracy_fp32_shots', float('nan')):.4f}")
        else:
            out.append("no episodes: the calibration source has no classes (give an ImageFolder to measure top-1 "
                       "agreement)")
        out += [f"warning: {w}" for w in self.warnings]
        return out


def _quantization_modules() -> tuple[Any, Any]:
    require("onnx", install=INSTALL, why="edgefs quantize")
    quantization = require("onnxruntime.quantization", install=INSTALL, why="edgefs quantize")
    shape_inference = require("onnxruntime.quantization.shape_inference", install=INSTALL, why="edgefs quantize")
    return quantization, shape_inference


@dataclass
class BoundedCalibrationSource(CalibrationSource):
    """A calibration folder whose over-limit file stops the quantize run as a :class:`QuantizeError`.

    The reading itself is :class:`edgefs.runtime.calibration.CalibrationSource`'s, bounded like every
    image edgefs reads: each file no further than :data:`edgefs.limits.MAX_IMAGE_FILE_BYTES`, its header
    checked against :data:`edgefs.limits.MAX_IMAGE_PIXELS` before it is decoded. A file over either
    (or a link to a device) stops the run with its name, since the folder is not the camera images it
    should be; a file that is not an image is skipped with a warning.
    """

    def _read_file(self, path: Path) -> np.ndarray | None:
        try:
            return super()._read_file(path)
        except CalibrationImageRefused as exc:
            raise QuantizeError(f"{exc}; no bundle was written") from None


def bounded_source(source: CalibrationSource) -> CalibrationSource:
    """``source`` reading its files through :class:`BoundedCalibrationSource` (a video is returned as it is)."""
    if source.kind == "video" or isinstance(source, BoundedCalibrationSource):
        return source
    return BoundedCalibrationSource(**{f.name: getattr(source, f.name) for f in dataclasses.fields(source)})


def mixed_accuracy(
    shots: np.ndarray, queries: np.ndarray, labels: np.ndarray, distance: str = "cosine",
    ways: int = 5, n_shots: int = 1, episodes: int = PARITY_EPISODES, seed: int = 0,
) -> float:
    """Nearest-prototype accuracy with prototypes from ``shots`` and queries from ``queries``.

    Args:
        shots, queries: float ``(N, D)`` embeddings of the same images by two engines (FP32
            parent, INT8 child): a class store carried over from the parent, queried by the child.
        labels: int ``(N,)``.

    Returns:
        accuracy over the same episodes :func:`edgefs.export.parity.episode_agreement`
        draws for the same arguments.
    """
    counts = np.bincount(labels)
    usable = np.flatnonzero(counts >= n_shots + 1)
    ways = min(ways, len(usable))
    rng = np.random.default_rng(seed)
    right = total = 0
    for _ in range(episodes):
        classes = rng.choice(usable, ways, replace=False)
        support, query, truth = [], [], []
        for way, c in enumerate(classes):
            idx = rng.permutation(np.flatnonzero(labels == c))
            support.append(idx[:n_shots])
            query.extend(idx[n_shots:])
            truth.extend([way] * (len(idx) - n_shots))
        protos = np.stack([shots[s].mean(0) for s in support])
        q = queries[np.asarray(query)]
        if distance == "cosine":
            q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
            p = protos / np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)
            pred = (q @ p.T).argmax(1)
        else:
            pred = ((q[:, None, :] - protos[None]) ** 2).sum(-1).argmin(1)
        right += int((pred == np.asarray(truth)).sum())
        total += len(query)
    return right / max(total, 1)


def formats_for(target: str, asked: str = "auto") -> list[str]:
    """The formats to try, in order, for ``--target`` and ``--int8-format``.

    Raises:
        QuantizeError: a format that saturates on a class the target claims (``s8`` for ``any``).
    """
    if asked == "auto":
        return ["s8"] if target == "x86-vnni" else list(FORMAT_LADDER)
    if asked not in INT8_FORMATS:
        raise QuantizeError(f"unknown --int8-format {asked!r}; use one of {', '.join(INT8_FORMAT_CHOICES)}")
    if not INT8_FORMATS[asked]["portable"] and target != "x86-vnni":
        raise QuantizeError(f"--int8-format {asked} saturates on x86 CPUs without VNNI, which --target {target} "
                            "claims: use --target x86-vnni (on a VNNI machine), or a portable format")
    return [asked]


def quantize_bundle(
    bundle: str | Path,
    calib: str | Path | None,
    out: str | Path,
    *,
    calib_images: int = 300,
    parity_images: int = 200,
    method: str = "auto",
    target: str = "any",
    int8_format: str = "auto",
    emulate: bool = False,
    min_cosine: float = MIN_MEAN_COSINE,
    max_accuracy_drop: float = MAX_ACCURACY_DROP,
    seed: int = 0,
    overwrite: bool = False,
    json_out: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> QuantizeReport:
    """Quantise a bundle's backbone to INT8 and write it as a new bundle, if it agrees with the FP32 one.

    Args:
        bundle: the FP32 bundle folder (``edgefs export`` wrote it).
        calib: images of the camera's domain: a folder, an ImageFolder (gives top-1
            agreement on episodes) or a video. Required: random data is never used.
        out: the INT8 bundle folder to write.
        calib_images: images calibrated on (at most; a quarter of a short folder is held out).
        parity_images: held-out images for the parity check (folders: files calibration did
            not read; videos: frames between the calibration frames).
        method: ``minmax``, ``percentile`` or ``entropy`` (ONNX Runtime's calibrators), or ``auto``
            (default): minmax, then percentile where minmax misses the floors (:data:`CALIBRATE_METHODS`).
        target: the CPUs the bundle is for (:data:`edgefs.cpu.TARGETS`): ``any`` (default; the
            portable integer format), ``x86``, ``arm64`` (the same format, claiming that class only)
            or ``x86-vnni`` (int8 weights everywhere: fastest on VNNI, wrong elsewhere). The parity
            gate measures on this machine, so its CPU must be of a claimed class.
        int8_format: ``auto`` (default: the fastest portable format that meets the floors,
            :data:`FORMAT_LADDER`; ``s8`` for ``x86-vnni``) or one of :data:`INT8_FORMATS`.
        emulate: run the parity gate again for each class the target claims that this CPU is
            not, where this machine can emulate it (:mod:`edgefs.runtime.emulate`: x86 without
            VNNI under qemu on any x86, aarch64 with ``EDGEFS_AARCH64_PYTHON``); the INT8 graph
            must meet the same floors there. ``edgefs quantize`` does this by default.
        min_cosine: floor on the mean per-image cosine to FP32.
        max_accuracy_drop: most the nearest-prototype accuracy on held-out episodes may fall
            below FP32's, in points (ImageFolder sources).
        seed: shuffle seed of the calibration folder and of the episodes.
        overwrite: replace an existing ``out``.
        json_out: write the report (:func:`report_json`) here, passed or not.
        log: where progress and the parity report go.

    Returns:
        the :class:`QuantizeReport` (``out`` set when written).

    Raises:
        QuantizeError: no calibration source, too few images, an INT8 bundle as input, an
            existing ``out``, or agreement below the floors (nothing is written; the message
            gives the figures).
        CalibrationError: a calibration path that is missing, empty or unreadable.
        MissingDependencyError: onnx / onnxruntime are not installed.
    """
    from edgefs.export.parity import episode_agreement

    from edgefs.runtime.onnxruntime_backend import OnnxRuntimeEngine
    from edgefs.runtime.selfcheck import cosines

    parent = read_bundle(bundle)
    out = Path(out)
    if calib is None or str(calib).strip() == "":
        raise QuantizeError(
            "quantising needs calibration images of the camera's domain: pass --calib DIR|VIDEO (a folder of a few "
            "hundred camera images, an ImageFolder of your classes, or a video); random data is never used"
        )
    if graph_precision(parent) != "fp32":
        raise QuantizeError(f"{parent.path} is already an INT8 bundle; quantise its FP32 parent instead")
    if method not in CALIBRATE_METHODS:
        raise QuantizeError(f"unknown calibration method {method!r}; use one of {', '.join(CALIBRATE_METHODS)}")
    if target not in TARGETS:
        raise QuantizeError(f"unknown --target {target!r}; use one of {', '.join(TARGETS)}")
    here = cpu_info().int8_class
    claimed = claimed_classes(target)
    if here not in claimed:
        raise QuantizeError(
            f"--target {target} claims {', '.join(claimed)}, but this CPU is {here} ({cpu_info().model or 'unknown'}): "
            "the parity gate measures the INT8 graph on this machine, so it would measure another CPU's arithmetic. "
            f"Quantise on a {target} machine, or use --target any (the portable format, right on every class)"
        )
    formats = formats_for(target, int8_format)
    inputs = {"the FP32 bundle": parent.path, "the calibration source": Path(calib)}
    check_output_not_input(out, inputs, flag="--out")  # before anything is written or replaced
    if json_out:
        check_output_not_input(json_out, inputs, flag="--json")
    if out.exists() and not overwrite:
        raise QuantizeError(f"{out} exists; choose another --out or pass --overwrite")
    quantization, shape_inference = _quantization_modules()

    size = parent.manifest.input_size
    source = bounded_source(open_calibration_source(calib, size, seed=seed, warn=lambda m: log(f"warning: {m}")))
    calib_images = _clamped(calib_images, limits.MAX_CALIB_IMAGES, "--calib-images", "MAX_CALIB_IMAGES", log)
    parity_images = _clamped(parity_images, limits.MAX_PARITY_IMAGES, "--parity-images", "MAX_PARITY_IMAGES", log)
    n_calib, n_parity = _split_counts(source, calib_images, parity_images)
    if n_calib < MIN_CALIBRATION_IMAGES:
        raise QuantizeError(
            f"{source.path} gives {n_calib} calibration images (after holding out {n_parity} for the parity "
            f"check); INT8 needs at least {MIN_CALIBRATION_IMAGES}, a few hundred are better: add camera images"
        )
    batch = 8 if n_calib >= 8 else 1

    def calibration_batches(count: int) -> Iterator[np.ndarray]:
        """The first ``count`` calibration images, read from the source again, one batch at a time:
        never all of them in memory (the same files in the same order at every pass)."""
        return source.batches(count, batch)

    started = time.perf_counter()
    reference = OnnxRuntimeEngine(parent, device="cpu")
    stats = CalibrationStats()
    for b in calibration_batches(n_calib):  # one pass: how many are readable, and what they look like
        stats.add(b, reference.embed(b))
    n_used = stats.n
    held, labels = source.held_out(n_parity)
    if len(held) < 8:
        raise QuantizeError(
            f"{source.path} leaves {len(held)} held-out images for the parity check after {n_used} "
            "calibration images; give more images (or lower --calib-images)"
        )
    log(f"calibrating {parent.path.name} ({size[0]}x{size[1]}) on {n_used} images of {source.path} "
        f"({source.kind}, {method}); {len(held)} held out for parity")
    warnings = stats.warnings(parent.manifest)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pre = tmp / "pre.onnx"
        shape_inference.quant_pre_process(str(parent.onnx_path), str(pre), skip_symbolic_shape=True)
        keep_float = preprocessing_nodes(pre)
        ref = np.concatenate([reference.embed(held[i:i + 16]) for i in range(0, len(held), 16)])

        def attempt(fmt: str, calibrator: str, used: int, prefix: str) -> tuple[
                Path, Manifest, QuantizeReport, list[str]]:
            """Quantise to ``fmt`` with ``calibrator`` on the first ``used`` calibration images into a folder
            of ``tmp``; measure it against FP32."""
            folder = tmp / f"bundle-{fmt}-{calibrator}"
            folder.mkdir()
            overrides = weight_overrides(pre, keep_float, fmt, quantization)
            try:
                quantization.quantize_static(
                    str(pre), str(folder / ONNX_FILE), _reader(quantization, lambda: calibration_batches(used)),
                    quant_format=quantization.QuantFormat.QDQ, per_channel=True,
                    activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
                    calibrate_method={"minmax": quantization.CalibrationMethod.MinMax,
                                      "percentile": quantization.CalibrationMethod.Percentile,
                                      "entropy": quantization.CalibrationMethod.Entropy}[calibrator],
                    nodes_to_exclude=keep_float,
                    extra_options={"TensorQuantOverrides": overrides} if overrides else {},
                )
            except (RuntimeError, ValueError) as exc:  # onnx / onnxruntime errors of an unsupported graph
                raise QuantizeError(f"ONNX Runtime could not quantise {parent.onnx_path}: {exc}") from exc
            for name in (f"{HEAD_STEM}.json", f"{HEAD_STEM}.npz"):
                shutil.copy2(parent.path / name, folder / name)
            # The FP32 graph rides along, for engines that fail the self-check where the user allows it.
            shutil.copy2(parent.onnx_path, folder / FP32_FALLBACK_FILE)
            fingerprint = sha256_file(folder / ONNX_FILE)
            info = {
                "precision": "int8", "format": "QDQ", "int8_format": fmt, "weights": INT8_FORMATS[fmt]["weights"],
                "activations": "uint8 per-tensor", "target": target, "cpu_classes": claimed,
                "parity_measured_on": {**cpu_info().to_json(), "how": "native"},
                "float_nodes": keep_float, "method": calibrator,
                "fp32_fallback": {"file": FP32_FALLBACK_FILE, "sha256": parent.fingerprint},
                "tool": f"onnxruntime {require('onnxruntime', INSTALL, 'edgefs quantize').__version__}",
                "parent_fingerprint": parent.fingerprint, "parent_path": str(parent.path),
                "calibration": {**source.describe(), "images": used},
            }
            if method == "auto":
                info["method_asked"] = "auto"
            export = {k: v for k, v in parent.manifest.export.items() if k != "torch_weights"}
            export[QUANTIZATION_KEY] = info
            export.pop(SELFCHECK_KEY, None)
            manifest = Manifest(
                backbone=parent.manifest.backbone, input=parent.manifest.input, output=parent.manifest.output,
                head=parent.manifest.head, fingerprint=fingerprint, training=parent.manifest.training,
                export=export,
            )
            write_manifest(folder, manifest)
            candidate = OnnxRuntimeEngine(read_bundle(folder), device="cpu")
            got = np.concatenate([candidate.embed(held[i:i + 16]) for i in range(0, len(held), 16)])
            cos = cosines(ref, got)
            # Self-check: held-out images, FP32 embeddings, and what this INT8 graph gave on them here.
            pick = np.unique(np.linspace(0, len(held) - 1, min(len(held), REFERENCE_IMAGES)).round().astype(int))
            manifest.export[SELFCHECK_KEY] = write_selfcheck(
                folder, held[pick], ref[pick], f"onnxruntime fp32 (parent {parent.fingerprint[:12]})",
                {"int8_cosines": {"mean": float(cos[pick].mean()), "min": float(cos[pick].min()),
                                  "measured_on": cpu_info().int8_class}})
            parity: dict[str, Any] = {
                "images": len(held), "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
                "p01_cosine": float(np.percentile(cos, 1)), "episodes": None,
            }
            if labels is not None:
                distance = str(parent.head.params.get("distance", "cosine"))
                rule = "cosine" if distance == "cosine" else "euclidean"
                parity["episodes"] = episode_agreement(ref, got, labels, rule, episodes=PARITY_EPISODES, seed=seed)
                if parity["episodes"] is not None:
                    parity["episodes"]["accuracy_fp32_shots"] = mixed_accuracy(
                        ref, got, labels, rule, episodes=PARITY_EPISODES, seed=seed)
            report = QuantizeReport(parity, info["calibration"], list(warnings), embeddings=got)
            ep = parity["episodes"]
            failures = []
            if parity["mean_cosine"] < min_cosine:
                failures.append(f"mean cosine {parity['mean_cosine']:.5f} < {min_cosine}")
            drop = 100 * (ep["accuracy_reference"] - ep["accuracy_candidate"]) if ep else 0.0
            if drop > max_accuracy_drop:
                failures.append(f"few-shot accuracy {drop:.2f} points below fp32 (at most {max_accuracy_drop} allowed)")
            if not failures and parity["mean_cosine"] < WARN_MEAN_COSINE:
                report.warnings.append(
                    f"mean cosine to fp32 is {parity['mean_cosine']:.4f} (below {WARN_MEAN_COSINE}): check the "
                    "calibration images are frames of this camera's scenes"
                    + (", or try --method percentile" if calibrator != "percentile" else "")
                )
            info["parity"] = parity
            info["floors"] = {"mean_cosine": min_cosine, "max_accuracy_drop_points": max_accuracy_drop}
            info["warnings"] = report.warnings
            info["seconds"] = round(time.perf_counter() - started, 2)
            for line in report.lines():
                log(prefix + line)
            return folder, manifest, report, failures

        # Formats fastest first, each with the calibrator asked; auto's percentile comes last, on the
        # last format (its memory cost is paid once, where nothing cheaper passed).
        tries = [(fmt, "minmax" if method == "auto" else method) for fmt in formats]
        if method == "auto":
            tries.append((formats[-1], "percentile"))
        missed: list[tuple[str, list[str]]] = []
        for fmt, calibrator in tries:
            used = n_used
            if calibrator == "percentile" and method == "auto":
                used = percentile_images(size, n_used, batch)
            if missed:
                log(f"{missed[-1][0]} missed the floors ({'; '.join(missed[-1][1])}); trying {fmt} weights, "
                    f"{calibrator} on {used} images")
            folder, manifest, report, failures = attempt(fmt, calibrator, used,
                                                         f"{fmt}, {calibrator}: " if missed else "")
            if not failures:
                break
            missed.append((f"{fmt}, {calibrator}", failures))
        if json_out:
            Path(json_out).write_text(report_json(report))
        if failures:
            said = "; ".join(f"{m}: {', '.join(f)}" for m, f in missed) if len(missed) > 1 else "; ".join(failures)
            raise QuantizeError(
                f"the INT8 graph is too far from {parent.path.name}: {said}; no bundle was written. "
                "Calibrate on more (and more varied) images of the camera's domain"
                + (", try --method percentile" if all(c != "percentile" for _, c in tries) else "")
                + ", or keep the fp32 bundle"
            )
        info = manifest.export[QUANTIZATION_KEY]
        info["parity_emulated"] = emulated_parity(folder / ONNX_FILE, held, labels, ref, report, claimed, parent,
                                                  min_cosine, max_accuracy_drop, seed, log) if emulate else {}
        write_manifest(folder, manifest)  # again, now with the parity figures
        if out.exists():
            shutil.rmtree(out)
        folder.rename(out)
        report.passed, report.out = True, out
        if json_out:
            Path(json_out).write_text(report_json(report))
        log(f"wrote {out} (int8, fingerprint {manifest.fingerprint[:12]}..., parent {parent.fingerprint[:12]}...)")
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def emulated_parity(
    onnx_path: Path, held: np.ndarray, labels: np.ndarray | None, ref: np.ndarray, report: QuantizeReport,
    claimed: list[str], parent: Any, min_cosine: float, max_accuracy_drop: float, seed: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The parity gate for each claimed CPU class other than this one, under emulation where possible.

    Returns:
        ``{class: {"how", "mean_cosine", "min_cosine", "to_native_min_cosine", "episodes", "seconds"} |
        {"skipped": why}}``.

    Raises:
        QuantizeError: the graph misses the floors on an emulated class (nothing is written).
    """
    from edgefs.export.parity import episode_agreement

    from edgefs.runtime.emulate import embed_emulated, emulator_for
    from edgefs.runtime.selfcheck import cosines

    out: dict[str, Any] = {}
    here = cpu_info().int8_class
    for cpu_class in claimed:
        if cpu_class == here:
            continue
        emulator, why = emulator_for(cpu_class)
        if emulator is None:
            out[cpu_class] = {"skipped": why}
            log(f"parity on {cpu_class}: not measured here ({why})")
            continue
        try:
            got, seconds = embed_emulated(emulator, onnx_path, held)
        except RuntimeError as exc:
            raise QuantizeError(f"the parity check on {cpu_class} could not run: {exc}; pass --no-emulate to skip "
                                "it (the bundle then records that it was not measured there)") from None
        cos = cosines(ref, got)
        entry: dict[str, Any] = {"how": emulator.how, "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
                                 "to_native_min_cosine": float(cosines(report.embeddings, got).min())
                                 if report.embeddings is not None else None, "seconds": round(seconds, 1)}
        failures = [f"mean cosine {entry['mean_cosine']:.5f} < {min_cosine}"] if entry["mean_cosine"] < min_cosine \
            else []
        if labels is not None:
            distance = str(parent.head.params.get("distance", "cosine"))
            ep = episode_agreement(ref, got, labels, "cosine" if distance == "cosine" else "euclidean",
                                   episodes=PARITY_EPISODES, seed=seed)
            entry["episodes"] = ep
            drop = 100 * (ep["accuracy_reference"] - ep["accuracy_candidate"]) if ep else 0.0
            if drop > max_accuracy_drop:
                failures.append(f"few-shot accuracy {drop:.2f} points below fp32")
        log(f"parity on {cpu_class} ({emulator.how}, {seconds:.0f} s): mean cosine {entry['mean_cosine']:.5f}, min "
            f"{entry['min_cosine']:.5f}; against this machine's INT8 min {entry['to_native_min_cosine']:.5f}")
        if failures:
            raise QuantizeError(f"the INT8 graph misses the floors on {cpu_class} ({emulator.how}): "
                                f"{', '.join(failures)}; no bundle was written. Quantise with --target {here}, or "
                                "report this with 'edgefs doctor' output: a portable format should not differ")
        out[cpu_class] = entry
    return out


def percentile_images(size: tuple[int, int] | list[int], available: int, batch: int = 1) -> int:
    """How many calibration images ``auto`` gives percentile calibration at this input size: a
    whole number of batches (ONNX Runtime's histogram calibrators stack the batches' outputs)."""
    area = int(size[0]) * int(size[1])
    n = max(MIN_CALIBRATION_IMAGES, min(available, int(PERCENTILE_IMAGES_224 * 224 * 224 / area)))
    return max(batch, n - n % batch)


def report_json(report: QuantizeReport) -> str:
    """The report as JSON (for ``--json``)."""
    return json.dumps({"parity": report.parity, "calibration": report.calibration, "warnings": report.warnings,
                       "passed": report.passed, "out": str(report.out) if report.out else None}, indent=2)
