"""Move a class store to another bundle: a new store in the new bundle's embedding space.

A store holds the embeddings of one bundle (its fingerprint) and is never opened
with another, so spaces are never mixed. When the bundle changes (an INT8 bundle
made from the FP32 one with ``edgefs quantize``, or a re-exported model),
:func:`reembed_store` writes a *new* store for the new bundle and leaves the old
one as it was:

* ``carry``: the stored embeddings are copied as they are. Allowed only when the
  new bundle is an INT8 bundle quantised from the store's bundle and what was
  measured at quantisation (recorded in its manifest) says the parent's shots
  serve its queries: few-shot accuracy with FP32 shots and INT8 queries at most
  :data:`CARRY_MAX_DROP` points below FP32's own, on held-out episodes; where no
  episodes were measured (calibration without classes), a mean cosine of at least
  :data:`CARRY_MIN_COSINE`. The new store records where they came from.
* ``thumbnails``: every shot is embedded again by the new bundle from its stored
  thumbnail (a 64-px JPEG of the engine input, upscaled to the input size). Works
  for any bundle; a shot without a thumbnail is refused (re-enroll that class).
  Lossy for large inputs (EfficientNet-Lite0 at 224 px: 13-15 points of 5-way
  1-shot accuracy lost, ``tools/bench_precisions.py``), and the result says so:
  re-enrolling from the camera is better where possible. A store that enrolls with shot
  views (:mod:`edgefs.service.views`) has each thumbnail's views embedded and averaged, as at enrollment.
* ``auto``: ``carry`` when allowed, else ``thumbnails``.

The head is rebuilt from the new samples and saved with them; the store's device settings
(threshold, smoothing, region of interest, shot views) are carried over.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from edgefs import limits
from edgefs.errors import EdgefsError
from edgefs.fileio import check_output_not_input
from edgefs.imagefile import THUMBNAIL_SIDE, image_dimensions
from edgefs.runtime.bundle import Bundle, read_bundle
from edgefs.runtime.quantized import parent_fingerprint, quantization_info
from edgefs.service.classifier import Classifier
from edgefs.service.views import check_views, view_means
from edgefs.store import ClassStore, store_files
from edgefs.store.validate import StoreError

CARRY_MAX_DROP = 1.0
"""Most the measured accuracy with parent shots and INT8 queries may fall below the parent's, in points."""
CARRY_MIN_COSINE = 0.995
"""Without measured episodes: the smallest mean cosine to the parent for embeddings to be carried over."""
MODES = ("auto", "carry", "thumbnails")


def carry_allowed(store_bundle: Bundle, new_bundle: Bundle) -> tuple[bool, str]:
    """Whether ``new_bundle`` may take ``store_bundle``'s embeddings as they are, and why (not)."""
    if parent_fingerprint(new_bundle) != store_bundle.fingerprint:
        return False, (f"{new_bundle.path.name} was not quantised from {store_bundle.path.name} "
                       "(its manifest names another parent, or none)")
    parity = (quantization_info(new_bundle) or {}).get("parity") or {}
    episodes = parity.get("episodes") or {}
    if isinstance(episodes.get("accuracy_fp32_shots"), float):
        drop = 100 * (episodes["accuracy_reference"] - episodes["accuracy_fp32_shots"])
        if drop > CARRY_MAX_DROP:
            return False, (f"measured accuracy with its parent's shots is {drop:.2f} points below the parent's "
                           f"(at most {CARRY_MAX_DROP})")
        return True, (f"INT8 bundle quantised from it; its queries on the parent's shots measured {drop:+.2f} points "
                      f"from the parent's accuracy (at most {CARRY_MAX_DROP} allowed)")
    cosine = parity.get("mean_cosine")
    if not isinstance(cosine, float):
        return False, f"{new_bundle.path.name} records no measured cosine to its parent"
    if cosine < CARRY_MIN_COSINE:
        return False, f"its measured mean cosine to the parent is {cosine:.4f}, below {CARRY_MIN_COSINE}"
    return True, f"INT8 bundle quantised from it, measured mean cosine {cosine:.4f} >= {CARRY_MIN_COSINE}"


def _refused_thumbnail(name: str | None, problem: str) -> StoreError:
    of = "" if name is None else f" of class {name!r}"
    return StoreError(f"a stored thumbnail{of} {problem}; remove the class ('edgefs classes remove') and enroll it "
                      "again from the camera")


def _check_thumbnail(thumb: bytes, name: str | None) -> None:
    """Refuse a stored thumbnail of class ``name`` by its header, before it is decoded: no known image
    header, or more than :data:`edgefs.limits.MAX_IMAGE_PIXELS` (a thumbnail edgefs writes is a
    ``THUMBNAIL_SIDE``-px JPEG; one from a class pack made elsewhere may declare anything)."""
    size = image_dimensions(thumb)
    if size is None:
        raise _refused_thumbnail(name, "is not a JPEG (or its header is damaged)" if thumb else "is empty (0 bytes)")
    w, h = size
    if w * h > limits.MAX_IMAGE_PIXELS:
        raise _refused_thumbnail(name, f"declares {w} x {h} pixels, over the limit of {limits.MAX_IMAGE_PIXELS} "
                                       f"(edgefs.limits.MAX_IMAGE_PIXELS; edgefs writes {THUMBNAIL_SIDE} px "
                                       "thumbnails), so it was not decoded")


