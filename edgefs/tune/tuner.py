"""``edgefs tune`` itself: plan the settings, measure each in its own process, judge, choose, and save the
profiles (the package docstring says how).

Torch-free (the device side); the engines are imported in the measuring processes only.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefs.errors import EdgefsError
from edgefs.fileio import atomic_write_text
from edgefs.tune.judge import (
    COSINE_TIE,
    DROP_TIE,
    DROP_TOLERANCE,
    SUSTAINED,
    _num,
    advice,
    choose,
    drop_allowance,
    holds_instead,
    judge,
    table,
)
from edgefs.tune.measure import _read_rgb, measure
from edgefs.tune.profiles import PROFILE_FORMAT, PROFILE_VERSION, machine_key, profile_path
from edgefs.tune.settings import ENGINES, BundleFacts, bundle_facts, plan


@dataclass
class TuneResult:
    """What :func:`tune` found: every row, the choice (None: nothing held), the profiles written."""

    rows: list[dict[str, Any]]
    choice: dict[str, Any] | None
    why: str
    instead: str | None
    profiles: list[Path]
    doc: dict[str, Any]

    @property
    def exit_code(self) -> int:
        """0 when a setting held (a profile was saved), 2 when none did."""
        return 0 if self.choice is not None else 2


def _cards(bundles: Sequence[BundleFacts], data: Path | None, folder: Path) -> Path:
    """The synthetic cameras' cards: ``data`` as it is, else the bundles' reference images, else drawn shapes."""
    import cv2

    from edgefs.runtime.bundle import read_bundle
    from edgefs.runtime.selfcheck import load_reference

    if data is not None:
        if not Path(data).is_dir():
            raise EdgefsError(f"--data {data} is not a folder; give an image folder with one sub-folder per class")
        return Path(data)
    images = None
    for b in bundles:
        loaded = load_reference(read_bundle(b.path, verify=False))
        if loaded is not None:
            images = list(loaded[0])
            break
    if images is None:  # bundles made before they carried reference images
        rng = np.random.default_rng(0)
        images = []
        for k in range(8):
            img = np.full((128, 128, 3), rng.integers(40, 216, 3), np.uint8)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            if k % 2:
                cv2.circle(img, (64, 64), int(rng.integers(24, 56)), colour, -1)
            else:
                cv2.rectangle(img, (int(rng.integers(8, 40)),) * 2, (int(rng.integers(88, 120)),) * 2, colour, -1)
            images.append(img)
    for k, img in enumerate(images):
        target = folder / f"card{k // 2}"
        target.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target / f"{k}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return folder


def _references(bundles: Sequence[BundleFacts], folder: Path, cards: Path) -> dict[str, tuple[Path, np.ndarray | None]]:
    """Per model (:attr:`BundleFacts.model`): the reference images (a .npy file) and their stored FP32
    embeddings (None where no bundle of the model carries them: the model's FP32 bundle on ONNX Runtime
    then serves as the reference, on another model's images at its size or else on the cards)."""
    import cv2

    from edgefs.camera.sources.synthetic import find_classes
    from edgefs.runtime.bundle import read_bundle
    from edgefs.runtime.selfcheck import load_reference

    refs: dict[str, tuple[Path, np.ndarray | None]] = {}
    for b in bundles:
        if b.model in refs:
            continue
        loaded = load_reference(read_bundle(b.path, verify=False))
        if loaded is not None:
            np.save(folder / f"reference-{b.model[:16]}.npy", loaded[0])
            refs[b.model] = (folder / f"reference-{b.model[:16]}.npy", loaded[1])
    for b in bundles:  # a model none of whose bundles carries images: another model's at its size, or none
        if b.model in refs:
            continue
        donor = next((m for m, (path, _) in refs.items()
                      if np.load(path, mmap_mode="r").shape[1:3] == tuple(b.input_size)), None)
        if donor is not None:
            refs[b.model] = (refs[donor][0], None)
            continue
        h, w = b.input_size
        files = [f for paths in find_classes(cards, ".")[1].values() for f in paths][:8]
        images = [cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA) for img in map(_read_rgb, files)
                  if img is not None]
        if images:
            np.save(folder / f"reference-{b.model[:16]}.npy", np.stack(images))
            refs[b.model] = (folder / f"reference-{b.model[:16]}.npy", None)
    return refs


