"""What ``edgefs tune`` measures: the bundles given (:class:`BundleFacts`) and every way to run the camera
loop with them on this machine (:class:`Setting`, :func:`plan`).

Torch-free (the device side); the engines' stacks are not imported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefs.errors import EdgefsError

CPU_BACKENDS = ("onnxruntime", "openvino")
ENGINES = (*CPU_BACKENDS, "tensorrt")


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
