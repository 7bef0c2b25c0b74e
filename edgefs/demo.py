"""``edgefs demo``: the three journeys end to end on the embedded default (CPU, ONNX Runtime, synthetic camera).

Two presets (:data:`PRESETS`):

* ``colour`` (the default, ``make demo``): the colour model
  (``models/protonet-lite0-colour.pt``, EfficientNet-Lite0 meta-trained on the
  colour domains' train splits) on objects of a domain's *test* split, which it
  never saw: freeciv unit sprites (the ``units`` domain: one Debian package,
  built in seconds). Each object is small in the frame (``object_size``); the
  region of interest (``roi``) is what is embedded, at enrollment and in the
  stream. The user enrolls the objects they will show: shots and stream come
  from the same designs, in other poses, backgrounds, light and blur. Each shot
  is enrolled as the mean embedding of 7 views of it (``shot_views``, :mod:`edgefs.service.views`).
* ``glyphs`` (``make demo-glyphs``): the Conv-4 glyph model; shots come from the
  first designs (fonts) of each class and the stream shows the *other* designs.

1. **Export**: the committed checkpoint (``models/``) becomes a bundle, with the
   ONNX/PyTorch parity check.
2. **Enroll**: ``classes`` unseen classes are enrolled from the synthetic
   camera, ``shots`` frames each, through the quality gate, into a fresh class store.
3. **Run**: a live synthetic camera at ``fps`` shows those classes and
   ``unknown`` classes that were never enrolled; the camera loop classifies it
   in real time for ``seconds``. The summary gives accuracy against the
   stream's ground truth, FPS and per-stage latency, beside two static
   references of the same head on the same designs (:func:`static_references`):
   *camera stills*, frames of the same synthetic camera with the scene still (no
   motion, no motion blur; the comparison for the stream), and the *clean images
   on white* (the designs' files as they are).

Everything is written under ``out``: the bundle, ``classes.db``, ``events.jsonl``
and ``demo.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefs.errors import DataError, EdgefsError
from edgefs.fileio import atomic_write_text
from edgefs.runtime.bundle import exported_from
from edgefs.runtime.roi import Roi

if TYPE_CHECKING:
    from edgefs.service.classifier import Classifier, EnrollResult

# Camera stills per shown design of each enrolled class: the still reference's sample size.
STILLS_PER_DESIGN = 6

DEFAULT_CHECKPOINT = Path("models/protonet-conv4-glyphs28.pt")
COLOUR_CHECKPOINT = Path("models/protonet-lite0-colour.pt")


@dataclass
class DemoConfig:
    """Settings of the demo; see the module docstring.

    Attributes:
        data: the classes' images: a folder with a ``test`` split (built if missing).
        build: what builds ``data`` when it is missing: ``glyphs`` or a domain name
            (``edgefs data <domain>``).
        checkpoint: the trained backbone to export.
        out: output folder.
        classes: classes to enroll.
        unknown: classes shown but never enrolled.
        shots: camera shots per enrolled class.
        enroll_designs: how many designs (fonts) of each class the shots come from;
            the stream and the static check use the others. 0: shots, stream and
            static check all use every design (enroll the objects you will show).
        seconds: length of the live run.
        fps: frame rate of the synthetic camera.
        difficulty: how hard the synthetic camera is (0 still and clean, 1 hard).
        object_size: card size relative to the frame's shorter side.
        seed: choice of classes and the camera's randomness.
        threads: ONNX Runtime threads (None: all cores).
        record: also write an annotated ``demo.mp4``.
        spin: ONNX Runtime's thread spinning (None: the camera loop's default; ``edgefs run --spin``).
        roi: the region of each frame that is embedded (enrollment and stream).
        shot_views: each shot enrolled as the mean embedding of this many views of it
            (:mod:`edgefs.service.views`; 1: the shot alone).
    """

    data: Path = Path("data/glyphs28")
    build: str = "glyphs"
    checkpoint: Path = DEFAULT_CHECKPOINT
    out: Path = Path("runs/demo")
    classes: int = 5
    unknown: int = 2
    shots: int = 5
    enroll_designs: int = 3
    seconds: float = 20.0
    fps: float = 30.0
    difficulty: float = 0.3
    object_size: float = 1.0
    seed: int = 0
    threads: int | None = None
    record: bool = False
    spin: bool | None = None
    camera: dict[str, Any] = field(default_factory=dict)
    roi: Roi = field(default_factory=Roi)
    shot_views: int = 1

    @property
    def enroll_instances(self) -> str | None:
        """The synthetic camera's slice of each class's designs for the shots (None: all)."""
        return f"0:{self.enroll_designs}" if self.enroll_designs else None

    @property
    def stream_seed(self) -> int:
        """The live stream's camera seed (the shots use ``seed + 1``): its backgrounds, light and scenes."""
        return self.seed + 2

    @property
    def stream_instances(self) -> str | None:
        """The slice of designs the stream and the static check show (None: all)."""
        return f"{self.enroll_designs}:" if self.enroll_designs else None


