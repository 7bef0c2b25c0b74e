"""Checkpoint -> bundle folder: ONNX graph, parity check, head, manifest; all or nothing.

Everything is written into a hidden temporary folder beside ``out`` and renamed
into place only after the parity check passed and the finished bundle reads
back, so an export that fails (or is killed) never leaves a half bundle at
``out``. A killed export can leave the hidden ``.NAME.*.partial`` folder; it is
safe to delete.

Bundle contents (see :mod:`edgefs.runtime.bundle`): ``backbone.onnx``,
``head.json`` + ``head.npz``, ``manifest.json``, and ``backbone.pt`` -- the
backbone's plain state dict (``torch.load(weights_only=True)``), which only the
runtime's development ``torch`` backend reads to rebuild the backbone from the
manifest's spec. Devices never need ``backbone.pt``; it can be left off when
copying a bundle to one (the fingerprint covers ``backbone.onnx`` only).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from edgefs.export.onnx_export import DEFAULT_OPSET, ExportError, export_onnx
from edgefs.export.parity import DEFAULT_BATCH_SIZES, ParityReport, check_parity
from edgefs.export.parity import parity_images as pick_parity_images

from edgefs import __version__
from edgefs.fileio import check_output_not_input
from edgefs.heads.spec import HeadSpec
from edgefs.runtime.bundle import (
    HEAD_STEM,
    INPUT_NAME,
    ONNX_FILE,
    OUTPUT_NAME,
    Bundle,
    Manifest,
    read_bundle,
    sha256_file,
    write_manifest,
)
from edgefs.runtime.selfcheck import SELFCHECK_KEY, reference_images, write_selfcheck
from edgefs.train.checkpoint import load_checkpoint

TORCH_WEIGHTS_FILE = "backbone.pt"
PARITY_SEED = 0


class ParityError(ExportError):
    """The exported graph's embeddings are not close enough to PyTorch's."""


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _jsonable(value: Any) -> Any:
    """Plain JSON types (tuples -> lists, paths and other objects -> str)."""
    return json.loads(json.dumps(value, default=str))


def recorded_data(doc: dict[str, Any]) -> list[str]:
    """The data sources a checkpoint records (``config.data``): one folder, or a list of them
    (cached-trunk training records every domain folder it trained on)."""
    stored = (doc.get("config") or {}).get("data")
    if isinstance(stored, list | tuple):
        return [str(s) for s in stored if s]
    return [str(stored)] if stored else []


def resolve_parity_data(data: str | Path | None, doc: dict[str, Any], checkpoint: Path,
                        log: Callable[[str], None] | None = None) -> str | list[str]:
    """The data source for parity images: ``data``, else the checkpoint's training data that exists here.

    A checkpoint that records several data folders (one per domain) gives those of them that
    exist here, as a list (:func:`edgefs.export.parity.parity_images` spreads the images over
    them); the missing ones are named through ``log``.

    Raises:
        ExportError: none is available; the message names the recorded folders and says to pass ``--data``.
    """
    if data is not None:
        return str(data)
    recorded = recorded_data(doc)
    usable = [s for s in recorded if s.startswith("fashion-mnist") or Path(s).exists()]
    missing = [s for s in recorded if s not in usable]
    hint = ("pass --data DIR (a folder with train/ val/ test/, a folder of classes, or fashion-mnist[:DIR])")
    if usable:
        if missing and log is not None:
            log(f"parity images from {', '.join(usable)}; checkpoint {checkpoint} also records "
                f"{', '.join(missing)}, which {'does' if len(missing) == 1 else 'do'} not exist here")
        return usable[0] if len(usable) == 1 else usable
    if len(recorded) > 1:
        where = (f"records data folders {', '.join(recorded)}, none of which exists here (relative paths are "
                 "taken from the current folder)")
    elif recorded:
        where = f"records data {recorded[0]!r}, which does not exist here"
    else:
        where = "records no data folder"
    raise ExportError(f"the parity check needs real images, and checkpoint {checkpoint} {where}; {hint}")


def data_inputs(sources: str | Path | Sequence[str | Path] | None, what: str = "the parity data") -> dict[str, str]:
    """The folders among data sources, named for :func:`check_output_not_input` (``fashion-mnist:DIR``
    gives ``DIR``; ``fashion-mnist`` and ``procedural`` name no folder of the user's)."""
    items = [] if sources is None else [sources] if isinstance(sources, str | Path) else list(sources)
    out: dict[str, str] = {}
    for item in items:
        text = str(item)
        if text.startswith("fashion-mnist"):
            text = text.partition(":")[2]
        if text and text != "procedural":
            out[what if len(items) == 1 else f"{what} {text}"] = text
    return out


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} is not empty; pass --overwrite to replace it, or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an old ``out`` is moved aside first and removed after."""
    old = None
    if out.is_dir():
        if any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            out.replace(old / out.name)
        else:
            out.rmdir()
    tmp.replace(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _training_facts(doc: dict[str, Any], checkpoint: Path) -> dict[str, Any]:
    return _jsonable({
        "method": doc.get("method"),
        "config": doc.get("config"),
        "episode": doc.get("episode"),
        "elapsed_s": doc.get("elapsed_s"),
        "best_val": doc.get("best_val"),
        "checkpoint": {"file": checkpoint.name, "sha256": sha256_file(checkpoint)},
    })


def export_bundle(
    checkpoint: str | Path,
    out: str | Path,
    *,
    data: str | None = None,
    split: str = "test",
    parity_images: int = 64,
    opset: int = DEFAULT_OPSET,
    min_cosine: float = 0.9999,
    overwrite: bool = False,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    head_type: str | None = None,
    distance: str | None = None,
    input_size: int | None = None,
    log: Callable[[str], None] = print,
) -> Bundle:
    """Export a checkpoint's backbone and head as a device bundle, after a parity check.

    Args:
        checkpoint: an edgefs checkpoint (``best.pt``).
        out: the bundle folder to create, e.g. ``models/glyphs.edgefs``.
        data: where the parity images come from (as ``open_split`` reads it);
            default: the data folder the checkpoint was trained on, if it exists here.
        split: the split to take parity images from.
        parity_images: how many images, spread over classes (seeded).
        opset: ONNX opset.
        min_cosine: the lowest per-image cosine similarity between ONNX Runtime and
            PyTorch embeddings that passes.
        overwrite: replace a non-empty ``out``.
        batch_sizes: batch sizes the parity check runs at (1 and a larger one).
        head_type, distance: another device head or prototype distance than the
            checkpoint's (:func:`override_head`).
        input_size: another input side than the one the checkpoint was trained at, for a
            backbone whose weights do not depend on it (EfficientNet-Lite, ResNet-12): fewer
            pixels cost less per frame and usually some accuracy (``edgefs eval`` measures it;
            ``edgefs tune`` weighs both). The manifest records both sizes.
        log: where progress and the parity table go.

    Returns:
        the written bundle, read back with :func:`edgefs.runtime.bundle.read_bundle`.

    Raises:
        CheckpointError: an unreadable checkpoint, or an unknown backbone/method.
        ExportError: a non-empty ``out``, no parity data, an operator the exporter
            cannot write (named in the message), or an invalid graph.
        ParityError: ONNX Runtime's embeddings differ from PyTorch's (figures in the message).
        DataError: an unusable parity data folder.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if parity_images < 1:
        raise ExportError(f"--parity-images must be at least 1, got {parity_images}")
    # Before --overwrite may move anything aside: the bundle folder is replaced whole.
    check_output_not_input(out, {"the checkpoint": checkpoint, **data_inputs(data, "the --data folder")})
    _prepare_out(out, overwrite)
    method, doc = load_checkpoint(checkpoint)
    backbone = method.backbone.eval()
    training = _training_facts(doc, checkpoint)
    if input_size is not None and input_size != backbone.spec.input_size:
        training["input_size"] = {"trained": backbone.spec.input_size, "exported": input_size}
        backbone = resize_backbone(backbone, input_size, checkpoint)
    spec = backbone.spec
    source = resolve_parity_data(data, doc, checkpoint, log)
    check_output_not_input(out, data_inputs(source, "the checkpoint's data folder"))
    images = pick_parity_images(source, split, spec.input_size, parity_images, seed=PARITY_SEED)
    log(f"exporting {spec.name} ({spec.input_size} px, {spec.embedding_dim}-d) from {checkpoint} to {out}")
    head = override_head(method.head_spec(), head_type, distance)
    return write_bundle(backbone, head, out, images, {"data": source, "split": split, "seed": PARITY_SEED},
                        training, opset=opset, min_cosine=min_cosine,
                        overwrite=overwrite, batch_sizes=batch_sizes, log=log)


