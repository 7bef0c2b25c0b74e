"""The camera loop at 4 x 30 FPS with EfficientNet-Lite0 on the CPU: the acceptance table, in one command.

Usage::

    python tools/bench_loop.py                      # 224/160/128 px x ORT/OpenVINO x FP32/INT8, knob sweep
    python tools/bench_loop.py --sizes 160 --engines openvino:int8 --sweep-only
    python tools/bench_loop.py --bundle colour.edgefs --sweep ""   # your FP32 bundle (and its INT8) instead
    git archive OLD | tar -x -C /tmp/before         # the loop before a change, then:
    python tools/bench_loop.py --compare-with /tmp/before --sizes 160 --sweep "" --engines onnxruntime:int8

Every row runs the real :class:`edgefs.camera.loop.Pipeline` (what ``edgefs run``
runs) in a fresh process: four live synthetic cameras (320x240, 30 FPS each, glyph
classes printed on cards, as ``edgefs demo`` shows them), 5 classes enrolled from the
camera, one JSONL event per frame written to a file as ``edgefs run --jsonl`` does.
It reports:

* sustained FPS (120 offered), stale frames dropped, capture-to-result latency
  p50/p99 (the frame's capture timestamp to the head's result), frames per batch;
* the loop's own stage timers (p50 ms): capture (the source's render, on its
  thread), wait, preprocess, embed, head, post (smoothing, events, JSONL);
* CPU time per frame: the whole process, the capture threads, and the loop
  thread outside the engine call. CPU time is far less sensitive to other
  processes than wall time: on a loaded machine read these first;
* accuracy: 5-way 1-shot on fixed held-out episodes of every colour domain in
  ``--domains`` (test split; cosine prototypes of the row's embeddings; the same
  episodes for every row; mean over domains), and its difference from ONNX
  Runtime FP32 at the same input size;
* the FLOP floor: the graph's Conv/Gemm FLOPs over the peak of ONNX Runtime's own
  kernels on this CPU (a 1024x1024 float32 MatMul or uint8 x int8 MatMulInteger,
  best single-thread CPU time), times the engine threads (``tools/bench_precisions.py``).

``--sweep`` adds the knobs of ``edgefs run`` (engine threads, ONNX Runtime spinning,
OpenVINO hint and streams, ``--batch-wait``) on one size/engine. ``--compare-with DIR``
runs the same live scenario, interleaved, with the edgefs package of another checkout
(the loop before a change) for a before/after table per stage.

INT8 bundles are made by ``edgefs quantize`` calibrated on the domains' *train*
images (minmax; percentile where minmax fails the parity floor); the accuracy
episodes use *test* classes only. The backbone has ImageNet weights, not
meta-training: a meta-trained Lite0 of the same shape runs at the same speed, its
accuracy will differ. Writes ``REPORT/loop.md`` and ``REPORT/loop.json``.
A benchmark, not a test: run it under ``nice`` on a quiet machine; on a shared one
the wall-time columns carry the other processes' load (the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))  # bench_precisions' bundle and floor helpers

STAGE_COLUMNS = ("capture", "wait", "preprocess", "embed", "head", "post")
DOMAIN_EPISODES = 600


def quiet(_: str) -> None:
    pass


# ---- one live scenario (runs in a child process) -------------------------------------------------
def live_scenario(spec: dict[str, Any]) -> dict[str, Any]:
    """Enroll 5 classes, run 4 live cameras for ``spec['seconds']``; return the figures as JSON."""
    import inspect

    try:  # the camera loop's package (older checkouts: one module)
        from edgefs.camera import loop
    except ImportError:
        from edgefs.camera import pipeline as loop  # type: ignore[no-redef]
    Pipeline, RunConfig = loop.Pipeline, loop.RunConfig
    from edgefs.demo import DemoConfig, camera_options, choose_classes, enroll_from_synthetic
    from edgefs.service.classifier import Classifier

    data = Path(spec["data"])
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    store = out / "classes.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    cfg = DemoConfig(data=data, seed=0)
    enrolled, unknown, _ = choose_classes(cfg)
    engine: dict[str, Any] = {"backend": spec["backend"], "device": "cpu", "threads": spec["threads"]}
    if spec.get("options"):
        engine["engine_options"] = spec["options"]
    try:  # one options object (older checkouts take the keywords loose)
        from edgefs.service.options import EngineOptions

        kwargs: dict[str, Any] = {"options": EngineOptions(**engine), "log": quiet}
    except ImportError:
        kwargs = {**engine, "log": quiet}
    if hasattr(loop, "LOOP_ENGINE_DEFAULTS"):  # what edgefs run passes (absent from older checkouts)
        kwargs["engine_defaults"] = loop.LOOP_ENGINE_DEFAULTS
    with Classifier.open(spec["bundle"], store, **kwargs) as clf:
        enroll_from_synthetic(clf, cfg, enrolled, log=quiet)
        engine_cpu = [0.0]
        embed = clf.embed

        def timed_embed(batch: np.ndarray) -> np.ndarray:  # the loop thread's CPU inside the engine call
            t = time.thread_time()
            try:
                return embed(batch)
            finally:
                engine_cpu[0] += time.thread_time() - t

        clf.embed = timed_embed  # type: ignore[method-assign]
        options = camera_options(cfg, classes=enrolled + unknown, instances=f"{cfg.enroll_designs}:", live=True,
                                 fps=30.0)
        run_cfg: dict[str, Any] = {
            "sources": [f"synthetic:{data}?seed={s}" for s in range(spec["cameras"])],
            "duration_s": spec["seconds"], "source_options": options, "jsonl": str(out / "events.jsonl")}
        if "batch_wait_ms" in inspect.signature(RunConfig).parameters:
            run_cfg["batch_wait_ms"] = spec["batch_wait_ms"]
        pipeline = Pipeline(clf, RunConfig(**run_cfg), log=quiet)
        c_main, c_proc = time.thread_time(), time.process_time()
        summary = pipeline.run()
        c_main, c_proc = time.thread_time() - c_main, time.process_time() - c_proc
        engine = clf.engine.describe() if clf.engine else spec["backend"]
    frames = max(summary.frames, 1)
    stages = {s: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)),
                  "mean": float(np.mean(v))} for s, v in pipeline.times.ms.items() if len(v)}
    batches = len(pipeline.times.ms["embed"])
    capture_cpu = sum(getattr(c, "cpu_s", 0.0) for c in pipeline.captures)
    return {
        "engine": engine, "frames": summary.frames, "seconds": summary.seconds, "fps": summary.fps,
        "dropped": summary.dropped, "latency_ms": stages["total"], "max_age_ms": summary.max_age_ms,
        "frames_per_batch": summary.frames / max(batches, 1), "stages_ms": stages,
        "cpu_ms_per_frame": {
            "process": 1e3 * c_proc / frames,
            "loop": 1e3 * (c_main - engine_cpu[0]) / frames,
            "engine_call": 1e3 * engine_cpu[0] / frames,
            "capture": 1e3 * capture_cpu / frames if capture_cpu else None,
        },
        "stream_top1": summary.known_top1, "loadavg": list(os.getloadavg()),
    }


def run_child(spec: dict[str, Any], pythonpath: Path | None = None, resume: bool = False) -> dict[str, Any]:
    """:func:`live_scenario` in a fresh process (optionally importing edgefs from ``pythonpath``); the
    result is kept beside the run, and with ``resume`` a kept result of the same spec is reused."""
    kept = Path(spec["out"]) / "result.json"
    if resume and kept.is_file():
        saved = json.loads(kept.read_text())
        if saved.get("spec") == spec and saved.get("pythonpath") == (str(pythonpath) if pythonpath else None):
            return saved["result"]
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"scenario {spec} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    kept.write_text(json.dumps({"spec": spec, "pythonpath": str(pythonpath) if pythonpath else None,
                                "result": result}))
    return result


# ---- bundles and accuracy -------------------------------------------------------------------------
def calibration_folder(domains: Path, out: Path) -> Path:
    """An ImageFolder of links to every domain's *train* images (``<domain>_<class>/<file>``)."""
    folder = out / "calib-domains-train"
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    for domain in sorted(p for p in domains.iterdir() if (p / "train").is_dir()):
        for cls in sorted(p for p in (domain / "train").iterdir() if p.is_dir()):
            target = folder / f"{domain.name}_{cls.name}"
            target.mkdir(parents=True, exist_ok=True)
            for image in sorted(cls.iterdir()):
                if image.is_file():
                    (target / image.name).symlink_to(image.resolve())
    return folder