def _cosines(rows: list[dict[str, Any]], refs: dict[str, tuple[Path, np.ndarray | None]]) -> None:
    """Each row's cosine to its model's FP32 reference embeddings (stored, or its FP32 bundle's on ONNX Runtime)."""
    from edgefs.runtime.selfcheck import cosines

    for row in rows:
        row["cosine"] = None
        model = row["model"]
        if row.get("error") or not row.get("reference_embeddings") or model not in refs:
            continue
        reference = refs[model][1]
        if reference is None:
            base = next((r for r in rows if r["model"] == model and r["setting"]["precision"] == "fp32"
                         and r["setting"]["backend"] == "onnxruntime" and r.get("reference_embeddings")
                         and not r.get("error")), None)
            if base is None:
                continue
            reference = np.load(base["reference_embeddings"])
        got = np.load(row["reference_embeddings"])
        cos = cosines(reference, got)
        row["cosine"] = {"mean": float(cos.mean()), "min": float(cos.min()),
                         "against": "stored FP32 reference" if refs[model][1] is not None
                         else "the FP32 bundle on onnxruntime"}


def _best_per_backend(rows: list[dict[str, Any]], fingerprint: str) -> dict[str, dict[str, Any]]:
    out = {}
    for backend in ENGINES:
        mine = [r for r in rows if r["setting"]["fingerprint"] == fingerprint and r["setting"]["backend"] == backend]
        best, _ = choose(mine)
        if best is not None:
            out[backend] = _summary(best)
    return out


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    """A measured setting as a profile keeps it."""
    return {**row["setting"], "fps": round(row["fps"], 2), "dropped": row["dropped"],
            "latency_ms": {k: round(v, 2) for k, v in row["latency_ms"].items()},
            "cpu_ms_per_frame": round(row["cpu_ms_per_frame"].get("process", math.nan), 3),
            "cosine_mean": None if row["cosine"] is None else round(row["cosine"]["mean"], 6),
            "fewshot_drop_points": row["fewshot_drop_points"]}