def resize_backbone(backbone: torch.nn.Module, input_size: int, checkpoint: Path) -> torch.nn.Module:
    """The same trained weights in a backbone built for ``input_size`` pixels.

    Raises:
        ExportError: a backbone that cannot take that size, or whose weights or embedding size
            depend on it (Conv-4 flattens its last feature map): export it at its own size.
    """
    from edgefs.backbones import build_backbone

    spec = backbone.spec
    try:
        resized = build_backbone(spec.name, **{**spec.options, "input_size": input_size})
        resized.load_state_dict(backbone.state_dict())
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ExportError(f"{checkpoint} ({spec.name}, trained at {spec.input_size} px) cannot be exported at "
                          f"{input_size} px: {str(exc).splitlines()[0]}; export it at {spec.input_size} px") from None
    if resized.spec.embedding_dim != spec.embedding_dim:
        raise ExportError(f"{spec.name}'s embedding has {resized.spec.embedding_dim} values at {input_size} px "
                          f"against {spec.embedding_dim} at {spec.input_size} px, where it was trained: its weights "
                          f"depend on the input size; export it at {spec.input_size} px")
    return resized.eval()


#: Heads a bundle can be given without learned arrays (``--head``): built from the shots alone.
ARRAY_FREE_HEADS = ("prototype", "imprint", "matching", "finetune")


