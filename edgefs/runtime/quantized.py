"""What an INT8 bundle says about itself: its graph precision and the FP32 bundle it was made from.

``edgefs quantize`` writes a new bundle whose ``backbone.onnx`` holds a static
INT8 (QDQ) graph. Its fingerprint is the sha256 of that graph, as for every
bundle, so class stores, packs and TensorRT engines are tied to it alone. The
manifest's ``export["quantization"]`` records the parent bundle's fingerprint,
how it was calibrated and the measured agreement with the parent (cosine of the
embeddings, top-1 agreement on held-out episodes). The CPU engines read the
precision from here: an INT8 bundle runs INT8.

Torch-free; no heavy imports.
"""

from __future__ import annotations

from typing import Any

from edgefs.errors import EdgefsError
from edgefs.runtime.bundle import Bundle, Manifest

QUANTIZATION_KEY = "quantization"


def quantization_info(manifest_or_bundle: Manifest | Bundle) -> dict[str, Any] | None:
    """``manifest.export["quantization"]`` of an INT8 bundle, or None for a float bundle."""
    manifest = manifest_or_bundle.manifest if isinstance(manifest_or_bundle, Bundle) else manifest_or_bundle
    info = manifest.export.get(QUANTIZATION_KEY)
    return dict(info) if isinstance(info, dict) else None


def graph_precision(manifest_or_bundle: Manifest | Bundle) -> str:
    """``"int8"`` for a bundle made by ``edgefs quantize``, else ``"fp32"``."""
    info = quantization_info(manifest_or_bundle)
    return str(info.get("precision", "int8")) if info else "fp32"


def parent_fingerprint(manifest_or_bundle: Manifest | Bundle) -> str | None:
    """The fingerprint of the FP32 bundle an INT8 bundle was quantised from (None for a float bundle)."""
    info = quantization_info(manifest_or_bundle)
    return str(info["parent_fingerprint"]) if info and "parent_fingerprint" in info else None


LEGACY_CLASSES = ("x86-vnni", "arm64")
"""What an INT8 bundle made before bundles recorded their CPU classes was right on: int8 weights
everywhere (the ``vnni`` format of :mod:`edgefs.export.quantize`), which saturate on other x86."""


def int8_classes(manifest_or_bundle: Manifest | Bundle) -> list[str] | None:
    """The CPU classes (:data:`edgefs.cpu.INT8_CLASSES`) an INT8 bundle claims; None for a float bundle."""
    info = quantization_info(manifest_or_bundle)
    if info is None:
        return None
    claimed = info.get("cpu_classes")
    if isinstance(claimed, list) and all(isinstance(c, str) for c in claimed):
        return list(claimed)
    return list(LEGACY_CLASSES)


def unclaimed_cpu(bundle: Bundle) -> str | None:
    """Why this CPU is not one ``bundle``'s INT8 graph was made for, or None where it is (or it is float)."""
    from edgefs.cpu import cpu_info

    claimed = int8_classes(bundle)
    here = cpu_info()
    if claimed is None or here.int8_class in claimed:
        return None
    info = quantization_info(bundle) or {}
    made = ("made before bundles recorded their CPU classes, with int8 weights everywhere"
            if "cpu_classes" not in info else f"quantised with --target {info.get('target', '?')}")
    return (f"INT8 bundle {bundle.path.name} is for {', '.join(claimed)} CPUs ({made}), and this CPU is "
            f"{here.int8_class} ({here.model or here.arch}): its 8-bit sums saturate here and the embeddings "
            "drift from the FP32 model's")


FP32_FALLBACK_FILE = "backbone-fp32.onnx"


def fp32_fallback(bundle: Bundle) -> Bundle | None:
    """The FP32 graph an INT8 bundle carries, as a bundle an engine can open, or None.

    It keeps the INT8 bundle's fingerprint, so the class stores made with the INT8 bundle stay
    usable: ``edgefs quantize`` measured that the two graphs' embeddings serve each other's shots.

    Raises:
        EdgefsError: a fallback file that is missing or is not the parent's graph (SHA256).
    """
    from edgefs.runtime.bundle import sha256_file

    info = quantization_info(bundle) or {}
    entry = info.get("fp32_fallback")
    if not isinstance(entry, dict):
        return None
    path = bundle.path / str(entry.get("file", FP32_FALLBACK_FILE))
    if not path.is_file() or sha256_file(path) != entry.get("sha256"):
        raise EdgefsError(f"{path} is missing or is not the FP32 graph bundle {bundle.path.name} was quantised "
                          "from (sha256); copy the bundle again")
    export = {k: v for k, v in bundle.manifest.export.items() if k != QUANTIZATION_KEY}  # the self-check stays
    manifest = Manifest(backbone=bundle.manifest.backbone, input=bundle.manifest.input,
                        output=bundle.manifest.output, head=bundle.manifest.head,
                        fingerprint=bundle.manifest.fingerprint, training=bundle.manifest.training, export=export)
    return Bundle(bundle.path, manifest, bundle.head, onnx_file=path.name)


def cpu_precision(bundle: Bundle, asked: str, backend: str) -> str:
    """The precision a CPU backend runs ``bundle`` at, refusing what it cannot honour.

    A CPU backend runs the bundle's graph as it is: an FP32 bundle runs FP32 and an INT8
    bundle (``edgefs quantize``) runs INT8. ``asked`` is ``"fp32"`` (the default, meaning
    "the bundle as it is") or ``"int8"``, which needs an INT8 bundle.

    Raises:
        EdgefsError: ``int8`` asked of a float bundle (the message names ``edgefs quantize``),
            or a precision these backends do not have on the CPU (fp16).
    """
    graph = graph_precision(bundle)
    if asked == "int8" and graph != "int8":
        raise EdgefsError(
            f"bundle {bundle.path} holds an fp32 graph; for int8 on the CPU make an INT8 bundle with "
            f"'edgefs quantize {bundle.path} --calib DIR|VIDEO --out {bundle.path.with_name(bundle.path.stem)}"
            "-int8.edgefs' and open that"
        )
    if asked not in ("fp32", "int8"):
        raise EdgefsError(f"the {backend} backend on the CPU runs fp32 or int8 bundles, not {asked}")
    return graph