def bundles(size: int, args: argparse.Namespace) -> dict[str, Path]:
    """``{"fp32": bundle, "int8": bundle}`` for Lite0 at ``size`` px (made once, kept in ``--out-dir``)."""
    from bench_precisions import make_lite0
    from edgefs.export.quantize import quantize_bundle

    if args.bundle is not None:  # the user's FP32 bundle (e.g. the meta-trained colour Lite0)
        fp32 = args.bundle
        int8 = args.out_dir / f"{fp32.name.removesuffix('.edgefs')}-int8.edgefs"
    else:
        fp32 = make_lite0(size, args.out_dir, args.data)
        int8 = args.out_dir / f"lite0-{size}-int8.edgefs"
    wanted = {e.strip().partition(":")[2] for e in args.engines.split(",")}
    if "int8" not in wanted and not args.sweep and not args.compare_with:
        return {"fp32": fp32}  # no INT8 row asked for: nothing to quantise
    if not (int8 / "manifest.json").is_file():
        # The domains' flat-colour images can fail minmax's parity floor (Lite0 at 160 px: mean cosine
        # 0.9795 < 0.98); the default calibration ('auto') then tries percentile on fewer images.
        def say_fallback(line: str) -> None:
            if "missed the floors" in line:
                print(f"{size} px: {line}", file=sys.stderr)

        quantize_bundle(fp32, calibration_folder(args.domains, args.out_dir), int8, overwrite=True, log=say_fallback)
    return {"fp32": fp32, "int8": int8}


