"""One live measurement of ``edgefs tune``: the real camera loop for one setting, in a fresh process.

Torch-free (the device side); the engines are imported in the measuring processes only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgefs.errors import EdgefsError
from edgefs.tune.settings import Setting

CHILD_GRACE_S = 180.0
"""How long a measuring process may take beyond its run (opening, the first self-check, warm-up)."""


def live_measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the camera loop for one setting: ``spec['cameras']`` live synthetic cameras showing the cards in
    ``spec['cards']`` at ``spec['fps']`` for ``spec['seconds']``; return its figures. Runs in a fresh
    process (:func:`measure`): the engine's threads and the process's CPU time are the setting's own."""
    from edgefs.camera.loop import LOOP_ENGINE_DEFAULTS, Pipeline, RunConfig
    from edgefs.camera.sources.synthetic import find_classes
    from edgefs.service.classifier import Classifier
    from edgefs.service.options import EngineOptions

    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    cards = Path(spec["cards"])
    options = EngineOptions(backend=spec["backend"], device=spec["device"], threads=spec["threads"],
                            engine_options=spec["options"])
    with Classifier.open(spec["bundle"], out / "classes.db", options=options, log=lines.append,
                         engine_defaults=LOOP_ENGINE_DEFAULTS) as clf:
        _, classes = find_classes(cards, ".")
        for name, files in sorted(classes.items())[:4]:  # a few classes, so that the head has work
            images = [img for img in map(_read_rgb, files[:2]) if img is not None]
            try:
                clf.enroll(name, images, source="tune")
            except EdgefsError as exc:
                lines.append(f"enroll {name}: {exc}")
        h, w = clf.bundle.manifest.input_size
        for batch in sorted({1, min(2, spec["cameras"]), spec["cameras"]}):  # as a running loop is, warm
            for _ in range(2):
                clf.embed(np.zeros((batch, h, w, 3), np.uint8))
        config = RunConfig(
            sources=[f"synthetic:{cards}?seed={i}" for i in range(spec["cameras"])], display=False,
            duration_s=spec["seconds"], batch_wait_ms=spec["batch_wait_ms"], jsonl=str(out / "events.jsonl"),
            source_options={"fps": spec["fps"], "difficulty": 0.3, "live": True, "split": "."})
        pipeline = Pipeline(clf, config, log=lines.append)
        seen: dict[str, list[float]] = {}  # per source: [frames, first and last capture time]

        def count(_: int, frame: Any, __: Any) -> None:
            got = seen.setdefault(frame.source, [0, frame.timestamp, frame.timestamp])
            got[0] += 1
            got[2] = frame.timestamp

        pipeline.add_listener(count)
        summary = pipeline.run()
        embeddings = None
        if spec.get("reference"):
            images = np.load(spec["reference"], allow_pickle=False)
            embeddings = np.concatenate([clf.embed(images[i:i + 1]) for i in range(len(images))])
            np.save(out / "reference-embeddings.npy", embeddings)
        engine = clf.engine.describe() if clf.engine is not None else spec["backend"]
        check = getattr(clf.engine, "selfcheck", None)
    total = summary.stages_ms.get("total", {})
    # Sustained: each camera's classified frames over the capture times from its first to its last one (a
    # camera that opens late, or the first frames of a run, do not count as frames the loop failed to keep).
    sustained = sum((n - 1) / (last - first) for n, first, last in seen.values() if n >= 2 and last > first)
    return {
        "engine": engine, "frames": summary.frames, "seconds": summary.seconds, "fps": sustained,
        "run_fps": summary.fps, "cameras_seen": len(seen),
        "dropped": summary.dropped, "latency_ms": {"p50": total.get("p50"), "p99": total.get("p99")},
        "frames_per_batch": summary.frames / max(summary.batches, 1),
        "cpu_ms_per_frame": summary.cpu_ms_per_frame, "stages_ms": summary.stages_ms,
        "selfcheck": check.status if check is not None else None,
        "reference_embeddings": str(out / "reference-embeddings.npy") if embeddings is not None else None,
        "log": lines[-20:],
    }


def _read_rgb(path: Path) -> np.ndarray | None:
    """An image file as uint8 RGB, read within :mod:`edgefs.limits` (:func:`edgefs.imagefile.decode_image`:
    the file's size, then the pixel count its header declares, before decoding); None, with a warning
    naming it and why, where it is refused or cannot be decoded."""
    import warnings

    from edgefs.imagefile import ImageRefused, decode_image, read_image_bytes

    try:
        return decode_image(read_image_bytes(path, str(path)), str(path))
    except ImageRefused as exc:
        warnings.warn(f"skipping image {exc}; remove or replace it", stacklevel=2)
        return None


def child_main() -> None:
    """The measuring process: ``python -c 'from edgefs.tune import child_main; child_main()' SPEC.json``."""
    spec = json.loads(Path(sys.argv[1]).read_text())
    try:
        result = live_measure(spec)
    except EdgefsError as exc:
        result = {"error": str(exc)}
    Path(spec["out"], "result.json").write_text(json.dumps(result))


def measure(setting: Setting, *, cameras: int, fps: float, seconds: float, cards: Path, reference: Path | None,
            out: Path) -> dict[str, Any]:
    """:func:`live_measure` of ``setting`` in a fresh process; ``{"error": ...}`` when it could not run."""
    out.mkdir(parents=True, exist_ok=True)
    spec = {"bundle": str(setting.bundle.path), "backend": setting.backend, "device": setting.device,
            "threads": setting.threads, "options": setting.options, "batch_wait_ms": setting.batch_wait_ms,
            "cameras": cameras, "fps": fps, "seconds": seconds, "cards": str(cards),
            "reference": str(reference) if reference is not None else None, "out": str(out)}
    (out / "spec.json").write_text(json.dumps(spec))
    try:
        done = subprocess.run([sys.executable, "-c", "from edgefs.tune import child_main; child_main()",
                               str(out / "spec.json")], capture_output=True, text=True, check=False,
                              timeout=seconds + CHILD_GRACE_S)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {seconds + CHILD_GRACE_S:.0f} s"}
    result_file = out / "result.json"
    if done.returncode != 0 or not result_file.is_file():
        tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:] or ["no message"]
        return {"error": f"the measuring process failed (exit {done.returncode}): {tail[0]}"}
    return dict(json.loads(result_file.read_text()))