def tune(
    bundles: Sequence[str | Path],
    *,
    cameras: int = 1,
    fps: float = 30.0,
    seconds: float = 4.0,
    engine: str | None = None,
    max_threads: int | None = None,
    batch_wait_ms: float | None = None,
    data: str | Path | None = None,
    json_out: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> TuneResult:
    """``edgefs tune``: measure every setting (module docstring), print the table and the choice, save the
    profile of each bundle (nothing when no setting held), and write the whole measurement to ``json_out``.

    Args:
        bundles: bundle folders of one model (one checkpoint).
        engine: measure only this backend (default: every one this machine has).
        max_threads: engine threads tried, 1 to this (default: the usable cores).
        batch_wait_ms: the non-zero ``--batch-wait`` tried with several cameras (default half a frame period).
        data: an image folder the synthetic cameras show (default: the bundles' reference images).

    Raises:
        EdgefsError: a bundle that cannot be read, bundles of different checkpoints, no engine to measure.
    """
    from edgefs.cpu import cpu_info

    if cameras < 1 or not fps > 0 or not seconds > 0:
        raise EdgefsError(f"tune needs cameras >= 1, fps > 0 and seconds > 0; got {cameras}, {fps}, {seconds}")
    facts = bundle_facts(bundles)
    settings, skipped = plan(facts, cameras, fps, engine=engine, max_threads=max_threads, batch_wait_ms=batch_wait_ms)
    if not settings:
        raise EdgefsError("no engine to measure here: " + "; ".join(skipped))
    cpu = cpu_info()
    load_before = [round(x, 1) for x in os.getloadavg()]
    period = 1000.0 / fps
    log(f"tuning for {cameras} camera{'s' if cameras != 1 else ''} x {fps:g} FPS ({cameras * fps:g} FPS offered, "
        f"one frame period {period:.1f} ms) on {cpu.model or cpu.arch} ({cpu.cores} cores, INT8 class "
        f"{cpu.int8_class}); load average {load_before[0]}: {len(settings)} settings, {seconds:g} s each, each in a "
        "fresh process")
    for line in skipped:
        log(f"skipped: {line}")
    if cameras == 1:
        log("batch-wait: only 0 with one camera (there are no other cameras' frames to wait for)")
    if len(facts) > 1:
        log("note: each bundle has its own class store: switching bundle means enrolling again, or "
            "'edgefs classes reembed --store STORE --bundle OLD --to NEW --out NEW_STORE'")
    if len({b.input_size for b in facts}) > 1:
        log("note: tune does not measure accuracy across input sizes (compare them with 'edgefs eval'); it "
            "prefers the largest input that holds")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgefs-tune-") as tmp:
        work = Path(tmp)
        cards = _cards(facts, Path(data) if data is not None else None, work / "cards")
        refs = _references(facts, work, cards)
        for i, setting in enumerate(settings, 1):
            ref = refs.get(setting.bundle.model)
            measured = measure(setting, cameras=cameras, fps=fps, seconds=seconds, cards=cards,
                               reference=ref[0] if ref else None, out=work / f"run-{i}")
            row = {"setting": setting.to_json(), "label": setting.bundle.label, "model": setting.bundle.model,
                   "fewshot_drop_points": setting.bundle.fewshot_drop, **measured}
            row["why_not"] = judge(row, cameras, fps)
            row["holds"] = not row["why_not"]
            rows.append(row)
            if row.get("error"):
                log(f"[{i}/{len(settings)}] {setting.describe()}: did not run: {row['error']}")
            else:
                log(f"[{i}/{len(settings)}] {setting.describe()}: {row['fps']:.1f} FPS, {row['dropped']} dropped, "
                    f"p99 {_num(row['latency_ms']['p99'])} ms, {_num(row['cpu_ms_per_frame'].get('process'), 2)} "
                    f"ms CPU/frame: {'holds' if row['holds'] else 'does not hold'}")
        _cosines(rows, refs)
        for row in rows:  # the embeddings' files go with the folder
            row.pop("reference_embeddings", None)
    load_after = [round(x, 1) for x in os.getloadavg()]
    log("")
    log(table(rows, cameras, fps))
    log(f"holds: sustained >= {SUSTAINED:.0%} of the offered FPS, stale frames dropped at most "
        f"{DROP_TOLERANCE:.0%} of those offered in the run (at least 1), p99 <= {period:.1f} ms. CPU ms/frame: the "
        f"whole process (engine, loop, the synthetic cameras' rendering). Load average before/after: "
        f"{load_before[0]}/{load_after[0]}.")
    choice, why = choose(rows)
    instead = None
    profiles: list[Path] = []
    doc: dict[str, Any] = {
        "format": "edgefs-tune", "version": PROFILE_VERSION, "tuned": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"key": machine_key(), **cpu.to_json()}, "cameras": cameras, "fps": fps, "seconds": seconds,
        "criteria": {"sustained": SUSTAINED, "dropped_at_most": drop_allowance(cameras, fps, seconds),
                     "p99_ms_at_most": period, "cosine_tie": COSINE_TIE, "fewshot_drop_tie_points": DROP_TIE},
        "load_average": {"before": load_before, "after": load_after},
        "bundles": [b.to_json() for b in facts], "skipped": skipped, "settings": rows,
    }
    if choice is None:
        instead = holds_instead(rows, cameras, fps)
        log(f"nothing held {cameras} x {fps:g} FPS: {instead}. No profile was saved. To try:")
        for tip in advice(facts):
            log(f"  - {tip}")
        doc.update({"choice": None, "why": None, "holds_instead": instead, "advice": advice(facts), "profiles": []})
    else:
        s = choice["setting"]
        log(f"chose #{rows.index(choice) + 1}: {choice['label']} on {s['backend']}"
            + ("" if s["threads"] is None else f", {s['threads']} thread{'s' if s['threads'] != 1 else ''}")
            + f", batch-wait {s['batch_wait_ms']:g} ms: {why}")
        for b in facts:
            profile = {
                "format": PROFILE_FORMAT, "version": PROFILE_VERSION, "tuned": doc["tuned"],
                "machine": doc["machine"], "cameras": cameras, "fps": fps, "seconds": seconds,
                "bundle": {"path": str(b.path), "fingerprint": b.fingerprint, "precision": b.precision,
                           "input_size": list(b.input_size)},
                "choice": _summary(choice), "why": why,
                "best_for_this_bundle": None, "for_this_bundle": _best_per_backend(rows, b.fingerprint),
            }
            mine = choose([r for r in rows if r["setting"]["fingerprint"] == b.fingerprint])[0]
            profile["best_for_this_bundle"] = None if mine is None else _summary(mine)
            path = profile_path(b.fingerprint)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(profile, indent=1))
            profiles.append(path)
            held = "" if mine is not None else f" (no setting of {b.label} held: run/serve will advise the choice)"
            log(f"profile: {path} for {b.label}{held}")
        doc.update({"choice": choice, "why": why, "holds_instead": None, "profiles": [str(p) for p in profiles]})
    if json_out is not None:
        atomic_write_text(Path(json_out), json.dumps(doc, indent=1, default=str))
        log(f"measurement: {json_out}")
    return TuneResult(rows, choice, why, instead, profiles, doc)