def override_head(spec: HeadSpec, head_type: str | None = None, distance: str | None = None) -> HeadSpec:
    """``spec`` with another head type and/or prototype distance (``edgefs export --head/--distance``).

    The same type keeps its parameters and arrays; another type starts from defaults and
    must be one of :data:`ARRAY_FREE_HEADS` (relation and siamese heads need arrays that
    only their own training produces).

    Raises:
        ExportError: an unknown or array-needing head type, or a distance for a non-prototype head.
    """
    if head_type is None and distance is None:
        return spec
    target = head_type or spec.head_type
    if target == spec.head_type:
        params, arrays = dict(spec.params), dict(spec.arrays)
    elif target in ARRAY_FREE_HEADS:
        params, arrays = {}, {k: v for k, v in spec.arrays.items() if k == "center"}
    else:
        raise ExportError(f"--head {target} needs arrays learned by its own training method; choose one of "
                          f"{', '.join(ARRAY_FREE_HEADS)} or export a '{target}' checkpoint")
    if distance is not None:
        if target != "prototype":
            raise ExportError(f"--distance applies to the prototype head, not to --head {target}")
        if distance not in ("cosine", "euclidean"):
            raise ExportError(f"unknown --distance {distance!r}; use cosine or euclidean")
        params["distance"] = distance
        params.pop("temperature", None)  # each distance has its own default scale
    return HeadSpec(target, params, arrays)


