"""edgefs enroll: add a class (or shots to one) to a device's class store from image files."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgefs.cli import args as A

HELP = "enroll a new class (or --append shots) into a class store from a few images"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgefs.heads.spec import HEAD_TYPES
    from edgefs.runtime.preprocess import FIT_MODES
    from edgefs.runtime.select import backend_names  # torch-free; the registry finds the backend modules itself
    from edgefs.service.quality import QualityConfig

    q = QualityConfig()
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder, e.g. models/glyphs.edgefs")
    p.add_argument("--store", required=True, help="class store file (created if missing), e.g. classes.db")
    p.add_argument("--label", required=True, help="the class name")
    p.add_argument("--images", nargs="+", required=True, metavar="PATH", help="image files, or folders of them")
    p.add_argument("--append", action="store_true", help="add the shots to an enrolled class")
    p.add_argument("--head", choices=HEAD_TYPES, help="device head (default: the bundle's)")
    p.add_argument("--threshold", type=A.threshold,
                   help="unknown threshold: auto (leave-one-out over the shots), none, or a cosine "
                        "(default: the store's choice, auto for a new store)")
    p.add_argument("--min-sharpness", type=A.real(0), default=q.min_sharpness,
                   help=f"reject shots whose Laplacian variance is below this (default {q.min_sharpness:g}; 0: off)")
    p.add_argument("--max-similarity", type=A.real(above=0, maximum=1), default=q.max_similarity,
                   help=f"reject near-duplicate shots above this cosine (default {q.max_similarity:g}; 1: off)")
    p.add_argument("--roi", type=A.roi, default="full",
                   help=A.ROI_HELP + " (default full); use the one 'edgefs run' classifies with")
    p.add_argument("--shot-views", type=int, choices=A.VIEW_CHOICES, help=A.SHOT_VIEWS_HELP)
    p.add_argument("--fit", default="center_crop", choices=FIT_MODES, help="how images meet the input size")
    p.add_argument("--backend", default="auto", choices=backend_names(), help="engine backend (default auto)")
    p.add_argument("--device", type=A.device, help="cpu, cuda or cuda:N (default: the backend's choice)")
    p.add_argument("--threads", type=A.integer(1), help="CPU threads for the engine (default: all cores)")


def run(args: argparse.Namespace) -> int:
    from edgefs.fileio import check_output_not_input
    from edgefs.service.classifier import enroll_files
    from edgefs.service.options import EngineOptions
    from edgefs.service.quality import QualityConfig

    # The store is written; the bundle and the image files are read. A folder of images may hold
    # the store (it is skipped as an image), so only image files given by name are compared.
    images = {f"the image {p}": p for p in args.images if not Path(p).is_dir()}
    check_output_not_input(args.store, {"the bundle": args.bundle, **images}, flag="--store")
    check_target(args.bundle, args.store, args.label, args.append)
    options = EngineOptions(backend=args.backend, device=args.device, threads=args.threads, head_type=args.head,
                            threshold=args.threshold, shot_views=args.shot_views)
    result = enroll_files(
        args.bundle, args.store, args.label, args.images, append=args.append, options=options,
        quality=QualityConfig(args.min_sharpness, args.max_similarity), fit=args.fit, roi=args.roi,
    )
    print(result.summary())
    return 0


def check_target(bundle: str, store: str, label: str, append: bool) -> None:
    """Refuse an --append to a class that is not enrolled (or a new class that is), reading the store only.

    Opening the classifier may write (migrate the store, save a head rebuilt for another --head,
    save a --shot-views choice); a refused enrollment must write nothing, so the class list is read
    first without writing anything to the store (:func:`edgefs.store.enrolled_names`).

    Raises:
        EdgefsError: the label is not a valid class name; --append without a store or to a class
            it does not hold; a new class that the store already holds.
    """
    from edgefs.errors import EdgefsError
    from edgefs.runtime.bundle import read_bundle
    from edgefs.store import enrolled_names
    from edgefs.store.validate import check_name

    check_name(label)
    if append and not Path(store).exists():
        raise EdgefsError(f"class store {store} does not exist, so there is no class {label!r} to --append to; "
                          "enroll it without --append first (that creates the store)")
    names = enrolled_names(store, read_bundle(bundle).fingerprint)
    if names is None:
        return  # a new store, or one the classifier's open refuses with its own message
    if append and label not in names:
        raise EdgefsError(f"class {label!r} is not enrolled, so there is nothing to --append to; nothing was "
                          f"written. Enrolled: {', '.join(names) or 'none'}")
    if not append and label in names:
        raise EdgefsError(f"class {label!r} is already enrolled; nothing was written. Pass --append to add shots "
                          "to it, or remove it first with 'edgefs classes remove'")