# The units test split: 11 classes (5 enrolled + 2 unknown drawn from them), 3 tilesets each.
# Colour: 10 shots of each object (one per presentation), each the mean of 7 views: on 60 s of the
# camera, 10 shots gave 92.1% smoothed against 88.5% with 5 (reports/pipeline-colour*).
PRESETS: dict[str, DemoConfig] = {
    "colour": DemoConfig(data=Path("data/demo/units"), build="units", checkpoint=COLOUR_CHECKPOINT,
                         out=Path("runs/demo"), enroll_designs=0, object_size=0.5, roi=Roi(0.5, 0.5, 0.7, 0.7),
                         shots=10, shot_views=7),
    "glyphs": DemoConfig(),
}


def demo_config(preset: str = "colour", **overrides: Any) -> DemoConfig:
    """A copy of preset ``preset`` with ``overrides`` (None values ignored)."""
    from dataclasses import replace

    if preset not in PRESETS:
        raise EdgefsError(f"no demo preset {preset!r}; presets: {', '.join(PRESETS)}")
    return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})


def _log_default(line: str) -> None:
    print(line, flush=True)


def ensure_data(cfg: DemoConfig, log: Callable[[str], None] = _log_default) -> None:
    """Build ``cfg.data`` once when it has no ``test`` split (glyphs rendered, or a domain built).

    Raises:
        DataError: the build failed (e.g. its Debian package could not be fetched); the message
            says what to do, and that the glyph demo needs no download beyond fonts.
    """
    if (cfg.data / "test").is_dir():
        return
    if cfg.build == "glyphs":
        from edgefs.data.glyphs import GlyphConfig, render_glyph_benchmark

        log(f"rendering the glyph benchmark into {cfg.data} (once)")
        render_glyph_benchmark(cfg.data, GlyphConfig(), log=log)
        return
    from edgefs.data.domains import build_domain

    log(f"building the {cfg.build} domain into {cfg.data} (once): its Debian package(s) are fetched with apt")
    try:
        build_domain(cfg.build, cfg.data, log=log)
    except DataError as exc:
        raise DataError(f"the colour demo could not build its data: {exc} To fix: run 'apt-get update' "
                        f"on a Debian/Ubuntu machine with the main archive reachable and retry "
                        f"('edgefs data {cfg.build} --out {cfg.data}' builds it alone), or copy a built "
                        f"folder to {cfg.data}; 'make demo-glyphs' (edgefs demo --glyphs) runs without it.") from exc