def write_bundle(
    backbone: torch.nn.Module,
    head: HeadSpec,
    out: str | Path,
    images: np.ndarray,
    parity_data: dict[str, Any],
    training: dict[str, Any],
    *,
    opset: int = DEFAULT_OPSET,
    min_cosine: float = 0.9999,
    overwrite: bool = False,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    log: Callable[[str], None] = print,
) -> Bundle:
    """Export ``backbone`` to ONNX, check parity on ``images`` and write the bundle with ``head``.

    Args:
        backbone: a :class:`edgefs.backbones.Backbone` in eval mode.
        head: the device head's spec.
        out: the bundle folder to create.
        images: uint8 ``(N, S, S, 3)`` parity images at the backbone's input size.
        parity_data: where the parity images came from (recorded in the manifest).
        training: what made the weights (the manifest's ``training`` field).
        Other arguments: as :func:`export_bundle`.

    Returns:
        the written bundle, read back.
    """
    out = Path(out)
    _prepare_out(out, overwrite)
    spec = backbone.spec
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the bundle is an ordinary folder
        onnx_path = tmp / ONNX_FILE
        graph = export_onnx(backbone, onnx_path, opset=opset)
        report = check_parity(backbone, onnx_path, images, batch_sizes)
        report.data = parity_data
        log(f"parity, ONNX Runtime ({report.provider}) vs PyTorch on {len(images)} images of "
            f"{parity_data.get('data')}:\n{report.table()}")
        if report.min_cosine < min_cosine:
            raise ParityError(
                f"ONNX Runtime and PyTorch embeddings disagree: min cosine {report.min_cosine:.7f} < "
                f"{min_cosine} (mean {report.summary['mean_cosine']:.7f}, max abs diff {report.max_abs_diff:.3g}) "
                f"over {len(images)} images; no bundle was written. Check the backbone for ops whose ONNX "
                "form differs (or lower --min-cosine only if the difference is understood)"
            )
        head.save(tmp / HEAD_STEM)
        selfcheck = reference_set(onnx_path, tmp, images)
        weights = {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
        torch.save(weights, tmp / TORCH_WEIGHTS_FILE)
        write_manifest(tmp, _manifest(spec, head, training, onnx_path, opset, graph, report, selfcheck))
        read_bundle(tmp)  # the finished bundle must read back before it takes the name
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    bundle = read_bundle(out)
    log(f"wrote {out} (fingerprint {bundle.fingerprint[:12]})")
    return bundle


def reference_set(onnx_path: Path, folder: Path, images: np.ndarray) -> dict[str, Any]:
    """Write the bundle's self-check file: a few parity images and their ONNX Runtime FP32 embeddings
    (:mod:`edgefs.runtime.selfcheck`); returns the manifest entry."""
    import onnxruntime as ort

    from edgefs.cpu import cpu_info

    chosen = reference_images(images)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    embeddings = np.concatenate([session.run(None, {INPUT_NAME: chosen[i : i + 1]})[0] for i in range(len(chosen))])
    return write_selfcheck(folder, chosen, embeddings.reshape(len(chosen), -1),
                           f"onnxruntime {ort.__version__} fp32, {cpu_info().arch} CPU")


def _manifest(spec: Any, head: HeadSpec, training: dict[str, Any], onnx_path: Path, opset: int,
              graph: dict[str, int], report: ParityReport, selfcheck: dict[str, Any]) -> Manifest:
    return Manifest(
        backbone=_jsonable(spec.to_dict()),
        input={"name": INPUT_NAME, "dtype": "uint8", "layout": "NHWC", "height": spec.input_size,
               "width": spec.input_size, "channels": 3, "color_order": "RGB"},
        output={"name": OUTPUT_NAME, "dtype": "float32", "dim": spec.embedding_dim},
        head=_jsonable({"type": head.head_type, "params": head.params}),
        fingerprint=sha256_file(onnx_path),
        training=training,
        export={
            "opset": opset,
            "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
            "simplifier": "onnxslim",
            "graph": graph,
            "versions": {
                "edgefs": __version__,
                "torch": torch.__version__,
                "onnx": _version("onnx"),
                "onnxslim": _version("onnxslim"),
                "onnxruntime": _version("onnxruntime"),
            },
            # Development only: the runtime's torch backend rebuilds the backbone from `backbone`
            # and these weights. Devices never need this file.
            "torch_weights": TORCH_WEIGHTS_FILE,
            "parity": report.to_json(),
            SELFCHECK_KEY: selfcheck,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