def domain_accuracy(bundle: Path, backend: str, threads: int, args: argparse.Namespace) -> dict[str, float]:
    """Mean 5-way 1-shot accuracy (%) per domain on fixed test-split episodes, and their mean."""
    from edgefs.data.episodes import Protocol, fixed_episodes
    from edgefs.data.images import open_split
    from edgefs.runtime.preprocess import to_batch
    from edgefs.runtime.select import open_engine

    engine = open_engine(bundle, backend=backend, device="cpu", threads=threads, log=quiet)
    out: dict[str, float] = {}
    protocol = Protocol(ways=5, shots=1, queries=2)
    for domain in sorted(p for p in args.domains.iterdir() if (p / "test").is_dir()):
        images = open_split(domain, "test", 3, size=engine.bundle.manifest.input_size[0])
        emb = np.concatenate([engine.embed(to_batch(list(images.images[i:i + 32]), engine.bundle.manifest,
                                                    input_order="RGB"))
                              for i in range(0, len(images.labels), 32)])
        unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        path = args.out_dir / "episodes" / f"{domain.name}-5w1s-{DOMAIN_EPISODES}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        acc = []
        for ep in fixed_episodes(images, protocol, DOMAIN_EPISODES, seed=0, path=path).episodes:
            pred = (unit[ep.query] @ unit[ep.support].T).argmax(1)
            acc.append(float((pred == ep.query_labels()).mean()))
        out[domain.name] = 100 * float(np.mean(acc))
    out["mean"] = float(np.mean([v for k, v in out.items()]))
    return out


# ---- the report -----------------------------------------------------------------------------------
def _stage_cells(r: dict[str, Any]) -> str:
    st = r["stages_ms"]
    return " | ".join(f"{st[s]['p50']:.2f}" if s in st else "n/a" for s in STAGE_COLUMNS)


def _cpu_cells(r: dict[str, Any]) -> str:
    c = r["cpu_ms_per_frame"]
    capture = "n/a" if c.get("capture") is None else f"{c['capture']:.2f}"
    return f"{c['process']:.2f} | {capture} | {c['loop']:.2f}"


def _goal(r: dict[str, Any]) -> str:
    ok = r["fps"] >= 0.98 * 30 * r["cameras"] and r["dropped"] == 0 and r["latency_ms"]["p99"] <= 33.0
    return "yes" if ok else "no"


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2f}"


