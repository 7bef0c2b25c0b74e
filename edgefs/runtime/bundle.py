"""The model bundle: what crosses from the workstation to the device.

``model.edgefs/`` holds ``backbone.onnx`` (uint8 NHWC RGB images in, float32
embeddings out; normalisation and channel handling inside the graph),
``head.json`` + ``head.npz`` (a :class:`~edgefs.heads.HeadSpec`) and
``manifest.json``. The manifest's ``fingerprint`` is the sha256 of
``backbone.onnx``: TensorRT engines, class stores and class packs are tied to it,
so embeddings from different models are never mixed.

Reading a bundle is torch-free and never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefs import limits
from edgefs.errors import EdgefsError
from edgefs.fileio import FileRefused, atomic_write_text, check_regular_file, read_limited, unreadable_hint
from edgefs.heads import HeadSpec

BUNDLE_FORMAT = "edgefs-bundle"
BUNDLE_SCHEMA_VERSION = 1
ONNX_FILE = "backbone.onnx"
HEAD_STEM = "head"
MANIFEST_FILE = "manifest.json"
INPUT_NAME = "images"
MAX_DIMENSION = 1 << 16  # input height/width and embedding size a manifest may declare
OUTPUT_NAME = "embeddings"


class BundleError(EdgefsError):
    """A bundle that is missing, corrupt, newer than this edgefs, or not the expected one."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def source_checkpoint(bundle: str | Path) -> str | None:
    """The SHA256 of the checkpoint ``bundle`` was exported from (a quantised bundle keeps its parent's), or None."""
    try:
        doc = json.loads((Path(bundle) / MANIFEST_FILE).read_text())
        recorded = doc["training"]["checkpoint"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return recorded if isinstance(recorded, str) else None


def exported_from(bundle: str | Path, checkpoint: str | Path) -> bool:
    """Whether ``bundle`` was exported (or quantised from an export) of ``checkpoint`` as it is now.

    A bundle left at the same path by an earlier checkpoint is not taken for the new one.
    """
    recorded = source_checkpoint(bundle)
    return recorded is not None and Path(checkpoint).is_file() and recorded == sha256_file(Path(checkpoint))


@dataclass
class Manifest:
    """``manifest.json`` of a bundle.

    Attributes:
        backbone: the backbone's spec (name, input_size, in_channels, mean, std,
            embedding_dim, options) as saved in the checkpoint.
        input: ``{"name", "dtype": "uint8", "layout": "NHWC", "height", "width",
            "channels": 3, "color_order": "RGB"}``: what ``backbone.onnx`` takes.
        output: ``{"name", "dtype": "float32", "dim"}``.
        head: ``{"type", "params"}``, mirrored from ``head.json`` for a quick look.
        fingerprint: sha256 of ``backbone.onnx``.
        training: the resolved training config and checkpoint facts.
        export: opset, tools and versions used, parity figures.
        schema_version: bumped when the meaning of a field changes.
    """

    backbone: dict[str, Any]
    input: dict[str, Any]
    output: dict[str, Any]
    head: dict[str, Any]
    fingerprint: str
    training: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    schema_version: int = BUNDLE_SCHEMA_VERSION
    format: str = BUNDLE_FORMAT

    @property
    def input_size(self) -> tuple[int, int]:
        """``(height, width)`` the camera frame is resized/cropped to."""
        return int(self.input["height"]), int(self.input["width"])

    @property
    def embedding_dim(self) -> int:
        return int(self.output["dim"])

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format, "schema_version": self.schema_version, "fingerprint": self.fingerprint,
            "backbone": self.backbone, "input": self.input, "output": self.output, "head": self.head,
            "training": self.training, "export": self.export,
        }

    @classmethod
    def from_json(cls, doc: Any, where: str) -> Manifest:
        if not isinstance(doc, dict) or doc.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{where} is not an edgefs bundle manifest (format is not {BUNDLE_FORMAT!r})")
        version = doc.get("schema_version")
        if not isinstance(version, int):
            raise BundleError(f"{where} has no integer schema_version")
        if version > BUNDLE_SCHEMA_VERSION:
            raise BundleError(
                f"{where} has bundle schema version {version}, newer than this edgefs reads "
                f"({BUNDLE_SCHEMA_VERSION}); upgrade edgefs on this device, or export with a matching version"
            )
        for key in ("backbone", "input", "output", "head"):
            if not isinstance(doc.get(key), dict):
                raise BundleError(f"{where}: field {key!r} is missing or not an object; export the bundle again")
        for key in ("training", "export"):
            if not isinstance(doc.get(key, {}), dict):
                raise BundleError(f"{where}: field {key!r} is not an object; export the bundle again")
        if not isinstance(doc.get("fingerprint"), str):
            raise BundleError(f"{where}: field 'fingerprint' is missing or not text; export the bundle again")
        for section, key in (("input", "height"), ("input", "width"), ("output", "dim")):
            value = doc[section].get(key)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_DIMENSION:
                raise BundleError(f"{where}: {section}.{key} is {value!r:.40}, not a whole number from 1 to "
                                  f"{MAX_DIMENSION}; the manifest is damaged: export the bundle again")
        return cls(
            backbone=dict(doc["backbone"]), input=dict(doc["input"]), output=dict(doc["output"]),
            head=dict(doc["head"]), fingerprint=doc["fingerprint"],
            training=dict(doc.get("training", {})), export=dict(doc.get("export", {})),
            schema_version=version,
        )