def _bundle(cfg: DemoConfig, log: Callable[[str], None]) -> Path:
    """Export the checkpoint unless an up-to-date bundle is already there."""
    bundle = cfg.out / "model.edgefs"
    if not cfg.checkpoint.is_file():
        raise EdgefsError(f"checkpoint {cfg.checkpoint} not found; train one with 'edgefs train' "
                          "(e.g. make reproduce) or pass --checkpoint")
    if exported_from(bundle, cfg.checkpoint):
        log(f"[1/3] export: {bundle} is up to date with {cfg.checkpoint}")
        return bundle
    from edgefs.export import export_bundle  # workstation step: needs PyTorch

    log(f"[1/3] export: {cfg.checkpoint} -> {bundle} (ONNX, parity check against PyTorch)")
    t = time.perf_counter()
    export_bundle(cfg.checkpoint, bundle, data=str(cfg.data), overwrite=True, log=lambda _: None)
    log(f"      done in {time.perf_counter() - t:.1f} s")
    return bundle


def choose_classes(cfg: DemoConfig) -> tuple[list[str], list[str], dict[str, list[Path]]]:
    from edgefs.camera.sources.synthetic import find_classes

    _, classes = find_classes(cfg.data, "test")
    # Enough designs for the shots' designs plus at least three others to stream.
    least = cfg.enroll_designs + 3 if cfg.enroll_designs else 1
    names = sorted(n for n, paths in classes.items() if len(paths) >= least)
    need = cfg.classes + cfg.unknown
    if len(names) < need:
        raise EdgefsError(f"{cfg.data}/test has {len(names)} classes with {least}+ designs; "
                          f"the demo needs {need}. Build the full data set with 'edgefs data {cfg.build}'")
    rng = np.random.default_rng(cfg.seed)
    pick = [names[i] for i in rng.choice(len(names), need, replace=False)]
    return pick[: cfg.classes], pick[cfg.classes :], classes


def camera_options(cfg: DemoConfig, **extra: Any) -> dict[str, Any]:
    return {"difficulty": cfg.difficulty, "object_size": cfg.object_size, "fps": cfg.fps, **cfg.camera, **extra}