LIVE_HEAD = ("FPS | dropped | latency p50 / p99 ms | frames/batch | " + " | ".join(f"{s} ms" for s in STAGE_COLUMNS)
             + " | CPU/frame process | capture | loop")


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        "# The camera loop at 4 x 30 FPS, EfficientNet-Lite0 (tools/bench_loop.py)", "",
        f"Machine: {m['cpu']}, {m['cores']} cores; load average before / after: {doc['load_before']} / "
        f"{doc['load_after']}. {doc['cameras']} live synthetic cameras, 320x240, 30 FPS each, {doc['seconds']:g} s per "
        f"row, each row in a fresh process; engine threads {doc['threads']}, batch wait {doc['batch_wait_ms']:g} ms "
        "unless said. Peak per thread (ONNX Runtime's kernels, 1024^2 product, best CPU time): FP32 "
        f"{doc['peak']['fp32']:.0f} GFLOP/s, INT8 {doc['peak']['int8']:.0f} GOP/s; floor = graph FLOPs / (peak x "
        "threads). Goal: >= 98% of the offered frames, none dropped, p99 <= 33 ms, accuracy within 0.5 points of "
        "FP32.", "",
        "Stage columns are p50 per batch (capture: per frame, on the capture threads); CPU/frame in ms, per "
        "classified frame: the whole process, the capture threads (rendering the synthetic frames and fitting them "
        "to the engine's input; frames rendered and then dropped count too, so this grows when frames are dropped), "
        "the loop thread outside the engine call. "
        "Accuracy: 5-way 1-shot, cosine prototypes, "
        f"{DOMAIN_EPISODES} fixed test-split episodes per colour domain, mean over domains; Δ against ONNX Runtime "
        "FP32 at the same size.", "",
        f"| px | engine | {LIVE_HEAD} | floor ms | accuracy % | Δ pts | goal |",
        "|---:|---|" + "---:|" * (LIVE_HEAD.count("|") + 1) + "---:|---:|---:|---|",
    ]
    for r in doc["rows"]:
        lat = r["latency_ms"]
        acc = r.get("accuracy")
        lines.append(
            f"| {r['size']} | {r['backend']} {r['precision']} | {r['fps']:.1f} | {r['dropped']} | "
            f"{lat['p50']:.1f} / {lat['p99']:.1f} | {r['frames_per_batch']:.2f} | {_stage_cells(r)} | "
            f"{_cpu_cells(r)} | {r['floor_ms']:.2f} | {'n/a' if acc is None else f'{acc:.2f}'} | "
            f"{_signed(r.get('delta'))} | {_goal(r)} |")
    if doc.get("sweep"):
        lines += ["", "## Knobs (same run)", "",
                  f"| px | engine | threads | spinning | OV hint / streams | batch wait ms | {LIVE_HEAD} | goal |",
                  "|---:|---|---:|---|---|---:|" + "---:|" * (LIVE_HEAD.count("|") + 1) + "---|"]
        for r in doc["sweep"]:
            lat = r["latency_ms"]
            o = r.get("options") or {}
            ov = f"{o.get('hint', 'LATENCY')} / {o.get('streams', 'auto')}" if r["backend"] == "openvino" else "-"
            spin = ("-" if r["backend"] != "onnxruntime" or r["threads"] == 1
                    else ("on" if o.get("allow_spinning", False) else "off"))
            lines.append(
                f"| {r['size']} | {r['backend']} {r['precision']} | {r['threads']} | {spin} | {ov} | "
                f"{r['batch_wait_ms']:g} | {r['fps']:.1f} | {r['dropped']} | {lat['p50']:.1f} / {lat['p99']:.1f} | "
                f"{r['frames_per_batch']:.2f} | {_stage_cells(r)} | {_cpu_cells(r)} | {_goal(r)} |")
    if doc.get("compare"):
        lines += ["", f"## Before / after, per stage (interleaved, {doc['compare_rounds']} rounds each; "
                      "medians over rounds)", "",
                  f"| loop | engine | {LIVE_HEAD} |", "|---|---|" + "---:|" * (LIVE_HEAD.count("|") + 1)]
        for r in doc["compare"]:
            lat = r["latency_ms"]
            lines.append(f"| {r['label']} | {r['backend']} {r['precision']} {r['size']} px | {r['fps']:.1f} | "
                         f"{r['dropped']} | {lat['p50']:.1f} / {lat['p99']:.1f} | {r['frames_per_batch']:.2f} | "
                         f"{_stage_cells(r)} | {_cpu_cells(r)} |")
    return "\n".join(lines)