def _decode(thumb: bytes, size: tuple[int, int], name: str | None = None) -> np.ndarray:
    from edgefs.runtime.preprocess import fit_frame

    _check_thumbnail(thumb, name)
    try:
        image = cv2.imdecode(np.frombuffer(thumb, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None:
        raise _refused_thumbnail(name, "is not a readable JPEG")
    return fit_frame(image, size, mode="resize", input_order="BGR")


def reembed_store(
    store: str | Path,
    bundle: str | Path,
    to_bundle: str | Path,
    out: str | Path,
    mode: str = "auto",
    backend: str = "auto",
    log: Callable[[str], None] = print,
) -> str:
    """Write a store for ``to_bundle`` holding the classes of ``store`` (made with ``bundle``).

    Args:
        store: the existing store file (left unchanged).
        bundle: the bundle that store belongs to.
        to_bundle: the bundle the new store is for.
        out: the new store file (must not exist).
        mode: ``auto``, ``carry`` or ``thumbnails`` (module docstring).
        backend: engine backend for ``thumbnails``.
        log: receives the engine line.

    Returns:
        one line saying what was written and how.

    Raises:
        OutputOverInput: ``out`` is the store (or one of its side files) or lies in either bundle.
        StoreError: ``out`` exists; ``carry`` asked where it is not allowed (the reason is
            given); a shot without a thumbnail in ``thumbnails`` mode; a thumbnail that is not an
            image or declares more than :data:`edgefs.limits.MAX_IMAGE_PIXELS` (checked before any
            is decoded).
    """
    if mode not in MODES:
        raise EdgefsError(f"unknown reembed mode {mode!r}; use one of {', '.join(MODES)}")
    out = Path(out)
    check_output_not_input(out, {**store_files(store), "the store's bundle": bundle, "the new bundle": to_bundle},
                           flag="--out")
    old_bundle, new_bundle = read_bundle(bundle), read_bundle(to_bundle)
    if out.exists():
        raise StoreError(f"{out} exists; reembed writes a new store: choose another --out")
    ok, why = carry_allowed(old_bundle, new_bundle)
    if mode == "carry" and not ok:
        raise StoreError(f"cannot carry the embeddings over to {new_bundle.path.name}: {why}; use --mode thumbnails")
    use = ("carry" if ok else "thumbnails") if mode == "auto" else mode
    with ClassStore.open(store, old_bundle, create=False) as old:
        names = old.names()
        samples = {name: old.samples(name) for name in names}
        singles = {name: old.singles(name) for name in names}
        threshold_mode = old.head_params().get("threshold_mode", "auto")
        settings = old.settings()
    embedded: dict[str, np.ndarray] = {}
    if use == "carry":
        if old_bundle.manifest.embedding_dim != new_bundle.manifest.embedding_dim:
            raise StoreError("the bundles' embedding sizes differ; use --mode thumbnails")
        embedded = {name: samples[name][0] for name in names}
    else:
        missing = {name: sum(t is None for t in samples[name][1]) for name in names}
        missing = {k: v for k, v in missing.items() if v}
        if missing:
            raise StoreError(
                f"shots without a thumbnail cannot be embedded again: {missing}; remove those classes and "
                "enroll them again from the camera"
            )
        for name in names:  # every thumbnail's header before any is decoded or an engine opened
            for thumb in samples[name][1]:
                if thumb is not None:
                    _check_thumbnail(thumb, name)
        from edgefs.runtime.select import open_engine

        engine = open_engine(new_bundle, backend=backend, log=log)
        size = new_bundle.manifest.input_size
        views = check_views(settings.get("shot_views", 1))
        for name in names:
            images = np.stack([_decode(t, size, name) for t in samples[name][1] if t is not None])
            one = engine.embed(images)
            embedded[name] = view_means(images, one, views, engine.embed)
            singles[name] = one if views > 1 else None
    new = ClassStore.open(out, new_bundle, create=True)
    try:
        with new.transaction() as tx:
            for name in names:
                _, thumbs, sources, _ = samples[name]
                tx.add_class(name, embedded[name], thumbs, sources, singles[name])
            if settings:
                tx.save_settings(settings)
        clf = Classifier(new_bundle, None, new, threshold=threshold_mode, log=log)
        with new.transaction() as tx:
            clf.save_head(tx, clf.head, None)
            if use == "carry":  # provenance: these embeddings were made by the parent bundle
                new._set_meta("carried_from", old_bundle.fingerprint)
    finally:
        new.close()
    shots = sum(len(v) for v in embedded.values())
    how = f"embeddings carried over ({why})" if use == "carry" else f"{shots} thumbnails embedded again"
    side = max(new_bundle.manifest.input_size)
    if use == "thumbnails" and side > THUMBNAIL_SIDE:
        how += (f". Warning: the thumbnails are {THUMBNAIL_SIDE} px and this bundle takes {side} px, so these shots "
                "are blurred (EfficientNet-Lite0 at 224 px lost 13-15 points of 5-way 1-shot accuracy this way, "
                "tools/bench_precisions.py); re-enroll the classes from the camera where you can")
    return f"wrote {out} for {new_bundle.path.name}: {len(names)} classes, {shots} shots; {how}"