def camera_shots(cfg: DemoConfig, name: str) -> tuple[list[np.ndarray], str]:
    """The ``cfg.shots`` synthetic-camera frames the demo enrolls ``name`` from (its first
    ``cfg.enroll_designs`` designs, one shot per presentation), cut to ``cfg.roi``, and the source's name."""
    from edgefs.camera.sources import open_source

    hold = 6  # one shot per presentation: each shows the card anew (design, pose, light)
    src = open_source("synthetic:" + str(cfg.data), **camera_options(
        cfg, classes=[name], instances=cfg.enroll_instances, hold=hold, frames=hold * cfg.shots,
        seed=cfg.seed + 1))
    with src:
        frames = [cfg.roi.crop(f.image) for i, f in enumerate(iter(src.read, None)) if i % hold == hold // 2]
    return frames, src.name


def enroll_from_synthetic(clf: Classifier, cfg: DemoConfig, names: list[str],
                          log: Callable[[str], None] = _log_default) -> list[EnrollResult]:
    """Enroll each class from its :func:`camera_shots`.

    Each frame is cut to ``cfg.roi`` first, as the camera loop cuts the frames it classifies.
    """
    results = []
    for name in names:
        frames, source = camera_shots(cfg, name)
        result = clf.enroll(name, frames, source=source)
        results.append(result)
        log("      " + result.summary().replace("\n", "\n      "))
    return results


@dataclass(frozen=True)
class StaticReference:
    """Per-image top-1 of the head on a fixed set of labelled images (no smoothing, closed set).

    Attributes:
        top1: fraction of images whose top-1 class is the true one, in [0, 1].
        images: how many images were classified.
    """

    top1: float
    images: int


def _top1(clf: Classifier, images: list[np.ndarray], truth: list[int]) -> StaticReference:
    """Top-1 of each of ``images`` (uint8 ``(H, W, 3)`` RGB, any sizes) on its own; ``truth``: class rows."""
    if not images:
        raise EdgefsError("no images for a static reference; the enrolled classes show no design")
    result = clf.classify_frames(images, k=1)
    return StaticReference(float(np.mean(result.top_idx[:, 0] == np.asarray(truth))), len(images))


def clean_images(cfg: DemoConfig, names: list[str],
                 designs: dict[str, list[Path]]) -> tuple[list[np.ndarray], list[int]]:
    """The design files the stream shows of each class in ``names``, as they are (drawings on white).

    Returns:
        ``(images, truth)``: uint8 ``(H, W, 3)`` RGB images, and the index in ``names`` of each.
    """
    from edgefs.imagefile import read_images

    images, truth = [], []
    for i, name in enumerate(names):
        for path in sorted(designs[name])[cfg.enroll_designs :]:  # enroll_designs 0: every design
            images.append(read_images([path])[0][0])
            truth.append(i)
    return images, truth


def camera_stills(cfg: DemoConfig, names: list[str], designs: dict[str, list[Path]],
                  per_design: int = STILLS_PER_DESIGN) -> tuple[list[np.ndarray], list[int]]:
    """Still frames of the stream's camera: ``per_design`` of each design the stream shows of each class.

    The same synthetic camera as the stream (:func:`camera_options`, the stream's seed, so
    the same backgrounds and light fields), the same designs, cut to ``cfg.roi``, but with
    ``still=True``: each frame is one presentation frozen at an instant (pose, light and focus
    sampled as the stream samples them; no motion, no motion blur; see
    :class:`edgefs.camera.sources.synthetic.SyntheticConfig`). Presentations are numbered apart for
    every (class, design) so that each still is a fresh draw; the set is fixed by ``cfg.seed``.

    Returns:
        ``(frames, truth)``: uint8 ``(h, w, 3)`` RGB region-of-interest crops, and the index
        in ``names`` of each.
    """
    from edgefs.camera.sources import open_source
    from edgefs.camera.sources.synthetic import SyntheticSource

    frames, truth = [], []
    start = 0
    for i, name in enumerate(names):
        for j in range(cfg.enroll_designs, len(designs[name])):
            src = open_source("synthetic:" + str(cfg.data), **camera_options(
                cfg, classes=[name], instances=str(j), hold=1, still=True, seed=cfg.stream_seed))
            if not isinstance(src, SyntheticSource):  # the synthetic: scheme is registered to it
                raise EdgefsError(f"synthetic:{cfg.data} opened {type(src).__name__}, not the synthetic camera")
            for index in range(start, start + per_design):
                image, label = src.render_with_label(index)
                if label != name:
                    raise EdgefsError(f"camera still {index} of {name!r} is labelled {label!r}")
                frames.append(np.ascontiguousarray(cfg.roi.crop(image)))
                truth.append(i)
            start += per_design
    return frames, truth


def static_references(clf: Classifier, cfg: DemoConfig, names: list[str],
                      designs: dict[str, list[Path]]) -> dict[str, StaticReference]:
    """The head's per-image top-1 on the designs the stream shows of ``names``, two ways.

    Returns:
        ``{"stills": ..., "clean": ...}``: camera stills (:func:`camera_stills`, no motion:
        the stream's reference, what motion and latency cost is the gap to it) and the clean
        images on white (:func:`clean_images`, which the prototypes enrolled from camera
        frames were not made for).
    """
    return {"stills": _top1(clf, *camera_stills(cfg, names, designs)),
            "clean": _top1(clf, *clean_images(cfg, names, designs))}


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = _log_default) -> dict[str, Any]:
    """Export, enroll from the synthetic camera, run live; returns (and writes) the figures."""
    from edgefs.camera.loop import LOOP_ENGINE_DEFAULTS, Pipeline, RunConfig, loop_threads
    from edgefs.service.classifier import Classifier
    from edgefs.service.options import EngineOptions

    t_start = time.perf_counter()
    ensure_data(cfg, log)
    cfg.out.mkdir(parents=True, exist_ok=True)
    bundle = _bundle(cfg, log)
    enrolled, unknown, designs = choose_classes(cfg)

    store = cfg.out / "classes.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    log(f"[2/3] enroll: {len(enrolled)} new classes from the synthetic camera, {cfg.shots} shots each "
        f"({f'designs 1-{cfg.enroll_designs}' if cfg.enroll_designs else 'every design'}), into {store}")
    options = EngineOptions(backend="onnxruntime", threads=cfg.threads or loop_threads(),
                            engine_options={"allow_spinning": cfg.spin}, shot_views=cfg.shot_views)
    with Classifier.open(bundle, store, options=options, log=log, engine_defaults=LOOP_ENGINE_DEFAULTS) as clf:
        enroll_ms = [r.timings_ms for r in enroll_from_synthetic(clf, cfg, enrolled, log)]

        refs = static_references(clf, cfg, enrolled, designs)

        log(f"[3/3] run: live synthetic camera at {cfg.fps:g} FPS for {cfg.seconds:g} s showing the "
            f"{len(enrolled)} enrolled classes and {len(unknown)} never enrolled ({', '.join(unknown)}); "
            f"region of interest {cfg.roi.to_text()}")
        run_cfg = RunConfig(
            sources=["synthetic:" + str(cfg.data)], duration_s=cfg.seconds, jsonl=str(cfg.out / "events.jsonl"),
            record=str(cfg.out / "demo.mp4") if cfg.record else None, display=False, roi=cfg.roi,
            source_options=camera_options(cfg, classes=enrolled + unknown, instances=cfg.stream_instances,
                                           seed=cfg.stream_seed, live=True),
        )
        summary = Pipeline(clf, run_cfg, log=log).run()
    log(summary.text())
    report = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "bundle": str(bundle), "enrolled": enrolled, "unknown": unknown,
        "enroll_ms": {k: float(np.median([t[k] for t in enroll_ms])) for k in enroll_ms[0]},
        "static_top1": refs["clean"].top1, "static_images": refs["clean"].images,
        "still_top1": refs["stills"].top1, "still_frames": refs["stills"].images,
        "run": summary.to_json(), "wall_s": time.perf_counter() - t_start,
    }
    atomic_write_text(cfg.out / "demo.json", json.dumps(report, indent=2))
    st = summary.stages_ms
    lines = [
        "",
        "edgefs demo: export -> enroll from the camera -> real-time classification (CPU, ONNX Runtime)",
        f"  enrolled {len(enrolled)} unseen classes, {cfg.shots} shots each"
        + (f" (each the mean of {cfg.shot_views} views)" if cfg.shot_views > 1 else "")
        + f": median {report['enroll_ms']['total']:.1f} ms per class ("
        + (f"other views {report['enroll_ms']['views']:.1f} ms, " if cfg.shot_views > 1 else "")
        + f"head update {report['enroll_ms']['head']:.2f} ms, durable commit {report['enroll_ms']['commit']:.1f} ms)",
        f"  live stream: {summary.frames} frames, {summary.fps:.1f} FPS, capture-to-result latency "
        f"p50 {st['total']['p50']:.1f} ms / p99 {st['total']['p99']:.1f} ms, {summary.dropped} stale frames dropped",
    ]
    if summary.accuracy is not None:
        lines.append(f"  accuracy against ground truth (smoothed, unknowns must be rejected): "
                     f"{100 * summary.accuracy:.1f}%" + ("" if summary.raw_accuracy is None else
                                                        f" ({100 * summary.raw_accuracy:.1f}% per frame before "
                                                        "smoothing)"))
    if summary.known_top1 is not None:
        lines.append(f"  enrolled classes, per-frame top-1: {100 * summary.known_top1:.1f}% on the stream vs "
                     f"{100 * refs['stills'].top1:.1f}% on {refs['stills'].images} camera stills (no motion) "
                     f"and {100 * refs['clean'].top1:.1f}% on {refs['clean'].images} clean images on white, "
                     f"of the same designs")
    if summary.unknown_rejected is not None:
        lines.append(f"  never-enrolled classes called 'unknown': {100 * summary.unknown_rejected:.1f}%")
    lines.append(f"  wrote {cfg.out}/demo.json, events.jsonl, classes.db; total {report['wall_s']:.0f} s")
    log("\n".join(lines))
    return report