# ---- main -----------------------------------------------------------------------------------------
def scenario_spec(bundle: Path, backend: str, args: argparse.Namespace, name: str, *, threads: int | None = None,
                  options: dict[str, Any] | None = None, batch_wait_ms: float | None = None) -> dict[str, Any]:
    if options is None:
        main_table = {"allow_spinning": args.spin, "hint": args.ov_hint}
        options = {k: v for k, v in main_table.items() if v is not None and (k != "hint" or backend == "openvino")
                   and (k != "allow_spinning" or backend == "onnxruntime")}
    return {"bundle": str(bundle), "backend": backend, "threads": threads or args.threads,
            "options": options, "data": str(args.data), "out": str(args.out_dir / "runs" / name),
            "seconds": args.seconds, "cameras": args.cameras,
            "batch_wait_ms": args.batch_wait if batch_wait_ms is None else batch_wait_ms}


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The round whose p99 latency is the median (a whole run, not a mix of runs)."""
    order = sorted(rows, key=lambda r: r["latency_ms"]["p99"])
    return order[len(order) // 2]


def sweep_specs(size: int, engine: str, paths: dict[str, Path], args: argparse.Namespace) -> list[dict[str, Any]]:
    backend, _, precision = engine.partition(":")
    bundle = paths[precision]
    base = {"size": size, "backend": backend, "precision": precision}
    out = []
    knobs: list[tuple[int, dict[str, Any], float]] = [(1, {}, 0.0)]
    if backend == "onnxruntime":
        knobs += [(2, {"allow_spinning": True}, 0.0), (2, {"allow_spinning": False}, 0.0)]
    else:
        knobs += [(2, {}, 0.0), (1, {"hint": "THROUGHPUT"}, 0.0), (2, {"hint": "THROUGHPUT", "streams": 2}, 0.0)]
    knobs += [(1, {}, 4.0), (1, {}, 8.0), (1, {}, 16.0)]
    for threads, options, wait in knobs:
        tag = "-".join(f"{k}{v}" for k, v in options.items())
        name = f"sweep-{size}-{backend}-{precision}-t{threads}-{tag}-w{wait:g}"
        out.append({**base, "threads": threads, "options": options, "batch_wait_ms": wait,
                    "spec": scenario_spec(bundle, backend, args, name, threads=threads, options=options,
                                          batch_wait_ms=wait)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--sizes", default="224,160,128")
    p.add_argument("--bundle", type=Path, help="an FP32 bundle to measure instead of exporting ImageNet Lite0 "
                                              "(its input size replaces --sizes; quantised as below)")
    p.add_argument("--engines", default="onnxruntime:fp32,onnxruntime:int8,openvino:fp32,openvino:int8")
    p.add_argument("--data", type=Path, default=Path("data/glyphs28"), help="glyph benchmark (the cameras' cards)")
    p.add_argument("--domains", type=Path, default=Path("data/domains"), help="colour domains (accuracy, calibration)")
    p.add_argument("--seconds", type=float, default=20.0, help="live run per row (default 20)")
    p.add_argument("--cameras", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="engine threads (default 1: edgefs run's on 2 cores)")
    p.add_argument("--batch-wait", type=float, default=0.0, help="edgefs run --batch-wait for the main table")
    p.add_argument("--spin", action=argparse.BooleanOptionalAction, default=None,
                   help="edgefs run --spin for the main table (default: the loop's, off)")
    p.add_argument("--ov-hint", choices=("LATENCY", "THROUGHPUT"), help="edgefs run --ov-hint for the main table")
    p.add_argument("--sweep", default="160:openvino:int8,160:onnxruntime:int8",
                   help="SIZE:BACKEND:PRECISION rows to sweep the knobs on ('' for none)")
    p.add_argument("--sweep-only", action="store_true", help="only the knob sweep")
    p.add_argument("--compare-with", type=Path, help="a checkout whose edgefs package is the 'before' loop")
    p.add_argument("--compare", default="160:onnxruntime:int8,160:openvino:int8",
                   help="SIZE:BACKEND:PRECISION rows of the before/after table (with --compare-with)")
    p.add_argument("--compare-rounds", type=int, default=3)
    p.add_argument("--out-dir", type=Path, default=Path("runs/bench_loop"))
    p.add_argument("--report", type=Path, default=Path("reports/loop"))
    p.add_argument("--resume", action="store_true", help="reuse the live runs an interrupted run kept")
    p.add_argument("--render", action="store_true", help="only rewrite REPORT/loop.md from REPORT/loop.json")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(live_scenario(json.loads(args.child))))
        return 0
    if args.render:
        text = markdown(json.loads((args.report / "loop.json").read_text()))
        (args.report / "loop.md").write_text(text + "\n")
        print(text)
        return 0
    for need, what in ((args.data / "test", "render it with `edgefs data glyphs`"),
                       (args.domains, "build the colour domains (`edgefs data domains`)")):
        if not need.is_dir():
            print(f"{need} missing; {what}", file=sys.stderr)
            return 2
    from bench_precisions import graph_flops, mlas_peak_gops

    from edgefs.runtime.bench import machine_info

    args.out_dir.mkdir(parents=True, exist_ok=True)
    load_before = [round(x, 1) for x in os.getloadavg()]
    peak = {"fp32": mlas_peak_gops("fp32"), "int8": mlas_peak_gops("int8")}
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.bundle is not None:
        from edgefs.runtime.bundle import read_bundle

        sizes = [read_bundle(args.bundle).manifest.input_size[0]]
    engines = [e for e in args.engines.split(",") if e]
    rows: list[dict[str, Any]] = []
    sweep: list[dict[str, Any]] = []
    compare: list[dict[str, Any]] = []

    def write_report() -> str:  # after every row: an interrupted run keeps what it measured
        doc = {"machine": machine_info(), "load_before": load_before,
               "load_after": [round(x, 1) for x in os.getloadavg()], "cameras": args.cameras,
               "seconds": args.seconds, "threads": args.threads, "batch_wait_ms": args.batch_wait, "peak": peak,
               "rows": rows, "sweep": sweep, "compare": compare, "compare_rounds": args.compare_rounds,
               "compare_with": str(args.compare_with) if args.compare_with else None}
        text = markdown(doc)
        args.report.mkdir(parents=True, exist_ok=True)
        (args.report / "loop.md").write_text(text + "\n")
        (args.report / "loop.json").write_text(json.dumps(doc, indent=2))
        return text

    for size in sizes:
        paths = bundles(size, args)
        flops = graph_flops(paths["fp32"] / "backbone.onnx", size)
        if not args.sweep_only:
            ref = None
            for engine in engines:
                backend, _, precision = engine.partition(":")
                t = time.perf_counter()
                row = {"size": size, "backend": backend, "precision": precision, "cameras": args.cameras,
                       **run_child(scenario_spec(paths[precision], backend, args, f"{size}-{backend}-{precision}"),
                                   resume=args.resume)}
                acc = domain_accuracy(paths[precision], backend, args.threads, args)
                row.update(accuracy=acc["mean"], accuracy_per_domain=acc, gflop=flops / 1e9,
                           floor_ms=1e3 * flops / (peak[precision] * 1e9 * args.threads))
                if backend == "onnxruntime" and precision == "fp32":
                    ref = acc["mean"]
                row["delta"] = None if ref is None else acc["mean"] - ref
                rows.append(row)
                write_report()
                print(f"{size} px {engine}: {row['fps']:.1f} FPS, p99 {row['latency_ms']['p99']:.1f} ms, "
                      f"accuracy {acc['mean']:.2f} ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
        for item in [s for s in args.sweep.split(",") if s]:
            s_size, _, engine = item.partition(":")
            if int(s_size) != size:
                continue
            for knob in sweep_specs(size, engine, paths, args):
                spec = knob.pop("spec")
                r = {**knob, "cameras": args.cameras, **run_child(spec, resume=args.resume)}
                sweep.append(r)
                write_report()
                print(f"sweep {size} {engine} {knob}: {r['fps']:.1f} FPS, p99 {r['latency_ms']['p99']:.1f} ms, "
                      f"CPU/frame {r['cpu_ms_per_frame']['process']:.2f} ms", file=sys.stderr)
        if args.compare_with is not None:
            for item in [c for c in args.compare.split(",") if c]:
                c_size, _, engine = item.partition(":")
                if int(c_size) != size:
                    continue
                backend, _, precision = engine.partition(":")
                got: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
                for i in range(args.compare_rounds):
                    for label, path in (("before", args.compare_with), ("after", None)):
                        spec = scenario_spec(paths[precision], backend, args,
                                             f"compare-{size}-{backend}-{precision}-{label}-{i}")
                        got[label].append(run_child(spec, path, resume=args.resume))
                for label, runs in got.items():
                    compare.append({"label": label, "size": size, "backend": backend, "precision": precision,
                                    **median_row(runs), "rounds": runs})
                write_report()
    print(write_report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