@dataclass
class Bundle:
    """A bundle on disk: its folder, manifest and head spec.

    ``onnx_file`` is ``backbone.onnx`` except for the FP32 graph an INT8 bundle carries for
    engines that fail its self-check (:func:`edgefs.runtime.select.open_engine`).
    """

    path: Path
    manifest: Manifest
    head: HeadSpec
    onnx_file: str = ONNX_FILE

    @property
    def onnx_path(self) -> Path:
        return self.path / self.onnx_file

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` atomically (temporary file, then rename)."""
    atomic_write_text(folder / MANIFEST_FILE, json.dumps(manifest.to_json(), indent=2))


def read_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Open a bundle folder, check its schema and (``verify``) the ONNX file's fingerprint.

    Raises:
        BundleError: a missing folder or file, an unreadable or newer manifest, a head
            file that would need pickle, or an ONNX file whose sha256 is not the
            manifest's fingerprint (truncated, corrupt or replaced).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise BundleError(f"bundle {folder} does not exist; create it with 'edgefs export CKPT --out {folder}'")
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.exists() and not manifest_path.is_symlink():
        raise BundleError(f"{folder} has no {MANIFEST_FILE}; is it an edgefs bundle?")
    try:
        doc = json.loads(read_limited(manifest_path, limits.MAX_MANIFEST_BYTES, "bundle manifest"))
    except FileRefused as exc:
        raise BundleError(f"{exc}; copy the bundle again, or export it again") from None
    except ValueError as exc:
        raise BundleError(f"{manifest_path} is unreadable: not valid JSON ({exc}); copy the bundle again, or "
                          "export it again") \
            from None
    manifest = Manifest.from_json(doc, str(manifest_path))
    onnx_path = folder / ONNX_FILE
    if not onnx_path.exists() and not onnx_path.is_symlink():
        raise BundleError(f"{folder} has no {ONNX_FILE}; export the bundle again")
    try:
        check_regular_file(onnx_path, limits.MAX_ONNX_BYTES, "bundle model")
    except FileRefused as exc:
        raise BundleError(f"{exc}; copy the bundle again, or export it again") from None
    if verify:
        try:
            actual = sha256_file(onnx_path)
        except PermissionError:
            raise BundleError(f"cannot read the bundle model: {unreadable_hint(onnx_path)}") from None
        if actual != manifest.fingerprint:
            raise BundleError(
                f"{onnx_path} does not match the manifest's fingerprint (sha256 {actual[:12]}..., expected "
                f"{manifest.fingerprint[:12]}...): the file is truncated, corrupt or from another export. "
                "Copy the bundle again or re-export it."
            )
    try:
        head = HeadSpec.load(folder / HEAD_STEM)
    except EdgefsError as exc:
        raise BundleError(f"bundle {folder}: {exc}") from exc
    return Bundle(folder, manifest, head)
